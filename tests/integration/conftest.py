"""Shared helpers for the integration tests: free loopback ports, and starting and stopping
the servers under test (multisited, and Knot DNS as the reference) on the same zones.

Model: Knot's tests-extra and Redis's wait_for_condition. Every wait polls with a deadline;
nothing sleeps blindly. Every process is stopped by the pid we started, never by name.
A server that is not built, or does not start, fails the test; nothing is skipped.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import dns.message
import dns.query
import dns.rdataclass
import dns.rdatatype
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("MS_BUILD") or os.path.join(REPO, "build")
MULTISITED = os.path.join(BUILD, "multisited")
KNOTD = "/usr/sbin/knotd"
ZONE_DIR = os.path.join(HERE, "zones")

# The zones both servers load: origin -> file.
ZONES = {
    "example.com": os.path.join(ZONE_DIR, "example.com.zone"),
    "example.net": os.path.join(ZONE_DIR, "example.net.zone"),
    "2.0.192.in-addr.arpa": os.path.join(ZONE_DIR, "2.0.192.in-addr.arpa.zone"),
    "child.example.com": os.path.join(ZONE_DIR, "child.example.com.zone"),
}

# Server identity, set the same on both so CHAOS and NSID answers are comparable.
IDENTITY = "ns1.test"
VERSION = "multisite 0.1.0"
NSID = "ns1.test"

START_DEADLINE = 15.0  # seconds for a server to load three small zones and answer
STOP_DEADLINE = 10.0


def wait_for(cond, deadline, what, interval=0.05):
    """Poll cond() until it returns a true value or `deadline` seconds pass (Redis's
    wait_for_condition). Returns the value; raises AssertionError naming `what` on timeout."""
    end = time.monotonic() + deadline
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        time.sleep(interval)


def _bindable(port, family, kind, addr):
    s = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(v6=True):
    """A port free for both UDP and TCP on 127.0.0.1 (and ::1 when v6): what `ss -lntup`
    would show as unused. The kernel picks a candidate; we then prove each bind works.
    There is a window between our check and the server's bind; start_* retries on that."""
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        checks = [(socket.AF_INET, "127.0.0.1")]
        if v6:
            checks.append((socket.AF_INET6, "::1"))
        if all(_bindable(port, fam, kind, addr)
               for fam, addr in checks
               for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)):
            return port
    raise AssertionError("no free loopback port found")


def have_ipv6_loopback():
    return _bindable(0, socket.AF_INET6, socket.SOCK_DGRAM, "::1")


