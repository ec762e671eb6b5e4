"""Client failover (M13) against real sockets: build/multisite-fetch (libmultisite) asks a real
multisited for a name whose address order the test controls (a zone it writes and reloads
with SIGHUP), then fetches from small HTTP servers on 127.0.0.2, 127.0.0.3, ... that fail in
the ways the table below lists: refused, reset mid-stream (accept, then RST via SO_LINGER 0),
blackholed (an iptables DROP rule, and a listener whose full backlog drops SYNs), a server
that never answers (I/O timeout), HTTP 502/503/504, everything dead. Then the sticky rule
across requests, and re-resolution when the TTL runs out.

Every process and iptables rule is ours, stopped or removed by pid/rule in a finally.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import dns.message
import dns.query
import pytest

from conftest import BUILD, ZONES, free_port, start_multisited, wait_for

FETCH = os.path.join(BUILD, "multisite-fetch")
ORIGIN = "client.test"
NAME = f"svc.{ORIGIN}"
LINE = re.compile(r"^#(\d+) \+([\d.]+)s (?:(FAILED) (.*)|(\S+) (\d+) served-by=(\S+) "
                  r"attempts=(\d+) (\d+)ms)$")


# ---- HTTP backends: raw sockets, one behaviour per request ----

class Backend:
    """An HTTP server on (addr, port). `plan` lists behaviours for successive requests; the
    last one repeats. Behaviours: "ok", "500", "502", "503", "504", "reset" (read the request,
    send half a status line, then RST), "hang" (read the request, never answer)."""

    def __init__(self, addr, port, name, plan=("ok",), backlog=64):
        self.addr, self.port, self.name, self.plan = addr, port, name, list(plan)
        self.requests = 0
        self.held = []
        self.seen = []  # request heads, in order
        self.set_cookie = None  # sent with every response when set
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(backlog)
        self.sock.settimeout(0.1)
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            mode = self.plan[min(self.requests, len(self.plan) - 1)]
            self.requests += 1
            try:
                self._serve(c, mode)
            except OSError:
                c.close()

    def _serve(self, c, mode):
        c.settimeout(2)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        self.seen.append(data.decode(errors="replace"))
        if mode == "hang":
            self.held.append(c)
            return
        if mode == "reset":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
            return
        status = 200 if mode == "ok" else int(mode)
        body = f"{self.name} {status}\n".encode()
        cookie = f"Set-Cookie: {self.set_cookie}\r\n" if self.set_cookie else ""
        c.sendall(f"HTTP/1.1 {status} X\r\nX-Served-By: {self.name}\r\n{cookie}"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        c.close()

    def stop(self):
        self.stopping = True
        self.sock.close()
        self.thread.join(timeout=5)
        for c in self.held:
            c.close()


class FullBacklog:
    """A listener that never accepts, its accept queue filled by our own connections: Linux
    then drops further SYNs, so a connect to it hangs until the client's timeout."""

    def __init__(self, addr, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((addr, port))
        self.sock.listen(0)
        self.fillers = []
        for _ in range(4):
            f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            f.setblocking(False)
            try:
                f.connect((addr, port))
            except BlockingIOError:
                pass
            self.fillers.append(f)
        # prove it: a fresh connect does not complete within 300 ms
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.3)
        try:
            probe.connect((addr, port))
            self.dropping = False
        except (socket.timeout, OSError):
            self.dropping = True
        finally:
            probe.close()

    def stop(self):
        for f in self.fillers:
            f.close()
        self.sock.close()


class DropRule:
    """An iptables DROP rule for TCP to addr:port, ours to add and to remove."""

    def __init__(self, addr, port):
        self.spec = ["INPUT", "-d", addr, "-p", "tcp", "--dport", str(port), "-j", "DROP",
                     "-m", "comment", "--comment", f"ms-test-client-{os.getpid()}"]
        subprocess.run(["iptables", "-I"] + self.spec, check=True, capture_output=True)

    def stop(self):
        subprocess.run(["iptables", "-D"] + self.spec, check=True, capture_output=True)


# ---- DNS: a real multisited serving a zone we rewrite ----

