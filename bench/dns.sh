#!/usr/bin/env bash
# bench/dns.sh: DNS throughput and cost of multisited against gdnsd and knotd (issue 2).
#
# All three servers serve the same generated zone on loopback, each with 2 UDP threads. dnsperf
# (-c 4 -q 100 -l 10) loads them in turn, ours, gdnsd, knotd, ours, ... for 3 rounds, with the
# same query file. For each run we record QPS and average latency (dnsperf) and the server's CPU
# time per query in microseconds: utime+stime of the server process from /proc/PID/stat before
# and after, over the queries completed. On a 2-core machine dnsperf saturates before the
# servers do, so CPU per query is the figure that counts. Then a memory figure: VmRSS after
# loading a generated zone of 1,000,000 records, ours vs knotd.
#
# The last lines printed are the figures. Exit status is non-zero when our median CPU/query
# exceeds gdnsd's or our RSS exceeds knotd's (the floors of issue 2), or when anything fails.
#
# Knobs (environment):
#   QUICK=1            smoke run: 1 round of 2 s, 100,000-record memory zone
#   ROUNDS=3 DURATION=10 CLIENTS=4 OUTSTANDING=100 MEM_RECORDS=1000000 BENCH_HOSTS=10000
#   MS_BUILD=dir       where build/multisited is (default: <repo>/build)
#   SERVERS="ours gdnsd knotd"   which servers to load (ours must be among them for ratios)
#   EXTRA_ZONES="origin=file ..."  more zones every server loads (e.g. issue 3's names)
#   EXTRA_QUERIES="file ..."       more query lines (dnsperf "name TYPE") mixed into the load
#   MS_EXTRA_CONF=file  YAML appended to multisited's generated config (e.g. GSLB sections)
#   GDNSD_EXTRA_CONF=file  appended to gdnsd's config (e.g. plugins => { ... } for DYNA names)
#   KEEP=1             keep the temp dir (configs, logs, zone and query files)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${MS_BUILD:-$ROOT/build}
MS=$BUILD/multisited
PY=/usr/bin/python3

if [ "${QUICK:-0}" = 1 ]; then
    ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-2} MEM_RECORDS=${MEM_RECORDS:-100000}
fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-100}
MEM_RECORDS=${MEM_RECORDS:-1000000}
BENCH_HOSTS=${BENCH_HOSTS:-10000}
SERVERS=${SERVERS:-"ours gdnsd knotd"}
EXTRA_ZONES=${EXTRA_ZONES:-}
EXTRA_QUERIES=${EXTRA_QUERIES:-}
MS_EXTRA_CONF=${MS_EXTRA_CONF:-}
GDNSD_EXTRA_CONF=${GDNSD_EXTRA_CONF:-}
START_DEADLINE=${START_DEADLINE:-120} # seconds; knotd needs a while for 1M records
ORIGIN=bench.test
MEM_ORIGIN=mem.test

die() {
    echo "bench/dns.sh: $*" >&2
    exit 2
}

[ -x "$MS" ] || die "$MS is not built (run make)"
for t in /usr/bin/dnsperf /usr/sbin/gdnsd /usr/sbin/knotd /usr/bin/kdig; do
    [ -x "$t" ] || die "$t missing: run scripts/deps.sh"
done

TMP=$(mktemp -d /tmp/ms-bench.XXXXXX)
declare -A PID=() PORT=()
STARTED=()

