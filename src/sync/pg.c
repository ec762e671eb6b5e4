/* pg.c: the PostgreSQL backend (libpq).
 *
 * Same change-table model as sqlite.c (one rep_c_T row per row of T: causal length, per
 * column version and base). A generated PL/pgSQL AFTER trigger appends one row per change
 * to the capture log rep_l_T, so any client is captured and no extension is needed; the
 * agent folds the log into rep_c_T (docs/sync.md §3). Differences, because PostgreSQL has
 * concurrent writers:
 *
 *  - Positions are snapshots, not numbers (PgQ's method, F1 in SYNC-NOTES.md). Each clock row
 *    carries the xid of the transaction that last changed it. The sender "ticks" by saving
 *    pg_current_snapshot() in rep_tick; window k is the rows whose xid is visible in tick k's
 *    snapshot and not in tick k-1's. A transaction that commits late is simply not visible in
 *    the tick that was taken while it ran, so it falls into a later window: no gap, no time
 *    guess. The read folds the log as the first statement of its snapshot, so every change
 *    of a transaction the tick sees is in rep_c_T. The position sent to peers is the tick id,
 *    and a window is applied in one transaction, so a row that moved to a later window since
 *    (changed again) never shifts anything: the cursor only ever names whole windows.
 *  - The HLC of a change is the wall clock at the write (the log's default); the fold gives
 *    each changed column max(that, previous version + 1), so a site's versions of one column
 *    strictly increase. No shared row is read or written by the trigger, so concurrent
 *    writers do not serialise on capture.
 *  - Capture suppression: the agent's apply transaction does SET LOCAL rep.applying = 'on';
 *    the trigger function tests it first and returns (a WHEN clause would be compiled for
 *    every statement, a tenth of a single-row insert; see gen_trigger()).
 *  - Apply is set-based: lock the batch's rows and fold their log, read clocks and rows by
 *    index probes, decide in C with merge.c, then a handful of array statements write rows,
 *    clocks and conflicts. A constraint error rolls the chunk back to a savepoint and
 *    replays it entry by entry, each under its own savepoint, so the bad entry goes to
 *    rep_quarantine and the others apply.
 *  - Keys: a primary key of 1..SYNC_MAX_PK columns, in the key's column order (the wire's).
 *    Every key travels as one array per key column (unnest() of parallel arrays), so a
 *    one-column key runs exactly the statements it always did.
 *
 * Files: pg.c (this: helpers, values, status, ops), pg_capture.c, pg_read.c, pg_apply.c;
 * their shared declarations are in pg_int.h. */
#include "sync/pg_int.h"

#include <math.h>

const char *sync_pg_cstr(buf_t *b)
{
    buf_append(b, "", 1);
    b->len--;
    return (const char *)b->data;
}

PGresult *sync_pg_q(pg_db_t *s, const char *sql, int n, const char *const *params)
{
    uint64_t t0 = time_mono_ms();
    PGresult *r = n ? PQexecParams(s->pc, sql, n, NULL, params, NULL, NULL, 0) : PQexec(s->pc, sql);
    if (time_mono_ms() - t0 > 100) {
        log_debug("postgresql: %llu ms for: %.120s", (unsigned long long)(time_mono_ms() - t0),
                  sql);
    }
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        log_debug("postgresql: %s (in: %.200s)", PQresultErrorMessage(r), sql);
        PQclear(r);
        return NULL;
    }
    return r;
}

int sync_pg_ex(pg_db_t *s, const char *sql)
{
    PGresult *r = sync_pg_q(s, sql, 0, NULL);
    if (!r) {
        log_err("postgresql: %s (in: %.200s)", PQerrorMessage(s->pc), sql);
        return MS_EDB;
    }
    PQclear(r);
    return 0;
}

int64_t sync_pg_q_int(pg_db_t *s, const char *sql)
{
    PGresult *r = sync_pg_q(s, sql, 0, NULL);
    int64_t v = 0;
    if (r && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)) {
        v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    }
    PQclear(r);
    return v;
}

/* ---- metadata and capture ---- */

static void table_free(pg_table_t *t)
{
    for (unsigned i = 0; t->cols && i < t->npk + t->ncols; i++) {
        free(t->cols[i]);
        free(t->types[i]);
    }
    free(t->cols);
    free(t->types);
    free(t->oids);
    free(t->name);
    memset(t, 0, sizeof(*t));
}

