/* pg_apply.c: the receiver side of the PostgreSQL backend: set-based apply of a batch with
 * the cursor in one transaction, conflict log, quarantine and its retry (docs/sync.md §5-§8). */
#include "sync/pg_int.h"

/* ---- apply: the receiver side ---- */

/* Value column c (0-based) of t. */
#define VCOL(t, c) ((t)->cols[(t)->npk + (c)])

/* Append entry e's key to the key arrays a[0..npk). */
static void key_add(buf_t *a, const pg_table_t *t, const sync_entry_t *e, bool first)
{
    for (unsigned k = 0; k < t->npk; k++) {
        sync_pg_arr_add(&a[k], &e->pk[k], first);
    }
}

typedef struct {
    pg_table_t *t;
    int map[SYNC_MAX_COLS]; /* local value column -> wire column */
    const char *missing;
} pmap_t;

static void map_table(pg_db_t *s, const sync_wtable_t *w, pmap_t *m)
{
    memset(m, 0, sizeof(*m));
    for (size_t i = 0; i < s->nt; i++) {
        if (strcmp(s->t[i].name, w->name) == 0) {
            m->t = &s->t[i];
        }
    }
    if (!m->t) {
        return;
    }
    pg_table_t *t = m->t;
    bool same = w->npk == t->npk;
    for (unsigned k = 0; same && k < t->npk; k++) {
        same = strcmp(w->cols[k], t->cols[k]) == 0;
    }
    if (!same) {
        m->missing = "(primary key differs)";
        return;
    }
    for (unsigned c = 0; c < t->ncols; c++) {
        m->map[c] = -1;
        for (unsigned j = 0; j < w->ncols; j++) {
            if (strcmp(w->cols[w->npk + j], VCOL(t, c)) == 0) {
                m->map[c] = (int)j;
            }
        }
    }
    for (unsigned j = 0; j < w->ncols; j++) {
        bool found = false;
        for (unsigned c = 0; c < t->ncols && !found; c++) {
            found = m->map[c] == (int)j;
        }
        if (!found) {
            m->missing = w->cols[w->npk + j];
        }
    }
}

static int quarantine(pg_db_t *s, uint32_t origin, const sync_wtable_t *w, const sync_entry_t *e,
                      const char *kind, const char *error, int64_t requeue_id)
{
    static log_ratelimit_t rl = LOG_RATELIMIT_INIT(10, 10000);
    buf_t pk;
    buf_init(&pk);
    sync_val_text(&pk, e->pk, w->npk);
    log_rl(&rl, LOG_LVL_WARN, "quarantined change from site %u to %s(%s): %s: %s", origin, w->name,
           sync_pg_cstr(&pk), kind, error);
    char now[32], ids[32], org[16], seq[32];
    snprintf(now, sizeof(now), "%llu", (unsigned long long)time_wall_ms());
    PGresult *r;
    if (requeue_id) {
        snprintf(ids, sizeof(ids), "%lld", (long long)requeue_id);
        const char *p[3] = {ids, error, now};
        r = sync_pg_q(s,
                      "UPDATE rep_quarantine SET attempts = attempts + 1, error = $2, last_ms = "
                      "$3::bigint WHERE id = $1::bigint",
                      3, p);
    } else {
        sync_batch_t one = {0};
        sync_entry_t ce = *e;
        ce.table = 0;
        one = (sync_batch_t){origin, e->seq - 1, e->seq, 1, (sync_wtable_t *)w, 1, &ce};
        buf_t pl;
        buf_init(&pl);
        sync_enc_batch(&pl, &one);
        snprintf(org, sizeof(org), "%u", origin);
        snprintf(seq, sizeof(seq), "%llu", (unsigned long long)e->seq);
        const char *p[8] = {
            org, seq, w->name, sync_pg_cstr(&pk), kind, error, (const char *)pl.data, now};
        int lens[8] = {0, 0, 0, 0, 0, 0, (int)pl.len, 0};
        int fmts[8] = {0, 0, 0, 0, 0, 0, 1, 0};
        r = PQexecParams(s->pc,
                         "INSERT INTO rep_quarantine(origin, seq, tbl, pk, kind, error, payload,"
                         " attempts, first_ms, last_ms) VALUES($1::int, $2::bigint, $3, $4, $5, "
                         "$6, $7::bytea, 1, $8::bigint, $8::bigint)",
                         8, NULL, p, lens, fmts, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            PQclear(r);
            r = NULL;
        }
        buf_deinit(&pl);
    }
    int rc = r ? 0 : MS_EDB;
    PQclear(r);
    buf_deinit(&pk);
    return rc;
}

