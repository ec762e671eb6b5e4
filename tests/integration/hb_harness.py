"""Heartbeat harness shared by tests/integration/test_heartbeat_netns.py and
bench/heartbeat.sh: sites in their own network namespaces, joined through a bridge, each
running the heartbeat driver (`test_heartbeat --drive CONFIG`, see tests/unit/test_heartbeat.c).

    hub namespace:   bridge hbbr
    node namespace:  veth to the bridge, 10.213.0.N/24, one driver

Partitions are iptables DROP rules inside a node's namespace; random loss is iptables'
`statistic` match (this kernel has no netem). Everything is created with names unique to this
process and removed in close(): namespaces (which takes their veths and rules with them)
and the drivers, stopped by the pid we started.

It also builds heartbeat datagrams itself, from docs/heartbeat.md alone (struct + hmac), so
the tests check the wire format against a second implementation.
"""

import hashlib
import hmac
import os
import secrets
import signal
import struct
import subprocess
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("MS_BUILD") or os.path.join(REPO, "build")
DRIVER = os.path.join(BUILD, "tests", "test_heartbeat")
HB_PORT = 5400


def mono_ms():
    """CLOCK_MONOTONIC in whole ms, truncated like the driver's line stamps (system-wide
    clock, so comparable across namespaces)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000000


def sh(*argv, check=True):
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r


def can_netns():
    """(True, '') when we can create namespaces, else (False, why)."""
    if os.geteuid() != 0:
        return False, "needs root (ip netns, iptables); CI runs as root"
    return True, ""


def write_key(path):
    with open(path, "w") as f:
        f.write(f"1 {secrets.token_hex(32)}\n")
    os.chmod(path, 0o600)


def read_key(path, key_id=1):
    for line in open(path):
        parts = line.split()
        if parts and not parts[0].startswith("#") and int(parts[0]) == key_id:
            return bytes.fromhex(parts[1])
    raise KeyError(key_id)


def make_beat(key, key_id, site, sender, epoch, seq, ts_ms=None, state=1, reason=0,
              load=0xFFFF, rtt_us=0xFFFFFFFF, digest=b"\0" * 16):
    """A heartbeat datagram built from the byte diagram in docs/heartbeat.md."""
    if ts_ms is None:
        ts_ms = int(time.time() * 1000)
    s, i = site.encode(), sender.encode()
    length = 62 + len(s) + len(i) + 32
    body = struct.pack(">4sBBHIQQQBBHI16sBB", b"MSHB", 1, 1, length, key_id, epoch, seq, ts_ms,
                       state, reason, load, rtt_us, digest, len(s), len(i)) + s + i
    assert len(body) == length - 32
    return body + hmac.new(key, body, hashlib.sha256).digest()


class Driver:
    """One heartbeat driver process in a namespace; its stdout lines are collected by a thread."""

    def __init__(self, net, node, conf, state="up"):
        self.node, self.conf = node, conf
        argv = ["ip", "netns", "exec", net.ns(node), DRIVER, "--drive", conf, "--state", state]
        self.err = open(conf + ".log", "a")
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.err, text=True, bufsize=1)
        self.lock = threading.Lock()
        self.events = []  # (t_ms, site, {field: value})
        self.state = {}  # site -> latest fields
        self.stats_lines = []
        self.reloads = []
        self.ready = False
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        for line in self.p.stdout:
            line = line.strip()
            with self.lock:
                if line.startswith("ready"):
                    self.ready = True
                elif line.startswith("reload "):
                    self.reloads.append(line.split()[1])
                elif line.startswith("stats "):
                    self.stats_lines.append(
                        {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])})
                elif line.startswith("t="):
                    f = dict(kv.split("=", 1) for kv in line.split())
                    self.events.append((int(f["t"]), f["site"], f))
                    self.state[f["site"]] = f

    def site(self, name):
        with self.lock:
            return dict(self.state.get(name, {}))

    def available(self, name):
        return self.site(name).get("available") == "1"

    def events_since(self, t_ms, site=None):
        with self.lock:
            return [e for e in self.events if e[0] >= t_ms and (site is None or e[1] == site)]

    def down_transitions(self, site, since=0):
        """Times (ms) at which `site` went from available to not, since `since`."""
        out, prev = [], None
        with self.lock:
            for t, s, f in self.events:
                if s != site:
                    continue
                av = f["available"] == "1"
                if prev and not av and t >= since:
                    out.append(t)
                prev = av
        return out

    def command(self, cmd):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def stats(self, deadline=5.0):
        with self.lock:
            n = len(self.stats_lines)
        self.command("stats")
        wait_for(lambda: len(self.stats_lines) > n, deadline, "driver stats")
        with self.lock:
            return self.stats_lines[-1]

    def reload(self, conf, deadline=5.0):
        """hb_reload() with conf; returns "ok" or "failed"."""
        with self.lock:
            n = len(self.reloads)
        self.command(f"reload {conf}")
        wait_for(lambda: len(self.reloads) > n, deadline, "driver reload")
        with self.lock:
            return self.reloads[n]

    def alive(self):
        return self.p.poll() is None

    def kill(self, sig=signal.SIGKILL):
        if self.p.poll() is None:
            self.p.send_signal(sig)  # our own child, by pid
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.err.close()

    def log(self):
        try:
            return open(self.conf + ".log").read()[-3000:]
        except OSError:
            return ""


def wait_for(cond, deadline, what, interval=0.02):
    end = time.monotonic() + deadline
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        time.sleep(interval)


class Net:
    """A hub namespace with a bridge and one namespace per node, 10.213.0.<i+1>/24."""

    serial = 0

    def __init__(self, nodes):
        Net.serial += 1
        self.tag = f"hb{os.getpid()}n{Net.serial}"
        self.nodes = list(nodes)
        self.dir = tempfile.mkdtemp(prefix="ms-hb-")
        self.key = os.path.join(self.dir, "hb.key")
        write_key(self.key)
        self.drivers = []
        self.created = []
        try:
            self._build()
        except Exception:
            self.close()
            raise

    def ns(self, node):
        return f"{self.tag}-{node}"

    def addr(self, node):
        return f"10.213.0.{self.nodes.index(node) + 1}"

    def _build(self):
        hub = f"{self.tag}-hub"
        sh("ip", "netns", "add", hub)
        self.created.append(hub)
        sh("ip", "-n", hub, "link", "add", "hbbr", "type", "bridge")
        sh("ip", "-n", hub, "link", "set", "hbbr", "up")
        for k, node in enumerate(self.nodes):
            ns = self.ns(node)
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name",
               f"p{k}", "netns", hub)
            sh("ip", "-n", hub, "link", "set", f"p{k}", "master", "hbbr", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.addr(node)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def iptables(self, node, *rule):
        sh("ip", "netns", "exec", self.ns(node), "iptables", *rule)

    def cut(self, node):
        """Cut node off: drop everything in and out of its namespace."""
        self.iptables(node, "-I", "INPUT", "-i", "eth0", "-j", "DROP")
        self.iptables(node, "-I", "OUTPUT", "-o", "eth0", "-j", "DROP")

    def heal(self, node):
        self.iptables(node, "-F", "INPUT")
        self.iptables(node, "-F", "OUTPUT")

    def loss(self, node, p):
        """Drop heartbeats arriving at node with probability p (one direction only)."""
        self.iptables(node, "-A", "INPUT", "-p", "udp", "--dport", str(HB_PORT), "-m",
                      "statistic", "--mode", "random", "--probability", str(p), "-j", "DROP")

    def conf(self, node, site, sites, names=None, extra="", key=None, file=None):
        """Write a config for `node` (a sender of `site`); sites: {site: [nodes]}. key: the
        key file (default: the shared one); file: the config's file name."""
        names = names or [("www.example.com", list(sites))]
        out = ["server:", "  listen: 127.0.0.1:1", "sites:"]
        for k, (s, members) in enumerate(sites.items()):
            peers = ", ".join(f"{self.addr(m)}:{HB_PORT}" for m in members)
            out += [f"  - name: {s}", f"    addresses: [192.0.2.{k + 1}]",
                    f"    web-servers: [127.0.0.1:{k + 1}]", f"    heartbeat-peers: [{peers}]"]
        out.append("names:")
        for n, ss in names:
            out += [f"  - name: {n}", f"    sites: [{', '.join(ss)}]"]
        out += ["heartbeat:", f"  self: {site}", f"  id: {node}",
                f"  listen: {self.addr(node)}:{HB_PORT}", f"  key-file: {key or self.key}"]
        path = os.path.join(self.dir, file or f"{node}.yaml")
        with open(path, "w") as f:
            f.write("\n".join(out) + "\n" + extra)
        return path

    def start(self, node, conf, state="up"):
        d = Driver(self, node, conf, state)
        self.drivers.append(d)
        wait_for(lambda: d.ready or not d.alive(), 10, f"driver {node} ready")
        assert d.alive(), f"driver {node} did not start:\n{d.log()}"
        return d

    def close(self):
        """Stop everything. Returns the drivers that did not exit cleanly on SIGTERM (exit
        status, sanitizer reports): [(node, status, log tail)]."""
        bad = []
        for d in self.drivers:
            was_running = d.alive()
            d.kill(signal.SIGTERM)
            if was_running and d.p.returncode != 0:
                bad.append((d.node, d.p.returncode, d.log()))
        for ns in reversed(self.created):
            sh("ip", "netns", "del", ns, check=False)
        self.created = []
        sh("rm", "-rf", self.dir, check=False)
        return bad


