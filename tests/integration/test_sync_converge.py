"""Convergence property test: 2-4 sites, seeded random inserts, updates and deletes at every
site at once, random kill -9 and restart of agents, cut connections; after healing, all
databases must be identical, no acknowledged write may be lost to an older one, and nothing
may be applied twice (the agents run with MS_SYNC_AUDIT=1 and record every change they apply,
in the apply's transaction; a broken resume cursor plus a broken skip of entries at or below
it shows here, while the databases still converge). The seed is printed on failure; rerun one
with MS_SYNC_SEED=N.

A failure reports what is needed to understand it: the schedule of kills and cuts, each
site's delivery state, and for every row concerned each site's row, change-table entry,
unfolded log, conflict records and the writes made to it, plus the agents' logs; the report,
the databases and the logs are kept in MS_SYNC_FAIL_DIR (default
/tmp/ms-sync-converge-failures). MS_SYNC_CONVERGE_DEBUG=1 makes the agents log every merge
decision (slower: it changes the timing).

make check runs a few short runs; bench/sync.sh runs 200 (MS_SYNC_CONVERGE_RUNS=200)."""

import json
import os
import random
import shutil
import sqlite3
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sync_harness import Cluster  # noqa: E402

COLS = ["a", "b", "c", "d", "e"]
NROWS = 40


def version_after_write(con, rid):
    """(cl, v_a, s_a, ...) of row rid as of this transaction: the change table as folded so
    far plus the capture log entries not folded yet, stamped as the agent's fold will stamp
    them: h = max(ms << 16, rep_meta.hlc + 1, previous h + 1) in log order (items is the only
    table). The fold runs before every apply, so rep_meta.hlc cannot move before it does; a
    fold that stamped otherwise shows here as a write "lost"."""
    site, h = con.execute("SELECT site, hlc FROM rep_meta").fetchone()
    row = con.execute("SELECT cl, %s FROM rep_c_items WHERE id = ?" %
                      ", ".join("v_%s, s_%s" % (x, x) for x in COLS), (rid,)).fetchone()
    row = list(row) if row else [0] + [None] * (2 * len(COLS))
    found = row[0] != 0
    for lid, op, mask, ms in con.execute("SELECT id, op, mask, ms FROM rep_l_items "
                                         "ORDER BY seq"):
        h = max(ms << 16, h + 1)
        if lid != rid:
            continue
        if op == 3:
            row[0] = row[0] + 1 if row[0] % 2 == 1 else (row[0] if found else 2)
        else:
            if op == 1 or not found:
                row[0] = row[0] + 1 if row[0] % 2 == 0 else row[0]
            for i in range(len(COLS)):
                if mask >> i & 1:
                    row[1 + 2 * i], row[2 + 2 * i] = h, site
        found = True
    return row