typedef struct {
    const sync_entry_t *e;
    sync_row_action_t act;
    bool write, del, found, row; /* found: a clock row exists; row: T has the row (locked) */
    bool refused;                /* a stale change to a row whose tombstone may be gone */
    bool take[SYNC_MAX_COLS];
    uint32_t cl;
    sync_ver_t clv;
    sync_ver_t v[SYNC_MAX_COLS];
} pdec_t;

static uint64_t entry_max_hlc(const sync_wtable_t *w, const sync_entry_t *e)
{
    uint64_t m = e->clv.hlc;
    for (unsigned c = 0; e->ver && c < w->ncols; c++) {
        m = e->ver[c].hlc > m ? e->ver[c].hlc : m;
    }
    return m;
}

/* The parameters of one set-based statement: n PostgreSQL array literals. */
typedef struct {
    unsigned n;
    size_t rows;
    buf_t *a;
    const char **pv;
} parr_t;

static void parr_init(parr_t *p, unsigned n)
{
    p->n = n;
    p->rows = 0;
    p->a = xcalloc(n, sizeof(buf_t));
    p->pv = xcalloc(n, sizeof(char *));
    for (unsigned k = 0; k < n; k++) {
        buf_init(&p->a[k]);
        buf_append(&p->a[k], "{", 1);
    }
}

static const char *const *parr_done(parr_t *p)
{
    for (unsigned k = 0; k < p->n; k++) {
        buf_append(&p->a[k], "}", 1);
        p->pv[k] = sync_pg_cstr(&p->a[k]);
    }
    return p->pv;
}

static void parr_free(parr_t *p)
{
    for (unsigned k = 0; k < p->n; k++) {
        buf_deinit(&p->a[k]);
    }
    free(p->a);
    free(p->pv);
}

static int run(pg_db_t *s, buf_t *sql, parr_t *p, const char *what)
{
    PGresult *r = sync_pg_q(s, sync_pg_cstr(sql), (int)p->n, parr_done(p));
    if (!r) {
        log_debug("postgresql: %s: %s", what, PQerrorMessage(s->pc));
    }
    PQclear(r);
    return r ? 0 : MS_EDB;
}

/* p0, p1, ...: the names of the key columns of an unnest() alias. */
static void key_aliases(buf_t *b, const pg_table_t *t, const char *p)
{
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(b, "%s%s%u", k ? ", " : "", p, k);
    }
}

/* Result columns of read_state(): 0 ordinality, 1-3 clock cl/clh/cls, 4 row present, then
 * per value column c: version hlc, site, current value as text, base hlc, base site. */
#define RS_COL(c) (5 + 5 * (int)(c))

/* Lock the rows of T that the entries name, fold their pending capture log, and read their
 * clocks and current values. Each lookup is an index probe (LATERAL subqueries are never
 * turned into a hash join over the whole table) and the rows are locked in key order. The
 * fold runs once every lock is held (the function is evaluated after the aggregate below
 * has consumed the locking scan): a local change to a locked row cannot commit before we do,
 * so the clocks read next include every local change committed before this apply. A row that
 * does not exist cannot be locked; a local insert of it racing ours makes our INSERT fail and
 * the chunk is replayed entry by entry. */
static PGresult *read_state(pg_db_t *s, const pg_table_t *t, const sync_entry_t **ents, size_t n)
{
    const char *P = t->cols[0];
    parr_t k;
    parr_init(&k, t->npk);
    for (size_t i = 0; i < n; i++) {
        key_add(k.a, t, ents[i], i == 0);
    }
    buf_t sql, keys;
    buf_init(&sql);
    buf_init(&keys);
    sync_pg_key_params(&keys, t, 1);
    buf_printf(&sql,
               "SELECT \"rep_fold_%s\"(%s) FROM (SELECT count(*) FROM (SELECT * FROM "
               "unnest(%s) AS u(",
               t->name, sync_pg_cstr(&keys), sync_pg_cstr(&keys));
    key_aliases(&sql, t, "p");
    buf_printf(&sql, ") ORDER BY ");
    key_aliases(&sql, t, "p");
    buf_printf(&sql, ") k, LATERAL (SELECT 1 FROM \"%s\" x WHERE ", t->name);
    sync_pg_key_eq(&sql, t, "x.", "k.p", true);
    buf_printf(&sql, " FOR UPDATE) l) z");
    PGresult *r = sync_pg_q(s, sync_pg_cstr(&sql), (int)t->npk, parr_done(&k));
    if (r) {
        /* local changes folded here are in no window yet */
        s->dirty = s->dirty || (PQntuples(r) == 1 && atoll(PQgetvalue(r, 0, 0)) > 0);
        PQclear(r);
        buf_reset(&sql);
        buf_printf(&sql, "SELECT k.i, c.cl, c.clh, c.cls, t.\"%s\" IS NOT NULL", P);
        for (unsigned c = 0; c < t->ncols; c++) {
            const char *cn = VCOL(t, c);
            buf_printf(&sql, ", c.\"v_%s\", c.\"s_%s\", t.\"%s\"::text, c.\"b_%s\", c.\"bs_%s\"",
                       cn, cn, cn, cn, cn);
        }
        buf_printf(&sql, " FROM unnest(%s) WITH ORDINALITY AS k(", sync_pg_cstr(&keys));
        key_aliases(&sql, t, "p");
        buf_printf(&sql, ", i) LEFT JOIN LATERAL (SELECT * FROM \"%s\" x WHERE ", t->name);
        sync_pg_key_eq(&sql, t, "x.", "k.p", true);
        buf_printf(&sql,
                   " OFFSET 0) t ON true LEFT JOIN LATERAL (SELECT * FROM \"rep_c_%s\" y "
                   "WHERE ",
                   t->name);
        sync_pg_key_eq(&sql, t, "y.", "k.p", true);
        buf_printf(&sql, " OFFSET 0) c ON true");
        r = sync_pg_q(s, sync_pg_cstr(&sql), (int)t->npk, k.pv);
    }
    buf_deinit(&sql);
    buf_deinit(&keys);
    parr_free(&k);
    if (r && PQntuples(r) != (int)n) {
        PQclear(r);
        r = NULL;
    }
    return r;
}

