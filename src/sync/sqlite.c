/* sqlite.c: the SQLite backend: capture triggers, reading pending rows, applying batches.
 *
 * Change table. Each replicated table T gets a companion rep_c_T with one row per row of T
 * (and per deleted row: the tombstone), keyed by T's primary key:
 *
 *   pk cols | seq | mask | cl | clh | cls | v_C s_C b_C bs_C for every value column C
 *
 * seq is the HLC of the latest local change to the row; it is the row's position in this
 * site's change stream, so consolidation is by construction: a second change to a row moves
 * its one entry to a later position, combining columns (mask |= changed) and superseding
 * values, and the number of entries a peer is sent never exceeds the rows changed. The row
 * image sent is the table's own row, read in the same read transaction as the entry: the
 * entry always stands for the row's latest state, so storing a copy would only double every
 * write. v_C/s_C is the version (HLC, origin site) of column C; b_C/bs_C the version a local
 * change overwrote (conflict detection, see merge.c). cl is the causal length (odd = live).
 *
 * Capture is pure SQL (AFTER triggers), so every writer (sqlite3 CLI, any driver) is
 * captured. The agent's own writes are not: it holds a row in rep_ctx during its apply
 * transaction and the triggers do nothing while that row exists. SQLite has one writer at a
 * time, so no other writer can see rep_ctx non-empty, and seq (assigned inside the write
 * transaction from rep_meta.hlc) increases in commit order: reading seq > cursor never skips
 * a late commit.
 *
 * Apply. One transaction per batch: the rows, the conflict and quarantine records, the HLC
 * high-water mark and the cursor rep_inbound(origin) commit together (exactly once). A row
 * that fails (constraint, unknown table or column, stamped too far in the future) goes to
 * rep_quarantine with its payload and the reason, and the batch goes on. */
#include "sync/internal.h"

#include <sqlite3.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    char *name;
    unsigned npk, ncols;
    char **cols; /* npk pk names (pk order), then value columns sorted by name */
    sync_wtable_t w;
    uint8_t fp[16];
    sqlite3_stmt *read, *clk_get, *clk_put, *clk_upd, *row_get, *row_del, *log_sel, *log_del;
} sq_table_t;

typedef struct {
    sync_db_t base;
    sqlite3 *db;
    sq_table_t *t;
    size_t nt;
    int64_t data_version;
    int schema_version;
    uint32_t site;
    char *floor_sql; /* the capture triggers' position expression, over every table's log */
    sqlite3_stmt *inb_get, *inb_put, *conflict_ins, *quar_ins, *hlc_bump;
} sq_db_t;

#define HLC_SQL "max(CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) << 16, hlc + 1)"

static const char *meta_sql =
    "CREATE TABLE IF NOT EXISTS rep_meta(id INTEGER PRIMARY KEY CHECK (id = 1),"
    " site INTEGER NOT NULL, hlc INTEGER NOT NULL, acked INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS rep_ctx(applying INTEGER);"
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

static int why_db(sq_db_t *s, char *why, size_t whylen, const char *what)
{
    snprintf(why, whylen, "%s: %s", what, sqlite3_errmsg(s->db));
    return MS_EDB;
}

static int exec(sq_db_t *s, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        log_err("sqlite: %s (in: %.200s)", msg ? msg : "?", sql);
        sqlite3_free(msg);
        return MS_EDB;
    }
    return 0;
}

static sqlite3_stmt *prep(sq_db_t *s, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        log_err("sqlite: cannot prepare: %s (in: %.300s)", sqlite3_errmsg(s->db), sql);
        return NULL;
    }
    return st;
}

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
    sqlite3_finalize(t->row_get);
    sqlite3_finalize(t->row_del);
    memset(t, 0, sizeof(*t));
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool col_ident_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > SYNC_MAX_NAME - 3) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_')) {
            return false;
        }
    }
    return true;
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
        return why_db(s, why, whylen, name);
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
        if (!col_ident_ok(cname)) {
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

/* "a","b" or c."a", c."b" or "a" = ?1 AND ... */
static void pk_list(buf_t *b, const sq_table_t *t, const char *prefix)
{
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(b, "%s%s\"%s\"", k ? ", " : "", prefix, t->cols[k]);
    }
}
static void pk_where(buf_t *b, const sq_table_t *t, const char *a, const char *bb)
{
    for (unsigned k = 0; k < t->npk; k++) {
        if (bb) {
            buf_printf(b, "%s%s\"%s\" = %s\"%s\"", k ? " AND " : "", a, t->cols[k], bb, t->cols[k]);
        } else {
            buf_printf(b, "%s\"%s\" = ?%u", k ? " AND " : "", t->cols[k], k + 1);
        }
    }
}
static const char *cstr(buf_t *b)
{
    buf_append(b, "", 1);
    b->len--;
    return (const char *)b->data;
}

/* ---- init: change tables and triggers ---- */

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
    pk_list(&b, t, "");
    buf_printf(&b,
               ")) WITHOUT ROWID; CREATE INDEX IF NOT EXISTS \"rep_c_%s_seq\" ON "
               "\"rep_c_%s\"(seq);",
               t->name, t->name);
    /* The capture log: the triggers only append here (one page, the rightmost), and the
     * agent folds it into rep_c_T (see fold()). */
    buf_printf(&b, "CREATE TABLE IF NOT EXISTS \"rep_l_%s\"(seq INTEGER PRIMARY KEY", t->name);
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(&b, ", \"%s\" %s", t->cols[k], decl[k]);
    }
    buf_printf(&b, ", op INTEGER NOT NULL, mask INTEGER NOT NULL);");
    int rc = exec(s, cstr(&b));
    /* Version columns are added one by one so that a column added to T later only adds its
     * four columns here: no backfill, an absent version is "none". */
    for (unsigned c = t->npk; rc == 0 && c < t->npk + t->ncols; c++) {
        static const char *const pre[] = {"v_", "s_", "b_", "bs_"};
        for (int i = 0; i < 4 && rc == 0; i++) {
            buf_reset(&b);
            buf_printf(&b, "SELECT 1 FROM pragma_table_info('rep_c_%s') WHERE name = '%s%s'",
                       t->name, pre[i], t->cols[c]);
            sqlite3_stmt *st = NULL;
            bool have = false;
            if (sqlite3_prepare_v2(s->db, cstr(&b), -1, &st, NULL) == SQLITE_OK) {
                have = sqlite3_step(st) == SQLITE_ROW;
            }
            sqlite3_finalize(st);
            if (!have) {
                buf_reset(&b);
                buf_printf(&b, "ALTER TABLE \"rep_c_%s\" ADD COLUMN \"%s%s\" INTEGER", t->name,
                           pre[i], t->cols[c]);
                rc = exec(s, cstr(&b));
            }
        }
    }
    buf_deinit(&b);
    return rc;
}

