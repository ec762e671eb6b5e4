/* sqlite_life.c: site lifecycle in the SQLite backend (docs/sync.md §9): the backlog limit
 * (how old a peer's oldest unacknowledged change is; the must-rejoin mark in rep_peer),
 * forgetting a peer, and purging tombstones.
 *
 * What is "kept" for a peer here is the position rep_meta.acked: the slowest peer's
 * acknowledged position, below which change masks are reset (fold) and tombstones may be
 * purged. A peer marked must-rejoin no longer counts in it, so it holds nothing back. */
#include "sync/sqlite_int.h"

static int64_t q_int(sq_db_t *s, const char *sql, int64_t bind1)
{
    sqlite3_stmt *st = NULL;
    int64_t v = 0;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_bind_parameter_count(st) > 0) {
            sqlite3_bind_int64(st, 1, bind1);
        }
        if (sqlite3_step(st) == SQLITE_ROW) {
            v = sqlite3_column_int64(st, 0);
        }
    }
    sqlite3_finalize(st);
    return v;
}

int sync_sq_life_schema(sq_db_t *s)
{
    if (q_int(s, "SELECT count(*) FROM pragma_table_info('rep_peer') WHERE name = 'rejoin_ms'", 0) >
        0) {
        return 0;
    }
    return sync_sq_exec(s, "ALTER TABLE rep_peer ADD COLUMN rejoin_ms INTEGER NOT NULL DEFAULT 0;"
                           "ALTER TABLE rep_peer ADD COLUMN rejoin_why TEXT");
}

/* rep_meta.acked = the slowest configured peer's position, peers marked must-rejoin left out;
 * with none left, everything (the HLC high-water mark): there is nobody to keep changes for. */
void sync_sq_acked_sql(buf_t *b, const sync_conf_t *c)
{
    buf_printf(b, "UPDATE rep_meta SET acked = coalesce((SELECT min(coalesce(p.acked, 0)) FROM "
                  "(SELECT 0 AS site");
    for (size_t i = 0; i < c->npeers; i++) {
        buf_printf(b, " UNION ALL SELECT %u", c->peers[i].id);
    }
    buf_printf(b, ") q LEFT JOIN rep_peer p ON p.site = q.site WHERE q.site != 0 AND "
                  "coalesce(p.rejoin_ms, 0) = 0), hlc);");
}

static int recompute(sq_db_t *s, const char *before)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "BEGIN IMMEDIATE; %s", before);
    sync_sq_acked_sql(&b, s->base.conf);
    buf_printf(&b, "COMMIT;");
    int rc = sync_sq_exec(s, sync_sq_cstr(&b));
    if (rc != 0) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    }
    buf_deinit(&b);
    return rc;
}

int sync_sq_oldest(sync_db_t *db, uint32_t peer, uint64_t *oldest_ms)
{
    sq_db_t *s = (sq_db_t *)db;
    int64_t acked = q_int(s, "SELECT acked FROM rep_peer WHERE site = ?", peer);
    uint64_t oldest = 0;
    for (size_t k = 0; k < s->nt; k++) {
        char *sql = xasprintf("SELECT min(seq) FROM \"rep_c_%s\" WHERE seq > ?", s->t[k].name);
        uint64_t m = (uint64_t)q_int(s, sql, acked);
        free(sql);
        oldest = m && (!oldest || m < oldest) ? m : oldest;
    }
    *oldest_ms = SYNC_HLC_WALL(oldest);
    /* Changes not folded yet are pending for every peer too: their write time is in the log
     * (a row of an earlier version has its position in seq instead). */
    for (size_t k = 0; k < s->nt; k++) {
        char *sql =
            xasprintf("SELECT min(coalesce(ms, seq >> 16)) FROM \"rep_l_%s\"", s->t[k].name);
        uint64_t m = (uint64_t)q_int(s, sql, 0);
        free(sql);
        *oldest_ms = m && (!*oldest_ms || m < *oldest_ms) ? m : *oldest_ms;
    }
    return 0;
}