/* Conflicts found by decide(), as the text arrays of one rep_conflict insert. */
typedef struct {
    parr_t a; /* pk, col, rule, winner, local_val, local ver, remote_val, remote ver */
} pconf_t;

static void conflict_add(pconf_t *cf, const pg_table_t *t, const sync_entry_t *e, unsigned c, int j,
                         const char *rule, bool won, const char *local_val, sync_ver_t lv)
{
    buf_t pkt;
    buf_init(&pkt);
    sync_val_text(&pkt, e->pk, t->npk);
    bool f = cf->a.rows++ == 0;
    buf_t *a = cf->a.a;
    sync_pg_arr_text(&a[0], sync_pg_cstr(&pkt), f);
    sync_pg_arr_text(&a[1], VCOL(t, c), f);
    sync_pg_arr_text(&a[2], rule, f);
    sync_pg_arr_text(&a[3], won ? "remote" : "local", f);
    sync_pg_arr_text(&a[4], local_val, f);
    buf_printf(&a[5], "%s\"(%llu,%u)\"", f ? "" : ",", (unsigned long long)lv.hlc, lv.site);
    sync_pg_arr_add(&a[6], &e->val[j], f);
    buf_printf(&a[7], "%s\"(%llu,%u)\"", f ? "" : ",", (unsigned long long)e->ver[j].hlc,
               e->ver[j].site);
    buf_deinit(&pkt);
}

/* Merge one entry against the local state in row `row` of read_state()'s result. */
static void decide(pg_db_t *s, uint32_t origin, const pmap_t *m, PGresult *r, int row, pdec_t *x,
                   pconf_t *cf, sync_apply_res_t *res)
{
    const pg_table_t *t = m->t;
    const sync_entry_t *e = x->e;
    x->found = !PQgetisnull(r, row, 1);
    x->row = PQgetvalue(r, row, 4)[0] == 't';
    x->cl = x->found ? (uint32_t)strtoul(PQgetvalue(r, row, 1), NULL, 10) : 0;
    x->clv = x->found ? sync_pg_ver(r, row, 2) : (sync_ver_t){0, 0};
    for (unsigned c = 0; c < t->ncols; c++) {
        x->v[c] = x->found ? sync_pg_ver(r, row, RS_COL(c)) : (sync_ver_t){0, 0};
    }
    sync_gc_t gc =
        sync_gc_row(x->found, x->cl, x->clv, e->cl, e->clv,
                    sync_gc_horizon(time_wall_ms(), s->base.conf->tombstone_retention_ms));
    if (gc.local_absent) {
        x->cl = 0;
        x->clv = (sync_ver_t){0, 0};
    }
    x->refused = gc.verdict == SYNC_GC_REFUSE;
    x->act = gc.verdict != SYNC_GC_APPLY ? SYNC_ROW_STALE : sync_decide_row(x->cl, e->cl);
    const char *rules[SYNC_MAX_COLS] = {0};
    bool won[SYNC_MAX_COLS] = {0};
    sync_ver_t lv[SYNC_MAX_COLS];
    if (x->act == SYNC_ROW_STALE) {
        bool lost = !x->refused && e->cl % 2 == 1 && e->mask && x->cl % 2 == 0;
        for (unsigned c = 0; lost && c < t->ncols; c++) {
            int j = m->map[c];
            if (j >= 0 && ((e->mask >> j) & 1)) {
                rules[c] = "update-vs-delete";
                lv[c] = x->clv;
            }
        }
    } else if (x->act == SYNC_ROW_REPLACE) {
        x->cl = e->cl;
        x->clv = e->clv;
        x->del = e->cl % 2 == 0;
        x->write = !x->del;
        for (unsigned c = 0; x->write && c < t->ncols; c++) {
            if (m->map[c] >= 0) {
                x->take[c] = true;
                x->v[c] = e->ver[m->map[c]];
            }
        }
    } else {
        if (sync_ver_cmp(NULL, e->clv, x->clv) > 0) {
            x->clv = e->clv;
        }
        for (unsigned c = 0; e->cl % 2 == 1 && c < t->ncols; c++) {
            int j = m->map[c];
            if (j < 0) {
                continue;
            }
            sync_col_decision_t dc =
                sync_decide_col(&s->base.rules, x->v[c], e->ver[j], e->base[j], origin);
            /* The origin's version is the one our own change to the column overwrote (our
             * base): we had seen it, so ours is not concurrent with it. This happens when the
             * origin changed other columns of the row and its entry reached us before ours
             * reached it (an entry carries every column's version). As on SQLite. */
            if (dc.conflict && sync_ver_eq(e->ver[j], sync_pg_ver(r, row, RS_COL(c) + 3))) {
                dc.conflict = false;
            }
            if (dc.conflict) {
                rules[c] = "column-lww";
                won[c] = dc.take;
                lv[c] = x->v[c];
            }
            if (dc.take) {
                x->take[c] = true;
                x->write = true;
                x->v[c] = e->ver[j];
            }
        }
    }
    for (unsigned c = 0; c < t->ncols; c++) {
        if (rules[c]) {
            int at = RS_COL(c) + 2;
            conflict_add(cf, t, e, c, m->map[c], rules[c], won[c],
                         PQgetisnull(r, row, at) ? NULL : PQgetvalue(r, row, at), lv[c]);
            res->conflicts++;
        }
    }
}