# ---- end to end: multisited in the namespaces (bench/heartbeat.sh, answers section) ----

MULTISITED = os.path.join(BUILD, "multisited")

TCP_LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(128)
while True:
    c, _ = s.accept()
    c.close()
"""

# Asks `server` for `name` A every 10 ms; prints "t=MONO_MS ip,ip" whenever the set changes.
DNS_WATCH = """
import sys, time
import dns.message, dns.query
server, name = sys.argv[1], sys.argv[2]
q = dns.message.make_query(name, "A")
last = None
while True:
    try:
        r = dns.query.udp(q, server, port=53, timeout=0.2)
        ips = ",".join(sorted(rr.address for rrset in r.answer for rr in rrset
                              if rrset.rdtype == 1)) or "-"
    except Exception:
        ips = "error"
    if ips != last:
        print(f"t={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000000} {ips}", flush=True)
        last = ips
    time.sleep(0.01)
"""


class Proc:
    """A process in a node's namespace, output to a log file, stopped by its pid."""

    def __init__(self, net, node, argv, log, stdout=None):
        self.log_path = log
        self._log = open(log, "ab")
        self.p = subprocess.Popen(["ip", "netns", "exec", net.ns(node)] + argv,
                                  stdout=stdout or self._log, stderr=self._log,
                                  stdin=subprocess.DEVNULL, text=stdout is not None)

    def alive(self):
        return self.p.poll() is None

    def stop(self, sig=signal.SIGTERM):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._log.close()
        return self.p.returncode

    def log(self, n=40):
        with open(self.log_path, "rb") as f:
            return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])


