/* pg_read.c: the sender side of the PostgreSQL backend: ticks (PgQ-style snapshot windows,
 * docs/sync.md §4.2), window parts, and reading a part's rows into one BATCH. */
#include "sync/pg_int.h"

bool sync_pg_changed(sync_db_t *db)
{
    /* Commits of other sessions are not observable cheaply: look every poll. Fold the capture
     * logs once a second even when no peer is reading, so an offline peer does not leave a
     * log of every single change (the change table keeps one row per row). */
    pg_db_t *s = (pg_db_t *)db;
    uint64_t now = time_mono_ms();
    if (s->nack && now >= s->next_ack_ms && sync_pg_flush_acked(s) != 0) {
        log_warn("postgresql: recording acknowledged positions failed");
    }
    if (now >= s->next_fold_ms) {
        s->next_fold_ms = now + 1000;
        if (sync_pg_fold(s, NULL) < 0) {
            log_warn("postgresql: folding the capture logs failed");
        }
    }
    return true;
}

/* ---- read: the sender side ---- */

/* Positions on PostgreSQL: tick id << 24 | part. A window larger than batch_rows is cut into
 * parts at row positions (rep_seq values) chosen once, when the tick is taken, and stored
 * with it (bounds), so a resend cuts it the same way; a row that moved to a later window
 * since only leaves a part smaller. */
#define PG_POS(tick, part) (((uint64_t)(tick) << PG_PART_BITS) | (uint64_t)(part))

typedef struct {
    uint64_t id;
    unsigned part;
    char *snap, *lo_snap;
    int64_t lo_seq, hi_seq; /* the part: rows with lo_seq < seq <= hi_seq */
    unsigned nparts;        /* of a tick created by this read */
    bool computed;          /* a new window was computed (created, or found empty) */
} pg_target_t;

static void target_free(pg_target_t *t)
{
    free(t->snap);
    free(t->lo_snap);
}

/* Fill the part's seq range from a bounds array literal "{10,20,30}". */
static bool part_range(const char *bounds, unsigned part, int64_t *lo, int64_t *hi,
                       unsigned *nparts)
{
    unsigned i = 0;
    int64_t prev = INT64_MIN;
    const char *p = bounds;
    bool found = false;
    while (p && *p) {
        if (*p == '{' || *p == ',' || *p == '}') {
            p++;
            continue;
        }
        char *end;
        int64_t v = strtoll(p, &end, 10);
        if (end == p) {
            break;
        }
        if (i == part) {
            *lo = prev;
            *hi = v;
            found = true;
        }
        prev = v;
        i++;
        p = end;
    }
    *nparts = i;
    return found;
}

static char *opt_dup(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : xstrdup(PQgetvalue(r, row, col));
}

/* A new tick: the window is what committed since tick k (everything, at the start), cut into
 * parts of `max` rows, computed and saved in one statement (no row when the window is empty).
 * Takes last_snap. */
static int new_tick(pg_db_t *s, uint64_t after, size_t max, pg_target_t *t, char *last_snap)
{
    if ((after >> PG_PART_BITS) > 0 && !last_snap) {
        log_warn("position %llu is no longer known here; sending from the start",
                 (unsigned long long)after);
    }
    buf_t sql;
    buf_init(&sql);
    buf_printf(&sql,
               "INSERT INTO rep_tick(snap, lo_snap, bounds) SELECT pg_current_snapshot(), "
               "$1::pg_snapshot, array_agg(seq ORDER BY seq) FILTER (WHERE rn %% $2::bigint = 0 "
               "OR rn = cnt) FROM (SELECT seq, row_number() OVER (ORDER BY seq) AS rn, count(*) "
               "OVER () AS cnt FROM (");
    for (size_t ti = 0; ti < s->nt; ti++) {
        buf_printf(&sql,
                   "%sSELECT seq FROM \"rep_c_%s\" c WHERE c.xid IS NOT NULL AND ($1::text IS "
                   "NULL OR (c.xid >= pg_snapshot_xmin($1::pg_snapshot) AND NOT "
                   "pg_visible_in_snapshot(c.xid, $1::pg_snapshot)))",
                   ti ? " UNION ALL " : "", s->t[ti].name);
    }
    buf_printf(&sql, ") w) x HAVING count(*) > 0 RETURNING id, snap::text, bounds::text");
    char mx[32];
    snprintf(mx, sizeof(mx), "%zu", max);
    const char *p1[2] = {last_snap, mx};
    PGresult *r = sync_pg_q(s, sync_pg_cstr(&sql), 2, p1);
    buf_deinit(&sql);
    if (!r) {
        t->lo_snap = last_snap;
        return MS_EDB;
    }
    t->computed = true;
    t->lo_snap = last_snap; /* also when empty: the tip's snapshot (sync_pg_read) */
    int rc = 0;
    if (PQntuples(r) == 1) {
        unsigned nparts = 0;
        t->id = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        t->part = 0;
        t->snap = xstrdup(PQgetvalue(r, 0, 1));
        part_range(PQgetvalue(r, 0, 2), 0, &t->lo_seq, &t->hi_seq, &nparts);
        t->nparts = nparts;
        if (nparts >= (1u << PG_PART_BITS)) {
            log_err("a window needs more than %u parts: raise batch_rows", nparts);
            rc = MS_ERANGE; /* the caller rolls the tick back */
        }
    }
    PQclear(r);
    return rc;
}