/* unnest(...) AS u(k0, .., c0, t0, c1, t1, ...) over the key, the mapped value columns and
 * (with flags) whether each column is taken. */
static void src_unnest(buf_t *sql, const pg_table_t *t, const pmap_t *m, bool flags)
{
    unsigned p = 1 + t->npk;
    buf_printf(sql, "unnest(");
    sync_pg_key_params(sql, t, 1);
    for (unsigned c = 0; c < t->ncols; c++) {
        if (m->map[c] < 0) {
            continue;
        }
        buf_printf(sql, ", $%u::%s[]", p++, t->types[t->npk + c]);
        if (flags) {
            buf_printf(sql, ", $%u::bool[]", p++);
        }
    }
    buf_printf(sql, ") AS u(");
    key_aliases(sql, t, "k");
    for (unsigned c = 0; c < t->ncols; c++) {
        if (m->map[c] >= 0) {
            buf_printf(sql, flags ? ", c%u, t%u" : ", c%u", c, c);
        }
    }
    buf_printf(sql, ")");
}

/* Write the rows: deletes by key, existing rows by UPDATE (a column not taken keeps its
 * value), missing rows by a plain INSERT. A local insert racing ours makes the INSERT fail
 * with a unique violation; the caller then replays the chunk entry by entry. */
static int write_rows(pg_db_t *s, const pmap_t *m, const pdec_t *d, size_t n)
{
    const pg_table_t *t = m->t;
    const char *P = t->cols[0];
    unsigned nmapped = 0;
    for (unsigned c = 0; c < t->ncols; c++) {
        nmapped += m->map[c] >= 0;
    }
    int rc = 0;
    buf_t sql;
    buf_init(&sql);
    for (int pass = 0; rc == 0 && pass < 3; pass++) { /* 0 delete, 1 update, 2 insert */
        parr_t p;
        unsigned np = t->npk;
        parr_init(&p, pass == 0 ? np : pass == 1 ? np + 2 * nmapped : np + nmapped);
        for (size_t i = 0; i < n; i++) {
            if (pass == 0 ? !d[i].del : !d[i].write || d[i].row != (pass == 1)) {
                continue;
            }
            const sync_entry_t *e = d[i].e;
            bool f = p.rows++ == 0;
            unsigned k = np;
            key_add(p.a, t, e, f);
            for (unsigned c = 0; pass > 0 && c < t->ncols; c++) {
                if (m->map[c] >= 0) {
                    sync_pg_arr_add(&p.a[k++], &e->val[m->map[c]], f);
                    if (pass == 1) {
                        buf_append(&p.a[k], f ? "" : ",", f ? 0 : 1);
                        buf_append(&p.a[k++], d[i].take[c] ? "t" : "f", 1);
                    }
                }
            }
        }
        buf_reset(&sql);
        if (p.rows && pass == 0 && np == 1) {
            buf_printf(&sql, "DELETE FROM \"%s\" WHERE \"%s\" = ANY($1::%s[])", t->name, P,
                       t->types[0]);
        } else if (p.rows && pass == 0) {
            buf_printf(&sql, "DELETE FROM \"%s\" x USING unnest(", t->name);
            sync_pg_key_params(&sql, t, 1);
            buf_printf(&sql, ") AS u(");
            key_aliases(&sql, t, "k");
            buf_printf(&sql, ") WHERE ");
            sync_pg_key_eq(&sql, t, "x.", "u.k", true);
        } else if (p.rows && pass == 1) {
            buf_printf(&sql, "UPDATE \"%s\" x SET \"%s\" = x.\"%s\"", t->name, P, P);
            for (unsigned c = 0; c < t->ncols; c++) {
                if (m->map[c] >= 0) {
                    buf_printf(&sql, ", \"%s\" = CASE WHEN u.t%u THEN u.c%u ELSE x.\"%s\" END",
                               VCOL(t, c), c, c, VCOL(t, c));
                }
            }
            buf_printf(&sql, " FROM ");
            src_unnest(&sql, t, m, true);
            buf_printf(&sql, " WHERE ");
            sync_pg_key_eq(&sql, t, "x.", "u.k", true);
        } else if (p.rows) {
            buf_printf(&sql, "INSERT INTO \"%s\"(", t->name);
            sync_pg_key_list(&sql, t, "");
            for (unsigned c = 0; c < t->ncols; c++) {
                if (m->map[c] >= 0) {
                    buf_printf(&sql, ", \"%s\"", VCOL(t, c));
                }
            }
            buf_printf(&sql, ") SELECT * FROM ");
            src_unnest(&sql, t, m, false);
        }
        if (p.rows) {
            rc = run(s, &sql, &p, "row write");
        }
        parr_free(&p);
    }
    buf_deinit(&sql);
    return rc;
}

