#!/usr/bin/python3
"""scripts/demo.py: the two-site demo on loopback (`make demo`, `make demo-stop`,
`make demo-failover`).

Two sites, each on its own loopback address as if it were its own machine, with the same
ports on both:

    site a  127.0.10.1            site b  127.0.20.1
      :5300 multisited (DNS)        :5300 multisited (DNS)      heartbeats a <-> b (:5400/udp)
      :8080 HAProxy                 :8080 HAProxy
      :8081 web1, :8082 web2        :8081 web1, :8082 web2      (multisite-webapp)
      a/site.sqlite                 b/site.sqlite               multisite-syncd a <-> b (:7800)

One load-balanced name, www.demo.test, answered by both multisiteds with the sites that can
serve, in order (a, then b; b first for clients in b's region, 10.20.0.0/16, by EDNS Client
Subnet).

  demo.py start     start everything in the background, wait until ready, print how to look
  demo.py status    what runs, what DNS answers, multisite-syncd status
  demo.py failover  the walkthrough: each step printed with what it checked; exit 1 on a
                    failed check. Leaves the demo as it found it (both sites up).
  demo.py stop      stop exactly the processes `start` (and `failover`) started, by pid

Every process is started in its own session with its log in the run directory (default
run/demo/); state.json holds each pid with its start time (/proc/PID/stat), so `stop` never
signals a pid the kernel has since given to someone else. Python 3 standard library plus the
Debian tools scripts/deps.sh installs (dig, haproxy).
"""

import argparse
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAPROXY = "/usr/sbin/haproxy"
DIG = "/usr/bin/dig"
NAME = "www.demo.test"
ZONE = "demo.test"
SITES = ("a", "b")
SITE_ID = {"a": 1, "b": 2}
REPLICATED = ["sessions", "guestbook", "counters"]  # never site_identity: it names each db
REGION_B = "10.20.0.0/16"  # "b's region": clients there get b first
ECS_B = "10.20.30.0/24"    # the client subnet the walkthrough asks for
READY_DEADLINE = 45.0      # `make demo` must be ready within 60 s of the build
# A DNS answer or a replicated row reflects a change within this (the test of the test
# shortens it to see checks fail quickly).
STEP_DEADLINE = float(os.environ.get("DEMO_STEP_DEADLINE", "20"))
FAILOVER_FLOOR = 2.0       # issue 6: the client is served by b within 2 s of a's web tier dying


# ---------------------------------------------------------------- layout and configuration

class Demo:
    """Where everything is: run directory, build directory, addresses and ports."""

    def __init__(self, run_dir, build, addr_a="127.0.10.1", addr_b="127.0.20.1",
                 http_port=8080, dns_port=5300, hb_port=5400, sync_port=7800,
                 web_ports=(8081, 8082), status_port=8053):
        self.run = os.path.abspath(run_dir)
        self.build = os.path.abspath(build)
        self.addr = {"a": addr_a, "b": addr_b}
        self.http_port = http_port
        self.dns_port = dns_port
        self.hb_port = hb_port
        self.sync_port = sync_port
        self.web_ports = tuple(web_ports)
        self.status_port = status_port
        self.state_path = os.path.join(self.run, "state.json")

    @classmethod
    def from_state(cls, run_dir):
        with open(os.path.join(run_dir, "state.json")) as f:
            st = json.load(f)
        c = st["config"]
        return cls(run_dir, c["build"], c["addr"]["a"], c["addr"]["b"], c["http_port"],
                   c["dns_port"], c["hb_port"], c["sync_port"], c["web_ports"],
                   c.get("status_port", 8053))

    def config(self):
        return {"build": self.build, "addr": self.addr, "http_port": self.http_port,
                "dns_port": self.dns_port, "hb_port": self.hb_port,
                "sync_port": self.sync_port, "web_ports": list(self.web_ports),
                "status_port": self.status_port}

    def bin(self, prog):
        return os.path.join(self.build, prog)

    def sdir(self, site):
        return os.path.join(self.run, site)

    def path(self, site, name):
        return os.path.join(self.run, site, name)

    def db(self, site):
        return self.path(site, "site.sqlite")

    def identity(self, site):
        return f"db-{site}"

    def dns(self, site):
        return f"{self.addr[site]}:{self.dns_port}"

    def web_argv(self, site, i):
        return [self.bin("multisite-webapp"), "--listen",
                f"{self.addr[site]}:{self.web_ports[i]}", "--db", f"sqlite:{self.db(site)}",
                "--name", f"web{i + 1}", "--site", site]

    def fetch_argv(self, *extra, path="/"):
        servers = []
        for s in SITES:
            servers += ["--server", self.dns(s)]
        return [self.bin("multisite-fetch"), "-4"] + servers + list(extra) + \
            [f"http://{NAME}:{self.http_port}{path}"]

    def dig_argv(self, site, subnet=None):
        argv = [DIG, "+short", "+tries=1", "+time=1", f"@{self.addr[site]}", "-p",
                str(self.dns_port)]
        if subnet:
            argv.append(f"+subnet={subnet}")
        return argv + [NAME, "A"]


def write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def zone_text(d):
    return ("; demo.test: the demo's zone, served by both sites' multisited. www.demo.test is\n"
            "; load-balanced (names: in multisited.yaml), so it has no address records here.\n"
            f"$ORIGIN {ZONE}.\n$TTL 300\n"
            "@     SOA ns-a hostmaster 1 7200 3600 1209600 300\n"
            "@     NS  ns-a\n@     NS  ns-b\n"
            f"ns-a  A   {d.addr['a']}\nns-b  A   {d.addr['b']}\n")