class DnsWatch(Proc):
    """DNS_WATCH in a namespace; answers() is the latest set, changes the (t, set) history."""

    def __init__(self, net, node, server, name):
        super().__init__(net, node, ["/usr/bin/python3", "-c", DNS_WATCH, server, name],
                         os.path.join(net.dir, f"watch-{node}.log"), stdout=subprocess.PIPE)
        self.lock = threading.Lock()
        self.changes = []
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        for line in self.p.stdout:
            t, ips = line.split()
            with self.lock:
                self.changes.append((int(t[2:]), set(ips.split(","))))

    def answers(self):
        with self.lock:
            return self.changes[-1][1] if self.changes else None

    def stable(self, pred, ms):
        """The latest answer satisfies pred and has not changed for ms."""
        with self.lock:
            return bool(self.changes) and pred(self.changes[-1][1]) and \
                mono_ms() - self.changes[-1][0] >= ms

    def first_since(self, t_ms, pred):
        with self.lock:
            for t, ips in self.changes:
                if t >= t_ms and pred(ips):
                    return t
        return None


def ms_conf(net, me, site_nodes):
    """A multisited config for node `me`; site_nodes: {site: node}, one multisited per site,
    each site's web tier a TCP listener at the node's address, port 8080."""
    zone = os.path.join(net.dir, "example.com.zone")
    with open(zone, "w") as f:
        f.write("$ORIGIN example.com.\n$TTL 300\n@ SOA ns1 h 1 7200 3600 1209600 300\n"
                "@ NS ns1\nns1 A 192.0.2.53\n")
    out = ["server:", f"  listen: [\"{net.addr(me)}:53\"]", "zones:",
           "  - origin: example.com", f"    file: {zone}", "sites:"]
    for k, (site, node) in enumerate(site_nodes.items()):
        out += [f"  - name: {site}", f"    addresses: [192.0.2.{10 + k}]",
                f"    web-servers: [\"{net.addr(node)}:8080\"]",
                "    web-check: {type: tcp, interval: 300ms, timeout: 250ms}",
                f"    heartbeat-peers: [\"{net.addr(node)}:{HB_PORT}\"]"]
    me_site = [s for s, n in site_nodes.items() if n == me][0]
    out += ["names:", "  - name: app.example.com", f"    sites: [{', '.join(site_nodes)}]",
            "heartbeat:", f"  self: {me_site}", f"  id: ms-{me}",
            f"  listen: \"{net.addr(me)}:{HB_PORT}\"", f"  key-file: {net.key}"]
    path = os.path.join(net.dir, f"ms-{me}.yaml")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path