/* Write the clock rows of every entry that was not stale: UPDATE the ones that exist, INSERT
 * the others (the agent's clock rows carry no xid: they are never sent). */
static int write_clocks(pg_db_t *s, const pg_table_t *t, const pdec_t *d, size_t n)
{
    const unsigned np = t->npk;
    int rc = 0;
    buf_t sql;
    buf_init(&sql);
    for (int pass = 0; rc == 0 && pass < 2; pass++) { /* 0 update, 1 insert */
        parr_t p;
        parr_init(&p, np + 3 + 2 * t->ncols);
        for (size_t i = 0; i < n; i++) {
            if (d[i].act == SYNC_ROW_STALE || d[i].found != (pass == 0)) {
                continue;
            }
            bool f = p.rows++ == 0;
            key_add(p.a, t, d[i].e, f);
            sync_pg_arr_int(&p.a[np], false, d[i].cl, f);
            sync_pg_arr_int(&p.a[np + 1], false, (int64_t)d[i].clv.hlc, f);
            sync_pg_arr_int(&p.a[np + 2], false, d[i].clv.site, f);
            for (unsigned c = 0; c < t->ncols; c++) {
                bool none = sync_ver_none(d[i].v[c]);
                sync_pg_arr_int(&p.a[np + 3 + 2 * c], none, (int64_t)d[i].v[c].hlc, f);
                sync_pg_arr_int(&p.a[np + 4 + 2 * c], none, d[i].v[c].site, f);
            }
        }
        if (!p.rows) {
            parr_free(&p);
            continue;
        }
        buf_t src;
        buf_init(&src);
        buf_printf(&src, "unnest(");
        sync_pg_key_params(&src, t, 1);
        buf_printf(&src, ", $%u::int[], $%u::bigint[], $%u::int[]", np + 1, np + 2, np + 3);
        for (unsigned c = 0; c < t->ncols; c++) {
            buf_printf(&src, ", $%u::bigint[], $%u::int[]", np + 4 + 2 * c, np + 5 + 2 * c);
        }
        buf_printf(&src, ") AS u(");
        key_aliases(&src, t, "k");
        buf_printf(&src, ", cl, clh, cls");
        for (unsigned c = 0; c < t->ncols; c++) {
            buf_printf(&src, ", v%u, s%u", c, c);
        }
        buf_printf(&src, ")");
        buf_reset(&sql);
        if (pass == 0) {
            buf_printf(&sql, "UPDATE \"rep_c_%s\" c SET cl = u.cl, clh = u.clh, cls = u.cls",
                       t->name);
            for (unsigned c = 0; c < t->ncols; c++) {
                buf_printf(&sql, ", \"v_%s\" = u.v%u, \"s_%s\" = u.s%u", VCOL(t, c), c, VCOL(t, c),
                           c);
            }
            buf_printf(&sql, " FROM %s WHERE ", sync_pg_cstr(&src));
            sync_pg_key_eq(&sql, t, "c.", "u.k", true);
        } else {
            buf_printf(&sql, "INSERT INTO \"rep_c_%s\"(", t->name);
            sync_pg_key_list(&sql, t, "");
            buf_printf(&sql, ", seq, lh, mask, cl, clh, cls");
            for (unsigned c = 0; c < t->ncols; c++) {
                buf_printf(&sql, ", \"v_%s\", \"s_%s\"", VCOL(t, c), VCOL(t, c));
            }
            buf_printf(&sql, ") SELECT ");
            key_aliases(&sql, t, "u.k");
            buf_printf(&sql, ", 0, 0, 0, u.cl, u.clh, u.cls");
            for (unsigned c = 0; c < t->ncols; c++) {
                buf_printf(&sql, ", u.v%u, u.s%u", c, c);
            }
            buf_printf(&sql, " FROM %s", sync_pg_cstr(&src));
        }
        rc = run(s, &sql, &p, "clock write");
        buf_deinit(&src);
        parr_free(&p);
    }
    buf_deinit(&sql);
    return rc;
}

