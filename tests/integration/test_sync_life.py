"""Integration tests of the site lifecycle (docs/sync.md §9): the backlog limit and the
must-rejoin refusal, removing a peer for good, tombstone clean-up, and re-joining; on SQLite
and on a real PostgreSQL 15."""

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sync_harness import PGBIN, Cluster, wait_for  # noqa: E402

PG_ITEMS = ("CREATE TABLE items(id bigint PRIMARY KEY, a text, b bigint, c double precision, "
            "d text, e bytea)")
HAVE_PG = os.path.exists(PGBIN + "/initdb")

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
    not HAVE_PG, reason="PostgreSQL 15 is not installed (scripts/deps.sh)"))]


def make(tmp_path, n, backend, extra):
    schema = PG_ITEMS if backend == "postgresql" else None
    kw = {"schema": schema} if schema else {}
    return Cluster(tmp_path, n, extra=extra, backend=backend, **kw)


def peer(site, pid):
    return [p for p in site.status()["peers"] if p["id"] == pid][0]


def tombstones(site):
    return site.sql("SELECT count(*) FROM rep_c_items WHERE (cl & 1) = 0")[0][0]


def empty_database(c, site):
    """Move a site's database away: join makes a new one (PostgreSQL: an empty database)."""
    if site.backend == "postgresql":
        site.script("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        return
    for f in (site.db, site.db + "-wal", site.db + "-shm"):
        if os.path.exists(f):
            os.remove(f)


def drop_conf_peer(site, name):
    with open(site.conf) as f:
        lines = [ln for ln in f if "name: %s," % name not in ln]
    with open(site.conf, "w") as f:
        f.writelines(lines)


@pytest.mark.parametrize("backend", BACKENDS)
def test_peer_past_the_backlog_limit_must_rejoin_and_is_refused(tmp_path, backend):
    c = make(tmp_path, 2, backend, "  max_peer_offline: 2s\n")
    s1, s2 = c.sites
    c.init()
    c.start()
    try:
        s1.sql("INSERT INTO items(id, a) VALUES(1, 'before')")
        c.wait_synced()
        s2.stop()
        s1.sql("INSERT INTO items(id, a) VALUES(2, 'while-away')")
        # Within the limit the backlog is kept, and the peer is not marked.
        assert peer(s1, 2)["must_rejoin"] is False and peer(s1, 2)["backlog"] >= 1
        wait_for(lambda: peer(s1, 2)["must_rejoin"], 15, "site 1 to mark site 2 must-rejoin")
        p = peer(s1, 2)
        assert "max_peer_offline" in p["rejoin_reason"] and p["rejoin_since_ms"] > 0, p
        assert "must re-join" in s1.logtext()
        txt = s1.run("status").stdout
        assert "peer s2 must re-join" in txt, txt
        # It no longer holds anything back: the slowest position moved past the backlog.
        if backend == "sqlite":
            assert s1.sql("SELECT acked >= (SELECT max(seq) FROM rep_c_items) FROM rep_meta")[0][0]
        else:
            wait_for(lambda: s1.sql("SELECT count(*) FROM rep_tick")[0][0] <= 1, 10,
                     "ticks kept for site 2 to be released")
        # The mark is persisted: a restarted agent still refuses the peer.
        s1.stop()
        s1.start()
        assert peer(s1, 2)["must_rejoin"] is True
        s2.sql("INSERT INTO items(id, a) VALUES(3, 'stale-site')")
        s2.start()
        wait_for(lambda: "re-join required" in peer(s2, 1)["refuses_us"], 15,
                 "site 2 to be told it must re-join")
        assert "re-join required" in s2.logtext()
        assert "refusing site s2" in s1.logtext()
        assert "refuses this site" in s2.run("status").stdout
        time.sleep(1.5)  # several redials: still nothing crosses, either way
        assert s2.sql("SELECT id FROM items ORDER BY id") == [(1,), (3,)]
        assert s1.sql("SELECT id FROM items ORDER BY id") == [(1,), (2,)]
        assert peer(s1, 2)["applied"] == 0  # nothing of the refused site was applied
        # Re-join: a fresh copy of a running site, then readmit it where it was refused.
        s2.stop()
        empty_database(c, s2)
        r = s1.run("readmit-peer", "2")
        assert "readmitted" in r.stdout
        s2.run("join", "--from", s1.db)
        s2.start()
        wait_for(lambda: peer(s1, 2)["must_rejoin"] is False, 15, "site 1 to readmit site 2")
        s2.sql("INSERT INTO items(id, a) VALUES(4, 'after-rejoin')")
        c.wait_synced(30)
        assert c.dump(s1) == c.dump(s2)
        assert [r[0] for r in c.dump(s1)] == [1, 2, 4]
    finally:
        c.stop()


@pytest.mark.parametrize("cmd", ["remove-peer", "readmit-peer"])
@pytest.mark.parametrize("arg", ["abc", "0", "-1", "65536", "2x", "", "99999999999999999999"])
def test_peer_commands_refuse_a_bad_site_id(tmp_path, cmd, arg):
    c = make(tmp_path, 2, "sqlite", "")
    s1 = c.sites[0]
    c.init()
    try:
        before = s1.sql("SELECT count(*) FROM rep_peer")
        r = s1.run(cmd, arg, check=False)
        # "-1" reads as an unknown option: the usage text, as for any bad option
        want = "usage: multisite-syncd" if arg == "-1" else "expected a site id (1..65535)"
        assert r.returncode != 0 and want in r.stderr, r.stderr
        assert s1.sql("SELECT count(*) FROM rep_peer") == before
    finally:
        c.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_peer_forgets_it_and_releases_its_backlog(tmp_path, backend):
    c = make(tmp_path, 2, backend, "  max_peer_offline: 1h\n")
    s1, s2 = c.sites
    c.init()
    c.start()
    try:
        s1.sql("INSERT INTO items(id, a) VALUES(1, 'x')")
        s2.sql("INSERT INTO items(id, a) VALUES(100, 'y')")
        c.wait_synced()
        s2.kill9()
        for i in range(2, 6):
            s1.sql("INSERT INTO items(id, a) VALUES(?, 'kept-for-s2')", (i,))
        wait_for(lambda: peer(s1, 2)["backlog"] == 4, 10, "backlog for site 2")
        r = s1.run("remove-peer", "2", check=False)
        assert r.returncode != 0 and "still listed in sync.peers" in r.stderr, r.stderr
        drop_conf_peer(s1, "s2")
        r = s1.run("remove-peer", "2", check=False)
        assert r.returncode != 0 and "agent is running" in r.stderr, r.stderr
        s1.stop()
        assert s1.sql("SELECT count(*) FROM rep_peer WHERE site = 2")[0][0] == 1
        assert s1.sql("SELECT count(*) FROM rep_inbound WHERE origin = 2")[0][0] == 1
        r = s1.run("remove-peer", "2")
        assert "removed" in r.stdout
        assert s1.sql("SELECT count(*) FROM rep_peer WHERE site = 2")[0][0] == 0
        assert s1.sql("SELECT count(*) FROM rep_inbound WHERE origin = 2")[0][0] == 0
        if backend == "sqlite":
            assert s1.sql("SELECT acked >= (SELECT max(seq) FROM rep_c_items) FROM rep_meta")[0][0]
        else:
            assert s1.sql("SELECT count(*) FROM rep_tick")[0][0] <= 1
        s1.start()
        st = s1.status()
        assert [p["id"] for p in st["peers"]] == []
        s1.sql("INSERT INTO items(id, a) VALUES(9, 'alone')")
        assert s1.sql("SELECT count(*) FROM items")[0][0] == 7
    finally:
        c.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_tombstones_are_purged_and_a_late_change_cannot_resurrect(tmp_path, backend):
    extra = "  max_peer_offline: 3s\n  tombstone_retention: 3s\n  max_clock_skew: 1s\n"
    c = make(tmp_path, 3, backend, extra)
    s1, s2, s3 = c.sites
    c.init()
    c.start()
    try:
        for i in range(1, 6):
            s1.sql("INSERT INTO items(id, a, b) VALUES(?, 'v', 0)", (i,))
        c.wait_synced()
        s1.sql("DELETE FROM items WHERE id IN (1, 2)")
        c.wait_synced()
        t_del = time.time()
        # Kept while younger than the retention, at every site.
        assert [tombstones(s) for s in c.sites] == [2, 2, 2]
        wait_for(lambda: [tombstones(s) for s in c.sites] == [0, 0, 0], 20,
                 "tombstones to be purged everywhere")
        assert time.time() - t_del > 3.0  # never before tombstone_retention + max_clock_skew
        assert "purged 2 tombstone(s)" in s1.logtext()
        # A re-insert after the purge starts a new incarnation that every site takes, also
        # one that still holds the (expired) tombstone.
        s1.sql("DELETE FROM items WHERE id = 3")
        c.wait_synced()
        s3.stop()  # acknowledged the delete; keeps its tombstone (its agent purges, not up)
        wait_for(lambda: tombstones(s1) == 0, 20, "site 1 to purge the tombstone of 3")
        assert tombstones(s3) == 1
        s1.sql("INSERT INTO items(id, a, b) VALUES(3, 'reborn', 1)")
        s3.start()  # within max_peer_offline of the re-insert: not marked
        c.wait_synced(30)
        assert [c.dump(s) for s in c.sites] == [c.dump(s1)] * 3
        assert s3.sql("SELECT a FROM items WHERE id = 3") == [("reborn",)]
        # A late change to a purged row: site 2 changed row 4 while its agent was down and
        # missed the delete for longer than the limit. Site 1 refuses it (must re-join);
        # site 3, which purged the tombstone, quarantines the change instead of bringing
        # the row back.
        s2.stop()
        s2.sql("UPDATE items SET b = 42 WHERE id = 4")
        s1.sql("DELETE FROM items WHERE id = 4")
        wait_for(lambda: s3.sql("SELECT count(*) FROM items WHERE id = 4")[0][0] == 0, 10,
                 "delete of 4 at site 3")
        wait_for(lambda: tombstones(s3) == 0 and tombstones(s1) == 0, 20,
                 "tombstone of 4 purged at sites 1 and 3")
        wait_for(lambda: peer(s1, 2)["must_rejoin"], 10, "site 2 marked at site 1")
        s2.start()
        wait_for(lambda: s3.status()["quarantined"] >= 1, 15, "the stale change quarantined")
        q = s3.sql("SELECT kind, error FROM rep_quarantine")
        assert q and q[0][0] == "stale" and "re-join" in q[0][1], q
        assert s3.sql("SELECT count(*) FROM items WHERE id = 4")[0][0] == 0
        assert s1.sql("SELECT count(*) FROM items WHERE id = 4")[0][0] == 0
        wait_for(lambda: "re-join required" in peer(s2, 1)["refuses_us"], 15, "s2 refused")
    finally:
        c.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_quarantined_changes_expire_after_quarantine_retention(tmp_path, backend):
    """A quarantined change still failing quarantine_retention after it was first quarantined
    is deleted and counted in status (by its first quarantine, not its last attempt: the
    retry tries it every second); a younger one stays and is still retried."""
    c = make(tmp_path, 2, backend, "  quarantine_retention: 30s\n")
    s1, s2 = c.sites
    c.init()
    s2.script("CREATE UNIQUE INDEX only_on_2 ON items(d)")  # a constraint only site 2 has
    c.start()
    try:
        s1.sql("INSERT INTO items(id, a, d) VALUES(1, 'x', 'same')")
        s1.sql("INSERT INTO items(id, a, d) VALUES(2, 'y', 'same')")  # both violate at site 2
        s1.sql("INSERT INTO items(id, a, d) VALUES(3, 'z', 'same')")
        wait_for(lambda: s2.status()["quarantined"] == 2, 15, "two changes quarantined")
        assert s2.status()["quarantine_purged"] == 0
        # Row 2's change was quarantined an hour ago; the retry keeps its first_ms.
        s2.sql("UPDATE rep_quarantine SET first_ms = first_ms - 3600000 WHERE pk = '2'")
        wait_for(lambda: s2.sql("SELECT pk FROM rep_quarantine") == [("3",)], 15,
                 "the old quarantined change to be deleted")
        st = s2.status()
        assert st["quarantined"] == 1 and st["quarantine_purged"] == 1, st
        assert "expired from the quarantine" in s2.run("status").stdout
        assert "deleted 1 quarantined change(s)" in s2.logtext()
        # The young one is still retried and applies once the cause is gone; row 2 is lost
        # at site 2 (that is what the retention trades for a bounded quarantine).
        s2.script("DROP INDEX only_on_2")
        wait_for(lambda: s2.sql("SELECT id FROM items ORDER BY 1") == [(1,), (3,)], 15,
                 "row 3 applied on retry")
        assert s2.status()["quarantined"] == 0
    finally:
        c.stop()


def test_tombstone_retention_shorter_than_the_backlog_limit_is_refused(tmp_path):
    c = make(tmp_path, 2, "sqlite", "  max_peer_offline: 2d\n  tombstone_retention: 1d\n")
    try:
        r = c.sites[0].run("init", check=False)
        assert r.returncode != 0
        assert "tombstone_retention: 86400000ms is shorter than max_peer_offline" in r.stderr
    finally:
        c.stop()


@pytest.mark.skipif(not HAVE_PG, reason="PostgreSQL 15 is not installed (scripts/deps.sh)")
def test_new_pg_site_joins_from_a_copy_of_a_running_site(tmp_path):
    c = make(tmp_path, 3, "postgresql", "")
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
        r = s3.run("join", "--from", s1.db, check=False)
        assert r.returncode != 0 and "not empty" in r.stderr  # never overwrites a database
        empty_database(c, s3)
        r = s3.run("join", "--from", s1.db)
        assert "created from" in r.stdout
        assert s3.sql("SELECT site FROM rep_meta") == [(3,)]
        s2.sql("UPDATE items SET a = 'after-copy' WHERE id = 1000")  # s3 must still get it
        s1.sql("UPDATE items SET a = 'after-copy-1' WHERE id = 7")
        s3.start()
        c.wait_synced(60)
        s3.sql("INSERT INTO items(id, a) VALUES(5000, 'three')")
        c.wait_synced(60)
        assert s1.sql("SELECT a FROM items WHERE id = 5000") == [("three",)]
        assert s3.sql("SELECT a FROM items WHERE id = 1000") == [("after-copy",)]
        assert s3.sql("SELECT a FROM items WHERE id = 7") == [("after-copy-1",)]
        # the copy already held site 1's changes: they were not sent again
        st = s3.status()
        from_s1 = [p for p in st["peers"] if p["id"] == 1][0]
        assert from_s1["applied"] < 10, from_s1
        # and site 3 sent only what it changed itself
        assert [p for p in s1.status()["peers"] if p["id"] == 3][0]["applied"] == 1
    finally:
        c.stop()
