/* sqlite_capture.c: the SQLite backend's capture: change tables, triggers, and the fold of
 * the capture log into the change tables (see sqlite.c for the design). */
#include "sync/sqlite_int.h"

static const char *meta_sql =
    "CREATE TABLE IF NOT EXISTS rep_meta(id INTEGER PRIMARY KEY CHECK (id = 1),"
    " site INTEGER NOT NULL, hlc INTEGER NOT NULL, acked INTEGER NOT NULL DEFAULT 0);"
    "DROP TABLE IF EXISTS rep_ctx;" /* the old no-echo marker (see trig_one) */
    "CREATE TABLE IF NOT EXISTS rep_table(name TEXT PRIMARY KEY, pk TEXT NOT NULL,"
    " cols TEXT NOT NULL, fp BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS rep_peer(site INTEGER PRIMARY KEY, acked INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS rep_inbound(origin INTEGER PRIMARY KEY,"
    " applied_seq INTEGER NOT NULL, applied INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS rep_conflict(id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL,"
    " tbl TEXT NOT NULL, pk TEXT NOT NULL, col TEXT NOT NULL, rule TEXT NOT NULL,"
    " winner TEXT NOT NULL, local_val, local_hlc INTEGER, local_site INTEGER,"
    " remote_val, remote_hlc INTEGER, remote_site INTEGER);"
    "CREATE TABLE IF NOT EXISTS rep_quarantine(id INTEGER PRIMARY KEY, origin INTEGER NOT NULL,"
    " seq INTEGER NOT NULL, tbl TEXT NOT NULL, pk TEXT NOT NULL, kind TEXT NOT NULL,"
    " error TEXT NOT NULL, payload BLOB NOT NULL, attempts INTEGER NOT NULL,"
    " first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL);";

/* ---- table metadata ---- */

static void table_free(sq_table_t *t)
{
    for (unsigned i = 0; i < t->npk + t->ncols; i++) {
        free(t->cols[i]);
    }
    free(t->cols);
    free(t->name);
    sqlite3_finalize(t->read);
    sqlite3_finalize(t->clk_get);
    sqlite3_finalize(t->clk_put);
    sqlite3_finalize(t->clk_upd);
    sqlite3_finalize(t->log_sel);
    sqlite3_finalize(t->log_del);
    sqlite3_finalize(t->log_any);
    sqlite3_finalize(t->up_st);
    free(t->up_sql);
    sqlite3_finalize(t->row_get);
    sqlite3_finalize(t->row_del);
    memset(t, 0, sizeof(*t));
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Read T's columns from the live schema. decl (optional) gets the pk declared types. */
static int table_load(sq_db_t *s, const char *name, sq_table_t *t, char ***decl, char *why,
                      size_t whylen)
{
    char *sql = xasprintf("PRAGMA table_info(\"%s\")", name);
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    free(sql);
    if (rc != SQLITE_OK) {
        return sync_sq_why_db(s, why, whylen, name);
    }
    char *pk[SYNC_MAX_PK] = {0}, *pkdecl[SYNC_MAX_PK] = {0};
    char *vals[SYNC_MAX_COLS + 1];
    unsigned npk = 0, nv = 0, n = 0;
    int err = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *cname = (const char *)sqlite3_column_text(st, 1);
        const char *ctype = (const char *)sqlite3_column_text(st, 2);
        int pkpos = sqlite3_column_int(st, 5);
        n++;
        if (!sync_ident_ok(cname, SYNC_MAX_NAME - 3)) {
            snprintf(why, whylen, "table %s: column name '%s' is not a plain identifier", name,
                     cname);
            err = MS_EINVAL;
            break;
        }
        if (pkpos > 0) {
            if (pkpos > SYNC_MAX_PK) {
                snprintf(why, whylen, "table %s: more than %d primary key columns", name,
                         SYNC_MAX_PK);
                err = MS_EINVAL;
                break;
            }
            pk[pkpos - 1] = xstrdup(cname);
            pkdecl[pkpos - 1] = xstrdup(ctype ? ctype : "");
            npk = (unsigned)pkpos > npk ? (unsigned)pkpos : npk;
        } else {
            if (nv == SYNC_MAX_COLS) {
                snprintf(why, whylen, "table %s: more than %d non-key columns", name,
                         SYNC_MAX_COLS);
                err = MS_EINVAL;
                break;
            }
            vals[nv++] = xstrdup(cname);
        }
    }
    sqlite3_finalize(st);
    if (!err && n == 0) {
        snprintf(why, whylen, "table %s does not exist", name);
        err = MS_ENOENT;
    } else if (!err && npk == 0) {
        snprintf(why, whylen,
                 "table %s has no primary key: rows are replicated by primary key, so every "
                 "replicated table needs one (ALTER the table or recreate it with one)",
                 name);
        err = MS_EINVAL;
    }
    if (err) {
        for (unsigned i = 0; i < SYNC_MAX_PK; i++) {
            free(pk[i]);
            free(pkdecl[i]);
        }
        for (unsigned i = 0; i < nv; i++) {
            free(vals[i]);
        }
        return err;
    }
    qsort(vals, nv, sizeof(char *), cmp_str);
    memset(t, 0, sizeof(*t));
    t->name = xstrdup(name);
    t->npk = npk;
    t->ncols = nv;
    t->cols = xcalloc(npk + nv, sizeof(char *));
    memcpy(t->cols, pk, npk * sizeof(char *));
    memcpy(t->cols + npk, vals, nv * sizeof(char *));
    t->w.name = t->name;
    t->w.npk = npk;
    t->w.ncols = nv;
    t->w.cols = t->cols;
    sync_fingerprint(&t->w, t->fp);
    if (decl) {
        *decl = xcalloc(npk, sizeof(char *));
        memcpy(*decl, pkdecl, npk * sizeof(char *));
    } else {
        for (unsigned i = 0; i < npk; i++) {
            free(pkdecl[i]);
        }
    }
    return 0;
}