def multisited_yaml(d, me):
    """Site `me`'s multisited. Both sites' files describe both sites in full; they differ only
    in where this one listens and which site it is (heartbeat.self)."""
    out = [f"# multisited for site {me} of the demo (generated by scripts/demo.py)",
           "server:",
           f"  listen: [\"{d.dns(me)}\"]",
           f"  identity: ns-{me}",
           f"  nsid: ns-{me}",
           f"  control-socket: {d.path(me, 'multisited.sock')}",
           f"  status-listen: \"{d.addr[me]}:{d.status_port}\"    # /status, /metrics, dashboard",
           f"  sync-status-socket: {d.path(me, 'sync.sock')}",
           "zones:",
           f"  - origin: {ZONE}",
           "    file: ../demo.test.zone",
           "sites:"]
    for s in SITES:
        ip = d.addr[s]
        out += [f"  - name: {s}",
                f"    addresses: [{ip}]    # what DNS answers: the site's HAProxy",
                f"    heartbeat-peers: [\"{ip}:{d.hb_port}\"]  # the other site knows it by these",
                "    web-servers:"]
        out += [f"      - {{name: web{i + 1}, address: \"{ip}:{p}\"}}"
                for i, p in enumerate(d.web_ports)]
        out += ["    web-check: {type: http, path: /health, expect: ok, interval: 500ms, "
                "timeout: 400ms, rise: 2, fall: 2}",
                "    database:    # a page a web server runs on the database, through HAProxy",
                f"      name: {d.identity(s)}",
                f"      url: http://{ip}:{d.http_port}/db",
                "      interval: 500ms",
                "      timeout: 400ms",
                "    load-balancer:",
                f"      stats: unix:{d.path(s, 'haproxy.sock')}",
                "      web-backend: web",
                "      interval: 250ms"]
    out += ["names:",
            f"  - name: {NAME}",
            "    sites: [a, b]    # the configured order",
            "    order: [locality]",
            "    ttl: 10",
            "    ttl-min: 2",
            "regions:",
            "  - name: a-region",
            "    subnets: [10.10.0.0/16]",
            "    prefer: [a, b]",
            "  - name: b-region",
            f"    subnets: [{REGION_B}]",
            "    prefer: [b, a]",
            "heartbeat:",
            f"  self: {me}",
            f"  id: ns-{me}",
            f"  listen: \"{d.addr[me]}:{d.hb_port}\"",
            "  key-file: ../hb.key",
            "  interval: 100ms",
            "  period: 500ms",
            "  periods: 3"]
    return "\n".join(out) + "\n"


def haproxy_cfg(d, s):
    ip = d.addr[s]
    servers = "".join(f"    server web{i + 1} {ip}:{p} check\n" for i, p in enumerate(d.web_ports))
    return (f"# HAProxy of demo site {s} (generated by scripts/demo.py)\n"
            "global\n"
            f"    stats socket {d.path(s, 'haproxy.sock')} mode 600 level admin\n"
            "    maxconn 2000\n"
            "defaults\n"
            "    mode http\n"
            "    option redispatch 1   # a dead web server's request goes to the other one\n"
            "    retries 1\n"
            "    timeout connect 200ms\n"
            "    timeout client 10s\n"
            "    timeout server 10s\n"
            "    timeout check 400ms\n"
            "frontend www\n"
            f"    bind {ip}:{d.http_port}\n"
            "    # No web server up: close new connections at once instead of answering 503,\n"
            "    # so a client moves to the next site without waiting (issue 6).\n"
            "    tcp-request connection reject if { nbsrv(web) lt 1 }\n"
            "    default_backend web\n"
            "backend web\n"
            "    # The check covers the database: the page must carry its identity.\n"
            "    option httpchk GET /db\n"
            f"    http-check expect string {d.identity(s)}\n"
            "    default-server inter 200ms fall 2 rise 2 maxconn 100\n"
            f"{servers}")


def syncd_yaml(d, s):
    o = "b" if s == "a" else "a"
    return (f"# multisite-syncd of demo site {s} (generated by scripts/demo.py)\n"
            "sync:\n"
            f"  site: {s}\n"
            f"  site_id: {SITE_ID[s]}\n"
            "  backend: sqlite\n"
            f"  database: \"{d.db(s)}\"\n"
            f"  tables: [{', '.join(REPLICATED)}]\n"
            f"  listen: {d.addr[s]}:{d.sync_port}\n"
            f"  key_file: {os.path.join(d.run, 'sync.key')}\n"
            f"  status_socket: {d.path(s, 'sync.sock')}\n"
            "  peers:\n"
            f"    - {{name: {o}, id: {SITE_ID[o]}, address: {d.addr[o]}:{d.sync_port}}}\n")


# ---------------------------------------------------------------- processes, by pid

def proc_start_time(pid):
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), or None when the
    pid is gone or a zombie. With the pid it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


