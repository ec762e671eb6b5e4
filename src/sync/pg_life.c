/* pg_life.c: site lifecycle in the PostgreSQL backend (docs/sync.md §9): the backlog limit
 * (how old a peer's oldest unacknowledged change is; the must-rejoin mark in rep_peer),
 * forgetting a peer, purging tombstones, and `join` (a copy of a running site's database).
 *
 * What is kept for the peers is the ticks from the slowest peer's position on (rep_meta.acked,
 * ticks before it are deleted): a peer marked must-rejoin no longer counts, so it holds
 * nothing back, and its position may then name a tick that is gone. That is why it is refused
 * until it re-joins: resuming from a lost tick would resend from the start, not the backlog. */
#include "sync/pg_int.h"

void sync_pg_acked_sql(buf_t *b, const sync_conf_t *c)
{
    buf_printf(b, "UPDATE rep_meta SET acked = coalesce((SELECT min(coalesce(p.acked, 0)) FROM "
                  "(VALUES (0)");
    for (size_t i = 0; i < c->npeers; i++) {
        buf_printf(b, ", (%u)", c->peers[i].id);
    }
    /* With no peer left to keep changes for, everything counts as acknowledged. */
    buf_printf(b,
               ") q(site) LEFT JOIN rep_peer p ON p.site = q.site WHERE q.site != 0 AND "
               "coalesce(p.rejoin_ms, 0) = 0), (SELECT coalesce(max(id), 0) << %d FROM rep_tick));"
               /* ticks before the slowest peer's position are never needed again */
               "DELETE FROM rep_tick WHERE id < (SELECT acked >> %d FROM rep_meta);",
               PG_PART_BITS, PG_PART_BITS);
}

static int recompute(pg_db_t *s, const char *before, int n, const char *const *params)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "BEGIN");
    int rc = sync_pg_ex(s, sync_pg_cstr(&b));
    PGresult *r = rc == 0 ? sync_pg_q(s, before, n, params) : NULL;
    PQclear(r);
    buf_reset(&b);
    sync_pg_acked_sql(&b, s->base.conf);
    buf_printf(&b, "COMMIT");
    rc = r ? sync_pg_ex(s, sync_pg_cstr(&b)) : MS_EDB;
    if (rc != 0) {
        PQclear(PQexec(s->pc, "ROLLBACK"));
    }
    buf_deinit(&b);
    return rc;
}

static int64_t peer_acked(pg_db_t *s, uint32_t peer)
{
    char sql[96];
    snprintf(sql, sizeof(sql), "SELECT acked FROM rep_peer WHERE site = %u", peer);
    return sync_pg_q_int(s, sql);
}

int sync_pg_oldest(sync_db_t *db, uint32_t peer, uint64_t *oldest_ms)
{
    pg_db_t *s = (pg_db_t *)db;
    int64_t acked = peer_acked(s, peer);
    uint64_t oldest = 0;
    for (size_t k = 0; k < s->nt; k++) {
        /* Not visible in the snapshot of the peer's tick: committed after it (the xid index
         * serves xid >= xmin). Parts of that window count as acknowledged, as in status. */
        char *sql = xasprintf(
            "SELECT min(lh) FROM \"rep_c_%s\", (SELECT (SELECT snap FROM rep_tick WHERE id = "
            "%lld) AS snap) t WHERE xid IS NOT NULL AND (%lld = 0 OR (xid >= "
            "pg_snapshot_xmin(t.snap) AND NOT pg_visible_in_snapshot(xid, t.snap)))",
            s->t[k].name, (long long)(acked >> PG_PART_BITS), (long long)acked);
        uint64_t m = (uint64_t)sync_pg_q_int(s, sql);
        free(sql);
        oldest = m && (!oldest || m < oldest) ? m : oldest;
    }
    *oldest_ms = SYNC_HLC_WALL(oldest);
    return 0;
}

int sync_pg_peer_get(sync_db_t *db, uint32_t peer, uint64_t *since_ms, char *why, size_t whylen)
{
    pg_db_t *s = (pg_db_t *)db;
    char sql[96];
    snprintf(sql, sizeof(sql), "SELECT rejoin_ms, rejoin_why FROM rep_peer WHERE site = %u", peer);
    PGresult *r = sync_pg_q(s, sql, 0, NULL);
    *since_ms = 0;
    why[0] = '\0';
    if (!r) {
        return MS_EDB;
    }
    if (PQntuples(r) > 0) {
        *since_ms = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        snprintf(why, whylen, "%s", PQgetvalue(r, 0, 1));
    }
    PQclear(r);
    return 0;
}

int sync_pg_peer_mark(sync_db_t *db, uint32_t peer, const char *why)
{
    char p[16], now[32];
    snprintf(p, sizeof(p), "%u", peer);
    snprintf(now, sizeof(now), "%llu", (unsigned long long)time_wall_ms());
    const char *params[3] = {p, now, why};
    return recompute((pg_db_t *)db,
                     "INSERT INTO rep_peer(site, acked, rejoin_ms, rejoin_why) VALUES($1::int, 0, "
                     "$2::bigint, $3) ON CONFLICT (site) DO UPDATE SET rejoin_ms = "
                     "excluded.rejoin_ms, rejoin_why = excluded.rejoin_why",
                     3, params);
}

int sync_pg_peer_forget(sync_db_t *db, uint32_t peer, bool readmit)
{
    char q[256];
    snprintf(q, sizeof(q),
             "DELETE FROM rep_peer WHERE site = %u; DELETE FROM rep_inbound WHERE origin = %u;"
             "INSERT INTO rep_peer(site, acked) SELECT %u, acked FROM rep_meta WHERE %s",
             peer, peer, peer, readmit ? "true" : "false");
    return recompute((pg_db_t *)db, q, 0, NULL);
}

/* A tombstone goes when its delete is older than the horizon and every counted peer has
 * acknowledged the row's latest local change: its xid is visible in the snapshot of the
 * slowest peer's tick when that peer acknowledged the tick's last part, else in the one before
 * (lo_snap: that whole window and everything before it is acknowledged), or it has none (the delete
 * was applied from another site, whose to send it is). Tables with quarantined changes other than
 * stale ones keep theirs: a retry must still find the row's history. One statement per table, so a
 * concurrent re-insert either sees the tombstone (and counts on from it) or inserts after it is
 * gone. */
int sync_pg_purge(sync_db_t *db, uint64_t horizon_hlc, uint64_t *purged)
{
    pg_db_t *s = (pg_db_t *)db;
    *purged = 0;
    for (size_t k = 0; horizon_hlc && k < s->nt; k++) {
        const char *T = s->t[k].name;
        char *sql = xasprintf(
            "DELETE FROM \"rep_c_%s\" WHERE cl %% 2 = 0 AND clh < %lld AND (xid IS NULL OR "
            "pg_visible_in_snapshot(xid, (SELECT CASE WHEN (m.acked & %d) + 1 >= "
            "coalesce(array_length(t.bounds, 1), 1) THEN t.snap ELSE t.lo_snap END FROM rep_tick "
            "t, rep_meta m WHERE t.id = m.acked >> %d))) AND NOT EXISTS (SELECT 1 FROM "
            "rep_quarantine WHERE tbl = '%s' AND kind != 'stale')",
            T, (long long)horizon_hlc, (1 << PG_PART_BITS) - 1, PG_PART_BITS, T);
        PGresult *r = sync_pg_q(s, sql, 0, NULL);
        free(sql);
        if (!r) {
            return MS_EDB;
        }
        *purged += strtoull(PQcmdTuples(r), NULL, 10);
        PQclear(r);
    }
    return 0;
}
