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


def test_pg_applied_rows_are_not_captured_again(pg2):
    """No echo: rows the agent applies are not captured at the receiving site (the trigger
    function returns at once under rep.applying), so nothing comes back and the receiver
    sends nothing; a write made there by an application still is captured and sent."""
    a, b = pg2.sites
    a.sql("INSERT INTO items SELECT g, 'r' || g, g, 0.5, NULL, NULL FROM generate_series(1, 50) g")
    a.sql("UPDATE items SET b = b + 1 WHERE id <= 10")
    a.sql("DELETE FROM items WHERE id = 50")
    pg2.wait_synced()
    assert b.sql("SELECT count(*) FROM items") == [(49,)]
    assert b.sql("SELECT count(*) FROM rep_l_items") == [(0,)]
    assert b.status()["peers"][0]["rows_sent"] == 0
    assert b.sql("SELECT count(*) FROM rep_c_items WHERE s_a = 2") == [(0,)]
    b.sql("UPDATE items SET a = 'from-b' WHERE id = 7")  # the control: captured and sent
    pg2.wait_synced()
    assert a.sql("SELECT a FROM items WHERE id = 7") == [("from-b",)]
    assert b.status()["peers"][0]["rows_sent"] == 1


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


def mixed_cluster(tmp_path, tables, pg_schema, sqlite_schema):
    """Site 1 on PostgreSQL, site 2 on SQLite, each with its schema; returns (c, a, b)."""
    c = Cluster(tmp_path, 2, tables=tables, schema=None, backend="postgresql")
    a, b = c.sites
    b.backend = "sqlite"
    b.db = os.path.join(c.dir, "db2.sqlite")
    b.write_conf()
    a.write_conf()
    a.script(pg_schema)
    b.script(sqlite_schema)
    return c, a, b


def test_sqlite_and_postgresql_sites_converge(tmp_path):
    c, a, b = mixed_cluster(tmp_path, ("items",), PG_ITEMS,
                            "CREATE TABLE items(id INTEGER PRIMARY KEY, a TEXT, b INTEGER, "
                            "c REAL, d TEXT, e BLOB)")
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


# ---- composite primary keys ----
# reg: a two-column key. mix: a three-column key of mixed types, declared in an order that is
# not the columns' (the wire and SQLite use the key's order). Rows share parts of their keys,
# so a key taken by one column, or with its columns swapped (shelf and bin are both
# integers), names another row and the exact contents below differ.
PG_COMPOSITE = (
    "CREATE TABLE reg(region text, id bigint, a text, b bigint, PRIMARY KEY (region, id));"
    "CREATE TABLE mix(v text, bin bigint, shelf integer, code text, tag bytea, "
    "PRIMARY KEY (code, shelf, bin))")
COMPOSITE_TABLES = ("reg", "mix")
REG_ROWS = "SELECT region, id, a, b FROM reg ORDER BY region, id"
MIX_ROWS = "SELECT code, shelf, bin, v, tag FROM mix ORDER BY code, shelf, bin"


def composite_cluster(tmp_path, n=2, **kw):
    return Cluster(tmp_path, n, tables=COMPOSITE_TABLES, schema=PG_COMPOSITE,
                   backend="postgresql", **kw)


def dumps(site):
    return (site.sql(REG_ROWS), [r[:4] + (bytes(r[4]) if r[4] is not None else None,)
                                 for r in site.sql(MIX_ROWS)])


def no_backlog(c):
    for s in c.sites:
        st = s.status()
        if st["agent"] != "running" or any(p["backlog"] != 0 or p["out"] != "ready"
                                           for p in st["peers"]):
            return False
    return True


def wait_composite_synced(c, timeout=30):
    """Cluster.synced() compares rows ordered by their first column: not a whole key here."""
    wait_for(lambda: no_backlog(c) and all(dumps(s) == dumps(c.sites[0]) for s in c.sites[1:]),
             timeout, "composite-keyed tables equal at every site")


