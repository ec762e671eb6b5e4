"""test_webapp.py: the demo web app (M12) against real databases: two multisite-webapp
instances on one SQLite file, and two on one real PostgreSQL 15 server.

What is checked, for each backend:
  - stateless web tier: a session made through web1 is served by web2 (same id, visits go on
    counting), a guestbook entry posted through web1 is listed by web2;
  - the database page (/db) prints the database's identity while the database works, and
    answers 503 "database unavailable: ..." WITHOUT the identity when it does not, and comes
    back by itself when the database does: SQLite made unreadable (chmod 000: the web apps run
    as an unprivileged user when we are root, because root ignores file permissions) and the
    file moved away and back; PostgreSQL stopped and started again;
  - /health (web tier only) stays up throughout, also while a page waits on a held lock;
  - hostile input: wrong methods, unknown paths, oversized and malformed bodies, bad cookies,
    markup in guestbook text, and hostile rows arriving through the database itself.
And with real neighbours: HAProxy's own httpchk on /db with the identity as its expected
string marks the web apps UP and DOWN as the database comes and goes; two sites, each on its
own SQLite database, replicated by multisite-syncd, serve each other's sessions and entries.
Every process is ours and stopped by its pid; every wait polls with a deadline.
"""

import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from conftest import BUILD, Server, _start_with_retry, free_port, wait_for
from pgutil import PgCluster

WEBAPP = os.path.join(BUILD, "multisite-webapp")
DEADLINE = 10.0  # seconds for a page to reflect a database change (it takes one request)
UNPRIV = "nobody"  # who runs the SQLite web apps when the tests run as root


