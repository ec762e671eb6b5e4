/* pg_life.c: site lifecycle in the PostgreSQL backend (docs/sync.md §9): the backlog limit
 * (how old a peer's oldest unacknowledged change is; the must-rejoin mark in rep_peer),
 * forgetting a peer, purging tombstones, and `join` (a copy of a running site's database,
 * made with pg_dump and pg_restore).
 *
 * What is kept for the peers is the ticks from the slowest peer's position on (rep_meta.acked,
 * ticks before it are deleted): a peer marked must-rejoin no longer counts, so it holds
 * nothing back, and its position may then name a tick that is gone. That is why it is refused
 * until it re-joins: resuming from a lost tick would resend from the start, not the backlog. */
#include "sync/pg_int.h"

#include <errno.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

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
        uint64_t lrows = 0, lh = 0;
        sync_pg_log_pending(s, k, &lrows, &lh);
        oldest = lh && (!oldest || lh < oldest) ? lh : oldest;
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

int sync_pg_purge_quarantine(sync_db_t *db, uint64_t before_ms, uint64_t *purged)
{
    char sql[96];
    snprintf(sql, sizeof(sql), "DELETE FROM rep_quarantine WHERE first_ms < %llu",
             (unsigned long long)before_ms);
    PGresult *r = sync_pg_q((pg_db_t *)db, sql, 0, NULL);
    int rc = r ? 0 : MS_EDB;
    *purged = r ? strtoull(PQcmdTuples(r), NULL, 10) : 0;
    PQclear(r);
    return rc;
}

/* ---- join: a new site from a copy of a running one ---- */

/* Run a PostgreSQL client program to completion: 0 when it exited 0. The programs come from
 * PATH (Debian's wrappers pick the installed version) or MS_PG_BINDIR. */
static int run_tool(const char *prog, char *const argv[], char *why, size_t whylen)
{
    const char *dir = getenv("MS_PG_BINDIR");
    char path[512];
    snprintf(path, sizeof(path), "%s%s%s", dir ? dir : "", dir ? "/" : "", prog);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, whylen, "fork: %s", strerror(errno));
        return MS_EIO;
    }
    if (pid == 0) {
        dir ? execv(path, argv) : execvp(prog, argv);
        fprintf(stderr, "multisite-syncd join: cannot run %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        snprintf(why, whylen, "%s failed (exit status %d; its message is above)", prog,
                 WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        return MS_EIO;
    }
    return 0;
}

/* Turn the restored copy into the new site, in one transaction. Positions in the copy are the
 * source's stream: clock rows lose their xid (never sent from here; only what this site
 * changes from now on is), the source's ticks go. The new site's cursor for the source is the
 * last part of the newest tick in the copy: that tick committed before the copy's snapshot,
 * so its whole window is in the copy (windows after it are sent again, and merge as no-ops
 * where the copy already holds them). Its cursors for the other sites are the source's, which
 * the copy holds. */
static int pg_join_reset(pg_db_t *s, const sync_conf_t *c, char *why, size_t whylen)
{
    int64_t src_site = sync_pg_q_int(s, "SELECT coalesce((SELECT site FROM rep_meta), -1)");
    if (src_site < 0) {
        snprintf(why, whylen, "the source is not a multisite-syncd database (no rep_meta)");
        return MS_EINVAL;
    }
    if (src_site == (int64_t)c->site_id) {
        snprintf(why, whylen, "the source belongs to site id %lld, this site's own id",
                 (long long)src_site);
        return MS_EINVAL;
    }
    buf_t b;
    buf_init(&b);
    buf_printf(&b,
               "BEGIN; INSERT INTO rep_inbound(origin, applied_seq, applied) SELECT %lld, "
               "coalesce((SELECT (id << %d) | greatest(coalesce(array_length(bounds, 1), 1) "
               "- 1, 0) FROM rep_tick ORDER BY id DESC LIMIT 1), 0), 0 ON CONFLICT (origin) "
               "DO UPDATE SET applied_seq = excluded.applied_seq, applied = 0;",
               (long long)src_site, PG_PART_BITS);
    PGresult *r = sync_pg_q(s, "SELECT name FROM rep_table", 0, NULL);
    for (int i = 0; r && i < PQntuples(r); i++) {
        buf_printf(&b, "UPDATE \"rep_c_%s\" SET xid = NULL, mask = 0 WHERE xid IS NOT NULL;",
                   PQgetvalue(r, i, 0));
    }
    PQclear(r);
    buf_printf(&b,
               "DELETE FROM rep_tick; DELETE FROM rep_peer; DELETE FROM rep_conflict; DELETE FROM "
               "rep_quarantine; UPDATE rep_meta SET site = %u, acked = 0; COMMIT;",
               c->site_id);
    r = sync_pg_q(s, sync_pg_cstr(&b), 0, NULL);
    buf_deinit(&b);
    if (!r) {
        snprintf(why, whylen, "turning the copy into site %u: %s", c->site_id,
                 PQerrorMessage(s->pc));
        PQclear(PQexec(s->pc, "ROLLBACK"));
        return MS_EDB;
    }
    PQclear(r);
    return 0;
}

/* multisite-syncd join --from CONNINFO (PostgreSQL): the database in the config must exist
 * and be empty. pg_dump copies the running source from one consistent snapshot while it keeps
 * writing; pg_restore loads it in a single transaction (all or nothing); then the copy is
 * turned into the new site. */
int sync_pg_join(const sync_conf_t *c, const char *src, char *why, size_t whylen)
{
    sync_db_t *db = NULL;
    int rc = sync_pg_open(c, &db, why, whylen);
    if (rc != 0) {
        return rc;
    }
    pg_db_t *s = (pg_db_t *)db;
    if (sync_pg_q_int(s, "SELECT count(*) FROM pg_class k JOIN pg_namespace n ON n.oid = "
                         "k.relnamespace WHERE n.nspname = 'public'") != 0) {
        snprintf(why, whylen,
                 "the database of this site is not empty: join makes a new database (create an "
                 "empty one)");
        db->ops->close(db);
        return MS_EEXIST;
    }
    char dump[] = "/tmp/multisite-join-XXXXXX";
    int fd = mkstemp(dump);
    if (fd < 0) {
        snprintf(why, whylen, "temporary file: %s", strerror(errno));
        db->ops->close(db);
        return MS_EIO;
    }
    close(fd);
    char *dump_argv[] = {"pg_dump",         "--format=custom", "--no-owner",
                         "--no-privileges", "--file",          dump,
                         "--dbname",        (char *)src,       NULL};
    char *restore_argv[] = {"pg_restore",
                            "--no-owner",
                            "--no-privileges",
                            "--single-transaction",
                            "--exit-on-error",
                            "--dbname",
                            c->database,
                            dump,
                            NULL};
    rc = run_tool("pg_dump", dump_argv, why, whylen);
    rc = rc == 0 ? run_tool("pg_restore", restore_argv, why, whylen) : rc;
    unlink(dump);
    rc = rc == 0 ? pg_join_reset(s, c, why, whylen) : rc;
    db->ops->close(db);
    return rc;
}