/* ---- init: change tables and triggers ---- */

/* Add the INTEGER column pre + col to table tbl unless it has it. */
static int add_column(sq_db_t *s, const char *tbl, const char *pre, const char *col)
{
    char *q = xasprintf("SELECT 1 FROM pragma_table_info('%s') WHERE name = '%s%s'", tbl, pre, col);
    sqlite3_stmt *st = NULL;
    bool have = false;
    if (sqlite3_prepare_v2(s->db, q, -1, &st, NULL) == SQLITE_OK) {
        have = sqlite3_step(st) == SQLITE_ROW;
    }
    sqlite3_finalize(st);
    free(q);
    int rc = 0;
    if (!have) {
        q = xasprintf("ALTER TABLE \"%s\" ADD COLUMN \"%s%s\" INTEGER", tbl, pre, col);
        rc = sync_sq_exec(s, q);
        free(q);
    }
    return rc;
}

static int ensure_clock(sq_db_t *s, const sq_table_t *t, char **decl)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "CREATE TABLE IF NOT EXISTS \"rep_c_%s\"(", t->name);
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(&b, "\"%s\" %s NOT NULL, ", t->cols[k], decl[k]);
    }
    buf_printf(&b, "seq INTEGER NOT NULL, mask INTEGER NOT NULL, cl INTEGER NOT NULL,"
                   " clh INTEGER NOT NULL, cls INTEGER NOT NULL, PRIMARY KEY(");
    sync_sq_pk_list(&b, t, "");
    /* The position index holds only rows changed here (seq > 0): a row that only ever
     * arrived from peers costs no index entry, which is most of an initial copy. Queries by
     * position say seq > 0 so that the planner can use it. */
    buf_printf(&b,
               ")) WITHOUT ROWID; DROP INDEX IF EXISTS \"rep_c_%s_seq\";"
               "CREATE INDEX IF NOT EXISTS \"rep_c_%s_pos\" ON \"rep_c_%s\"(seq) WHERE seq > 0;",
               t->name, t->name, t->name);
    /* The capture log: the triggers only append here (one page, the rightmost), and the
     * agent folds it into rep_c_T (see sync_sq_fold()). */
    buf_printf(&b, "CREATE TABLE IF NOT EXISTS \"rep_l_%s\"(seq INTEGER PRIMARY KEY", t->name);
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(&b, ", \"%s\" %s", t->cols[k], decl[k]);
    }
    buf_printf(&b, ", op INTEGER NOT NULL, mask INTEGER NOT NULL, ms INTEGER);");
    int rc = sync_sq_exec(s, sync_sq_cstr(&b));
    /* A log made before the wall-clock column: its rows carry their position in seq (the
     * fold reads them as such, ms NULL); the column is added, not the table remade. */
    if (rc == 0) {
        buf_reset(&b);
        buf_printf(&b, "rep_l_%s", t->name);
        rc = add_column(s, sync_sq_cstr(&b), "", "ms");
    }
    /* Version columns are added one by one so that a column added to T later only adds its
     * four columns here: no backfill, an absent version is "none". */
    buf_reset(&b);
    buf_printf(&b, "rep_c_%s", t->name);
    for (unsigned c = t->npk; rc == 0 && c < t->npk + t->ncols; c++) {
        static const char *const pre[] = {"v_", "s_", "b_", "bs_"};
        for (int i = 0; i < 4 && rc == 0; i++) {
            rc = add_column(s, sync_sq_cstr(&b), pre[i], t->cols[c]);
        }
    }
    buf_deinit(&b);
    return rc;
}

