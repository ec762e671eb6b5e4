/* pg.c: the PostgreSQL backend (libpq).
 *
 * Same change-table model as sqlite.c (one rep_c_T row per row of T: causal length, per
 * column version and base), captured by a generated PL/pgSQL AFTER trigger, so any client is
 * captured and no extension is needed. Differences, because PostgreSQL has concurrent
 * writers:
 *
 *  - Positions are snapshots, not numbers (PgQ's method, F1 in SYNC-NOTES.md). Each clock row
 *    carries the xid of the transaction that last changed it. The sender "ticks" by saving
 *    pg_current_snapshot() in rep_tick; window k is the rows whose xid is visible in tick k's
 *    snapshot and not in tick k-1's. A transaction that commits late is simply not visible in
 *    the tick that was taken while it ran, so it falls into a later window: no gap, no time
 *    guess. The position sent to peers is the tick id, and a window is applied in one
 *    transaction, so a row that moved to a later window since (changed again) never shifts
 *    anything: the cursor only ever names whole windows.
 *  - The HLC of a change is max(clock_timestamp(), rep_meta.hlc + 1), the floor the agent
 *    raises after applying remote versions; per column it is max(that, previous version +
 *    1) under the clock row's lock, so a site's versions of one column strictly increase. No
 *    shared counter row is updated by the triggers, so concurrent writers do not serialise
 *    on capture.
 *  - Capture suppression: the agent's apply transaction does SET LOCAL rep.applying = 'on';
 *    the trigger's WHEN tests it, so the agent's rows do not even queue a trigger event.
 *  - Apply is set-based: one query reads the clock and local rows of a whole batch
 *    (unnest of a key array), decisions are made in C with merge.c, and a handful of
 *    array statements write rows, clocks and conflicts. A constraint error rolls the chunk
 *    back to a savepoint and replays it entry by entry, each under its own savepoint, so the
 *    bad entry goes to rep_quarantine and the others apply.
 * Limitation: single-column primary keys (composite keys: SQLite backend only for now). */
#include "sync/internal.h"

#include <libpq-fe.h>
#include <math.h>

typedef struct {
    char *name;
    unsigned ncols;
    char **cols;  /* [0] = primary key, then value columns sorted by name */
    char **types; /* format_type() of each */
    unsigned *oids;
    sync_wtable_t w;
    uint8_t fp[16];
} pg_table_t;

typedef struct {
    sync_db_t base;
    PGconn *pc;
    pg_table_t *t;
    size_t nt;
    uint32_t site;
} pg_db_t;

static const char *meta_sql =
    "SET client_min_messages = warning;"
    "CREATE SEQUENCE IF NOT EXISTS rep_seq;"
    "CREATE TABLE IF NOT EXISTS rep_meta(id int PRIMARY KEY CHECK (id = 1), site int NOT NULL,"
    " hlc bigint NOT NULL, acked bigint NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS rep_table(name text PRIMARY KEY, pk text NOT NULL,"
    " cols text NOT NULL, fp bytea NOT NULL);"
    "CREATE TABLE IF NOT EXISTS rep_peer(site int PRIMARY KEY, acked bigint NOT NULL);"
    "CREATE TABLE IF NOT EXISTS rep_inbound(origin int PRIMARY KEY, applied_seq bigint NOT NULL,"
    " applied bigint NOT NULL);"
    "CREATE TABLE IF NOT EXISTS rep_conflict(id bigserial PRIMARY KEY, at_ms bigint NOT NULL,"
    " tbl text NOT NULL, pk text NOT NULL, col text NOT NULL, rule text NOT NULL,"
    " winner text NOT NULL, local_val text, local_hlc bigint, local_site int, remote_val text,"
    " remote_hlc bigint, remote_site int);"
    "CREATE TABLE IF NOT EXISTS rep_quarantine(id bigserial PRIMARY KEY, origin int NOT NULL,"
    " seq bigint NOT NULL, tbl text NOT NULL, pk text NOT NULL, kind text NOT NULL,"
    " error text NOT NULL, payload bytea NOT NULL, attempts int NOT NULL,"
    " first_ms bigint NOT NULL, last_ms bigint NOT NULL);"
    "CREATE TABLE IF NOT EXISTS rep_tick(id bigserial PRIMARY KEY, snap pg_snapshot NOT NULL);"
    "ALTER TABLE rep_tick ADD COLUMN IF NOT EXISTS lo_snap pg_snapshot,"
    " ADD COLUMN IF NOT EXISTS bounds bigint[];";

#define HLC_PG "((extract(epoch from clock_timestamp()) * 1000)::bigint << 16)"

static const char *cstr(buf_t *b)
{
    buf_append(b, "", 1);
    b->len--;
    return (const char *)b->data;
}

static PGresult *q(pg_db_t *s, const char *sql, int n, const char *const *params)
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

static int ex(pg_db_t *s, const char *sql)
{
    PGresult *r = q(s, sql, 0, NULL);
    if (!r) {
        log_err("postgresql: %s (in: %.200s)", PQerrorMessage(s->pc), sql);
        return MS_EDB;
    }
    PQclear(r);
    return 0;
}

static int64_t q_int(pg_db_t *s, const char *sql)
{
    PGresult *r = q(s, sql, 0, NULL);
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
    for (unsigned i = 0; i < t->ncols + 1; i++) {
        free(t->cols[i]);
        free(t->types[i]);
    }
    free(t->cols);
    free(t->types);
    free(t->oids);
    free(t->name);
    memset(t, 0, sizeof(*t));
}

static void tables_free(pg_db_t *s)
{
    for (size_t i = 0; i < s->nt; i++) {
        table_free(&s->t[i]);
    }
    free(s->t);
    s->t = NULL;
    s->nt = 0;
}

typedef struct {
    char *name, *type;
    unsigned oid;
} colinfo_t;

static int cmp_col(const void *a, const void *b)
{
    return strcmp(((const colinfo_t *)a)->name, ((const colinfo_t *)b)->name);
}

static bool ident_ok(const char *s)
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