def req(port, method, path, body=None, headers=None, timeout=5):
    """One request on a fresh connection: (status, lower-cased headers, body text)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, \
            r.read().decode("utf-8", errors="strict")
    finally:
        c.close()


class Webapp(Server):
    """A multisite-webapp we started; ready when /health answers."""

    def wait_ready(self, deadline=10.0):
        def ready():
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}; log:\n"
                                     f"{self.log_tail()}")
            try:
                return req(self.port, "GET", "/health", timeout=1)[0] == 200
            except OSError:
                return False
        try:
            wait_for(ready, deadline, f"{self.name} to answer /health on port {self.port}")
        except AssertionError as e:
            self.stop()
            raise AssertionError(f"{e}\nlog of {self.name}:\n{self.log_tail()}") from None
        return self

    def get(self, path, **kw):
        return req(self.port, "GET", path, **kw)


def as_user(user):
    """Command prefix running a program as `user` (uid and primary gid, no other groups)."""
    pw = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]


def start_webapp(workdir, name, site, db, identity=None, user=None):
    """Start multisite-webapp on a free port (retrying if the port is taken meanwhile); as
    `user` (via setpriv) when given."""
    assert os.access(WEBAPP, os.X_OK), f"{WEBAPP} is not built (run make)"

    def make(port):
        argv = [WEBAPP, "--listen", f"127.0.0.1:{port}", "--db", db, "--name", name,
                "--site", site]
        if identity:
            argv += ["--db-identity", identity]
        if user:
            argv = as_user(user) + argv
        return Webapp(name, argv, port, workdir, ["127.0.0.1"])
    return _start_with_retry(make)


def stop_all(*apps):
    """Stop our web apps; a clean exit on SIGTERM is part of the interface."""
    bad = []
    for a in apps:
        rc = a.stop()
        if rc != 0:
            bad.append(f"{a.name} exited with {rc}; log:\n{a.log_tail()}")
    assert not bad, "\n".join(bad)


def session_cookie(headers):
    sc = headers.get("set-cookie", "")
    assert sc.startswith("msid="), f"no msid cookie in {headers}"
    return sc.split(";")[0]


# ---- shared checks, run on both backends ----

def check_served_by(app, site):
    st, h, body = app.get("/health")
    assert st == 200 and body == f"ok {app.name}\n", (st, body)
    assert h.get("x-served-by") == f"{site}/{app.name}", h


def check_session_shared(web1, web2, site):
    st, h, body = web1.get("/session")
    assert st == 200, body
    s1 = json.loads(body)
    cookie = session_cookie(h)
    assert cookie == f"msid={s1['id']}" and s1["new"] is True and s1["visits"] == 1, s1
    assert s1["served_by"] == {"site": site, "web": web1.name}

    st, h, body = web2.get("/session", headers={"Cookie": f"theme=dark; {cookie}"})
    assert st == 200, body
    s2 = json.loads(body)
    assert s2["id"] == s1["id"] and s2["visits"] == 2 and s2["new"] is False, (s1, s2)
    assert s2["served_by"] == {"site": site, "web": web2.name}
    assert "set-cookie" not in h, "a known session must not get a new cookie"
    assert h["x-served-by"] == f"{site}/{web2.name}"

    # Alternating web servers keeps counting: the count lives in the database only.
    for i, app in enumerate([web1, web2, web1, web2]):
        s = json.loads(app.get("/session", headers={"Cookie": cookie})[2])
        assert s["id"] == s1["id"] and s["visits"] == 3 + i, s
    # The HTML page reads the same session.
    st, h, page = web2.get("/", headers={"Cookie": cookie})
    assert st == 200 and s1["id"] in page and "visit 7" in page, page
    assert f"web server <b>{web2.name}</b>" in page


def check_concurrent_visits(web1, web2, threads=8, per_thread=40):
    """Many clients on one session through both web servers at once: every visit counted once
    (the count is one atomic statement in the database), no request failed (SQLite writers
    wait for each other through busy_timeout; PostgreSQL rows lock)."""
    st, h, body = web1.get("/session")
    cookie = session_cookie(h)
    errors = []

    def client(n):
        app = (web1, web2)[n % 2]
        for _ in range(per_thread):
            try:
                st, _, b = app.get("/session", headers={"Cookie": cookie})
                if st != 200:
                    errors.append((app.name, st, b))
            except OSError as e:
                errors.append((app.name, repr(e)))
    ts = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors[:5]
    s = json.loads(web2.get("/session", headers={"Cookie": cookie})[2])
    assert s["visits"] == 1 + threads * per_thread + 1, s


def check_guestbook_shared(web1, web2, site):
    tag = uuid.uuid4().hex[:12]
    # Form post through web1, with markup that must come back escaped.
    msg = f"hello {tag} <script>alert(1)</script> & \"q\""
    form = "author=" + "Ann%20%3Cb%3E" + "&message=" + \
        "".join(c if c.isalnum() else "%%%02X" % ord(c) for c in msg)
    st, h, body = req(web1.port, "POST", "/guestbook", body=form,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 303 and h.get("location") == "/", (st, body)
    assert h["x-served-by"] == f"{site}/{web1.name}"
    # JSON post through web2, with escapes and non-ASCII.
    st, h, body = req(web2.port, "POST", "/guestbook",
                       body=json.dumps({"author": "Bö", "message": f"json {tag}\n\u00e9\u2603"}),
                       headers={"Content-Type": "application/json; charset=utf-8"})
    assert st == 201, body
    jid = json.loads(body)["id"]

    for app in (web2, web1):
        st, h, body = app.get("/guestbook.json")
        assert st == 200 and h["content-type"] == "application/json", body
        doc = json.loads(body)
        entries = {e["message"]: e for e in doc["entries"]}
        assert msg in entries, f"form entry from {web1.name} not listed by {app.name}: {doc}"
        e = entries[msg]
        assert e["author"] == "Ann <b>" and e["site"] == site and e["web"] == web1.name, e
        j = entries[f"json {tag}\n\u00e9\u2603"]
        assert j["id"] == jid and j["author"] == "Bö" and j["web"] == web2.name, j
    st, h, page = web2.get("/")
    assert st == 200
    assert f"hello {tag} &lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;q&quot;" in page
    assert "<script>" not in page and "Ann &lt;b&gt;" in page


def check_db_page(apps, identity, backend):
    for app in apps:
        st, h, body = app.get("/db")
        assert st == 200, body
        assert f"database: {identity}\n" in body and f"backend: {backend}\n" in body, body
        assert h["x-served-by"].endswith("/" + app.name)


def wait_db_down(apps, identity):
    """Every app's /db answers 503 without the identity; /health stays 200."""
    for app in apps:
        def down():
            st, _, body = app.get("/db")
            return (st, body) if st == 503 else None
        st, body = wait_for(down, DEADLINE, f"{app.name} /db to fail")
        assert body.startswith("database unavailable: "), body
        assert identity not in body, f"keyword {identity!r} present while the db is down: {body}"
        assert app.get("/health")[0] == 200
        st, _, body = app.get("/session")
        assert st == 503 and "database unavailable" in json.loads(body)["error"], body
        st, _, body = app.get("/")
        assert st == 503 and identity not in body, body


def wait_db_up(apps, identity):
    for app in apps:
        wait_for(lambda: (lambda r: r[0] == 200 and f"database: {identity}\n" in r[2])(
            app.get("/db")), DEADLINE, f"{app.name} /db to show {identity} again")
        assert app.get("/session")[0] == 200