def run_once(tmp_path, seed, nsites, duration):
    rnd = random.Random(seed)
    batch_rows = rnd.choice([3, 50, 2000])
    extra = "  batch_rows: %d\n" % batch_rows
    if os.environ.get("MS_SYNC_CONVERGE_DEBUG"):  # the agents log every merge decision
        extra += "  log_level: debug\n"
    c = Cluster(tmp_path, nsites, proxies=True, extra=extra)
    c.init()
    c.start()
    writes = []  # (site, id, col, value, hlc, site_of_version, cl) of every committed write
    wlock = threading.Lock()
    stop = threading.Event()
    errors = []
    t0 = time.monotonic()
    events = []  # (seconds since start, what): the kills, restarts, cuts and heals

    def ev(what):
        events.append((round(time.monotonic() - t0, 3), what))

    def writer(site, wseed):
        r = random.Random(wseed)
        con = sqlite3.connect(site.db, timeout=30, isolation_level=None)
        # The workload (WAL, synchronous=NORMAL): the driver's default, FULL, fsyncs
        # every commit, and on a shared disk a stalled fsync holds the write lock for seconds.
        con.execute("PRAGMA synchronous=NORMAL")
        n = 0
        while not stop.is_set():
            rid = r.randrange(NROWS)
            op = r.random()
            try:
                con.execute("BEGIN IMMEDIATE")
                if op < 0.3:
                    vals = [r.choice(["x", "y", "z%d" % n]), r.randrange(100), r.random(),
                            None, bytes([r.randrange(256)])]
                    con.execute("INSERT OR IGNORE INTO items VALUES(?,?,?,?,?,?)",
                                [rid] + vals)
                    changed = list(zip(COLS, vals))
                elif op < 0.85:
                    cols = r.sample(COLS, r.randrange(1, 3))
                    vals = [("%s-%d-%d" % (site.name, n, r.randrange(1000))) if col in "ad"
                            else r.randrange(10**6) for col in cols]
                    con.execute("UPDATE items SET %s WHERE id = ?" %
                                ", ".join("%s = ?" % col for col in cols), vals + [rid])
                    changed = list(zip(cols, vals))
                else:
                    con.execute("DELETE FROM items WHERE id = ?", (rid,))
                    changed = []
                row = version_after_write(con, rid)
                cur = con.execute("SELECT %s FROM items WHERE id = ?" % ", ".join(COLS),
                                  (rid,)).fetchone()
                con.execute("COMMIT")
                if row and cur and row[0] % 2 == 1:
                    for col, _ in changed:
                        i = COLS.index(col)
                        with wlock:
                            writes.append((site.name, rid, col, cur[i], row[1 + 2 * i],
                                           row[2 + 2 * i], row[0]))
                n += 1
            except sqlite3.OperationalError as e:  # busy: the op did not happen
                try:
                    con.execute("ROLLBACK")
                except sqlite3.OperationalError:
                    pass
                if "locked" not in str(e) and "busy" not in str(e):
                    errors.append("writer %s: %r" % (site.name, e))
            except Exception as e:  # noqa: BLE001 (a dead writer thread must fail the run)
                errors.append("writer %s: %r" % (site.name, e))
                break
            time.sleep(r.random() * 0.004)
        con.close()

    def chaos():
        r = random.Random(seed * 7 + 1)
        try:
            while not stop.is_set():
                time.sleep(r.uniform(0.2, 0.8))
                s = r.choice(c.sites)
                if r.random() < 0.5:
                    ev("kill -9 %s (pid %s)" % (s.name, s.proc.pid if s.proc else None))
                    s.kill9()
                    time.sleep(r.uniform(0.05, 0.5))
                    s.start()
                    ev("start %s (pid %d)" % (s.name, s.proc.pid))
                else:
                    ev("cut %s" % s.name)
                    s.proxy.cut()
                    time.sleep(r.uniform(0.1, 0.6))
                    s.proxy.heal()
                    ev("heal %s" % s.name)
        except Exception as e:  # noqa: BLE001
            errors.append("chaos: %r" % e)

    threads = [threading.Thread(target=writer, args=(s, seed * 100 + s.id)) for s in c.sites]
    threads.append(threading.Thread(target=chaos))
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join()
    ev("writers and chaos stopped, %d acknowledged writes" % len(writes))
    failed = None
    try:
        problems, keys = [], set()
        try:
            for s in c.sites:
                s.proxy.heal()
                if not s.alive():
                    s.start()
                    ev("start %s (pid %d)" % (s.name, s.proc.pid))
            c.wait_converged()
            ev("converged")
        except AssertionError as e:
            problems.append("seed %d: %s" % (seed, e))
        if not problems:
            problems, keys = check(c, writes, seed)
        problems += errors
        if problems:
            failed = diagnose(c, seed, batch_rows, events, writes, problems, keys)
        return len(writes)
    finally:
        c.stop()
        if failed:
            keep = keep_failure(c, seed, failed, events, writes)
            pytest.fail("seed %d: %s (full report and databases in %s)\n%s" %
                        (seed, failed.splitlines()[0], keep, failed), pytrace=False)


def ver_key(h, s):
    return (h or 0, s or 0)