static int table_load(pg_db_t *s, const char *name, pg_table_t *t, char *why, size_t whylen)
{
    const char *p[1] = {name};
    PGresult *r = q(s,
                    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid,"
                    " coalesce((a.attnum = ANY(i.indkey::int2[]))::int, 0),"
                    " coalesce(array_length(i.indkey::int2[], 1), 0)"
                    " FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND"
                    " i.indisprimary WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND"
                    " NOT a.attisdropped ORDER BY a.attnum",
                    1, p);
    if (!r) {
        snprintf(why, whylen, "reading columns of %s: %s", name, PQerrorMessage(s->pc));
        return MS_EDB;
    }
    int n = PQntuples(r);
    colinfo_t pk = {0}, vals[SYNC_MAX_COLS];
    unsigned nv = 0, npk = 0;
    int rc = 0;
    if (n == 0) {
        snprintf(why, whylen, "table %s does not exist", name);
        rc = MS_ENOENT;
    }
    for (int i = 0; rc == 0 && i < n; i++) {
        const char *cn = PQgetvalue(r, i, 0);
        if (!ident_ok(cn)) {
            snprintf(why, whylen, "table %s: column name '%s' is not a plain identifier", name, cn);
            rc = MS_EINVAL;
            break;
        }
        colinfo_t ci = {xstrdup(cn), xstrdup(PQgetvalue(r, i, 1)),
                        (unsigned)strtoul(PQgetvalue(r, i, 2), NULL, 10)};
        npk = (unsigned)atoi(PQgetvalue(r, i, 4));
        if (atoi(PQgetvalue(r, i, 3)) > 0) {
            pk = ci;
        } else if (nv == SYNC_MAX_COLS) {
            snprintf(why, whylen, "table %s: more than %d non-key columns", name, SYNC_MAX_COLS);
            free(ci.name);
            free(ci.type);
            rc = MS_EINVAL;
        } else {
            vals[nv++] = ci;
        }
    }
    PQclear(r);
    if (rc == 0 && !pk.name) {
        snprintf(why, whylen,
                 "table %s has no primary key: rows are replicated by primary key, so every "
                 "replicated table needs one (ALTER TABLE %s ADD PRIMARY KEY (...))",
                 name, name);
        rc = MS_EINVAL;
    } else if (rc == 0 && npk > 1) {
        snprintf(why, whylen,
                 "table %s: the PostgreSQL backend replicates tables with a one-column primary "
                 "key; this one has %u columns",
                 name, npk);
        rc = MS_EINVAL;
    }
    if (rc != 0) {
        free(pk.name);
        free(pk.type);
        for (unsigned i = 0; i < nv; i++) {
            free(vals[i].name);
            free(vals[i].type);
        }
        return rc;
    }
    qsort(vals, nv, sizeof(colinfo_t), cmp_col);
    memset(t, 0, sizeof(*t));
    t->name = xstrdup(name);
    t->ncols = nv;
    t->cols = xcalloc(nv + 1, sizeof(char *));
    t->types = xcalloc(nv + 1, sizeof(char *));
    t->oids = xcalloc(nv + 1, sizeof(unsigned));
    t->cols[0] = pk.name;
    t->types[0] = pk.type;
    t->oids[0] = pk.oid;
    for (unsigned i = 0; i < nv; i++) {
        t->cols[i + 1] = vals[i].name;
        t->types[i + 1] = vals[i].type;
        t->oids[i + 1] = vals[i].oid;
    }
    t->w = (sync_wtable_t){t->name, 1, nv, t->cols};
    sync_fingerprint(&t->w, t->fp);
    return 0;
}

static void gen_capture(buf_t *b, const pg_table_t *t, uint32_t site)
{
    const char *T = t->name, *P = t->cols[0];
    uint64_t all = t->ncols >= 64 ? ~0ull : ((1ull << t->ncols) - 1);
    (void)site;
    buf_printf(b,
               "CREATE TABLE IF NOT EXISTS \"rep_c_%s\"(\"%s\" %s PRIMARY KEY, seq bigint NOT "
               "NULL, xid xid8, lh bigint NOT NULL, mask bigint NOT NULL, cl int NOT NULL, clh "
               "bigint NOT NULL, cls int NOT NULL);"
               "CREATE INDEX IF NOT EXISTS \"rep_c_%s_xid\" ON \"rep_c_%s\"(xid) WHERE xid IS NOT "
               "NULL;",
               T, P, t->types[0], T, T);
    for (unsigned c = 1; c <= t->ncols; c++) {
        const char *n = t->cols[c];
        buf_printf(b,
                   "ALTER TABLE \"rep_c_%s\" ADD COLUMN IF NOT EXISTS \"v_%s\" bigint, ADD COLUMN "
                   "IF NOT EXISTS \"s_%s\" int, ADD COLUMN IF NOT EXISTS \"b_%s\" bigint, ADD "
                   "COLUMN IF NOT EXISTS \"bs_%s\" int;",
                   T, n, n, n, n);
    }
    buf_printf(
        b,
        "CREATE OR REPLACE FUNCTION \"rep_trg_%s\"() RETURNS trigger LANGUAGE plpgsql AS "
        "$rep$\n#variable_conflict use_variable\nDECLARE h bigint; me int; m bigint := 0;"
        "\nBEGIN\n IF TG_OP = 'UPDATE' THEN\n  IF OLD.\"%s\" IS DISTINCT FROM NEW.\"%s\" THEN "
        "RAISE EXCEPTION 'multisite-syncd: primary key updates are not replicated; "
        "delete the row and insert it under the new key'; END IF;\n  m := 0",
        T, P, P);
    for (unsigned c = 1; c <= t->ncols; c++) {
        buf_printf(b, " | (CASE WHEN OLD.\"%s\" IS DISTINCT FROM NEW.\"%s\" THEN %lld ELSE 0 END)",
                   t->cols[c], t->cols[c], (long long)(1ull << (c - 1)));
    }
    buf_printf(b,
               ";\n  IF m = 0 THEN RETURN NULL; END IF;\n ELSIF TG_OP = 'INSERT' THEN m := %lld; "
               "END IF;\n SELECT greatest(" HLC_PG
               ", r.hlc + 1), r.site INTO h, me FROM rep_meta r;\n"
               " IF TG_OP = 'DELETE' THEN\n  INSERT INTO \"rep_c_%s\" AS c (\"%s\", seq, xid, lh, "
               "mask, cl, clh, cls) VALUES (OLD.\"%s\", nextval('rep_seq'), pg_current_xact_id(), "
               "h, 0, 2, h, me) ON CONFLICT (\"%s\") DO UPDATE SET seq = excluded.seq, xid = "
               "excluded.xid, lh = excluded.lh, mask = 0, cl = c.cl + (c.cl %% 2), clh = "
               "greatest(excluded.clh, c.clh + 1), cls = excluded.cls;\n  RETURN NULL;\n END IF;\n"
               " INSERT INTO \"rep_c_%s\" AS c (\"%s\", seq, xid, lh, mask, cl, clh, cls",
               (long long)all, T, P, P, P, T, P);
    for (unsigned c = 1; c <= t->ncols; c++) {
        buf_printf(b, ", \"v_%s\", \"s_%s\"", t->cols[c], t->cols[c]);
    }
    buf_printf(b, ") VALUES (NEW.\"%s\", nextval('rep_seq'), pg_current_xact_id(), h, m, 1, h, me",
               P);
    for (unsigned c = 1; c <= t->ncols; c++) {
        long long bit = (long long)(1ull << (c - 1));
        buf_printf(b, ", CASE WHEN m & %lld <> 0 THEN h END, CASE WHEN m & %lld <> 0 THEN me END",
                   bit, bit);
    }
    buf_printf(b,
               ") ON CONFLICT (\"%s\") DO UPDATE SET seq = excluded.seq, xid = excluded.xid, lh "
               "= excluded.lh, mask = CASE WHEN c.xid = excluded.xid THEN c.mask | excluded.mask "
               "ELSE excluded.mask END, cl = CASE WHEN TG_OP = 'INSERT' THEN c.cl + 1 - (c.cl %% "
               "2) ELSE c.cl END, clh = CASE WHEN TG_OP = 'INSERT' THEN greatest(excluded.clh, "
               "c.clh + 1) ELSE c.clh END, cls = CASE WHEN TG_OP = 'INSERT' THEN excluded.cls "
               "ELSE c.cls END",
               P);
    for (unsigned c = 1; c <= t->ncols; c++) {
        const char *n = t->cols[c];
        buf_printf(
            b,
            ", \"b_%s\" = CASE WHEN excluded.\"v_%s\" IS NULL OR c.\"s_%s\" = me THEN "
            "c.\"b_%s\" ELSE c.\"v_%s\" END, \"bs_%s\" = CASE WHEN excluded.\"v_%s\" IS "
            "NULL OR c.\"s_%s\" = me THEN c.\"bs_%s\" ELSE c.\"s_%s\" END, \"v_%s\" = CASE "
            "WHEN excluded.\"v_%s\" IS NULL THEN c.\"v_%s\" ELSE greatest(excluded.\"v_%s\", "
            "c.\"v_%s\" + 1) END, \"s_%s\" = coalesce(excluded.\"s_%s\", c.\"s_%s\")",
            n, n, n, n, n, n, n, n, n, n, n, n, n, n, n, n, n, n);
    }
    buf_printf(b,
               ";\n RETURN NULL;\nEND\n$rep$;"
               "DROP TRIGGER IF EXISTS \"rep_t_%s\" ON \"%s\";"
               "CREATE TRIGGER \"rep_t_%s\" AFTER INSERT OR UPDATE OR DELETE ON \"%s\" FOR EACH "
               "ROW WHEN (current_setting('rep.applying', true) IS DISTINCT FROM 'on') EXECUTE "
               "FUNCTION \"rep_trg_%s\"();",
               T, T, T, T, T);
    /* Rows that existed before capture: one clock row each, sent like any change. */
    buf_printf(b, "INSERT INTO \"rep_c_%s\"(\"%s\", seq, xid, lh, mask, cl, clh, cls", T, P);
    for (unsigned c = 1; c <= t->ncols; c++) {
        buf_printf(b, ", \"v_%s\", \"s_%s\"", t->cols[c], t->cols[c]);
    }
    buf_printf(b,
               ") SELECT t.\"%s\", nextval('rep_seq'), pg_current_xact_id(), m.h, %lld, 1, "
               "m.h, m.site",
               P, (long long)all);
    for (unsigned c = 1; c <= t->ncols; c++) {
        buf_printf(b, ", m.h, m.site");
    }
    buf_printf(b,
               " FROM \"%s\" t, (SELECT greatest(" HLC_PG
               ", hlc + 1) AS h, site FROM rep_meta) m WHERE NOT EXISTS (SELECT 1 FROM "
               "\"rep_c_%s\" c WHERE c.\"%s\" = t.\"%s\");",
               T, T, P, P);
}