enum { OP_INSERT = 1, OP_UPDATE = 2, OP_DELETE = 3 };

/* Capture triggers: one append to rep_l_T per changed row. The position is
 *   max(now_ms << 16, rep_meta.hlc + 1, max(seq) of every table's log + 1)
 * computed inside the write transaction: SQLite has one writer at a time, so positions
 * increase in commit order, and they exceed every version applied here (rep_meta.hlc). */
static void trig_one(buf_t *b, const sq_db_t *s, const sq_table_t *t, const char *when,
                     const char *row, int op)
{
    static const char *const names[] = {"", "ai", "au", "ad"};
    static const char *const events[] = {"", "INSERT", "UPDATE", "DELETE"};
    uint64_t all = t->ncols >= 64 ? ~0ull : ((1ull << t->ncols) - 1);
    buf_printf(b,
               "CREATE TRIGGER \"rep_%s_%s\" AFTER %s ON \"%s\" WHEN NOT EXISTS (SELECT 1 FROM "
               "rep_ctx)%s BEGIN INSERT INTO \"rep_l_%s\" VALUES(%s",
               names[op], t->name, events[op], t->name, when, t->name, s->floor_sql);
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(b, ", %s.\"%s\"", row, t->cols[k]);
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
    buf_printf(b, "); END;");
}

static void trig_ins(buf_t *b, const sq_db_t *s, const sq_table_t *t)
{
    trig_one(b, s, t, "", "NEW", OP_INSERT);
}

static void trig_upd(buf_t *b, const sq_db_t *s, const sq_table_t *t)
{
    buf_t w;
    buf_init(&w);
    buf_printf(&w, " AND (0");
    for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
        buf_printf(&w, " OR OLD.\"%s\" IS NOT NEW.\"%s\"", t->cols[c], t->cols[c]);
    }
    buf_printf(&w, ")");
    trig_one(b, s, t, cstr(&w), "NEW", OP_UPDATE);
    buf_deinit(&w);
}

static void trig_del(buf_t *b, const sq_db_t *s, const sq_table_t *t)
{
    trig_one(b, s, t, "", "OLD", OP_DELETE);
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
    trig_ins(&b, s, t);
    trig_upd(&b, s, t);
    trig_del(&b, s, t);
    trig_pk(&b, t);
    int rc = exec(s, cstr(&b));
    /* Rows that existed before capture was installed get a clock row each, with a distinct
     * position, so they are sent like any other change. */
    if (rc == 0) {
        buf_reset(&b);
        buf_printf(&b, "INSERT INTO \"rep_c_%s\"(", t->name);
        pk_list(&b, t, "");
        buf_printf(&b, ", seq, mask, cl, clh, cls");
        for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
            buf_printf(&b, ", \"v_%s\", \"s_%s\"", t->cols[c], t->cols[c]);
        }
        buf_printf(&b, ") SELECT ");
        pk_list(&b, t, "t.");
        buf_printf(&b, ", m.h + row_number() OVER (), 0, 1, m.h + row_number() OVER (), m.site");
        for (unsigned c = 0; c < t->ncols; c++) {
            buf_printf(&b, ", m.h + row_number() OVER (), m.site");
        }
        buf_printf(&b,
                   " FROM \"%s\" t, (SELECT max(CAST((julianday('now') - 2440587.5) * "
                   "86400000.0 AS INTEGER) << 16, hlc) AS h, site FROM rep_meta) m WHERE NOT "
                   "EXISTS (SELECT 1 FROM \"rep_c_%s\" c WHERE ",
                   t->name, t->name);
        pk_where(&b, t, "c.", "t.");
        buf_printf(&b, ")");
        rc = exec(s, cstr(&b));
        if (rc == 0) {
            buf_reset(&b);
            buf_printf(&b,
                       "UPDATE rep_meta SET hlc = max(hlc, coalesce((SELECT max(seq) FROM "
                       "\"rep_c_%s\"), 0))",
                       t->name);
            rc = exec(s, cstr(&b));
        }
    }
    if (rc == 0) {
        buf_t cols;
        buf_init(&cols);
        for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
            buf_printf(&cols, "%s%s", c > t->npk ? "," : "", t->cols[c]);
        }
        buf_reset(&b);
        pk_list(&b, t, "");
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(s->db,
                               "INSERT OR REPLACE INTO rep_table(name, pk, cols, fp) "
                               "VALUES(?, ?, ?, ?)",
                               -1, &st, NULL) == SQLITE_OK) {
            sqlite3_bind_text(st, 1, t->name, -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(st, 2, cstr(&b), -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(st, 3, cols.len ? cstr(&cols) : "", -1, SQLITE_TRANSIENT);
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
    pk_list(&b, t, "c.");
    buf_printf(&b, ", c.seq, c.mask, c.cl, c.clh, c.cls");
    for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
        const char *n = t->cols[c];
        buf_printf(&b, ", c.\"v_%s\", c.\"s_%s\", c.\"b_%s\", c.\"bs_%s\", t.\"%s\"", n, n, n, n,
                   n);
    }
    buf_printf(&b, " FROM \"rep_c_%s\" c LEFT JOIN \"%s\" t ON ", t->name, t->name);
    pk_where(&b, t, "t.", "c.");
    buf_printf(&b, " WHERE c.seq > ?1 ORDER BY c.seq LIMIT ?2");
    t->read = prep(s, cstr(&b));
    /* clock get / put */
    buf_reset(&b);
    buf_printf(&b, "SELECT seq, mask, cl, clh, cls");
    for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
        const char *n = t->cols[c];
        buf_printf(&b, ", \"v_%s\", \"s_%s\", \"b_%s\", \"bs_%s\"", n, n, n, n);
    }
    buf_printf(&b, " FROM \"rep_c_%s\" WHERE ", t->name);
    pk_where(&b, t, "", NULL);
    t->clk_get = prep(s, cstr(&b));
    buf_reset(&b);
    buf_printf(&b, "INSERT OR REPLACE INTO \"rep_c_%s\"(", t->name);
    pk_list(&b, t, "");
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
    t->clk_put = prep(s, cstr(&b));
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
    pk_where(&b, t, "", NULL);
    t->clk_upd = prep(s, cstr(&b));
    buf_reset(&b);
    buf_printf(&b, "SELECT ");
    for (unsigned c = t->npk; c < t->npk + t->ncols; c++) {
        buf_printf(&b, "%s\"%s\"", c > t->npk ? ", " : "", t->cols[c]);
    }
    if (t->ncols == 0) {
        buf_printf(&b, "1");
    }
    buf_printf(&b, " FROM \"%s\" WHERE ", t->name);
    pk_where(&b, t, "", NULL);
    t->row_get = prep(s, cstr(&b));
    buf_reset(&b);
    buf_printf(&b, "DELETE FROM \"%s\" WHERE ", t->name);
    pk_where(&b, t, "", NULL);
    t->row_del = prep(s, cstr(&b));
    buf_reset(&b);
    buf_printf(&b, "SELECT seq, ");
    pk_list(&b, t, "");
    buf_printf(&b, ", op, mask FROM \"rep_l_%s\" ORDER BY seq", t->name);
    t->log_sel = prep(s, cstr(&b));
    buf_reset(&b);
    buf_printf(&b, "DELETE FROM \"rep_l_%s\" WHERE seq <= ?1", t->name);
    t->log_del = prep(s, cstr(&b));
    buf_deinit(&b);
    return t->read && t->clk_get && t->clk_put && t->clk_upd && t->log_sel && t->log_del &&
                   t->row_get && t->row_del
               ? 0
               : MS_EDB;
}

