"""Integration tests of multisite-syncd on SQLite: real agents on loopback, real database
files written by an ordinary application (Python's sqlite3)."""

import os
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sync_harness import (SYNCD, Cluster, cross_column_updates_site1_first,  # noqa: E402
                          wait_for)


@pytest.fixture
def cluster2(tmp_path):
    c = Cluster(tmp_path, 2)
    c.init()
    c.start()
    yield c
    c.stop()


def test_init_refuses_table_without_primary_key(tmp_path):
    c = Cluster(tmp_path, 1, tables=("items", "nokey"),
                schema="CREATE TABLE items(id INTEGER PRIMARY KEY, a TEXT);"
                       "CREATE TABLE nokey(x INTEGER, y TEXT);")
    r = c.sites[0].run("init", check=False)
    assert r.returncode != 0
    assert "table nokey has no primary key" in r.stderr
    # nothing half-installed: the init transaction rolled back
    assert c.sites[0].sql("SELECT count(*) FROM sqlite_master WHERE name LIKE 'rep_%'") == [(0,)]


def test_config_errors_name_file_and_line(tmp_path):
    c = Cluster(tmp_path, 1)
    with open(c.sites[0].conf) as f:
        text = f.read()
    with open(c.sites[0].conf, "w") as f:
        f.write(text.replace("site_id: 1", "site_id: 70000"))
    r = c.sites[0].run("init", check=False)
    assert r.returncode != 0
    assert "s1.yaml:3: sync.site_id: 70000 is out of range 1..65535" in r.stderr


def test_insert_update_delete_replicate_both_ways_without_echo(cluster2):
    a, b = cluster2.sites
    a.sql("INSERT INTO items VALUES(1, 'one', 1, 1.5, 'x', x'00ff')")
    b.sql("INSERT INTO items VALUES(2, 'two', 2, 2.5, NULL, NULL)")
    cluster2.wait_synced()
    a.sql("UPDATE items SET b = 10 WHERE id = 2")
    b.sql("DELETE FROM items WHERE id = 1")
    cluster2.wait_synced()
    assert a.sql("SELECT * FROM items") == [(2, "two", 10, 2.5, None, None)]
    # No echo: rows applied from a peer are not captured again (their position stays 0),
    # and each site applied exactly the two changes the other made.
    assert b.sql("SELECT seq FROM rep_c_items WHERE id = 1") == [(0,)] or \
        b.sql("SELECT count(*) FROM rep_c_items WHERE id = 1 AND seq > 0") == [(1,)]
    time.sleep(0.3)
    st_a, st_b = a.status(), b.status()
    assert st_a["peers"][0]["applied"] == 2
    assert st_b["peers"][0]["applied"] == 2
    assert st_a["conflicts"] == 0 and st_b["conflicts"] == 0
    # the human-readable status has the peer table
    out = a.run("status").stdout
    assert "s2" in out and "ready" in out


def test_consolidation_sends_one_change_per_row(tmp_path):
    c = Cluster(tmp_path, 2)
    c.init()
    a, b = c.sites
    con_rows = 200
    a.sql("INSERT INTO items(id, a, b) SELECT value, 'v', 0 FROM generate_series(1, %d)"
          % con_rows) if False else None
    for i in range(con_rows):
        a.sql("INSERT INTO items(id, a, b) VALUES(?, 'v', 0)", (i,))
    for rnd in range(20):
        a.sql("UPDATE items SET b = b + 1, a = 'r%d' WHERE id %% 2 = 0" % rnd)
    a.sql("DELETE FROM items WHERE id % 10 = 1")
    c.start()
    try:
        c.wait_synced()
        st = a.status()
        assert st["peers"][0]["rows_sent"] <= con_rows, st
        assert b.status()["peers"][0]["applied"] == con_rows
        assert b.sql("SELECT count(*), sum(b) FROM items") == [(180, 2000)]
    finally:
        c.stop()