static int write_conflicts(pg_db_t *s, const pg_table_t *t, pconf_t *cf)
{
    if (!cf->a.rows) {
        return 0;
    }
    buf_t sql;
    buf_init(&sql);
    buf_printf(&sql,
               "INSERT INTO rep_conflict(at_ms, tbl, pk, col, rule, winner, local_val,"
               " local_hlc, local_site, remote_val, remote_hlc, remote_site) SELECT %llu,"
               " '%s', u.pk, u.col, u.rule, u.w, u.lv, split_part(trim(both '()' from u.lver),"
               " ',', 1)::bigint, split_part(trim(both '()' from u.lver), ',', 2)::int, u.rv,"
               " split_part(trim(both '()' from u.rver), ',', 1)::bigint, split_part(trim(both"
               " '()' from u.rver), ',', 2)::int FROM unnest($1::text[], $2::text[], "
               "$3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) AS "
               "u(pk, col, rule, w, lv, lver, rv, rver)",
               (unsigned long long)time_wall_ms(), t->name);
    int rc = run(s, &sql, &cf->a, "conflict log");
    buf_deinit(&sql);
    return rc;
}

/* Apply entries ents[0..n) of one wire table (all for the same local table) set-based: one
 * statement reads and locks, decisions are made in C with merge.c, then at most five
 * statements write rows, clocks and conflicts. Returns 0 or MS_EDB (the caller rolls back to
 * its savepoint). */
static int apply_set(pg_db_t *s, uint32_t origin, const sync_wtable_t *w, const pmap_t *m,
                     const sync_entry_t **ents, size_t n, sync_apply_res_t *res, int64_t requeue_id)
{
    const pg_table_t *t = m->t;
    PGresult *r = read_state(s, t, ents, n);
    if (!r) {
        return MS_EDB;
    }
    pdec_t *d = xcalloc(n, sizeof(pdec_t));
    pconf_t cf;
    parr_init(&cf.a, 8);
    for (int row = 0; row < (int)n; row++) {
        size_t i = strtoul(PQgetvalue(r, row, 0), NULL, 10) - 1;
        if (i < n) {
            d[i].e = ents[i];
            decide(s, origin, m, r, row, &d[i], &cf, res);
        }
    }
    PQclear(r);
    int rc = write_rows(s, m, d, n);
    rc = rc == 0 ? write_clocks(s, t, d, n) : rc;
    rc = rc == 0 ? write_conflicts(s, t, &cf) : rc;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (d[i].refused) {
            res->quarantined++;
            rc = quarantine(s, origin, w, ents[i], "stale", SYNC_STALE_MSG, requeue_id);
            continue;
        }
        uint64_t mx = entry_max_hlc(w, ents[i]);
        res->max_hlc = mx > res->max_hlc ? mx : res->max_hlc;
        res->entries_applied++;
    }
    parr_free(&cf.a);
    free(d);
    return rc;
}

/* Settings of every apply transaction: capture off (the trigger function returns at once),
 * and nested loops only: every statement of an apply joins a batch-sized key array to a table
 * by its key, and a hash or merge join would read the whole table once per batch. */
#define APPLY_SETTINGS                                                                             \
    "SET LOCAL rep.applying = 'on'; SET LOCAL enable_hashjoin = off; SET LOCAL "                   \
    "enable_mergejoin = off; "

/* Apply the entries of b past `after`, inside the open transaction. requeue_id: retrying that
 * quarantine row (update it on failure instead of adding one). */