enum { OP_INSERT = 1, OP_UPDATE = 2, OP_DELETE = 3 };

/* Capture triggers: one append to rep_l_T per changed row: the key, the operation, the
 * changed columns and the wall clock in milliseconds. They have no WHEN test for the agent's
 * own writes: the agent's connection runs with triggers disabled
 * (SQLITE_DBCONFIG_ENABLE_TRIGGER, see sync_sqlite_open), so what it applies is never
 * captured and no application write pays for a test. The trigger reads no other table: the
 * HLC position max(ms << 16, rep_meta.hlc + 1, previous + 1) is given by the fold, which
 * reads the log in commit order (seq, the rowid) and runs before every apply, so rep_meta.hlc
 * is the same there as it was at the write (sync_sq_fold()). */
static void trig_one(buf_t *b, const sq_table_t *t, const char *when, const char *row, int op)
{
    static const char *const names[] = {"", "ai", "au", "ad"};
    static const char *const events[] = {"", "INSERT", "UPDATE", "DELETE"};
    uint64_t all = t->ncols >= 64 ? ~0ull : ((1ull << t->ncols) - 1);
    buf_printf(b,
               "CREATE TRIGGER \"rep_%s_%s\" AFTER %s ON \"%s\"%s BEGIN INSERT INTO \"rep_l_%s\"(",
               names[op], t->name, events[op], t->name, when, t->name);
    sync_sq_pk_list(b, t, "");
    buf_printf(b, ", op, mask, ms) VALUES(");
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(b, "%s%s.\"%s\"", k ? ", " : "", row, t->cols[k]);
    }
    buf_printf(b, ", %d, ", op);
    if (op == OP_INSERT) {
        buf_printf(b, "%lld", (long long)all);
    } else if (op == OP_DELETE) {
        buf_printf(b, "0");
    } else {
        buf_printf(b, "0");
        for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
            buf_printf(b, " | ((OLD.\"%s\" IS NOT NEW.\"%s\") << %u)", t->cols[c], t->cols[c],
                       c - t->npk);
        }
    }
    buf_printf(b, ", CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)); END;");
}

static void trig_ins(buf_t *b, const sq_table_t *t)
{
    trig_one(b, t, "", "NEW", OP_INSERT);
}

static void trig_upd(buf_t *b, const sq_table_t *t)
{
    buf_t w;
    buf_init(&w);
    buf_printf(&w, " WHEN 0");
    for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
        buf_printf(&w, " OR OLD.\"%s\" IS NOT NEW.\"%s\"", t->cols[c], t->cols[c]);
    }
    trig_one(b, t, sync_sq_cstr(&w), "NEW", OP_UPDATE);
    buf_deinit(&w);
}

static void trig_del(buf_t *b, const sq_table_t *t)
{
    trig_one(b, t, "", "OLD", OP_DELETE);
}

/* A primary key update would need a delete and an insert under two keys; it is refused with
 * a clear error instead (as ElectricSQL does), so it can never be half-replicated. */
static void trig_pk(buf_t *b, const sq_table_t *t)
{
    buf_printf(b, "CREATE TRIGGER \"rep_bu_%s\" BEFORE UPDATE ON \"%s\" WHEN 0", t->name, t->name);
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(b, " OR OLD.\"%s\" IS NOT NEW.\"%s\"", t->cols[k], t->cols[k]);
    }
    buf_printf(b, " BEGIN SELECT RAISE(ABORT, 'multisite-syncd: primary key updates are not "
                  "replicated; delete the row and insert it under the new key'); END;");
}