static int prepare_common(sq_db_t *s)
{
    s->inb_get = prep(s, "SELECT applied_seq, applied FROM rep_inbound WHERE origin = ?1");
    s->inb_put = prep(s, "INSERT OR REPLACE INTO rep_inbound(origin, applied_seq, applied) "
                         "VALUES(?1, ?2, ?3)");
    s->conflict_ins =
        prep(s, "INSERT INTO rep_conflict(at_ms, tbl, pk, col, rule, winner, local_val,"
                " local_hlc, local_site, remote_val, remote_hlc, remote_site)"
                " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)");
    s->quar_ins = prep(s, "INSERT INTO rep_quarantine(origin, seq, tbl, pk, kind, error, payload,"
                          " attempts, first_ms, last_ms) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, 1,"
                          " ?8, ?8)");
    s->hlc_bump = prep(s, "UPDATE rep_meta SET hlc = max(hlc, ?1)");
    return s->inb_get && s->inb_put && s->conflict_ins && s->quar_ins && s->hlc_bump ? 0 : MS_EDB;
}

static void tables_free(sq_db_t *s)
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

static int fold_txn(sq_db_t *s);
static int fold(sq_db_t *s);

/* Install (or refresh, after a column was added) capture for every configured table, in one
 * transaction, then load the metadata the agent needs. Idempotent. */
static int sq_init(sync_db_t *db, char *why, size_t whylen)
{
    sq_db_t *s = (sq_db_t *)db;
    const sync_conf_t *c = db->conf;
    if (exec(s, "BEGIN IMMEDIATE") != 0) {
        return why_db(s, why, whylen, "cannot start the init transaction");
    }
    /* A refresh (a column was added): fold what the old triggers logged under the old
     * column order first, in this transaction, so no change mask is read under the new one. */
    int rc = s->nt > 0 && s->hlc_bump ? fold(s) : 0;
    tables_free(s);
    if (rc == 0) {
        rc = exec(s, meta_sql);
    }
    if (rc == 0) {
        char *sql = xasprintf("INSERT INTO rep_meta(id, site, hlc) VALUES(1, %u, 0) "
                              "ON CONFLICT DO NOTHING",
                              c->site_id);
        rc = exec(s, sql);
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
            rc = why_db(s, why, whylen, "creating change tables");
        }
        for (unsigned k = 0; k < s->t[i].npk; k++) {
            free(decl[k]);
        }
        free(decl);
    }
    if (rc == 0) {
        buf_t f;
        buf_init(&f);
        buf_printf(&f, "max(CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) << 16, "
                       "(SELECT hlc FROM rep_meta) + 1");
        for (size_t i = 0; i < s->nt; i++) {
            buf_printf(&f, ", coalesce((SELECT max(seq) FROM \"rep_l_%s\"), 0) + 1", s->t[i].name);
        }
        buf_printf(&f, ")");
        free(s->floor_sql);
        s->floor_sql = xstrdup(cstr(&f));
        buf_deinit(&f);
    }
    for (size_t i = 0; rc == 0 && i < s->nt; i++) {
        if (install_table(s, &s->t[i]) != 0) {
            rc = why_db(s, why, whylen, "installing capture");
        }
    }
    if (rc != 0) {
        if (!why[0]) {
            snprintf(why, whylen, "init failed: %s", sqlite3_errmsg(s->db));
        }
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        tables_free(s);
        return rc;
    }
    if (exec(s, "COMMIT") != 0) {
        tables_free(s);
        return why_db(s, why, whylen, "commit of init");
    }
    for (size_t i = 0; i < s->nt; i++) {
        if (prepare_table(s, &s->t[i]) != 0) {
            tables_free(s);
            return why_db(s, why, whylen, "preparing statements");
        }
    }
    s->schema_version = schema_version(s);
    return 0;
}

