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
 * captured. The agent's own writes are not: its connection runs with triggers disabled
 * (SQLITE_DBCONFIG_ENABLE_TRIGGER), so the triggers need no test of their own. SQLite has one
 * writer at a time, and seq (assigned inside the write transaction from rep_meta.hlc and the
 * capture log) increases in commit order: reading seq > cursor never skips a late commit.
 *
 * Apply. One transaction per batch: the rows, the conflict and quarantine records, the HLC
 * high-water mark and the cursor rep_inbound(origin) commit together (exactly once). A row
 * that fails (constraint, unknown table or column, stamped too far in the future) goes to
 * rep_quarantine with its payload and the reason, and the batch goes on.
 *
 * Files: this one holds the shared statement and value helpers, the change-table row
 * (clock) access, status, open and join; sqlite_capture.c the change tables, triggers and
 * fold; sqlite_read.c the sender side; sqlite_apply.c the receiver side; sqlite_int.h their
 * private interface. */
#include "sync/sqlite_int.h"

#include <pthread.h>
#include <time.h>
#include <unistd.h>

int sync_sq_why_db(sq_db_t *s, char *why, size_t whylen, const char *what)
{
    snprintf(why, whylen, "%s: %s", what, sqlite3_errmsg(s->db));
    /* Busy past the busy handler's patience: worth trying again, unlike other errors. */
    int ec = sqlite3_errcode(s->db);
    return ec == SQLITE_BUSY || ec == SQLITE_LOCKED ? MS_EAGAIN : MS_EDB;
}

int sync_sq_exec(sq_db_t *s, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        log_err("sqlite: %s (in: %.200s)", msg ? msg : "?", sql);
        sqlite3_free(msg);
        return MS_EDB;
    }
    return 0;
}

sqlite3_stmt *sync_sq_prep(sq_db_t *s, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        log_err("sqlite: cannot prepare: %s (in: %.300s)", sqlite3_errmsg(s->db), sql);
        return NULL;
    }
    return st;
}

/* "a","b" or c."a", c."b" or "a" = ?1 AND ... */
void sync_sq_pk_list(buf_t *b, const sq_table_t *t, const char *prefix)
{
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(b, "%s%s\"%s\"", k ? ", " : "", prefix, t->cols[k]);
    }
}
void sync_sq_pk_where(buf_t *b, const sq_table_t *t, const char *a, const char *bb)
{
    for (unsigned k = 0; k < t->npk; k++) {
        if (bb) {
            buf_printf(b, "%s%s\"%s\" = %s\"%s\"", k ? " AND " : "", a, t->cols[k], bb, t->cols[k]);
        } else {
            buf_printf(b, "%s\"%s\" = ?%u", k ? " AND " : "", t->cols[k], k + 1);
        }
    }
}
const char *sync_sq_cstr(buf_t *b)
{
    buf_append(b, "", 1);
    b->len--;
    return (const char *)b->data;
}

/* ---- values ---- */

void sync_sq_val_from_col(sqlite3_stmt *st, int i, arena_t *a, sync_val_t *v)
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

void sync_sq_bind_val(sqlite3_stmt *st, int i, const sync_val_t *v)
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

sync_ver_t sync_sq_ver_col(sqlite3_stmt *st, int i)
{
    sync_ver_t v = {0, 0};
    if (sqlite3_column_type(st, i) != SQLITE_NULL &&
        sqlite3_column_type(st, i + 1) != SQLITE_NULL) {
        v.hlc = (uint64_t)sqlite3_column_int64(st, i);
        v.site = (uint32_t)sqlite3_column_int64(st, i + 1);
    }
    return v;
}

void sync_sq_bind_ver(sqlite3_stmt *st, int i, sync_ver_t v)
{
    if (sync_ver_none(v)) {
        sqlite3_bind_null(st, i);
        sqlite3_bind_null(st, i + 1);
    } else {
        sqlite3_bind_int64(st, i, (int64_t)v.hlc);
        sqlite3_bind_int64(st, i + 1, v.site);
    }
}

int sync_sq_clock_get(sq_table_t *t, const sync_val_t *pk, sq_clock_t *ck)
{
    sqlite3_stmt *st = t->clk_get;
    memset(ck, 0, sizeof(*ck));
    sqlite3_reset(st);
    for (unsigned k = 0; k < t->npk; k++) {
        sync_sq_bind_val(st, (int)k + 1, &pk[k]);
    }
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        ck->found = true;
        ck->seq = (uint64_t)sqlite3_column_int64(st, 0);
        ck->mask = (uint64_t)sqlite3_column_int64(st, 1);
        ck->cl = (uint32_t)sqlite3_column_int64(st, 2);
        ck->clv = sync_sq_ver_col(st, 3);
        for (unsigned c = 0; c < t->ncols; c++) {
            ck->v[c] = sync_sq_ver_col(st, 5 + 4 * (int)c);
            ck->b[c] = sync_sq_ver_col(st, 7 + 4 * (int)c);
        }
        r = SQLITE_DONE;
    }
    sqlite3_reset(st);
    return r == SQLITE_DONE ? 0 : MS_EDB;
}