void sync_pg_tables_free(pg_db_t *s)
{
    for (size_t i = 0; i < s->nt; i++) {
        table_free(&s->t[i]);
    }
    free(s->t);
    s->t = NULL;
    s->nt = 0;
}

void sync_pg_key_list(buf_t *b, const pg_table_t *t, const char *prefix)
{
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(b, "%s%s\"%s\"", k ? ", " : "", prefix, t->cols[k]);
    }
}

void sync_pg_key_eq(buf_t *b, const pg_table_t *t, const char *a, const char *bp, bool bidx)
{
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(b, "%s%s\"%s\" = ", k ? " AND " : "", a, t->cols[k]);
        if (bidx) {
            buf_printf(b, "%s%u", bp, k);
        } else {
            buf_printf(b, "%s\"%s\"", bp, t->cols[k]);
        }
    }
}

void sync_pg_key_params(buf_t *b, const pg_table_t *t, unsigned first)
{
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(b, "%s$%u::%s[]", k ? ", " : "", first + k, t->types[k]);
    }
}

/* ---- values ---- */

void sync_pg_val(PGresult *r, int row, int col, unsigned oid, arena_t *a, sync_val_t *v)
{
    memset(v, 0, sizeof(*v));
    if (PQgetisnull(r, row, col)) {
        v->type = SYNC_V_NULL;
        return;
    }
    const char *s = PQgetvalue(r, row, col);
    switch (oid) {
    case 20:
    case 21:
    case 23:
        v->type = SYNC_V_INT;
        v->i = strtoll(s, NULL, 10);
        return;
    case 16:
        v->type = SYNC_V_INT;
        v->i = s[0] == 't';
        return;
    case 700:
    case 701:
        v->r = strtod(s, NULL);
        v->type = isnan(v->r) ? SYNC_V_NULL : SYNC_V_REAL;
        return;
    case 17: {
        size_t n = 0;
        unsigned char *u = PQunescapeBytea((const unsigned char *)s, &n);
        v->type = SYNC_V_BLOB;
        v->len = (uint32_t)n;
        v->p = arena_memdup(a, u ? u : (unsigned char *)"", n ? n : 1);
        PQfreemem(u);
        return;
    }
    default:
        v->type = SYNC_V_TEXT;
        v->len = (uint32_t)PQgetlength(r, row, col);
        v->p = arena_memdup(a, s, v->len + 1);
    }
}

