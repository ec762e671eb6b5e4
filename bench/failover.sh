#!/bin/sh
# bench/failover.sh: failure and recovery detection times of multisited (web servers killed;
# database page losing its keyword) and of gdnsd (web servers killed), TRIALS=10 each.
# The last lines are the medians; exits non-zero when ours miss the issue 3 floors.
set -eu
cd "$(dirname "$0")/.."
MS_BUILD=${MS_BUILD:-$PWD/build}
export MS_BUILD
[ -x "$MS_BUILD/multisited" ] && [ -x "$MS_BUILD/multisite-webapp" ] || {
    echo "bench/failover.sh: build first (make)" >&2
    exit 2
}
exec /usr/bin/python3 bench/failover.py