static int sq_attach(sync_db_t *db, char *why, size_t whylen)
{
    sq_db_t *s = (sq_db_t *)db;
    int rc = sq_init(db, why, whylen);
    if (rc == 0 && !s->inb_get) {
        rc = prepare_common(s);
        if (rc != 0) {
            why_db(s, why, whylen, "preparing statements");
        }
    }
    return rc;
}

static bool sq_changed(sync_db_t *db)
{
    sq_db_t *s = (sq_db_t *)db;
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(s->db, "PRAGMA data_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    if (v != s->data_version) {
        s->data_version = v;
        int sv = schema_version(s);
        if (sv != s->schema_version && s->nt > 0) {
            /* Someone altered the schema (e.g. ADD COLUMN): refresh capture in place. */
            char why[256] = "";
            log_info("schema changed (version %d -> %d): refreshing capture", s->schema_version,
                     sv);
            if (sq_init(db, why, sizeof(why)) != 0) {
                log_err("refreshing capture failed: %s", why);
            }
        }
        if (fold_txn(s) != 0) {
            log_warn("folding the capture log failed: %s", sqlite3_errmsg(s->db));
        }
        return true;
    }
    return false;
}

/* ---- values ---- */

static void val_from_col(sqlite3_stmt *st, int i, arena_t *a, sync_val_t *v)
{
    memset(v, 0, sizeof(*v));
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
        v->type = SYNC_V_INT;
        v->i = sqlite3_column_int64(st, i);
        break;
    case SQLITE_FLOAT:
        v->type = SYNC_V_REAL;
        v->r = sqlite3_column_double(st, i);
        break;
    case SQLITE_TEXT:
        v->type = SYNC_V_TEXT;
        v->len = (uint32_t)sqlite3_column_bytes(st, i);
        v->p = arena_memdup(a, sqlite3_column_text(st, i), v->len ? v->len : 1);
        break;
    case SQLITE_BLOB:
        v->type = SYNC_V_BLOB;
        v->len = (uint32_t)sqlite3_column_bytes(st, i);
        v->p = arena_memdup(a, v->len ? sqlite3_column_blob(st, i) : "", v->len ? v->len : 1);
        break;
    default: v->type = SYNC_V_NULL;
    }
}

static void bind_val(sqlite3_stmt *st, int i, const sync_val_t *v)
{
    switch (v->type) {
    case SYNC_V_INT: sqlite3_bind_int64(st, i, v->i); break;
    case SYNC_V_REAL: sqlite3_bind_double(st, i, v->r); break;
    case SYNC_V_TEXT:
        sqlite3_bind_text(st, i, (const char *)v->p, (int)v->len, SQLITE_STATIC);
        break;
    case SYNC_V_BLOB:
        sqlite3_bind_blob(st, i, v->p ? (const void *)v->p : "", (int)v->len, SQLITE_STATIC);
        break;
    default: sqlite3_bind_null(st, i);
    }
}

static sync_ver_t ver_col(sqlite3_stmt *st, int i)
{
    sync_ver_t v = {0, 0};
    if (sqlite3_column_type(st, i) != SQLITE_NULL &&
        sqlite3_column_type(st, i + 1) != SQLITE_NULL) {
        v.hlc = (uint64_t)sqlite3_column_int64(st, i);
        v.site = (uint32_t)sqlite3_column_int64(st, i + 1);
    }
    return v;
}

static void bind_ver(sqlite3_stmt *st, int i, sync_ver_t v)
{
    if (sync_ver_none(v)) {
        sqlite3_bind_null(st, i);
        sqlite3_bind_null(st, i + 1);
    } else {
        sqlite3_bind_int64(st, i, (int64_t)v.hlc);
        sqlite3_bind_int64(st, i + 1, v.site);
    }
}

/* ---- read: the sender side ---- */

typedef struct {
    sq_table_t *t;
    bool row; /* a row is waiting in t->read */
    uint64_t seq;
} cursor_t;

static void entry_from_read(sq_db_t *s, sq_table_t *t, unsigned ti, arena_t *a, sync_entry_t *e)
{
    sqlite3_stmt *st = t->read;
    unsigned k = t->npk;
    e->table = ti;
    e->pk = arena_alloc(a, sizeof(sync_val_t) * t->npk);
    for (unsigned i = 0; i < t->npk; i++) {
        val_from_col(st, (int)i, a, &e->pk[i]);
    }
    e->seq = (uint64_t)sqlite3_column_int64(st, (int)k);
    e->mask = (uint64_t)sqlite3_column_int64(st, (int)k + 1);
    e->cl = (uint32_t)sqlite3_column_int64(st, (int)k + 2);
    e->clv = ver_col(st, (int)k + 3);
    e->val = NULL;
    if (e->cl % 2 == 1 && t->ncols) {
        e->val = arena_alloc(a, sizeof(sync_val_t) * t->ncols);
        e->ver = arena_alloc(a, sizeof(sync_ver_t) * t->ncols);
        e->base = arena_alloc(a, sizeof(sync_ver_t) * t->ncols);
        for (unsigned c = 0; c < t->ncols; c++) {
            int at = (int)(k + 5 + 5 * c);
            e->ver[c] = ver_col(st, at);
            /* The base matters only for a version this site wrote (merge.c). */
            e->base[c] = e->ver[c].site == s->site ? ver_col(st, at + 2) : (sync_ver_t){0, 0};
            val_from_col(st, at + 4, a, &e->val[c]);
        }
    }
}