static int install_table(sq_db_t *s, sq_table_t *t)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b,
               "DROP TRIGGER IF EXISTS \"rep_ai_%s\"; DROP TRIGGER IF EXISTS \"rep_au_%s\"; "
               "DROP TRIGGER IF EXISTS \"rep_ad_%s\"; DROP TRIGGER IF EXISTS \"rep_bu_%s\";",
               t->name, t->name, t->name, t->name);
    trig_ins(&b, t);
    trig_upd(&b, t);
    trig_del(&b, t);
    trig_pk(&b, t);
    int rc = sync_sq_exec(s, sync_sq_cstr(&b));
    /* Rows that existed before capture was installed get a clock row each, with a distinct
     * position, so they are sent like any other change. A row with a capture log entry is
     * not one of them: the fold gives it its entry, at the logged (lower) position; an entry
     * made here would be sent at this higher one first and then move below the peers'
     * cursors, leaving them with versions this site never had. */
    if (rc == 0) {
        buf_reset(&b);
        buf_printf(&b, "INSERT INTO \"rep_c_%s\"(", t->name);
        sync_sq_pk_list(&b, t, "");
        buf_printf(&b, ", seq, mask, cl, clh, cls");
        for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
            buf_printf(&b, ", \"v_%s\", \"s_%s\"", t->cols[c], t->cols[c]);
        }
        buf_printf(&b, ") SELECT ");
        sync_sq_pk_list(&b, t, "t.");
        buf_printf(&b, ", m.h + row_number() OVER (), 0, 1, m.h + row_number() OVER (), m.site");
        for (unsigned c = 0; c < t->ncols; c++) {
            buf_printf(&b, ", m.h + row_number() OVER (), m.site");
        }
        buf_printf(&b,
                   " FROM \"%s\" t, (SELECT max(CAST((julianday('now') - 2440587.5) * "
                   "86400000.0 AS INTEGER) << 16, hlc) AS h, site FROM rep_meta) m WHERE NOT "
                   "EXISTS (SELECT 1 FROM \"rep_c_%s\" c WHERE ",
                   t->name, t->name);
        sync_sq_pk_where(&b, t, "c.", "t.");
        /* NOT IN: the log is read once into a transient index, not scanned per row. */
        buf_printf(&b, ") AND (");
        sync_sq_pk_list(&b, t, "t.");
        buf_printf(&b, ") NOT IN (SELECT ");
        sync_sq_pk_list(&b, t, "");
        buf_printf(&b, " FROM \"rep_l_%s\" WHERE ", t->name);
        for (unsigned k = 0; k < t->npk; k++) {
            buf_printf(&b, "%s\"%s\" IS NOT NULL", k ? " AND " : "", t->cols[k]);
        }
        buf_printf(&b, ")");
        rc = sync_sq_exec(s, sync_sq_cstr(&b));
        if (rc == 0) {
            buf_reset(&b);
            buf_printf(&b,
                       "UPDATE rep_meta SET hlc = max(hlc, coalesce((SELECT max(seq) FROM "
                       "\"rep_c_%s\" WHERE seq > 0), 0))",
                       t->name);
            rc = sync_sq_exec(s, sync_sq_cstr(&b));
        }
    }
    if (rc == 0) {
        buf_t cols;
        buf_init(&cols);
        for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
            buf_printf(&cols, "%s%s", c > t->npk ? "," : "", t->cols[c]);
        }
        buf_reset(&b);
        sync_sq_pk_list(&b, t, "");
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(s->db,
                               "INSERT OR REPLACE INTO rep_table(name, pk, cols, fp) "
                               "VALUES(?, ?, ?, ?)",
                               -1, &st, NULL) == SQLITE_OK) {
            sqlite3_bind_text(st, 1, t->name, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(st, 2, sync_sq_cstr(&b), -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(st, 3, cols.len ? sync_sq_cstr(&cols) : "", -1, SQLITE_TRANSIENT);
            sqlite3_bind_blob(st, 4, t->fp, 16, SQLITE_TRANSIENT);
            rc = sqlite3_step(st) == SQLITE_DONE ? 0 : MS_EDB;
        } else {
            rc = MS_EDB;
        }
        sqlite3_finalize(st);
        buf_deinit(&cols);
    }
    buf_deinit(&b);
    return rc;
}

