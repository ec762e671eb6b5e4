"""bench/failover.py (run by bench/failover.sh): how fast does a failure reach the DNS answers,
and how fast does recovery? Real processes only: multisite-webapp web servers on SQLite,
multisited probing them, and gdnsd (Debian) on the web-server-kill scenario for comparison.

Scenarios, TRIALS each (default 10):
  kill: every web server of site eu is SIGKILLed (new connections are refused) -> time until
        the first answer without eu; then restarted -> time until eu is back.
  db:   eu's database page loses its keyword (the SQLite file is made unreadable to the web
        apps' user) -> time until eu is left out; restored -> time until it is back.
multisited runs with the example config's probe defaults (interval 1s, timeout 500ms,
rise 2, fall 2; database interval 1s, timeout 1s). gdnsd runs with its fastest http_status
monitoring that issue 3 names: interval 2 s, up/down thresholds 2. It cannot match keywords,
so it only runs the kill scenario.

Detection is measured by polling the server with UDP queries every 5 ms.
Last lines: the medians; exit 1 when ours miss the floors (kill <= 1 s, db <= 3 s).
"""

import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

from conftest import (MULTISITED, ZONES, Server, free_port, ms_config, wait_for,  # noqa: E402
                      _start_with_retry)
from test_webapp import UNPRIV, start_webapp  # noqa: E402

TRIALS = int(os.environ.get("TRIALS", "10"))
NAME = "app.example.com"
EU, US = "127.0.0.2", "127.0.0.3"  # answer addresses = the web servers' own addresses


def query_a(port, name=NAME):
    """One UDP A query; the list of addresses (or None on timeout)."""
    qid = os.getpid() & 0xFFFF
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    pkt = struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0) + labels + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    try:
        s.sendto(pkt, ("127.0.0.1", port))
        data = s.recv(4096)
    except OSError:
        return None
    finally:
        s.close()
    an = struct.unpack(">H", data[6:8])[0]
    off = 12 + len(labels) + 4
    out = []
    for _ in range(an):
        if data[off] & 0xC0 == 0xC0:
            off += 2
        else:
            while data[off]:
                off += data[off] + 1
            off += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[off:off + 10])
        off += 10
        if rtype == 1:
            out.append(socket.inet_ntoa(data[off:off + 4]))
        off += rdlen
    return out


def time_until(port, cond, t0, limit=30.0):
    while time.monotonic() - t0 < limit:
        a = query_a(port)
        if a is not None and cond(a):
            return time.monotonic() - t0
        time.sleep(0.005)
    raise AssertionError(f"no change within {limit}s (last answer {query_a(port)})")