static int apply_entries(pg_db_t *s, const sync_batch_t *b, uint64_t after, sync_apply_res_t *res,
                         int64_t requeue_id)
{
    const sync_conf_t *conf = s->base.conf;
    int rc = 0;
    const sync_entry_t **sel = xmalloc(sizeof(*sel) * (b->nentries ? b->nentries : 1));
    for (size_t ti = 0; rc == 0 && ti < b->ntables; ti++) {
        const sync_wtable_t *w = &b->tables[ti];
        pmap_t m;
        map_table(s, w, &m);
        size_t n = 0;
        for (size_t i = 0; rc == 0 && i < b->nentries; i++) {
            const sync_entry_t *e = &b->entries[i];
            if (e->table != ti) {
                continue;
            }
            if (e->seq <= after) {
                res->entries_skipped++;
                continue;
            }
            char msg[160];
            if (!m.t) {
                res->quarantined++;
                rc = quarantine(s, b->origin, w, e, "unknown-table", "no such replicated table",
                                requeue_id);
            } else if (m.missing) {
                snprintf(msg, sizeof(msg), "column %s is not replicated here", m.missing);
                res->quarantined++;
                rc = quarantine(s, b->origin, w, e, "unknown-column", msg, requeue_id);
            } else if (sync_hlc_future(entry_max_hlc(w, e), time_wall_ms(),
                                       conf->max_clock_skew_ms)) {
                snprintf(msg, sizeof(msg), "stamped ahead of the local clock by more than %u ms",
                         conf->max_clock_skew_ms);
                res->held++;
                rc = quarantine(s, b->origin, w, e, "future", msg, requeue_id);
            } else {
                /* A row twice in one batch (never sent by our senders) makes the clock
                 * upsert fail; the chunk is then replayed entry by entry, which is correct. */
                sel[n++] = e;
            }
        }
        if (rc != 0 || n == 0) {
            continue;
        }
        sync_apply_res_t r1 = {0};
        if (sync_pg_ex(s, "SAVEPOINT rep_chunk") != 0) {
            rc = MS_EDB;
            break;
        }
        if (apply_set(s, b->origin, w, &m, sel, n, &r1, requeue_id) == 0) {
            /* no RELEASE: the commit ends the savepoint, one round trip less per batch */
            res->entries_applied += r1.entries_applied;
            res->quarantined += r1.quarantined;
            res->conflicts += r1.conflicts;
            res->max_hlc = r1.max_hlc > res->max_hlc ? r1.max_hlc : res->max_hlc;
            continue;
        }
        /* Something in the chunk failed: replay it one entry at a time. */
        sync_pg_ex(s, "ROLLBACK TO SAVEPOINT rep_chunk");
        for (size_t i = 0; rc == 0 && i < n; i++) {
            sync_apply_res_t r2 = {0};
            sync_pg_ex(s, "SAVEPOINT rep_one");
            if (apply_set(s, b->origin, w, &m, &sel[i], 1, &r2, requeue_id) == 0) {
                sync_pg_ex(s, "RELEASE SAVEPOINT rep_one");
                res->entries_applied += r2.entries_applied;
                res->quarantined += r2.quarantined;
                res->conflicts += r2.conflicts;
                res->max_hlc = r2.max_hlc > res->max_hlc ? r2.max_hlc : res->max_hlc;
            } else {
                char err[256];
                snprintf(err, sizeof(err), "%s", PQerrorMessage(s->pc));
                err[strcspn(err, "\n")] = '\0';
                sync_pg_ex(s, "ROLLBACK TO SAVEPOINT rep_one");
                res->quarantined++;
                rc = quarantine(s, b->origin, w, sel[i], "constraint", err, requeue_id);
            }
        }
        sync_pg_ex(s, "RELEASE SAVEPOINT rep_chunk");
    }
    free(sel);
    return rc;
}

static int inbound_get(pg_db_t *s, uint32_t origin, uint64_t *seq, uint64_t *count, bool lock)
{
    char o[16];
    snprintf(o, sizeof(o), "%u", origin);
    const char *p[1] = {o};
    PGresult *r =
        sync_pg_q(s,
                  lock ? "SELECT applied_seq, applied FROM rep_inbound WHERE origin = $1::int "
                         "FOR UPDATE"
                       : "SELECT applied_seq, applied FROM rep_inbound WHERE origin = $1::int",
                  1, p);
    if (!r) {
        return MS_EDB;
    }
    *seq = *count = 0;
    if (PQntuples(r) > 0) {
        *seq = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        *count = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    }
    PQclear(r);
    return 0;
}

