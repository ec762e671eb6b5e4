#!/usr/bin/env bash
# bench/reload.sh: hot reload under load (issue 7). dnsperf sends 50,000 queries/s (below
# saturation on this machine) for DURATION seconds while multisited is reloaded RELOADS
# times with SIGHUP (each reload re-reads the config and a zone of 100,000 records, builds a
# new snapshot and swaps it in). Last lines: queries sent, completed, lost, reloads done;
# exit 1 when any query was lost or a reload failed.
#   RELOADS=20 DURATION=30 RATE=50000 MS_BUILD=dir
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${MS_BUILD:-$ROOT/build}
MS=$BUILD/multisited
RELOADS=${RELOADS:-20}
DURATION=${DURATION:-30}
RATE=${RATE:-50000}
[ -x "$MS" ] || { echo "bench/reload.sh: $MS not built (make)" >&2; exit 2; }
TMP=$(mktemp -d /tmp/ms-reload.XXXXXX)
MSPID=
cleanup() {
    [ -n "$MSPID" ] && kill "$MSPID" 2>/dev/null && wait "$MSPID" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
port_free() { ! ss -Hlntu "( sport = :$1 )" | grep -q .; }
pick_port() { local p; while :; do p=$((20000 + RANDOM % 30000)); port_free $p && echo $p && return; done; }
PORT=$(pick_port)
/usr/bin/python3 - "$TMP" "$PORT" <<'PY'
import sys
d, port = sys.argv[1], sys.argv[2]
with open(f"{d}/reload.zone", "w") as f:
    f.write("$ORIGIN reload.test.\n$TTL 300\n@ SOA ns1 h 1 7200 3600 1209600 300\n@ NS ns1\n"
            "ns1 A 192.0.2.53\n")
    for i in range(100000):
        f.write(f"h{i} A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n")
with open(f"{d}/q.txt", "w") as f:
    for i in range(20000):
        f.write(f"h{(i * 7919) % 100000}.reload.test A\n" if i % 10 else "nx.reload.test A\n")
with open(f"{d}/ms.yaml", "w") as f:
    f.write(f"server:\n  listen: \"127.0.0.1:{port}\"\n  udp-threads: 2\n"
            f"zones:\n  - origin: reload.test\n    file: {d}/reload.zone\n")
PY
"$MS" -c "$TMP/ms.yaml" 2>"$TMP/ms.log" &
MSPID=$!
for _ in $(seq 100); do dig +short +tries=1 +time=1 @127.0.0.1 -p "$PORT" h1.reload.test A | grep -q . && break; sleep 0.1; done
dnsperf -s 127.0.0.1 -p "$PORT" -d "$TMP/q.txt" -Q "$RATE" -l "$DURATION" -c 4 -t 2 >"$TMP/perf.txt" 2>&1 &
PERF=$!
sleep 2
step=$(awk -v d="$DURATION" -v n="$RELOADS" 'BEGIN{printf "%.2f", (d - 4) / n}')
for i in $(seq "$RELOADS"); do
    kill -HUP "$MSPID"
    sleep "$step"
done
wait "$PERF"
sent=$(awk '/Queries sent:/{print $3}' "$TMP/perf.txt")
done_q=$(awk '/Queries completed:/{print $3}' "$TMP/perf.txt")
lost=$(awk '/Queries lost:/{print $3}' "$TMP/perf.txt")
ok=$(grep -c "reload done" "$TMP/ms.log" || true)
bad=$(grep -c "reload failed" "$TMP/ms.log" || true)
grep -E "Queries per second|Average Latency" "$TMP/perf.txt" | sed 's/^ */# /'
echo "reloads: $ok done, $bad failed (of $RELOADS signals); zone of 100,000 records each time"
echo "queries: sent $sent, completed $done_q, lost $lost at $RATE/s for ${DURATION}s"
if [ "$lost" = 0 ] && [ "$bad" = 0 ] && [ "$ok" -ge "$RELOADS" ]; then echo PASS; else echo FAIL; exit 1; fi