def test_column_level_conflict_resolution_and_log(tmp_path):
    c = Cluster(tmp_path, 2)
    c.init()
    a, b = c.sites
    a.sql("INSERT INTO items VALUES(1, 'orig', 0, 0.0, 'd0', NULL)")
    c.start()
    c.wait_synced()
    b.stop()  # partition: both sides change the row
    a.sql("UPDATE items SET a = 'from-a', b = 1 WHERE id = 1")
    time.sleep(0.01)
    b.sql("UPDATE items SET a = 'from-b', d = 'db' WHERE id = 1")  # later: b wins column a
    b.start()
    try:
        c.wait_synced()
        # a: both changed it, later (b) wins; b: only a changed it; d: only b changed it
        assert a.sql("SELECT a, b, d FROM items") == [("from-b", 1, "db")]
        # The conflict is logged where it is detected: at the site that held the losing
        # version when the winner arrived (one site or both, depending on arrival order),
        # always with both versions and the same winner.
        logs = a.sql("SELECT col, rule, local_val, remote_val, winner FROM rep_conflict") + \
            b.sql("SELECT col, rule, local_val, remote_val, winner FROM rep_conflict")
        assert logs, "no conflict logged"
        for col, rule, lv, rv, winner in logs:
            assert col == "a" and rule == "column-lww"
            assert {lv, rv} == {"from-a", "from-b"}
            assert (lv if winner == "local" else rv) == "from-b"
    finally:
        c.stop()


def test_a_column_only_one_side_changed_is_no_conflict_in_either_arrival_order(tmp_path):
    # Site 1 changes column a, site 2 columns a and d. Site 1's entry carries every column's
    # version, d's being the one site 2 overwrote: when it reaches site 2 before site 2's
    # change reaches site 1, d must not be logged as a conflict (site 2 had seen it).
    c = Cluster(tmp_path, 2, proxies=True)
    try:
        a, b = cross_column_updates_site1_first(c)
        assert a.sql("SELECT a, b, d FROM items") == [("from-b", 1, "db")]
        logs = a.sql("SELECT col, rule FROM rep_conflict") + \
            b.sql("SELECT col, rule FROM rep_conflict")
        assert logs and all(r == ("a", "column-lww") for r in logs), logs
    finally:
        c.stop()


def test_delete_wins_over_concurrent_update_and_reinsert_wins_over_delete(tmp_path):
    c = Cluster(tmp_path, 2)
    c.init()
    a, b = c.sites
    a.sql("INSERT INTO items VALUES(1, 'x', 0, 0, NULL, NULL)")
    a.sql("INSERT INTO items VALUES(2, 'y', 0, 0, NULL, NULL)")
    c.start()
    c.wait_synced()
    b.stop()
    a.sql("DELETE FROM items WHERE id = 1")
    b.sql("UPDATE items SET b = 99 WHERE id = 1")  # later, but the row was deleted
    a.sql("DELETE FROM items WHERE id = 2")
    a.sql("INSERT INTO items VALUES(2, 'again', 1, 0, NULL, NULL)")
    b.start()
    try:
        c.wait_synced()
        assert a.sql("SELECT id, a FROM items") == [(2, "again")]
        rules = a.sql("SELECT rule, col, winner FROM rep_conflict") + \
            b.sql("SELECT rule, col, winner FROM rep_conflict")
        assert ("update-vs-delete", "b", "local") in rules
    finally:
        c.stop()


def test_bad_row_is_quarantined_and_does_not_block(tmp_path):
    c = Cluster(tmp_path, 2)
    c.init()
    a, b = c.sites
    b.sql("CREATE UNIQUE INDEX only_on_b ON items(d)")  # a constraint only b has
    c.start()
    try:
        a.sql("INSERT INTO items VALUES(1, 'x', 0, 0, 'same', NULL)")
        a.sql("INSERT INTO items VALUES(2, 'y', 0, 0, 'same', NULL)")  # violates at b
        a.sql("INSERT INTO items VALUES(3, 'z', 0, 0, 'other', NULL)")
        wait_for(lambda: b.sql("SELECT count(*) FROM items") == [(2,)], what="rows 1 and 3 at b")
        q = b.sql("SELECT tbl, pk, kind, error FROM rep_quarantine")
        assert len(q) == 1 and q[0][:3] == ("items", "2", "constraint"), q
        assert "UNIQUE" in q[0][3]
        assert b.status()["quarantined"] == 1
        # fix the cause: the retry applies it without any resend
        b.sql("DROP INDEX only_on_b")
        c.wait_synced()
        assert b.sql("SELECT count(*) FROM rep_quarantine") == [(0,)]
    finally:
        c.stop()


