"""Issue 4 end to end: two sites, each with its own multisited and web server in its own
network namespace, joined through a bridge. The multisiteds exchange authenticated
heartbeats; each probes its own site and tells the other. Asserts, with generous deadlines,
what a client asking site eu's multisited gets when site us's multisited dies, when us is cut
off, when only the heartbeats are cut (a partition between the two signals, answered per
name by partition: availability or safety), and when us reports itself down.
Timing figures come from bench/heartbeat.sh.
"""

import os
import signal
import subprocess
import time

import pytest

from conftest import BUILD, MULTISITED
from hb_harness import Net, can_netns, sh, wait_for

WEBAPP = os.path.join(BUILD, "multisite-webapp")
DEADLINE = 15.0
DNS_PORT = 53
WEB_PORT = 8080

ok, why = can_netns()
pytestmark = pytest.mark.skipif(not ok, reason=why)


class Proc:
    def __init__(self, net, node, argv, log):
        self.log_path = log
        self._log = open(log, "ab")
        self.p = subprocess.Popen(["ip", "netns", "exec", net.ns(node)] + argv,
                                  stdout=self._log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)

    def alive(self):
        return self.p.poll() is None

    def stop(self, sig=signal.SIGTERM):
        if self.p.poll() is None:
            self.p.send_signal(sig)  # our own child, by pid
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._log.close()
        return self.p.returncode

    def log(self, n=60):
        with open(self.log_path, "rb") as f:
            return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])


def dig(net, node, name, server):
    r = subprocess.run(["ip", "netns", "exec", net.ns(node), "dig", "+short", "+tries=1",
                        "+time=1", f"@{server}", "-p", str(DNS_PORT), name, "A"],
                       capture_output=True, text=True)
    return r.stdout.split() if r.returncode == 0 else None


def site_conf(net, site_nodes, me, monitor_other="heartbeat"):
    zone = os.path.join(net.dir, "example.com.zone")
    with open(zone, "w") as f:
        f.write("$ORIGIN example.com.\n$TTL 300\n@ SOA ns1 h 1 7200 3600 1209600 300\n"
                "@ NS ns1\nns1 A 192.0.2.53\n")
    out = ["server:", f"  listen: [\"{net.addr(me)}:{DNS_PORT}\"]",
           "zones:", f"  - origin: example.com", f"    file: {zone}", "sites:"]
    for k, (site, node) in enumerate(site_nodes.items()):
        out += [f"  - name: {site}", f"    addresses: [192.0.2.{10 + k}]",
                f"    web-servers: [\"{net.addr(node)}:{WEB_PORT}\"]",
                "    web-check: {type: http, path: /health, interval: 300ms, timeout: 250ms}",
                f"    heartbeat-peers: [\"{net.addr(node)}:5400\"]"]
        if node != me:
            out.append(f"    monitor: {monitor_other}")
    sites = ", ".join(site_nodes)
    out += ["names:",
            f"  - name: app.example.com\n    sites: [{sites}]",
            f"  - name: avail.example.com\n    sites: [{sites}]\n    partition: availability",
            f"  - name: safe.example.com\n    sites: [{sites}]\n    partition: safety",
            "heartbeat:", f"  self: {[s for s, n in site_nodes.items() if n == me][0]}",
            f"  id: ms-{me}", f"  listen: \"{net.addr(me)}:5400\"", f"  key-file: {net.key}"]
    path = os.path.join(net.dir, f"ms-{me}.yaml")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path


@pytest.fixture
def two_sites():
    assert os.access(MULTISITED, os.X_OK) and os.access(WEBAPP, os.X_OK), "build first"
    net = Net(["eu", "us"])
    procs = {}
    try:
        for node in ("eu", "us"):
            procs[f"web-{node}"] = Proc(net, node, [
                WEBAPP, "--listen", f"{net.addr(node)}:{WEB_PORT}", "--db",
                f"sqlite:{net.dir}/{node}.sqlite", "--name", "web1", "--site", node],
                os.path.join(net.dir, f"web-{node}.log"))
        yield net, procs
    finally:
        bad = []
        for name, p in procs.items():
            rc = p.stop()
            if name.startswith("ms-") and rc not in (0, None, -9):
                bad.append(f"{name} exited {rc}:\n{p.log()}")
        net.close()
        assert not bad, "\n".join(bad)


def start_ms(net, procs, node, monitor_other="heartbeat"):
    conf = site_conf(net, {"eu": "eu", "us": "us"}, node, monitor_other)
    p = Proc(net, node, [MULTISITED, "-c", conf], os.path.join(net.dir, f"ms-{node}.log"))
    procs[f"ms-{node}"] = p
    wait_for(lambda: dig(net, node, "app.example.com", net.addr(node)) or not p.alive(), 10,
             f"multisited {node} to answer")
    assert p.alive(), p.log()
    return p


def answers(net, name="app.example.com"):
    return dig(net, "eu", name, net.addr("eu"))


def expect(net, want, what, name="app.example.com", procs=None):
    try:
        wait_for(lambda: answers(net, name) == want, DEADLINE, f"{what}: {name} -> {want}")
    except AssertionError:
        logs = "\n".join(f"--- {k}\n{p.log(30)}" for k, p in (procs or {}).items()
                         if k.startswith("ms-"))
        raise AssertionError(f"{what}: {name} gave {answers(net, name)}, wanted {want}\n{logs}")


EU, US = "192.0.2.10", "192.0.2.11"


def test_remote_site_loss_and_recovery(two_sites):
    net, procs = two_sites
    start_ms(net, procs, "eu")
    start_ms(net, procs, "us")
    expect(net, [EU, US], "both multisiteds up", procs=procs)
    # us's multisited killed: its heartbeats stop
    procs["ms-us"].stop(signal.SIGKILL)
    expect(net, [EU], "us's multisited killed", procs=procs)
    start_ms(net, procs, "us")
    expect(net, [EU, US], "us's multisited restarted (new boot epoch accepted)", procs=procs)
    # us cut off by the network
    net.cut("us")
    expect(net, [EU], "us cut off", procs=procs)
    net.heal("us")
    expect(net, [EU, US], "us reachable again", procs=procs)
    # us's own web server dies: us reports DOWN in its heartbeats
    procs["web-us"].stop(signal.SIGKILL)
    expect(net, [EU], "us's web tier down, as us reports", procs=procs)


def test_partition_between_the_two_signals(two_sites):
    """monitor both: eu probes us's web server directly AND hears us's heartbeats. Cut only
    the heartbeats: the signals disagree; availability names keep us, safety names drop it."""
    net, procs = two_sites
    start_ms(net, procs, "eu", monitor_other="both")
    start_ms(net, procs, "us")
    for n in ("avail.example.com", "safe.example.com"):
        expect(net, [EU, US], "both up", name=n, procs=procs)
    net.iptables("us", "-I", "OUTPUT", "-p", "udp", "--dport", "5400", "-j", "DROP")
    expect(net, [EU, US], "heartbeats cut, probes fine: availability keeps us",
           name="avail.example.com", procs=procs)
    expect(net, [EU], "heartbeats cut, probes fine: safety leaves us out",
           name="safe.example.com", procs=procs)
    net.iptables("us", "-F", "OUTPUT")
    expect(net, [EU, US], "heartbeats back", name="safe.example.com", procs=procs)
    # Both signals down: everybody leaves us out.
    net.cut("us")
    for n in ("avail.example.com", "safe.example.com"):
        expect(net, [EU], "us cut off entirely", name=n, procs=procs)
