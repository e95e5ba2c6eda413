#!/usr/bin/env python3
"""Scenario `load`: 64 clients for 60 s mixing uploads (raw and base64, single and chunked,
one-request), ranged and signed downloads, listings, ZIPs and deletes against one server,
then every file checked byte for byte and every listing against the client's ledger.
Fails (exit 1) on any 5xx, lost or corrupted file, listing mismatch, orphan on disk or quota
drift. Knobs: BENCH_LOAD_CLIENTS (64), BENCH_LOAD_SECONDS (60), BENCH_LOAD_USERS (8),
BENCH_LOAD_MAX_KIB (4096), BENCH_LOAD_SEED. Details: bench/lib/loadgen.py, bench/README.md."""
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.environ.get("BENCH_LIB") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import loadgen  # noqa: E402
import loadlib  # noqa: E402

if __name__ == "__main__":
    loadlib.run_main(lambda: loadgen.main(crash=False))