def test_pg_composite_keys_replicate_both_ways(tmp_path):
    c = composite_cluster(tmp_path)
    a, b = c.sites
    try:
        c.init()
        assert a.sql("SELECT name, pk, cols FROM rep_table ORDER BY name") == [
            ("mix", "code,shelf,bin", "tag,v"), ("reg", "region,id", "a,b")]
        c.start()
        a.script("INSERT INTO reg VALUES('eu', 1, 'eu1', 1), ('eu', 2, 'eu2', 2), "
                 "('us', 1, 'us1', 3);"
                 "INSERT INTO mix VALUES('x', 1, 2, 'k', '\\x01'), ('y', 2, 1, 'k', NULL), "
                 "('z', 1, 1, 'k2', '\\x0203')")
        b.script("INSERT INTO reg VALUES('us', 2, 'us2', 4), ('ap', 1, 'ap1', 5);"
                 "INSERT INTO mix VALUES('w', 2, 2, 'k', '\\x04')")
        wait_composite_synced(c)
        assert a.sql(REG_ROWS) == [("ap", 1, "ap1", 5), ("eu", 1, "eu1", 1),
                                   ("eu", 2, "eu2", 2), ("us", 1, "us1", 3),
                                   ("us", 2, "us2", 4)]
        assert dumps(b)[1] == [("k", 1, 2, "y", None), ("k", 2, 1, "x", b"\x01"),
                               ("k", 2, 2, "w", b"\x04"), ("k2", 1, 1, "z", b"\x02\x03")]
        # updates and deletes both ways, one key part shared with other rows each time
        a.script("UPDATE reg SET a = 'us2-a' WHERE region = 'us' AND id = 2;"
                 "DELETE FROM mix WHERE code = 'k' AND shelf = 2 AND bin = 1")
        b.script("UPDATE reg SET b = 40 WHERE region = 'eu' AND id = 1;"
                 "DELETE FROM reg WHERE region = 'ap' AND id = 1;"
                 "UPDATE mix SET v = 'y2', tag = '\\xff' WHERE code = 'k' AND shelf = 1 AND "
                 "bin = 2")
        wait_composite_synced(c)
        assert b.sql(REG_ROWS) == [("eu", 1, "eu1", 40), ("eu", 2, "eu2", 2),
                                   ("us", 1, "us1", 3), ("us", 2, "us2-a", 4)]
        assert dumps(a)[1] == [("k", 1, 2, "y2", b"\xff"), ("k", 2, 2, "w", b"\x04"),
                               ("k2", 1, 1, "z", b"\x02\x03")]
        # a primary key update is refused, whichever key column it touches
        for sql in ("UPDATE reg SET id = 9 WHERE region = 'eu' AND id = 2",
                    "UPDATE reg SET region = 'sa' WHERE region = 'eu' AND id = 2",
                    "UPDATE mix SET bin = 7 WHERE code = 'k2'"):
            with pytest.raises(Exception, match="primary key updates are not replicated"):
                a.sql(sql)
        # backlog of a peer that is away counts rows by their whole key
        b.stop()
        a.script("INSERT INTO reg VALUES('sa', 1, 'sa1', 6), ('sa', 2, 'sa2', 7);"
                 "UPDATE reg SET b = 8 WHERE region = 'sa' AND id = 1")
        wait_for(lambda: a.status()["peers"][0]["backlog"] == 2, 10, "a backlog of 2 rows")
        b.start()
        wait_composite_synced(c)
        assert b.sql("SELECT region, id, b FROM reg WHERE region = 'sa' ORDER BY id") == \
            [("sa", 1, 8), ("sa", 2, 7)]
        assert a.sql("SELECT count(*) FROM rep_quarantine") == [(0,)]
        assert b.sql("SELECT count(*) FROM rep_quarantine") == [(0,)]
    finally:
        c.stop()