void sync_pg_put_i64(buf_t *b, int64_t x)
{
    char tmp[24], *p = tmp + sizeof(tmp);
    uint64_t u = x < 0 ? 0 - (uint64_t)x : (uint64_t)x;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (x < 0) {
        *--p = '-';
    }
    buf_append(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

/* Text form of a value for a PostgreSQL array literal element (NULL: SQL NULL). Called for
 * every value of every applied row, so no printf: numbers are written unquoted, text is
 * quoted with backslash escapes, blobs as quoted \x hex. */
void sync_pg_arr_add(buf_t *b, const sync_val_t *v, bool first)
{
    static const char hex[] = "0123456789abcdef";
    if (!first) {
        buf_append(b, ",", 1);
    }
    if (!v || v->type == SYNC_V_NULL) {
        buf_append(b, "NULL", 4);
        return;
    }
    if (v->type == SYNC_V_INT) {
        sync_pg_put_i64(b, v->i);
        return;
    }
    if (v->type == SYNC_V_REAL) {
        char tmp[40];
        int n = isinf(v->r) ? snprintf(tmp, sizeof(tmp), "%sInfinity", v->r < 0 ? "-" : "")
                            : snprintf(tmp, sizeof(tmp), "%.17g", v->r);
        buf_append(b, tmp, (size_t)n);
        return;
    }
    buf_reserve(b, 2 * (size_t)v->len + 8);
    char *o = (char *)b->data + b->len;
    *o++ = '"';
    if (v->type == SYNC_V_BLOB) {
        memcpy(o, "\\\\x", 3);
        o += 3;
        for (uint32_t i = 0; i < v->len; i++) {
            *o++ = hex[v->p[i] >> 4];
            *o++ = hex[v->p[i] & 15];
        }
    } else {
        for (uint32_t i = 0; i < v->len; i++) {
            char c = (char)v->p[i];
            if (c == '"' || c == '\\') {
                *o++ = '\\';
            }
            *o++ = c;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - (char *)b->data);
    b->data[b->len] = 0;
}

void sync_pg_arr_int(buf_t *b, bool isnull, int64_t x, bool first)
{
    sync_val_t v = {isnull ? SYNC_V_NULL : SYNC_V_INT, x, 0, NULL, 0};
    sync_pg_arr_add(b, &v, first);
}

void sync_pg_arr_text(buf_t *b, const char *s, bool first)
{
    sync_val_t v = {s ? SYNC_V_TEXT : SYNC_V_NULL, 0, 0, (const uint8_t *)s,
                    s ? (uint32_t)strlen(s) : 0};
    sync_pg_arr_add(b, &v, first);
}

sync_ver_t sync_pg_ver(PGresult *r, int row, int col)
{
    sync_ver_t v = {0, 0};
    if (!PQgetisnull(r, row, col) && !PQgetisnull(r, row, col + 1)) {
        v.hlc = strtoull(PQgetvalue(r, row, col), NULL, 10);
        v.site = (uint32_t)strtoul(PQgetvalue(r, row, col + 1), NULL, 10);
    }
    return v;
}

/* Write the acknowledged positions recorded since the last write, in one transaction. */
int sync_pg_flush_acked(pg_db_t *s)
{
    if (!s->nack) {
        return 0;
    }
    const sync_conf_t *c = s->base.conf;
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "INSERT INTO rep_peer(site, acked) VALUES");
    for (size_t i = 0; i < s->nack; i++) {
        buf_printf(&b, "%s(%u, %llu)", i ? ", " : " ", s->ack_peer[i],
                   (unsigned long long)s->ack_val[i]);
    }
    buf_printf(&b, " ON CONFLICT (site) DO UPDATE SET acked = greatest(rep_peer.acked, "
                   "excluded.acked);");
    sync_pg_acked_sql(&b, c);
    int rc = sync_pg_ex(s, sync_pg_cstr(&b));
    buf_deinit(&b);
    s->nack = rc == 0 ? 0 : s->nack;
    s->next_ack_ms = time_mono_ms() + PG_ACK_WRITE_MS;
    return rc;
}

/* An acknowledgement is recorded in memory and written at most every PG_ACK_WRITE_MS (and
 * by sync_pg_changed, status and close): a commit per ACK would sit in the agent's loop
 * between the ACK and the next batch. Losing the last few in a crash is harmless: the peer
 * sends its cursor in HELLO, which is authoritative, and a stale rep_peer only keeps ticks a
 * little longer. */
static int pg_set_acked(sync_db_t *db, uint32_t peer, uint64_t acked)
{
    pg_db_t *s = (pg_db_t *)db;
    size_t i = 0;
    while (i < s->nack && s->ack_peer[i] != peer) {
        i++;
    }
    if (i == s->nack) {
        if (s->nack == MS_ARRAY_LEN(s->ack_peer)) {
            return sync_pg_flush_acked(s) == 0 ? pg_set_acked(db, peer, acked) : MS_EDB;
        }
        s->ack_peer[s->nack] = peer;
        s->ack_val[s->nack++] = acked;
    } else if (acked > s->ack_val[i]) {
        s->ack_val[i] = acked;
    }
    return time_mono_ms() >= s->next_ack_ms ? sync_pg_flush_acked(s) : 0;
}

/* Rows of t that a peer at position acked has not acknowledged, each row once: change-table
 * rows outside the windows it acknowledged, and rows with changes still in the capture log
 * (not folded yet; status with the agent down does not fold). *oldest (HLC) is lowered to
 * the oldest. */
static uint64_t pg_pending(pg_db_t *s, const pg_table_t *t, uint64_t acked, uint64_t *oldest)
{
    const char *T = t->name;
    char w[256];
    snprintf(w, sizeof(w),
             "c.xid IS NOT NULL AND (%llu = 0 OR NOT pg_visible_in_snapshot(c.xid, (SELECT snap "
             "FROM rep_tick WHERE id = %llu)))",
             (unsigned long long)acked, (unsigned long long)(acked >> PG_PART_BITS));
    buf_t b;
    buf_init(&b);
    /* a composite key counts as one row value: count(DISTINCT (l.a, l.b)) */
    buf_printf(&b,
               "SELECT count(*), min(c.lh) FROM \"rep_c_%s\" c WHERE %s UNION ALL SELECT "
               "count(DISTINCT %s",
               T, w, t->npk > 1 ? "(" : "");
    sync_pg_key_list(&b, t, "l.");
    buf_printf(&b, "%s) FILTER (WHERE NOT EXISTS (SELECT 1 FROM \"rep_c_%s\" c WHERE ",
               t->npk > 1 ? ")" : "", T);
    sync_pg_key_eq(&b, t, "c.", "l.", false);
    buf_printf(&b, " AND %s)), min(l.h) FROM \"rep_l_%s\" l", w, T);
    PGresult *r = sync_pg_q(s, sync_pg_cstr(&b), 0, NULL);
    uint64_t n = 0;
    for (int i = 0; r && i < PQntuples(r); i++) {
        n += strtoull(PQgetvalue(r, i, 0), NULL, 10);
        uint64_t m = PQgetisnull(r, i, 1) ? 0 : strtoull(PQgetvalue(r, i, 1), NULL, 10);
        *oldest = m && (!*oldest || m < *oldest) ? m : *oldest;
    }
    if (!r) {
        log_warn("postgresql: counting the backlog of %s: %s", T, PQerrorMessage(s->pc));
    }
    PQclear(r);
    buf_deinit(&b);
    return n;
}

static int pg_status(sync_db_t *db, sync_db_status_t *out)
{
    pg_db_t *s = (pg_db_t *)db;
    sync_pg_flush_acked(s);
    const sync_conf_t *c = db->conf;
    memset(out, 0, sizeof(*out));
    /* Read-only (the agent is down): one snapshot, so the figures agree with each other. */
    if (s->ro && sync_pg_ex(s, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") != 0) {
        return MS_EDB;
    }
    out->conflicts = (uint64_t)sync_pg_q_int(s, "SELECT count(*) FROM rep_conflict");
    out->quarantined =
        (uint64_t)sync_pg_q_int(s, "SELECT count(*) FROM rep_quarantine WHERE kind != 'future'");
    out->held =
        (uint64_t)sync_pg_q_int(s, "SELECT count(*) FROM rep_quarantine WHERE kind = 'future'");
    out->hlc = (uint64_t)sync_pg_q_int(s, "SELECT hlc FROM rep_meta");
    for (size_t i = 0; i < c->npeers && i < MS_ARRAY_LEN(out->peers); i++) {
        sync_peer_db_t *p = &out->peers[out->npeers++];
        char sql[512];
        p->peer = c->peers[i].id;
        snprintf(sql, sizeof(sql), "SELECT acked FROM rep_peer WHERE site = %u", p->peer);
        p->acked = (uint64_t)sync_pg_q_int(s, sql);
        uint64_t oldest = 0;
        for (size_t k = 0; k < s->nt; k++) {
            p->backlog += pg_pending(s, &s->t[k], p->acked, &oldest);
        }
        p->oldest_ms = SYNC_HLC_WALL(oldest);
    }
    PGresult *r = sync_pg_q(s, "SELECT origin, applied_seq, applied FROM rep_inbound", 0, NULL);
    for (int i = 0; r && i < PQntuples(r) && out->ninbound < MS_ARRAY_LEN(out->inbound); i++) {
        sync_inbound_t *in = &out->inbound[out->ninbound++];
        in->origin = (uint32_t)strtoul(PQgetvalue(r, i, 0), NULL, 10);
        in->applied_seq = strtoull(PQgetvalue(r, i, 1), NULL, 10);
        in->applied = strtoull(PQgetvalue(r, i, 2), NULL, 10);
    }
    PQclear(r);
    for (size_t k = 0; k < s->nt && k < SYNC_MAX_TABLES; k++) {
        snprintf(out->tables[k].name, sizeof(out->tables[k].name), "%s", s->t[k].name);
        memcpy(out->tables[k].fp, s->t[k].fp, 16);
        out->ntables++;
    }
    if (s->ro) {
        sync_pg_ex(s, "COMMIT");
    }
    return 0;
}

static void pg_close(sync_db_t *db)
{
    pg_db_t *s = (pg_db_t *)db;
    if (!s) {
        return;
    }
    sync_pg_flush_acked(s);
    sync_pg_tables_free(s);
    buf_deinit(&s->fold_sql);
    free(s->tip_snap);
    PQfinish(s->pc);
    free(s);
}

static const sync_db_ops_t pg_ops = {
    .name = "postgresql",
    .init = sync_pg_init,
    .attach = sync_pg_attach,
    .changed = sync_pg_changed,
    .read = sync_pg_read,
    .apply = sync_pg_apply,
    .retry = sync_pg_retry,
    .cursor = sync_pg_cursor,
    .set_acked = pg_set_acked,
    .status = pg_status,
    .close = pg_close,
    .oldest = sync_pg_oldest,
    .peer_get = sync_pg_peer_get,
    .peer_mark = sync_pg_peer_mark,
    .peer_forget = sync_pg_peer_forget,
    .purge = sync_pg_purge,
    .purge_quarantine = sync_pg_purge_quarantine,
};

int sync_pg_open(const sync_conf_t *c, sync_db_t **out, char *why, size_t whylen)
{
    pg_db_t *s = xcalloc(1, sizeof(*s));
    s->base.ops = &pg_ops;
    s->base.conf = c;
    s->pc = PQconnectdb(c->database);
    if (!s->pc || PQstatus(s->pc) != CONNECTION_OK) {
        snprintf(why, whylen, "cannot connect to PostgreSQL: %s",
                 s->pc ? PQerrorMessage(s->pc) : "out of memory");
        why[strcspn(why, "\n")] = '\0';
        pg_close(&s->base);
        return MS_EDB;
    }
    PQclear(PQexec(s->pc, "SET client_min_messages = warning"));
    *out = &s->base;
    return 0;
}

/* ---- read-only, for status while the agent is down ---- */

/* The configured tables as init recorded them in rep_table: name, key and value columns and
 * the fingerprint. The capture log and change tables are only counted, never folded. */
static int ro_tables(pg_db_t *s, char *why, size_t whylen)
{
    const sync_conf_t *c = s->base.conf;
    if (sync_pg_q_int(s, "SELECT (to_regclass('rep_meta') IS NOT NULL AND "
                         "to_regclass('rep_table') IS NOT NULL)::int") != 1) {
        snprintf(why, whylen,
                 "capture is not installed in this database; run multisite-syncd init");
        return MS_ENOENT;
    }
    s->t = xcalloc(c->tables.n ? c->tables.n : 1, sizeof(pg_table_t));
    for (size_t i = 0; i < c->tables.n; i++) {
        const char *p[1] = {c->tables.v[i]};
        PGresult *r =
            sync_pg_q(s, "SELECT pk, cols, encode(fp, 'hex') FROM rep_table WHERE name = $1", 1, p);
        if (!r || PQntuples(r) != 1) {
            snprintf(why, whylen, "capture is not installed for table %s; run multisite-syncd init",
                     c->tables.v[i]);
            PQclear(r);
            return MS_ENOENT;
        }
        pg_table_t *t = &s->t[s->nt++];
        /* rep_table.pk: the key's columns in key order, comma-separated */
        char *names[SYNC_MAX_PK + SYNC_MAX_COLS];
        t->npk = sync_split_names(PQgetvalue(r, 0, 0), names, SYNC_MAX_PK);
        t->ncols = sync_split_names(PQgetvalue(r, 0, 1), names + t->npk, SYNC_MAX_COLS);
        t->cols = xcalloc(t->npk + t->ncols + 1, sizeof(char *));
        t->types = xcalloc(t->npk + t->ncols + 1, sizeof(char *));
        t->oids = xcalloc(t->npk + t->ncols + 1, sizeof(unsigned));
        memcpy(t->cols, names, (t->npk + t->ncols) * sizeof(char *));
        t->name = xstrdup(c->tables.v[i]);
        t->w = (sync_wtable_t){t->name, t->npk, t->ncols, t->cols};
        const char *fp = PQgetvalue(r, 0, 2);
        for (int k = 0; k < 16 && strlen(fp) == 32; k++) {
            char h[3] = {fp[2 * k], fp[2 * k + 1], 0};
            t->fp[k] = (uint8_t)strtoul(h, NULL, 16);
        }
        PQclear(r);
        if (t->npk == 0) {
            snprintf(why, whylen, "rep_table has no primary key for %s; run multisite-syncd init",
                     t->name);
            return MS_EDB;
        }
    }
    return 0;
}

/* A session with default_transaction_read_only: every statement runs in a read-only
 * transaction, so status with the agent down cannot create, install or fold anything (the
 * server refuses any write). */
int sync_pg_open_ro(const sync_conf_t *c, sync_db_t **out, char *why, size_t whylen)
{
    int rc = sync_pg_open(c, out, why, whylen);
    if (rc != 0) {
        return rc;
    }
    pg_db_t *s = (pg_db_t *)*out;
    s->ro = true;
    if (sync_pg_ex(s, "SET default_transaction_read_only = on") != 0) {
        snprintf(why, whylen, "cannot start a read-only session: %s", PQerrorMessage(s->pc));
        rc = MS_EDB;
    } else {
        rc = ro_tables(s, why, whylen);
    }
    if (rc != 0) {
        pg_close(&s->base);
        *out = NULL;
    }
    return rc;
}
