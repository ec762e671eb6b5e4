"""The status HTTP endpoint of a running multisited (docs/status.md): /status JSON, /metrics
checked by promtool (Debian prometheus), the dashboard at / rendered by headless Chromium
(Debian chromium), and the HTTP edges (404, 405, HEAD, oversized requests).

Two multisited, one per site (us, eu), on loopback, with heartbeats between them; each
probes its own site's web server, a TCP port this test opens and closes. The us instance
(the one under test) sees us through its probes and eu through eu's heartbeats, so its
metrics carry probe histograms and heartbeat ages alike. The screenshots are kept under
pytest's tmp dir (its path is printed).
"""

import base64
import http.client
import json
import os
import re
import select
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

from conftest import IDENTITY, MULTISITED, ZONES, Server, free_port, ms_config, wait_for, \
    _start_with_retry

US, EU = "198.51.100.10", "192.0.2.10"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Listener:
    """A TCP port that accepts (a web server that is up) until closed; reopen() binds the same
    port again."""

    def __init__(self, port=0):
        self.s = socket.socket()
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.s.bind(("127.0.0.1", port))
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


def _site_yaml(webs, hb_ports):
    return "".join(
        f"  - name: {n}\n    addresses: [{a}]\n"
        f"    web-servers: [\"127.0.0.1:{webs[n].port}\"]\n"
        "    web-check: {type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1}\n"
        f"    heartbeat-peers: [\"127.0.0.1:{hb_ports[n]}\"]\n"
        for n, a in (("us", US), ("eu", EU)))


@pytest.fixture(scope="module")
def env(workdir):
    assert os.access(MULTISITED, os.X_OK), f"{MULTISITED} is not built"
    d = tempfile.mkdtemp(prefix="status-", dir=workdir)
    key = os.path.join(d, "hb.key")
    subprocess.run([MULTISITED, "keygen", key], check=True, capture_output=True, timeout=30)
    webs = {"us": Listener(), "eu": Listener()}
    hb_ports = {"us": free_port(v6=False), "eu": free_port(v6=False)}
    sites = _site_yaml(webs, hb_ports)
    e = {"dir": d, "webs": webs, "hb": hb_ports, "srv": {}, "http": {}}

    def start(me):
        def make(port):
            http_port = free_port(v6=False)
            text = ms_config(port, ZONES, v6=False) + (
                f"sites:\n{sites}"
                "names:\n  - name: app.example.com\n    sites: [us, eu]\n"
                f"heartbeat:\n  self: {me}\n  id: ms-{me}\n"
                f"  listen: \"127.0.0.1:{hb_ports[me]}\"\n  key-file: {key}\n"
                "  interval: 100ms\n  period: 300ms\n  periods: 2\n")
            text = text.replace("server:\n", "server:\n"
                                f"  control-socket: {os.path.join(d, me + '.sock')}\n"
                                f"  status-listen: \"127.0.0.1:{http_port}\"\n", 1)
            conf = os.path.join(d, f"{me}.yaml")
            with open(conf, "w") as f:
                f.write(text)
            e["http"][me] = http_port
            return Server(f"multisited-{me}", [MULTISITED, "-c", conf], port, d, ["127.0.0.1"])
        e["srv"][me] = _start_with_retry(make)

    start("us")
    start("eu")
    yield e
    for s in e["srv"].values():
        rc = s.stop()
        assert rc == 0, f"{s.name} exited with {rc} on SIGTERM; log:\n{s.log_tail()}"
    for w in webs.values():
        w.close()