def test_pg_composite_key_conflict_converges_and_quarantine_records_the_key(tmp_path):
    c = composite_cluster(tmp_path)
    a, b = c.sites
    try:
        c.init()
        c.start()
        a.script("INSERT INTO reg VALUES('eu', 7, 'orig', 0), ('us', 7, 'other', 0);"
                 "INSERT INTO mix VALUES('orig', 3, 2, 'k', NULL)")
        wait_composite_synced(c)
        b.stop()
        a.script("UPDATE reg SET a = 'from-a' WHERE region = 'eu' AND id = 7;"
                 "UPDATE mix SET v = 'from-a' WHERE code = 'k' AND shelf = 2 AND bin = 3")
        time.sleep(0.01)
        b.script("UPDATE reg SET a = 'from-b' WHERE region = 'eu' AND id = 7;"
                 "UPDATE mix SET v = 'from-b' WHERE code = 'k' AND shelf = 2 AND bin = 3")
        b.start()
        wait_composite_synced(c)
        for s in (a, b):
            assert s.sql(REG_ROWS) == [("eu", 7, "from-b", 0), ("us", 7, "other", 0)]
            assert s.sql("SELECT v FROM mix") == [("from-b",)]
        logs = a.sql("SELECT tbl, pk, col, local_val, remote_val, winner FROM rep_conflict") + \
            b.sql("SELECT tbl, pk, col, local_val, remote_val, winner FROM rep_conflict")
        # logged where detected: at one site or both, depending on the order of arrival
        assert {(t, pk, col) for t, pk, col, _, _, _ in logs} == \
            {("mix", "'k',2,3", "v"), ("reg", "'eu',7", "a")}, logs
        assert all((lv if w == "local" else rv) == "from-b" for _, _, _, lv, rv, w in logs)
        # a change that cannot be applied is quarantined with its whole key
        b.sql("CREATE UNIQUE INDEX only_on_b ON reg(a)")
        a.script("INSERT INTO reg VALUES('eu', 8, 'same', 1); INSERT INTO reg VALUES('us', 8, "
                 "'same', 2); INSERT INTO reg VALUES('us', 9, 'x', 3)")
        wait_for(lambda: b.sql("SELECT count(*) FROM reg") == [(4,)], what="2 of 3 applied")
        assert b.sql("SELECT tbl, pk, kind FROM rep_quarantine") == [("reg", "'us',8",
                                                                       "constraint")]
        b.sql("DROP INDEX only_on_b")
        wait_composite_synced(c)
        assert b.sql("SELECT count(*) FROM rep_quarantine") == [(0,)]
        assert b.sql("SELECT a FROM reg WHERE region = 'us' AND id = 8") == [("same",)]
    finally:
        c.stop()


