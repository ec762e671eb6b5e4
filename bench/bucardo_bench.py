"""bucardo_bench.py: Bucardo 5 (Debian package bucardo), the trigger-based multi-master
replicator for PostgreSQL, measured by bench/sync.sh beside multisite-syncd: same workload,
same kind of PostgreSQL 15 server (sync_harness.PgServer: initdb, PostgreSQL's defaults), two
databases site1 and site2 in it, so that issue 5's floors compare against figures measured in
the same run instead of remembered ones.

Bucardo keeps its configuration in a control database ("bucardo", made by `bucardo install`
in the same server) and runs as a daemon: an MCP, a controller and a kid per sync, and a VAC.
Triggers on each source table record the changed primary keys in a delta table and NOTIFY the
daemon; the kid then copies the rows with COPY, in one transaction on every database. The sync
here has both databases as sources (multi-master) with conflict strategy bucardo_latest.
Everything Bucardo writes (pid files, logs, conflict log, .pgpass) goes into one temporary
directory; its processes are stopped by the pids in its pid files.

If Bucardo cannot be installed or run, BucardoError says why; the bench prints it and exits
non-zero. It never falls back to remembered figures."""

import bisect
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import sync_harness as H

BUCARDO = "/usr/bin/bucardo"
DBS = ("site1", "site2")
SYNC = "bench"
PERL_LIB = "/usr/lib/postgresql/15/lib/plperl.so"
# Bucardo's loop sleeps (bucardo.schema defaults 0.2 to 0.5 s) bound how soon it notices a
# kick; the issue also quotes its lag with all of them cut to 50 ms.
FAST_SLEEPS = ("mcp_loop_sleep", "ctl_sleep", "kid_sleep", "kid_nodeltarows_sleep")
LAG_POLL_S = 0.01  # how often the lag pollers look at the receiving database
DRAIN_STALL_S = 180  # a lag run fails if Bucardo copies nothing for this long


class BucardoError(Exception):
    pass


def check_installed():
    """Fail early, with the remedy, when Bucardo or PL/Perl (its control database's
    functions are PL/PerlU) is missing."""
    missing = [p for p in (BUCARDO, PERL_LIB) if not os.path.exists(p)]
    if missing:
        raise BucardoError("missing %s: run scripts/deps.sh (bucardo, postgresql-plperl-15)"
                           % ", ".join(missing))