int sync_pg_apply(sync_db_t *db, const sync_batch_t *b, sync_apply_res_t *res)
{
    pg_db_t *s = (pg_db_t *)db;
    memset(res, 0, sizeof(*res));
    s->cur_ok = false;
    sync_fault("apply.before-begin");
    /* One round trip: begin, capture off, the cursor (locked). */
    char sql[256];
    snprintf(sql, sizeof(sql),
             "BEGIN; " APPLY_SETTINGS "SELECT applied_seq, applied FROM rep_inbound"
             " WHERE origin = %u FOR UPDATE",
             b->origin);
    PGresult *r0 = sync_pg_q(s, sql, 0, NULL);
    if (!r0) {
        PQclear(PQexec(s->pc, "ROLLBACK"));
        return MS_EDB;
    }
    sync_fault("apply.begin");
    uint64_t applied_seq = 0, count = 0;
    int rc = 0;
    if (PQntuples(r0) > 0) {
        applied_seq = strtoull(PQgetvalue(r0, 0, 0), NULL, 10);
        count = strtoull(PQgetvalue(r0, 0, 1), NULL, 10);
    }
    PQclear(r0);
    if (rc == 0 && b->seq_hi > applied_seq) {
        rc = apply_entries(s, b, applied_seq, res, 0);
        sync_fault("apply.entry");
        if (rc == 0) {
            sync_fault("apply.cursor");
            char o[16], sq[32], cnt[32];
            snprintf(o, sizeof(o), "%u", b->origin);
            snprintf(sq, sizeof(sq), "%llu", (unsigned long long)b->seq_hi);
            snprintf(
                cnt, sizeof(cnt), "%llu",
                (unsigned long long)(count + res->entries_applied + res->quarantined + res->held));
            sync_fault("apply.commit");
            /* One round trip: the HLC floor, the cursor, commit. */
            char fin[512];
            snprintf(fin, sizeof(fin),
                     "UPDATE rep_meta SET hlc = greatest(hlc, %llu); INSERT INTO "
                     "rep_inbound(origin, applied_seq, applied) VALUES(%s, %s, %s) ON CONFLICT "
                     "(origin) DO UPDATE SET applied_seq = excluded.applied_seq, applied = "
                     "excluded.applied; COMMIT",
                     (unsigned long long)res->max_hlc, o, sq, cnt);
            rc = sync_pg_ex(s, fin);
        }
    } else if (rc == 0) {
        res->entries_skipped = b->nentries;
        rc = sync_pg_ex(s, "COMMIT");
    }
    if (rc != 0) {
        log_err("apply of a batch from site %u failed: %s; rolled back", b->origin,
                PQerrorMessage(s->pc));
        PQclear(PQexec(s->pc, "ROLLBACK"));
        return MS_EDB;
    }
    s->cur_origin = b->origin;
    s->cur_seq = b->seq_hi > applied_seq ? b->seq_hi : applied_seq;
    s->cur_ok = true;
    sync_fault("apply.committed");
    return 0;
}

int sync_pg_retry(sync_db_t *db, sync_apply_res_t *res)
{
    pg_db_t *s = (pg_db_t *)db;
    memset(res, 0, sizeof(*res));
    PGresult *r =
        PQexecParams(s->pc, "SELECT id, payload FROM rep_quarantine ORDER BY id LIMIT 200", 0, NULL,
                     NULL, NULL, NULL, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        PQclear(r);
        return MS_EDB;
    }
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        int64_t id = (int64_t)rd_u64((const uint8_t *)PQgetvalue(r, i, 0));
        const uint8_t *pl = (const uint8_t *)PQgetvalue(r, i, 1);
        size_t pn = (size_t)PQgetlength(r, i, 1);
        arena_t *a = arena_new(4096);
        sync_msg_t msg;
        const char *why;
        if (sync_decode(pl, pn, a, &msg, &why) != 0 || msg.type != SYNC_MSG_BATCH) {
            arena_free(a);
            continue;
        }
        sync_apply_res_t r1 = {0};
        if (sync_pg_ex(s, "BEGIN; " APPLY_SETTINGS) != 0) {
            arena_free(a);
            rc = MS_EDB;
            break;
        }
        int x = apply_entries(s, &msg.u.batch, 0, &r1, id);
        if (x == 0 && r1.max_hlc) {
            char h[96];
            snprintf(h, sizeof(h), "UPDATE rep_meta SET hlc = greatest(hlc, %llu)",
                     (unsigned long long)r1.max_hlc);
            x = sync_pg_ex(s, h);
        }
        if (x == 0 && r1.entries_applied) {
            char ids[96];
            snprintf(ids, sizeof(ids), "DELETE FROM rep_quarantine WHERE id = %lld", (long long)id);
            x = sync_pg_ex(s, ids);
            res->entries_applied += r1.entries_applied;
        }
        x = x == 0 ? sync_pg_ex(s, "COMMIT") : x;
        if (x != 0) {
            PQclear(PQexec(s->pc, "ROLLBACK"));
            rc = MS_EDB;
        }
        arena_free(a);
    }
    PQclear(r);
    return rc;
}

int sync_pg_cursor(sync_db_t *db, uint32_t origin, uint64_t *applied)
{
    uint64_t count;
    pg_db_t *s = (pg_db_t *)db;
    if (s->cur_ok && s->cur_origin == origin) {
        *applied = s->cur_seq; /* committed by the last apply: no round trip */
        return 0;
    }
    return inbound_get(s, origin, applied, &count, false);
}
