/* sqlite_apply.c: the SQLite backend's receiver side: one transaction per batch, merge,
 * conflict log, quarantine and its retry (see sqlite.c for the design). */
#include "sync/sqlite_int.h"

/* ---- apply: the receiver side ---- */

typedef struct {
    sq_table_t *t;          /* NULL: unknown here */
    int map[SYNC_MAX_COLS]; /* local value column -> wire column, -1 if the peer lacks it */
    const char *missing;    /* a wire column we do not have */
    sqlite3_stmt *upsert;   /* owned by t (t->up_st) */
} wmap_t;

static sq_table_t *find_table(sq_db_t *s, const char *name)
{
    for (size_t i = 0; i < s->nt; i++) {
        if (strcmp(s->t[i].name, name) == 0) {
            return &s->t[i];
        }
    }
    return NULL;
}

/* Map a wire table onto the local one and prepare its upsert:
 *   INSERT INTO T(pk.., c..) VALUES(..) ON CONFLICT(pk) DO UPDATE SET
 *     c = CASE WHEN ?take_c THEN excluded.c ELSE c END, ...
 * Only columns both sides have take part; a column only we have keeps its value. */
static int map_table(sq_db_t *s, const sync_wtable_t *w, wmap_t *m)
{
    memset(m, 0, sizeof(*m));
    m->t = find_table(s, w->name);
    if (!m->t) {
        return 0;
    }
    sq_table_t *t = m->t;
    if (w->npk != t->npk) {
        m->missing = "(primary key differs)";
        return 0;
    }
    for (unsigned k = 0; k < t->npk; k++) {
        if (strcmp(w->cols[k], t->cols[k]) != 0) {
            m->missing = "(primary key differs)";
            return 0;
        }
    }
    for (unsigned c = 0; c < t->ncols; c++) {
        m->map[c] = -1;
        for (unsigned j = 0; j < w->ncols; j++) {
            if (strcmp(w->cols[w->npk + j], t->cols[t->npk + c]) == 0) {
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
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "INSERT INTO \"%s\"(", t->name);
    sync_sq_pk_list(&b, t, "");
    unsigned np = t->npk;
    for (unsigned c = 0; c < t->ncols; c++) {
        if (m->map[c] >= 0) {
            buf_printf(&b, ", \"%s\"", t->cols[t->npk + c]);
        }
    }
    buf_printf(&b, ") VALUES(");
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(&b, "%s?%u", k ? ", " : "", k + 1);
    }
    for (unsigned c = 0; c < t->ncols; c++) {
        if (m->map[c] >= 0) {
            buf_printf(&b, ", ?%u", t->npk + 2 * c + 1);
        }
    }
    buf_printf(&b, ") ON CONFLICT(");
    sync_sq_pk_list(&b, t, "");
    buf_printf(&b, ") DO ");
    bool any = false;
    for (unsigned c = 0; c < t->ncols; c++) {
        if (m->map[c] >= 0) {
            const char *n = t->cols[t->npk + c];
            buf_printf(&b, "%s\"%s\" = CASE WHEN ?%u THEN excluded.\"%s\" ELSE \"%s\" END",
                       any ? ", " : "UPDATE SET ", n, np + 2 * c + 2, n, n);
            any = true;
        }
    }
    if (!any) {
        buf_printf(&b, "NOTHING");
    }
    const char *sql = sync_sq_cstr(&b);
    if (!t->up_sql || strcmp(t->up_sql, sql) != 0) {
        sqlite3_finalize(t->up_st);
        free(t->up_sql);
        t->up_st = sync_sq_prep(s, sql);
        t->up_sql = t->up_st ? xstrdup(sql) : NULL;
    }
    m->upsert = t->up_st;
    buf_deinit(&b);
    return m->upsert ? 0 : MS_EDB;
}

static void bind_col_value(sqlite3_stmt *st, int idx, sqlite3_stmt *from, int col)
{
    if (from) {
        sqlite3_bind_value(st, idx, sqlite3_column_value(from, col));
    } else {
        sqlite3_bind_null(st, idx);
    }
}

static int log_conflict(sq_db_t *s, sq_table_t *t, const sync_entry_t *e, int col, const char *rule,
                        bool remote_won, sync_ver_t lv, const sync_val_t *rval, sync_ver_t rv)
{
    sqlite3_stmt *row = t->row_get;
    sqlite3_reset(row);
    for (unsigned k = 0; k < t->npk; k++) {
        sync_sq_bind_val(row, (int)k + 1, &e->pk[k]);
    }
    bool have = sqlite3_step(row) == SQLITE_ROW;
    buf_t pk;
    buf_init(&pk);
    sync_val_text(&pk, e->pk, t->npk);
    sqlite3_stmt *st = s->conflict_ins;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, (int64_t)time_wall_ms());
    sqlite3_bind_text(st, 2, t->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, sync_sq_cstr(&pk), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, col >= 0 ? t->cols[t->npk + col] : "*", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, rule, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, remote_won ? "remote" : "local", -1, SQLITE_STATIC);
    if (col >= 0 && have) {
        bind_col_value(st, 7, row, col);
    } else {
        sqlite3_bind_null(st, 7);
    }
    sync_sq_bind_ver(st, 8, lv);
    if (rval) {
        sync_sq_bind_val(st, 10, rval);
    } else {
        sqlite3_bind_null(st, 10);
    }
    sync_sq_bind_ver(st, 11, rv);
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_reset(row);
    buf_deinit(&pk);
    return r == SQLITE_DONE ? 0 : MS_EDB;
}