class Dns:
    def __init__(self, workdir):
        self.dir = tempfile.mkdtemp(prefix="client-", dir=workdir)
        self.zone = os.path.join(self.dir, "client.test.zone")
        self.serial = 1
        self.extra = ""
        self.write(["127.0.0.2"], 3600)
        zones = {"example.com": ZONES["example.com"], ORIGIN: self.zone}
        self.srv = start_multisited(self.dir, zones=zones, v6=False, mode="quick")
        self.server = f"127.0.0.1:{self.srv.port}"

    def write(self, order, ttl, extra=""):
        """order: addresses of svc.client.test in answer order."""
        self.serial += 1
        lines = [f"$ORIGIN {ORIGIN}.", "$TTL 3600",
                 f"@ 3600 IN SOA ns1 host {self.serial} 7200 3600 1209600 3600",
                 "  NS ns1", "ns1 A 127.0.0.1"]
        lines += [f"svc {ttl} A {a}" for a in order]
        lines.append(extra)
        tmp = self.zone + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(tmp, self.zone)

    def answer(self, name=NAME, tcp=False):
        q = dns.message.make_query(name, "A")
        r = (dns.query.tcp if tcp else dns.query.udp)(q, "127.0.0.1", port=self.srv.port,
                                                      timeout=2)
        return [rd.address for rrs in r.answer for rd in rrs], r

    def set(self, order, ttl=3600, extra=""):
        """Serve `order` for svc.client.test and wait until multisited answers with it."""
        self.write(order, ttl, extra)
        self.srv.signal(signal.SIGHUP)
        wait_for(lambda: self.answer(tcp=True)[0] == list(order), 10, f"multisited to serve {order}")

    def stop(self):
        rc = self.srv.stop()
        assert rc == 0, f"multisited exited with {rc}; log:\n{self.srv.log_tail()}"
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def dnsd(workdir):
    assert os.access(FETCH, os.X_OK), f"{FETCH} is not built (make)"
    d = Dns(workdir)
    yield d
    d.stop()


@pytest.fixture
def port():
    """A TCP port free on every 127.0.0.x we use."""
    for _ in range(50):
        p = free_port(v6=False)
        ok = True
        for i in range(2, 12):
            s = socket.socket()
            try:
                s.bind((f"127.0.0.{i}", p))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return p
    raise AssertionError("no port free on 127.0.0.2-11")


