#!/usr/bin/env bash
# bench/lb.sh: what a load-balanced name costs compared with a static one, in one multisited
# (issues 3 and 4). Three query sets go through the same server, in turn, ROUNDS times:
#   static    A queries for 10,000 static names of a zone
#   lb        A queries for a load-balanced name over three sites (order: static)
#   loc       A queries for a locality-ordered name, each with an EDNS Client Subnet option
#             from one of 1,024 distinct /24 client subnets mapped to 4 regions
# The load generator is bench/dnsflood.c (ours: dnsperf cannot vary ECS per query), the same
# for all three sets. For each run: QPS and the server's CPU time per query (utime+stime from
# /proc/PID/stat over the queries completed). Last lines: medians and ratios; exit 1 when a
# ratio exceeds 1.10 (the floor of issues 3 and 4).
#   ROUNDS=3 DURATION=10 OUTSTANDING=100 MS_BUILD=dir QUICK=1 (1 round of 3 s)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${MS_BUILD:-$ROOT/build}
MS=$BUILD/multisited
if [ "${QUICK:-0}" = 1 ]; then ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-3}; fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
OUTSTANDING=${OUTSTANDING:-100}
[ -x "$MS" ] || { echo "bench/lb.sh: $MS not built (make)" >&2; exit 2; }
TMP=$(mktemp -d /tmp/ms-lb.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
cc -O2 -o "$TMP/dnsflood" "$ROOT/bench/dnsflood.c"

port_free() { ! ss -Hlntu "( sport = :$1 )" | grep -q .; }
pick_port() { local p; while :; do p=$((20000 + RANDOM % 30000)); port_free $p && echo $p && return; done; }

# A TCP listener the sites' probes find up, probed once a minute: no probe noise.
WEBPORT=$(pick_port)
/usr/bin/python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $WEBPORT)); s.listen(64)
while True:
    c, _ = s.accept(); c.close()
" &
PIDS+=($!)

PORT=$(pick_port)
/usr/bin/python3 - "$TMP" "$PORT" "$WEBPORT" <<'PY'
import sys
d, port, webport = sys.argv[1], sys.argv[2], sys.argv[3]
with open(f"{d}/bench.zone", "w") as f:
    f.write("$ORIGIN bench.test.\n$TTL 300\n@ SOA ns1 h 1 7200 3600 1209600 300\n@ NS ns1\n"
            "ns1 A 192.0.2.53\n")
    for i in range(10000):
        f.write(f"host{i} A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n")
with open(f"{d}/static.q", "w") as f:
    for i in range(10000):
        f.write(f"host{(i * 7919) % 10000}.bench.test A\n")
with open(f"{d}/lb.q", "w") as f:
    f.write("app.bench.test A\n" * 10000)
with open(f"{d}/loc.q", "w") as f:
    for i in range(10000):
        r, k = i % 4, (i // 4) % 256
        f.write(f"geo.bench.test A 10.{100 + r}.{k}.0/24\n")
c = [f"server:\n  listen: \"127.0.0.1:{port}\"\n  udp-threads: 2\n  log-level: warning\n",
     f"zones:\n  - origin: bench.test\n    file: {d}/bench.zone\n", "sites:\n"]
for k, s in enumerate(("eu", "us", "ap")):
    c.append(f"  - name: {s}\n    addresses: [192.0.2.{10 + k}, \"2001:db8::{10 + k}\"]\n"
             f"    web-servers: [\"127.0.0.1:{webport}\"]\n"
             "    web-check: {type: tcp, interval: 60s}\n")
c.append("regions:\n")
for r, pref in enumerate(("eu", "us", "ap", "eu")):
    subnets = ", ".join(f"10.{100 + r}.{k}.0/24" for k in range(256))
    c.append(f"  - name: r{r}\n    prefer: [{pref}]\n    subnets: [{subnets}]\n")
c.append("names:\n  - name: app.bench.test\n    sites: [eu, us, ap]\n"
         "  - name: geo.bench.test\n    sites: [eu, us, ap]\n    order: [locality]\n")
open(f"{d}/ms.yaml", "w").write("".join(c))
PY
"$MS" -t -c "$TMP/ms.yaml" >/dev/null 2>&1 || { "$MS" -t -c "$TMP/ms.yaml"; exit 2; }
"$MS" -c "$TMP/ms.yaml" 2>"$TMP/ms.log" &
MSPID=$!
PIDS+=($MSPID)
for _ in $(seq 100); do
    dig +short +tries=1 +time=1 @127.0.0.1 -p "$PORT" app.bench.test A | grep -q . && break
    sleep 0.1
done
# Sanity: the locality answer depends on the client subnet, and says so with its scope.
dig +subnet=10.101.3.0/24 @127.0.0.1 -p "$PORT" geo.bench.test A | grep -q "10.101.3.0/24/24" ||
    { echo "bench/lb.sh: ECS scope missing in the locality answer" >&2; exit 2; }

cpu() { awk '{print $14 + $15}' "/proc/$MSPID/stat"; }
HZ=$(getconf CLK_TCK)
RES=$TMP/results
: >"$RES"
echo "# dnsflood -q $OUTSTANDING -l $DURATION, $ROUNDS round(s); one multisited, 2 UDP threads"
for r in $(seq "$ROUNDS"); do
    # rotate the order each round so that no set always runs first (or after the same one)
    case $((r % 3)) in 1) order="static lb loc" ;; 2) order="lb loc static" ;; *) order="loc static lb" ;; esac
    for kind in $order; do
        c0=$(cpu)
        out=$("$TMP/dnsflood" -s 127.0.0.1 -p "$PORT" -d "$TMP/$kind.q" -q "$OUTSTANDING" -l "$DURATION")
        c1=$(cpu)
        n=$(echo "$out" | awk '{print $4}')
        qps=$(echo "$out" | awk '{print $8}')
        us=$(awk -v a="$c0" -v b="$c1" -v n="$n" -v hz="$HZ" 'BEGIN{printf "%.3f", (b-a)/hz*1e6/n}')
        printf "round %d %-7s qps %8s  cpu %6s us/query  (%s)\n" "$r" "$kind" "$qps" "$us" "$out"
        echo "$kind $us $qps" >>"$RES"
    done
done
/usr/bin/python3 - "$RES" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
kinds = ("static", "lb", "loc")
med = {k: statistics.median(float(r[1]) for r in rows if r[0] == k) for k in kinds}
qps = {k: statistics.median(float(r[2]) for r in rows if r[0] == k) for k in kinds}
print("== medians")
for k in kinds:
    print(f"{k:7s} cpu {med[k]:.3f} us/query  qps {qps[k]:.0f}")
lb, loc = med["lb"] / med["static"], med["loc"] / med["static"]
print(f"load-balanced name / static name: cpu/query {lb:.2f}")
print(f"locality name, ECS from 1,024 subnets / static name: cpu/query {loc:.2f}")
fail = [f"{n} ratio {v:.2f} > 1.10" for n, v in (("lb", lb), ("locality", loc)) if v > 1.10]
print("FAIL: " + "; ".join(fail) if fail else "PASS")
sys.exit(1 if fail else 0)
PY