class Server:
    """A daemon we started: its pid, where it listens, its log. stop() ends only that pid."""

    def __init__(self, name, argv, port, workdir, addrs):
        self.name = name
        self.argv = argv
        self.port = port
        self.workdir = workdir
        self.addrs = addrs  # loopback addresses it listens on; addrs[0] is used by default
        self.addr = addrs[0]
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.proc = None

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return "(no log)"

    def _answers(self, addr, tcp):
        q = dns.message.make_query("example.com.", "SOA")
        try:
            if tcp:
                r = dns.query.tcp(q, addr, port=self.port, timeout=0.3)
            else:
                r = dns.query.udp(q, addr, port=self.port, timeout=0.3)
        except (OSError, dns.exception.Timeout, EOFError):
            return False
        return r.rcode() == 0 and len(r.answer) == 1

    def wait_ready(self, deadline=START_DEADLINE):
        """Poll until the server answers the example.com SOA over UDP and TCP on every address
        it listens on; fail at once, with its log, if it exits meanwhile."""
        def ready():
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} "
                                     f"before answering; log:\n{self.log_tail()}")
            return all(self._answers(a, tcp) for a in self.addrs for tcp in (False, True))
        try:
            wait_for(ready, deadline, f"{self.name} to answer on port {self.port}")
        except AssertionError as e:
            self.stop()
            raise AssertionError(f"{e}\nlog of {self.name}:\n{self.log_tail()}") from None
        return self

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self):
        """SIGTERM our pid, wait with a deadline, SIGKILL the same pid if it does not exit.
        Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_DEADLINE)
        self._log.close()
        return self.proc.returncode


def _listen_addrs(v6):
    return ["127.0.0.1", "::1"] if v6 else ["127.0.0.1"]


def knot_config(workdir, port, zones, v6=True, udp_workers=2, tcp_workers=1,
                identity=IDENTITY, version=VERSION, nsid=NSID, extra=""):
    """A knotd configuration serving `zones` from their files as-is: no journal, no zone
    file rewrites, storage and run dir in `workdir`."""
    listen = "".join(f"    listen: {a}@{port}\n" for a in _listen_addrs(v6))
    zl = "".join(f"  - domain: {o}\n    file: {os.path.abspath(f)}\n"
                 for o, f in zones.items())
    return (
        "server:\n"
        f"    rundir: {workdir}\n"
        f"    pidfile: {workdir}/knot.pid\n"
        f"{listen}"
        f"    identity: \"{identity}\"\n"
        f"    version: \"{version}\"\n"
        f"    nsid: \"{nsid}\"\n"
        f"    udp-workers: {udp_workers}\n"
        f"    tcp-workers: {tcp_workers}\n"
        "    background-workers: 1\n"
        # multisited implements ECS (RFC 7871) for its load-balanced names, so it echoes the
        # option; knotd does too only with this on.
        "    edns-client-subnet: on\n"
        f"{extra}"
        "database:\n"
        f"    storage: {workdir}\n"
        "log:\n"
        "  - target: stderr\n"
        "    any: info\n"
        "template:\n"
        "  - id: default\n"
        f"    storage: {workdir}\n"
        "    zonefile-sync: -1\n"
        "    zonefile-load: whole\n"
        "    journal-content: none\n"
        "    semantic-checks: off\n"
        "zone:\n"
        f"{zl}"
    )


def ms_config(port, zones, v6=True, udp_threads=2, tcp_threads=1,
              identity=IDENTITY, version=VERSION, nsid=NSID, extra=""):
    listen = ", ".join(f'"{a}:{port}"' if ":" not in a else f'"[{a}]:{port}"'
                       for a in _listen_addrs(v6))
    zl = "".join(f"  - origin: {o}\n    file: {os.path.abspath(f)}\n"
                 for o, f in zones.items())
    return (
        "server:\n"
        f"  identity: \"{identity}\"\n"
        f"  version: \"{version}\"\n"
        f"  nsid: \"{nsid}\"\n"
        f"  listen: [{listen}]\n"
        f"  udp-threads: {udp_threads}\n"
        f"  tcp-threads: {tcp_threads}\n"
        f"{extra}"
        "zones:\n"
        f"{zl}"
    )


def _start_with_retry(make, attempts=3):
    """Start a server on a fresh free port; retry on a new port if the one we picked was
    taken between our check and its bind (the server then exits early)."""
    last = None
    for _ in range(attempts):
        srv = make(free_port())
        srv.start()
        try:
            return srv.wait_ready()
        except AssertionError as e:
            last = e
            if "Address already in use" not in srv.log_tail() and \
                    "address already in use" not in srv.log_tail().lower():
                raise
    raise last


def start_knotd(workdir, zones=None, v6=True, **kw):
    zones = zones or ZONES
    assert os.access(KNOTD, os.X_OK), f"{KNOTD} missing: run scripts/deps.sh (Debian knot)"

    def make(port):
        d = tempfile.mkdtemp(prefix="knot-", dir=workdir)
        conf = os.path.join(d, "knot.conf")
        with open(conf, "w") as f:
            f.write(knot_config(d, port, zones, v6=v6, **kw))
        return Server("knotd", [KNOTD, "-c", conf], port, d, _listen_addrs(v6))
    return _start_with_retry(make)


def start_multisited(workdir, zones=None, v6=True, mode="config", extra_args=(), **kw):
    """Start build/multisited. mode "config" writes a YAML config and runs `-c`; mode "quick"
    passes --zone/--listen/... on the command line."""
    zones = zones or ZONES
    assert os.access(MULTISITED, os.X_OK), \
        f"{MULTISITED} is not built (run make); the differential test needs it"

    def make(port):
        d = tempfile.mkdtemp(prefix="ms-", dir=workdir)
        if mode == "config":
            conf = os.path.join(d, "multisited.yaml")
            ckw = dict(kw)
            if "control-socket" not in ckw.get("extra", ""):
                # Our own socket, never the system's /run/multisited.sock (the default).
                ckw["extra"] = ckw.get("extra", "") + \
                    f"  control-socket: {os.path.join(d, 'ctl.sock')}\n"
            if "status-listen" not in ckw.get("extra", ""):
                # No status HTTP endpoint on the fixed default port 127.0.0.1:8053, which
                # every instance would fight over (test_status.py sets its own).
                ckw["extra"] = ckw["extra"] + "  status-listen: \"\"\n"
            with open(conf, "w") as f:
                f.write(ms_config(port, zones, v6=v6, **ckw))
            argv = [MULTISITED, "-c", conf]
        else:
            argv = [MULTISITED]
            for o, f in zones.items():
                argv += ["--zone", f"{o}={os.path.abspath(f)}"]
            for a in _listen_addrs(v6):
                argv += ["--listen", f"[{a}]:{port}" if ":" in a else f"{a}:{port}"]
            argv += ["--identity", kw.get("identity", IDENTITY),
                     "--version", kw.get("version", VERSION),
                     "--nsid", kw.get("nsid", NSID),
                     "--udp-threads", str(kw.get("udp_threads", 2)),
                     "--tcp-threads", str(kw.get("tcp_threads", 1))]
        return Server("multisited", argv + list(extra_args), port, d, _listen_addrs(v6))
    return _start_with_retry(make)


@pytest.fixture(scope="session")
def workdir():
    d = tempfile.mkdtemp(prefix="ms-integration-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def v6():
    return have_ipv6_loopback()


@pytest.fixture(scope="session")
def knot(workdir, v6):
    srv = start_knotd(workdir, v6=v6)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def ours(workdir, v6):
    srv = start_multisited(workdir, v6=v6)
    yield srv
    rc = srv.stop()
    # A clean SIGTERM exit is part of the interface; report it, do not hide it.
    assert rc == 0, f"multisited exited with {rc} on SIGTERM; log:\n{srv.log_tail()}"