cleanup() {
    # Stop only what this script started, by pid.
    for p in "${STARTED[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p" 2>/dev/null || true
        fi
    done
    for p in "${STARTED[@]}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
        if kill -0 "$p" 2>/dev/null; then
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "bench/dns.sh: kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port free for UDP and TCP on 127.0.0.1 (bind test, as tests/integration/conftest.py).
free_port() {
    "$PY" - <<'EOF'
import socket
for _ in range(200):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    ok = True
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        t = socket.socket(socket.AF_INET, kind)
        try:
            t.bind(("127.0.0.1", p))
        except OSError:
            ok = False
        t.close()
    if ok:
        print(p); break
EOF
}

# ---- zones and queries ------------------------------------------------------------------

# The bench zone: BENCH_HOSTS hosts with A and AAAA, CNAMEs, MX, a wildcard, TXT, a
# delegation; plain types every server's parser knows (gdnsd has no SVCB). The query file is
# a realistic mix: mostly existing A/AAAA, some CNAME, MX, TXT, NXDOMAIN, wildcard. Fixed seed.
gen_bench() {
    "$PY" - "$TMP/$ORIGIN.zone" "$TMP/queries.txt" "$BENCH_HOSTS" "$ORIGIN" <<'EOF'
import random, sys
zone, qfile, n, origin = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
with open(zone, "w") as f:
    f.write(f"$ORIGIN {origin}.\n$TTL 3600\n"
            "@ 3600 IN SOA ns1 hostmaster 1 7200 3600 1209600 300\n"
            "@ NS ns1\n@ NS ns2\nns1 A 192.0.2.1\nns2 A 192.0.2.2\n"
            "@ A 192.0.2.10\n@ MX 10 mail1\n@ MX 20 mail2\n"
            "mail1 A 192.0.2.25\nmail2 A 192.0.2.26\n@ TXT \"v=spf1 mx -all\"\n"
            "*.wild A 192.0.2.200\nsub NS ns.sub\nns.sub A 192.0.2.53\n")
    for i in range(n):
        f.write(f"h{i} A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n"
                f"h{i} AAAA 2001:db8::{i >> 16:x}:{i & 0xffff:x}\n")
        if i % 10 == 0:
            f.write(f"www{i} CNAME h{i}\n")
rnd = random.Random(2)
with open(qfile, "w") as f:
    for _ in range(100000):
        r = rnd.random()
        i = rnd.randrange(n)
        if r < 0.60:
            f.write(f"h{i}.{origin} A\n")
        elif r < 0.75:
            f.write(f"h{i}.{origin} AAAA\n")
        elif r < 0.80:
            f.write(f"www{i // 10 * 10}.{origin} A\n")
        elif r < 0.85:
            f.write(f"{origin} MX\n")
        elif r < 0.87:
            f.write(f"{origin} TXT\n")
        elif r < 0.94:
            f.write(f"nx{i}.{origin} A\n")
        elif r < 0.98:
            f.write(f"x{i}.wild.{origin} A\n")
        else:
            f.write(f"h{i}.{origin} MX\n")
EOF
}

gen_mem_zone() {
    "$PY" - "$TMP/$MEM_ORIGIN.zone" "$MEM_RECORDS" "$MEM_ORIGIN" <<'EOF'
import sys
path, n, origin = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, "w") as f:
    f.write(f"$ORIGIN {origin}.\n$TTL 3600\n"
            "@ SOA ns1 hostmaster 1 7200 3600 1209600 300\n@ NS ns1\nns1 A 192.0.2.1\n")
    # n records: A and AAAA on n/2 names, like a large hosting zone.
    for i in range(n // 2):
        f.write(f"h{i} A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n"
                f"h{i} AAAA 2001:db8::{i >> 16:x}:{i & 0xffff:x}\n")
EOF
}

# ---- servers ----------------------------------------------------------------------------

# zone list "origin=file ..." for the bench
bench_zones() {
    echo "$ORIGIN=$TMP/$ORIGIN.zone $EXTRA_ZONES"
}

start_ours() { # name port zones...
    local name=$1 port=$2
    shift 2
    local d=$TMP/$name
    mkdir -p "$d"
    {
        echo "server:"
        echo "  identity: bench"
        echo "  listen: [\"127.0.0.1:$port\"]"
        echo "  udp-threads: 2"
        echo "  tcp-threads: 1"
        echo "  log-level: warning"
        echo "  control-socket: $d/ctl.sock" # never the system's /run/multisited.sock
        echo '  status-listen: ""'          # nor the fixed status port 8053
        echo "zones:"
        for z in "$@"; do
            echo "  - origin: ${z%%=*}"
            echo "    file: ${z#*=}"
        done
        [ -z "$MS_EXTRA_CONF" ] || cat "$MS_EXTRA_CONF"
    } >"$d/multisited.yaml"
    "$MS" -c "$d/multisited.yaml" >"$d/log" 2>&1 &
    PID[$name]=$!
    STARTED+=("$!")
}

start_gdnsd() { # name port zones...
    local name=$1 port=$2
    shift 2
    local d=$TMP/$name
    mkdir -p "$d/zones" "$d/run" "$d/state"
    cat >"$d/config" <<EOF
options => {
  listen => [ "127.0.0.1:$port" ]
  udp_threads => 2
  tcp_threads => 1
  run_dir => $d/run
  state_dir => $d/state
}
EOF
    [ -z "$GDNSD_EXTRA_CONF" ] || cat "$GDNSD_EXTRA_CONF" >>"$d/config"
    for z in "$@"; do
        cp "${z#*=}" "$d/zones/${z%%=*}"
    done
    /usr/sbin/gdnsd -c "$d" start >"$d/log" 2>&1 &
    PID[$name]=$!
    STARTED+=("$!")
}

start_knotd() { # name port zones...
    local name=$1 port=$2
    shift 2
    local d=$TMP/$name
    mkdir -p "$d"
    {
        cat <<EOF
server:
    rundir: $d
    pidfile: $d/knot.pid
    listen: 127.0.0.1@$port
    identity: bench
    udp-workers: 2
    tcp-workers: 1
    background-workers: 1
database:
    storage: $d
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: $d
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
EOF
        for z in "$@"; do
            echo "  - domain: ${z%%=*}"
            echo "    file: ${z#*=}"
        done
    } >"$d/knot.conf"
    /usr/sbin/knotd -c "$d/knot.conf" >"$d/log" 2>&1 &
    PID[$name]=$!
    STARTED+=("$!")
}

# Poll (with a deadline, no blind sleep) until the server answers `qname A` with NOERROR.
wait_answer() { # name port qname
    local name=$1 port=$2 qname=$3
    local end=$((SECONDS + START_DEADLINE))
    while :; do
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            echo "bench/dns.sh: $name exited; log:" >&2
            tail -20 "$TMP/$name/log" >&2
            exit 2
        fi
        if kdig @127.0.0.1 -p "$port" +norec +time=1 +retry=0 "$qname" A 2>/dev/null |
            grep -q 'status: NOERROR'; then
            return 0
        fi
        if [ $SECONDS -ge $end ]; then
            echo "bench/dns.sh: $name did not answer $qname within ${START_DEADLINE}s" >&2
            tail -20 "$TMP/$name/log" >&2
            exit 2
        fi
        sleep 0.1
    done
}

cpu_ticks() { # pid -> utime+stime in clock ticks (all threads)
    # Field 2 (comm) may hold spaces; cut after the last ')'.
    local s
    s=$(cat "/proc/$1/stat")
    s=${s##*) }
    awk '{ print $12 + $13 }' <<<"$s"
}

rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# ---- throughput -------------------------------------------------------------------------

gen_bench
QUERIES=$TMP/queries.txt
if [ -n "$EXTRA_QUERIES" ]; then
    # shellcheck disable=SC2086
    cat $EXTRA_QUERIES >>"$QUERIES"
    "$PY" -c "import random,sys; l=open(sys.argv[1]).readlines(); random.Random(3).shuffle(l); \
open(sys.argv[1],'w').writelines(l)" "$QUERIES"
fi
HZ=$(getconf CLK_TCK)

# shellcheck disable=SC2046
for s in $SERVERS; do
    PORT[$s]=$(free_port)
    "start_$s" "$s" "${PORT[$s]}" $(bench_zones)
done
for s in $SERVERS; do
    wait_answer "$s" "${PORT[$s]}" "h1.$ORIGIN"
done

echo "# dnsperf -c $CLIENTS -q $OUTSTANDING -l $DURATION, $ROUNDS round(s), $(wc -l <"$QUERIES") \
query lines, zone $ORIGIN with $BENCH_HOSTS hosts; $(nproc) cores"
RESULTS=$TMP/results.txt
: >"$RESULTS"
for r in $(seq "$ROUNDS"); do
    for s in $SERVERS; do
        pid=${PID[$s]}
        c0=$(cpu_ticks "$pid")
        out=$TMP/dnsperf-$s-$r.txt
        dnsperf -s 127.0.0.1 -p "${PORT[$s]}" -d "$QUERIES" -c "$CLIENTS" -q "$OUTSTANDING" \
            -l "$DURATION" >"$out" 2>&1 || {
            cat "$out" >&2
            die "dnsperf against $s failed"
        }
        c1=$(cpu_ticks "$pid")
        kill -0 "$pid" 2>/dev/null || die "$s died during the run; see $TMP/$s/log"
        done_q=$(awk '/Queries completed:/ { print $3 }' "$out")
        lost=$(awk '/Queries lost:/ { print $3 }' "$out")
        qps=$(awk '/Queries per second:/ { print $4 }' "$out")
        lat=$(awk '/Average Latency/ { print $4 }' "$out")
        if [ -z "$done_q" ] || [ "$done_q" -eq 0 ]; then
            cat "$out" >&2
            die "no queries completed against $s"
        fi
        cpu_us=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="$done_q" \
            'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
        lat_us=$(awk -v l="$lat" 'BEGIN { printf "%.1f", l * 1e6 }')
        printf 'round %d %-6s qps %10.0f  latency %7s us  cpu %6s us/query  (%s done, %s lost)\n' \
            "$r" "$s" "$qps" "$lat_us" "$cpu_us" "$done_q" "$lost"
        # The answers must be the same kind everywhere, or the figures compare nothing:
        # record the share of NOERROR and the average reply size too.
        noerr=$(awk '/Response codes:/ { for (i = 1; i < NF; i++) if ($i == "NOERROR") {
            gsub(/[(%),]/, "", $(i + 2)); print $(i + 2) } }' "$out")
        rsize=$(awk '/Average packet size:/ { print $NF }' "$out")
        grep -q 'Response codes:.*\(SERVFAIL\|REFUSED\|FORMERR\|NOTIMP\)' "$out" &&
            die "$s gave error rcodes: $(grep 'Response codes' "$out")"
        echo "$s $qps $lat_us $cpu_us ${noerr:-0} ${rsize:-0}" >>"$RESULTS"
    done
done

# Stop the throughput servers before the memory test: two cores, and RSS is per server.
for s in $SERVERS; do
    kill -TERM "${PID[$s]}" 2>/dev/null || true
    wait "${PID[$s]}" 2>/dev/null || true
done

# ---- memory -----------------------------------------------------------------------------

gen_mem_zone
declare -A RSS=()
for s in ours knotd; do
    n=mem-$s
    PORT[$n]=$(free_port)
    "start_$s" "$n" "${PORT[$n]}" "$MEM_ORIGIN=$TMP/$MEM_ORIGIN.zone"
    # The last name in the file: the zone is complete once it answers.
    wait_answer "$n" "${PORT[$n]}" "h$((MEM_RECORDS / 2 - 1)).$MEM_ORIGIN"
    RSS[$s]=$(rss_kib "${PID[$n]}")
    kill -TERM "${PID[$n]}" 2>/dev/null || true
    wait "${PID[$n]}" 2>/dev/null || true
done

# ---- figures ----------------------------------------------------------------------------

"$PY" - "$RESULTS" "${RSS[ours]}" "${RSS[knotd]}" "$MEM_RECORDS" "$ROUNDS" <<'EOF'
import statistics, sys
path, rss_ours, rss_knot, nrec, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5])
runs = {}
shares = {}
for line in open(path):
    s, qps, lat, cpu, noerr, rsize = line.split()
    runs.setdefault(s, []).append((float(qps), float(lat), float(cpu)))
    shares.setdefault(s, []).append((float(noerr), float(rsize)))
