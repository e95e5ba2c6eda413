#!/usr/bin/env python3
"""Scenario `crash`: the `load` mix while the server is SIGKILLed BENCH_CRASH_KILLS (6) times
at random moments and restarted on the same port and UPLOAD_ROOT. Every upload answered 200
must survive intact, nothing partial or orphaned may show under storage/, the quota ledgers
must equal the bytes on disk after the start-up reconcile, and sessions cut by a kill must
resume. Same knobs as `load` plus BENCH_CRASH_KILLS. Details: bench/lib/loadgen.py."""
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.environ.get("BENCH_LIB") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import loadgen  # noqa: E402
import loadlib  # noqa: E402

if __name__ == "__main__":
    loadlib.run_main(lambda: loadgen.main(crash=True))