class Bucardo:
    """One Bucardo installation: its control database in pg, its state in a temp dir."""

    def __init__(self, pg, dbs=DBS):
        self.pg = pg
        self.dbs = dbs
        self.dir = tempfile.mkdtemp(prefix="ms-bucardo-")
        self.run_dir = os.path.join(self.dir, "run")
        self.log_dir = os.path.join(self.dir, "log")
        home = os.path.join(self.dir, "home")
        for d in (self.run_dir, self.log_dir, home):
            os.mkdir(d)
        # An rc file of our own, passed on every call: /etc/bucardorc (Debian's, port 5432)
        # and ~/.bucardorc are never read.
        self.rc = os.path.join(self.dir, "bucardorc")
        with open(self.rc, "w") as f:
            f.write("dbhost = 127.0.0.1\ndbport = %d\ndbname = bucardo\ndbuser = bucardo\n"
                    "piddir = %s\nlogdest = %s\n" % (pg.port, self.run_dir, self.log_dir))
        # `bucardo install` appends the new role's password to $HOME/.pgpass and finds psql
        # through PGBINDIR. The server trusts loopback, so the password is never needed.
        self.env = dict(os.environ, HOME=home, PGBINDIR=H.PGBIN)
        self.pids = set()

    def cli(self, *args, timeout=120):
        r = subprocess.run([BUCARDO, "--bucardorc=" + self.rc] + list(args), cwd=self.dir,
                           env=self.env, capture_output=True, text=True, timeout=timeout)
        out = (r.stdout + r.stderr).strip()
        # `bucardo install` reports some failures with status 0 and a message
        if r.returncode != 0 or "FAILED" in out:
            raise BucardoError("bucardo %s failed (status %d): %s\n%s"
                               % (" ".join(args), r.returncode, out[-2000:], self.log_tail()))
        return r.stdout

    def install(self, fast_sleeps=False):
        self.cli("install", "--batch", "--dbuser", "postgres", "--dbname", "postgres")
        settings = ["log_conflict_file=" + os.path.join(self.log_dir, "conflict.log"),
                    "warning_file=" + os.path.join(self.log_dir, "warning.log"),
                    "reason_file=" + os.path.join(self.log_dir, "restart.reason")]
        if fast_sleeps:
            settings += ["%s=0.05" % k for k in FAST_SLEEPS]
        self.cli("set", *settings)

    def add_sync(self, table="public.items"):
        """Both databases as sources of one sync (multi-master), conflict strategy
        bucardo_latest (the default). Adding the sync installs the triggers."""
        for i, db in enumerate(self.dbs):
            self.cli("add", "db", "db%d" % i, "dbname=" + db, "host=127.0.0.1",
                     "port=%d" % self.pg.port, "user=bucardo")
        self.cli("add", "table", table, "db=db0", "relgroup=" + SYNC)
        self.cli("add", "dbgroup", SYNC, "db0:source", "db1:source")
        self.cli("add", "sync", SYNC, "relgroup=" + SYNC, "dbs=" + SYNC,
                 "conflict_strategy=bucardo_latest")
        for db in self.dbs:
            n = int(self.pg.psql(db, "SELECT count(*) FROM pg_trigger WHERE tgrelid = "
                                 "'%s'::regclass AND tgname LIKE 'bucardo%%'" % table))
            if n < 2:
                raise BucardoError("no Bucardo triggers on %s in %s after add sync" % (table, db))

    def _pidfiles(self):
        pids = set()
        for name in os.listdir(self.run_dir):
            if name.endswith(".pid"):
                try:
                    with open(os.path.join(self.run_dir, name)) as f:
                        pids.add(int(f.readline().strip()))
                except (OSError, ValueError):
                    pass
        return pids

    def runs(self):
        """Finished sync runs: (inserts, deletes, conflicts, seconds), oldest first."""
        out = self.pg.psql("bucardo", "SELECT inserts, deletes, conflicts, extract(epoch FROM "
                           "ended - started) FROM bucardo.syncrun WHERE ended IS NOT NULL "
                           "ORDER BY started")
        return [tuple(float(x) for x in line.split("|")) for line in out.split()]

    def start(self):
        """Start the daemon and wait until its kid has finished the run it does at start,
        so that a measurement begins with Bucardo idle and ready."""
        self.cli("start")
        try:
            H.wait_for(self._alive_mcp, 30, "Bucardo's MCP", 0.1)
            self.pids |= self._pidfiles()
            H.wait_for(lambda: self.check_running() or self.runs(), 60,
                       "Bucardo's first sync run", 0.1)
        except AssertionError as e:
            raise BucardoError("Bucardo did not start (%s):\n%s" % (e, self.log_tail()))
        self.pids |= self._pidfiles()

    def _alive_mcp(self):
        path = os.path.join(self.run_dir, "bucardo.mcp.pid")
        try:
            with open(path) as f:
                return _alive(int(f.readline().strip()))
        except (OSError, ValueError):
            return False

    def check_running(self):
        if not self._alive_mcp():
            raise BucardoError("Bucardo's MCP is gone:\n" + self.log_tail())

    def stop(self):
        """`bucardo stop` (a stop file its processes look for in every loop), then the pids
        we saw, by pid: SIGTERM, then SIGKILL, to Bucardo processes only."""
        self.pids |= self._pidfiles()
        try:
            self.cli("stop", timeout=30)
        except (BucardoError, subprocess.TimeoutExpired):
            pass
        deadline = time.monotonic() + 15
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            left = [p for p in self.pids if _alive(p) and _is_bucardo(p)]
            if not left:
                break
            if sig is not None:
                for p in left:
                    try:
                        os.kill(p, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(_alive(p) for p in left):
                time.sleep(0.1)

    def log_tail(self, n=25):
        try:
            with open(os.path.join(self.log_dir, "log.bucardo"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no Bucardo log)"

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid):
    """Running (not a zombie waiting for init to reap it)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _is_bucardo(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().startswith(b"Bucardo")
    except OSError:
        return False


class Rig:
    """A PostgreSQL server with site1 and site2 (schema applied to both, extra to site1
    only) and Bucardo installed with the sync; stopped and removed on exit."""

    def __init__(self, schema, extra_site1="", fast_sleeps=False):
        check_installed()
        self.pg = H.PgServer(None)
        self.bc = None
        try:
            for db in DBS:
                self.pg.create_db(db)
                self.pg.psql(db, schema)
            if extra_site1:
                self.pg.psql(DBS[0], extra_site1)
            self.bc = Bucardo(self.pg)
            self.bc.install(fast_sleeps)
            self.bc.add_sync()
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bc:
            self.bc.stop()
        self.pg.stop()
        if self.bc:
            self.bc.remove()

    def count(self, db):
        return int(self.pg.psql(db, "SELECT count(*) FROM items"))


def _connect(pg, db):
    import psycopg2
    con = psycopg2.connect("host=127.0.0.1 port=%d user=postgres dbname=%s" % (pg.port, db))
    con.autocommit = True
    return con


def bench_apply(n, schema, bulk_sql):
    """Apply rate: n rows bulk-inserted at site1 in one transaction (bulk_sql, the statement
    the multisite figure uses) while Bucardo runs idle; then
      e2e: from the commit at site1 until all n rows are visible at site2 (NOTIFY, the MCP
           and the controller waking the kid, the kid's run), polled every 50 ms as ours;
      run: the kid's sync run as bucardo.syncrun records it: started to ended of its one
           transaction over both databases (reading the deltas, COPY out of site1 into site2,
           commit), i.e. Bucardo's own time moving the rows, without the wake-up.
    Returns (rows/s over run, rows/s e2e)."""
    with Rig(schema) as r:
        r.bc.start()
        runs0 = len(r.bc.runs())
        r.pg.psql(DBS[0], bulk_sql(n, 0))
        t0 = time.monotonic()
        con = _connect(r.pg, DBS[1])
        cur = con.cursor()

        def arrived():
            r.bc.check_running()
            cur.execute("SELECT 1 FROM items WHERE id = %s", (n - 1,))
            return cur.fetchone() is not None
        H.wait_for(arrived, 600, "Bucardo to copy %d rows" % n, 0.05)
        wall = time.monotonic() - t0
        con.close()
        if r.count(DBS[1]) != n:  # the kid commits site2 once: all rows or none
            raise BucardoError("site2 has %d rows, not %d" % (r.count(DBS[1]), n))
        H.wait_for(lambda: sum(x[0] for x in r.bc.runs()[runs0:]) >= n, 30,
                   "Bucardo's syncrun record")
        run_s = sum(x[3] for x in r.bc.runs()[runs0:] if x[0] > 0)
        return n / run_s, n / wall


def capture_setup(pg, db, table, schema):
    """Bucardo on an existing server, for the capture figure: its triggers on `table` (made by
    the caller in db), synced to a second database made here. The daemon is not started: like
    multisite's agent in that figure, only the triggers count. Returns the Bucardo; the caller
    stop()s and remove()s it."""
    check_installed()
    peer = "bucardo_peer"
    pg.create_db(peer)
    pg.psql(peer, schema.replace("TABLE items", "TABLE " + table, 1))
    bc = Bucardo(pg, (db, peer))
    try:
        bc.install()
        bc.add_sync("public." + table)
    except BaseException:
        bc.remove()
        raise
    return bc


def insert_rounds(port, db, tables, n, rounds=24):
    """Single-row autocommit inserts through psql, n per round into each table in turn. Each
    round starts at a different table (so no table always follows another), and returns each
    table's seconds per round: compare tables round by round (paired_ratio), so that the
    machine's drift between rounds (a shared disk's fsync time, mostly) hits both sides of
    each comparison alike."""
    times = {t: [] for t in tables}
    for rnd in range(rounds):
        for k in range(len(tables)):
            tbl = tables[(rnd + k) % len(tables)]
            stmts = "".join("INSERT INTO %s VALUES(%d, '%s', 7, 0.5, '%s', '\\x7a7a'::bytea);\n"
                            % (tbl, i, "x" * 40, "y" * 40) for i in range(rnd * n, (rnd + 1) * n))
            t0 = time.monotonic()
            subprocess.run([H.PGBIN + "/psql", "-h", "127.0.0.1", "-p", str(port), "-U",
                            "postgres", "-d", db, "-q", "-v", "ON_ERROR_STOP=1"], input=stmts,
                           check=True, stdout=subprocess.DEVNULL, text=True)
            times[tbl].append(time.monotonic() - t0)
    return times


def paired_ratio(times, table, base):
    """The median over rounds of table's time over base's time in the same round, with the
    lowest and highest of those ratios."""
    r = sorted(a / b for a, b in zip(times[table], times[base]))
    return r[len(r) // 2], r[0], r[-1]


class _Poller(threading.Thread):
    """Watches the receiving database for the rows the writers at the other one updated and
    records when each row's new value appeared. Only rows with a value not seen yet are read,
    by primary key, so that the watching costs the machine little."""

    def __init__(self, pg, db, stop):
        super().__init__(daemon=True)
        self.con = _connect(pg, db)
        self.stop_ev = stop
        self.lock = threading.Lock()
        self.pending = {}  # id -> newest c written at the other database, not seen here yet
        self.seen = {}  # id -> ([c values], [time first seen]); c grows per id
        self.last = {}  # id -> the last c seen
        self.error = None

    def wrote(self, i, c):
        with self.lock:
            if c > self.pending.get(i, 0.0):
                self.pending[i] = c

    def backlog(self):
        with self.lock:
            return len(self.pending)

    def run(self):
        try:
            cur = self.con.cursor()
            while not self.stop_ev.is_set():
                with self.lock:
                    ids = list(self.pending)
                if ids:
                    # only the rows whose value changed since the last look come back: the
                    # writers share this process (and its GIL) with the pollers
                    last = [self.last.get(i, 0.0) for i in ids]
                    cur.execute("SELECT p.id, i.c FROM unnest(%s::bigint[], %s::float8[]) AS "
                                "p(id, seen) JOIN items i ON i.id = p.id WHERE i.c > p.seen",
                                (ids, last))
                    now = time.time()
                    rows = cur.fetchall()
                    for i, c in rows:
                        cs, ts = self.seen.setdefault(i, ([], []))
                        cs.append(c)
                        ts.append(now)
                        self.last[i] = c
                    with self.lock:
                        for i, c in rows:
                            if self.pending.get(i, float("inf")) <= c:
                                del self.pending[i]
                time.sleep(LAG_POLL_S)
        except Exception as e:  # reported by the caller, which checks error
            self.error = e
        finally:
            self.con.close()

    def visible_at(self, i, c):
        """When the write (i, c) or a later one to row i became visible; None if not yet."""
        cs, ts = self.seen.get(i, ((), ()))
        k = bisect.bisect_left(cs, c)
        return ts[k] if k < len(cs) else None


def _stuck(r, pollers):
    """What the two databases and Bucardo's bookkeeping hold for rows still not copied."""
    out = []
    for k, db in enumerate(DBS):
        other = DBS[1 - k]
        with pollers[db].lock:
            ids = sorted(pollers[db].pending.items())[:5]
        for i, c in ids:
            out.append("row %d written at %s with c=%r: %s has %s; %s has %s; deltas at %s "
                       "(txntime, tracked): %s" % (
                           i, db, c, db, r.pg.psql(db, "SELECT c FROM items WHERE id = %d" % i)
                           .strip(), other, r.pg.psql(other, "SELECT c FROM items WHERE id = %d"
                                                      % i).strip(), db,
                           r.pg.psql(db, "SELECT d.txntime, EXISTS (SELECT 1 FROM "
                                     "bucardo.track_public_items t WHERE t.txntime = d.txntime) "
                                     "FROM bucardo.delta_public_items d WHERE d.id = %d ORDER BY 1 "
                                     "DESC LIMIT 3" % i).strip().replace("\n", "; ")))
    return "\n".join(out)


def bench_lag(seconds, rate, schema, bulk_sql, fast_sleeps=False, nconn=8):
    """Lag at `rate` updates/s at each of the two databases (the multisite lag workload: 5,000
    rows per site, each site updating its own rows, spread over nconn autocommit connections,
    each with its own share of the rows).
    Each update writes the wall-clock time into column c; a poller at the other database reads
    the updated rows by key every LAG_POLL_S (which adds up to that much to a sample) and notes
    when it sees the value. A sample is from the return of the update's commit to the first
    poll that sees it or a later value of the row (Bucardo copies a row's latest value only).
    Returns (p99 ms, p50 ms, achieved updates/s per site, seconds Bucardo took after the
    writes stopped to copy the rest)."""
    with Rig(schema, fast_sleeps=fast_sleeps) as r:
        base = {DBS[0]: 100000, DBS[1]: 200000}
        for db in DBS:
            r.pg.psql(db, bulk_sql(5000, base[db]))
        r.bc.start()
        H.wait_for(lambda: r.count(DBS[0]) == r.count(DBS[1]) == 10000, 120,
                   "Bucardo's initial copy")
        stop = threading.Event()
        stop_poll = threading.Event()
        # pollers[db] watches, at the other database, the rows the writers at db update
        pollers = {DBS[0]: _Poller(r.pg, DBS[1], stop_poll),
                   DBS[1]: _Poller(r.pg, DBS[0], stop_poll)}
        writes = {db: [] for db in DBS}
        errors = []

        def writer(db, k):
            import random
            rnd = random.Random(k)
            out = []
            try:
                con = _connect(r.pg, db)
                cur = con.cursor()
                t_next = time.monotonic()
                i = 0
                while not stop.is_set():
                    # each connection its own rows (id = its number mod nconn): a row's
                    # values then commit in the order of their c
                    row = base[db] + rnd.randrange(5000 // nconn) * nconn + k % nconn
                    c = time.time()
                    pollers[db].wrote(row, c)
                    cur.execute("UPDATE items SET a = %s, b = %s, c = %s WHERE id = %s",
                                ("w%d" % i, i, c, row))
                    out.append((row, c, time.time()))
                    i += 1
                    t_next += nconn / rate
                    dt = t_next - time.monotonic()
                    if dt > 0:
                        time.sleep(dt)
                con.close()
            except Exception as e:
                errors.append(e)
            writes[db].extend(out)  # list.extend is atomic under the GIL

        for p in pollers.values():
            p.start()
        ts = [threading.Thread(target=writer, args=(db, i * nconn + j))
              for i, db in enumerate(DBS) for j in range(nconn)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in ts:
            t.join()
        elapsed = time.monotonic() - t0
        if errors:
            raise BucardoError("lag writer failed: %r" % errors[0])
        # Wait for Bucardo to drain what it has not copied yet, however long that takes while
        # it makes progress: falling behind is its figure (the lag samples show it), not a
        # failure of the bench. No progress for DRAIN_STALL_S is one.
        t_stop = time.monotonic()
        left, t_progress = None, t_stop
        while left != 0:
            r.bc.check_running()
            for p in pollers.values():
                if p.error:
                    raise BucardoError("lag poller failed: %r" % p.error)
            n = sum(p.backlog() for p in pollers.values())
            if n != left:
                left, t_progress = n, time.monotonic()
            elif time.monotonic() - t_progress > DRAIN_STALL_S:
                raise BucardoError("%d rows updated but not at the other database, no progress "
                                   "for %d s:\n%s\n%s" % (n, DRAIN_STALL_S, r.bc.log_tail(),
                                                          _stuck(r, pollers)))
            time.sleep(0.1)
        drain = time.monotonic() - t_stop
        stop_poll.set()
        for p in pollers.values():
            p.join()
        lags = sorted(max(pollers[db].visible_at(row, c) - t_commit, 0.0)
                      for db in DBS for row, c, t_commit in writes[db])
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000
        p50 = lags[len(lags) // 2] * 1000
        achieved = min(len(writes[db]) for db in DBS) / elapsed
        return p99, p50, achieved, drain


# The conflict of issue 5's text: the same row changed at both databases while they are apart,
# in different columns, site 2 first; then site 2 changes another row. Steps: (database index,
# statement), run in this order with distinct transaction times.
CONFLICT_STEPS = ((1, "UPDATE items SET b = 42 WHERE id = 1"),
                  (0, "UPDATE items SET a = 'changed at site 1' WHERE id = 1"),
                  (1, "UPDATE items SET d = 'changed at site 2' WHERE id = 2"))


def _conflict_steps(run_sql):
    for k, sql in CONFLICT_STEPS:
        run_sql(k, sql)
        time.sleep(0.05)


def conflict_bucardo(schema, bulk_sql):
    """The conflict with Bucardo stopped while the changes are made (the databases apart),
    then started. bucardo_latest makes the database with the newest change anywhere in the
    table win every conflicting row whole. Returns row 1's (a, b) at site1 and at site2."""
    with Rig(schema) as r:
        r.pg.psql(DBS[0], bulk_sql(2, 1))
        r.bc.start()
        H.wait_for(lambda: r.count(DBS[1]) == 2, 60, "Bucardo's initial copy")
        r.bc.stop()
        _conflict_steps(lambda k, sql: r.pg.psql(DBS[k], sql))
        r.bc.start()

        def row(db, i, cols):
            return tuple(r.pg.psql(db, "SELECT %s FROM items WHERE id = %d" % (cols, i))
                         .strip().split("|"))
        H.wait_for(lambda: row(DBS[0], 2, "d") == ("changed at site 2",) and
                   row(DBS[0], 1, "a, b") == row(DBS[1], 1, "a, b"), 60,
                   "Bucardo to settle the conflict")
        return row(DBS[0], 1, "a, b"), row(DBS[1], 1, "a, b")


def conflict_multisite(cluster, bulk_sql):
    """The same conflict with multisite-syncd: agents stopped while the changes are made.
    cluster is a fresh two-site PostgreSQL sync_harness.Cluster. Returns row 1's (a, b) at
    site 1 and at site 2."""
    c = cluster
    try:
        c.init()
        c.sites[0].script(bulk_sql(2, 1))
        c.start()
        c.wait_synced(60)
        for s in c.sites:
            s.stop()
        _conflict_steps(lambda k, sql: c.sites[k].script(sql))
        c.start()
        c.wait_synced(60)
        return tuple(tuple(str(v) for v in s.sql("SELECT a, b FROM items WHERE id = 1")[0])
                     for s in c.sites)
    finally:
        c.stop()