static int pg_init(sync_db_t *db, char *why, size_t whylen)
{
    pg_db_t *s = (pg_db_t *)db;
    const sync_conf_t *c = db->conf;
    tables_free(s);
    if (ex(s, "BEGIN") != 0) {
        snprintf(why, whylen, "cannot start the init transaction: %s", PQerrorMessage(s->pc));
        return MS_EDB;
    }
    int rc = ex(s, meta_sql);
    if (rc == 0) {
        char sql[160];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO rep_meta(id, site, hlc) VALUES(1, %u, 0) ON CONFLICT DO NOTHING",
                 c->site_id);
        rc = ex(s, sql);
    }
    if (rc == 0) {
        s->site = (uint32_t)q_int(s, "SELECT site FROM rep_meta");
        if (s->site != c->site_id) {
            snprintf(why, whylen, "database belongs to site id %u, the config says %u", s->site,
                     c->site_id);
            rc = MS_ECONF;
        }
    }
    s->t = xcalloc(c->tables.n, sizeof(pg_table_t));
    for (size_t i = 0; rc == 0 && i < c->tables.n; i++) {
        rc = table_load(s, c->tables.v[i], &s->t[i], why, whylen);
        if (rc != 0) {
            break;
        }
        s->nt++;
        buf_t b;
        buf_init(&b);
        gen_capture(&b, &s->t[i], s->site);
        PGresult *r = q(s, cstr(&b), 0, NULL);
        if (!r) {
            snprintf(why, whylen, "installing capture on %s: %s", s->t[i].name,
                     PQerrorMessage(s->pc));
            rc = MS_EDB;
        }
        PQclear(r);
        if (rc == 0) {
            buf_t cols;
            buf_init(&cols);
            for (unsigned k = 1; k <= s->t[i].ncols; k++) {
                buf_printf(&cols, "%s%s", k > 1 ? "," : "", s->t[i].cols[k]);
            }
            char fp[33];
            for (int k = 0; k < 16; k++) {
                snprintf(fp + 2 * k, 3, "%02x", s->t[i].fp[k]);
            }
            const char *p[4] = {s->t[i].name, s->t[i].cols[0], cols.len ? cstr(&cols) : "", fp};
            r = q(s,
                  "INSERT INTO rep_table(name, pk, cols, fp) VALUES($1, $2, $3, decode($4, "
                  "'hex')) ON CONFLICT (name) DO UPDATE SET pk = excluded.pk, cols = "
                  "excluded.cols, fp = excluded.fp",
                  4, p);
            rc = r ? 0 : MS_EDB;
            PQclear(r);
            buf_deinit(&cols);
        }
        buf_deinit(&b);
    }
    if (rc != 0) {
        if (!why[0]) {
            snprintf(why, whylen, "init failed: %s", PQerrorMessage(s->pc));
        }
        PQclear(PQexec(s->pc, "ROLLBACK"));
        tables_free(s);
        return rc;
    }
    if (ex(s, "COMMIT") != 0) {
        snprintf(why, whylen, "commit of init: %s", PQerrorMessage(s->pc));
        tables_free(s);
        return MS_EDB;
    }
    return 0;
}

static bool pg_changed(sync_db_t *db)
{
    (void)db; /* commits of other sessions are not observable cheaply: look every poll */
    return true;
}

/* ---- values ---- */

static void val_from_pg(PGresult *r, int row, int col, unsigned oid, arena_t *a, sync_val_t *v)
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

