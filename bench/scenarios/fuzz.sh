#!/usr/bin/env bash
# Scenario `fuzz`: every cargo-fuzz target for FUZZ_SECONDS (60) each, by bench/fuzz, which
# documents its knobs. Needs no server and no release binary:
# `BENCH_SKIP_BUILD=1 bench/run fuzz`.
set -euo pipefail
exec "$(dirname "$0")/../fuzz"