def check(c, writes, seed):
    """Every property of the final state; returns (problems, ids of the rows concerned)."""
    problems, keys = [], set()
    cols = ", ".join("v_%s, s_%s" % (x, x) for x in COLS)
    # Column versions of a deleted row are dead state (a tombstone carries none, a re-insert
    # replaces them all), so they are compared for live rows only.
    clocks = [[r if r[1] % 2 else r[:4] for r in
               s.sql("SELECT id, cl, clh, cls, %s FROM rep_c_items ORDER BY id" % cols)]
              for s in c.sites]
    data = [c.dump(s) for s in c.sites]
    for i in range(1, len(c.sites)):
        for what, sets in (("rows", data), ("versions", clocks)):
            a, b = ({r[0]: r for r in sets[0]}, {r[0]: r for r in sets[i]})
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if diff:
                problems.append("seed %d: site %d %s differ from site 1 for ids %s" %
                                (seed, i + 1, what, diff))
                keys.update(diff)
    if problems:
        return problems, keys
    final = {row[0]: row for row in clocks[0]}
    rows = {row[0]: row for row in data[0]}
    lost = []
    for (site, rid, col, val, h, vs, cl) in writes:
        f = final[rid]
        if f[1] != cl:
            if f[1] < cl:
                problems.append("seed %d: row %d went back to an older incarnation (cl %d < %d"
                                " written at %s)" % (seed, rid, f[1], cl, site))
                keys.add(rid)
            continue  # deleted or re-inserted later
        i = COLS.index(col)
        fv = ver_key(f[4 + 2 * i], f[5 + 2 * i])
        if fv < ver_key(h, vs):
            lost.append((site, rid, col, val, h, vs, fv))
        elif fv == ver_key(h, vs):
            got = rows[rid][1 + i]
            if got != val:
                lost.append((site, rid, col, val, "value", got))
    if lost:
        problems.append("seed %d: %d acknowledged writes lost, e.g. %r" %
                        (seed, len(lost), lost[:3]))
        keys.update(x[1] for x in lost)
    # Nothing applied twice: the agents run with MS_SYNC_AUDIT=1 and record each change they
    # apply, as (origin, position), in the apply's own transaction (rolled back with it).
    for s in c.sites:
        twice = s.sql("SELECT origin, seq, count(*) FROM rep_audit GROUP BY origin, seq "
                      "HAVING count(*) > 1 LIMIT 3")
        if twice:
            problems.append("seed %d: site %s applied changes more than once, e.g. "
                            "(origin, position, times) %r" % (seed, s.name, twice))
        if s.sql("SELECT count(*) FROM rep_audit") == [(0,)]:
            problems.append("seed %d: site %s applied nothing (is the audit on?)" %
                            (seed, s.name))
    # Nothing stuck: every receiver's quarantine is empty and every conflict record names a
    # loser that is older than its winner.
    for s in c.sites:
        if s.sql("SELECT count(*) FROM rep_quarantine") != [(0,)]:
            problems.append("seed %d: site %s has quarantined changes" % (seed, s.name))
        for (pk, w, lh, ls, rh, rs) in s.sql("SELECT pk, winner, local_hlc, local_site,"
                                             " remote_hlc, remote_site FROM rep_conflict"
                                             " WHERE rule = 'column-lww'"):
            win, lose = ((rh, rs), (lh, ls)) if w == "remote" else ((lh, ls), (rh, rs))
            if ver_key(*win) <= ver_key(*lose):
                problems.append("seed %d: site %s: conflict winner older for id %s" %
                                (seed, s.name, pk))
                keys.add(int(pk))
    return problems, keys


def query(site, sql, args=()):
    """(column names, rows) of a query on a site's database, for the failure report."""
    con = sqlite3.connect(site.db, timeout=30)
    try:
        cur = con.execute(sql, args)
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        con.close()


def table_text(names, rows, indent="      "):
    if not rows:
        return indent + "(none)\n"
    return "".join(indent + ", ".join("%s=%r" % nv for nv in zip(names, r)) + "\n"
                   for r in rows)


def diverging_ids(c):
    """Ids whose row or live column versions are not the same at every site."""
    keys = set()
    per = []
    for s in c.sites:
        _, rows = query(s, "SELECT * FROM items")
        _, clk = query(s, "SELECT id, cl, clh, cls, %s FROM rep_c_items" %
                       ", ".join("v_%s, s_%s" % (x, x) for x in COLS))
        per.append(({r[0]: r for r in rows}, {r[0]: (r if r[1] % 2 else r[:4]) for r in clk}))
    for d, k in per[1:]:
        for mine, first in ((d, per[0][0]), (k, per[0][1])):
            keys.update(i for i in set(mine) | set(first) if mine.get(i) != first.get(i))
    return keys


