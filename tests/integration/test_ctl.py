"""multisitectl against a running multisited: status (table and JSON), drain/undrain (soft
and hard), force with expiry, operator state persisted across a restart, explain agreeing
with the answers dig-style clients get for a table of client subnets, reload (good and bad),
the socket's permissions, and a malformed request.
"""

import json
import os
import socket
import stat
import struct
import subprocess
import tempfile
import threading

import dns.edns
import dns.message
import dns.query
import pytest

from conftest import BUILD, MULTISITED, ZONES, Server, free_port, ms_config, wait_for, \
    _start_with_retry

CTL = os.path.join(BUILD, "multisitectl")
US, EU, AP = "198.51.100.10", "192.0.2.10", "203.0.113.10"


class Listener:
    """A TCP port that accepts (a web server that is up) until closed."""

    def __init__(self):
        self.s = socket.socket()
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.s.bind(("127.0.0.1", 0))
        self.s.listen(64)
        self.port = self.s.getsockname()[1]
        self.stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stop:
            try:
                c, _ = self.s.accept()
                c.close()
            except OSError:
                return

    def close(self):
        self.stop = True
        self.s.close()


@pytest.fixture(scope="module")
def cluster(workdir):
    d = tempfile.mkdtemp(prefix="ctl-", dir=workdir)
    webs = {n: Listener() for n in ("us", "eu", "ap")}
    sock = os.path.join(d, "ms.sock")
    state = os.path.join(d, "state")
    sites = "".join(
        f"  - name: {n}\n    addresses: [{a}]\n"
        f"    web-servers: [\"127.0.0.1:{webs[n].port}\"]\n"
        "    web-check: {type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1}\n"
        for n, a in (("us", US), ("eu", EU), ("ap", AP)))
    extra = (f"sites:\n{sites}"
             "regions:\n"
             "  - name: europe\n    subnets: [10.1.0.0/16]\n    prefer: [eu, us, ap]\n"
             "  - name: asia\n    subnets: [10.3.0.0/16, 10.1.128.0/17]\n"
             "    prefer: [ap, eu, us]\n"
             "names:\n"
             "  - name: app.example.com\n    sites: [us, eu, ap]\n"
             "  - name: geo.example.com\n    sites: [us, eu, ap]\n    order: [locality]\n")
    conf = os.path.join(d, "multisited.yaml")

    def make(port):
        text = ms_config(port, ZONES, v6=False) + extra
        text = text.replace("server:\n", f"server:\n  control-socket: {sock}\n"
                                         f"  state-file: {state}\n", 1)
        with open(conf, "w") as f:
            f.write(text)
        return Server("multisited", [MULTISITED, "-c", conf], port, d, ["127.0.0.1"])
    srv = _start_with_retry(make)
    env = {"srv": srv, "sock": sock, "conf": conf, "state": state, "make": make, "dir": d}
    yield env
    env["srv"].stop()
    for w in webs.values():
        w.close()


def ctl(env, *args, check=True):
    r = subprocess.run([CTL, "-s", env["sock"]] + list(args), capture_output=True, text=True,
                       timeout=30)
    if check:
        assert r.returncode == 0, (f"multisitectl {' '.join(args)}: {r.returncode} {r.stderr}"
                                   f"\nlog:\n{env['srv'].log_tail(80)}")
    return r


def answer(env, name="app.example.com", ecs=None):
    opts = [dns.edns.ECSOption.from_text(ecs)] if ecs else []
    q = dns.message.make_query(name, "A", use_edns=0, options=opts)
    r = dns.query.udp(q, "127.0.0.1", port=env["srv"].port, timeout=2)
    return [rd.address for rrset in r.answer for rd in rrset]


def expect(env, want, what, **kw):
    wait_for(lambda: answer(env, **kw) == want, 10, f"{what}: {want} (got {answer(env, **kw)})")


def test_socket_is_owner_only(cluster):
    st = os.stat(cluster["sock"])
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_status_table_and_json(cluster):
    expect(cluster, [US, EU, AP], "all up")
    out = ctl(cluster, "status").stdout
    for s in ("us", "eu", "ap", "app.example.com"):
        assert s in out, out
    j = json.loads(ctl(cluster, "status", "--json").stdout)
    assert [s["name"] for s in j["sites"]] == ["us", "eu", "ap"]
    assert all(s["available"] for s in j["sites"]), j
    assert j["names"][0]["order"] == ["us", "eu", "ap"]
    r = subprocess.run([CTL, "-c", cluster["conf"], "status"], capture_output=True, text=True)
    assert r.returncode == 0 and "us" in r.stdout, "the socket path is read from the config"


def test_drain_soft_and_hard(cluster):
    expect(cluster, [US, EU, AP], "start")
    ctl(cluster, "drain", "us")
    expect(cluster, [EU, AP, US], "us drained: last")
    ctl(cluster, "drain", "us", "--hard")
    expect(cluster, [EU, AP], "us drained hard: left out")
    ctl(cluster, "undrain", "us")
    expect(cluster, [US, EU, AP], "undrained")
    r = ctl(cluster, "drain", "mars", check=False)
    assert r.returncode == 3 and "no site" in r.stderr


def test_force_with_expiry(cluster):
    ctl(cluster, "force", "eu", "down", "--for", "2s")
    expect(cluster, [US, AP], "eu forced down")
    expect(cluster, [US, EU, AP], "force expired after 2 s")
    ctl(cluster, "force", "ap", "down")
    expect(cluster, [US, EU], "ap forced down")
    ctl(cluster, "force", "ap", "clear")
    expect(cluster, [US, EU, AP], "cleared")
    assert ctl(cluster, "force", "ap", "sideways", check=False).returncode == 2