def test_pg_site_joins_with_composite_keyed_tables(tmp_path):
    c = composite_cluster(tmp_path, 3)
    s1, s2, s3 = c.sites
    try:
        s1.run("init")
        s2.run("init")
        s1.start()
        s2.start()
        for i in range(20):
            s1.sql("INSERT INTO reg VALUES('eu', ?, 'one', ?)", (i, i))
            s2.sql("INSERT INTO reg VALUES('us', ?, 'two', ?)", (i, i))
            s1.sql("INSERT INTO mix VALUES('m', ?, ?, 'k', NULL)", (i, 20 - i))
        wait_for(lambda: dumps(s1) == dumps(s2) and len(dumps(s1)[0]) == 40,
                 what="sites 1 and 2 in step")
        s3.script("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        s3.run("join", "--from", s1.db)
        assert dumps(s3) == dumps(s1)
        s2.sql("UPDATE reg SET a = 'after-copy' WHERE region = 'us' AND id = 3")
        s3.start()
        s3.sql("UPDATE mix SET v = 'from-3' WHERE code = 'k' AND shelf = 5 AND bin = 15")
        s3.sql("DELETE FROM reg WHERE region = 'eu' AND id = 4")
        wait_composite_synced(c, 60)
        assert s1.sql("SELECT v FROM mix WHERE shelf = 5") == [("from-3",)]
        assert s3.sql("SELECT a FROM reg WHERE region = 'us' AND id = 3") == [("after-copy",)]
        assert s2.sql("SELECT count(*) FROM reg WHERE id = 4") == [(1,)]
    finally:
        c.stop()


def test_sqlite_and_postgresql_sites_converge_on_a_composite_key(tmp_path):
    """The key travels in the key's declared order on both backends (not column order)."""
    c, a, b = mixed_cluster(tmp_path, ("mix",), PG_COMPOSITE,
                            "CREATE TABLE mix(v TEXT, bin INTEGER, shelf INTEGER, code TEXT, "
                            "tag BLOB, PRIMARY KEY (code, shelf, bin))")
    c.init()
    c.start()
    try:
        a.sql("INSERT INTO mix VALUES('pg', 1, 2, 'k', '\\x01'::bytea)")
        b.sql("INSERT INTO mix VALUES('lite', 2, 1, 'k', x'02')")
        rows = "SELECT code, shelf, bin, v FROM mix ORDER BY code, shelf, bin"
        both = [("k", 1, 2, "lite"), ("k", 2, 1, "pg")]
        wait_for(lambda: no_backlog(c) and a.sql(rows) == b.sql(rows) == both, what="2 rows")
        assert bytes(a.sql("SELECT tag FROM mix WHERE shelf = 1")[0][0]) == b"\x02"
        assert b.sql("SELECT tag FROM mix WHERE shelf = 2") == [(b"\x01",)]
        b.sql("UPDATE mix SET v = 'lite2' WHERE code = 'k' AND shelf = 1 AND bin = 2")
        a.sql("DELETE FROM mix WHERE code = 'k' AND shelf = 2 AND bin = 1")
        wait_for(lambda: no_backlog(c) and a.sql(rows) == b.sql(rows) == [("k", 1, 2, "lite2")],
                 what="the update and the delete")
        assert a.sql("SELECT count(*) FROM rep_quarantine") == [(0,)]
    finally:
        c.stop()


def test_pg_reinit_folds_the_pending_log_and_refuses_a_changed_key(tmp_path):
    c = composite_cluster(tmp_path, 1)
    a = c.sites[0]
    try:
        a.run("init")
        a.sql("INSERT INTO reg VALUES('eu', 1, 'x', 1), ('us', 1, 'y', 2)")
        a.sql("UPDATE reg SET b = 3 WHERE region = 'us' AND id = 1")
        assert a.sql("SELECT count(*) FROM rep_l_reg") == [(3,)]
        a.run("init")  # folds what the installed capture logged before replacing it
        assert a.sql("SELECT count(*) FROM rep_l_reg") == [(0,)]
        assert a.sql("SELECT region, id, cl, mask FROM rep_c_reg ORDER BY region, id") == \
            [("eu", 1, 1, 3), ("us", 1, 1, 2)]
        a.script("ALTER TABLE reg DROP CONSTRAINT reg_pkey; ALTER TABLE reg ADD PRIMARY KEY "
                 "(id, region)")
        r = a.run("init", check=False)
        assert r.returncode != 0
        assert "table reg: its primary key was (region,id) when capture was installed and is " \
            "(id,region) now" in r.stderr, r.stderr
    finally:
        c.stop()


def test_pg_composite_tombstones_are_purged_and_a_reinsert_replicates(tmp_path):
    extra = "  max_peer_offline: 3s\n  tombstone_retention: 3s\n  max_clock_skew: 1s\n"
    c = composite_cluster(tmp_path, extra=extra)
    a, b = c.sites
    tombs = "SELECT region, id FROM rep_c_reg WHERE (cl & 1) = 0 ORDER BY region, id"
    try:
        c.init()
        c.start()
        a.script("INSERT INTO reg VALUES('eu', 1, 'x', 1), ('eu', 2, 'y', 2), ('us', 1, 'z', 3)")
        wait_composite_synced(c)
        a.sql("DELETE FROM reg WHERE region = 'eu' AND id = 1")
        wait_composite_synced(c)
        assert a.sql(tombs) == b.sql(tombs) == [("eu", 1)]
        wait_for(lambda: a.sql(tombs) == [] and b.sql(tombs) == [], 20, "tombstones purged")
        assert a.sql("SELECT region, id, cl FROM rep_c_reg ORDER BY region, id") == \
            [("eu", 2, 1), ("us", 1, 1)]
        b.sql("INSERT INTO reg VALUES('eu', 1, 'reborn', 9)")
        wait_composite_synced(c)
        assert a.sql(REG_ROWS) == [("eu", 1, "reborn", 9), ("eu", 2, "y", 2), ("us", 1, "z", 3)]
    finally:
        c.stop()


def test_pg_composite_backlog_counts_whole_keys_with_the_agent_down_and_up(tmp_path):
    c = composite_cluster(tmp_path)
    a = c.sites[0]
    try:
        a.run("init")
        # three log rows (not folded: no agent) of two rows that share their region
        a.sql("INSERT INTO reg VALUES('sa', 1, 'x', 1), ('sa', 2, 'y', 2)")
        a.sql("UPDATE reg SET b = 8 WHERE region = 'sa' AND id = 1")
        assert a.sql("SELECT count(*) FROM rep_l_reg") == [(3,)]
        st = a.status()
        assert st["agent"] == "down" and st["peers"][0]["backlog"] == 2, st
        assert a.sql("SELECT count(*) FROM rep_l_reg") == [(3,)]  # not folded
        a.start()
        assert a.status()["peers"][0]["backlog"] == 2  # folded or not
        wait_for(lambda: a.sql("SELECT count(*) FROM rep_l_reg") == [(0,)], what="the fold")
        assert a.status()["peers"][0]["backlog"] == 2
    finally:
        c.stop()