static int quarantine(sq_db_t *s, uint32_t origin, const sync_wtable_t *w, const sync_entry_t *e,
                      const char *kind, const char *error)
{
    /* The payload is the entry as a one-entry batch, so a retry decodes it like any other. */
    sync_batch_t one = {0};
    sync_entry_t ce = *e;
    ce.table = 0;
    one.origin = origin;
    one.seq_lo = e->seq - 1;
    one.seq_hi = e->seq;
    one.ntables = 1;
    one.tables = (sync_wtable_t *)w;
    one.nentries = 1;
    one.entries = &ce;
    buf_t p, pk;
    buf_init(&p);
    buf_init(&pk);
    sync_enc_batch(&p, &one);
    sync_val_text(&pk, e->pk, w->npk);
    sqlite3_stmt *st = s->quar_ins;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, origin);
    sqlite3_bind_int64(st, 2, (int64_t)e->seq);
    sqlite3_bind_text(st, 3, w->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, sync_sq_cstr(&pk), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 5, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, error, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 7, p.data, (int)p.len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 8, (int64_t)time_wall_ms());
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    static log_ratelimit_t rl = LOG_RATELIMIT_INIT(10, 10000);
    log_rl(&rl, LOG_LVL_WARN, "quarantined change from site %u to %s(%s): %s: %s", origin, w->name,
           sync_sq_cstr(&pk), kind, error);
    buf_deinit(&p);
    buf_deinit(&pk);
    return r == SQLITE_DONE ? 0 : MS_EDB;
}

static uint64_t entry_max_hlc(const sync_wtable_t *w, const sync_entry_t *e)
{
    uint64_t m = e->clv.hlc;
    for (unsigned c = 0; e->ver && c < w->ncols; c++) {
        m = e->ver[c].hlc > m ? e->ver[c].hlc : m;
    }
    return m;
}

/* Apply one entry. Returns 0 (applied), 1 (quarantined), or MS_EDB (the transaction is
 * unusable: the caller rolls back). */
/* Tests only (sync_audit_on()): record the applied change in this transaction. */
static int audit(sq_db_t *s, uint32_t origin, uint64_t seq)
{
    char sql[96]; /* rep_audit is made by sync_sq_attach() */
    snprintf(sql, sizeof(sql), "INSERT INTO rep_audit VALUES(%u, %lld)", origin, (long long)seq);
    return sync_sq_exec(s, sql);
}