static int sq_read(sync_db_t *db, uint64_t after, size_t max, buf_t *out, size_t *n, uint64_t *hi)
{
    sq_db_t *s = (sq_db_t *)db;
    *n = 0;
    *hi = after;
    /* No fold here: changed() folds whenever something was committed, and a change not folded
     * yet has a position above everything folded, so it is simply sent next time. */
    if (exec(s, "BEGIN") != 0) {
        return MS_EDB;
    }
    arena_t *a = arena_new(64 * 1024);
    cursor_t cur[SYNC_MAX_TABLES];
    sync_batch_t b = {0};
    b.origin = s->site;
    b.seq_lo = after;
    b.ntables = s->nt;
    b.tables = arena_alloc(a, sizeof(sync_wtable_t) * (s->nt ? s->nt : 1));
    b.entries = arena_alloc(a, sizeof(sync_entry_t) * max);
    int rc = 0;
    for (size_t i = 0; i < s->nt; i++) {
        b.tables[i] = s->t[i].w;
        cur[i].t = &s->t[i];
        sqlite3_reset(s->t[i].read);
        sqlite3_bind_int64(s->t[i].read, 1, (int64_t)after);
        sqlite3_bind_int64(s->t[i].read, 2, (int64_t)max);
        int r = sqlite3_step(s->t[i].read);
        cur[i].row = r == SQLITE_ROW;
        if (r != SQLITE_ROW && r != SQLITE_DONE) {
            rc = MS_EDB;
        }
        cur[i].seq = cur[i].row ? (uint64_t)sqlite3_column_int64(s->t[i].read, s->t[i].npk) : 0;
    }
    /* k-way merge in position order, so a cut after any entry leaves nothing behind it. */
    size_t bytes = 0;
    while (rc == 0 && b.nentries < max && bytes < SYNC_BATCH_BYTES) {
        size_t best = SIZE_MAX;
        for (size_t i = 0; i < s->nt; i++) {
            if (cur[i].row && (best == SIZE_MAX || cur[i].seq < cur[best].seq)) {
                best = i;
            }
        }
        if (best == SIZE_MAX) {
            break;
        }
        sq_table_t *t = cur[best].t;
        sync_entry_t *e = &b.entries[b.nentries++];
        entry_from_read(s, t, (unsigned)best, a, e);
        for (unsigned c = 0; e->val && c < t->ncols; c++) {
            bytes += 25 + e->val[c].len;
        }
        bytes += 40;
        b.seq_hi = e->seq;
        int r = sqlite3_step(t->read);
        cur[best].row = r == SQLITE_ROW;
        if (r != SQLITE_ROW && r != SQLITE_DONE) {
            rc = MS_EDB;
        }
        cur[best].seq = cur[best].row ? (uint64_t)sqlite3_column_int64(t->read, t->npk) : 0;
    }
    for (size_t i = 0; i < s->nt; i++) {
        sqlite3_reset(s->t[i].read);
    }
    exec(s, "COMMIT");
    if (rc == 0 && b.nentries > 0) {
        sync_enc_batch(out, &b);
        *n = b.nentries;
        *hi = b.seq_hi;
    }
    arena_free(a);
    return rc;
}

/* ---- apply: the receiver side ---- */

typedef struct {
    sq_table_t *t;          /* NULL: unknown here */
    int map[SYNC_MAX_COLS]; /* local value column -> wire column, -1 if the peer lacks it */
    const char *missing;    /* a wire column we do not have */
    sqlite3_stmt *upsert;
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
    pk_list(&b, t, "");
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
    pk_list(&b, t, "");
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
    sqlite3_prepare_v2(s->db, cstr(&b), -1, &m->upsert, NULL);
    buf_deinit(&b);
    return m->upsert ? 0 : MS_EDB;
}

typedef struct {
    uint64_t seq, mask;
    uint32_t cl;
    sync_ver_t clv;
    sync_ver_t v[SYNC_MAX_COLS], b[SYNC_MAX_COLS];
    bool found;
} clock_t_;

static int clock_get(sq_table_t *t, const sync_val_t *pk, clock_t_ *ck)
{
    sqlite3_stmt *st = t->clk_get;
    memset(ck, 0, sizeof(*ck));
    sqlite3_reset(st);
    for (unsigned k = 0; k < t->npk; k++) {
        bind_val(st, (int)k + 1, &pk[k]);
    }
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        ck->found = true;
        ck->seq = (uint64_t)sqlite3_column_int64(st, 0);
        ck->mask = (uint64_t)sqlite3_column_int64(st, 1);
        ck->cl = (uint32_t)sqlite3_column_int64(st, 2);
        ck->clv = ver_col(st, 3);
        for (unsigned c = 0; c < t->ncols; c++) {
            ck->v[c] = ver_col(st, 5 + 4 * (int)c);
            ck->b[c] = ver_col(st, 7 + 4 * (int)c);
        }
        r = SQLITE_DONE;
    }
    sqlite3_reset(st);
    return r == SQLITE_DONE ? 0 : MS_EDB;
}

static int clock_put(sq_table_t *t, const sync_val_t *pk, const clock_t_ *ck, bool full)
{
    sqlite3_stmt *st = ck->found && !full ? t->clk_upd : t->clk_put;
    sqlite3_reset(st);
    for (unsigned k = 0; k < t->npk; k++) {
        bind_val(st, (int)k + 1, &pk[k]);
    }
    int i = (int)t->npk + 1;
    sqlite3_bind_int64(st, i, (int64_t)ck->seq);
    sqlite3_bind_int64(st, i + 1, (int64_t)ck->mask);
    sqlite3_bind_int64(st, i + 2, ck->cl);
    bind_ver(st, i + 3, ck->clv);
    for (unsigned c = 0; c < t->ncols; c++) {
        bind_ver(st, i + 5 + 4 * (int)c, ck->v[c]);
        bind_ver(st, i + 7 + 4 * (int)c, ck->b[c]);
    }
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    return r == SQLITE_DONE ? 0 : MS_EDB;
}

/* Fold the capture logs into the change tables, inside the caller's write transaction. Each
 * logged change, in position order, becomes the row's entry: its position, its change mask
 * (ORed while the previous entry is still unacknowledged), the versions of the columns it
 * changed (the position, this site) with their bases, and for an insert or delete the
 * existence version. Then the log is emptied; rep_meta.hlc keeps the high-water mark. This
 * is consolidation: however many changes a row had, it keeps one entry. */