/* Text form of a value for a PostgreSQL array literal element (NULL: SQL NULL). */
static void arr_add(buf_t *b, const sync_val_t *v, bool first)
{
    if (!first) {
        buf_append(b, ",", 1);
    }
    if (!v || v->type == SYNC_V_NULL) {
        buf_printf(b, "NULL");
        return;
    }
    buf_append(b, "\"", 1);
    switch (v->type) {
    case SYNC_V_INT: buf_printf(b, "%lld", (long long)v->i); break;
    case SYNC_V_REAL:
        if (isinf(v->r)) {
            buf_printf(b, "%sInfinity", v->r < 0 ? "-" : "");
        } else {
            buf_printf(b, "%.17g", v->r);
        }
        break;
    case SYNC_V_BLOB:
        buf_printf(b, "\\\\x");
        for (uint32_t i = 0; i < v->len; i++) {
            buf_printf(b, "%02x", v->p[i]);
        }
        break;
    default:
        for (uint32_t i = 0; i < v->len; i++) {
            char c = (char)v->p[i];
            if (c == '"' || c == '\\') {
                buf_append(b, "\\", 1);
            }
            buf_append(b, &c, 1);
        }
    }
    buf_append(b, "\"", 1);
}

static void arr_int(buf_t *b, bool isnull, int64_t x, bool first)
{
    sync_val_t v = {isnull ? SYNC_V_NULL : SYNC_V_INT, x, 0, NULL, 0};
    arr_add(b, &v, first);
}

static void arr_text(buf_t *b, const char *s, bool first)
{
    sync_val_t v = {s ? SYNC_V_TEXT : SYNC_V_NULL, 0, 0, (const uint8_t *)s,
                    s ? (uint32_t)strlen(s) : 0};
    arr_add(b, &v, first);
}

static sync_ver_t ver_pg(PGresult *r, int row, int col)
{
    sync_ver_t v = {0, 0};
    if (!PQgetisnull(r, row, col) && !PQgetisnull(r, row, col + 1)) {
        v.hlc = strtoull(PQgetvalue(r, row, col), NULL, 10);
        v.site = (uint32_t)strtoul(PQgetvalue(r, row, col + 1), NULL, 10);
    }
    return v;
}

/* ---- read: the sender side ---- */

/* Positions on PostgreSQL: tick id << 24 | part. A window larger than batch_rows is cut into
 * parts at row positions (rep_seq values) chosen once, when the tick is taken, and stored
 * with it (bounds), so a resend cuts it the same way; a row that moved to a later window
 * since only leaves a part smaller. */
#define PG_PART_BITS       24
#define PG_POS(tick, part) (((uint64_t)(tick) << PG_PART_BITS) | (uint64_t)(part))

