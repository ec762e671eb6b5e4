"""multisited as a process: config checking (-t), atomic reload on SIGHUP (a broken zone or
config keeps the old snapshot), TCP idle timeout and connection limit, and stop on SIGTERM.
"""

import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import dns.message
import dns.query
import dns.rcode
import pytest

from conftest import (MULTISITED, ZONES, free_port, ms_config, start_multisited, wait_for,
                      Server, _listen_addrs)


def _query(srv, name, rdtype="A", tcp=False):
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(q, srv.addr, port=srv.port, timeout=2)
    return dns.query.udp(q, srv.addr, port=srv.port, timeout=2)


def _check(conf_text, tmp, name="multisited.yaml"):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(conf_text)
    return subprocess.run([MULTISITED, "-t", "-c", path], capture_output=True, text=True,
                          timeout=30), path


@pytest.fixture
def tmp(workdir):
    d = tempfile.mkdtemp(prefix="srv-", dir=workdir)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_check_good_config(tmp):
    r, _ = _check(ms_config(5353, ZONES), tmp)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


@pytest.mark.parametrize("bad,line,needle", [
    ("server:\n  udp-threads: 0\n", 2, "out of range 1..64"),
    ("server:\n  listen: [\"127.0.0.1:99999\"]\n", 2, "not an IP address"),
    ("server:\n  no-such-option: 1\n", 2, "unknown option 'server.no-such-option'"),
    ("serverr:\n  udp-threads: 2\n", 1, "unknown section 'serverr'"),
    ("server:\n  tcp-idle-timeout: 10 parsecs\n", 2, "not a duration"),
    ("zones:\n  - origin: example.com\n", 2, "'file' is required"),
    ("server: [\n", 2, "YAML syntax error"),
])
def test_check_bad_config(tmp, bad, line, needle):
    r, path = _check(bad, tmp)
    assert r.returncode != 0
    assert f"{path}:{line}:" in r.stderr, r.stderr
    assert needle in r.stderr, r.stderr


def test_check_bad_zone_names_file_and_line(tmp):
    zone = os.path.join(tmp, "bad.zone")
    with open(zone, "w") as f:
        f.write("$ORIGIN example.com.\n$TTL 300\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\n"
                "ns1 A 192.0.2.999\n")
    r, _ = _check(f"zones:\n  - origin: example.com\n    file: {zone}\n", tmp)
    assert r.returncode != 0
    assert f"{zone}:5:" in r.stderr, r.stderr


def test_check_missing_soa(tmp):
    zone = os.path.join(tmp, "nosoa.zone")
    with open(zone, "w") as f:
        f.write("$ORIGIN example.com.\n$TTL 300\n@ NS ns1\nns1 A 192.0.2.1\n")
    r, _ = _check(f"zones:\n  - origin: example.com\n    file: {zone}\n", tmp)
    assert r.returncode != 0
    assert "no SOA" in r.stderr, r.stderr


ZONE_V1 = """$ORIGIN reload.test.
$TTL 300
@ SOA ns1 hostmaster {serial} 7200 3600 1209600 300
@ NS ns1
ns1 A 192.0.2.53
{extra}
"""


def test_reload_atomic(tmp, workdir):
    zone = os.path.join(tmp, "reload.zone")
    with open(zone, "w") as f:
        f.write(ZONE_V1.format(serial=1, extra="old A 192.0.2.1"))
    zones = dict(ZONES)
    zones["reload.test"] = zone
    srv = start_multisited(workdir, zones=zones, v6=False)
    try:
        assert _query(srv, "old.reload.test").answer[0][0].address == "192.0.2.1"
        assert _query(srv, "new.reload.test").rcode() == dns.rcode.NXDOMAIN

        # A good change becomes visible after SIGHUP, without restart.
        with open(zone, "w") as f:
            f.write(ZONE_V1.format(serial=2, extra="old A 192.0.2.1\nnew A 192.0.2.2"))
        srv.signal(signal.SIGHUP)
        wait_for(lambda: _query(srv, "new.reload.test").rcode() == dns.rcode.NOERROR, 10,
                 "reloaded zone to serve new.reload.test")
        pid = srv.pid

        # A broken zone: the reload fails, says where, and the old data is still served.
        with open(zone, "w") as f:
            f.write(ZONE_V1.format(serial=3, extra="broken A not-an-address"))
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in srv.log_tail(200), 10, "reload failure logged")
        assert f"{zone}:6:" in srv.log_tail(200)
        assert srv.alive() and srv.pid == pid
        r = _query(srv, "new.reload.test")
        assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "192.0.2.2"
        assert _query(srv, "www.example.com", tcp=True).rcode() == dns.rcode.NOERROR

        # A broken config file: same.
        conf = os.path.join(srv.workdir, "multisited.yaml")
        with open(conf) as f:
            good = f.read()
        with open(conf, "w") as f:
            f.write(good + "bogus: 1\n")
        srv.signal(signal.SIGHUP)
        wait_for(lambda: srv.log_tail(200).count("reload failed") >= 2, 10,
                 "second reload failure logged")
        assert "unknown section 'bogus'" in srv.log_tail(200)
        assert _query(srv, "old.reload.test").rcode() == dns.rcode.NOERROR
    finally:
        assert srv.stop() == 0, "multisited should exit 0 on SIGTERM"


