"""Integration tests of multisite-syncd on a real PostgreSQL 15 (started here with initdb as
the postgres user), and SQLite <-> PostgreSQL."""

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sync_harness import (PGBIN, Cluster, cross_column_updates_site1_first,  # noqa: E402
                          wait_for)

pytestmark = pytest.mark.skipif(not os.path.exists(PGBIN + "/initdb"),
                                reason="PostgreSQL 15 is not installed (scripts/deps.sh)")

PG_ITEMS = ("CREATE TABLE items(id bigint PRIMARY KEY, a text, b bigint, c double precision, "
            "d text, e bytea)")


@pytest.fixture
def pg2(tmp_path):
    c = Cluster(tmp_path, 2, schema=PG_ITEMS, backend="postgresql")
    c.init()
    c.start()
    yield c
    c.stop()


def test_pg_init_refuses_table_without_primary_key(tmp_path):
    c = Cluster(tmp_path, 1, tables=("items", "nokey"),
                schema=PG_ITEMS + "; CREATE TABLE nokey(x int, y text)", backend="postgresql")
    try:
        r = c.sites[0].run("init", check=False)
        assert r.returncode != 0
        assert "table nokey has no primary key" in r.stderr
    finally:
        c.stop()


def test_pg_status_with_the_agent_down_is_read_only(tmp_path):
    """`status` with the agent down runs in a read-only session: it counts the changes still
    in the capture log without folding them, and on a database where init never ran it fails
    with a clear error and creates nothing (no table, trigger, function or sequence)."""
    c = Cluster(tmp_path, 2, schema=PG_ITEMS, backend="postgresql")
    a, b = c.sites
    a.run("init")  # b: never initialised
    catalog = ("SELECT 'table ' || tablename FROM pg_tables WHERE schemaname = 'public' UNION ALL "
               "SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal UNION ALL "
               "SELECT 'function ' || proname FROM pg_proc WHERE pronamespace = "
               "'public'::regnamespace UNION ALL SELECT 'sequence ' || sequencename FROM "
               "pg_sequences ORDER BY 1")
    try:
        a.sql("INSERT INTO items(id, a) VALUES(1, 'one'), (2, 'two')")
        a.start()  # folds them: two entries for site 2
        wait_for(lambda: a.sql("SELECT count(*) FROM rep_l_items") == [(0,)], what="the fold")
        assert a.status()["peers"][0]["backlog"] == 2
        a.stop()
        a.sql("UPDATE items SET a = 'dos' WHERE id = 2")  # an entry and a log row: once
        a.sql("INSERT INTO items(id, a) VALUES(3, 'three')")
        a.sql("UPDATE items SET a = 'tres' WHERE id = 3")
        assert a.sql("SELECT count(*) FROM rep_l_items") == [(3,)]
        before = (a.sql(catalog), a.sql("SELECT * FROM rep_c_items ORDER BY 1"))
        st = a.status()
        assert st["agent"] == "down" and st["database_ok"] is True, st
        assert st["peers"][0]["backlog"] == 3 and st["peers"][0]["lag_ms"] > 0, st
        assert "agent down" in a.run("status").stdout
        assert a.sql("SELECT count(*) FROM rep_l_items") == [(3,)]  # not folded
        assert (a.sql(catalog), a.sql("SELECT * FROM rep_c_items ORDER BY 1")) == before
        a.start()  # the agent counts the same, folded or not
        assert a.status()["peers"][0]["backlog"] == 3
        wait_for(lambda: a.sql("SELECT count(*) FROM rep_l_items") == [(0,)], what="the fold")
        assert a.status()["peers"][0]["backlog"] == 3

        before = b.sql(catalog)
        r = b.run("status", check=False)
        assert r.returncode != 0 and r.stdout == ""
        assert "capture is not installed" in r.stderr and "multisite-syncd init" in r.stderr, \
            r.stderr
        assert b.sql(catalog) == before and not [x for x in before if "rep_" in x[0]]
    finally:
        c.stop()