int sync_sq_clock_put(sq_table_t *t, const sync_val_t *pk, const sq_clock_t *ck, bool full)
{
    sqlite3_stmt *st = ck->found && !full ? t->clk_upd : t->clk_put;
    sqlite3_reset(st);
    for (unsigned k = 0; k < t->npk; k++) {
        sync_sq_bind_val(st, (int)k + 1, &pk[k]);
    }
    int i = (int)t->npk + 1;
    sqlite3_bind_int64(st, i, (int64_t)ck->seq);
    sqlite3_bind_int64(st, i + 1, (int64_t)ck->mask);
    sqlite3_bind_int64(st, i + 2, ck->cl);
    sync_sq_bind_ver(st, i + 3, ck->clv);
    for (unsigned c = 0; c < t->ncols; c++) {
        sync_sq_bind_ver(st, i + 5 + 4 * (int)c, ck->v[c]);
        sync_sq_bind_ver(st, i + 7 + 4 * (int)c, ck->b[c]);
    }
    int r = sqlite3_step(st);
    sqlite3_reset(st);
    return r == SQLITE_DONE ? 0 : MS_EDB;
}

static int sq_cursor(sync_db_t *db, uint32_t origin, uint64_t *applied)
{
    uint64_t count;
    return sync_sq_inbound_get((sq_db_t *)db, origin, applied, &count);
}

static int sq_set_acked(sync_db_t *db, uint32_t peer, uint64_t acked)
{
    sq_db_t *s = (sq_db_t *)db;
    const sync_conf_t *c = db->conf;
    buf_t b;
    buf_init(&b);
    buf_printf(&b,
               "INSERT INTO rep_peer(site, acked) VALUES(%u, %llu) ON CONFLICT(site) DO UPDATE "
               "SET acked = max(acked, excluded.acked);",
               peer, (unsigned long long)acked);
    sync_sq_acked_sql(&b, c);
    int rc = sync_sq_exec(s, sync_sq_cstr(&b));
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

/* Rows of t that a peer at position acked has not acknowledged, each row once: entries past
 * its position, and rows with changes still in the capture log (the agent folds before it
 * counts; status with the agent down cannot). *oldest (HLC) is lowered to the oldest. */
static uint64_t sq_pending(sq_db_t *s, const sq_table_t *t, int64_t acked, uint64_t *oldest)
{
    uint64_t n = 0, m = 0;
    buf_t b;
    buf_init(&b);
    buf_printf(&b,
               "SELECT count(*), coalesce(min(seq), 0) FROM \"rep_c_%s\" WHERE seq > ?1 AND "
               "seq > 0 UNION ALL SELECT (SELECT count(*) FROM (SELECT DISTINCT ",
               t->name);
    sync_sq_pk_list(&b, t, "l.");
    buf_printf(&b, " FROM \"rep_l_%s\" l WHERE NOT EXISTS (SELECT 1 FROM \"rep_c_%s\" c WHERE ",
               t->name, t->name);
    sync_sq_pk_where(&b, t, "c.", "l.");
    /* A log row written before the ms column carries its HLC position in seq. */
    buf_printf(&b,
               " AND c.seq > ?1 AND c.seq > 0))), coalesce((SELECT min(coalesce(ms << 16, seq)) "
               "FROM \"rep_l_%s\"), 0)",
               t->name);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, sync_sq_cstr(&b), -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, acked);
        while (sqlite3_step(st) == SQLITE_ROW) {
            n += (uint64_t)sqlite3_column_int64(st, 0);
            m = (uint64_t)sqlite3_column_int64(st, 1);
            *oldest = m && (!*oldest || m < *oldest) ? m : *oldest;
        }
    } else {
        log_warn("sqlite: counting the backlog of %s: %s", t->name, sqlite3_errmsg(s->db));
    }
    sqlite3_finalize(st);
    buf_deinit(&b);
    return n;
}