med = {s: tuple(statistics.median(x[i] for x in v) for i in range(3)) for s, v in runs.items()}
print(f"== median of {rounds} round(s)")
print(f"{'server':8} {'qps':>10} {'latency_us':>11} {'cpu_us/query':>13}")
for s, (q, l, c) in med.items():
    print(f"{s:8} {q:10.0f} {l:11.1f} {c:13.2f}")
fail = []
for s, v in shares.items():
    if "ours" in shares and abs(v[0][0] - shares["ours"][0][0]) > 0.5:
        fail.append(f"NOERROR share differs: ours {shares['ours'][0][0]}%, {s} {v[0][0]}%")
print("answers: " + ", ".join(f"{s} {v[0][0]:.2f}% NOERROR, {v[0][1]:.0f} B avg reply"
                              for s, v in shares.items()))
if "ours" in med:
    o = med["ours"]
    for s, m in med.items():
        if s == "ours":
            continue
        print(f"ours/{s:6} qps {o[0] / m[0]:.2f}  latency {o[1] / m[1]:.2f}  "
              f"cpu/query {o[2] / m[2]:.2f}")
    if "gdnsd" not in med:
        print("note: gdnsd not run, the CPU/query floor is not checked")
    elif o[2] > med["gdnsd"][2]:
        fail.append(f"our CPU/query {o[2]:.2f} us > gdnsd's {med['gdnsd'][2]:.2f} us")
print(f"rss with {nrec} records: ours {rss_ours / 1024:.1f} MiB, knotd {rss_knot / 1024:.1f} MiB, "
      f"ours/knotd {rss_ours / rss_knot:.2f}")
if rss_ours > rss_knot:
    fail.append(f"our RSS {rss_ours} KiB > knotd's {rss_knot} KiB")
for f in fail:
    print(f"FAIL: {f}")
print("PASS" if not fail else "FAIL")
sys.exit(1 if fail else 0)
EOF