class State:
    """state.json: the configuration and every process we started, by name."""

    def __init__(self, demo, procs=None):
        self.d = demo
        self.procs = procs or {}
        self.popen = {}

    @classmethod
    def load(cls, demo):
        with open(demo.state_path) as f:
            st = json.load(f)
        return cls(demo, st["procs"])

    def save(self):
        tmp = self.d.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"config": self.d.config(), "procs": self.procs}, f, indent=1)
        os.replace(tmp, self.d.state_path)

    def alive(self, name):
        p = self.procs.get(name)
        return bool(p) and proc_start_time(p["pid"]) == p["start"]

    def spawn(self, name, argv, log, cwd=None):
        """Start argv in the background (own session: Ctrl-C at the terminal and make's exit
        do not reach it), record it, save the state at once."""
        logf = open(log, "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=subprocess.STDOUT, cwd=cwd or self.d.run,
                             start_new_session=True)
        logf.close()
        start = None
        for _ in range(100):  # /proc/PID/stat exists as soon as fork returns
            start = proc_start_time(p.pid)
            if start is not None or p.poll() is not None:
                break
            time.sleep(0.01)
        self.procs[name] = {"pid": p.pid, "start": start, "argv": argv, "log": log}
        self.popen[name] = p  # while we are its parent: its exit status, if it dies
        self.save()
        return p

    def exit_status(self, name):
        p = self.popen.get(name)
        rc = p.poll() if p else None
        if rc is None:
            return "exited"
        return f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"

    def stop(self, name, sig=signal.SIGTERM, deadline=10.0):
        """Signal one of ours by pid (only if it is still the process we started) and wait
        for it to go; SIGKILL after the deadline. Returns True if it was running."""
        p = self.procs.get(name)
        if not p or not self.alive(name):
            return False
        os.kill(p["pid"], sig)
        end = time.monotonic() + deadline
        while proc_start_time(p["pid"]) == p["start"]:
            if time.monotonic() > end:
                os.kill(p["pid"], signal.SIGKILL)
                end = time.monotonic() + 5
            time.sleep(0.02)
        return True

    def stop_all(self):
        stopped = []
        # Clients first, then the front ends, the web tier, replication, DNS last.
        order = sorted(self.procs, key=lambda n: (
            0 if n.startswith("client") else 1 if "haproxy" in n else
            2 if "web" in n else 3 if "syncd" in n else 4, n))
        for n in order:
            if self.stop(n):
                stopped.append(n)
        return stopped

    def log_tail(self, name, lines=15):
        try:
            with open(self.procs[name]["log"], "rb") as f:
                return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        except (OSError, KeyError):
            return "(no log)"


# ---------------------------------------------------------------- probes

def wait_for(cond, deadline, interval=0.05):
    """Poll cond() until it returns a true value or the deadline passes; the last value."""
    end = time.monotonic() + deadline
    while True:
        v = cond()
        if v or time.monotonic() >= end:
            return v
        time.sleep(interval)