@pytest.mark.parametrize("ecs,client", [
    ("10.1.2.0/24", "192.0.2.1"), ("10.1.200.0/24", "192.0.2.1"), ("10.3.0.0/16", "192.0.2.1"),
    ("10.9.0.0/16", "192.0.2.1"), ("10.1.0.0/16", "192.0.2.1"), (None, "127.0.0.1"),
])
def test_explain_agrees_with_answers(cluster, ecs, client):
    got = answer(cluster, "geo.example.com", ecs=ecs)
    names = {US: "us", EU: "eu", AP: "ap"}
    args = ["explain", "geo.example.com", client] + (["--ecs", ecs] if ecs else [])
    out = ctl(cluster, *args).stdout
    line = next(l for l in out.splitlines() if l.startswith("answer"))
    order = [s.strip() for s in line.split(":", 1)[1].split(",")]
    assert order == [names[a] for a in got], f"explain says {order}, dig got {got}\n{out}"


def test_reload_good_and_bad(cluster):
    assert "reloaded" in ctl(cluster, "reload").stdout
    with open(cluster["conf"]) as f:
        good = f.read()
    try:
        with open(cluster["conf"], "w") as f:
            f.write(good + "bogus: 1\n")
        r = ctl(cluster, "reload", check=False)
        assert r.returncode == 1 and f"{cluster['conf']}:" in r.stderr and "bogus" in r.stderr
        expect(cluster, [US, EU, AP], "still serving after a failed reload")
    finally:
        with open(cluster["conf"], "w") as f:
            f.write(good)


def test_malformed_request_gets_an_error(cluster):
    s = socket.socket(socket.AF_UNIX)
    s.connect(cluster["sock"])
    s.sendall(b"MSCT\x01\x01\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # argc 0
    hdr = s.recv(12)
    magic, ver, typ, status, ln = struct.unpack(">IBBHI", hdr)
    assert (magic, typ, status) == (0x4D534354, 2, 4), (magic, typ, status)
    s.close()
    s = socket.socket(socket.AF_UNIX)
    s.connect(cluster["sock"])
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert struct.unpack(">IBBHI", s.recv(12))[3] == 4
    s.close()
    assert ctl(cluster, "status").returncode == 0, "still serving after garbage"


def test_state_persists_across_restart(cluster):
    ctl(cluster, "drain", "ap", "--hard")
    expect(cluster, [US, EU], "ap drained")
    assert "ap drain hard" in open(cluster["state"]).read()
    assert cluster["srv"].stop() == 0
    # A state file is input too: garbage lines are skipped with a warning, never a crash.
    with open(cluster["state"], "ab") as f:
        f.write(b"garbage\n\xff\xfe drain\nmars drain soft force none 0 last up\n"
                + b"x" * 5000 + b"\n")
    srv = Server("multisited", [MULTISITED, "-c", cluster["conf"]], cluster["srv"].port,
                 cluster["dir"], ["127.0.0.1"])
    srv.start()
    cluster["srv"] = srv.wait_ready()
    expect(cluster, [US, EU], "after restart ap is still drained")
    ctl(cluster, "undrain", "ap")
    expect(cluster, [US, EU, AP], "undrained")


def test_drain_one_web_server(workdir):
    """drain SITE/WEB: that web server counts as down in its site's verdict (k of n), and it
    stays drained across a reload."""
    d = tempfile.mkdtemp(prefix="ctlweb-", dir=workdir)
    w1, w2 = Listener(), Listener()
    sock = os.path.join(d, "ms.sock")
    conf = os.path.join(d, "multisited.yaml")
    extra = ("sites:\n"
             f"  - name: us\n    addresses: [{US}]\n    min-web-up: 2\n"
             f"    web-servers: [{{name: w1, address: \"127.0.0.1:{w1.port}\"}}, "
             f"{{name: w2, address: \"127.0.0.1:{w2.port}\"}}]\n"
             "    web-check: {type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1}\n"
             f"  - name: eu\n    addresses: [{EU}]\n"
             f"    web-servers: [\"127.0.0.1:{w1.port}\"]\n"
             "    web-check: {type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1}\n"
             "names:\n  - name: app.example.com\n    sites: [us, eu]\n")

    def make(port):
        text = ms_config(port, ZONES, v6=False) + extra
        text = text.replace("server:\n", f"server:\n  control-socket: {sock}\n"
                                         f"  state-file: {d}/state\n", 1)
        with open(conf, "w") as f:
            f.write(text)
        return Server("multisited", [MULTISITED, "-c", conf], port, d, ["127.0.0.1"])
    srv = _start_with_retry(make)
    env = {"srv": srv, "sock": sock}
    try:
        expect(env, [US, EU], "both up")
        ctl(env, "drain", "us/w2")
        expect(env, [EU], "us needs 2 of 2 web servers; w2 drained")
        assert "w2 drained" in ctl(env, "status").stdout
        assert ctl(env, "reload").returncode == 0
        expect(env, [EU], "still drained after a reload")
        assert ctl(env, "drain", "us/nope", check=False).returncode == 3
        ctl(env, "undrain", "us/w2")
        expect(env, [US, EU], "undrained")
    finally:
        assert srv.stop() == 0
        w1.close()
        w2.close()