typedef struct {
    uint64_t id;
    unsigned part;
    char *snap, *lo_snap;
    int64_t lo_seq, hi_seq; /* the part: rows with lo_seq < seq <= hi_seq */
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
    PGresult *r = q(s,
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
    /* A new tick: the window is what committed since tick k (everything, at the start). */
    if (k > 0 && !last_snap) {
        log_warn("position %llu is no longer known here; sending from the start",
                 (unsigned long long)after);
    }
    buf_t sql;
    buf_init(&sql);
    buf_printf(&sql, "SELECT seq FROM (");
    for (size_t ti = 0; ti < s->nt; ti++) {
        buf_printf(&sql,
                   "%sSELECT seq FROM \"rep_c_%s\" c WHERE c.xid IS NOT NULL AND ($1::text IS "
                   "NULL OR (c.xid >= pg_snapshot_xmin($1::pg_snapshot) AND NOT "
                   "pg_visible_in_snapshot(c.xid, $1::pg_snapshot)))",
                   ti ? " UNION ALL " : "", s->t[ti].name);
    }
    buf_printf(&sql, ") w ORDER BY seq");
    const char *p1[1] = {last_snap};
    r = q(s, cstr(&sql), 1, p1);
    buf_deinit(&sql);
    if (!r) {
        free(last_snap);
        return MS_EDB;
    }
    int nrows = PQntuples(r);
    if (nrows == 0) {
        PQclear(r);
        free(last_snap);
        return 0;
    }
    buf_t bounds;
    buf_init(&bounds);
    buf_append(&bounds, "{", 1);
    unsigned np = 0;
    for (int i = 0; i < nrows; i++) {
        if ((size_t)(i + 1) % max == 0 || i == nrows - 1) {
            buf_printf(&bounds, "%s%s", np++ ? "," : "", PQgetvalue(r, i, 0));
        }
    }
    buf_append(&bounds, "}", 1);
    PQclear(r);
    if (np >= (1u << PG_PART_BITS)) {
        log_err("a window of %d rows needs more than %u parts: raise batch_rows", nrows, np);
        buf_deinit(&bounds);
        free(last_snap);
        return MS_ERANGE;
    }
    const char *p2[2] = {last_snap, cstr(&bounds)};
    r = q(s,
          "INSERT INTO rep_tick(snap, lo_snap, bounds) VALUES(pg_current_snapshot(),"
          " $1::pg_snapshot, $2::bigint[]) RETURNING id, snap::text",
          2, p2);
    if (r) {
        t->id = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        t->part = 0;
        t->snap = xstrdup(PQgetvalue(r, 0, 1));
        t->lo_snap = last_snap;
        last_snap = NULL;
        part_range(cstr(&bounds), 0, &t->lo_seq, &t->hi_seq, &nparts);
    }
    PQclear(r);
    buf_deinit(&bounds);
    free(last_snap);
    return r ? 0 : MS_EDB;
}

static int pg_read(sync_db_t *db, uint64_t after, size_t max, buf_t *out, size_t *n, uint64_t *hi)
{
    pg_db_t *s = (pg_db_t *)db;
    *n = 0;
    *hi = after;
    if (ex(s, "BEGIN ISOLATION LEVEL REPEATABLE READ") != 0) {
        return MS_EDB;
    }
    pg_target_t tg;
    int rc = next_target(s, after, max ? max : 1, &tg);
    if (rc != 0 || tg.id == 0) {
        target_free(&tg);
        if (rc == 0) {
            return ex(s, "COMMIT");
        }
        PQclear(PQexec(s->pc, "ROLLBACK"));
        return rc;
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
        buf_printf(&sql, "SELECT c.\"%s\", c.mask, c.cl, c.clh, c.cls", t->cols[0]);
        for (unsigned k = 1; k <= t->ncols; k++) {
            const char *cn = t->cols[k];
            buf_printf(&sql, ", c.\"v_%s\", c.\"s_%s\", c.\"b_%s\", c.\"bs_%s\", t.\"%s\"", cn, cn,
                       cn, cn, cn);
        }
        buf_printf(&sql,
                   " FROM \"rep_c_%s\" c LEFT JOIN \"%s\" t ON t.\"%s\" = c.\"%s\" WHERE c.xid IS "
                   "NOT NULL AND pg_visible_in_snapshot(c.xid, $1::pg_snapshot) AND ($2::text IS "
                   "NULL OR (c.xid >= pg_snapshot_xmin($2::pg_snapshot) AND NOT "
                   "pg_visible_in_snapshot(c.xid, $2::pg_snapshot))) AND c.seq > $3::bigint AND "
                   "c.seq <= $4::bigint ORDER BY c.seq",
                   t->name, t->name, t->cols[0], t->cols[0]);
        const char *p2[4] = {tg.snap, tg.lo_snap, los, his};
        r = q(s, cstr(&sql), 4, p2);
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
            e->pk = arena_alloc(a, sizeof(sync_val_t));
            val_from_pg(r, row, 0, t->oids[0], a, e->pk);
            e->mask = strtoull(PQgetvalue(r, row, 1), NULL, 10);
            e->cl = (uint32_t)strtoul(PQgetvalue(r, row, 2), NULL, 10);
            e->clv = ver_pg(r, row, 3);
            if (e->cl % 2 == 1 && t->ncols) {
                e->val = arena_alloc(a, sizeof(sync_val_t) * t->ncols);
                e->ver = arena_alloc(a, sizeof(sync_ver_t) * t->ncols);
                e->base = arena_alloc(a, sizeof(sync_ver_t) * t->ncols);
                for (unsigned k = 0; k < t->ncols; k++) {
                    int at = 5 + 5 * (int)k;
                    e->ver[k] = ver_pg(r, row, at);
                    e->base[k] =
                        e->ver[k].site == s->site ? ver_pg(r, row, at + 2) : (sync_ver_t){0, 0};
                    val_from_pg(r, row, at + 4, t->oids[k + 1], a, &e->val[k]);
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
        rc = ex(s, "COMMIT");
    } else {
        PQclear(PQexec(s->pc, "ROLLBACK"));
    }
    target_free(&tg);
    return rc;
}

/* ---- apply: the receiver side ---- */

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
    if (w->npk != 1 || strcmp(w->cols[0], t->cols[0]) != 0) {
        m->missing = "(primary key differs)";
        return;
    }
    for (unsigned c = 0; c < t->ncols; c++) {
        m->map[c] = -1;
        for (unsigned j = 0; j < w->ncols; j++) {
            if (strcmp(w->cols[1 + j], t->cols[1 + c]) == 0) {
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
            m->missing = w->cols[1 + j];
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
           cstr(&pk), kind, error);
    char now[32], ids[32], org[16], seq[32];
    snprintf(now, sizeof(now), "%llu", (unsigned long long)time_wall_ms());
    PGresult *r;
    if (requeue_id) {
        snprintf(ids, sizeof(ids), "%lld", (long long)requeue_id);
        const char *p[3] = {ids, error, now};
        r = q(s,
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
        const char *p[8] = {org, seq, w->name, cstr(&pk), kind, error, (const char *)pl.data, now};
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
    bool write, del, found, existed;
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

/* Apply entries ents[0..n) of one wire table (all for the same local table) set-based.
 * Returns 0 or MS_EDB (the caller rolls back to its savepoint). */
static int apply_set(pg_db_t *s, uint32_t origin, const sync_wtable_t *w, const pmap_t *m,
                     const sync_entry_t **ents, size_t n, sync_apply_res_t *res)
{
    pg_table_t *t = m->t;
    const char *P = t->cols[0];
    buf_t keys, sql;
    buf_init(&keys);
    buf_init(&sql);
    buf_append(&keys, "{", 1);
    for (size_t i = 0; i < n; i++) {
        arr_add(&keys, &ents[i]->pk[0], i == 0);
    }
    buf_append(&keys, "}", 1);
    buf_printf(&sql, "SELECT k.i, c.cl, c.clh, c.cls");
    for (unsigned c = 1; c <= t->ncols; c++) {
        buf_printf(&sql, ", c.\"v_%s\", c.\"s_%s\", t.\"%s\"::text", t->cols[c], t->cols[c],
                   t->cols[c]);
    }
    buf_printf(&sql,
               " FROM unnest($1::text[]) WITH ORDINALITY AS k(p, i) LEFT JOIN \"rep_c_%s\" c ON "
               "c.\"%s\" = k.p::%s LEFT JOIN \"%s\" t ON t.\"%s\" = k.p::%s ORDER BY k.i",
               t->name, P, t->types[0], t->name, P, t->types[0]);
    const char *p1[1] = {cstr(&keys)};
    /* Lock the rows first, so no local change slips in between the read of the versions
     * below and the writes (a writer holds the row until its trigger has written the clock
     * row and it commits). */
    buf_t lk;
    buf_init(&lk);
    buf_printf(&lk,
               "SELECT 1 FROM \"%s\" x JOIN unnest($1::text[]::%s[]) k(p) ON x.\"%s\" = k.p "
               "ORDER BY x.\"%s\" FOR UPDATE OF x",
               t->name, t->types[0], P, P);
    PGresult *r = q(s, cstr(&lk), 1, p1);
    /* The clock rows need no lock of their own: only the capture trigger writes them, and
     * only while its transaction holds the row locked above. */
    buf_deinit(&lk);
    if (!r) {
        buf_deinit(&keys);
        buf_deinit(&sql);
        return MS_EDB;
    }
    PQclear(r);
    r = q(s, cstr(&sql), 1, p1);
    if (!r || PQntuples(r) != (int)n) {
        PQclear(r);
        buf_deinit(&keys);
        buf_deinit(&sql);
        return MS_EDB;
    }
    pdec_t *d = xcalloc(n, sizeof(pdec_t));
    buf_t conf;
    buf_init(&conf);
    size_t nconf = 0;
    buf_t cf[8]; /* conflict arrays: pk, col, rule, winner, local_val, lv, remote_val, rv */
    for (int i = 0; i < 8; i++) {
        buf_init(&cf[i]);
    }
    for (size_t i = 0; i < n; i++) {
        const sync_entry_t *e = ents[i];
        pdec_t *x = &d[i];
        x->e = e;
        x->found = !PQgetisnull(r, (int)i, 1);
        x->cl = x->found ? (uint32_t)strtoul(PQgetvalue(r, (int)i, 1), NULL, 10) : 0;
        x->clv = x->found ? ver_pg(r, (int)i, 2) : (sync_ver_t){0, 0};
        for (unsigned c = 0; c < t->ncols; c++) {
            x->v[c] = x->found ? ver_pg(r, (int)i, 4 + 3 * (int)c) : (sync_ver_t){0, 0};
        }
        x->existed = x->found && x->cl % 2 == 1;
        x->act = sync_decide_row(x->cl, e->cl);
        const char *rules[SYNC_MAX_COLS] = {0};
        bool won[SYNC_MAX_COLS] = {0};
        sync_ver_t lv[SYNC_MAX_COLS];
        if (x->act == SYNC_ROW_STALE) {
            for (unsigned c = 0; e->cl % 2 == 1 && e->mask && x->cl % 2 == 0 && c < t->ncols; c++) {
                int j = m->map[c];
                if (j >= 0 && ((e->mask >> j) & 1)) {
                    rules[c] = "update-vs-delete";
                    lv[c] = x->clv;
                }
            }
        } else if (x->act == SYNC_ROW_REPLACE) {
            x->cl = e->cl;
            x->clv = e->clv;
            if (e->cl % 2 == 0) {
                x->del = true;
            } else {
                x->write = true;
                for (unsigned c = 0; c < t->ncols; c++) {
                    if (m->map[c] >= 0) {
                        x->take[c] = true;
                        x->v[c] = e->ver[m->map[c]];
                    }
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
            if (!rules[c]) {
                continue;
            }
            int j = m->map[c];
            buf_t pkt;
            buf_init(&pkt);
            sync_val_text(&pkt, e->pk, 1);
            bool f = nconf == 0;
            arr_text(&cf[0], cstr(&pkt), f);
            arr_text(&cf[1], t->cols[1 + c], f);
            arr_text(&cf[2], rules[c], f);
            arr_text(&cf[3], won[c] ? "remote" : "local", f);
            arr_text(&cf[4],
                     PQgetisnull(r, (int)i, 6 + 3 * (int)c) ? NULL
                                                            : PQgetvalue(r, (int)i, 6 + 3 * (int)c),
                     f);
            buf_printf(&cf[5], "%s\"(%llu,%u)\"", f ? "" : ",", (unsigned long long)lv[c].hlc,
                       lv[c].site);
            arr_add(&cf[6], &e->val[j], f);
            buf_printf(&cf[7], "%s\"(%llu,%u)\"", f ? "" : ",", (unsigned long long)e->ver[j].hlc,
                       e->ver[j].site);
            buf_deinit(&pkt);
            nconf++;
            res->conflicts++;
        }
    }
    PQclear(r);
    int rc = 0;
    /* deletes */
    buf_t del;
    buf_init(&del);
    size_t ndel = 0;
    for (size_t i = 0; i < n; i++) {
        if (d[i].del) {
            arr_add(&del, &d[i].e->pk[0], ndel++ == 0);
        }
    }
    if (ndel) {
        buf_reset(&sql);
        buf_printf(&sql,
                   "DELETE FROM \"%s\" x USING unnest(('{%s}'::text[])::%s[]) k(p) WHERE "
                   "x.\"%s\" = k.p",
                   t->name, cstr(&del), t->types[0], P);
        rc = ex(s, cstr(&sql));
    }
    buf_deinit(&del);
    /* row writes: one upsert with take flags */
    /* pass 0: rows that exist here (UPDATE with take flags); pass 1: rows that do not
     * (INSERT; ON CONFLICT covers a row that exists without a clock row). */
    for (int pass = 0; pass < 2; pass++) {
        size_t nw = 0;
        for (size_t i = 0; i < n; i++) {
            nw += d[i].write && d[i].existed == (pass == 0);
        }
        if (rc != 0 || nw == 0) {
            continue;
        }
        {
            unsigned np = 1 + 2 * t->ncols;
            buf_t *arr = xcalloc(np, sizeof(buf_t));
            for (unsigned k = 0; k < np; k++) {
                buf_init(&arr[k]);
                buf_append(&arr[k], "{", 1);
            }
            size_t wi = 0;
            for (size_t i = 0; i < n; i++) {
                if (!d[i].write || d[i].existed != (pass == 0)) {
                    continue;
                }
                const sync_entry_t *e = d[i].e;
                arr_add(&arr[0], &e->pk[0], wi == 0);
                for (unsigned c = 0; c < t->ncols; c++) {
                    int j = m->map[c];
                    arr_add(&arr[1 + 2 * c], j >= 0 ? &e->val[j] : NULL, wi == 0);
                    arr_text(&arr[2 + 2 * c], d[i].take[c] ? "t" : "f", wi == 0);
                }
                wi++;
            }
            const char **pv = xcalloc(np, sizeof(char *));
            for (unsigned k = 0; k < np; k++) {
                buf_append(&arr[k], "}", 1);
                pv[k] = cstr(&arr[k]);
            }
            /* Existing rows: UPDATE with the take flags (a column not taken keeps its value);
             * then missing rows: INSERT ... ON CONFLICT DO NOTHING. Two set-based statements for
             * the whole chunk (a CTE with RETURNING would make the planner loop). */
            buf_t src;
            buf_init(&src);
            buf_printf(&src, "(SELECT * FROM unnest($1::text[]::%s[]", t->types[0]);
            for (unsigned c = 0; c < t->ncols; c++) {
                buf_printf(&src, ", $%u::text[]::%s[], $%u::bool[]", 2 + 2 * c, t->types[1 + c],
                           3 + 2 * c);
            }
            buf_printf(&src, ") AS u(k");
            for (unsigned c = 0; c < t->ncols; c++) {
                buf_printf(&src, ", c%u, t%u", c, c);
            }
            buf_printf(&src, ")) u");
            buf_reset(&sql);
            if (pass == 0) {
                buf_printf(&sql, "UPDATE \"%s\" x SET \"%s\" = x.\"%s\"", t->name, P, P);
                for (unsigned c = 0; c < t->ncols; c++) {
                    if (m->map[c] >= 0) {
                        buf_printf(&sql, ", \"%s\" = CASE WHEN u.t%u THEN u.c%u ELSE x.\"%s\" END",
                                   t->cols[1 + c], c, c, t->cols[1 + c]);
                    }
                }
                buf_printf(&sql, " FROM %s WHERE x.\"%s\" = u.k", cstr(&src), P);
                PGresult *wr = q(s, cstr(&sql), (int)np, pv);
                if (!wr) {
                    rc = MS_EDB;
                }
                PQclear(wr);
            } else {
                buf_reset(&sql);
                buf_printf(&sql, "INSERT INTO \"%s\"(\"%s\"", t->name, P);
                for (unsigned c = 0; c < t->ncols; c++) {
                    if (m->map[c] >= 0) {
                        buf_printf(&sql, ", \"%s\"", t->cols[1 + c]);
                    }
                }
                buf_printf(&sql, ") SELECT u.k");
                for (unsigned c = 0; c < t->ncols; c++) {
                    if (m->map[c] >= 0) {
                        buf_printf(&sql, ", u.c%u", c);
                    }
                }
                buf_printf(&sql,
                           " FROM %s ON CONFLICT (\"%s\") DO UPDATE SET \"%s\" = excluded.\"%s\"",
                           cstr(&src), P, P, P);
                for (unsigned c = 0; c < t->ncols; c++) {
                    if (m->map[c] >= 0) {
                        buf_printf(&sql, ", \"%s\" = excluded.\"%s\"", t->cols[1 + c],
                                   t->cols[1 + c]);
                    }
                }
                PGresult *wr = q(s, cstr(&sql), (int)np, pv);
                if (!wr) {
                    rc = MS_EDB;
                }
                PQclear(wr);
            }
            buf_deinit(&src);
            for (unsigned k = 0; k < np; k++) {
                buf_deinit(&arr[k]);
            }
            free(arr);
            free(pv);
        }
    }

    /* clocks */
    size_t nck = 0;
    for (size_t i = 0; i < n; i++) {
        nck += d[i].act != SYNC_ROW_STALE;
    }
    if (rc == 0 && nck) {
        unsigned np = 4 + 2 * t->ncols;
        buf_t *arr = xcalloc(np, sizeof(buf_t));
        for (unsigned k = 0; k < np; k++) {
            buf_init(&arr[k]);
            buf_append(&arr[k], "{", 1);
        }
        size_t wi = 0;
        for (size_t i = 0; i < n; i++) {
            if (d[i].act == SYNC_ROW_STALE) {
                continue;
            }
            bool f = wi++ == 0;
            arr_add(&arr[0], &d[i].e->pk[0], f);
            arr_int(&arr[1], false, d[i].cl, f);
            arr_int(&arr[2], false, (int64_t)d[i].clv.hlc, f);
            arr_int(&arr[3], false, d[i].clv.site, f);
            for (unsigned c = 0; c < t->ncols; c++) {
                bool none = sync_ver_none(d[i].v[c]);
                arr_int(&arr[4 + 2 * c], none, (int64_t)d[i].v[c].hlc, f);
                arr_int(&arr[5 + 2 * c], none, d[i].v[c].site, f);
            }
        }
        const char **pv = xcalloc(np, sizeof(char *));
        for (unsigned k = 0; k < np; k++) {
            buf_append(&arr[k], "}", 1);
            pv[k] = cstr(&arr[k]);
        }
        buf_reset(&sql);
        buf_printf(&sql, "INSERT INTO \"rep_c_%s\" AS c (\"%s\", seq, lh, mask, cl, clh, cls",
                   t->name, P);
        for (unsigned c = 1; c <= t->ncols; c++) {
            buf_printf(&sql, ", \"v_%s\", \"s_%s\"", t->cols[c], t->cols[c]);
        }
        buf_printf(&sql, ") SELECT u.k, 0, 0, 0, u.cl, u.clh, u.cls");
        for (unsigned c = 0; c < t->ncols; c++) {
            buf_printf(&sql, ", u.v%u, u.s%u", c, c);
        }
        buf_printf(&sql, " FROM unnest($1::text[]::%s[], $2::int[], $3::bigint[], $4::int[]",
                   t->types[0]);
        for (unsigned c = 0; c < t->ncols; c++) {
            buf_printf(&sql, ", $%u::bigint[], $%u::int[]", 5 + 2 * c, 6 + 2 * c);
        }
        buf_printf(&sql, ") AS u(k, cl, clh, cls");
        for (unsigned c = 0; c < t->ncols; c++) {
            buf_printf(&sql, ", v%u, s%u", c, c);
        }
        buf_printf(&sql,
                   ") ON CONFLICT (\"%s\") DO UPDATE SET cl = excluded.cl, clh = "
                   "excluded.clh, cls = excluded.cls",
                   P);
        for (unsigned c = 1; c <= t->ncols; c++) {
            buf_printf(&sql, ", \"v_%s\" = excluded.\"v_%s\", \"s_%s\" = excluded.\"s_%s\"",
                       t->cols[c], t->cols[c], t->cols[c], t->cols[c]);
        }
        PGresult *wr = q(s, cstr(&sql), (int)np, pv);
        if (!wr) {
            log_err("postgresql: clock write: %s", PQerrorMessage(s->pc));
            rc = MS_EDB;
        }
        PQclear(wr);
        for (unsigned k = 0; k < np; k++) {
            buf_deinit(&arr[k]);
        }
        free(arr);
        free(pv);
    }
    if (rc == 0 && nconf) {
        const char *pv[9];
        char now[32];
        snprintf(now, sizeof(now), "%llu", (unsigned long long)time_wall_ms());
        buf_t full[8];
        for (int i = 0; i < 8; i++) {
            buf_init(&full[i]);
            buf_printf(&full[i], "{%s}", cstr(&cf[i]));
            pv[i] = cstr(&full[i]);
        }
        pv[8] = now;
        char tbl[96];
        snprintf(tbl, sizeof(tbl), "%s", t->name);
        buf_reset(&sql);
        buf_printf(&sql,
                   "INSERT INTO rep_conflict(at_ms, tbl, pk, col, rule, winner, local_val,"
                   " local_hlc, local_site, remote_val, remote_hlc, remote_site) SELECT $9::bigint,"
                   " '%s', u.pk, u.col, u.rule, u.w, u.lv, split_part(trim(both '()' from u.lver),"
                   " ',', 1)::bigint, split_part(trim(both '()' from u.lver), ',', 2)::int, u.rv,"
                   " split_part(trim(both '()' from u.rver), ',', 1)::bigint, split_part(trim(both"
                   " '()' from u.rver), ',', 2)::int FROM unnest($1::text[], $2::text[], "
                   "$3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) AS "
                   "u(pk, col, rule, w, lv, lver, rv, rver)",
                   tbl);
        PGresult *wr = q(s, cstr(&sql), 9, pv);
        if (!wr) {
            log_err("postgresql: conflict log: %s", PQerrorMessage(s->pc));
            rc = MS_EDB;
        }
        PQclear(wr);
        for (int i = 0; i < 8; i++) {
            buf_deinit(&full[i]);
        }
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        uint64_t mx = entry_max_hlc(w, d[i].e);
        res->max_hlc = mx > res->max_hlc ? mx : res->max_hlc;
        res->entries_applied++;
    }
    for (int i = 0; i < 8; i++) {
        buf_deinit(&cf[i]);
    }
    buf_deinit(&conf);
    free(d);
    buf_deinit(&keys);
    buf_deinit(&sql);
    return rc;
}

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
        if (ex(s, "SAVEPOINT rep_chunk") != 0) {
            rc = MS_EDB;
            break;
        }
        if (apply_set(s, b->origin, w, &m, sel, n, &r1) == 0) {
            ex(s, "RELEASE SAVEPOINT rep_chunk");
            res->entries_applied += r1.entries_applied;
            res->conflicts += r1.conflicts;
            res->max_hlc = r1.max_hlc > res->max_hlc ? r1.max_hlc : res->max_hlc;
            continue;
        }
        /* Something in the chunk failed: replay it one entry at a time. */
        ex(s, "ROLLBACK TO SAVEPOINT rep_chunk");
        for (size_t i = 0; rc == 0 && i < n; i++) {
            sync_apply_res_t r2 = {0};
            ex(s, "SAVEPOINT rep_one");
            if (apply_set(s, b->origin, w, &m, &sel[i], 1, &r2) == 0) {
                ex(s, "RELEASE SAVEPOINT rep_one");
                res->entries_applied += r2.entries_applied;
                res->conflicts += r2.conflicts;
                res->max_hlc = r2.max_hlc > res->max_hlc ? r2.max_hlc : res->max_hlc;
            } else {
                char err[256];
                snprintf(err, sizeof(err), "%s", PQerrorMessage(s->pc));
                err[strcspn(err, "\n")] = '\0';
                ex(s, "ROLLBACK TO SAVEPOINT rep_one");
                res->quarantined++;
                rc = quarantine(s, b->origin, w, sel[i], "constraint", err, requeue_id);
            }
        }
        ex(s, "RELEASE SAVEPOINT rep_chunk");
    }
    free(sel);
    return rc;
}

static int inbound_get(pg_db_t *s, uint32_t origin, uint64_t *seq, uint64_t *count, bool lock)
{
    char o[16];
    snprintf(o, sizeof(o), "%u", origin);
    const char *p[1] = {o};
    PGresult *r = q(s,
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

static int pg_apply(sync_db_t *db, const sync_batch_t *b, sync_apply_res_t *res)
{
    pg_db_t *s = (pg_db_t *)db;
    memset(res, 0, sizeof(*res));
    sync_fault("apply.before-begin");
    /* One round trip: begin, capture off, the cursor (locked). */
    char sql[256];
    snprintf(sql, sizeof(sql),
             "BEGIN; SET LOCAL rep.applying = 'on'; SELECT applied_seq, applied FROM rep_inbound"
             " WHERE origin = %u FOR UPDATE",
             b->origin);
    PGresult *r0 = q(s, sql, 0, NULL);
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
            rc = ex(s, fin);
        }
    } else if (rc == 0) {
        res->entries_skipped = b->nentries;
        rc = ex(s, "COMMIT");
    }
    if (rc != 0) {
        log_err("apply of a batch from site %u failed: %s; rolled back", b->origin,
                PQerrorMessage(s->pc));
        PQclear(PQexec(s->pc, "ROLLBACK"));
        return MS_EDB;
    }
    sync_fault("apply.committed");
    return 0;
}

static int pg_retry(sync_db_t *db, sync_apply_res_t *res)
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
        if (ex(s, "BEGIN") != 0 || ex(s, "SET LOCAL rep.applying = 'on'") != 0) {
            arena_free(a);
            rc = MS_EDB;
            break;
        }
        int x = apply_entries(s, &msg.u.batch, 0, &r1, id);
        if (x == 0 && r1.max_hlc) {
            char h[96];
            snprintf(h, sizeof(h), "UPDATE rep_meta SET hlc = greatest(hlc, %llu)",
                     (unsigned long long)r1.max_hlc);
            x = ex(s, h);
        }
        if (x == 0 && r1.entries_applied) {
            char ids[96];
            snprintf(ids, sizeof(ids), "DELETE FROM rep_quarantine WHERE id = %lld", (long long)id);
            x = ex(s, ids);
            res->entries_applied += r1.entries_applied;
        }
        x = x == 0 ? ex(s, "COMMIT") : x;
        if (x != 0) {
            PQclear(PQexec(s->pc, "ROLLBACK"));
            rc = MS_EDB;
        }
        arena_free(a);
    }
    PQclear(r);
    return rc;
}

static int pg_attach(sync_db_t *db, char *why, size_t whylen)
{
    return pg_init(db, why, whylen);
}

static int pg_cursor(sync_db_t *db, uint32_t origin, uint64_t *applied)
{
    uint64_t count;
    return inbound_get((pg_db_t *)db, origin, applied, &count, false);
}

static int pg_set_acked(sync_db_t *db, uint32_t peer, uint64_t acked)
{
    pg_db_t *s = (pg_db_t *)db;
    const sync_conf_t *c = db->conf;
    buf_t b;
    buf_init(&b);
    buf_printf(&b,
               "INSERT INTO rep_peer(site, acked) VALUES(%u, %llu) ON CONFLICT (site) DO UPDATE "
               "SET acked = greatest(rep_peer.acked, excluded.acked);"
               "UPDATE rep_meta SET acked = coalesce((SELECT min(coalesce(p.acked, 0)) FROM "
               "(VALUES (0)",
               peer, (unsigned long long)acked);
    for (size_t i = 0; i < c->npeers; i++) {
        buf_printf(&b, ", (%u)", c->peers[i].id);
    }
    buf_printf(&b, ") q(site) LEFT JOIN rep_peer p ON p.site = q.site WHERE q.site != 0), 0);"
                   /* ticks before the slowest peer's position are never needed again */
                   "DELETE FROM rep_tick WHERE id < (SELECT acked >> 24 FROM rep_meta);");
    int rc = ex(s, cstr(&b));
    buf_deinit(&b);
    return rc;
}

static int pg_status(sync_db_t *db, sync_db_status_t *out)
{
    pg_db_t *s = (pg_db_t *)db;
    const sync_conf_t *c = db->conf;
    memset(out, 0, sizeof(*out));
    out->conflicts = (uint64_t)q_int(s, "SELECT count(*) FROM rep_conflict");
    out->quarantined =
        (uint64_t)q_int(s, "SELECT count(*) FROM rep_quarantine WHERE kind != 'future'");
    out->held = (uint64_t)q_int(s, "SELECT count(*) FROM rep_quarantine WHERE kind = 'future'");
    out->hlc = (uint64_t)q_int(s, "SELECT hlc FROM rep_meta");
    for (size_t i = 0; i < c->npeers && i < MS_ARRAY_LEN(out->peers); i++) {
        sync_peer_db_t *p = &out->peers[out->npeers++];
        char sql[512];
        p->peer = c->peers[i].id;
        snprintf(sql, sizeof(sql), "SELECT acked FROM rep_peer WHERE site = %u", p->peer);
        p->acked = (uint64_t)q_int(s, sql);
        uint64_t oldest = 0;
        for (size_t k = 0; k < s->nt; k++) {
            char w[256];
            snprintf(w, sizeof(w),
                     "xid IS NOT NULL AND (%llu = 0 OR NOT pg_visible_in_snapshot(xid, (SELECT "
                     "snap FROM rep_tick WHERE id = %llu)))",
                     (unsigned long long)p->acked, (unsigned long long)(p->acked >> 24));
            snprintf(sql, sizeof(sql), "SELECT count(*) FROM \"rep_c_%s\" WHERE %s", s->t[k].name,
                     w);
            p->backlog += (uint64_t)q_int(s, sql);
            snprintf(sql, sizeof(sql), "SELECT min(lh) FROM \"rep_c_%s\" WHERE %s", s->t[k].name,
                     w);
            uint64_t m = (uint64_t)q_int(s, sql);
            oldest = m && (!oldest || m < oldest) ? m : oldest;
        }
        p->oldest_ms = SYNC_HLC_WALL(oldest);
    }
    PGresult *r = q(s, "SELECT origin, applied_seq, applied FROM rep_inbound", 0, NULL);
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
    return 0;
}

static void pg_close(sync_db_t *db)
{
    pg_db_t *s = (pg_db_t *)db;
    if (!s) {
        return;
    }
    tables_free(s);
    PQfinish(s->pc);
    free(s);
}

static const sync_db_ops_t pg_ops = {
    .name = "postgresql",
    .init = pg_init,
    .attach = pg_attach,
    .changed = pg_changed,
    .read = pg_read,
    .apply = pg_apply,
    .retry = pg_retry,
    .cursor = pg_cursor,
    .set_acked = pg_set_acked,
    .status = pg_status,
    .close = pg_close,
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