def fetch(dnsd, port, *args, count=1, interval=0, servers=None, timeout=60):
    argv = [FETCH, "--count", str(count), "--interval", str(interval),
            "--connect-timeout", "300", "--io-timeout", "500"]
    for s in servers or [dnsd.server]:
        argv += ["--server", s]
    argv += list(args) + [f"http://{NAME}:{port}/"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return r.returncode, parse(r.stdout), r.stdout + r.stderr


def parse(out):
    reqs = []
    for line in out.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        if m.group(3):
            reqs.append({"n": int(m.group(1)), "t": float(m.group(2)), "failed": m.group(4)})
        else:
            reqs.append({"n": int(m.group(1)), "t": float(m.group(2)), "addr": m.group(5),
                         "status": int(m.group(6)), "by": m.group(7),
                         "attempts": int(m.group(8)), "ms": int(m.group(9))})
    return reqs


# ---- the failure table ----
# (case id, [(address, kind, arg)], expected served-by, expected attempts, text expected in
#  the event lines, min ms, max ms). kind: "ok", Backend plan modes, "refused" (nothing
# bound), "drop" (iptables), "backlog" (full accept queue).
CASES = [
    ("refused-first", [("127.0.0.2", "refused"), ("127.0.0.3", "ok")],
     "b/web1", 2, "Connection refused", 0, 1000),
    ("reset-midstream", [("127.0.0.2", "reset"), ("127.0.0.3", "ok")],
     "b/web1", 2, "127.0.0.2", 0, 1000),
    ("blackholed-iptables", [("127.0.0.9", "drop"), ("127.0.0.3", "ok")],
     "b/web1", 2, "connect timeout (300 ms)", 280, 1500),
    ("blackholed-backlog", [("127.0.0.4", "backlog"), ("127.0.0.3", "ok")],
     "b/web1", 2, "connect timeout (300 ms)", 280, 1500),
    ("io-timeout", [("127.0.0.2", "hang"), ("127.0.0.3", "ok")],
     "b/web1", 2, "I/O timeout", 480, 2000),
    ("http-502", [("127.0.0.2", "502"), ("127.0.0.3", "ok")], "b/web1", 2, "HTTP 502", 0, 1000),
    ("http-503", [("127.0.0.2", "503"), ("127.0.0.3", "ok")], "b/web1", 2, "HTTP 503", 0, 1000),
    ("http-504", [("127.0.0.2", "504"), ("127.0.0.3", "ok")], "b/web1", 2, "HTTP 504", 0, 1000),
    # 500 is the application's answer, not the site's unavailability: no failover
    ("http-500-is-an-answer", [("127.0.0.2", "500"), ("127.0.0.3", "ok")],
     "a/web1", 1, None, 0, 1000),
    ("third-after-two-failures", [("127.0.0.2", "refused"), ("127.0.0.3", "503"),
                                  ("127.0.0.5", "ok")], "c/web1", 3, "HTTP 503", 0, 1000),
]
NAMES = {"127.0.0.2": "a/web1", "127.0.0.3": "b/web1", "127.0.0.4": "d/web1",
         "127.0.0.5": "c/web1", "127.0.0.9": "e/web1"}


def start_parts(spec, port):
    parts = []
    try:
        for addr, kind in spec:
            if kind == "refused":
                continue
            if kind == "drop":
                parts.append(DropRule(addr, port))
            elif kind == "backlog":
                b = FullBacklog(addr, port)
                parts.append(b)
                assert b.dropping, "the full-backlog listener still accepted a connect"
            else:
                parts.append(Backend(addr, port, NAMES[addr], plan=(kind,)))
    except BaseException:
        stop_parts(parts)
        raise
    return parts


def stop_parts(parts):
    errors = []
    for p in parts:
        try:
            p.stop()
        except Exception as e:  # remove every rule even if one stop fails
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_failure_table(dnsd, port, case):
    _, spec, by, attempts, event, lo, hi = case
    dnsd.set([a for a, _ in spec])
    parts = start_parts(spec, port)
    try:
        rc, reqs, out = fetch(dnsd, port)
    finally:
        stop_parts(parts)
    assert rc == 0, out
    assert len(reqs) == 1 and "by" in reqs[0], out
    r = reqs[0]
    assert r["by"] == by, out
    assert r["attempts"] == attempts, out
    if event:
        assert event in out, out
    assert lo <= r["ms"] <= hi, f"took {r['ms']} ms, expected {lo}..{hi}\n{out}"


def test_all_dead(dnsd, port):
    """Every address fails, each in its own way: a clear error naming each, exit status 1,
    and within the sum of the timeouts."""
    spec = [("127.0.0.2", "refused"), ("127.0.0.9", "drop"), ("127.0.0.3", "503"),
            ("127.0.0.5", "reset")]
    dnsd.set([a for a, _ in spec])
    parts = start_parts(spec, port)
    try:
        t0 = time.monotonic()
        rc, reqs, out = fetch(dnsd, port)
        took = time.monotonic() - t0
    finally:
        stop_parts(parts)
    assert rc == 1, out
    assert len(reqs) == 1 and "failed" in reqs[0], out
    msg = reqs[0]["failed"]
    assert "4 of 4 addresses failed" in msg, msg
    for needle in (f"127.0.0.2:{port}: Connection refused",
                   f"127.0.0.9:{port}: connect timeout", f"127.0.0.3:{port}: HTTP 503",
                   f"127.0.0.5:{port}:"):
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert took < 5, f"took {took:.1f}s"


def test_no_address(dnsd, port):
    dnsd.set([], extra='svc TXT "no address"')  # the name exists, without A: NODATA
    rc, reqs, out = fetch(dnsd, port, "-4")
    assert rc == 1 and reqs and "failed" in reqs[0], out
    assert "no address (NODATA)" in out, out


def test_sticky_across_requests(dnsd, port):
    """All healthy: every request goes to the first address. Then the first fails once (503
    on its third request) and recovers: the client moves to the second and stays there (the
    TTL is long), not going back to the first."""
    dnsd.set(["127.0.0.2", "127.0.0.3", "127.0.0.5"])
    a = Backend("127.0.0.2", port, "a/web1", plan=("ok", "ok", "503", "ok"))
    b = Backend("127.0.0.3", port, "b/web1")
    c = Backend("127.0.0.5", port, "c/web1")
    try:
        rc, reqs, out = fetch(dnsd, port, count=8)
    finally:
        for s in (a, b, c):
            s.stop()
    assert rc == 0, out
    assert [r["by"] for r in reqs] == ["a/web1"] * 2 + ["b/web1"] * 6, out
    assert [r["attempts"] for r in reqs] == [1, 1, 2, 1, 1, 1, 1, 1], out
    assert a.requests == 3 and c.requests == 0, out
    assert out.count("resolved svc.client.test") == 1, out


def fetch_live(dnsd, port, count, interval, on_first_line=None):
    """Run the CLI and call on_first_line() once the first request is done; return the
    parsed lines and output."""
    argv = [FETCH, "--count", str(count), "--interval", str(interval), "--connect-timeout",
            "300", "--io-timeout", "500", "--server", dnsd.server, f"http://{NAME}:{port}/"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if on_first_line and LINE.match(line.rstrip("\n")):
                on_first_line()
                on_first_line = None
        rc = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = "".join(lines)
    return rc, parse(out), out


def test_reresolution_picks_up_new_order(dnsd, port):
    """TTL 1 s: the DNS order changes from A,B to B,A while the client runs; the client keeps
    A until its TTL runs out, then follows the new order, and switches exactly once."""
    dnsd.set(["127.0.0.2", "127.0.0.3"], ttl=1)
    a = Backend("127.0.0.2", port, "a/web1")
    b = Backend("127.0.0.3", port, "b/web1")
    try:
        rc, reqs, out = fetch_live(
            dnsd, port, count=12, interval=250,
            on_first_line=lambda: dnsd.set(["127.0.0.3", "127.0.0.2"], ttl=1))
    finally:
        a.stop()
        b.stop()
    assert rc == 0, out
    by = [r["by"] for r in reqs]
    assert by[0] == "a/web1" and by[-1] == "b/web1", out
    switch = by.index("b/web1")
    assert by[switch:] == ["b/web1"] * (len(by) - switch), f"flip-flop:\n{out}"
    assert all(r["attempts"] == 1 for r in reqs), out  # no failure involved
    # it switched only after a re-resolution that saw the new order, within TTL + interval
    assert re.search(r"resolved svc\.client\.test: 127\.0\.0\.3:\d+, 127\.0\.0\.2:\d+", out), out
    t_change = reqs[0]["t"]
    assert reqs[switch]["t"] - t_change <= 2 * 1.0 + 0.25 + 0.25, out


def test_back_to_first_only_after_reresolution(dnsd, port):
    """TTL 2 s, order A,B. A fails once: the client moves to B and stays there while the TTL
    lasts, although A is healthy again; after re-resolution (same order) it is back on A."""
    dnsd.set(["127.0.0.2", "127.0.0.3"], ttl=2)
    a = Backend("127.0.0.2", port, "a/web1", plan=("ok", "503", "ok"))
    b = Backend("127.0.0.3", port, "b/web1")
    try:
        rc, reqs, out = fetch_live(dnsd, port, count=14, interval=250)
    finally:
        a.stop()
        b.stop()
    assert rc == 0, out
    by = [r["by"] for r in reqs]
    assert by[0] == "a/web1" and by[1] == "b/web1", out
    back = by.index("a/web1", 1)
    assert set(by[1:back]) == {"b/web1"}, out
    assert set(by[back:]) == {"a/web1"}, out
    # the return to A came from a re-resolution at least one TTL after the first
    assert reqs[back]["t"] >= 2.0 - 0.05, out
    assert out.count("resolved svc.client.test") >= 2, out
    assert a.requests == 2 + (len(by) - back), "A was tried while the client should stick to B"


def test_all_dead_asks_dns_again(dnsd, port):
    """The only address listed is dead and the TTL is long; the DNS then lists a live one.
    Once every address has failed, the client asks again (at most once a second) instead of
    failing until the TTL runs out."""
    dnsd.set(["127.0.0.2"], ttl=3600)
    b = Backend("127.0.0.3", port, "b/web1")
    try:
        rc, reqs, out = fetch_live(dnsd, port, count=6, interval=400,
                                   on_first_line=lambda: dnsd.set(["127.0.0.3"], ttl=3600))
    finally:
        b.stop()
    assert rc == 1 and "failed" in reqs[0], out
    assert "asking DNS again" in out, out
    ok = [r for r in reqs if "by" in r]
    assert ok and all(r["by"] == "b/web1" for r in ok), out
    assert ok[0]["t"] <= 1.0 + 0.4 + 0.3, out
    assert all("by" in r for r in reqs[reqs.index(ok[0]):]), out


def test_session_follows_the_client(dnsd, port):
    """--session: the cookie site A set goes to site B after the failover, so one session
    continues across sites (what the demo shows with its stateless web tier)."""
    dnsd.set(["127.0.0.2", "127.0.0.3"])
    a = Backend("127.0.0.2", port, "a/web1", plan=("ok", "503"))
    a.set_cookie = "msid=0123abcd; Path=/; HttpOnly"
    b = Backend("127.0.0.3", port, "b/web1")
    try:
        rc, reqs, out = fetch(dnsd, port, "--session", "-H", "X-Test: yes", count=3)
    finally:
        a.stop()
        b.stop()
    assert rc == 0 and [r["by"] for r in reqs] == ["a/web1", "b/web1", "b/web1"], out
    assert "Cookie:" not in a.seen[0] and "X-Test: yes" in a.seen[0], a.seen[0]
    for head in a.seen[1:] + b.seen:
        assert "\r\nCookie: msid=0123abcd\r\n" in head, head
        assert "Path" not in head.split("Cookie:")[1].split("\r\n")[0], head


def test_dns_server_fallback_and_tcp(dnsd, port):
    """The first DNS server is dead (nothing on its port): the second answers. A name with 80
    addresses does not fit 1232 bytes: the reply is truncated and the client asks over TCP,
    keeping the first 32 in order."""
    dead = f"127.0.0.1:{free_port(v6=False)}"
    many = ["127.0.0.3"] + [f"127.0.1.{i}" for i in range(1, 80)]
    dnsd.set(many)
    ans, r = dnsd.answer(tcp=True)
    assert ans == many, "multisited did not keep the zone order"
    q = dns.message.make_query(NAME, "A", use_edns=0, payload=1232)
    assert dns.query.udp(q, "127.0.0.1", port=dnsd.srv.port, timeout=2).flags & 0x0200, \
        "expected a truncated UDP reply (TC) for 80 addresses"
    b = Backend("127.0.0.3", port, "b/web1")
    try:
        rc, reqs, out = fetch(dnsd, port, "-4", servers=[dead, dnsd.server])
    finally:
        b.stop()
    assert rc == 0, out
    assert reqs[0]["by"] == "b/web1" and reqs[0]["attempts"] == 1, out
    assert f"127.0.0.3:{port}, 127.0.1.1:{port}, 127.0.1.2:{port}" in out, out


def test_ip_literal_and_bad_usage(port):
    b = Backend("127.0.0.2", port, "a/web1")
    try:
        r = subprocess.run([FETCH, "--server", "127.0.0.1:1", f"http://127.0.0.2:{port}/x"],
                           capture_output=True, text=True, timeout=10)
    finally:
        b.stop()
    assert r.returncode == 0 and "served-by=a/web1" in r.stdout, r.stdout + r.stderr
    for argv in ([FETCH], [FETCH, "https://x/"], [FETCH, "--count", "x", "http://x/"],
                 [FETCH, "--server", "nonsense", "http://x/"]):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)


def test_resolv_conf_mode(dnsd, port, workdir):
    """Mode (b): no --server, the nameservers of a resolv.conf. resolv.conf has no port, so
    a second multisited listens on 127.0.0.153:53 (the same zone); it gets queries with RD set
    and, being authoritative, keeps the order."""
    from conftest import MULTISITED, Server
    dnsd.set(["127.0.0.3", "127.0.0.2"])
    d = tempfile.mkdtemp(prefix="client-rc-", dir=workdir)
    argv = [MULTISITED, "--zone", f"example.com={ZONES['example.com']}",
            "--zone", f"{ORIGIN}={dnsd.zone}", "--listen", "127.0.0.153:53"]
    srv = Server("multisited-53", argv, 53, d, ["127.0.0.153"]).start().wait_ready()
    rc_path = os.path.join(d, "resolv.conf")
    with open(rc_path, "w") as f:
        f.write("# test\nsearch example.com\nnameserver 127.0.0.153\noptions ndots:2\n")
    a = Backend("127.0.0.2", port, "a/web1")
    b = Backend("127.0.0.3", port, "b/web1")
    try:
        r = subprocess.run([FETCH, "--resolv-conf", rc_path, "--count", "2", "--interval", "0",
                            f"http://{NAME}:{port}/"], capture_output=True, text=True,
                           timeout=30)
    finally:
        a.stop()
        b.stop()
        assert srv.stop() == 0, srv.log_tail()
    reqs = parse(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [q["by"] for q in reqs] == ["b/web1", "b/web1"], r.stdout
    assert f"resolved {NAME}: 127.0.0.3:{port}, 127.0.0.2:{port}" in r.stdout, r.stdout