static int fold(sq_db_t *s)
{
    int64_t acked = 0;
    uint64_t maxseq = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "SELECT acked FROM rep_meta", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        acked = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    arena_t *a = arena_new(4096);
    int rc = 0;
    for (size_t ti = 0; rc == 0 && ti < s->nt; ti++) {
        sq_table_t *t = &s->t[ti];
        sqlite3_stmt *ls = t->log_sel;
        uint64_t tmax = 0;
        sqlite3_reset(ls);
        int r;
        while (rc == 0 && (r = sqlite3_step(ls)) == SQLITE_ROW) {
            uint64_t seq = (uint64_t)sqlite3_column_int64(ls, 0);
            sync_val_t pk[SYNC_MAX_PK];
            for (unsigned k = 0; k < t->npk; k++) {
                val_from_col(ls, 1 + (int)k, a, &pk[k]);
            }
            int op = sqlite3_column_int(ls, 1 + (int)t->npk);
            uint64_t mask = (uint64_t)sqlite3_column_int64(ls, 2 + (int)t->npk);
            clock_t_ ck;
            if (clock_get(t, pk, &ck) != 0) {
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
            if (clock_put(t, pk, &ck, true) != 0) {
                rc = MS_EDB;
            }
            tmax = seq;
        }
        sqlite3_reset(ls);
        if (rc == 0 && tmax) {
            sqlite3_reset(t->log_del);
            sqlite3_bind_int64(t->log_del, 1, (int64_t)tmax);
            rc = sqlite3_step(t->log_del) == SQLITE_DONE ? 0 : MS_EDB;
            sqlite3_reset(t->log_del);
            maxseq = tmax > maxseq ? tmax : maxseq;
        }
    }
    if (rc == 0 && maxseq) {
        sqlite3_reset(s->hlc_bump);
        sqlite3_bind_int64(s->hlc_bump, 1, (int64_t)maxseq);
        rc = sqlite3_step(s->hlc_bump) == SQLITE_DONE ? 0 : MS_EDB;
        sqlite3_reset(s->hlc_bump);
    }
    arena_free(a);
    return rc;
}

/* Fold in a transaction of its own (when the agent is about to read or report). */
static int fold_txn(sq_db_t *s)
{
    if (exec(s, "BEGIN IMMEDIATE") != 0) {
        return MS_EDB;
    }
    if (fold(s) != 0) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return MS_EDB;
    }
    return exec(s, "COMMIT");
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
        bind_val(row, (int)k + 1, &e->pk[k]);
    }
    bool have = sqlite3_step(row) == SQLITE_ROW;
    buf_t pk;
    buf_init(&pk);
    sync_val_text(&pk, e->pk, t->npk);
    sqlite3_stmt *st = s->conflict_ins;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, (int64_t)time_wall_ms());
    sqlite3_bind_text(st, 2, t->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, cstr(&pk), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, col >= 0 ? t->cols[t->npk + col] : "*", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, rule, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, remote_won ? "remote" : "local", -1, SQLITE_STATIC);
    if (col >= 0 && have) {
        bind_col_value(st, 7, row, col);
    } else {
        sqlite3_bind_null(st, 7);
    }
    bind_ver(st, 8, lv);
    if (rval) {
        bind_val(st, 10, rval);
    } else {
        sqlite3_bind_null(st, 10);
    }
    bind_ver(st, 11, rv);
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
    sqlite3_bind_text(st, 4, cstr(&pk), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 5, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, error, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 7, p.data, (int)p.len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 8, (int64_t)time_wall_ms());
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    static log_ratelimit_t rl = LOG_RATELIMIT_INIT(10, 10000);
    log_rl(&rl, LOG_LVL_WARN, "quarantined change from site %u to %s(%s): %s: %s", origin, w->name,
           cstr(&pk), kind, error);
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
    clock_t_ ck;
    if (clock_get(t, e->pk, &ck) != 0) {
        return MS_EDB;
    }
    sync_row_action_t act = sync_decide_row(ck.cl, e->cl);
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
            bind_val(st, (int)k + 1, &e->pk[k]);
        }
        for (unsigned c = 0; c < t->ncols; c++) {
            if (m->map[c] >= 0) {
                bind_val(st, (int)(t->npk + 2 * c + 1), &e->val[m->map[c]]);
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
            bind_val(st, (int)k + 1, &e->pk[k]);
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
    if (act != SYNC_ROW_STALE && clock_put(t, e->pk, &ck, false) != 0) {
        return MS_EDB;
    }
    if (mx > res->max_hlc) {
        res->max_hlc = mx;
    }
    res->entries_applied++;
    return 0;
}

static void maps_free(wmap_t *maps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        sqlite3_finalize(maps[i].upsert);
    }
    free(maps);
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
    maps_free(maps, b->ntables);
    if (rc == 0 && res->max_hlc) {
        sqlite3_reset(s->hlc_bump);
        sqlite3_bind_int64(s->hlc_bump, 1, (int64_t)res->max_hlc);
        rc = sqlite3_step(s->hlc_bump) == SQLITE_DONE ? 0 : MS_EDB;
        sqlite3_reset(s->hlc_bump);
    }
    return rc;
}

static int inbound_get(sq_db_t *s, uint32_t origin, uint64_t *seq, uint64_t *count)
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