class Web:
    """One web app at a fixed address:port, restartable on the same port."""

    def __init__(self, workdir, name, site, addr, port, db, identity, user):
        self.argv = [os.path.join(os.path.dirname(MULTISITED), "multisite-webapp"),
                     "--listen", f"{addr}:{port}", "--db", db, "--name", name, "--site", site,
                     "--db-identity", identity]
        if user:
            from test_webapp import as_user
            self.argv = as_user(user) + self.argv
        self.addr, self.port, self.workdir, self.name = addr, port, workdir, name
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=self.workdir)
        def up():
            try:
                socket.create_connection((self.addr, self.port), timeout=0.2).close()
                return True
            except OSError:
                return False
        wait_for(up, 10, f"{self.name} to listen")

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def main():
    workdir = tempfile.mkdtemp(prefix="ms-failover-")
    os.chmod(workdir, 0o755)
    user = UNPRIV if os.geteuid() == 0 else None
    if user:
        import pwd
        pw = pwd.getpwnam(user)
        os.chown(workdir, pw.pw_uid, pw.pw_gid)
    dbs = {s: os.path.join(workdir, f"{s}.sqlite") for s in ("eu", "us")}
    port = free_port(v6=False)
    webs = {"eu": Web(workdir, "eu-web1", "eu", EU, port, f"sqlite:{dbs['eu']}", "db-eu-1", user),
            "us": Web(workdir, "us-web1", "us", US, port, f"sqlite:{dbs['us']}", "db-us-1", user)}
    started = []
    results = {}
    try:
        for w in webs.values():
            w.start()
        sites = ""
        for s, addr in (("eu", EU), ("us", US)):
            sites += (f"  - name: {s}\n    addresses: [\"{addr}\"]\n"
                      f"    web-servers: [\"{addr}:{port}\"]\n"
                      "    web-check: {type: http, path: /health}\n"
                      f"    database: {{name: db-{s}-1, url: \"http://{addr}:{port}/db\"}}\n")
        extra = (f"sites:\n{sites}names:\n  - name: {NAME}\n    sites: [eu, us]\n")

        def make(p):
            d = tempfile.mkdtemp(prefix="ms-", dir=workdir)
            conf = os.path.join(d, "multisited.yaml")
            with open(conf, "w") as f:
                f.write(ms_config(p, ZONES, v6=False) + extra)
            return Server("multisited", [MULTISITED, "-c", conf], p, d, ["127.0.0.1"])
        ms = _start_with_retry(make)
        started.append(ms)
        gd = start_gdnsd(workdir, port)
        started.append(gd)
        both = lambda a: a == [EU, US]  # noqa: E731
        no_eu = lambda a: a == [US]  # noqa: E731
        for srv, label in ((ms, "ours"), (gd, "gdnsd")):
            wait_for(lambda: query_a(srv.port) == [EU, US], 30, f"{label}: both sites up")

        for label, srv in (("ours", ms), ("gdnsd", gd)):
            down, up = [], []
            for i in range(TRIALS):
                wait_for(lambda: query_a(srv.port) == [EU, US], 30, f"{label}: both up")
                time.sleep(0.3 + (i % 5) * 0.37)  # spread the failure over the probe cycle
                t0 = time.monotonic()
                webs["eu"].kill()
                down.append(time_until(srv.port, no_eu, t0))
                t0 = time.monotonic()
                webs["eu"].start()
                up.append(time_until(srv.port, both, t0 - 0.0))
            results[("kill", label)] = (down, up)

        down, up = [], []
        for i in range(TRIALS):
            wait_for(lambda: query_a(ms.port) == [EU, US], 30, "ours: both up")
            time.sleep(0.3 + (i % 5) * 0.37)
            t0 = time.monotonic()
            os.chmod(dbs["eu"], 0o000)
            down.append(time_until(ms.port, no_eu, t0))
            t0 = time.monotonic()
            os.chmod(dbs["eu"], 0o644)
            up.append(time_until(ms.port, both, t0))
        results[("db", "ours")] = (down, up)
    finally:
        for s in started:
            s.stop()
        for w in webs.values():
            if w.proc and w.proc.poll() is None:
                w.kill()

    print(f"# {TRIALS} trials each; seconds from the failure (or the repair) to the first "
          "DNS answer that reflects it")
    for (scen, who), (down, up) in results.items():
        print(f"{scen:5s} {who:6s} down: " + " ".join(f"{x:.2f}" for x in down))
        print(f"{scen:5s} {who:6s} up:   " + " ".join(f"{x:.2f}" for x in up))
    print("== medians (s)")
    med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in results.items()}
    for (scen, who), (d, u) in med.items():
        print(f"{scen:5s} {who:6s} failure {d:6.2f}  recovery {u:6.2f}")
    kd, ku = med[("kill", "ours")]
    gd_d, gd_u = med[("kill", "gdnsd")]
    dd, du = med[("db", "ours")]
    print(f"web servers killed: ours {kd:.2f} s, gdnsd {gd_d:.2f} s (ratio {kd / gd_d:.2f}); "
          f"recovery ours {ku:.2f} s, gdnsd {gd_u:.2f} s")
    print(f"database keyword lost: ours {dd:.2f} s; recovery {du:.2f} s")
    fail = []
    if kd > 1.0:
        fail.append(f"kill median {kd:.2f} s > 1 s")
    if dd > 3.0:
        fail.append(f"db median {dd:.2f} s > 3 s")
    print("FAIL: " + "; ".join(fail) if fail else "PASS")
    return 1 if fail else 0


def start_gdnsd(workdir, web_port):
    d = tempfile.mkdtemp(prefix="gdnsd-", dir=workdir)
    os.makedirs(os.path.join(d, "zones"))
    port = free_port(v6=False)
    with open(os.path.join(d, "config"), "w") as f:
        f.write(f"""options => {{
  listen => [ "127.0.0.1:{port}" ]
  udp_threads => 1
  tcp_threads => 1
  run_dir => {d}/run
  state_dir => {d}/state
}}
service_types => {{
  web => {{
    plugin => http_status
    port => {web_port}
    url_path => /health
    ok_codes => [ 200 ]
    interval => 2
    timeout => 1
    up_thresh => 2
    ok_thresh => 2
    down_thresh => 2
  }}
}}
plugins => {{
  multifo => {{
    app => {{
      service_types => web
      eu => {EU}
      us => {US}
    }}
  }}
}}
""")
    with open(os.path.join(d, "zones", "example.com"), "w") as f:
        f.write("$TTL 300\n@ SOA ns1 hostmaster 1 7200 3600 1209600 300\n@ NS ns1\n"
                "ns1 A 192.0.2.53\napp 30 DYNA multifo!app\n")
    srv = Server("gdnsd", ["/usr/sbin/gdnsd", "-c", d, "start"], port, d, ["127.0.0.1"])
    srv.start()
    wait_for(lambda: query_a(port) is not None or not srv.alive(), 30, "gdnsd to answer")
    assert srv.alive(), srv.log_tail()
    return srv


if __name__ == "__main__":
    sys.exit(main())