def test_future_stamped_change_is_held_back_until_the_clock_catches_up(tmp_path):
    c = Cluster(tmp_path, 2, extra="  max_clock_skew: 1s\n")
    c.init()
    a, b = c.sites
    # Site a's clock jumps 4 s ahead: its next change is stamped in the future.
    ahead = (int(time.time() * 1000) + 4000) << 16
    a.sql("UPDATE rep_meta SET hlc = ?", (ahead,))
    a.sql("INSERT INTO items VALUES(1, 'future', 0, 0, NULL, NULL)")
    a.sql("UPDATE rep_meta SET hlc = hlc")  # keep
    c.start()
    try:
        wait_for(lambda: b.status()["held_future"] == 1, what="the change to be held")
        assert b.sql("SELECT count(*) FROM items") == [(0,)]
        # not rewritten: once b's clock passes the stamp (+ skew), it applies unchanged
        wait_for(lambda: b.sql("SELECT a FROM items") == [("future",)], 10,
                 "the held change to apply")
        assert b.sql("SELECT v_a >> 16 FROM rep_c_items")[0][0] >= ahead >> 16
        assert b.status()["held_future"] == 0
    finally:
        c.stop()


def test_wrong_key_and_garbage_are_refused_without_harm(tmp_path):
    c = Cluster(tmp_path, 2)
    c.init()
    a, b = c.sites
    other_key = os.path.join(c.dir, "other.key")
    with open(other_key, "w") as f:
        f.write("11" * 32 + "\n")
    with open(b.conf) as f:
        text = f.read()
    with open(b.conf, "w") as f:
        f.write(text.replace(c.key, other_key))
    c.start()
    try:
        a.sql("INSERT INTO items VALUES(1, 'secret', 0, 0, NULL, NULL)")
        # garbage and a truncated handshake on the listening port
        for payload in (b"\x00" * 100, b"MSSH\x01\x00", os.urandom(5000)):
            s = socket.create_connection(("127.0.0.1", a.port))
            s.sendall(payload)
            s.close()
        time.sleep(1.0)
        assert a.alive() and b.alive()
        assert b.sql("SELECT count(*) FROM items") == [(0,)]
        assert a.status()["peers"][0]["out"] != "ready"
    finally:
        c.stop()


def test_added_column_needs_no_stop(tmp_path):
    c = Cluster(tmp_path, 2)
    c.init()
    c.start()
    a, b = c.sites
    try:
        a.sql("ALTER TABLE items ADD COLUMN f TEXT")
        a.sql("INSERT INTO items(id, a, f) VALUES(1, 'x', 'new column')")
        wait_for(lambda: b.status()["quarantined"] == 1, what="change with unknown column held")
        b.sql("ALTER TABLE items ADD COLUMN f TEXT")
        c.wait_synced()
        assert b.sql("SELECT a, f FROM items") == [("x", "new column")]
        b.sql("UPDATE items SET f = 'back' WHERE id = 1")
        wait_for(lambda: a.sql("SELECT f FROM items") == [("back",)], what="b's change of f")
    finally:
        c.stop()


@pytest.mark.parametrize("point", ["apply.begin:2", "apply.entry:7", "apply.cursor:2",
                                   "apply.commit:2", "apply.committed:2"])