def _tcp_connect(srv):
    s = socket.create_connection((srv.addr, srv.port), timeout=5)
    return s


def _tcp_query(s, name):
    wire = dns.message.make_query(name, "A").to_wire()
    s.sendall(struct.pack(">H", len(wire)) + wire)
    hdr = s.recv(2)
    if len(hdr) < 2:
        return None
    (n,) = struct.unpack(">H", hdr)
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return dns.message.from_wire(data)


def test_tcp_idle_timeout_and_limit(workdir):
    extra = "  tcp-idle-timeout: 500ms\n  tcp-max-clients: 2\n"
    srv = start_multisited(workdir, v6=False, extra=extra)
    try:
        # wait_ready's own connections must be gone before we count to the limit.
        time.sleep(0.1)
        a, b = _tcp_connect(srv), _tcp_connect(srv)
        assert _tcp_query(a, "www.example.com").rcode() == 0
        assert _tcp_query(b, "www.example.com").rcode() == 0
        c = _tcp_connect(srv)
        c.settimeout(5)
        assert c.recv(2) == b"", "a third connection over tcp-max-clients=2 must be closed"
        c.close()
        # Idle connections are closed by the server after ~500 ms.
        t0 = time.monotonic()
        a.settimeout(10)
        assert a.recv(2) == b""
        waited = time.monotonic() - t0
        assert waited < 5, f"idle connection closed only after {waited:.1f}s"
        b.close()
        a.close()
        # Slots are free again.
        wait_for(lambda: _tcp_query(_tcp_connect(srv), "www.example.com") is not None, 5,
                 "a new TCP connection to be served")
    finally:
        srv.stop()


def test_quick_mode_without_config(workdir):
    srv = start_multisited(workdir, mode="quick", v6=False)
    try:
        r = _query(srv, "www.example.com")
        assert r.rcode() == 0 and r.answer
    finally:
        assert srv.stop() == 0


def test_wildcard_listen_replies_from_the_address_asked(workdir):
    """Bound to 0.0.0.0 and ::, a reply must come from the address the query went to
    (IP_PKTINFO/IPV6_PKTINFO); dnspython drops replies from any other source."""
    port = free_port()
    srv = Server("multisited", [MULTISITED, "--zone", f"example.com={ZONES['example.com']}",
                                "--listen", f"0.0.0.0:{port}", "--listen", f"[::]:{port}"],
                 port, workdir, ["127.0.0.1"])
    srv.start()
    try:
        srv.wait_ready()
        for addr in ("127.0.0.2", "127.0.0.3", "::1"):
            q = dns.message.make_query("web.example.com", "A")
            r = dns.query.udp(q, addr, port=port, timeout=3)
            assert r.answer and r.answer[0][0].address == "192.0.2.80", addr
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("example", ["multisited.yaml", "cluster-eu.yaml"])
def test_examples_validate(example):
    """The shipped example configs document every option and must stay valid."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "examples", example)
    r = subprocess.run([MULTISITED, "-t", "-c", path], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr


def _rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_tcp_half_close_and_unread_replies(workdir, tmp):
    """RFC 7766 6.2.4: a client may pipeline queries and shut down its sending side; every
    reply must still arrive. And a client that sends without reading must not make the
    server queue replies without bound."""
    zone = os.path.join(tmp, "huge.zone")
    with open(zone, "w") as f:
        f.write("$ORIGIN huge.test.\n$TTL 300\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\nns1 A 192.0.2.1\n")
        for i in range(400):
            f.write(f'big TXT "{i:04d}{"x" * 120}"\n')
    zones = dict(ZONES)
    zones["huge.test"] = zone
    srv = start_multisited(workdir, zones=zones, v6=False)
    try:
        wire = dns.message.make_query("big.huge.test", "TXT").to_wire()
        frame = struct.pack(">H", len(wire)) + wire
        s = socket.create_connection((srv.addr, srv.port), timeout=10)
        s.sendall(frame * 60)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        n, off = 0, 0
        while off + 2 <= len(data):
            ln = struct.unpack(">H", data[off:off + 2])[0]
            if off + 2 + ln > len(data):
                break
            assert dns.message.from_wire(data[off + 2:off + 2 + ln]).answer
            n, off = n + 1, off + 2 + ln
        assert n == 60, f"{n} of 60 replies after a half-close"

        before = _rss_kb(srv.pid)
        hogs = []
        for _ in range(4):
            h = socket.create_connection((srv.addr, srv.port), timeout=10)
            h.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            h.sendall(frame * 1500)  # ~80 MB of replies if all were queued
            hogs.append(h)
        time.sleep(1.0)
        grown = _rss_kb(srv.pid) - before
        assert grown < 16 * 1024, f"server RSS grew by {grown} KiB for 4 clients that do not read"
        assert _query(srv, "www.example.com").rcode() == 0
        for h in hogs:
            h.close()
    finally:
        assert srv.stop() == 0
