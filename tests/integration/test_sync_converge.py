"""Convergence property test: 2-4 sites, seeded random inserts, updates and deletes at every
site at once, random kill -9 and restart of agents, cut connections; after healing, all
databases must be identical, no acknowledged write may be lost to an older one, and nothing
may be applied twice. The seed is printed on failure; rerun one with MS_SYNC_SEED=N.

make check runs a few short runs; bench/sync.sh runs 200 (MS_SYNC_CONVERGE_RUNS=200)."""

import os
import random
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
    far plus the capture log entries not folded yet (the agent folds them later, the same
    way)."""
    site = con.execute("SELECT site FROM rep_meta").fetchone()[0]
    row = con.execute("SELECT cl, %s FROM rep_c_items WHERE id = ?" %
                      ", ".join("v_%s, s_%s" % (x, x) for x in COLS), (rid,)).fetchone()
    row = list(row) if row else [0] + [None] * (2 * len(COLS))
    found = row[0] != 0
    for seq, op, mask in con.execute("SELECT seq, op, mask FROM rep_l_items WHERE id = ? "
                                     "ORDER BY seq", (rid,)):
        if op == 3:
            row[0] = row[0] + 1 if row[0] % 2 == 1 else (row[0] if found else 2)
        else:
            if op == 1 or not found:
                row[0] = row[0] + 1 if row[0] % 2 == 0 else row[0]
            for i in range(len(COLS)):
                if mask >> i & 1:
                    row[1 + 2 * i], row[2 + 2 * i] = seq, site
        found = True
    return row


def run_once(tmp_path, seed, nsites, duration):
    rnd = random.Random(seed)
    c = Cluster(tmp_path, nsites, proxies=True, extra="  batch_rows: %d\n" % rnd.choice([3, 50,
                                                                                           2000]))
    c.init()
    c.start()
    writes = []  # (site, id, col, value, hlc, site_of_version, cl) of every committed write
    wlock = threading.Lock()
    stop = threading.Event()
    errors = []

    def writer(site, wseed):
        r = random.Random(wseed)
        con = sqlite3.connect(site.db, timeout=30, isolation_level=None)
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
                    errors.append(repr(e))
            time.sleep(r.random() * 0.004)
        con.close()

    def chaos():
        r = random.Random(seed * 7 + 1)
        while not stop.is_set():
            time.sleep(r.uniform(0.2, 0.8))
            s = r.choice(c.sites)
            if r.random() < 0.5:
                s.kill9()
                time.sleep(r.uniform(0.05, 0.5))
                s.start()
            else:
                s.proxy.cut()
                time.sleep(r.uniform(0.1, 0.6))
                s.proxy.heal()

    threads = [threading.Thread(target=writer, args=(s, seed * 100 + s.id)) for s in c.sites]
    threads.append(threading.Thread(target=chaos))
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join()
    try:
        for s in c.sites:
            s.proxy.heal()
            if not s.alive():
                s.start()
        c.wait_synced(timeout=60)
        check(c, writes, seed)
        assert not errors, errors
        return len(writes)
    finally:
        c.stop()


def ver_key(h, s):
    return (h or 0, s or 0)


def check(c, writes, seed):
    cols = ", ".join("v_%s, s_%s" % (x, x) for x in COLS)
    # Column versions of a deleted row are dead state (a tombstone carries none, a re-insert
    # replaces them all), so they are compared for live rows only.
    clocks = [[r if r[1] % 2 else r[:4] for r in
               s.sql("SELECT id, cl, clh, cls, %s FROM rep_c_items ORDER BY id" % cols)]
              for s in c.sites]
    data = [c.dump(s) for s in c.sites]
    for i in range(1, len(c.sites)):
        assert data[i] == data[0], "seed %d: site %d rows differ from site 1" % (seed, i + 1)
        assert clocks[i] == clocks[0], "seed %d: site %d versions differ" % (seed, i + 1)
    final = {row[0]: row for row in clocks[0]}
    rows = {row[0]: row for row in data[0]}
    lost = []
    for (site, rid, col, val, h, vs, cl) in writes:
        f = final[rid]
        if f[1] != cl:
            assert f[1] > cl, "seed %d: row %d went back to an older incarnation" % (seed, rid)
            continue  # deleted or re-inserted later
        i = COLS.index(col)
        fv = ver_key(f[4 + 2 * i], f[5 + 2 * i])
        if fv < ver_key(h, vs):
            lost.append((site, rid, col, val, h, vs, fv))
        elif fv == ver_key(h, vs):
            got = rows[rid][1 + i]
            if got != val:
                lost.append((site, rid, col, val, "value", got))
    assert not lost, "seed %d: %d acknowledged writes lost, e.g. %r" % (seed, len(lost), lost[:3])
    # Nothing applied twice and nothing stuck: every receiver's quarantine is empty and every
    # conflict record names a loser that is older than its winner.
    for s in c.sites:
        assert s.sql("SELECT count(*) FROM rep_quarantine") == [(0,)], "seed %d" % seed
        for (w, lh, ls, rh, rs) in s.sql("SELECT winner, local_hlc, local_site, remote_hlc,"
                                         " remote_site FROM rep_conflict"
                                         " WHERE rule = 'column-lww'"):
            win, lose = ((rh, rs), (lh, ls)) if w == "remote" else ((lh, ls), (rh, rs))
            assert ver_key(*win) > ver_key(*lose), "seed %d: conflict winner older" % seed


RUNS = int(os.environ.get("MS_SYNC_CONVERGE_RUNS", "3"))
DURATION = float(os.environ.get("MS_SYNC_CONVERGE_SECONDS", "4"))
SEED0 = int(os.environ.get("MS_SYNC_SEED", "1000"))


@pytest.mark.parametrize("k", range(RUNS))
def test_convergence(tmp_path, k):
    seed = SEED0 + k
    nsites = 2 + seed % 3
    print("convergence run seed=%d sites=%d" % (seed, nsites))
    n = run_once(tmp_path, seed, nsites, DURATION)
    assert n > 0, "seed %d: no writes happened" % seed