def test_exactly_once_across_a_crash_at_every_apply_step(tmp_path, point):
    c = Cluster(tmp_path, 2, extra="  batch_rows: 5\n")
    c.init()
    a, b = c.sites
    n = 40
    for i in range(n):
        a.sql("INSERT INTO items(id, a, b) VALUES(?, 'r', ?)", (i, i))
    a.start()
    b.start(env={"MS_SYNC_FAULT": point})
    try:
        wait_for(lambda: not b.alive(), 10, "the fault to kill the receiver")
        b.proc = None
        b.start()
        c.wait_synced()
        st = b.status()
        # every change applied exactly once: the count commits with the cursor and the rows
        assert st["peers"][0]["applied"] == n, st
        assert b.sql("SELECT count(*), sum(b) FROM items") == [(n, n * (n - 1) // 2)]
    finally:
        c.stop()


def test_new_site_joins_from_a_copy_of_a_running_site(tmp_path):
    c = Cluster(tmp_path, 3)
    s1, s2, s3 = c.sites
    s1.run("init")
    s2.run("init")
    s1.start()
    s2.start()
    try:
        for i in range(50):
            s1.sql("INSERT INTO items(id, a) VALUES(?, 'one')", (i,))
            s2.sql("INSERT INTO items(id, a) VALUES(?, 'two')", (1000 + i,))
        wait_for(lambda: c.dump(s1) == c.dump(s2) and len(c.dump(s1)) == 100,
                 what="sites 1 and 2 in step")
        for f in (s3.db, s3.db + "-wal", s3.db + "-shm"):
            if os.path.exists(f):
                os.remove(f)
        r = s3.run("join", "--from", s1.db)
        assert "created from" in r.stdout
        r = s3.run("join", "--from", s1.db, check=False)
        assert r.returncode != 0 and "exists" in r.stderr  # never overwrites a database
        s2.sql("UPDATE items SET a = 'after-copy' WHERE id = 1000")  # s3 must still get it
        s3.start()
        c.wait_synced(60)
        s3.sql("INSERT INTO items(id, a) VALUES(5000, 'three')")
        c.wait_synced(60)
        assert s1.sql("SELECT a FROM items WHERE id = 5000") == [("three",)]
        assert s3.sql("SELECT a FROM items WHERE id = 1000") == [("after-copy",)]
        # the copy already held site 1's changes: they were not sent again
        st = s3.status()
        from_s1 = [p for p in st["peers"] if p["id"] == 1][0]
        assert from_s1["applied"] < 10, from_s1
    finally:
        c.stop()


def _sqlite_state(path, con):
    """What a write would change: the bytes of the database and of its WAL (absent: empty, as
    any reader of a WAL database may create it empty), the commit counter seen by a connection
    held across (PRAGMA data_version), the schema version and the schema itself."""
    import hashlib

    def digest(p):
        try:
            with open(p, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except FileNotFoundError:
            return hashlib.sha256(b"").hexdigest()
    return (digest(path), digest(path + "-wal"),
            con.execute("PRAGMA data_version").fetchone()[0],
            con.execute("PRAGMA schema_version").fetchone()[0],
            con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall())


def test_status_with_the_agent_down_is_read_only(tmp_path):
    """`status` with the agent down opens the database read-only: it writes nothing (the file
    and its WAL are byte-identical, no commit, same schema), it does not fold the capture log,
    yet its backlog counts the changes still in the log, each row once, as the agent's does
    once it runs. On a database where init never ran it fails with a clear error and creates
    nothing; a missing database file is not created."""
    import sqlite3
    c = Cluster(tmp_path, 2)
    a, b = c.sites
    a.run("init")  # b: never initialised
    try:
        a.sql("INSERT INTO items(id, a) VALUES(1, 'one')")
        a.start()
        wait_for(lambda: a.status()["peers"][0]["backlog"] == 1, what="row 1 in the backlog")
        a.stop()
        hold = sqlite3.connect(a.db, isolation_level=None)  # an application, open across
        hold.execute("INSERT INTO items(id, a) VALUES(2, 'two')")
        hold.execute("INSERT INTO items(id, a) VALUES(3, 'three')")
        hold.execute("UPDATE items SET a = 'uno' WHERE id = 1")  # has an entry and a log row
        hold.execute("UPDATE items SET a = 'dos' WHERE id = 2")  # two log rows, one row
        assert hold.execute("SELECT count(*) FROM rep_l_items").fetchone() == (4,)
        before = _sqlite_state(a.db, hold)
        st = a.status()
        text = a.run("status").stdout
        assert _sqlite_state(a.db, hold) == before
        assert st["agent"] == "down" and st["database_ok"] is True, st
        assert st["peers"][0]["backlog"] == 3 and st["peers"][0]["lag_ms"] > 0, st
        assert "agent down" in text and " 3 " in text.splitlines()[2], text
        # not folded: the log and the change table are as they were
        assert hold.execute("SELECT count(*) FROM rep_l_items").fetchone() == (4,)
        assert hold.execute("SELECT id FROM rep_c_items").fetchall() == [(1,)]
        hold.close()
        a.start()  # the agent folds before it counts: the same backlog
        assert a.status()["agent"] == "running"
        assert a.status()["peers"][0]["backlog"] == 3
        assert a.sql("SELECT count(*) FROM rep_l_items") == [(0,)]

        hold = sqlite3.connect(b.db, isolation_level=None)
        before = _sqlite_state(b.db, hold)
        r = b.run("status", check=False)
        assert r.returncode != 0 and r.stdout == ""
        assert "capture is not installed" in r.stderr and "multisite-syncd init" in r.stderr, \
            r.stderr
        assert _sqlite_state(b.db, hold) == before
        assert hold.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'rep%'"
                            ).fetchone() == (0,)
        hold.close()

        b.db = os.path.join(c.dir, "missing.sqlite")
        b.write_conf()
        r = b.run("status", "--json", check=False)
        assert r.returncode != 0 and "cannot open" in r.stderr, r.stderr
        assert not os.path.exists(b.db)
    finally:
        c.stop()


def synced_then_a_down(tmp_path):
    """Two sites that exchanged one row (id 1), then site a's agent stopped: what a writes
    now stays in its capture log. Returns (cluster, a, b); the caller stops the cluster."""
    c = Cluster(tmp_path, 2)
    c.init()
    c.start()
    try:
        a, b = c.sites
        a.sql("INSERT INTO items(id, a) VALUES(1, 'seen')")
        c.wait_synced()
        a.stop()
    except BaseException:
        c.stop()
        raise
    return c, a, b


def test_init_with_unfolded_changes_leaves_them_to_the_fold(tmp_path):
    """Init (run by the agent at start and by `init`) gives
    the rows that existed before capture an entry each. A row whose insert is still in the
    capture log is not one of them: an entry made by init would be positioned above the
    logged change, could be sent there, and would then move below the peers' cursor when the
    log is folded: positions must never go backwards."""
    c, a, b = synced_then_a_down(tmp_path)
    try:
        a.sql("INSERT INTO items(id, a) VALUES(2, 'new')")  # logged, not folded: agent down
        logged = a.sql("SELECT ms FROM rep_l_items WHERE id = 2")
        assert len(logged) == 1
        before = a.sql("SELECT max(seq) FROM rep_c_items")[0][0]
        a.run("init")
        assert a.sql("SELECT count(*) FROM rep_c_items WHERE id = 2") == [(0,)]
        a.start()
        c.wait_synced()
        q = "SELECT id, v_a, s_a, seq FROM rep_c_items WHERE id = 2"
        got = a.sql(q)
        assert len(got) == 1 and got[0][1] == got[0][3] and got[0][2] == 1, got
        # the fold stamps the change with the wall clock of the write (later than every
        # earlier position here), and b has the same version
        assert got[0][1] == logged[0][0] << 16 and got[0][3] > before, (got, logged, before)
        assert b.sql("SELECT id, v_a, s_a FROM rep_c_items WHERE id = 2") == [got[0][:3]]
    finally:
        c.stop()


def test_fold_reads_a_log_row_of_an_earlier_version(tmp_path):
    """Capture logs written before the wall-clock column carry the position in seq and no ms:
    the fold keeps that position (when it is above everything folded), so an upgrade loses
    or renumbers nothing. Without the ms-NULL rule the row would be stamped from NULL."""
    c, a, b = synced_then_a_down(tmp_path)
    try:
        a.sql("INSERT INTO items(id, a) VALUES(7, 'old-format')")
        a.sql("DELETE FROM rep_l_items")
        pos = (int(time.time() * 1000) << 16) + 5
        a.sql("INSERT INTO rep_l_items(seq, id, op, mask, ms) VALUES(?, 7, 1, 31, NULL)", (pos,))
        a.start()
        c.wait_synced()
        q = "SELECT a, v_a, s_a, seq FROM items JOIN rep_c_items USING (id) WHERE id = 7"
        assert a.sql(q) == [("old-format", pos, 1, pos)]
        assert b.sql("SELECT a, v_a, s_a FROM items JOIN rep_c_items USING (id) WHERE id = 7") \
            == [("old-format", pos, 1)]
    finally:
        c.stop()


def test_agent_waits_for_a_database_busy_at_start(tmp_path):
    """An application holding the write lock longer than the busy handler waits (about 5 s;
    seen on a loaded machine with a disk stalled in fsync) does not make the agent exit at
    start: it waits for the database and then runs."""
    import sqlite3
    c = Cluster(tmp_path, 2)
    c.init()
    a, b = c.sites
    b.start()
    con = sqlite3.connect(a.db, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO items(id, a) VALUES(1, 'held')")
        a.proc = subprocess.Popen([SYNCD, "-c", a.conf], stdout=open(a.log, "a"),
                                  stderr=subprocess.STDOUT)
        # The busy handler gives up after about 5 s; the agent must then wait, not exit.
        wait_for(lambda: "waiting for the database" in a.logtext() or not a.alive(), 30,
                 "the agent to outlast its busy handler")
        time.sleep(0.5)
        assert a.alive(), a.logtext()
        con.execute("COMMIT")
        wait_for(lambda: os.path.exists(a.sock) or not a.alive(), 20, "the agent to start")
        assert a.alive(), a.logtext()
        c.wait_synced()
        assert b.sql("SELECT a FROM items") == [("held",)]
    finally:
        con.close()
        c.stop()