static int prepare_table(sq_db_t *s, sq_table_t *t)
{
    buf_t b;
    buf_init(&b);
    /* read: pending local changes with the row image, in position order */
    buf_printf(&b, "SELECT ");
    sync_sq_pk_list(&b, t, "c.");
    buf_printf(&b, ", c.seq, c.mask, c.cl, c.clh, c.cls");
    for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
        const char *n = t->cols[c];
        buf_printf(&b, ", c.\"v_%s\", c.\"s_%s\", c.\"b_%s\", c.\"bs_%s\", t.\"%s\"", n, n, n, n,
                   n);
    }
    buf_printf(&b, " FROM \"rep_c_%s\" c LEFT JOIN \"%s\" t ON ", t->name, t->name);
    sync_sq_pk_where(&b, t, "t.", "c.");
    buf_printf(&b, " WHERE c.seq > ?1 AND c.seq > 0 ORDER BY c.seq LIMIT ?2");
    t->read = sync_sq_prep(s, sync_sq_cstr(&b));
    /* clock get / put */
    buf_reset(&b);
    buf_printf(&b, "SELECT seq, mask, cl, clh, cls");
    for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
        const char *n = t->cols[c];
        buf_printf(&b, ", \"v_%s\", \"s_%s\", \"b_%s\", \"bs_%s\"", n, n, n, n);
    }
    buf_printf(&b, " FROM \"rep_c_%s\" WHERE ", t->name);
    sync_sq_pk_where(&b, t, "", NULL);
    t->clk_get = sync_sq_prep(s, sync_sq_cstr(&b));
    buf_reset(&b);
    buf_printf(&b, "INSERT OR REPLACE INTO \"rep_c_%s\"(", t->name);
    sync_sq_pk_list(&b, t, "");
    buf_printf(&b, ", seq, mask, cl, clh, cls");
    for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
        const char *n = t->cols[c];
        buf_printf(&b, ", \"v_%s\", \"s_%s\", \"b_%s\", \"bs_%s\"", n, n, n, n);
    }
    buf_printf(&b, ") VALUES(");
    for (unsigned i = 0; i < t->npk + 5 + 4 * t->ncols; i++) {
        buf_printf(&b, "%s?%u", i ? ", " : "", i + 1);
    }
    buf_printf(&b, ")");
    t->clk_put = sync_sq_prep(s, sync_sq_cstr(&b));
    /* Same parameter numbers as clk_put; an existing row keeps its seq, mask and bases, and
     * the seq index is not touched. */
    buf_reset(&b);
    buf_printf(&b, "UPDATE \"rep_c_%s\" SET cl = ?%u, clh = ?%u, cls = ?%u", t->name, t->npk + 3,
               t->npk + 4, t->npk + 5);
    for (unsigned c = 0; c < t->ncols; c++) {
        const char *n = t->cols[t->npk + c];
        buf_printf(&b, ", \"v_%s\" = ?%u, \"s_%s\" = ?%u", n, t->npk + 6 + 4 * c, n,
                   t->npk + 7 + 4 * c);
    }
    buf_printf(&b, " WHERE ");
    sync_sq_pk_where(&b, t, "", NULL);
    t->clk_upd = sync_sq_prep(s, sync_sq_cstr(&b));
    buf_reset(&b);
    buf_printf(&b, "SELECT ");
    for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
        buf_printf(&b, "%s\"%s\"", c > t->npk ? ", " : "", t->cols[c]);
    }
    if (t->ncols == 0) {
        buf_printf(&b, "1");
    }
    buf_printf(&b, " FROM \"%s\" WHERE ", t->name);
    sync_sq_pk_where(&b, t, "", NULL);
    t->row_get = sync_sq_prep(s, sync_sq_cstr(&b));
    buf_reset(&b);
    buf_printf(&b, "DELETE FROM \"%s\" WHERE ", t->name);
    sync_sq_pk_where(&b, t, "", NULL);
    t->row_del = sync_sq_prep(s, sync_sq_cstr(&b));
    buf_reset(&b);
    buf_printf(&b, "SELECT seq, ");
    sync_sq_pk_list(&b, t, "");
    buf_printf(&b, ", op, mask, ms FROM \"rep_l_%s\" ORDER BY seq", t->name);
    t->log_sel = sync_sq_prep(s, sync_sq_cstr(&b));
    buf_reset(&b);
    buf_printf(&b, "DELETE FROM \"rep_l_%s\" WHERE seq <= ?1", t->name);
    t->log_del = sync_sq_prep(s, sync_sq_cstr(&b));
    buf_reset(&b);
    buf_printf(&b, "SELECT 1 FROM \"rep_l_%s\" LIMIT 1", t->name);
    t->log_any = sync_sq_prep(s, sync_sq_cstr(&b));
    buf_deinit(&b);
    return t->read && t->clk_get && t->clk_put && t->clk_upd && t->log_sel && t->log_del &&
                   t->log_any && t->row_get && t->row_del
               ? 0
               : MS_EDB;
}