static int sq_apply(sync_db_t *db, const sync_batch_t *b, sync_apply_res_t *res)
{
    sq_db_t *s = (sq_db_t *)db;
    memset(res, 0, sizeof(*res));
    sync_fault("apply.before-begin");
    if (exec(s, "BEGIN IMMEDIATE") != 0) {
        return MS_EDB;
    }
    sync_fault("apply.begin");
    uint64_t applied_seq, count;
    /* Local changes committed before this transaction are folded first, so the merge below
     * compares against them (no local change can commit while we hold the write lock). */
    int rc = fold(s);
    if (rc == 0) {
        rc = exec(s, "INSERT INTO rep_ctx VALUES(1)");
    }
    if (rc == 0) {
        rc = inbound_get(s, b->origin, &applied_seq, &count);
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
        rc = exec(s, "DELETE FROM rep_ctx");
    }
    if (rc == 0) {
        sync_fault("apply.commit");
        rc = exec(s, "COMMIT");
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
static int sq_retry(sync_db_t *db, sync_apply_res_t *res)
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
        if (!drop && exec(s, "BEGIN IMMEDIATE") == 0) {
            sync_apply_res_t r1 = {0};
            int r = fold(s);
            if (r == 0) {
                r = exec(s, "INSERT INTO rep_ctx VALUES(1)");
            }
            if (r == 0) {
                /* Try it as a fresh entry; if it fails again apply_entry writes a new
                 * quarantine row, which we then fold back into the old one. */
                r = apply_entries(s, &msg.u.batch, 0, &r1);
            }
            if (r == 0 && r1.entries_applied == 1) {
                snprintf(sql, sizeof(sql), "DELETE FROM rep_quarantine WHERE id = %lld",
                         (long long)q[i].id);
                r = exec(s, sql);
                res->entries_applied++;
                res->max_hlc = r1.max_hlc > res->max_hlc ? r1.max_hlc : res->max_hlc;
            } else if (r == 0) {
                snprintf(sql, sizeof(sql),
                         "UPDATE rep_quarantine SET attempts = attempts + 1, last_ms = %lld,"
                         " error = (SELECT error FROM rep_quarantine ORDER BY id DESC LIMIT 1)"
                         " WHERE id = %lld; DELETE FROM rep_quarantine WHERE id = "
                         "(SELECT max(id) FROM rep_quarantine);",
                         (long long)time_wall_ms(), (long long)q[i].id);
                r = exec(s, sql);
            }
            if (r == 0) {
                r = exec(s, "DELETE FROM rep_ctx");
            }
            if (r == 0) {
                r = exec(s, "COMMIT");
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

static int sq_cursor(sync_db_t *db, uint32_t origin, uint64_t *applied)
{
    uint64_t count;
    return inbound_get((sq_db_t *)db, origin, applied, &count);
}

static int sq_set_acked(sync_db_t *db, uint32_t peer, uint64_t acked)
{
    sq_db_t *s = (sq_db_t *)db;
    const sync_conf_t *c = db->conf;
    buf_t b;
    buf_init(&b);
    buf_printf(&b,
               "INSERT INTO rep_peer(site, acked) VALUES(%u, %llu) ON CONFLICT(site) DO UPDATE "
               "SET acked = max(acked, excluded.acked);"
               "UPDATE rep_meta SET acked = coalesce((SELECT min(coalesce(p.acked, 0)) FROM "
               "(SELECT 0 AS site",
               peer, (unsigned long long)acked);
    for (size_t i = 0; i < c->npeers; i++) {
        buf_printf(&b, " UNION ALL SELECT %u", c->peers[i].id);
    }
    buf_printf(&b, ") q LEFT JOIN rep_peer p ON p.site = q.site WHERE q.site != 0), 0);");
    int rc = exec(s, cstr(&b));
    buf_deinit(&b);
    return rc;
}

static int64_t q_int(sq_db_t *s, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t v = 0;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return v;
}

static int sq_status(sync_db_t *db, sync_db_status_t *out)
{
    sq_db_t *s = (sq_db_t *)db;
    const sync_conf_t *c = db->conf;
    memset(out, 0, sizeof(*out));
    if (fold_txn(s) != 0 || exec(s, "BEGIN") != 0) {
        return MS_EDB;
    }
    out->conflicts = (uint64_t)q_int(s, "SELECT count(*) FROM rep_conflict");
    out->quarantined =
        (uint64_t)q_int(s, "SELECT count(*) FROM rep_quarantine WHERE kind != 'future'");
    out->held = (uint64_t)q_int(s, "SELECT count(*) FROM rep_quarantine WHERE kind = 'future'");
    out->hlc = (uint64_t)q_int(s, "SELECT hlc FROM rep_meta");
    for (size_t i = 0; i < c->npeers && i < MS_ARRAY_LEN(out->peers); i++) {
        sync_peer_db_t *p = &out->peers[out->npeers++];
        char sql[256];
        p->peer = c->peers[i].id;
        snprintf(sql, sizeof(sql), "SELECT acked FROM rep_peer WHERE site = %u", p->peer);
        p->acked = (uint64_t)q_int(s, sql);
        uint64_t oldest = 0;
        for (size_t k = 0; k < s->nt; k++) {
            snprintf(sql, sizeof(sql), "SELECT count(*) FROM \"rep_c_%s\" WHERE seq > %lld",
                     s->t[k].name, (long long)p->acked);
            p->backlog += (uint64_t)q_int(s, sql);
            snprintf(sql, sizeof(sql), "SELECT min(seq) FROM \"rep_c_%s\" WHERE seq > %lld",
                     s->t[k].name, (long long)p->acked);
            uint64_t m = (uint64_t)q_int(s, sql);
            if (m && (!oldest || m < oldest)) {
                oldest = m;
            }
        }
        p->oldest_ms = SYNC_HLC_WALL(oldest);
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "SELECT origin, applied_seq, applied FROM rep_inbound", -1, &st,
                           NULL) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW && out->ninbound < MS_ARRAY_LEN(out->inbound)) {
            sync_inbound_t *in = &out->inbound[out->ninbound++];
            in->origin = (uint32_t)sqlite3_column_int64(st, 0);
            in->applied_seq = (uint64_t)sqlite3_column_int64(st, 1);
            in->applied = (uint64_t)sqlite3_column_int64(st, 2);
        }
    }
    sqlite3_finalize(st);
    for (size_t k = 0; k < s->nt && k < SYNC_MAX_TABLES; k++) {
        snprintf(out->tables[k].name, sizeof(out->tables[k].name), "%s", s->t[k].name);
        memcpy(out->tables[k].fp, s->t[k].fp, 16);
        out->ntables++;
    }
    exec(s, "COMMIT");
    return 0;
}

static void sq_close(sync_db_t *db)
{
    sq_db_t *s = (sq_db_t *)db;
    if (!s) {
        return;
    }
    tables_free(s);
    free(s->floor_sql);
    sqlite3_finalize(s->inb_get);
    sqlite3_finalize(s->inb_put);
    sqlite3_finalize(s->conflict_ins);
    sqlite3_finalize(s->quar_ins);
    sqlite3_finalize(s->hlc_bump);
    sqlite3_close_v2(s->db);
    free(s);
}

static const sync_db_ops_t sq_ops = {
    .name = "sqlite",
    .init = sq_init,
    .attach = sq_attach,
    .changed = sq_changed,
    .read = sq_read,
    .apply = sq_apply,
    .retry = sq_retry,
    .cursor = sq_cursor,
    .set_acked = sq_set_acked,
    .status = sq_status,
    .close = sq_close,
};

/* Busy handler: the applications hold the write lock for a statement at a time, so poll it
 * finely (SQLite's own handler backs off to 100 ms sleeps, which under a steady write load
 * starved the agent for seconds). Gives up after about 5 s. */
static int busy_wait(void *ctx, int n)
{
    (void)ctx;
    if (n >= 5000) {
        return 0;
    }
    struct timespec ts = {0, n < 50 ? 100000 : 1000000};
    nanosleep(&ts, NULL);
    return 1;
}

int sync_sqlite_open(const sync_conf_t *c, sync_db_t **out, char *why, size_t whylen)
{
    sq_db_t *s = xcalloc(1, sizeof(*s));
    s->base.ops = &sq_ops;
    s->base.conf = c;
    s->data_version = -1;
    if (sqlite3_open_v2(c->database, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(why, whylen, "cannot open %s: %s", c->database,
                 s->db ? sqlite3_errmsg(s->db) : "out of memory");
        sq_close(&s->base);
        return MS_EDB;
    }
    sqlite3_busy_handler(s->db, busy_wait, NULL);
    /* WAL lets the applications read while the agent applies; NORMAL is durable across
     * application crashes and loses at most the last commits on power loss, like theirs. */
    if (exec(s, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
                "PRAGMA cache_size=-65536; PRAGMA mmap_size=1073741824") != 0) {
        snprintf(why, whylen, "cannot set WAL mode on %s", c->database);
        sq_close(&s->base);
        return MS_EDB;
    }
    *out = &s->base;
    return 0;
}

/* multisite-syncd join (SQLite): make this site's database a copy of a running site's, then
 * turn the copy into a new site. The copy holds every change of the source up to the source's
 * latest folded position M, and every other site's changes as far as the source applied them;
 * so the new site's cursor for the source is M and its cursors for the others are the
 * source's. Positions in the copy belong to the source's stream: they are reset, so the new
 * site sends nothing it did not change itself. Log rows not folded at the source when copied
 * are dropped: the source folds and sends them (positions above M). */
int sync_sqlite_join(const sync_conf_t *c, const char *src_path, char *why, size_t whylen)
{
    sqlite3 *src = NULL, *dst = NULL;
    int rc = MS_EDB;
    if (access(c->database, F_OK) == 0) {
        snprintf(why, whylen, "%s exists: join makes a new database (move it away first)",
                 c->database);
        return MS_EEXIST;
    }
    if (sqlite3_open_v2(src_path, &src, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_open_v2(c->database, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
            SQLITE_OK) {
        snprintf(why, whylen, "cannot open %s or %s", src_path, c->database);
        goto out;
    }
    sqlite3_busy_timeout(src, 10000);
    /* The online backup API copies a consistent snapshot while the source keeps running. */
    sqlite3_backup *bk = sqlite3_backup_init(dst, "main", src, "main");
    if (!bk || sqlite3_backup_step(bk, -1) != SQLITE_DONE) {
        snprintf(why, whylen, "copying %s: %s", src_path, sqlite3_errmsg(dst));
        sqlite3_backup_finish(bk);
        goto out;
    }
    sqlite3_backup_finish(bk);
    sqlite3_stmt *st = NULL;
    int64_t src_site = -1;
    if (sqlite3_prepare_v2(dst, "SELECT site FROM rep_meta", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        src_site = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    if (src_site < 0) {
        snprintf(why, whylen, "%s is not a multisite-syncd database (no rep_meta)", src_path);
        goto out;
    }
    if (src_site == (int64_t)c->site_id) {
        snprintf(why, whylen, "%s belongs to site id %lld, this site's own id", src_path,
                 (long long)src_site);
        goto out;
    }
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "BEGIN IMMEDIATE; CREATE TEMP TABLE m(v INTEGER);");
    sqlite3_stmt *tl = NULL;
    if (sqlite3_prepare_v2(dst, "SELECT name FROM rep_table", -1, &tl, NULL) == SQLITE_OK) {
        while (sqlite3_step(tl) == SQLITE_ROW) {
            const char *t = (const char *)sqlite3_column_text(tl, 0);
            buf_printf(&b,
                       "INSERT INTO temp.m SELECT max(seq) FROM \"rep_c_%s\";"
                       "UPDATE \"rep_c_%s\" SET seq = 0, mask = 0 WHERE seq != 0;"
                       "DELETE FROM \"rep_l_%s\";",
                       t, t, t);
        }
    }
    sqlite3_finalize(tl);
    buf_printf(&b,
               "INSERT OR REPLACE INTO rep_inbound(origin, applied_seq, applied) VALUES(%lld,"
               " coalesce((SELECT max(v) FROM temp.m), 0), 0);"
               "DELETE FROM rep_peer; DELETE FROM rep_conflict; DELETE FROM rep_quarantine;"
               "DELETE FROM rep_ctx; UPDATE rep_meta SET site = %u, acked = 0; COMMIT;",
               (long long)src_site, c->site_id);
    buf_append(&b, "", 1);
    char *msg = NULL;
    if (sqlite3_exec(dst, (const char *)b.data, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(why, whylen, "turning the copy into site %u: %s", c->site_id, msg ? msg : "?");
        sqlite3_free(msg);
        buf_deinit(&b);
        goto out;
    }
    buf_deinit(&b);
    rc = 0;
out:
    sqlite3_close(src);
    sqlite3_close(dst);
    if (rc != 0 && dst) {
        unlink(c->database);
    }
    return rc;
}