def dig(d, site, subnet=None):
    """The A records multisited of `site` answers for www.demo.test, in order (None when it
    does not answer). Uses dig itself: the commands printed are the ones run."""
    try:
        r = subprocess.run(d.dig_argv(site, subnet), capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0:
        return None
    return [x for x in r.stdout.split() if not x.startswith(";")]


def request(addr, port, method, path, body=None, headers=None, timeout=3):
    """(status, lower-cased headers, body) or (None, {}, error text)."""
    c = http.client.HTTPConnection(addr, port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode(
            "utf-8", errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return None, {}, f"{type(e).__name__}: {e}"
    finally:
        c.close()


def bindable(addr, port):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                # As the servers do: connections of a previous run in TIME-WAIT do not count.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def syncd_status(d, site, as_json=False):
    argv = [d.bin("multisite-syncd"), "-c", d.path(site, "sync.yaml"), "status"]
    if as_json:
        argv.append("--json")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if as_json:
        return json.loads(r.stdout) if r.returncode == 0 else None
    return (r.stdout + r.stderr).rstrip()


def syncd_ready(d, site):
    try:
        st = syncd_status(d, site, as_json=True)
    except (subprocess.TimeoutExpired, ValueError):
        return False
    return bool(st) and st.get("agent") == "running" and all(
        p.get("out") == "ready" for p in st.get("peers", [])) and len(st.get("peers", [])) == 1


def ms_status(d, me):
    """`multisitectl status --json` of site `me`'s multisited, or None."""
    try:
        r = subprocess.run([d.bin("multisitectl"), "-s", d.path(me, "multisited.sock"),
                            "status", "--json"], capture_output=True, text=True, timeout=5)
        return json.loads(r.stdout) if r.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError):
        return None


def ms_view(d, me):
    """What site `me`'s multisited thinks of each site: {site: "up"|"down"}. The DNS answer
    alone cannot tell "both up" from "nothing known yet" (fallback: all answers with every
    site), so readiness and the walkthrough ask multisitectl too."""
    st = ms_status(d, me)
    if not st:
        return {}
    return {s["name"]: "up" if s.get("available") else "down" for s in st.get("sites", [])}


def ms_why(d, me):
    """One line per site: verdict, how it is known and why (for the walkthrough's output)."""
    st = ms_status(d, me)
    if not st:
        return "multisitectl: no answer"
    out = []
    for s in st.get("sites", []):
        if s.get("monitor") == "heartbeat" and "heartbeat" in s:
            h = s["heartbeat"]
            why = f"heartbeats {'alive' if h.get('alive') else 'stopped'}, reports " \
                  f"{h.get('reported')}"
        else:
            why = s.get("probe", {}).get("reason", "")
        out.append(f"{s['name']} {'up' if s.get('available') else 'DOWN'} "
                   f"({s.get('monitor')}: {why})")
    return "; ".join(out)


def http_view(d, me):
    """The same view as ms_view, as site `me`'s status endpoint serves it. The endpoint
    serves a document the daemon re-renders every 500 ms, so it can lag multisitectl."""
    st_, _, body = request(d.addr[me], d.status_port, "GET", "/status", timeout=2)
    if st_ != 200:
        return {}
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return {s["name"]: "up" if s.get("available") else "down" for s in doc.get("sites", [])}


def ms_ready(d, me):
    return ms_view(d, me) == {"a": "up", "b": "up"}


def status_ready(d, me):
    return http_view(d, me) == {"a": "up", "b": "up"}


def sqlite_value(path, sql, *args):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute(sql, args).fetchone()
        return row[0] if row else None
    finally:
        con.close()


# ---------------------------------------------------------------- start / stop / status

def running_state(d):
    """The State of a demo still running in this run dir, or None."""
    if not os.path.exists(d.state_path):
        return None
    st = State.load(d)
    return st if any(st.alive(n) for n in st.procs) else None


def start_web(d, st, site, i):
    return st.spawn(f"{site}-web{i + 1}", d.web_argv(site, i),
                    d.path(site, f"web{i + 1}.log"))


def web_ready(d, site, i):
    st_, _, body = request(d.addr[site], d.web_ports[i], "GET", "/health", timeout=1)
    return st_ == 200 and body.startswith("ok ")


def cmd_start(d, out=print):
    t0 = time.monotonic()
    if running_state(d):
        out(f"demo: already running in {d.run} (make demo-stop, or scripts/demo.py stop)")
        return 1
    for prog in ("multisited", "multisitectl", "multisite-webapp", "multisite-syncd",
                 "multisite-fetch"):
        if not os.access(d.bin(prog), os.X_OK):
            out(f"demo: {d.bin(prog)} is missing: run make first")
            return 1
    for tool in (HAPROXY, DIG):
        if not os.access(tool, os.X_OK):
            out(f"demo: {tool} is missing: run scripts/deps.sh (make deps)")
            return 1
    busy = [f"{d.addr[s]}:{p}" for s in SITES
            for p in (d.dns_port, d.hb_port, d.sync_port, d.http_port, d.status_port) +
            d.web_ports
            if not bindable(d.addr[s], p)]
    if busy:
        out("demo: in use already: " + ", ".join(busy) +
            " (another demo? `make demo-stop`; or choose: make demo DEMO_ARGS='--http-port 9080"
            " --dns-port 5301 --addr-a 127.0.11.1 --addr-b 127.0.21.1')")
        return 1

    os.makedirs(d.run, exist_ok=True)
    # The run directory is never part of the source tree's status.
    write(os.path.join(d.run, ".gitignore"), "*\n")
    for s in SITES:
        os.makedirs(d.sdir(s), exist_ok=True)
        for f in ("site.sqlite", "site.sqlite-wal", "site.sqlite-shm", "haproxy.sock",
                  "sync.sock"):
            if os.path.exists(d.path(s, f)):
                os.unlink(d.path(s, f))
    st = State(d)
    st.save()

    def run(argv, what):
        r = subprocess.run(argv, capture_output=True, text=True, cwd=d.run)
        if r.returncode != 0:
            raise RuntimeError(f"{what}: {' '.join(argv)}: {r.stderr.strip()}")
        return r.stdout

    try:
        hb_key = os.path.join(d.run, "hb.key")
        if os.path.exists(hb_key):
            os.unlink(hb_key)
        run([d.bin("multisited"), "keygen", hb_key], "heartbeat key")
        write(os.path.join(d.run, "sync.key"),
              run([d.bin("multisite-syncd"), "keygen"], "sync key"), 0o600)
        write(os.path.join(d.run, "demo.test.zone"), zone_text(d))
        for s in SITES:
            write(d.path(s, "multisited.yaml"), multisited_yaml(d, s))
            write(d.path(s, "haproxy.cfg"), haproxy_cfg(d, s))
            write(d.path(s, "sync.yaml"), syncd_yaml(d, s))
            # The web app makes its tables and the identity row; syncd then installs change
            # capture on the replicated tables.
            run([d.bin("multisite-webapp"), "--init", "--db", f"sqlite:{d.db(s)}", "--site", s,
                 "--db-identity", d.identity(s)], f"site {s}: database")
            run([d.bin("multisite-syncd"), "-c", d.path(s, "sync.yaml"), "init"],
                f"site {s}: multisite-syncd init")
            run([d.bin("multisited"), "-t", "-c", d.path(s, "multisited.yaml")],
                f"site {s}: multisited config check")
        for s in SITES:
            st.spawn(f"{s}-syncd", [d.bin("multisite-syncd"), "-c", d.path(s, "sync.yaml"),
                                    "run"], d.path(s, "syncd.log"))
            for i in range(len(d.web_ports)):
                start_web(d, st, s, i)
            st.spawn(f"{s}-haproxy", [HAPROXY, "-f", d.path(s, "haproxy.cfg"), "-db"],
                     d.path(s, "haproxy.log"))
            st.spawn(f"{s}-multisited", [d.bin("multisited"), "-c",
                                         d.path(s, "multisited.yaml")],
                     d.path(s, "multisited.log"), cwd=d.sdir(s))
        want = [d.addr["a"], d.addr["b"]]

        def ready():
            dead = [n for n in st.procs if not st.alive(n)]
            if dead:
                raise RuntimeError(", ".join(f"{n} {st.exit_status(n)}" for n in dead) +
                                   "\n" + "\n".join(
                    f"--- {n} ({st.procs[n]['log']})\n{st.log_tail(n)}" for n in dead))
            return (all(web_ready(d, s, i) for s in SITES for i in range(len(d.web_ports)))
                    and all(syncd_ready(d, s) for s in SITES)
                    and all(ms_ready(d, s) for s in SITES)
                    and all(status_ready(d, s) for s in SITES)
                    and all(dig(d, s) == want for s in SITES))
        left = READY_DEADLINE - (time.monotonic() - t0)
        if not wait_for(ready, left, 0.1):
            raise RuntimeError(
                f"not ready after {READY_DEADLINE:.0f}s: dig a -> {dig(d, 'a')}, "
                f"dig b -> {dig(d, 'b')}, wanted {want}\n" + "\n".join(
                    f"--- {n}\n{st.log_tail(n)}" for n in st.procs if "multisited" in n or
                    "syncd" in n))
    except (RuntimeError, OSError, KeyboardInterrupt) as e:
        out(f"demo: start failed: {e or type(e).__name__}")
        st.stop_all()
        out("demo: stopped everything it had started")
        return 1
    out(f"demo: ready in {time.monotonic() - t0:.1f}s; run directory {d.run}")
    print_howto(d, out)
    return 0


def print_howto(d, out=print):
    rel = os.path.relpath(d.run, os.getcwd())
    rel = rel if not rel.startswith("..") else d.run
    b = os.path.relpath(d.build, os.getcwd())
    b = b if not b.startswith("..") else d.build
    out("")
    for s in SITES:
        ip = d.addr[s]
        out(f"site {s}: multisited {d.dns(s)}  HAProxy {ip}:{d.http_port}  web "
            + " ".join(f"{ip}:{p}" for p in d.web_ports)
            + f"  syncd {ip}:{d.sync_port}  db {rel}/{s}/site.sqlite")
    out("")
    out(f"Ask either site's DNS server for {NAME} (a then b; b first from b's region):")
    for s in SITES:
        out("  " + " ".join(x if not x.startswith("/usr/bin/") else "dig"
                            for x in d.dig_argv(s)))
    out("  " + " ".join(x if not x.startswith("/usr/bin/") else "dig"
                        for x in d.dig_argv("a", ECS_B)))
    out("")
    out("The client (libmultisite: keeps the DNS order, sticks to a site until it fails):")
    argv = d.fetch_argv("--count", "20", "--interval", "500")
    argv[0] = os.path.join(b, "multisite-fetch")
    out("  " + " ".join(argv))
    argv = d.fetch_argv("--count", "20", "--interval", "500", "--session", "--body",
                        path="/session")
    argv[0] = os.path.join(b, "multisite-fetch")
    out("  " + " ".join(argv) + "    # one session, wherever it is served")
    out(f"  curl -si --resolve {NAME}:{d.http_port}:{d.addr['a']} "
        f"http://{NAME}:{d.http_port}/session     # one site, by hand")
    out("")
    out("Status (dashboard, /status JSON, /metrics for Prometheus):")
    for s in SITES:
        out(f"  http://{d.addr[s]}:{d.status_port}/    # site {s}'s multisited")
    for s in SITES:
        out(f"  {b}/multisitectl -s {rel}/{s}/multisited.sock status   # site {s}'s view, "
            "with reasons")
    for s in SITES:
        out(f"  tail -f {rel}/{s}/multisited.log        # site {s}'s decisions as they happen")
    for s in SITES:
        out(f"  {b}/multisite-syncd -c {rel}/{s}/sync.yaml status")
    out("  scripts/demo.py status" + ("" if rel == "run/demo" else f" --run-dir {rel}"))
    out("")
    out("make demo-failover   walk through a site failure and back")
    out("make demo-stop       stop everything the demo started")


def cmd_stop(d, out=print):
    if not os.path.exists(d.state_path):
        out(f"demo: nothing to stop in {d.run}")
        return 0
    st = State.load(d)
    stopped = st.stop_all()
    left = [n for n in st.procs if st.alive(n)]
    out(f"demo: stopped {len(stopped)} process(es)" +
        (": " + " ".join(f"{n}({st.procs[n]['pid']})" for n in stopped) if stopped else ""))
    if left:
        out("demo: still running: " + ", ".join(left))
        return 1
    os.replace(d.state_path, d.state_path + ".stopped")
    return 0


def cmd_status(d, out=print):
    if not os.path.exists(d.state_path):
        out(f"demo: not started in {d.run}")
        return 1
    st = State.load(d)
    for n in sorted(st.procs):
        p = st.procs[n]
        out(f"  {n:16} pid {p['pid']:>7}  {'running' if st.alive(n) else 'not running'}")
    for s in SITES:
        out(f"dig @{d.dns(s)} {NAME}: {dig(d, s)}   from b's region ({ECS_B}): "
            f"{dig(d, s, ECS_B)}")
    for s in SITES:
        r = subprocess.run([d.bin("multisitectl"), "-s", d.path(s, "multisited.sock"), "status"],
                           capture_output=True, text=True, timeout=10)
        out(f"multisitectl status, site {s}:")
        out("  " + (r.stdout + r.stderr).rstrip().replace("\n", "\n  "))
    for s in SITES:
        out(f"multisite-syncd site {s}:")
        out("  " + syncd_status(d, s).replace("\n", "\n  "))
    return 0


# ---------------------------------------------------------------- the failover walkthrough

class Client:
    """multisite-fetch running through the walkthrough, every output line stamped with the
    monotonic time it arrived (the request's end), kept and copied to client.log."""

    def __init__(self, d, st, interval_ms=100, path="/health", session=False):
        """session: keep the session cookie (multisite-fetch --session) and read /session,
        so each request's body says which session it is and how many visits it has."""
        self.lines = []  # (monotonic time, line)
        self.lock = threading.Lock()
        self.st = st
        log = os.path.join(d.run, "client.log")
        self.logf = open(log, "a")
        extra = ["--session", "--body"] if session else []
        argv = d.fetch_argv("--count", "1000000", "--interval", str(interval_ms),
                            "--timeout", "1000", *extra, path="/session" if session else path)
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1)
        st.procs["client"] = {"pid": self.proc.pid, "start": proc_start_time(self.proc.pid),
                              "argv": argv, "log": log}
        st.save()
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.proc.stdout:
            now = time.monotonic()
            with self.lock:
                self.lines.append((now, line.rstrip("\n")))
            self.logf.write(line)
            self.logf.flush()

    def requests(self, since=0.0):
        """[(time, site or None for a failure, line, body as JSON or None)] of the requests
        that ended after `since`."""
        out = []
        with self.lock:
            lines = list(self.lines)
        for t, line in lines:
            if line.startswith("{") and out and out[-1][3] is None:  # the body, next line
                try:
                    out[-1] = out[-1][:3] + (json.loads(line),)
                except ValueError:
                    pass
            elif line.startswith("#") and " FAILED " in line:
                out.append((t, None, line, None))
            elif line.startswith("#") and "served-by=" in line:
                sb = line.split("served-by=")[1].split()[0]
                out.append((t, sb.split("/")[0], line, None))
        return [r for r in out if r[0] >= since]

    def events(self, since=0.0):
        """What the library reported (resolutions, failures, moves): the indented lines."""
        with self.lock:
            return [line.strip() for t, line in self.lines
                    if t >= since and line.startswith(" ")]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # our child, by pid
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.t.join(5)
        self.logf.close()
        self.st.procs.pop("client", None)
        self.st.save()


class Walk:
    """Steps and checks, printed as they happen and kept for failover.json."""

    def __init__(self, out):
        self.out = out
        self.steps = []
        self.failed = 0

    def step(self, title):
        self.steps.append({"step": title, "checks": []})
        self.out("")
        self.out(f"== {len(self.steps)}. {title}")

    def say(self, text):
        self.out(f"   {text}")

    def check(self, what, ok, detail=""):
        self.steps[-1]["checks"].append({"check": what, "ok": bool(ok), "detail": detail})
        if not ok:
            self.failed += 1
        lines = detail if isinstance(detail, list) else []
        detail = "" if lines else " ".join(str(detail).split())  # one line
        self.steps[-1]["checks"][-1]["detail"] = lines or detail
        self.out(f"   {'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail else ""))
        for line in lines:
            self.out(f"          {line}")
        return ok

    def expect_dns(self, d, want, what, subnet=None, deadline=STEP_DEADLINE):
        """Both sites' multisited answer `want` (waiting up to the deadline)."""
        for s in SITES:
            t = time.monotonic()
            got = wait_for(lambda: dig(d, s, subnet) == want and want, deadline)
            got = want if got else dig(d, s, subnet)
            cmd = " ".join(x if not x.startswith("/usr/bin/") else "dig"
                           for x in d.dig_argv(s, subnet))
            self.check(f"{cmd} -> {' '.join(want) or 'nothing'} ({what})", got == want,
                       f"after {time.monotonic() - t:.1f}s" if got == want else
                       f"got {got} after {deadline:.0f}s")


def cmd_failover(d, out=print):
    st = running_state(d)
    if not st:
        out(f"demo: not running in {d.run}: start it first (make demo)")
        return 1
    missing = [n for n in (f"{s}-{p}" for s in SITES
                           for p in ("multisited", "haproxy", "syncd")) if not st.alive(n)]
    if missing:
        out("demo: not all of it is running (" + ", ".join(missing) +
            "): make demo-stop && make demo")
        return 1
    A, B = d.addr["a"], d.addr["b"]
    w = Walk(out)
    client = None
    tag = uuid.uuid4().hex[:10]
    try:
        # Site a's web tier may be down after an interrupted walkthrough: bring it back.
        for i in range(len(d.web_ports)):
            if not st.alive(f"a-web{i + 1}"):
                start_web(d, st, "a", i)
        w.step("both sites up: every DNS server answers a, then b")
        w.check("site a's and site b's web servers answer /health",
                wait_for(lambda: all(web_ready(d, s, i) for s in SITES
                                     for i in range(len(d.web_ports))), STEP_DEADLINE))
        ok = wait_for(lambda: all(ms_ready(d, s) for s in SITES), STEP_DEADLINE)
        w.check("each multisited: its own site up by probes, the other by heartbeats",
                ok, [f"{s}'s multisitectl status: {ms_why(d, s)}" for s in SITES])
        w.expect_dns(d, [A, B], "a then b")

        w.step(f"a client in b's region ({ECS_B}, sent as EDNS Client Subnet) gets b, then a")
        w.expect_dns(d, [B, A], "b's region: b then a", subnet=ECS_B)
        w.expect_dns(d, [A, B], "a client elsewhere: a then b", subnet="192.0.2.0/24")

        w.step("a session made through one of a's web servers is served by the other")
        p1, p2 = d.web_ports[0], d.web_ports[1]
        code, h, body = request(A, p1, "GET", "/session")
        cookie = h.get("set-cookie", "").split(";")[0]
        s1 = json.loads(body) if code == 200 else {}
        w.check(f"GET http://{A}:{p1}/session makes a session", code == 200 and
                cookie.startswith("msid=") and s1.get("visits") == 1,
                f"{h.get('x-served-by')}, id {s1.get('id')}, visits {s1.get('visits')}"
                if code == 200 else f"{code} {body[:200]}")
        sid = s1.get("id", "")
        code, h, body = request(A, p2, "GET", "/session", headers={"Cookie": cookie})
        s2 = json.loads(body) if code == 200 else {}
        w.check(f"GET http://{A}:{p2}/session with that cookie: the same session, "
                "visit 2, served by web2", code == 200 and s2.get("id") == sid and
                s2.get("visits") == 2 and s2.get("served_by") == {"site": "a", "web": "web2"},
                f"{h.get('x-served-by')}, id {s2.get('id')}, visits {s2.get('visits')}"
                if code == 200 else f"{code} {body[:200]}")
        w.check("the session reached site b's database (multisite-syncd)",
                wait_for(lambda: sqlite_value(d.db("b"), "SELECT visits FROM sessions "
                                              "WHERE id = ?", sid) == 2, STEP_DEADLINE))

        w.step("a client with a session of its own is served by site a")
        client = Client(d, st, session=True)
        w.say("$ " + " ".join(client.argv))
        ok = wait_for(lambda: len([r for r in client.requests() if r[3]]) >= 3, STEP_DEADLINE)
        reqs = client.requests()
        w.check("the client's requests are served by site a", ok and
                all(r[1] == "a" for r in reqs), reqs[-1][2] if reqs else "no request yet")
        c_sid = reqs[0][3].get("id") if reqs and reqs[0][3] else None
        w.check("they all carry the client's one session (multisite-fetch --session)",
                c_sid and all(r[3] and r[3].get("id") == c_sid for r in reqs),
                f"id {c_sid}, visits {reqs[-1][3].get('visits') if reqs[-1][3] else '?'}"
                if reqs else "")
        w.check("the client's session is in site b's database too",
                wait_for(lambda: sqlite_value(d.db("b"), "SELECT visits FROM sessions "
                                              "WHERE id = ?", c_sid), STEP_DEADLINE))

        w.step("site a's web servers stopped")
        t_kill = time.monotonic()
        for i in range(len(d.web_ports)):
            st.stop(f"a-web{i + 1}")
        w.say(f"stopped a-web1 and a-web2 (SIGTERM by pid) in {time.monotonic() - t_kill:.2f}s")
        moved = wait_for(lambda: [r for r in client.requests(t_kill) if r[1] == "b"],
                         STEP_DEADLINE, 0.01)
        if moved:
            dt = moved[0][0] - t_kill
            w.check(f"the client moved to site b within {FAILOVER_FLOOR:.0f}s",
                    dt <= FAILOVER_FLOOR, f"{dt:.3f}s: {moved[0][2]}")
            wait_for(lambda: client.requests(t_kill)[0][3], 2)
            last_a = [r for r in client.requests() if r[1] == "a" and r[3]]
            first_b = [r for r in client.requests(t_kill) if r[1] == "b"][0][3] or {}
            w.check("its session goes on at site b (same id, not new)",
                    first_b.get("id") == c_sid and first_b.get("new") is False,
                    f"last at a: visit {last_a[-1][3].get('visits') if last_a else '?'}; "
                    f"first at b: id {first_b.get('id')}, visit {first_b.get('visits')}, "
                    f"served by {first_b.get('served_by')}")
        else:
            w.check("the client moved to site b", False, "no request served by b")
        for e in client.events(t_kill)[:4]:
            w.say(f"client: {e}")
        failed = [r for r in client.requests(t_kill) if r[1] is None]
        w.check("no request of the client failed", not failed,
                failed[0][2] if failed else "")
        code, h, body = request(A, d.http_port, "GET", "/health", timeout=2)
        w.check(f"site a's HAProxy ({A}:{d.http_port}) serves nothing", code != 200,
                f"HTTP {code}" if code else f"connection closed ({body[:60]})")
        w.expect_dns(d, [B], "site a left out")
        w.check("a's multisited: site a down (its probes); b's: site a down (a's heartbeats)",
                ms_view(d, "a") == {"a": "down", "b": "up"} and
                ms_view(d, "b") == {"a": "down", "b": "up"},
                [f"{s}'s multisitectl status: {ms_why(d, s)}" for s in SITES])
        w.expect_dns(d, [B], "b's region: b only", subnet=ECS_B)

        w.step("writes made at site b")
        code, h, body = request(B, d.http_port, "GET", "/session", headers={"Cookie": cookie})
        s3 = json.loads(body) if code == 200 else {}
        w.check(f"GET http://{B}:{d.http_port}/session with a's cookie: the same session, "
                "visit 3, served by site b", code == 200 and s3.get("id") == sid and
                s3.get("visits") == 3 and s3.get("served_by", {}).get("site") == "b",
                f"{h.get('x-served-by')}, id {s3.get('id')}, visits {s3.get('visits')}"
                if code == 200 else f"{code} {body[:200]}")
        msg = f"written at site b while a was down ({tag})"
        code, h, body = request(B, d.http_port, "POST", "/guestbook",
                             body=json.dumps({"author": "demo", "message": msg}),
                             headers={"Content-Type": "application/json"})
        w.check(f"POST http://{B}:{d.http_port}/guestbook: entry '{msg}'", code == 201,
                f"{code} {h.get('x-served-by')}")

        w.step("site a restored")
        t_up = time.monotonic()
        for i in range(len(d.web_ports)):
            start_web(d, st, "a", i)
        w.check("a's web servers answer /health again",
                wait_for(lambda: all(web_ready(d, "a", i) for i in range(len(d.web_ports))),
                         STEP_DEADLINE), f"after {time.monotonic() - t_up:.1f}s")
        ent = wait_for(lambda: sqlite_value(
            d.db("a"), "SELECT site FROM guestbook WHERE message = ?", msg), STEP_DEADLINE)
        w.check("a's database has b's guestbook entry", ent == "b",
                f"site column {ent!r}" if ent else "not there")
        q = "SELECT visits FROM sessions WHERE id = ?"
        v = wait_for(lambda: sqlite_value(d.db("a"), q, sid) == 3, STEP_DEADLINE)
        w.check("a's database has the session's visit at b (visits = 3)", v,
                f"visits {sqlite_value(d.db('a'), q, sid)}")
        ok = wait_for(lambda: d.identity("a") in request(A, d.http_port, "GET", "/db")[2],
                      STEP_DEADLINE)
        w.check(f"a's HAProxy ({A}:{d.http_port}) serves a's database page again", ok,
                f"after {time.monotonic() - t_up:.1f}s")
        code, h, body = request(A, d.http_port, "GET", "/guestbook.json")
        listed = code == 200 and any(e.get("message") == msg for e in
                                     json.loads(body).get("entries", []))
        w.check(f"http://{A}:{d.http_port}/guestbook.json lists it, served by site a",
                listed and h.get("x-served-by", "").startswith("a/"),
                f"{code} {h.get('x-served-by')}" if code == 200 else f"{code} {body[:80]}")
        ok = wait_for(lambda: all(ms_ready(d, s) for s in SITES), STEP_DEADLINE)
        w.check("both multisiteds: site a up again", ok,
                [f"{s}'s multisitectl status: {ms_why(d, s)}" for s in SITES])
        w.expect_dns(d, [A, B], "a then b again")
        w.expect_dns(d, [B, A], "b's region: b then a again", subnet=ECS_B)
        # The client re-resolves when the TTL runs out and starts from the top again.
        back = wait_for(lambda: [r for r in client.requests(t_up) if r[1] == "a" and r[3]],
                        STEP_DEADLINE, 0.05)
        w.check("the client is back on site a after the answer's TTL ran out", back,
                f"{back[0][0] - t_up:.1f}s after the restart: {back[0][2]}" if back else "")
        last_b = [r for r in client.requests() if r[1] == "b" and r[3]]
        body_a = back[0][3] if back else {}
        w.check("with the same session, its visits at b included",
                body_a.get("id") == c_sid and last_b and
                body_a.get("visits", 0) > last_b[-1][3].get("visits", 0),
                f"last at b: visit {last_b[-1][3].get('visits') if last_b else '?'}; "
                f"back at a: id {body_a.get('id')}, visit {body_a.get('visits')}")
    except Exception as e:  # report it as a failed check: the walkthrough must end cleanly
        if not w.steps:
            w.step("walkthrough")
        w.check("no error", False, f"{type(e).__name__}: {e}")
    finally:
        if client:
            client.stop()
        # Leave the demo as we found it: both sites' web tiers running.
        for i in range(len(d.web_ports)):
            if not st.alive(f"a-web{i + 1}"):
                start_web(d, st, "a", i)
    with open(os.path.join(d.run, "failover.json"), "w") as f:
        json.dump({"failed": w.failed, "steps": w.steps}, f, indent=1)
    n = sum(len(s["checks"]) for s in w.steps)
    out("")
    out(f"demo-failover: {n - w.failed} of {n} checks passed" +
        (f", {w.failed} FAILED" if w.failed else ""))
    return 1 if w.failed else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="the two-site multisite demo on loopback")
    ap.add_argument("command", choices=["start", "stop", "status", "failover"])
    ap.add_argument("--run-dir", default=os.path.join(REPO, "run", "demo"),
                    help="where state, configs, databases and logs go (default run/demo)")
    ap.add_argument("--build", default=os.path.join(REPO, "build"),
                    help="where the programs are (default build)")
    ap.add_argument("--addr-a", default="127.0.10.1", help="site a's loopback address")
    ap.add_argument("--addr-b", default="127.0.20.1", help="site b's loopback address")
    ap.add_argument("--http-port", type=int, default=8080,
                    help="HAProxy's port at each site; the web servers get the next two")
    ap.add_argument("--dns-port", type=int, default=5300, help="multisited's port at each site")
    a = ap.parse_args(argv)
    if a.command == "start":
        d = Demo(a.run_dir, a.build, a.addr_a, a.addr_b, a.http_port, a.dns_port,
                 web_ports=(a.http_port + 1, a.http_port + 2))
        return cmd_start(d)
    if not os.path.exists(os.path.join(a.run_dir, "state.json")):
        if a.command == "stop":
            print(f"demo: nothing to stop in {a.run_dir}")
            return 0
        print(f"demo: not running in {a.run_dir}: start it first (make demo)")
        return 1
    d = Demo.from_state(a.run_dir)
    return {"stop": cmd_stop, "status": cmd_status, "failover": cmd_failover}[a.command](d)


if __name__ == "__main__":
    sys.exit(main())