def diagnose(c, seed, batch_rows, events, writes, problems, keys):
    """Everything needed to understand a failure, as text: the problems, the schedule of
    kills and cuts, per site its delivery state, and for every row concerned each site's row,
    change-table entry, unfolded log, conflict records and the writes made to it."""
    out = ["%s" % problems[0]]
    out += ["  " + p for p in problems[1:]]
    out.append("seed %d: %d sites, batch_rows %d, %d acknowledged writes" %
               (seed, len(c.sites), batch_rows, len(writes)))
    try:
        keys = set(keys) | diverging_ids(c)
    except sqlite3.Error as e:
        out.append("cannot compare the sites: %r" % e)
    out.append("schedule (seconds since the writers started):")
    out += ["  %7.3f %s" % e for e in events]
    for s in c.sites:
        out.append("site %s (id %d, agent %s, pid %s):" %
                   (s.name, s.id, "alive" if s.alive() else "down",
                    s.proc.pid if s.proc else None))
        try:
            out.append("  status: %s" % json.dumps(s.status(), sort_keys=True))
        except Exception as e:  # noqa: BLE001
            out.append("  status: failed: %r" % e)
        for t in ("rep_meta", "rep_peer", "rep_inbound", "rep_quarantine"):
            try:
                names, rows = query(s, "SELECT * FROM %s" % t)
                out.append("  %s:" % t)
                out.append(table_text(names, rows[:20], "    ").rstrip("\n"))
            except sqlite3.Error as e:
                out.append("  %s: %r" % (t, e))
    for rid in sorted(keys):
        out.append("id %d:" % rid)
        for s in c.sites:
            out.append("  at %s:" % s.name)
            for what, sql, args in (
                    ("row", "SELECT * FROM items WHERE id = ?", (rid,)),
                    ("rep_c_items", "SELECT * FROM rep_c_items WHERE id = ?", (rid,)),
                    ("rep_l_items (not folded)", "SELECT * FROM rep_l_items WHERE id = ?",
                     (rid,)),
                    ("rep_conflict", "SELECT * FROM rep_conflict WHERE tbl = 'items' AND"
                     " pk = ? ORDER BY id", (str(rid),))):
                try:
                    names, rows = query(s, sql, args)
                    out.append("    %s:" % what)
                    out.append(table_text(names, rows).rstrip("\n"))
                except sqlite3.Error as e:
                    out.append("    %s: %r" % (what, e))
        mine = sorted((w for w in writes if w[1] == rid), key=lambda w: ver_key(w[4], w[5]))
        out.append("  acknowledged writes to id %d (%d; the last 40 by version): "
                   "(site, id, col, value, hlc, version site, cl)" % (rid, len(mine)))
        out += ["    %r" % (w,) for w in mine[-40:]]
    for s in c.sites:
        try:
            lines = s.logtext().splitlines()
        except OSError:
            lines = []
        out.append("agent log of %s (last 40 of %d lines):" % (s.name, len(lines)))
        out += ["  " + ln for ln in lines[-40:]]
    return "\n".join(out) + "\n"


def keep_failure(c, seed, report, events, writes):
    """Copy the cluster's directory (databases, configs, agent logs) and the report where it
    survives the test run; returns the path."""
    base = os.environ.get("MS_SYNC_FAIL_DIR", "/tmp/ms-sync-converge-failures")
    dest = os.path.join(base, "seed%d-%s-%d" % (seed, time.strftime("%Y%m%dT%H%M%S"),
                                                os.getpid()))
    try:
        shutil.copytree(c.dir, dest, ignore=shutil.ignore_patterns("*.sock"))
        with open(os.path.join(dest, "report.txt"), "w") as f:
            f.write(report)
        with open(os.path.join(dest, "run.json"), "w") as f:
            json.dump({"seed": seed, "events": events, "writes": writes}, f, default=repr)
    except OSError as e:
        return "nowhere (%r)" % e
    return dest


RUNS = int(os.environ.get("MS_SYNC_CONVERGE_RUNS", "3"))
DURATION = float(os.environ.get("MS_SYNC_CONVERGE_SECONDS", "4"))
SEED0 = int(os.environ.get("MS_SYNC_SEED", "1000"))


@pytest.mark.parametrize("k", range(RUNS))
def test_convergence(tmp_path, k, monkeypatch):
    monkeypatch.setenv("MS_SYNC_AUDIT", "1")  # the agents record what they apply (see check)
    seed = SEED0 + k
    nsites = 2 + seed % 3
    print("convergence run seed=%d sites=%d" % (seed, nsites))
    n = run_once(tmp_path, seed, nsites, DURATION)
    assert n > 0, "seed %d: no writes happened" % seed