static int apply_entry(sq_db_t *s, uint32_t origin, const sync_wtable_t *w, wmap_t *m,
                       const sync_entry_t *e, sync_apply_res_t *res)
{
    const sync_conf_t *conf = s->base.conf;
    uint64_t mx = entry_max_hlc(w, e);
    if (!m->t) {
        res->quarantined++;
        return quarantine(s, origin, w, e, "unknown-table", "no such replicated table here") ?: 1;
    }
    if (m->missing) {
        char msg[160];
        snprintf(msg, sizeof(msg), "column %s is not replicated here (add it, see docs/sync.md)",
                 m->missing);
        res->quarantined++;
        return quarantine(s, origin, w, e, "unknown-column", msg) ?: 1;
    }
    if (sync_hlc_future(mx, time_wall_ms(), conf->max_clock_skew_ms)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "stamped %llu ms ahead of the local clock (max_clock_skew %u)",
                 (unsigned long long)(SYNC_HLC_WALL(mx) - time_wall_ms()), conf->max_clock_skew_ms);
        res->held++;
        return quarantine(s, origin, w, e, "future", msg) ?: 1;
    }
    sq_table_t *t = m->t;
    sq_clock_t ck;
    if (sync_sq_clock_get(t, e->pk, &ck) != 0) {
        return MS_EDB;
    }
    sync_gc_t gc = sync_gc_row(ck.found, ck.cl, ck.clv, e->cl, e->clv,
                               sync_gc_horizon(time_wall_ms(), conf->tombstone_retention_ms));
    if (gc.verdict == SYNC_GC_REFUSE) {
        res->quarantined++;
        return quarantine(s, origin, w, e, "stale", SYNC_STALE_MSG) ?: 1;
    }
    if (gc.local_absent) {
        ck.cl = 0;
        ck.clv = (sync_ver_t){0, 0};
    }
    sync_row_action_t act =
        gc.verdict == SYNC_GC_IGNORE ? SYNC_ROW_STALE : sync_decide_row(ck.cl, e->cl);
    bool take[SYNC_MAX_COLS] = {false};
    bool write_row = false, del_row = false;
    if (act == SYNC_ROW_STALE) {
        if (e->cl % 2 == 1 && e->mask != 0 && ck.cl % 2 == 0) {
            /* update-vs-delete: the delete (a newer incarnation) wins; log the update lost. */
            for (unsigned c = 0; c < t->ncols; c++) {
                int j = m->map[c];
                if (j >= 0 && (e->mask >> j) & 1) {
                    if (log_conflict(s, t, e, (int)c, "update-vs-delete", false, ck.clv, &e->val[j],
                                     e->ver[j]) != 0) {
                        return MS_EDB;
                    }
                    res->conflicts++;
                }
            }
        }
    } else if (act == SYNC_ROW_REPLACE) {
        ck.cl = e->cl;
        ck.clv = e->clv;
        if (e->cl % 2 == 0) {
            del_row = true;
        } else {
            write_row = true;
            for (unsigned c = 0; c < t->ncols; c++) {
                if (m->map[c] >= 0) {
                    take[c] = true;
                    ck.v[c] = e->ver[m->map[c]];
                }
            }
        }
    } else {
        if (sync_ver_cmp(NULL, e->clv, ck.clv) > 0) {
            ck.clv = e->clv;
        }
        for (unsigned c = 0; e->cl % 2 == 1 && c < t->ncols; c++) {
            int j = m->map[c];
            if (j < 0) {
                continue;
            }
            sync_col_decision_t d =
                sync_decide_col(&s->base.rules, ck.v[c], e->ver[j], e->base[j], origin);
            /* The origin's version is the one our own change to the column overwrote: we had
             * seen it, so ours is not concurrent with it. This happens when the origin changed
             * other columns of the row and its entry reached us before ours reached it (the
             * entry carries every column's version). */
            if (d.conflict && sync_ver_eq(e->ver[j], ck.b[c])) {
                d.conflict = false;
            }
            log_debug(
                "merge %s col %u: local %llu/%u remote %llu/%u base %llu/%u -> take %d conflict %d",
                t->name, c, (unsigned long long)ck.v[c].hlc, ck.v[c].site,
                (unsigned long long)e->ver[j].hlc, e->ver[j].site,
                (unsigned long long)e->base[j].hlc, e->base[j].site, d.take, d.conflict);
            if (d.conflict) {
                if (log_conflict(s, t, e, (int)c, "column-lww", d.take, ck.v[c], &e->val[j],
                                 e->ver[j]) != 0) {
                    return MS_EDB;
                }
                res->conflicts++;
            }
            if (d.take) {
                take[c] = true;
                write_row = true;
                ck.v[c] = e->ver[j];
            }
        }
    }
    if (write_row) {
        sqlite3_stmt *st = m->upsert;
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        for (unsigned k = 0; k < t->npk; k++) {
            sync_sq_bind_val(st, (int)k + 1, &e->pk[k]);
        }
        for (unsigned c = 0; c < t->ncols; c++) {
            if (m->map[c] >= 0) {
                sync_sq_bind_val(st, (int)(t->npk + 2 * c + 1), &e->val[m->map[c]]);
                sqlite3_bind_int(st, (int)(t->npk + 2 * c + 2), take[c]);
            }
        }
        int r = sqlite3_step(st);
        sqlite3_reset(st);
        if (r != SQLITE_DONE) {
            /* The statement was rolled back on its own (statement journal); the transaction
             * goes on. Constraint and type errors are the entry's fault, anything else is
             * the database's: give up the batch. */
            int ec = sqlite3_errcode(s->db);
            if (ec == SQLITE_CONSTRAINT || ec == SQLITE_MISMATCH || ec == SQLITE_TOOBIG) {
                res->quarantined++;
                return quarantine(s, origin, w, e, "constraint", sqlite3_errmsg(s->db)) ?: 1;
            }
            return MS_EDB;
        }
    }
    if (del_row) {
        sqlite3_stmt *st = t->row_del;
        sqlite3_reset(st);
        for (unsigned k = 0; k < t->npk; k++) {
            sync_sq_bind_val(st, (int)k + 1, &e->pk[k]);
        }
        int r = sqlite3_step(st);
        sqlite3_reset(st);
        if (r != SQLITE_DONE) {
            int ec = sqlite3_errcode(s->db);
            if (ec == SQLITE_CONSTRAINT) {
                res->quarantined++;
                return quarantine(s, origin, w, e, "constraint", sqlite3_errmsg(s->db)) ?: 1;
            }
            return MS_EDB;
        }
    }
    if (act != SYNC_ROW_STALE && sync_sq_clock_put(t, e->pk, &ck, false) != 0) {
        return MS_EDB;
    }
    if (mx > res->max_hlc) {
        res->max_hlc = mx;
    }
    if (sync_audit_on() && audit(s, origin, e->seq) != 0) {
        return MS_EDB;
    }
    res->entries_applied++;
    return 0;
}