static int prepare_common(sq_db_t *s)
{
    s->inb_get = sync_sq_prep(s, "SELECT applied_seq, applied FROM rep_inbound WHERE origin = ?1");
    s->inb_put = sync_sq_prep(s, "INSERT OR REPLACE INTO rep_inbound(origin, applied_seq, applied) "
                                 "VALUES(?1, ?2, ?3)");
    s->conflict_ins =
        sync_sq_prep(s, "INSERT INTO rep_conflict(at_ms, tbl, pk, col, rule, winner, local_val,"
                        " local_hlc, local_site, remote_val, remote_hlc, remote_site)"
                        " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)");
    s->quar_ins =
        sync_sq_prep(s, "INSERT INTO rep_quarantine(origin, seq, tbl, pk, kind, error, payload,"
                        " attempts, first_ms, last_ms) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, 1,"
                        " ?8, ?8)");
    s->hlc_bump = sync_sq_prep(s, "UPDATE rep_meta SET hlc = max(hlc, ?1)");
    s->data_ver = sync_sq_prep(s, "PRAGMA data_version");
    s->acked_get = sync_sq_prep(s, "SELECT acked, hlc FROM rep_meta");
    return s->inb_get && s->inb_put && s->conflict_ins && s->quar_ins && s->hlc_bump &&
                   s->data_ver && s->acked_get
               ? 0
               : MS_EDB;
}

void sync_sq_tables_free(sq_db_t *s)
{
    for (size_t i = 0; i < s->nt; i++) {
        table_free(&s->t[i]);
    }
    free(s->t);
    s->t = NULL;
    s->nt = 0;
}

