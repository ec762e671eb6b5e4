"""sync_harness.py: start multisite-syncd sites on loopback for the integration tests and
bench/sync.sh. Each site is a real agent with a real database (SQLite file or a PostgreSQL
server the harness starts with initdb/pg_ctl). Waits poll with deadlines, never bare sleeps.
Processes are stopped by the pids we hold."""

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import threading
import time

BUILD = os.environ.get("MS_BUILD", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
SYNCD = os.path.join(BUILD, "multisite-syncd")
PGBIN = "/usr/lib/postgresql/15/bin"


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


_given = set()  # ports free_port() returned in this process


def free_port():
    """A TCP port on 127.0.0.1 nobody listens on, from BELOW the kernel's ephemeral range.
    A port from the ephemeral range (bind to port 0) is free only until the next outgoing
    connection anywhere on the machine takes it as its local port, and an agent binds its
    port long after it is picked (and again after every kill -9): on a machine busy with other
    tests that made an agent fail to start now and then ("Address already in use"). Ports
    below the range are only ever taken by an explicit bind, which the probe here sees."""
    lo = 10000
    hi = _ephemeral_range()[0] - 1
    if hi - lo < 1000:
        lo, hi = 1024, hi
    rnd = random.Random()
    for _ in range(500):
        p = rnd.randint(lo, hi)
        if p in _given:  # picked before and maybe not bound yet (an agent not started yet)
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            _given.add(p)
            return p
        except OSError:
            continue
        finally:
            s.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for(cond, timeout=20.0, what="condition", step=0.02):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(step)
    raise AssertionError("timed out after %.1fs waiting for %s (last: %r)" % (timeout, what, last))


ITEMS_SQL = ("CREATE TABLE items(id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c REAL, d TEXT, "
             "e BLOB)")


class Proxy:
    """A TCP forwarder that can cut every connection through it (a network partition)."""

    def __init__(self, target_port):
        self.target = target_port
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(32)
        self.up = True
        self.conns = []
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if not self.up:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.up = False
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.conns = []

    def heal(self):
        self.up = True

    def close(self):
        self.stopped = True
        self.cut()
        self.sock.close()


class PgServer:
    """A throwaway PostgreSQL 15 cluster owned by the postgres user, on a free port."""

    def __init__(self, base):
        # pytest's temporary directories are private to root; the server runs as postgres.
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="ms-sync-pg-")
        self.port = free_port()
        os.chmod(self.dir, 0o755)
        subprocess.run(["chown", "-R", "postgres:postgres", self.dir], check=True)
        self._as_pg([PGBIN + "/initdb", "-D", self.dir + "/data", "-U", "postgres", "-A", "trust",
                     "--no-sync"])
        self.proc = subprocess.Popen(
            self._pg_cmd([PGBIN + "/postgres", "-D", self.dir + "/data", "-p", str(self.port),
                          "-k", self.dir, "-c", "listen_addresses=127.0.0.1",
                          "-c", "fsync=off" if os.environ.get("MS_PG_FSYNC_OFF") else
                          "fsync=on"]),
            stdout=open(self.dir + "/log", "w"), stderr=subprocess.STDOUT)
        wait_for(self._ready, 30, "postgres to accept connections", 0.1)

    def _pg_cmd(self, cmd):
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] + cmd

    def _as_pg(self, cmd):
        subprocess.run(self._pg_cmd(cmd), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def _ready(self):
        r = subprocess.run([PGBIN + "/pg_isready", "-h", "127.0.0.1", "-p", str(self.port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def create_db(self, name):
        self.psql("postgres", "CREATE DATABASE %s" % name)
        return "host=127.0.0.1 port=%d user=postgres dbname=%s" % (self.port, name)

    def psql(self, db, sql):
        r = subprocess.run([PGBIN + "/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                            "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("psql: " + r.stderr)
        return r.stdout

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


class Site:
    def __init__(self, cluster, sid, backend="sqlite", conninfo=None, extra=""):
        self.c = cluster
        self.id = sid
        self.name = "s%d" % sid
        self.port = free_port()
        self.backend = backend
        self.db = conninfo if backend == "postgresql" else os.path.join(cluster.dir,
                                                                       "db%d.sqlite" % sid)
        self.conf = os.path.join(cluster.dir, "s%d.yaml" % sid)
        self.sock = os.path.join(cluster.dir, "s%d.sock" % sid)
        self.log = os.path.join(cluster.dir, "s%d.log" % sid)
        self.extra = extra
        self.proc = None
        self.proxy = Proxy(self.port) if cluster.proxies else None

    def write_conf(self):
        peers = "".join(
            "    - {name: %s, id: %d, address: 127.0.0.1:%d}\n" %
            (p.name, p.id, p.proxy.port if p.proxy else p.port)
            for p in self.c.sites if p is not self)
        with open(self.conf, "w") as f:
            f.write("sync:\n  site: %s\n  site_id: %d\n  backend: %s\n  database: \"%s\"\n"
                    "  tables: [%s]\n  listen: 127.0.0.1:%d\n  key_file: %s\n"
                    "  status_socket: %s\n%s  peers:\n%s" %
                    (self.name, self.id, self.backend, self.db, ", ".join(self.c.tables),
                     self.port, self.c.key, self.sock, self.extra, peers))

    def run(self, *args, check=True):
        r = subprocess.run([SYNCD, "-c", self.conf] + list(args), capture_output=True, text=True)
        if check and r.returncode != 0:
            raise AssertionError("multisite-syncd %s failed: %s" % (args, r.stderr))
        return r

    def start(self, env=None):
        e = dict(os.environ)
        e.update(env or {})
        # A killed agent leaves its status socket behind: without this the wait below would
        # end at once, and status calls would find no agent and read the database instead.
        try:
            os.unlink(self.sock)
        except FileNotFoundError:
            pass
        self.proc = subprocess.Popen([SYNCD, "-c", self.conf], stdout=open(self.log, "a"),
                                     stderr=subprocess.STDOUT, env=e)
        wait_for(lambda: os.path.exists(self.sock) or self.proc.poll() is not None, 30,
                 "agent %s to start" % self.name)
        assert self.proc.poll() is None, "agent %s exited: %s" % (self.name, self.logtext())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def logtext(self):
        with open(self.log) as f:
            return f.read()

    def status(self):
        r = self.run("status", "--json")
        return json.loads(r.stdout)

    # SQLite access (tests write through the sqlite3 module: an ordinary application)
    def sql(self, q, args=()):
        if self.backend == "postgresql":
            return self.c.pg_query(self, q, args)
        con = sqlite3.connect(self.db, timeout=30)
        try:
            cur = con.execute(q, args)
            rows = cur.fetchall()
            con.commit()
            return rows
        finally:
            con.close()

    def script(self, q):
        if self.backend == "postgresql":
            return self.c.pg.psql(self.db.split("dbname=")[1], q)
        con = sqlite3.connect(self.db, timeout=30)
        try:
            con.executescript(q)
        finally:
            con.close()


class Cluster:
    def __init__(self, tmpdir, n, tables=("items",), schema=ITEMS_SQL, extra="", proxies=False,
                 backend="sqlite"):
        self.dir = str(tmpdir)
        self.tables = list(tables)
        self.proxies = proxies
        self.key = os.path.join(self.dir, "sync.key")
        self.pg = None
        with open(self.key, "w") as f:
            f.write(subprocess.run([SYNCD, "keygen"], capture_output=True, text=True,
                                   check=True).stdout)
        os.chmod(self.key, 0o600)
        self.sites = []
        if backend == "postgresql":
            self.pg = PgServer(self.dir)
        for i in range(1, n + 1):
            conninfo = self.pg.create_db("site%d" % i) if self.pg else None
            self.sites.append(Site(self, i, backend, conninfo, extra))
        for s in self.sites:
            s.write_conf()
            if schema:
                s.script(schema)

    def pg_query(self, site, q, args):
        import psycopg2
        con = psycopg2.connect(site.db)
        try:
            cur = con.cursor()
            cur.execute(q.replace("?", "%s"), args)
            rows = cur.fetchall() if cur.description else []
            con.commit()
            return [tuple(r) for r in rows]
        finally:
            con.close()

    def init(self):
        for s in self.sites:
            s.run("init")

    def start(self):
        for s in self.sites:
            s.start()

    def stop(self):
        for s in self.sites:
            s.kill9() if s.proc else None
            if s.proxy:
                s.proxy.close()
        if self.pg:
            self.pg.stop()

    def synced(self, table="items"):
        """All agents up, no backlog anywhere and every site's rows the same."""
        for s in self.sites:
            st = s.status()
            if st["agent"] != "running":
                return False
            for p in st["peers"]:
                if p["backlog"] != 0 or p["out"] != "ready":
                    return False
        first = self.dump(self.sites[0], table)
        return all(self.dump(s, table) == first for s in self.sites[1:])

    def wait_synced(self, timeout=30, table="items"):
        wait_for(lambda: self.synced(table), timeout, "all sites to converge")

    def progress(self):
        """What changes while the sites are still exchanging changes: per site and peer the
        stream states, positions, backlog and applied counts (None for a status that failed)."""
        sig = []
        for s in self.sites:
            try:
                st = s.status()
            except (AssertionError, ValueError):
                sig.append(None)
                continue
            sig.append((st["agent"], tuple((p["out"], p["in"], p["acked"], p["backlog"],
                                            p["applied_seq"], p["applied"])
                                           for p in st["peers"])))
        return tuple(sig)

    def wait_converged(self, stall=45.0, cap=600.0, table="items"):
        """Wait until synced(), for as long as the sites make progress: fail when nothing
        changed for `stall` seconds (longer than an agent's 30 s dead-connection timeout), or
        after `cap` seconds in all. A slow machine only makes this slower; sites that stopped
        exchanging changes while their rows still differ fail it."""
        start = last_change = time.monotonic()
        last = None
        while True:
            try:
                if self.synced(table):
                    return time.monotonic() - start
            except (AssertionError, ValueError):
                pass  # a status that failed: not synced yet; the stall deadline still runs
            now = time.monotonic()
            sig = self.progress()
            if sig != last:
                last, last_change = sig, now
            if now - last_change > stall or now - start > cap:
                raise AssertionError(
                    "sites did not converge: no progress for %.1f s (%.1f s in all); last "
                    "state per site (agent, per peer: out, in, acked, backlog, applied_seq, "
                    "applied): %r" % (now - last_change, now - start, last))
            time.sleep(0.1)

    def dump(self, site, table="items"):
        return site.sql("SELECT * FROM %s ORDER BY 1" % table)


def cross_column_updates_site1_first(c):
    """Row 1 changed at both sites while they are apart: site 1 sets a and b, then site 2 sets
    a and d. Site 1's entry (carrying d's version that site 2 overwrote) reaches site 2 before
    site 2's change reaches site 1; then both heal and sync. The cluster needs proxies and is
    started here; the caller stops it. Returns the two sites."""
    c.init()
    a, b = c.sites
    a.sql("INSERT INTO items VALUES(1, 'orig', 0, 0.0, 'd0', NULL)")
    c.start()
    c.wait_synced()
    a.proxy.cut()  # site 2 cannot push to site 1
    b.proxy.cut()
    a.sql("UPDATE items SET a = 'from-a', b = 1 WHERE id = 1")
    time.sleep(0.01)
    b.sql("UPDATE items SET a = 'from-b', d = 'db' WHERE id = 1")
    n = b.sql("SELECT applied FROM rep_inbound WHERE origin = 1")[0][0]
    b.proxy.heal()  # site 1's change reaches site 2 first
    wait_for(lambda: b.sql("SELECT applied FROM rep_inbound WHERE origin = 1")[0][0] > n,
             20, "site 2 to apply site 1's change")
    a.proxy.heal()
    c.wait_synced()
    return a, b