/* Decide which window part follows position `after`; create a tick when needed. Returns 0
 * with t->id == 0 when there is nothing to send. Inside the caller's REPEATABLE READ
 * transaction, whose snapshot is the new tick's. */
static int next_target(pg_db_t *s, uint64_t after, size_t max, pg_target_t *t)
{
    uint64_t k = after >> PG_PART_BITS;
    unsigned p = (unsigned)(after & ((1u << PG_PART_BITS) - 1));
    char ks[32];
    snprintf(ks, sizeof(ks), "%llu", (unsigned long long)k);
    const char *pk[1] = {ks};
    memset(t, 0, sizeof(*t));
    if (after && after == s->tip && s->tip_snap) {
        /* caught up with the newest tick: no later tick or part, the window starts at it */
        return new_tick(s, after, max, t, xstrdup(s->tip_snap));
    }
    PGresult *r =
        sync_pg_q(s,
                  "(SELECT id, snap::text, lo_snap::text, bounds::text, 0 FROM rep_tick WHERE"
                  " id = $1::bigint) UNION ALL (SELECT id, snap::text, lo_snap::text,"
                  " bounds::text, 1 FROM rep_tick WHERE id > $1::bigint ORDER BY id LIMIT 1)",
                  1, pk);
    if (!r) {
        return MS_EDB;
    }
    unsigned nparts = 0;
    for (int i = 0; i < PQntuples(r) && !t->id; i++) {
        bool same = atoi(PQgetvalue(r, i, 4)) == 0;
        unsigned want = same ? p + 1 : 0;
        if (part_range(PQgetvalue(r, i, 3), want, &t->lo_seq, &t->hi_seq, &nparts)) {
            t->id = strtoull(PQgetvalue(r, i, 0), NULL, 10);
            t->part = want;
            t->snap = opt_dup(r, i, 1);
            t->lo_snap = opt_dup(r, i, 2);
        }
    }
    char *last_snap = NULL;
    for (int i = 0; i < PQntuples(r); i++) {
        if (atoi(PQgetvalue(r, i, 4)) == 0) {
            last_snap = opt_dup(r, i, 1);
        }
    }
    PQclear(r);
    if (t->id) {
        free(last_snap);
        return 0;
    }
    return new_tick(s, after, max, t, last_snap);
}

/* Remember the newest position and its tick's snapshot (NULL: unknown, look it up). */
static void set_tip(pg_db_t *s, uint64_t pos, const char *snap)
{
    s->tip = pos;
    free(s->tip_snap);
    s->tip_snap = snap ? xstrdup(snap) : NULL;
}