static int schema_version(sq_db_t *s)
{
    sqlite3_stmt *st = NULL;
    int v = -1;
    if (sqlite3_prepare_v2(s->db, "PRAGMA schema_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int(st, 0);
    }
    sqlite3_finalize(st);
    return v;
}
/* Install (or refresh, after a column was added) capture for every configured table, in one
 * transaction, then load the metadata the agent needs. Idempotent. */
int sync_sq_init(sync_db_t *db, char *why, size_t whylen)
{
    sq_db_t *s = (sq_db_t *)db;
    const sync_conf_t *c = db->conf;
    if (sync_sq_exec(s, "BEGIN IMMEDIATE") != 0) {
        return sync_sq_why_db(s, why, whylen, "cannot start the init transaction");
    }
    /* A refresh (a column was added): sync_sq_fold what the old triggers logged under the old
     * column order first, in this transaction, so no change mask is read under the new one. */
    int rc = s->nt > 0 && s->hlc_bump ? sync_sq_fold(s) : 0;
    sync_sq_tables_free(s);
    if (rc == 0) {
        rc = sync_sq_exec(s, meta_sql);
    }
    if (rc == 0) {
        rc = sync_sq_life_schema(s);
    }
    if (rc == 0) {
        char *sql = xasprintf("INSERT INTO rep_meta(id, site, hlc) VALUES(1, %u, 0) "
                              "ON CONFLICT DO NOTHING",
                              c->site_id);
        rc = sync_sq_exec(s, sql);
        free(sql);
    }
    sqlite3_stmt *st = NULL;
    if (rc == 0 &&
        sqlite3_prepare_v2(s->db, "SELECT site FROM rep_meta", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        s->site = (uint32_t)sqlite3_column_int64(st, 0);
        if (s->site != c->site_id) {
            snprintf(why, whylen,
                     "database %s belongs to site id %u, the config says %u (a copy of another "
                     "site's database must be joined, see docs/sync.md)",
                     c->database, s->site, c->site_id);
            rc = MS_ECONF;
        }
    }
    sqlite3_finalize(st);
    s->t = xcalloc(c->tables.n, sizeof(sq_table_t));
    for (size_t i = 0; rc == 0 && i < c->tables.n; i++) {
        char **decl = NULL;
        rc = table_load(s, c->tables.v[i], &s->t[i], &decl, why, whylen);
        if (rc != 0) {
            break;
        }
        s->nt++;
        if (ensure_clock(s, &s->t[i], decl) != 0) {
            rc = sync_sq_why_db(s, why, whylen, "creating change tables");
        }
        for (unsigned k = 0; k < s->t[i].npk; k++) {
            free(decl[k]);
        }
        free(decl);
    }
    for (size_t i = 0; rc == 0 && i < s->nt; i++) {
        if (install_table(s, &s->t[i]) != 0) {
            rc = sync_sq_why_db(s, why, whylen, "installing capture");
        }
    }
    if (rc != 0) {
        if (!why[0]) {
            snprintf(why, whylen, "init failed: %s", sqlite3_errmsg(s->db));
        }
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        sync_sq_tables_free(s);
        return rc;
    }
    if (sync_sq_exec(s, "COMMIT") != 0) {
        sync_sq_tables_free(s);
        return sync_sq_why_db(s, why, whylen, "commit of init");
    }
    for (size_t i = 0; i < s->nt; i++) {
        if (prepare_table(s, &s->t[i]) != 0) {
            sync_sq_tables_free(s);
            return sync_sq_why_db(s, why, whylen, "preparing statements");
        }
    }
    s->schema_version = schema_version(s);
    return 0;
}

int sync_sq_attach(sync_db_t *db, char *why, size_t whylen)
{
    sq_db_t *s = (sq_db_t *)db;
    /* before init, which notes the schema version */
    if (sync_audit_on() &&
        sync_sq_exec(s, "CREATE TABLE IF NOT EXISTS rep_audit(origin INTEGER NOT NULL, seq "
                        "INTEGER NOT NULL)") != 0) {
        return sync_sq_why_db(s, why, whylen, "creating rep_audit");
    }
    int rc = sync_sq_init(db, why, whylen);
    if (rc == 0 && !s->inb_get) {
        rc = prepare_common(s);
        if (rc != 0) {
            sync_sq_why_db(s, why, whylen, "preparing statements");
        }
    }
    return rc;
}

bool sync_sq_changed(sync_db_t *db)
{
    sq_db_t *s = (sq_db_t *)db;
    sqlite3_stmt *st = s->data_ver;
    int64_t v = -1;
    sqlite3_reset(st);
    if (st && sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
    }
    sqlite3_reset(st);
    if (v != s->data_version) {
        s->data_version = v;
        int sv = schema_version(s);
        if (sv != s->schema_version && s->nt > 0) {
            /* Someone altered the schema (e.g. ADD COLUMN): refresh capture in place. */
            char why[256] = "";
            log_info("schema changed (version %d -> %d): refreshing capture", s->schema_version,
                     sv);
            if (sync_sq_init(db, why, sizeof(why)) != 0) {
                log_err("refreshing capture failed: %s", why);
            }
        }
        if (sync_sq_fold_txn(s) != 0) {
            log_warn("folding the capture log failed: %s", sqlite3_errmsg(s->db));
        }
        return true;
    }
    return false;
}

/* Fold the capture logs into the change tables, inside the caller's write transaction. Each
 * logged change, in commit order, is given its position, the HLC
 *   h = max(ms << 16, rep_meta.hlc + 1, previous h + 1)
 * and becomes the row's entry: that position, its change mask (ORed while the previous
 * entry is still unacknowledged), the versions (h, this site) of the columns it changed with
 * their bases, and for an insert or delete the existence version. Then the log is emptied and
 * rep_meta.hlc keeps the high-water mark. rep_meta.hlc only moves in a fold or in an apply,
 * and every apply folds first, so it is the same here as when the change was written: the
 * same rule the trigger would have computed, without a read of rep_meta and of every log in
 * each application write. This is consolidation: however many changes a row had, it keeps
 * one entry. */
int sync_sq_fold(sq_db_t *s)
{
    int64_t acked = 0;
    uint64_t h = 0;
    /* init folds before the common statements exist (a refresh after ALTER TABLE) */
    sqlite3_stmt *st = s->acked_get;
    if (!st) {
        sqlite3_prepare_v2(s->db, "SELECT acked, hlc FROM rep_meta", -1, &st, NULL);
    }
    sqlite3_reset(st);
    if (st && sqlite3_step(st) == SQLITE_ROW) {
        acked = sqlite3_column_int64(st, 0);
        h = (uint64_t)sqlite3_column_int64(st, 1);
    }
    if (st != s->acked_get) {
        sqlite3_finalize(st);
    } else {
        sqlite3_reset(st);
    }
    const uint64_t h0 = h;
    arena_t *a = arena_new(4096);
    int rc = 0;
    for (size_t ti = 0; rc == 0 && ti < s->nt; ti++) {
        sq_table_t *t = &s->t[ti];
        sqlite3_stmt *ls = t->log_sel;
        uint64_t tmax = 0;
        sqlite3_reset(ls);
        int r;
        while (rc == 0 && (r = sqlite3_step(ls)) == SQLITE_ROW) {
            uint64_t lseq = (uint64_t)sqlite3_column_int64(ls, 0);
            /* A row logged before the ms column carries its position in seq. */
            uint64_t want = sqlite3_column_type(ls, 3 + (int)t->npk) == SQLITE_NULL
                                ? lseq
                                : (uint64_t)sqlite3_column_int64(ls, 3 + (int)t->npk) << 16;
            uint64_t seq = want > h ? want : h + 1;
            h = seq;
            sync_val_t pk[SYNC_MAX_PK];
            for (unsigned k = 0; k < t->npk; k++) {
                sync_sq_val_from_col(ls, 1 + (int)k, a, &pk[k]);
            }
            int op = sqlite3_column_int(ls, 1 + (int)t->npk);
            uint64_t mask = (uint64_t)sqlite3_column_int64(ls, 2 + (int)t->npk);
            sq_clock_t ck;
            if (sync_sq_clock_get(t, pk, &ck) != 0) {
                rc = MS_EDB;
                break;
            }
            sync_ver_t me = {seq, s->site};
            uint64_t newmask = ck.found && (int64_t)ck.seq > acked ? ck.mask : 0;
            if (op == OP_DELETE) {
                ck.cl = ck.cl % 2 == 1 ? ck.cl + 1 : (ck.found ? ck.cl : 2);
                ck.clv = me;
                newmask = 0;
            } else {
                if (op == OP_INSERT || !ck.found) {
                    ck.cl = ck.cl % 2 == 0 ? ck.cl + 1 : ck.cl;
                    ck.clv = me;
                }
                for (unsigned c = 0; c < t->ncols; c++) {
                    if ((mask >> c) & 1) {
                        if (ck.v[c].site != s->site) {
                            ck.b[c] = ck.v[c];
                        }
                        ck.v[c] = me;
                    }
                }
                newmask |= mask;
            }
            ck.seq = seq;
            ck.mask = newmask;
            if (sync_sq_clock_put(t, pk, &ck, true) != 0) {
                rc = MS_EDB;
            }
            tmax = lseq;
        }
        sqlite3_reset(ls);
        if (rc == 0 && tmax) {
            sqlite3_reset(t->log_del);
            sqlite3_bind_int64(t->log_del, 1, (int64_t)tmax);
            rc = sqlite3_step(t->log_del) == SQLITE_DONE ? 0 : MS_EDB;
            sqlite3_reset(t->log_del);
        }
    }
    if (rc == 0 && h != h0) {
        sqlite3_reset(s->hlc_bump);
        sqlite3_bind_int64(s->hlc_bump, 1, (int64_t)h);
        rc = sqlite3_step(s->hlc_bump) == SQLITE_DONE ? 0 : MS_EDB;
        sqlite3_reset(s->hlc_bump);
    }
    arena_free(a);
    return rc;
}

/* Fold in a transaction of its own (when the agent is about to read or report). */
int sync_sq_fold_txn(sq_db_t *s)
{
    /* The write lock is what the applications' commits and the agent's applies wait for:
     * take it only when there is something to fold (an apply folds too, so after one the
     * log is often empty already). A commit landing after this look is folded next time. */
    bool any = false;
    for (size_t i = 0; i < s->nt && !any; i++) {
        sqlite3_reset(s->t[i].log_any);
        any = sqlite3_step(s->t[i].log_any) != SQLITE_DONE;
        sqlite3_reset(s->t[i].log_any);
    }
    if (!any) {
        return 0;
    }
    if (sync_sq_exec(s, "BEGIN IMMEDIATE") != 0) {
        return MS_EDB;
    }
    if (sync_sq_fold(s) != 0) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return MS_EDB;
    }
    return sync_sq_exec(s, "COMMIT");
}