static int sq_status(sync_db_t *db, sync_db_status_t *out)
{
    sq_db_t *s = (sq_db_t *)db;
    const sync_conf_t *c = db->conf;
    memset(out, 0, sizeof(*out));
    if ((!s->ro && sync_sq_fold_txn(s) != 0) || sync_sq_exec(s, "BEGIN") != 0) {
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
            p->backlog += sq_pending(s, &s->t[k], (int64_t)p->acked, &oldest);
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
    sync_sq_exec(s, "COMMIT");
    return 0;
}

/* ---- checkpoints, off the agent's loop ----
 *
 * SQLite checkpoints a WAL database from inside a commit once the log passes 1,000 pages
 * (wal_autocheckpoint): the committing connection copies the pages into the database and
 * syncs it. In the agent that stalled the poll loop (an apply or a fold) for the length of a
 * checkpoint, which showed as lag and as apply time. The agent's connection reports its
 * commits through a WAL hook instead (which replaces the automatic checkpoint), and a thread
 * with its own connection runs PASSIVE checkpoints: they take no write lock, so neither the
 * agent nor the applications wait for them. Applications keep their own automatic
 * checkpoints. */

#define CKPT_PAGES 1000 /* SQLite's default wal_autocheckpoint */

struct sq_ckpt {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool started, want, stop;
    char *path;
};

static void *ckpt_main(void *arg)
{
    struct sq_ckpt *k = arg;
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(k->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL) != SQLITE_OK) {
        log_warn("checkpointer: cannot open %s: %s; the applications' checkpoints remain", k->path,
                 db ? sqlite3_errmsg(db) : "out of memory");
    }
    pthread_mutex_lock(&k->mu);
    while (!k->stop) {
        if (!k->want) {
            pthread_cond_wait(&k->cv, &k->mu);
            continue;
        }
        k->want = false;
        pthread_mutex_unlock(&k->mu);
        int nlog = 0, ndone = 0;
        int rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &nlog, &ndone);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
            static log_ratelimit_t rl = LOG_RATELIMIT_INIT(1, 60000);
            log_rl(&rl, LOG_LVL_WARN, "checkpoint of %s: %s", k->path, sqlite3_errmsg(db));
        }
        /* A reader pinning the log keeps it long; do not spin on it. */
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&k->mu);
    }
    pthread_mutex_unlock(&k->mu);
    sqlite3_close(db);
    return NULL;
}

static int on_wal_commit(void *ctx, sqlite3 *db, const char *name, int pages)
{
    (void)db;
    (void)name;
    struct sq_ckpt *k = ctx;
    if (pages < CKPT_PAGES) {
        return SQLITE_OK;
    }
    pthread_mutex_lock(&k->mu);
    if (!k->started && !k->stop) {
        k->started = pthread_create(&k->th, NULL, ckpt_main, k) == 0;
    }
    k->want = true;
    pthread_cond_signal(&k->cv);
    pthread_mutex_unlock(&k->mu);
    if (!k->started) {
        sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    }
    return SQLITE_OK;
}

static void ckpt_stop(struct sq_ckpt *k)
{
    if (!k) {
        return;
    }
    pthread_mutex_lock(&k->mu);
    k->stop = true;
    pthread_cond_signal(&k->cv);
    pthread_mutex_unlock(&k->mu);
    if (k->started) {
        pthread_join(k->th, NULL);
    }
    pthread_mutex_destroy(&k->mu);
    pthread_cond_destroy(&k->cv);
    free(k->path);
    free(k);
}

static void sq_close(sync_db_t *db)
{
    sq_db_t *s = (sq_db_t *)db;
    if (!s) {
        return;
    }
    ckpt_stop(s->ckpt);
    sync_sq_tables_free(s);
    sqlite3_finalize(s->inb_get);
    sqlite3_finalize(s->inb_put);
    sqlite3_finalize(s->conflict_ins);
    sqlite3_finalize(s->quar_ins);
    sqlite3_finalize(s->hlc_bump);
    sqlite3_finalize(s->data_ver);
    sqlite3_finalize(s->acked_get);
    sqlite3_close_v2(s->db);
    free(s);
}

static const sync_db_ops_t sq_ops = {
    .name = "sqlite",
    .init = sync_sq_init,
    .attach = sync_sq_attach,
    .changed = sync_sq_changed,
    .read = sync_sq_read,
    .apply = sync_sq_apply,
    .retry = sync_sq_retry,
    .cursor = sq_cursor,
    .set_acked = sq_set_acked,
    .status = sq_status,
    .close = sq_close,
    .oldest = sync_sq_oldest,
    .peer_get = sync_sq_peer_get,
    .peer_mark = sync_sq_peer_mark,
    .peer_forget = sync_sq_peer_forget,
    .purge = sync_sq_purge,
    .purge_quarantine = sync_sq_purge_quarantine,
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
    /* SQLite counts its allocations under a global mutex unless told not to; the agent never
     * asks for the count. Only possible before SQLite initialises (the first open). */
    static bool configured;
    if (!configured) {
        sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
        configured = true;
    }
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
    /* No echo: nothing this connection writes is captured (the agent's applies; init and
     * fold write only the rep_ tables). Set before any statement is prepared. */
    sqlite3_db_config(s->db, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, (int *)NULL);
    /* WAL lets the applications read while the agent applies; NORMAL is durable across
     * application crashes and loses at most the last commits on power loss, like theirs. */
    if (sync_sq_exec(s,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
                     "PRAGMA cache_size=-65536; PRAGMA mmap_size=1073741824") != 0) {
        snprintf(why, whylen, "cannot set WAL mode on %s", c->database);
        sq_close(&s->base);
        return MS_EDB;
    }
    s->ckpt = xcalloc(1, sizeof(*s->ckpt));
    pthread_mutex_init(&s->ckpt->mu, NULL);
    pthread_cond_init(&s->ckpt->cv, NULL);
    s->ckpt->path = xstrdup(c->database);
    sqlite3_wal_hook(s->db, on_wal_commit, s->ckpt);
    *out = &s->base;
    return 0;
}