int sync_sq_peer_get(sync_db_t *db, uint32_t peer, uint64_t *since_ms, char *why, size_t whylen)
{
    sq_db_t *s = (sq_db_t *)db;
    sqlite3_stmt *st = NULL;
    *since_ms = 0;
    why[0] = '\0';
    if (sqlite3_prepare_v2(s->db, "SELECT rejoin_ms, rejoin_why FROM rep_peer WHERE site = ?", -1,
                           &st, NULL) != SQLITE_OK) {
        return MS_EDB;
    }
    sqlite3_bind_int64(st, 1, peer);
    if (sqlite3_step(st) == SQLITE_ROW) {
        *since_ms = (uint64_t)sqlite3_column_int64(st, 0);
        const char *w = (const char *)sqlite3_column_text(st, 1);
        snprintf(why, whylen, "%s", w ? w : "");
    }
    sqlite3_finalize(st);
    return 0;
}

int sync_sq_peer_mark(sync_db_t *db, uint32_t peer, const char *why)
{
    sq_db_t *s = (sq_db_t *)db;
    char *q = sqlite3_mprintf("INSERT INTO rep_peer(site, acked, rejoin_ms, rejoin_why) "
                              "VALUES(%u, 0, %lld, %Q) ON CONFLICT(site) DO UPDATE SET "
                              "rejoin_ms = excluded.rejoin_ms, rejoin_why = excluded.rejoin_why;",
                              peer, (long long)time_wall_ms(), why);
    int rc = recompute(s, q);
    sqlite3_free(q);
    return rc;
}

int sync_sq_peer_forget(sync_db_t *db, uint32_t peer, bool readmit)
{
    char q[256];
    snprintf(q, sizeof(q),
             "DELETE FROM rep_peer WHERE site = %u; DELETE FROM rep_inbound WHERE origin = %u;"
             "INSERT INTO rep_peer(site, acked) SELECT %u, acked FROM rep_meta WHERE %d;",
             peer, peer, peer, readmit ? 1 : 0);
    return recompute((sq_db_t *)db, q);
}

/* A tombstone goes when its delete is older than the horizon and every counted peer has
 * acknowledged the row's latest local change (seq <= rep_meta.acked; a delete applied from
 * another site does not move seq, it is that site's to send). Tables with quarantined changes
 * (other than stale ones) keep theirs: a retry must still find the row's history. Folded first, in
 * the same transaction, so an insert still in the capture log is never separated from its
 * tombstone. */
int sync_sq_purge(sync_db_t *db, uint64_t horizon_hlc, uint64_t *purged)
{
    sq_db_t *s = (sq_db_t *)db;
    *purged = 0;
    if (horizon_hlc == 0 || s->nt == 0) {
        return 0;
    }
    if (sync_sq_exec(s, "BEGIN IMMEDIATE") != 0) {
        return MS_EDB;
    }
    int rc = sync_sq_fold(s);
    for (size_t k = 0; rc == 0 && k < s->nt; k++) {
        char *q = sqlite3_mprintf(
            "DELETE FROM \"rep_c_%w\" WHERE cl %% 2 = 0 AND clh < %lld AND seq <= (SELECT acked "
            "FROM rep_meta) AND NOT EXISTS (SELECT 1 FROM rep_quarantine WHERE tbl = %Q AND kind "
            "!= 'stale')",
            s->t[k].name, (long long)horizon_hlc, s->t[k].name);
        rc = sync_sq_exec(s, q);
        sqlite3_free(q);
        *purged += rc == 0 ? (uint64_t)sqlite3_changes(s->db) : 0;
    }
    if (rc == 0 && sync_sq_exec(s, "COMMIT") == 0) {
        return 0;
    }
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    *purged = 0;
    return MS_EDB;
}

int sync_sq_purge_quarantine(sync_db_t *db, uint64_t before_ms, uint64_t *purged)
{
    sq_db_t *s = (sq_db_t *)db;
    *purged = 0;
    /* Look first: a DELETE takes the write lock even when it finds nothing. */
    if (q_int(s, "SELECT count(*) FROM rep_quarantine WHERE first_ms < ?", (int64_t)before_ms) ==
        0) {
        return 0;
    }
    char *q =
        sqlite3_mprintf("DELETE FROM rep_quarantine WHERE first_ms < %lld", (long long)before_ms);
    int rc = sync_sq_exec(s, q);
    sqlite3_free(q);
    *purged = rc == 0 ? (uint64_t)sqlite3_changes(s->db) : 0;
    return rc;
}