# ---- SQLite ----

@pytest.fixture(scope="module")
def sqlite_site(workdir):
    """Two web apps on one SQLite file, in a directory the (unprivileged) web apps own."""
    d = tempfile.mkdtemp(prefix="wa-sqlite-", dir="/tmp")
    user = None
    if os.geteuid() == 0:
        user = UNPRIV
        pw = pwd.getpwnam(user)
        os.chown(d, pw.pw_uid, pw.pw_gid)
    os.chmod(d, 0o755)
    db = os.path.join(d, "site-a.sqlite")
    apps = []
    try:
        apps.append(start_webapp(workdir, "web1", "a", f"sqlite:{db}", identity="db-a-sqlite",
                                 user=user))
        apps.append(start_webapp(workdir, "web2", "a", f"sqlite:{db}", user=user))
        yield apps[0], apps[1], db
    finally:
        try:
            stop_all(*apps)
        finally:
            shutil.rmtree(d, ignore_errors=True)


def test_sqlite_served_by(sqlite_site):
    web1, web2, _ = sqlite_site
    check_served_by(web1, "a")
    check_served_by(web2, "a")


def test_sqlite_session_shared(sqlite_site):
    web1, web2, _ = sqlite_site
    check_session_shared(web1, web2, "a")


def test_sqlite_concurrent_visits(sqlite_site):
    web1, web2, _ = sqlite_site
    check_concurrent_visits(web1, web2)


def test_sqlite_guestbook_shared(sqlite_site):
    web1, web2, _ = sqlite_site
    check_guestbook_shared(web1, web2, "a")


def test_sqlite_db_page(sqlite_site):
    web1, web2, db = sqlite_site
    # web2 was started without --db-identity: it kept the identity web1 set.
    check_db_page([web1, web2], "db-a-sqlite", "sqlite")
    st = os.stat(db)
    assert st.st_size > 0
    with open(db, "rb") as f:
        assert f.read(16) == b"SQLite format 3\x00"


def test_sqlite_unreadable_file(sqlite_site):
    """chmod 000 on the database file: the pages fail without the keyword, then recover.
    As root this only means something because the web apps run as an unprivileged user;
    check that the chmod really locks that user out before trusting the result."""
    web1, web2, db = sqlite_site
    os.chmod(db, 0o000)
    try:
        if os.geteuid() == 0:
            r = subprocess.run(as_user(UNPRIV) + ["head", "-c1", db], capture_output=True)
            assert r.returncode != 0, "chmod 000 did not lock the web apps' user out"
        wait_db_down([web1, web2], "db-a-sqlite")
    finally:
        os.chmod(db, 0o644)
    wait_db_up([web1, web2], "db-a-sqlite")


def test_sqlite_file_moved_away(sqlite_site):
    """The database file renamed away (what root cannot be stopped from): the web apps must
    not keep serving from descriptors they hold, nor create an empty database in its place."""
    web1, web2, db = sqlite_site
    away = db + ".away"
    os.rename(db, away)
    try:
        wait_db_down([web1, web2], "db-a-sqlite")
        assert not os.path.exists(db), "a request created a new database file"
    finally:
        os.rename(away, db)
    wait_db_up([web1, web2], "db-a-sqlite")


LOCKER = r"""
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)
c.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
c.execute("ROLLBACK")
"""


def test_sqlite_write_lock_waits_then_503_health_unaffected(sqlite_site):
    """Another writer holds the database's write lock: a page that writes waits for it
    (busy_timeout, 2 s) and then answers 503 "database is locked", once, without a retry that
    would double the wait; meanwhile /health answers at once (thread per connection) and /db
    still reads (WAL: readers are not blocked by a writer)."""
    web1, _, db = sqlite_site
    argv = ["/usr/bin/python3", "-c", LOCKER, db]
    if os.geteuid() == 0:
        argv = as_user(UNPRIV) + argv
    locker = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert locker.stdout.readline() == b"locked\n"
        result = {}

        def write():
            t = time.monotonic()
            result["r"] = web1.get("/session", timeout=15)
            result["t"] = time.monotonic() - t
        th = threading.Thread(target=write)
        th.start()
        while th.is_alive():
            t = time.monotonic()
            assert web1.get("/health")[0] == 200
            assert web1.get("/db")[0] == 200
            assert time.monotonic() - t < 1.0, "health/db held up by a waiting writer"
            time.sleep(0.05)
        th.join()
        st, _, body = result["r"]
        assert st == 503 and "database is locked" in body, (st, body)
        assert 1.5 <= result["t"] < 3.5, f"waited {result['t']:.2f}s (busy_timeout is 2 s)"
    finally:
        locker.stdin.close()
        locker.wait(10)
    assert web1.get("/session")[0] == 200