/* Apply entries of b (those past `after`) inside the open transaction. */
static int apply_entries(sq_db_t *s, const sync_batch_t *b, uint64_t after, sync_apply_res_t *res)
{
    wmap_t *maps = xcalloc(b->ntables ? b->ntables : 1, sizeof(wmap_t));
    int rc = 0;
    for (size_t i = 0; i < b->ntables && rc == 0; i++) {
        rc = map_table(s, &b->tables[i], &maps[i]);
    }
    for (size_t i = 0; i < b->nentries && rc == 0; i++) {
        const sync_entry_t *e = &b->entries[i];
        if (e->seq <= after) {
            res->entries_skipped++;
            continue;
        }
        int r = apply_entry(s, b->origin, &b->tables[e->table], &maps[e->table], e, res);
        if (r < 0) {
            rc = r;
        }
        sync_fault("apply.entry");
    }
    free(maps); /* their upserts belong to the tables (map_table) */
    if (rc == 0 && res->max_hlc) {
        sqlite3_reset(s->hlc_bump);
        sqlite3_bind_int64(s->hlc_bump, 1, (int64_t)res->max_hlc);
        rc = sqlite3_step(s->hlc_bump) == SQLITE_DONE ? 0 : MS_EDB;
        sqlite3_reset(s->hlc_bump);
    }
    return rc;
}

int sync_sq_inbound_get(sq_db_t *s, uint32_t origin, uint64_t *seq, uint64_t *count)
{
    sqlite3_stmt *st = s->inb_get;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, origin);
    *seq = *count = 0;
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        *seq = (uint64_t)sqlite3_column_int64(st, 0);
        *count = (uint64_t)sqlite3_column_int64(st, 1);
        r = SQLITE_DONE;
    }
    sqlite3_reset(st);
    return r == SQLITE_DONE ? 0 : MS_EDB;
}