def request(env, method, path, headers=None, body=None, me="us"):
    c = http.client.HTTPConnection("127.0.0.1", env["http"][me], timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def status(env, me="us"):
    code, hdr, body = request(env, "GET", "/status", me=me)
    assert code == 200, (code, body)
    assert hdr["Content-Type"] == "application/json"
    return json.loads(body)


def metrics_text(env):
    code, hdr, body = request(env, "GET", "/metrics")
    assert code == 200, (code, body)
    assert hdr["Content-Type"].startswith("text/plain; version=0.0.4")
    return body.decode()


def metric(text, fam, /, **labels):
    """The value of one sample, or None."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != fam:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == {k: str(v) for k, v in labels.items()}:
            return float(m.group(3))
    return None


def query(env, name, qtype):
    q = dns.message.make_query(name, qtype)
    return dns.query.udp(q, "127.0.0.1", port=env["srv"]["us"].port, timeout=2)


def site(st, name):
    return next(s for s in st["sites"] if s["name"] == name)


def wait_all_up(env):
    def ok():
        st = status(env)
        us, eu = site(st, "us"), site(st, "eu")
        return (us["available"] and eu["available"] and us["probe"]["verdict"] == "UP"
                and eu["heartbeat"]["alive"] and st["names"][0]["order"] == ["us", "eu"])
    wait_for(ok, 15, "both sites available on the us instance's /status")


def promtool_check(text):
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)


def chromium(env, out_dir, tag, screenshot=False):
    """Load the dashboard in headless Chromium with a fresh profile; return the DOM (and
    write a screenshot when asked)."""
    assert os.access(CHROMIUM, os.X_OK), "chromium missing: run scripts/deps.sh"
    profile = tempfile.mkdtemp(prefix="chromium-", dir=env["dir"])
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-quic", f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
    url = f"http://127.0.0.1:{env['http']['us']}/"
    r = subprocess.run(argv + ["--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"chromium --dump-dom: {r.returncode}\n{r.stderr[-2000:]}"
    dom = r.stdout
    with open(os.path.join(out_dir, f"dashboard-{tag}.html"), "w") as f:
        f.write(dom)
    if screenshot:
        png = os.path.join(out_dir, f"dashboard-{tag}.png")
        r = subprocess.run(argv + [f"--screenshot={png}", "--window-size=1280,900", url],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and os.path.getsize(png) > 10000, \
            f"chromium --screenshot: {r.returncode}\n{r.stderr[-2000:]}"
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        print(f"\ndashboard screenshot ({tag}): {png}")
    shutil.rmtree(profile, ignore_errors=True)
    return dom


def dom_sites(dom):
    return dict(re.findall(r'data-site="([^"]+)" data-available="(true|false)"', dom))


class Cdp:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    commands on its fd 3, replies on fd 4, NUL-terminated JSON), so one page can be watched
    while the cluster changes under it. No websocket library needed."""

    def __init__(self, argv):
        to_r, self.to_w = os.pipe()
        self.from_r, from_w = os.pipe()

        def pre():
            # Copies first, so fd 3 and 4 are never our own pipe ends; dup2 clears CLOEXEC.
            a, b = os.dup(to_r), os.dup(from_w)
            os.dup2(a, 3)
            os.dup2(b, 4)
        self.proc = subprocess.Popen(argv + ["--remote-debugging-pipe"], preexec_fn=pre,
                                     close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        self.buf = b""
        self.seq = 0
        self.session = None

    def call(self, method, params=None, timeout=15):
        self.seq += 1
        m = {"id": self.seq, "method": method, "params": params or {}}
        if self.session:
            m["sessionId"] = self.session
        os.write(self.to_w, json.dumps(m).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self.buf:
                msg, self.buf = self.buf.split(b"\0", 1)
                r = json.loads(msg)
                if r.get("id") == self.seq:
                    assert "error" not in r, f"{method}: {r['error']}"
                    return r["result"]
            left = end - time.monotonic()
            assert left > 0, f"chromium did not answer {method} within {timeout}s"
            ready, _, _ = select.select([self.from_r], [], [], left)
            if ready:
                chunk = os.read(self.from_r, 1 << 20)
                assert chunk, "chromium closed the debugging pipe"
                self.buf += chunk

    def attach_page(self):
        def page():
            return next((t for t in self.call("Target.getTargets")["targetInfos"]
                         if t["type"] == "page"), None)
        t = wait_for(page, 15, "chromium's page target")
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": t["targetId"], "flatten": True})["sessionId"]

    def js(self, expr):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True})
        return r["result"].get("value")

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        """Ask the browser to exit; SIGKILL our pid if it does not."""
        self.session = None
        try:
            self.call("Browser.close", timeout=5)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        os.close(self.to_w)
        os.close(self.from_r)


def test_status_json(env):
    wait_all_up(env)
    st = status(env)
    assert [s["name"] for s in st["sites"]] == ["us", "eu"]
    us, eu = site(st, "us"), site(st, "eu")
    assert us["monitor"] == "probe" and us["probe"]["web_up"] == 1, us
    assert eu["monitor"] == "heartbeat" and eu["heartbeat"]["reported"] == "UP", eu
    assert 0 <= eu["heartbeat"]["last_rx_ms_ago"] < 2000, eu
    assert st["names"] == [{"name": "app.example.com", "ttl": st["names"][0]["ttl"],
                            "servfail": False, "order": ["us", "eu"]}]
    assert st["dns"]["queries"] >= 0 and "A" in st["dns"]["qtype"]
    assert "sync" not in st, "no sync-status-socket configured: no sync key"
    assert st["identity"] == IDENTITY and st["self_site"] == "us"
    # The eu instance serves its own endpoint, where eu is ours and us comes by heartbeat.
    st_eu = status(env, me="eu")
    assert site(st_eu, "eu")["monitor"] == "probe" and site(st_eu, "us")["monitor"] == "heartbeat"


def test_metrics_pass_promtool(env):
    wait_all_up(env)
    text = metrics_text(env)
    r = promtool_check(text)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        f"promtool check metrics:\n{r.stdout}{r.stderr}\n---\n{text}"
    for fam in ("multisite_dns_responses_total", "multisite_dns_queries_total",
                "multisite_site_available", "multisite_site_verdict_transitions_total",
                "multisite_probe_duration_seconds", "multisite_heartbeats_rejected_total",
                "multisite_heartbeat_age_seconds", "multisite_name_answer_sites"):
        assert f"# TYPE {fam} " in text, f"{fam} missing"
    assert metric(text, "multisite_site_available", site="us") == 1
    assert metric(text, "multisite_site_available", site="eu") == 1
    assert 0 <= metric(text, "multisite_heartbeat_age_seconds", site="eu") < 2
    assert metric(text, "multisite_probe_duration_seconds_count", site="us") >= 1
    assert metric(text, "multisite_probe_duration_seconds_bucket", site="us", le="+Inf") == \
        metric(text, "multisite_probe_duration_seconds_count", site="us")
    # The check can fail: a counter without _total, or an unterminated label, is refused.
    broken = text.replace("multisite_dns_truncated_total", "multisite_dns_truncated")
    assert promtool_check(broken).returncode != 0, "promtool accepted a counter without _total"
    broken = text.replace('{site="us"}', '{site="us}', 1)
    assert promtool_check(broken).returncode != 0, "promtool accepted a broken label"


def test_dns_counters_move(env):
    wait_all_up(env)
    before = metrics_text(env)
    for _ in range(5):
        assert query(env, "app.example.com", "A").rcode() == 0
    for _ in range(3):
        query(env, "app.example.com", "AAAA")
    for _ in range(2):
        assert query(env, "nope.example.com", "TXT").rcode() == 3

    def delta(text, name, **lb):
        return (metric(text, name, **lb) or 0) - (metric(before, name, **lb) or 0)

    def moved():
        t = metrics_text(env)
        return (delta(t, "multisite_dns_queries_total", qtype="A") == 5
                and delta(t, "multisite_dns_queries_total", qtype="AAAA") == 3
                and delta(t, "multisite_dns_queries_total", qtype="TXT") == 2
                and delta(t, "multisite_dns_responses_total", rcode="NXDOMAIN") == 2
                and delta(t, "multisite_dns_responses_total", rcode="NOERROR") == 8
                and delta(t, "multisite_dns_transport_queries_total", transport="udp") == 10
                and t)
    t = wait_for(moved, 5, "DNS counters to move by the queries sent")
    assert delta(t, "multisite_dns_queries_total", qtype="MX") == 0


def test_heartbeat_rejections_counted(env):
    wait_all_up(env)
    before = metrics_text(env)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for payload in (b"x" * 120, b"\x00" * 4):
        s.sendto(payload, ("127.0.0.1", env["hb"]["us"]))
    s.close()

    def total(t):
        return sum(float(v) for v in
                   re.findall(r"^multisite_heartbeats_rejected_total\{[^}]*\} (\S+)$", t, re.M))
    wait_for(lambda: total(metrics_text(env)) - total(before) == 2, 5,
             "two rejected heartbeats counted")


def test_http_edges(env):
    code, hdr, body = request(env, "POST", "/status", body=b"x" * 100)
    assert code == 405 and hdr.get("Allow") == "GET, HEAD", (code, hdr)
    code, hdr, body = request(env, "DELETE", "/")
    assert code == 405
    code, _, body = request(env, "GET", "/nope")
    assert code == 404 and b"/status" in body
    code, _, _ = request(env, "GET", "/status/../etc/passwd")
    assert code == 404
    code, hdr, body = request(env, "HEAD", "/metrics")
    assert code == 200 and body == b"" and int(hdr["Content-Length"]) > 1000
    code, hdr, body = request(env, "GET", "/status?pretty=1")
    assert code == 200 and json.loads(body)["sites"]
    code, hdr, body = request(env, "GET", "/")
    assert code == 200 and hdr["Content-Type"].startswith("text/html")
    html = body.decode()
    assert "<canvas" in html and "fetch(\"/status\"" in html
    assert not re.search(r"(src|href)=\"?(https?:)?//", html), "external asset in the dashboard"
    # Oversized request headers are refused, and the server keeps serving.
    try:
        code, _, _ = request(env, "GET", "/status", headers={"X-Big": "a" * 64 * 1024})
        assert code in (413, 431, 400), code
    except (ConnectionError, http.client.HTTPException):
        pass  # closed on us: also bounded
    assert status(env)["sites"]


def test_site_down_moves_metrics_and_dashboard(env, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("status-dashboard"))
    wait_all_up(env)
    before = metrics_text(env)
    dom = chromium(env, out, "up", screenshot=True)
    assert dom_sites(dom) == {"us": "true", "eu": "true"}, dom[-3000:]
    assert "app.example.com" in dom and "generation" in dom
    assert f"{IDENTITY} (site us)" in dom, "title names this multisited"
    assert re.search(r'data-name="app.example.com".*?<span class="chip">us</span>'
                     r'<span class="chip">eu</span>', dom, re.S), "answer order us, eu"

    port = env["webs"]["us"].port
    env["webs"]["us"].close()
    try:
        wait_for(lambda: not site(status(env), "us")["available"], 10, "us down on /status")
        after = metrics_text(env)
        assert metric(after, "multisite_site_available", site="us") == 0
        assert metric(after, "multisite_site_available", site="eu") == 1
        assert metric(after, "multisite_site_probe_verdict", site="us") == 0
        assert metric(after, "multisite_name_answer_sites", name="app.example.com") == 1
        tr = ("multisite_site_verdict_transitions_total", {"site": "us", "source": "probe"})
        assert metric(after, tr[0], **tr[1]) == metric(before, tr[0], **tr[1]) + 1
        assert promtool_check(after).returncode == 0
        st = status(env)
        assert st["names"][0]["order"] == ["eu"]
        assert "refused" in site(st, "us")["probe"]["reason"]

        dom = chromium(env, out, "us-down", screenshot=True)
        assert dom_sites(dom) == {"us": "false", "eu": "true"}, dom[-3000:]
        row = re.search(r'<tr[^>]*data-site="us".*?</tr>', dom, re.S).group(0)
        assert "DOWN" in row and "refused" in row, row
        assert not re.search(r'<span class="chip">us</span>', dom), "us still in the order"
    finally:
        env["webs"]["us"] = Listener(port)
    wait_all_up(env)


def test_dashboard_follows_a_site_live(env, tmp_path_factory):
    """One dashboard page stays open while us goes down and comes back: its rows, its answer
    order, its timeline and its list of verdict changes follow, without a reload."""
    out = str(tmp_path_factory.mktemp("status-live"))
    wait_all_up(env)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=env["dir"])
    url = f"http://127.0.0.1:{env['http']['us']}/"
    b = Cdp([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-quic", f"--user-data-dir={profile}", "--window-size=1280,900", url])
    rows = ("JSON.stringify(Object.fromEntries([...document.querySelectorAll('tr.site')]"
            ".map(e => [e.dataset.site, e.dataset.available])))")
    order = ("[...document.querySelectorAll('tr.name td.order span')]"
             ".map(e => e.textContent).join(',')")
    events = "document.getElementById('events').textContent"
    port = env["webs"]["us"].port
    try:
        b.attach_page()
        wait_for(lambda: b.js(rows) == '{"us":"true","eu":"true"}', 15, "both sites up in the page")
        assert b.js(order) == "us,eu"
        assert "none since" in b.js(events)
        env["webs"]["us"].close()
        try:
            wait_for(lambda: b.js(rows) == '{"us":"false","eu":"true"}', 15,
                     f"us down in the open page (rows {b.js(rows)})")
            assert b.js(order) == "eu"
            ev = b.js(events)
            assert re.search(r"us DOWN: 0/1 web servers answer .*refused", ev), ev
            # The timeline's right end is red (down), its left part green (was up).
            px = b.js("(() => { const c = document.querySelector('#site-us canvas');"
                      " const g = c.getContext('2d');"
                      " return [...g.getImageData(c.width - 1, 7, 1, 1).data.slice(0, 3)]; })()")
            assert px[0] > 150 and px[1] < 100, f"timeline end not red: {px}"
            png = os.path.join(out, "dashboard-live-us-down.png")
            b.screenshot(png)
            print(f"\nlive dashboard screenshot: {png}")
        finally:
            env["webs"]["us"] = Listener(port)
        wait_for(lambda: b.js(rows) == '{"us":"true","eu":"true"}', 15, "us back in the page")
        assert b.js(order) == "us,eu"
        assert re.search(r"us available", b.js(events)), b.js(events)
    finally:
        b.close()
        shutil.rmtree(profile, ignore_errors=True)


def test_replication_from_a_real_syncd(workdir, tmp_path):
    """multisite-syncd (SQLite) at two sites, only s1's agent running at first: rows written at
    s1 pile up for s2, and the us multisited pointed at s1's status socket shows the backlog
    and lag; once s2 runs they drain to zero; when s1's agent stops, the endpoint says so."""
    from sync_harness import SYNCD, Cluster
    assert os.access(SYNCD, os.X_OK), f"{SYNCD} is not built"
    c = Cluster(tmp_path, 2)
    try:
        c.init()
        s1, s2 = c.sites
        s1.start()
        for i in range(7):
            s1.sql("INSERT INTO items(id, a) VALUES (?, ?)", (i, f"row {i}"))

        def make(port):
            http_port = free_port(v6=False)
            text = ms_config(port, ZONES, v6=False).replace(
                "server:\n", f"server:\n  control-socket: \"{ctl_sock}\"\n"
                f"  status-listen: \"127.0.0.1:{http_port}\"\n"
                f"  sync-status-socket: {s1.sock}\n", 1)
            conf = os.path.join(str(tmp_path), "ms.yaml")
            with open(conf, "w") as f:
                f.write(text)
            e["http"]["us"] = http_port
            return Server("multisited-sync", [MULTISITED, "-c", conf], port, str(tmp_path),
                          ["127.0.0.1"])
        e = {"http": {}}
        ctl_sock = os.path.join(str(tmp_path), "ctl.sock")
        srv = _start_with_retry(make)
        try:
            def backlog():
                st = status(e)
                peers = (st.get("sync") or {}).get("peers") or []
                return peers and peers[0]["name"] == "s2" and peers[0]["backlog"] == 7 and st
            st = wait_for(backlog, 15, "/status to show s1's backlog of 7 rows for s2")
            assert st["sync"]["site"] == "s1" and st["sync"]["agent"] == "running"
            # multisitectl status carries the same replication document (table and JSON).
            ctl = os.path.join(os.path.dirname(MULTISITED), "multisitectl")
            r = subprocess.run([ctl, "-s", ctl_sock, "status", "--json"], capture_output=True,
                               text=True, timeout=10)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["sync"]["peers"][0]["backlog"] == 7, r.stdout
            r = subprocess.run([ctl, "-s", ctl_sock, "status"], capture_output=True, text=True,
                               timeout=10)
            assert "REPLICATION" in r.stdout and '"backlog"' in r.stdout, r.stdout

            def lagging():
                t = metrics_text(e)
                lag = metric(t, "multisite_sync_lag_seconds", peer="s2")
                return lag is not None and lag > 0 and t
            t = wait_for(lagging, 10, "a replication lag for s2 in /metrics")
            assert metric(t, "multisite_sync_up") == 1
            assert metric(t, "multisite_sync_backlog", peer="s2") == 7
            assert metric(t, "multisite_sync_conflicts_total") == 0
            assert metric(t, "multisite_sync_quarantined") == 0
            assert metric(t, "multisite_sync_peer_must_rejoin", peer="s2") == 0
            assert metric(t, "multisite_sync_refused_by_peer", peer="s2") == 0
            r = promtool_check(t)
            assert r.returncode == 0, f"{r.stdout}{r.stderr}\n---\n{t}"

            s2.start()
            wait_for(lambda: metric(metrics_text(e), "multisite_sync_backlog", peer="s2") == 0,
                     20, "the backlog to drain once s2 runs")
            assert metric(metrics_text(e), "multisite_sync_rows_applied_total", peer="s2") == 0

            s1.stop()
            wait_for(lambda: status(e)["sync"] is None, 15, "/status to say sync is unreachable")
            assert metric(metrics_text(e), "multisite_sync_up") == 0
            assert metric(metrics_text(e), "multisite_sync_backlog", peer="s2") is None
        finally:
            rc = srv.stop()
            assert rc == 0, f"multisited exited with {rc}; log:\n{srv.log_tail()}"
    finally:
        c.stop()


def test_bad_status_listen_is_a_config_error(tmp_path):
    conf = tmp_path / "bad.yaml"
    conf.write_text(ms_config(free_port(v6=False), ZONES, v6=False).replace(
        "server:\n", "server:\n  status-listen: \"localhost:http\"\n", 1))
    r = subprocess.run([MULTISITED, "-t", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0
    assert f"{conf}:2: server.status-listen: 'localhost:http'" in r.stderr, r.stderr