# ---- hostile input (on the SQLite pair) ----

def test_methods_and_paths(sqlite_site):
    web1, _, _ = sqlite_site
    g, p = "GET, HEAD, OPTIONS", "POST, OPTIONS"
    for method, path, allow in [("DELETE", "/db", g), ("POST", "/session", g), ("PUT", "/", g),
                                ("GET", "/guestbook", p), ("PATCH", "/guestbook.json", g),
                                ("TRACE", "/health", g), ("BREW", "/", g)]:
        st, h, body = req(web1.port, method, path, body="" if method != "GET" else None)
        assert st == 405 and h.get("allow") == allow, (method, path, st, h)
        assert h["x-served-by"] == "a/web1"
    st, h, body = web1.get("/nope/<script>")
    assert st == 404 and h["x-served-by"] == "a/web1", body
    # The path comes back only as text/plain that browsers must not sniff into HTML.
    assert h["content-type"].startswith("text/plain") and \
        h["x-content-type-options"] == "nosniff", h
    st, h, body = req(web1.port, "HEAD", "/health")
    assert st == 200 and body == ""
    for path, allow in [("/health", g), ("/guestbook", p)]:
        st, h, body = req(web1.port, "OPTIONS", path)
        assert st == 204 and h.get("allow") == allow and body == "", (path, st, h)


BAD_POSTS = [
    # (content type, body, status, what)
    ("application/json", "{", 400, "truncated JSON"),
    ("application/json", "[1,2]", 400, "not an object"),
    ("application/json", '{"message": 5}', 400, "message not a string"),
    ("application/json", '{"author": "x"}', 400, "message missing"),
    ("application/json", '{"message": ""}', 400, "empty message"),
    ("application/json", '{"message": "a\\u0000b"}', 400, "NUL in message"),
    ("application/json", '{"message": "\\ud800"}', 400, "lone surrogate"),
    ("application/json", '{"message": "x"} trailing', 400, "trailing garbage"),
    ("application/json", "[" * 5000, 400, "deep nesting"),
    ("application/json", '{"message": "x", "author": "' + "a" * 65 + '"}', 400, "long author"),
    ("application/json", '{"message": "' + "m" * 2001 + '"}', 400, "long message"),
    ("application/json", '{"message": "a\\u0007"}', 400, "control character"),
    ("application/x-www-form-urlencoded", "message=%ZZ", 400, "bad escape"),
    ("application/x-www-form-urlencoded", "message=%4", 400, "short escape"),
    ("application/x-www-form-urlencoded", "message=%FF%FE", 400, "invalid UTF-8"),
    ("application/x-www-form-urlencoded", "message=a%00b", 400, "NUL"),
    ("application/x-www-form-urlencoded", "author=x", 400, "no message"),
    ("application/x-www-form-urlencoded", "message=x&author=a%0Ab", 400, "newline in author"),
    ("text/plain", "message=x", 415, "unsupported type"),
]


@pytest.mark.parametrize("ctype,body,status,what", BAD_POSTS, ids=[b[3] for b in BAD_POSTS])
def test_bad_guestbook_posts(sqlite_site, ctype, body, status, what):
    web1, _, _ = sqlite_site
    before = len(json.loads(web1.get("/guestbook.json")[2])["entries"])
    st, h, resp = req(web1.port, "POST", "/guestbook", body=body.encode(),
                       headers={"Content-Type": ctype})
    assert st == status, (what, st, resp)
    assert h["x-served-by"] == "a/web1"
    if ctype == "application/json":
        assert "error" in json.loads(resp)
    after = len(json.loads(web1.get("/guestbook.json")[2])["entries"])
    assert after == before, f"{what}: a rejected post was stored"