/* ---- read-only, for status while the agent is down ---- */

/* The configured tables as init recorded them in rep_table (name, key and value columns,
 * fingerprint): enough to count the backlog, and nothing is prepared that could write. */
static int ro_tables(sq_db_t *s, char *why, size_t whylen)
{
    const sync_conf_t *c = s->base.conf;
    sqlite3_stmt *st = NULL;
    if (q_int(s, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
                 "('rep_meta', 'rep_table')") != 2) {
        snprintf(why, whylen, "capture is not installed in %s; run multisite-syncd init",
                 c->database);
        return MS_ENOENT;
    }
    if (sqlite3_prepare_v2(s->db, "SELECT pk, cols, fp FROM rep_table WHERE name = ?1", -1, &st,
                           NULL) != SQLITE_OK) {
        return sync_sq_why_db(s, why, whylen, "reading rep_table");
    }
    s->t = xcalloc(c->tables.n ? c->tables.n : 1, sizeof(sq_table_t));
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < c->tables.n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, c->tables.v[i], -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_ROW) {
            snprintf(why, whylen,
                     "capture is not installed for table %s in %s; run multisite-syncd init",
                     c->tables.v[i], c->database);
            rc = MS_ENOENT;
            break;
        }
        sq_table_t *t = &s->t[s->nt++];
        char *names[SYNC_MAX_PK + SYNC_MAX_COLS];
        const char *pk = (const char *)sqlite3_column_text(st, 0);
        const char *cols = (const char *)sqlite3_column_text(st, 1);
        t->npk = sync_split_names(pk ? pk : "", names, SYNC_MAX_PK);
        t->ncols = sync_split_names(cols ? cols : "", names + t->npk, SYNC_MAX_COLS);
        t->cols = xcalloc(t->npk + t->ncols + 1, sizeof(char *));
        memcpy(t->cols, names, (t->npk + t->ncols) * sizeof(char *));
        t->name = xstrdup(c->tables.v[i]);
        t->w = (sync_wtable_t){t->name, t->npk, t->ncols, t->cols};
        if (sqlite3_column_bytes(st, 2) == 16) {
            memcpy(t->fp, sqlite3_column_blob(st, 2), 16);
        }
        if (t->npk == 0) {
            snprintf(why, whylen, "rep_table has no primary key for %s; run multisite-syncd init",
                     t->name);
            rc = MS_EDB;
        }
    }
    sqlite3_finalize(st);
    return rc;
}

/* Opened with SQLITE_OPEN_READONLY (and query_only on top): status must be safe to run
 * against a database whose agent is stopped, e.g. one being inspected or copied, so it never
 * writes a page, creates a table or folds the capture log (the log's rows are counted as
 * they are). Like any reader of a WAL database it may create the empty -wal and -shm files. */
int sync_sqlite_open_ro(const sync_conf_t *c, sync_db_t **out, char *why, size_t whylen)
{
    sq_db_t *s = xcalloc(1, sizeof(*s));
    s->base.ops = &sq_ops;
    s->base.conf = c;
    s->ro = true;
    int rc = MS_EDB;
    if (sqlite3_open_v2(c->database, &s->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(why, whylen, "cannot open %s: %s", c->database,
                 s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_handler(s->db, busy_wait, NULL);
    if (sync_sq_exec(s, "PRAGMA query_only = 1") != 0) {
        snprintf(why, whylen, "cannot open %s read-only: %s", c->database, sqlite3_errmsg(s->db));
        goto fail;
    }
    if ((rc = ro_tables(s, why, whylen)) != 0) {
        goto fail;
    }
    *out = &s->base;
    return 0;
fail:
    sq_close(&s->base);
    return rc;
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
                       "INSERT INTO temp.m SELECT max(seq) FROM \"rep_c_%s\" WHERE seq > 0;"
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
               "UPDATE rep_meta SET site = %u, acked = 0; COMMIT;",
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