int sync_sq_apply(sync_db_t *db, const sync_batch_t *b, sync_apply_res_t *res)
{
    sq_db_t *s = (sq_db_t *)db;
    memset(res, 0, sizeof(*res));
    sync_fault("apply.before-begin");
    if (sync_sq_exec(s, "BEGIN IMMEDIATE") != 0) {
        return MS_EDB;
    }
    sync_fault("apply.begin");
    uint64_t applied_seq, count;
    /* Local changes committed before this transaction are folded first, so the merge below
     * compares against them (no local change can commit while we hold the write lock). */
    int rc = sync_sq_fold(s);
    if (rc == 0) {
        rc = sync_sq_inbound_get(s, b->origin, &applied_seq, &count);
    }
    if (rc == 0 && b->seq_hi > applied_seq) {
        rc = apply_entries(s, b, applied_seq, res);
        if (rc == 0) {
            sync_fault("apply.cursor");
            sqlite3_stmt *st = s->inb_put;
            sqlite3_reset(st);
            sqlite3_bind_int64(st, 1, b->origin);
            sqlite3_bind_int64(st, 2, (int64_t)b->seq_hi);
            sqlite3_bind_int64(
                st, 3, (int64_t)(count + res->entries_applied + res->quarantined + res->held));
            rc = sqlite3_step(st) == SQLITE_DONE ? 0 : MS_EDB;
            sqlite3_reset(st);
        }
    } else if (rc == 0) {
        res->entries_skipped = b->nentries;
    }
    if (rc == 0) {
        sync_fault("apply.commit");
        rc = sync_sq_exec(s, "COMMIT");
    }
    if (rc != 0) {
        log_err("apply of a batch from site %u failed: %s; rolled back", b->origin,
                sqlite3_errmsg(s->db));
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return MS_EDB;
    }
    sync_fault("apply.committed");
    return 0;
}

/* Retry quarantined and held-back entries: each in its own transaction, removed from the
 * quarantine when it applies, its attempt count raised when it does not. */
int sync_sq_retry(sync_db_t *db, sync_apply_res_t *res)
{
    sq_db_t *s = (sq_db_t *)db;
    memset(res, 0, sizeof(*res));
    sqlite3_stmt *sel = NULL;
    if (sqlite3_prepare_v2(s->db, "SELECT id, payload FROM rep_quarantine ORDER BY id LIMIT 200",
                           -1, &sel, NULL) != SQLITE_OK) {
        return MS_EDB;
    }
    typedef struct {
        int64_t id;
        uint8_t *p;
        size_t n;
    } q_t;
    q_t q[200];
    size_t nq = 0;
    while (sqlite3_step(sel) == SQLITE_ROW && nq < 200) {
        q[nq].id = sqlite3_column_int64(sel, 0);
        q[nq].n = (size_t)sqlite3_column_bytes(sel, 1);
        q[nq].p = xmalloc(q[nq].n ? q[nq].n : 1);
        memcpy(q[nq].p, sqlite3_column_blob(sel, 1), q[nq].n);
        nq++;
    }
    sqlite3_finalize(sel);
    int rc = 0;
    for (size_t i = 0; i < nq; i++) {
        arena_t *a = arena_new(4096);
        sync_msg_t msg;
        const char *why;
        bool drop = false;
        if (sync_decode(q[i].p, q[i].n, a, &msg, &why) != 0 || msg.type != SYNC_MSG_BATCH ||
            msg.u.batch.nentries != 1) {
            drop = true; /* cannot happen: we wrote it */
        }
        char sql[512];
        if (!drop && sync_sq_exec(s, "BEGIN IMMEDIATE") == 0) {
            sync_apply_res_t r1 = {0};
            int r = sync_sq_fold(s);
            if (r == 0) {
                /* Try it as a fresh entry; if it fails again apply_entry writes a new
                 * quarantine row, which we then fold back into the old one. */
                r = apply_entries(s, &msg.u.batch, 0, &r1);
            }
            if (r == 0 && r1.entries_applied == 1) {
                snprintf(sql, sizeof(sql), "DELETE FROM rep_quarantine WHERE id = %lld",
                         (long long)q[i].id);
                r = sync_sq_exec(s, sql);
                res->entries_applied++;
                res->max_hlc = r1.max_hlc > res->max_hlc ? r1.max_hlc : res->max_hlc;
            } else if (r == 0) {
                snprintf(sql, sizeof(sql),
                         "UPDATE rep_quarantine SET attempts = attempts + 1, last_ms = %lld,"
                         " error = (SELECT error FROM rep_quarantine ORDER BY id DESC LIMIT 1)"
                         " WHERE id = %lld; DELETE FROM rep_quarantine WHERE id = "
                         "(SELECT max(id) FROM rep_quarantine);",
                         (long long)time_wall_ms(), (long long)q[i].id);
                r = sync_sq_exec(s, sql);
            }
            if (r == 0) {
                r = sync_sq_exec(s, "COMMIT");
            }
            if (r != 0) {
                sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
                rc = MS_EDB;
            }
        }
        arena_free(a);
        free(q[i].p);
        if (rc != 0) {
            for (size_t j = i + 1; j < nq; j++) {
                free(q[j].p);
            }
            break;
        }
    }
    return rc;
}