int sync_pg_read(sync_db_t *db, uint64_t after, size_t max, buf_t *out, size_t *n, uint64_t *hi)
{
    pg_db_t *s = (pg_db_t *)db;
    *n = 0;
    *hi = after;
    /* The fold is the transaction's first statement, so it moves exactly the changes of the
     * transactions visible in the snapshot that the new tick saves: a change folded later
     * belongs to a transaction this tick does not see, hence to a later window. */
    /* Another session may fold too (`multisite-syncd init`): it cannot set dirty here, so a
     * full read runs at least once a second whatever dirty says. */
    if (after && after == s->tip && !s->dirty && time_mono_ms() < s->next_full_ms) {
        /* Caught up: one round trip tells whether anything committed since. */
        int nf = sync_pg_fold(s, NULL);
        if (nf <= 0) {
            return nf;
        }
    }
    s->dirty = false; /* folds from here on are seen by this read's window, or set it again */
    s->next_full_ms = time_mono_ms() + 1000;
    if (sync_pg_fold(s, "BEGIN ISOLATION LEVEL REPEATABLE READ; ") < 0) {
        PQclear(PQexec(s->pc, "ROLLBACK"));
        s->dirty = true;
        return MS_EDB;
    }
    pg_target_t tg;
    int rc = next_target(s, after, max ? max : 1, &tg);
    if (rc != 0 || tg.id == 0) {
        if (rc == 0 && sync_pg_ex(s, "COMMIT") == 0) {
            if (tg.computed) {
                set_tip(s, after, tg.lo_snap);
            }
            s->dirty = s->dirty || !tg.computed;
            target_free(&tg);
            return 0;
        }
        target_free(&tg);
        PQclear(PQexec(s->pc, "ROLLBACK"));
        s->dirty = true;
        return rc ? rc : MS_EDB;
    }
    uint64_t pos = PG_POS(tg.id, tg.part);
    char los[32], his[32];
    snprintf(los, sizeof(los), "%lld", (long long)tg.lo_seq);
    snprintf(his, sizeof(his), "%lld", (long long)tg.hi_seq);
    PGresult *r = NULL;
    arena_t *a = arena_new(64 * 1024);
    size_t cap = 1024;
    sync_batch_t b = {0};
    b.origin = s->site;
    b.seq_lo = after;
    b.ntables = s->nt;
    b.tables = arena_alloc(a, sizeof(sync_wtable_t) * (s->nt ? s->nt : 1));
    sync_entry_t *ents = xmalloc(sizeof(sync_entry_t) * cap);
    PGresult **keep = xcalloc(s->nt ? s->nt : 1, sizeof(PGresult *));
    for (size_t ti = 0; rc == 0 && ti < s->nt; ti++) {
        pg_table_t *t = &s->t[ti];
        b.tables[ti] = t->w;
        buf_t sql;
        buf_init(&sql);
        buf_printf(&sql, "SELECT ");
        sync_pg_key_list(&sql, t, "c.");
        buf_printf(&sql, ", c.mask, c.cl, c.clh, c.cls");
        for (unsigned k = 0; k < t->ncols; k++) {
            const char *cn = t->cols[t->npk + k];
            buf_printf(&sql, ", c.\"v_%s\", c.\"s_%s\", c.\"b_%s\", c.\"bs_%s\", t.\"%s\"", cn, cn,
                       cn, cn, cn);
        }
        buf_printf(&sql, " FROM \"rep_c_%s\" c LEFT JOIN \"%s\" t ON ", t->name, t->name);
        sync_pg_key_eq(&sql, t, "t.", "c.", false);
        buf_printf(
            &sql, " WHERE c.xid IS NOT NULL AND pg_visible_in_snapshot(c.xid, $1::pg_snapshot) AND "
                  "($2::text IS NULL OR (c.xid >= pg_snapshot_xmin($2::pg_snapshot) AND NOT "
                  "pg_visible_in_snapshot(c.xid, $2::pg_snapshot))) AND c.seq > $3::bigint AND "
                  "c.seq <= $4::bigint ORDER BY c.seq");
        const char *p2[4] = {tg.snap, tg.lo_snap, los, his};
        r = sync_pg_q(s, sync_pg_cstr(&sql), 4, p2);
        buf_deinit(&sql);
        if (!r) {
            rc = MS_EDB;
            break;
        }
        keep[ti] = r;
        for (int row = 0; row < PQntuples(r); row++) {
            if (b.nentries == cap) {
                cap *= 2;
                ents = xrealloc(ents, sizeof(sync_entry_t) * cap);
            }
            sync_entry_t *e = &ents[b.nentries++];
            memset(e, 0, sizeof(*e));
            e->table = (unsigned)ti;
            /* result columns: the key, mask, cl, clh, cls, then 5 per value column */
            int np = (int)t->npk;
            e->pk = arena_alloc(a, sizeof(sync_val_t) * t->npk);
            for (int k = 0; k < np; k++) {
                sync_pg_val(r, row, k, t->oids[k], a, &e->pk[k]);
            }
            e->mask = strtoull(PQgetvalue(r, row, np), NULL, 10);
            e->cl = (uint32_t)strtoul(PQgetvalue(r, row, np + 1), NULL, 10);
            e->clv = sync_pg_ver(r, row, np + 2);
            if (e->cl % 2 == 1 && t->ncols) {
                e->val = arena_alloc(a, sizeof(sync_val_t) * t->ncols);
                e->ver = arena_alloc(a, sizeof(sync_ver_t) * t->ncols);
                e->base = arena_alloc(a, sizeof(sync_ver_t) * t->ncols);
                for (unsigned k = 0; k < t->ncols; k++) {
                    int at = np + 4 + 5 * (int)k;
                    e->ver[k] = sync_pg_ver(r, row, at);
                    e->base[k] = e->ver[k].site == s->site ? sync_pg_ver(r, row, at + 2)
                                                           : (sync_ver_t){0, 0};
                    sync_pg_val(r, row, at + 4, t->oids[t->npk + k], a, &e->val[k]);
                }
            }
        }
    }
    if (rc == 0) {
        for (size_t i = 0; i < b.nentries; i++) {
            ents[i].seq = pos;
        }
        b.seq_hi = pos;
        b.entries = ents;
        sync_enc_batch(out, &b);
        *n = b.nentries;
        *hi = pos;
    }
    for (size_t ti = 0; ti < s->nt; ti++) {
        PQclear(keep[ti]);
    }
    free(keep);
    free(ents);
    arena_free(a);
    if (rc == 0) {
        rc = sync_pg_ex(s, "COMMIT");
    } else {
        PQclear(PQexec(s->pc, "ROLLBACK"));
    }
    if (rc == 0 && tg.computed) {
        set_tip(s, PG_POS(tg.id, tg.nparts ? tg.nparts - 1 : 0), tg.snap);
    } else {
        s->dirty = true; /* what this read folded is in no window yet */
    }
    target_free(&tg);
    return rc;
}
