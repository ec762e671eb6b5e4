#!/bin/sh
# bench/sync.sh: the figures of issue 5 ("Done means") for multisite-syncd: apply rate, lag p99
# at 1,000 writes/s per site, capture overhead, consolidated catch-up, convergence runs.
# Prints the figures as its last lines; exits non-zero when one misses its floor.
#   MS_BENCH_QUICK=1   short runs (a smoke test, a few minutes)
#   MS_BENCH_SKIP=apply,lag,capture,conflict,catchup,converge
set -eu
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build}"
[ -x "$BUILD/multisite-syncd" ] || make "$BUILD/multisite-syncd" >/dev/null
export MS_BUILD="$(cd "$BUILD" && pwd)"
exec /usr/bin/python3 bench/sync_bench.py