def test_pg_replicates_both_ways_with_conflict_log(pg2):
    a, b = pg2.sites
    a.sql("INSERT INTO items VALUES(1, 'one', 1, 1.5, 'x', '\\x00ff'::bytea)")
    b.sql("INSERT INTO items VALUES(2, 'two', 2, 2.5, NULL, NULL)")
    pg2.wait_synced()
    a.sql("UPDATE items SET b = 10 WHERE id = 2")
    b.sql("DELETE FROM items WHERE id = 1")
    pg2.wait_synced()
    assert a.sql("SELECT id, a, b, c FROM items") == [(2, "two", 10, 2.5)]
    b.stop()
    a.sql("UPDATE items SET a = 'from-a' WHERE id = 2")
    time.sleep(0.01)
    b.sql("UPDATE items SET a = 'from-b', d = 'db' WHERE id = 2")
    b.start()
    pg2.wait_synced()
    assert a.sql("SELECT a, b, d FROM items") == [("from-b", 10, "db")]
    logs = a.sql("SELECT col, local_val, remote_val, winner FROM rep_conflict") + \
        b.sql("SELECT col, local_val, remote_val, winner FROM rep_conflict")
    assert logs and all(col == "a" and {lv, rv} == {"from-a", "from-b"} and
                        (lv if w == "local" else rv) == "from-b" for col, lv, rv, w in logs)


def test_pg_a_column_only_one_side_changed_is_no_conflict_in_either_arrival_order(tmp_path):
    # As the SQLite test: site 1 changes a and b, site 2 a and d. Site 1's entry carries d's
    # version that site 2 overwrote; reaching site 2 first, d must not be logged as a conflict.
    c = Cluster(tmp_path, 2, schema=PG_ITEMS, backend="postgresql", proxies=True)
    try:
        a, b = cross_column_updates_site1_first(c)
        assert a.sql("SELECT a, b, d FROM items") == [("from-b", 1, "db")]
        assert b.sql("SELECT a, b, d FROM items") == [("from-b", 1, "db")]
        logs = a.sql("SELECT col, rule FROM rep_conflict") + \
            b.sql("SELECT col, rule FROM rep_conflict")
        assert logs and all(r == ("a", "column-lww") for r in logs), logs
    finally:
        c.stop()


def test_pg_long_transaction_is_not_skipped(pg2):
    """F1: a transaction that started first and commits last must still be shipped."""
    import psycopg2
    a, b = pg2.sites
    slow = psycopg2.connect(a.db)
    cur = slow.cursor()
    cur.execute("INSERT INTO items(id, a) VALUES(100, 'long')")  # open, uncommitted
    for i in range(20):
        a.sql("INSERT INTO items(id, a) VALUES(%d, 'short')" % i)
    wait_for(lambda: b.sql("SELECT count(*) FROM items") == [(20,)], what="short txns at b")
    time.sleep(0.3)  # several ticks pass while the long transaction is open
    slow.commit()
    slow.close()
    pg2.wait_synced()
    assert b.sql("SELECT a FROM items WHERE id = 100") == [("long",)]


def test_pg_constraint_violation_is_quarantined(pg2):
    a, b = pg2.sites
    b.sql("CREATE UNIQUE INDEX only_on_b ON items(d)")
    a.sql("INSERT INTO items(id, d) VALUES(1, 'same')")
    a.sql("INSERT INTO items(id, d) VALUES(2, 'same'); INSERT INTO items(id, d) VALUES(3, 'x')")
    wait_for(lambda: b.sql("SELECT count(*) FROM items") == [(2,)], what="1 and 3 applied")
    q = b.sql("SELECT pk, kind FROM rep_quarantine")
    assert q == [("2", "constraint")], q
    b.sql("DROP INDEX only_on_b")
    pg2.wait_synced()
    assert b.sql("SELECT count(*) FROM rep_quarantine") == [(0,)]