def test_oversized_bodies(sqlite_site):
    web1, _, _ = sqlite_site
    big = b"message=" + b"x" * (70 * 1024)
    st, h, body = req(web1.port, "POST", "/guestbook", body=big,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 413 and h["x-served-by"] == "a/web1", (st, body)
    # Chunked, so no Content-Length to reject up front: the connection is closed once the
    # body passes the bound, and the server goes on serving.
    s = socket.create_connection(("127.0.0.1", web1.port), timeout=5)
    try:
        s.sendall(b"POST /guestbook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (16384, b"y" * 16384)
        got = b""
        try:
            for _ in range(16):
                s.sendall(chunk)
            s.sendall(b"0\r\n\r\n")
            got = s.recv(4096)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert not got.startswith(b"HTTP/1.1 2") and not got.startswith(b"HTTP/1.1 3"), got
    finally:
        s.close()
    assert web1.get("/health")[0] == 200


def test_bad_cookies_get_new_sessions(sqlite_site):
    web1, _, _ = sqlite_site
    for cookie in ["msid=", "msid=../../etc/passwd", "msid=" + "A" * 32, "msid=" + "a" * 31,
                   "msid=" + "a" * 33, "msid=\"" + "0" * 31 + "\"", "msid", "=;;;=",
                   "x=" + "y" * 3000]:
        st, h, body = web1.get("/session", headers={"Cookie": cookie})
        assert st == 200, (cookie, body)
        s = json.loads(body)
        assert s["new"] is True and s["visits"] == 1 and len(s["id"]) == 32, (cookie, s)
        assert session_cookie(h) == f"msid={s['id']}"
    # A well-formed id the database has never seen is taken up (a session made at another site
    # and not yet replicated here keeps its id).
    sid = uuid.uuid4().hex
    s = json.loads(web1.get("/session", headers={"Cookie": f'msid="{sid}"'})[2])
    assert s["id"] == sid and s["new"] is False and s["visits"] == 1, s


HOSTILE_ROW = r"""
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=5)
c.execute("INSERT INTO guestbook(id, site, web, author, message, created_ms)"
          " VALUES (?, ?, ?, ?, ?, ?)",
          (sys.argv[2], "<img src=x onerror=alert(1)>", 'w"eb', b"\xff\xfe<b>bytes",
           "ctl\x01 </script> \u2028", "soon"))
c.commit()
"""


def test_hostile_rows_from_the_database(sqlite_site):
    """Rows arrive by replication from other sites, or any writer: they are input too. A row
    with markup, invalid UTF-8 (a BLOB), control characters and a non-number timestamp must
    come out escaped, as valid UTF-8 and valid JSON."""
    web1, _, db = sqlite_site
    rid = uuid.uuid4().hex
    argv = ["/usr/bin/python3", "-c", HOSTILE_ROW, db, rid]
    if os.geteuid() == 0:
        argv = as_user(UNPRIV) + argv  # keep the WAL files owned by the web apps' user
    subprocess.run(argv, check=True)
    st, _, body = web1.get("/guestbook.json")  # req() decodes strictly: valid UTF-8
    assert st == 200
    e = [e for e in json.loads(body)["entries"] if e["id"] == rid]
    assert len(e) == 1, body
    e = e[0]
    assert e["site"] == "<img src=x onerror=alert(1)>" and e["web"] == 'w"eb', e
    assert e["author"] == "\ufffd\ufffd<b>bytes" and e["created_ms"] == 0, e
    assert "</script>" not in body and e["message"] == "ctl\x01 </script> \u2028", e
    st, _, page = web1.get("/")
    assert st == 200
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "w&quot;eb" in page and "&lt;b&gt;bytes" in page and "</script>" not in page
    assert "\x01" not in page


# ---- PostgreSQL ----

@pytest.fixture(scope="module")
def pg_site(workdir):
    pg = PgCluster()
    apps = []
    try:
        pg.start()
        pg.create_db("site_b")
        pg.create_db("site_late")
        # One app with a key=value conninfo, the other with a URI, on the same database.
        apps.append(start_webapp(workdir, "pgweb1", "b", pg.conninfo("site_b"),
                                 identity="db-b-postgres"))
        apps.append(start_webapp(workdir, "pgweb2", "b", pg.uri("site_b")))
        yield pg, apps[0], apps[1]
    finally:
        try:
            stop_all(*apps)
        finally:
            pg.destroy()


def test_pg_served_by(pg_site):
    _, web1, web2 = pg_site
    check_served_by(web1, "b")
    check_served_by(web2, "b")


def test_pg_session_shared(pg_site):
    _, web1, web2 = pg_site
    check_session_shared(web1, web2, "b")


def test_pg_concurrent_visits(pg_site):
    _, web1, web2 = pg_site
    check_concurrent_visits(web1, web2)


def test_pg_guestbook_shared(pg_site):
    pg, web1, web2 = pg_site
    check_guestbook_shared(web1, web2, "b")
    # The rows are really in PostgreSQL, keyed by random hex ids.
    ids = pg.psql("SELECT id FROM guestbook", dbname="site_b").split()
    assert ids and all(len(i) == 32 and int(i, 16) >= 0 for i in ids), ids


def test_pg_db_page(pg_site):
    pg, web1, web2 = pg_site
    check_db_page([web1, web2], "db-b-postgres", "postgresql")
    assert pg.psql("SELECT v FROM site_identity WHERE k = 'name'",
                   dbname="site_b").strip() == "db-b-postgres"


def test_pg_identity_falls_back_to_server_address(pg_site, workdir):
    pg, _, _ = pg_site
    pg.create_db("site_noid")
    web = start_webapp(workdir, "pgweb-noid", "c", pg.conninfo("site_noid"))
    try:
        # Default identity db-<site> was written at start; without the row, the page falls
        # back to the address the server answered on.
        check_db_page([web], "db-c", "postgresql")
        pg.psql("DELETE FROM site_identity", dbname="site_noid")
        check_db_page([web], "127.0.0.1", "postgresql")
    finally:
        stop_all(web)


def test_pg_error_text_never_carries_the_identity(pg_site, workdir):
    """A database named like the identity that does not exist: PostgreSQL's error names it;
    the page must not repeat it (a keyword check would pass on an error page)."""
    pg, _, _ = pg_site
    web = start_webapp(workdir, "pgweb-missing", "z", pg.conninfo("db-zz"), identity="db-zz")
    try:
        st, _, body = web.get("/db")
        assert st == 503 and body.startswith("database unavailable: "), body
        assert "db-zz" not in body and "does not exist" in body, body
    finally:
        stop_all(web)


def test_pg_stopped_and_restarted(pg_site, workdir):
    pg, web1, web2 = pg_site
    check_db_page([web1, web2], "db-b-postgres", "postgresql")
    apps_started = []
    pg.stop()
    try:
        wait_db_down([web1, web2], "db-b-postgres")
        # A web app started while its database is down serves /health and 503s, and sets its
        # tables up once the database is reachable.
        late = start_webapp(workdir, "pgweb-late", "late", pg.conninfo("site_late"))
        apps_started.append(late)
        st, _, body = late.get("/db")
        assert st == 503 and "db-late" not in body, body
    finally:
        pg.start()
    try:
        wait_db_up([web1, web2], "db-b-postgres")
        wait_db_up(apps_started, "db-late")
        check_session_shared(web1, web2, "b")
    finally:
        stop_all(*apps_started)


# ---- HAProxy in front: the contract the site health check relies on ----

HAPROXY = "/usr/sbin/haproxy"


def haproxy_status(sock_path):
    """{server name: status} of backend `web` from HAProxy's runtime API (`show stat`)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect(sock_path)
        s.sendall(b"show stat\n")
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
    finally:
        s.close()
    lines = data.decode().splitlines()
    cols = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(cols, ln.split(","))) for ln in lines[1:] if ln.startswith("web,")]
    return {r["svname"]: r["status"] for r in rows if r["svname"] not in ("BACKEND",)}


def test_haproxy_checks_the_db_page(sqlite_site, workdir):
    """HAProxy's own check (`option httpchk GET /db` + `http-check expect string KEYWORD`)
    marks both web apps UP while the database answers, DOWN when it cannot be opened, and UP
    again after: the database page is usable as the site's database check."""
    assert os.access(HAPROXY, os.X_OK), "haproxy missing: run scripts/deps.sh"
    web1, web2, db = sqlite_site
    d = tempfile.mkdtemp(prefix="wa-haproxy-", dir=workdir)
    sock = os.path.join(d, "stats.sock")
    port = free_port(v6=False)
    cfg = os.path.join(d, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
    stats socket {sock} level admin
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
backend web
    option httpchk GET /db
    http-check expect string db-a-sqlite
    default-server inter 100ms fall 2 rise 2
    server {web1.name} 127.0.0.1:{web1.port} check
    server {web2.name} 127.0.0.1:{web2.port} check
frontend fe
    bind 127.0.0.1:{port}
    default_backend web
""")
    hap = Server("haproxy", [HAPROXY, "-f", cfg, "-db"], port, d, ["127.0.0.1"]).start()
    names = {web1.name, web2.name}

    def status_is(want):
        try:
            st = haproxy_status(sock)
        except OSError:
            return False
        return st if set(st) == names and all(v == want for v in st.values()) else False
    try:
        wait_for(lambda: status_is("UP"), DEADLINE, "haproxy to see both web apps UP")
        served = {req(port, "GET", "/health")[1]["x-served-by"] for _ in range(6)}
        assert served == {"a/web1", "a/web2"}, served
        os.chmod(db, 0o000)
        try:
            wait_for(lambda: status_is("DOWN"), DEADLINE, "haproxy to mark both DOWN")
            assert req(port, "GET", "/session")[0] == 503
        finally:
            os.chmod(db, 0o644)
        wait_for(lambda: status_is("UP"), DEADLINE, "haproxy to see both UP again")
    finally:
        hap.stop()


# ---- two sites, each its own database, replicated by multisite-syncd ----

SYNCD = os.path.join(BUILD, "multisite-syncd")
REPLICATED = ["sessions", "guestbook", "counters"]  # never site_identity: it names each db


def sqlite_value(path, sql, *args):
    """One value read straight from a site's database (read-only; None when absent)."""
    import sqlite3
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute(sql, args).fetchone()
        return row[0] if row else None
    finally:
        con.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def two_site_dbs(request, workdir):
    """Two sites' databases: (backend, {site: db spec}, visits(site, session id) -> int|None).
    PostgreSQL: two databases on the module's server (one server stands in for two)."""
    sites = ("a", "b")
    if request.param == "sqlite":
        d = tempfile.mkdtemp(prefix="wa-sites-", dir=workdir)
        paths = {s: os.path.join(d, f"{s}.sqlite") for s in sites}

        def visits(site, sid):
            return sqlite_value(paths[site], "SELECT visits FROM sessions WHERE id = ?", sid)
        return "sqlite", {s: f"sqlite:{paths[s]}" for s in sites}, visits
    pg = request.getfixturevalue("pg_site")[0]
    names = {s: f"rep_{s}_{uuid.uuid4().hex[:8]}" for s in sites}
    specs = {s: pg.create_db(names[s]) for s in sites}

    def pg_visits(site, sid):
        assert webapp_id_ok(sid)  # inlined into SQL below: hex only
        out = pg.psql(f"SELECT visits FROM sessions WHERE id = '{sid}'", dbname=names[site])
        return int(out) if out.strip() else None
    return "postgresql", specs, pg_visits


def webapp_id_ok(s):
    return len(s) == 32 and all(c in "0123456789abcdef" for c in s)


def test_two_sites_replicated_by_syncd(workdir, two_site_dbs):
    """The point of keeping every piece of state in the site database: with multisite-syncd
    replicating the web app's tables, a session made at site A is served at site B (same id,
    the count goes on), and a guestbook entry made at B is listed at A. Each database keeps
    its own identity (site_identity is not replicated)."""
    backend, specs, visits = two_site_dbs
    assert os.access(SYNCD, os.X_OK), f"{SYNCD} is not built (run make)"
    d = tempfile.mkdtemp(prefix="wa-sync-", dir=workdir)
    key = os.path.join(d, "key")
    with open(key, "w") as f:
        f.write(subprocess.run([SYNCD, "keygen"], check=True, capture_output=True,
                               text=True).stdout)
    os.chmod(key, 0o600)
    sites = {"a": 1, "b": 2}
    ports = {s: free_port(v6=False) for s in sites}
    procs = []
    try:
        for s, sid in sites.items():
            o = "b" if s == "a" else "a"
            db = specs[s][len("sqlite:"):] if backend == "sqlite" else specs[s]
            conf = os.path.join(d, f"sync-{s}.yaml")
            with open(conf, "w") as f:
                f.write(f"sync:\n  site: {s}\n  site_id: {sid}\n  backend: {backend}\n"
                        f"  database: \"{db}\"\n  tables: [{', '.join(REPLICATED)}]\n"
                        f"  listen: 127.0.0.1:{ports[s]}\n  key_file: {key}\n"
                        f"  status_socket: {os.path.join(d, s + '.sock')}\n"
                        f"  peers:\n    - {{name: {o}, id: {sites[o]}, "
                        f"address: 127.0.0.1:{ports[o]}}}\n")
            # The web app makes its tables, then syncd installs capture on them.
            r = subprocess.run([WEBAPP, "--init", "--db", specs[s], "--site", s],
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            r = subprocess.run([SYNCD, "-c", conf, "init"], capture_output=True, text=True)
            assert r.returncode == 0, f"syncd init: {r.stderr}"
            procs.append(Server(f"syncd-{s}", [SYNCD, "-c", conf, "run"], ports[s], d,
                                ["127.0.0.1"]).start())
        web_a = start_webapp(workdir, "web-a", "a", specs["a"])
        procs.append(web_a)
        web_b = start_webapp(workdir, "web-b", "b", specs["b"])
        procs.append(web_b)

        st, h, body = web_a.get("/session")
        cookie, sid = session_cookie(h), json.loads(body)["id"]
        assert json.loads(web_a.get("/session", headers={"Cookie": cookie})[2])["visits"] == 2
        wait_for(lambda: visits("b", sid) == 2, 15, "the session to reach site b")
        s = json.loads(web_b.get("/session", headers={"Cookie": cookie})[2])
        assert s["id"] == sid and s["visits"] == 3 and s["served_by"]["site"] == "b", s
        wait_for(lambda: visits("a", sid) == 3, 15, "site b's visit to reach site a")

        tag = uuid.uuid4().hex
        st, _, _ = req(web_b.port, "POST", "/guestbook", body=json.dumps({"message": tag}),
                       headers={"Content-Type": "application/json"})
        assert st == 201
        wait_for(lambda: any(e["message"] == tag and e["site"] == "b" for e in
                             json.loads(web_a.get("/guestbook.json")[2])["entries"]),
                 15, "site b's guestbook entry at site a")
        # Identities stay per database.
        assert "database: db-a\n" in web_a.get("/db")[2]
        assert "database: db-b\n" in web_b.get("/db")[2]
    finally:
        errs = []
        for p in reversed(procs):
            rc = p.stop()
            if rc != 0:
                errs.append(f"{p.name} exited with {rc}: {p.log_tail()}")
        assert not errs, errs


def test_pg_restart_between_requests_costs_no_failed_request(pg_site):
    """PostgreSQL restarts while the web apps sit idle with pooled connections (now all dead):
    the very first request after it is back must succeed: the dead connection is noticed, the
    pool dropped, and the statement retried on a fresh connection."""
    pg, web1, web2 = pg_site
    for app in (web1, web2):
        for _ in range(3):
            assert app.get("/db")[0] == 200  # pooled connections exist
    pg.stop()
    pg.start()
    for app in (web1, web2):
        st, _, body = app.get("/db")
        assert st == 200 and "database: " in body, (app.name, st, body)
        st, _, body = app.get("/session")
        assert st == 200, (app.name, st, body)


CLI_ERRORS = [
    # (arguments, exit status, text expected on stderr)
    ([], 2, "usage:"),
    (["--listen", "127.0.0.1:1", "--db", "sqlite:/x"], 2, "usage:"),
    (["--listen", "x:y", "--db", "sqlite:/tmp/never.db", "--name", "w", "--site", "s"], 1,
     "--listen x:y: expected ADDR:PORT"),
    (["--listen", "127.0.0.1:1", "--db", "mysql://h/db", "--name", "w", "--site", "s"], 1,
     "bad database spec"),
    (["--listen", "127.0.0.1:1", "--db", "sqlite:/x", "--name", "w", "--site", "s",
      "--log-level", "loud"], 2, "--log-level loud"),
    (["--init", "--db", "sqlite:/nonexistent-dir/x.db", "--site", "s"], 1,
     "unable to open database file"),
    (["--init", "--db", "sqlite:/tmp/x.db", "--site", "s", "--db-identity", ""], 2,
     "--db-identity: expected 1..100"),
]


@pytest.mark.parametrize("args,rc,text", CLI_ERRORS, ids=[str(i) for i in range(len(CLI_ERRORS))])
def test_cli_errors(args, rc, text):
    r = subprocess.run([WEBAPP] + args, capture_output=True, text=True, timeout=10)
    assert r.returncode == rc and text in r.stderr, (r.returncode, r.stderr)
    assert not os.path.exists("/tmp/never.db")


def test_sigint_stops_cleanly_with_a_connection_open(workdir, tmp_path):
    """SIGINT (like SIGTERM, which every other test ends with) stops the web app with status
    0, also while a client holds an idle keep-alive connection."""
    app = start_webapp(workdir, "web-int", "s", f"sqlite:{tmp_path / 'int.db'}")
    c = http.client.HTTPConnection("127.0.0.1", app.port, timeout=5)
    try:
        c.request("GET", "/health")
        assert c.getresponse().read() == b"ok web-int\n"
        t = time.monotonic()
        app.signal(signal.SIGINT)
        app.proc.wait(10)
        assert app.proc.returncode == 0, app.log_tail()
        assert time.monotonic() - t < 5, "shutdown waited for the idle connection"
        assert "stopping" in app.log_tail()
    finally:
        c.close()
        app.stop()