def test_pg_concurrent_writers_at_both_sites_converge(pg2):
    """Writers at both sites change the same few rows at once, several times per transaction
    (insert, update, delete, re-insert), while the agents fold the capture logs and apply each
    other's changes under the same row locks: afterwards both sites hold the same rows and
    the same per-column versions."""
    import psycopg2
    import random
    stop = threading.Event()
    errors = []

    def writer(site, seed):
        r = random.Random(seed)
        con = psycopg2.connect(site.db)
        cur = con.cursor()
        n = 0
        while not stop.is_set():
            try:
                for _ in range(r.randint(1, 4)):
                    k = r.randrange(12)
                    op = r.random()
                    if op < 0.35:
                        cur.execute("INSERT INTO items(id, a, b) VALUES(%s, %s, %s) ON CONFLICT "
                                    "(id) DO UPDATE SET a = excluded.a", (k, "i%d" % n, n))
                    elif op < 0.8:
                        col = r.choice("abd")
                        val = n if col == "b" else "u%d-%d" % (seed, n)
                        cur.execute("UPDATE items SET %s = %%s WHERE id = %%s" % col, (val, k))
                    else:
                        cur.execute("DELETE FROM items WHERE id = %s", (k,))
                    n += 1
                con.commit()
            except psycopg2.Error:
                con.rollback()  # deadlock or unique race between the local writers: retry
            except Exception as e:  # noqa: BLE001
                errors.append(e)
                return
        con.close()

    ts = [threading.Thread(target=writer, args=(s, 10 * s.id + j))
          for s in pg2.sites for j in range(3)]
    for t in ts:
        t.start()
    time.sleep(4)
    stop.set()
    for t in ts:
        t.join()
    assert not errors, errors
    pg2.wait_synced(60)
    a, b = pg2.sites
    rows = "SELECT id, a, b, d FROM items ORDER BY id"
    wait_for(lambda: a.sql(rows) == b.sql(rows), 30, "both sites to hold the same rows")
    # column versions of a deleted row are never read again (a re-insert replaces them all)
    clocks = ("SELECT id, cl, CASE WHEN mod(cl, 2) = 1 THEN ARRAY[v_a, s_a, v_b, s_b, v_d, s_d] "
              "END FROM rep_c_items ORDER BY id")
    ca, cb = a.sql(clocks), b.sql(clocks)
    assert ca == cb, [(x, y) for x, y in zip(ca, cb) if x != y]
    assert a.sql("SELECT count(*) FROM rep_inbound") == [(1,)]


def test_sqlite_and_postgresql_sites_converge(tmp_path):
    c = Cluster(tmp_path, 2, schema=None, backend="postgresql")
    a, b = c.sites
    # turn site 2 into a SQLite site
    b.backend = "sqlite"
    b.db = os.path.join(c.dir, "db2.sqlite")
    b.write_conf()
    a.write_conf()
    a.script(PG_ITEMS)
    b.script("CREATE TABLE items(id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c REAL, d TEXT, "
             "e BLOB)")
    c.init()
    c.start()
    try:
        a.sql("INSERT INTO items VALUES(1, 'pg', 7, 0.25, NULL, '\\x0102'::bytea)")
        b.sql("INSERT INTO items VALUES(2, 'lite', 8, 0.5, 'd', x'0304')")
        wait_for(lambda: len(a.sql("SELECT * FROM items")) == 2 and
                 len(b.sql("SELECT * FROM items")) == 2, what="both rows at both sites")
        assert a.sql("SELECT id, a, b, c, d, e FROM items ORDER BY id")[1][:5] == \
            (2, "lite", 8, 0.5, "d")
        assert bytes(a.sql("SELECT e FROM items WHERE id = 2")[0][0]) == b"\x03\x04"
        assert b.sql("SELECT id, a, b, c, e FROM items WHERE id = 1") == \
            [(1, "pg", 7, 0.25, b"\x01\x02")]
    finally:
        c.stop()


@pytest.mark.parametrize("point", ["apply.begin:1", "apply.entry:2", "apply.commit:1",
                                   "apply.committed:2"])
def test_pg_exactly_once_across_a_crash_in_apply(tmp_path, point):
    c = Cluster(tmp_path, 2, schema=PG_ITEMS, backend="postgresql")
    try:
        c.init()
        a, b = c.sites
        a.start()
        b.start(env={"MS_SYNC_FAULT": point})
        n = 0
        # several windows: one transaction each, a little apart
        for w in range(6):
            a.sql("INSERT INTO items(id, a, b) SELECT g, 'r', g FROM generate_series(%d, %d) g"
                  % (w * 10, w * 10 + 9))
            n += 10
            time.sleep(0.05)
        wait_for(lambda: not b.alive(), 20, "the fault to kill the receiver")
        b.proc = None
        b.start()
        c.wait_synced(60)
        st = b.status()
        assert st["peers"][0]["applied"] == n, st
        assert b.sql("SELECT count(*), sum(b) FROM items") == [(n, n * (n - 1) // 2)]
    finally:
        c.stop()
