/* pg_capture.c: metadata tables, replicated table loading and the capture triggers of the
 * PostgreSQL backend (design: the comment at the top of pg.c, docs/sync.md §3-§4.2). */
#include "sync/pg_int.h"

static const char *meta_sql =
    "SET client_min_messages = warning;"
    "CREATE SEQUENCE IF NOT EXISTS rep_seq;"
    "CREATE TABLE IF NOT EXISTS rep_meta(id int PRIMARY KEY CHECK (id = 1), site int NOT NULL,"
    " hlc bigint NOT NULL, acked bigint NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS rep_table(name text PRIMARY KEY, pk text NOT NULL,"
    " cols text NOT NULL, fp bytea NOT NULL);"
    "CREATE TABLE IF NOT EXISTS rep_peer(site int PRIMARY KEY, acked bigint NOT NULL);"
    "ALTER TABLE rep_peer ADD COLUMN IF NOT EXISTS rejoin_ms bigint NOT NULL DEFAULT 0,"
    " ADD COLUMN IF NOT EXISTS rejoin_why text;"
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

/* date_part() is float8 arithmetic; extract() returns numeric since PostgreSQL 14, which
 * cost a measurable part of the capture trigger's time (this is the log's column default). A
 * float8 epoch still resolves well below a millisecond. */
#define HLC_PG "((date_part('epoch', clock_timestamp()) * 1000)::bigint << 16)"

typedef struct {
    char *name, *type;
    unsigned oid;
} colinfo_t;

static int cmp_col(const void *a, const void *b)
{
    return strcmp(((const colinfo_t *)a)->name, ((const colinfo_t *)b)->name);
}

static void cols_free(colinfo_t *c, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        free(c[i].name);
        free(c[i].type);
    }
}

/* Read T's columns: the primary key's in key order (the order of its PRIMARY KEY clause,
 * which is the wire's and SQLite's), then the others sorted by name. */
static int table_load(pg_db_t *s, const char *name, pg_table_t *t, char *why, size_t whylen)
{
    const char *p[1] = {name};
    /* indkey is an int2vector: as an array its subscripts start at 0 */
    PGresult *r = sync_pg_q(
        s,
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid,"
        " coalesce(array_position(i.indkey::int2[], a.attnum) - array_lower(i.indkey::int2[], 1)"
        " + 1, 0), coalesce(array_length(i.indkey::int2[], 1), 0)"
        " FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND"
        " i.indisprimary WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND"
        " NOT a.attisdropped ORDER BY a.attnum",
        1, p);
    if (!r) {
        snprintf(why, whylen, "reading columns of %s: %s", name, PQerrorMessage(s->pc));
        return MS_EDB;
    }
    int n = PQntuples(r);
    colinfo_t pk[SYNC_MAX_PK] = {0}, vals[SYNC_MAX_COLS];
    unsigned nv = 0, npk = n > 0 ? (unsigned)atoi(PQgetvalue(r, 0, 4)) : 0;
    int rc = 0;
    if (n == 0) {
        snprintf(why, whylen, "table %s does not exist", name);
        rc = MS_ENOENT;
    } else if (npk > SYNC_MAX_PK) {
        snprintf(why, whylen, "table %s: more than %d primary key columns", name, SYNC_MAX_PK);
        rc = MS_EINVAL;
    }
    for (int i = 0; rc == 0 && i < n; i++) {
        const char *cn = PQgetvalue(r, i, 0);
        if (!sync_ident_ok(cn, SYNC_MAX_NAME - 3)) {
            snprintf(why, whylen, "table %s: column name '%s' is not a plain identifier", name, cn);
            rc = MS_EINVAL;
            break;
        }
        unsigned kp = (unsigned)atoi(PQgetvalue(r, i, 3));
        if (kp == 0 && nv == SYNC_MAX_COLS) {
            snprintf(why, whylen, "table %s: more than %d non-key columns", name, SYNC_MAX_COLS);
            rc = MS_EINVAL;
            break;
        }
        colinfo_t ci = {xstrdup(cn), xstrdup(PQgetvalue(r, i, 1)),
                        (unsigned)strtoul(PQgetvalue(r, i, 2), NULL, 10)};
        if (kp > 0 && kp <= npk) {
            pk[kp - 1] = ci;
        } else {
            vals[nv++] = ci;
        }
    }
    PQclear(r);
    for (unsigned k = 0; rc == 0 && k < (npk ? npk : 1); k++) {
        if (!pk[k].name) {
            /* no primary key, or one on an expression (not possible today) */
            snprintf(why, whylen,
                     "table %s has no primary key: rows are replicated by primary key, so every "
                     "replicated table needs one (ALTER TABLE %s ADD PRIMARY KEY (...))",
                     name, name);
            rc = MS_EINVAL;
        }
    }
    if (rc != 0) {
        cols_free(pk, SYNC_MAX_PK);
        cols_free(vals, nv);
        return rc;
    }
    qsort(vals, nv, sizeof(colinfo_t), cmp_col);
    memset(t, 0, sizeof(*t));
    t->name = xstrdup(name);
    t->npk = npk;
    t->ncols = nv;
    t->cols = xcalloc(npk + nv, sizeof(char *));
    t->types = xcalloc(npk + nv, sizeof(char *));
    t->oids = xcalloc(npk + nv, sizeof(unsigned));
    for (unsigned i = 0; i < npk + nv; i++) {
        const colinfo_t *ci = i < npk ? &pk[i] : &vals[i - npk];
        t->cols[i] = ci->name;
        t->types[i] = ci->type;
        t->oids[i] = ci->oid;
    }
    t->w = (sync_wtable_t){t->name, npk, nv, t->cols};
    sync_fingerprint(&t->w, t->fp);
    return 0;
}

/* Value column c (0-based) of t. */
#define VCOL(t, c) ((t)->cols[(t)->npk + (c)])

/* "a" type NOT NULL, "b" type NOT NULL: the key columns of rep_c_T and rep_l_T. */
static void key_defs(buf_t *b, const pg_table_t *t)
{
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(b, "%s\"%s\" %s NOT NULL", k ? ", " : "", t->cols[k], t->types[k]);
    }
}

/* The change table rep_c_T (one row per row of T: its clock) and the capture log rep_l_T
 * (one row per captured change, folded into rep_c_T by the agent). */
static void gen_tables(buf_t *b, const pg_table_t *t)
{
    const char *T = t->name;
    buf_printf(b, "CREATE TABLE IF NOT EXISTS \"rep_c_%s\"(", T);
    key_defs(b, t);
    buf_printf(b,
               ", seq bigint NOT NULL, xid xid8, lh bigint NOT NULL, mask bigint NOT NULL, cl int "
               "NOT NULL, clh bigint NOT NULL, cls int NOT NULL, PRIMARY KEY (");
    sync_pg_key_list(b, t, "");
    buf_printf(
        b,
        "));"
        "CREATE INDEX IF NOT EXISTS \"rep_c_%s_xid\" ON \"rep_c_%s\"(xid) WHERE xid IS NOT "
        "NULL;"
        /* a window part is a seq range: read it by index, not by a scan of the window */
        "CREATE INDEX IF NOT EXISTS \"rep_c_%s_seq\" ON \"rep_c_%s\"(seq) WHERE xid IS NOT "
        "NULL;"
        "CREATE TABLE IF NOT EXISTS \"rep_l_%s\"(seq bigint NOT NULL DEFAULT nextval('rep_seq'), ",
        T, T, T, T, T);
    key_defs(b, t);
    buf_printf(b,
               ", op smallint NOT NULL, mask bigint NOT NULL, xid xid8 NOT NULL DEFAULT "
               "pg_current_xact_id(), h bigint NOT NULL DEFAULT " HLC_PG ");"
               /* init refreshes the default of a log created by an earlier version */
               "ALTER TABLE \"rep_l_%s\" ALTER COLUMN h SET DEFAULT " HLC_PG ";",
               T);
    for (unsigned c = 0; c < t->ncols; c++) {
        const char *n = VCOL(t, c);
        buf_printf(b,
                   "ALTER TABLE \"rep_c_%s\" ADD COLUMN IF NOT EXISTS \"v_%s\" bigint, ADD COLUMN "
                   "IF NOT EXISTS \"s_%s\" int, ADD COLUMN IF NOT EXISTS \"b_%s\" bigint, ADD "
                   "COLUMN IF NOT EXISTS \"bs_%s\" int;",
                   T, n, n, n, n);
    }
}

/* INSERT INTO "rep_l_T"(keys, op, mask) VALUES (<rec>.keys, op, mask); */
static void trig_log(buf_t *b, const pg_table_t *t, const char *rec, int op, const char *mask)
{
    buf_printf(b, "INSERT INTO \"rep_l_%s\"(", t->name);
    sync_pg_key_list(b, t, "");
    buf_printf(b, ", op, mask) VALUES (");
    sync_pg_key_list(b, t, rec);
    buf_printf(b, ", %d, %s);", op, mask);
}

/* The capture trigger: one appended log row per change (op 1 insert, 2 update, 3 delete; the
 * mask of changed columns). Position, xid and HLC are the log's column defaults. No read of
 * any other row and no upsert: the write path pays one small insert, as Bucardo's does.
 * The agent's own writes (rep.applying on) are skipped inside the function, not by a WHEN
 * clause: PostgreSQL compiles a trigger's WHEN anew for every statement (from its stored
 * form, when the statement's result relation is set up), which cost about a tenth of a
 * single-row autocommit insert here; the function's test is planned once per session. */
static void gen_trigger(buf_t *b, const pg_table_t *t)
{
    const char *T = t->name;
    uint64_t all = t->ncols >= 64 ? ~0ull : ((1ull << t->ncols) - 1);
    char allm[24];
    snprintf(allm, sizeof(allm), "%lld", (long long)all);
    buf_printf(b,
               "CREATE OR REPLACE FUNCTION \"rep_trg_%s\"() RETURNS trigger LANGUAGE plpgsql AS "
               "$rep$\nDECLARE m bigint;\nBEGIN\n IF current_setting('rep.applying', true) = "
               "'on' THEN RETURN NULL; END IF;\n IF TG_OP = 'INSERT' THEN\n  ",
               T);
    trig_log(b, t, "NEW.", 1, allm);
    buf_printf(b, "\n ELSIF TG_OP = 'DELETE' THEN\n  ");
    trig_log(b, t, "OLD.", 3, "0");
    buf_printf(b, "\n ELSE\n  IF ");
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(b, "%sOLD.\"%s\" IS DISTINCT FROM NEW.\"%s\"", k ? " OR " : "", t->cols[k],
                   t->cols[k]);
    }
    buf_printf(b, " THEN RAISE EXCEPTION 'multisite-syncd: primary key updates are not "
                  "replicated; delete the row and insert it under the new key'; END IF;\n  m := 0");
    for (unsigned c = 0; c < t->ncols; c++) {
        buf_printf(b, " | (CASE WHEN OLD.\"%s\" IS DISTINCT FROM NEW.\"%s\" THEN %lld ELSE 0 END)",
                   VCOL(t, c), VCOL(t, c), (long long)(1ull << c));
    }
    buf_printf(b, ";\n  IF m <> 0 THEN ");
    trig_log(b, t, "NEW.", 2, "m");
    buf_printf(b,
               " END IF;\n END IF;\n RETURN NULL;\nEND\n$rep$;"
               "DROP TRIGGER IF EXISTS \"rep_t_%s\" ON \"%s\";"
               "CREATE TRIGGER \"rep_t_%s\" AFTER INSERT OR UPDATE OR DELETE ON \"%s\" FOR EACH "
               "ROW EXECUTE FUNCTION \"rep_trg_%s\"();",
               T, T, T, T, T);
}

/* One fold upsert of rep_c_T from log rows named `a` (columns seq, key, op, mask, xid, h):
 * `from` is "" when `a` is the loop variable, or a FROM clause giving `a` one row per key.
 * `op` is how the upsert's conflict branch knows the kind of change (1 insert, 2 update; 3
 * delete has its own statement). */
static void gen_upsert(buf_t *b, const pg_table_t *t, const char *a, const char *op,
                       const char *from)
{
    const char *T = t->name;
    char ap[16];
    snprintf(ap, sizeof(ap), "%s.", a);
    buf_printf(b, "INSERT INTO \"rep_c_%s\" AS c (", T);
    sync_pg_key_list(b, t, "");
    buf_printf(b, ", seq, xid, lh, mask, cl, clh, cls");
    if (strcmp(op, "3") == 0) {
        buf_printf(b, ") SELECT ");
        sync_pg_key_list(b, t, ap);
        buf_printf(b, ", %s.seq, %s.xid, %s.h, 0, 2, %s.h, me%s ON CONFLICT (", a, a, a, a, from);
        sync_pg_key_list(b, t, "");
        buf_printf(b, ") DO UPDATE SET seq = excluded.seq, xid = excluded.xid, lh = excluded.lh, "
                      "mask = 0, cl = c.cl + (c.cl %% 2), clh = greatest(excluded.clh, c.clh + "
                      "1), cls = excluded.cls;\n");
        return;
    }
    for (unsigned c = 0; c < t->ncols; c++) {
        buf_printf(b, ", \"v_%s\", \"s_%s\"", VCOL(t, c), VCOL(t, c));
    }
    buf_printf(b, ") SELECT ");
    sync_pg_key_list(b, t, ap);
    buf_printf(b, ", %s.seq, %s.xid, %s.h, %s.mask, 1, %s.h, me", a, a, a, a, a);
    for (unsigned c = 0; c < t->ncols; c++) {
        long long bit = (long long)(1ull << c);
        buf_printf(b,
                   ", CASE WHEN %s.mask & %lld <> 0 THEN %s.h END, CASE WHEN %s.mask & %lld <> 0 "
                   "THEN me END",
                   a, bit, a, a, bit);
    }
    buf_printf(b, "%s ON CONFLICT (", from);
    sync_pg_key_list(b, t, "");
    buf_printf(b,
               ") DO UPDATE SET seq = excluded.seq, xid = excluded.xid, lh = excluded.lh, mask = "
               "CASE WHEN c.xid = excluded.xid THEN c.mask | excluded.mask ELSE excluded.mask "
               "END, cl = CASE WHEN %s = 1 THEN c.cl + 1 - (c.cl %% 2) ELSE c.cl END, clh = CASE "
               "WHEN %s = 1 THEN greatest(excluded.clh, c.clh + 1) ELSE c.clh END, cls = CASE "
               "WHEN %s = 1 THEN excluded.cls ELSE c.cls END",
               op, op, op);
    for (unsigned c = 0; c < t->ncols; c++) {
        const char *n = VCOL(t, c);
        buf_printf(
            b,
            ", \"b_%s\" = CASE WHEN excluded.\"v_%s\" IS NULL OR c.\"s_%s\" = me THEN "
            "c.\"b_%s\" ELSE c.\"v_%s\" END, \"bs_%s\" = CASE WHEN excluded.\"v_%s\" IS "
            "NULL OR c.\"s_%s\" = me THEN c.\"bs_%s\" ELSE c.\"s_%s\" END, \"v_%s\" = CASE "
            "WHEN excluded.\"v_%s\" IS NULL THEN c.\"v_%s\" ELSE greatest(excluded.\"v_%s\", "
            "c.\"v_%s\" + 1) END, \"s_%s\" = coalesce(excluded.\"s_%s\", c.\"s_%s\")",
            n, n, n, n, n, n, n, n, n, n, n, n, n, n, n, n, n, n);
    }
    buf_printf(b, ";\n");
}

/* The name of the fold function's parameter for key column k: the first is "k", as it was
 * when keys had one column (CREATE OR REPLACE cannot rename a parameter). */
static void fold_param(buf_t *b, unsigned k, const char *sep)
{
    buf_printf(b, k ? "%sk%u" : "%sk", sep, k);
}

/* rep_fold_T(k, k1, .., k<npk-1>): move the log rows of those keys (one array per key column,
 * element i of each naming key i; all rows when NULL) into rep_c_T, in position order,
 * atomically (the rows deleted are exactly the rows folded). Per change: the position and
 * xid become the row's, the causal length steps, and each changed column gets version
 * max(h, previous + 1) by this site with the overwritten version as its base. The mask
 * accumulates within one transaction and restarts with the next. Keys changed once (most of
 * them) are folded by one set-based statement, the others one change at a time in order. */
static void gen_fold(buf_t *b, const pg_table_t *t, uint32_t site)
{
    const char *T = t->name;
    buf_printf(b, "CREATE OR REPLACE FUNCTION \"rep_fold_%s\"(", T);
    for (unsigned k = 0; k < t->npk; k++) {
        fold_param(b, k, k ? ", " : "");
        buf_printf(b, " %s[]", t->types[k]);
    }
    buf_printf(b,
               ") RETURNS int LANGUAGE plpgsql AS $rep$\n#variable_conflict use_variable\nDECLARE "
               "r \"rep_l_%s\"; rs \"rep_l_%s\"[]; total int; me int := %u;\nBEGIN\n WITH d AS "
               "(DELETE FROM \"rep_l_%s\" l WHERE k IS NULL OR ",
               T, T, site, T);
    if (t->npk == 1) {
        buf_printf(b, "l.\"%s\" = ANY(k)", t->cols[0]);
    } else {
        /* a composite key: the log has no index, a semi-join over the key arrays */
        buf_printf(b, "(");
        sync_pg_key_list(b, t, "l.");
        buf_printf(b, ") IN (SELECT * FROM unnest(");
        for (unsigned k = 0; k < t->npk; k++) {
            fold_param(b, k, k ? ", " : "");
        }
        buf_printf(b, "))");
    }
    buf_printf(b, " RETURNING l.*), q AS (SELECT d.*, count(*) OVER (PARTITION BY ");
    sync_pg_key_list(b, t, "d.");
    buf_printf(b, ") AS n FROM d)");
    /* keys changed once: one data-modifying CTE per kind of change (they touch different
     * keys); the others come back in position order */
    for (int op = 1; op <= 3; op++) {
        char from[96], ops[16];
        snprintf(from, sizeof(from), " FROM q WHERE q.n = 1 AND q.op = %d", op);
        snprintf(ops, sizeof(ops), "%d", op);
        buf_printf(b, ", f%d AS (", op);
        gen_upsert(b, t, "q", ops, from);
        b->len -= 2; /* the statement's ";\n" */
        buf_printf(b, ")");
    }
    buf_printf(b, " SELECT array_agg(ROW(q.seq, ");
    sync_pg_key_list(b, t, "q.");
    buf_printf(b,
               ", q.op, q.mask, q.xid, q.h)::\"rep_l_%s\" ORDER BY q.seq) FILTER (WHERE q.n > 1), "
               "count(*) INTO rs, total FROM q;\n FOREACH r IN ARRAY coalesce(rs, '{}') LOOP\n  "
               "IF r.op = 3 THEN\n",
               T);
    gen_upsert(b, t, "r", "3", "");
    buf_printf(b, "  ELSE\n");
    gen_upsert(b, t, "r", "r.op", "");
    buf_printf(b, "  END IF;\n END LOOP;\n RETURN total;\nEND\n$rep$;");
}

static void gen_capture(buf_t *b, const pg_table_t *t, uint32_t site)
{
    const char *T = t->name;
    uint64_t all = t->ncols >= 64 ? ~0ull : ((1ull << t->ncols) - 1);
    gen_tables(b, t);
    gen_trigger(b, t);
    gen_fold(b, t, site);
    /* Rows that existed before capture: one clock row each, sent like any change. */
    buf_printf(b, "INSERT INTO \"rep_c_%s\"(", T);
    sync_pg_key_list(b, t, "");
    buf_printf(b, ", seq, xid, lh, mask, cl, clh, cls");
    for (unsigned c = 0; c < t->ncols; c++) {
        buf_printf(b, ", \"v_%s\", \"s_%s\"", VCOL(t, c), VCOL(t, c));
    }
    buf_printf(b, ") SELECT ");
    sync_pg_key_list(b, t, "t.");
    buf_printf(b, ", nextval('rep_seq'), pg_current_xact_id(), m.h, %lld, 1, m.h, m.site",
               (long long)all);
    for (unsigned c = 0; c < t->ncols; c++) {
        buf_printf(b, ", m.h, m.site");
    }
    buf_printf(b,
               " FROM \"%s\" t, (SELECT greatest(" HLC_PG
               ", hlc + 1) AS h, site FROM rep_meta) m WHERE NOT EXISTS (SELECT 1 FROM "
               "\"rep_c_%s\" c WHERE ",
               T, T);
    sync_pg_key_eq(b, t, "c.", "t.", false);
    buf_printf(b, ");");
}

/* "rep_fold_T"(NULL, ...): every key. */
static void fold_all_call(buf_t *b, const pg_table_t *t)
{
    buf_printf(b, "\"rep_fold_%s\"(NULL", t->name);
    for (unsigned k = 1; k < t->npk; k++) {
        buf_printf(b, ", NULL");
    }
    buf_printf(b, ")");
}

/* rep_table's pk: the key column names in key order, comma-separated. */
static void key_names(buf_t *b, const pg_table_t *t)
{
    for (unsigned k = 0; k < t->npk; k++) {
        buf_printf(b, "%s%s", k ? "," : "", t->cols[k]);
    }
}

/* Capture installed for another primary key would keep the old key's change table and an
 * overload of the fold function: refuse instead. */
static int key_unchanged(pg_db_t *s, const pg_table_t *t, char *why, size_t whylen)
{
    const char *p[1] = {t->name};
    PGresult *r = sync_pg_q(s, "SELECT pk FROM rep_table WHERE name = $1", 1, p);
    if (!r) {
        snprintf(why, whylen, "reading rep_table: %s", PQerrorMessage(s->pc));
        return MS_EDB;
    }
    buf_t now;
    buf_init(&now);
    key_names(&now, t);
    int rc = 0;
    if (PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), sync_pg_cstr(&now)) != 0) {
        snprintf(why, whylen,
                 "table %s: its primary key was (%s) when capture was installed and is (%s) now; "
                 "changing the primary key of a replicated table is not supported",
                 t->name, PQgetvalue(r, 0, 0), sync_pg_cstr(&now));
        rc = MS_EINVAL;
    }
    PQclear(r);
    buf_deinit(&now);
    return rc;
}

/* Fold what the installed capture logged before replacing it: the log's masks are in the
 * column order of the function that folds them. */
static int fold_old(pg_db_t *s, const pg_table_t *t, char *why, size_t whylen)
{
    char sql[200];
    /* as a number: sync_pg_q_int() reads a boolean 't' as 0 */
    snprintf(sql, sizeof(sql), "SELECT (to_regproc('\"rep_fold_%s\"') IS NOT NULL)::int", t->name);
    if (sync_pg_q_int(s, sql) == 0) {
        return 0;
    }
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "SELECT ");
    fold_all_call(&b, t);
    int rc = sync_pg_ex(s, sync_pg_cstr(&b));
    buf_deinit(&b);
    if (rc != 0) {
        snprintf(why, whylen, "folding the capture log of %s: %s", t->name, PQerrorMessage(s->pc));
        return MS_EDB;
    }
    return 0;
}

int sync_pg_fold(pg_db_t *s, const char *prefix)
{
    if (!s->fold_sql.len) {
        buf_printf(&s->fold_sql, "SELECT 0");
        for (size_t i = 0; i < s->nt; i++) {
            buf_printf(&s->fold_sql, " + ");
            fold_all_call(&s->fold_sql, &s->t[i]);
        }
    }
    buf_t sql;
    buf_init(&sql);
    buf_printf(&sql, "%s%s", prefix ? prefix : "", sync_pg_cstr(&s->fold_sql));
    int64_t n = -1;
    PGresult *r = sync_pg_q(s, sync_pg_cstr(&sql), 0, NULL);
    if (r && PQntuples(r) == 1) {
        n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    }
    PQclear(r);
    buf_deinit(&sql);
    if (n < 0) {
        log_err("postgresql: folding the capture logs: %s", PQerrorMessage(s->pc));
        return MS_EDB;
    }
    s->dirty = s->dirty || n > 0;
    return n > INT32_MAX ? INT32_MAX : (int)n;
}

void sync_pg_log_pending(pg_db_t *s, size_t k, uint64_t *rows, uint64_t *oldest_hlc)
{
    const pg_table_t *t = &s->t[k];
    buf_t sql;
    buf_init(&sql);
    /* a composite key counts as one row value: count(DISTINCT (a, b)) */
    buf_printf(&sql, "SELECT count(DISTINCT %s", t->npk > 1 ? "(" : "");
    sync_pg_key_list(&sql, t, "");
    buf_printf(&sql, "%s), min(h) FROM \"rep_l_%s\"", t->npk > 1 ? ")" : "", t->name);
    PGresult *r = sync_pg_q(s, sync_pg_cstr(&sql), 0, NULL);
    buf_deinit(&sql);
    *rows = *oldest_hlc = 0;
    if (r && PQntuples(r) == 1) {
        *rows = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        *oldest_hlc = PQgetisnull(r, 0, 1) ? 0 : strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    }
    PQclear(r);
}

int sync_pg_init(sync_db_t *db, char *why, size_t whylen)
{
    pg_db_t *s = (pg_db_t *)db;
    const sync_conf_t *c = db->conf;
    sync_pg_tables_free(s);
    buf_reset(&s->fold_sql);
    if (sync_pg_ex(s, "BEGIN") != 0) {
        snprintf(why, whylen, "cannot start the init transaction: %s", PQerrorMessage(s->pc));
        return MS_EDB;
    }
    int rc = sync_pg_ex(s, meta_sql);
    if (rc == 0) {
        char sql[160];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO rep_meta(id, site, hlc) VALUES(1, %u, 0) ON CONFLICT DO NOTHING",
                 c->site_id);
        rc = sync_pg_ex(s, sql);
    }
    if (rc == 0) {
        s->site = (uint32_t)sync_pg_q_int(s, "SELECT site FROM rep_meta");
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
        rc = key_unchanged(s, &s->t[i], why, whylen);
        rc = rc == 0 ? fold_old(s, &s->t[i], why, whylen) : rc;
        if (rc != 0) {
            break;
        }
        buf_t b;
        buf_init(&b);
        gen_capture(&b, &s->t[i], s->site);
        PGresult *r = sync_pg_q(s, sync_pg_cstr(&b), 0, NULL);
        if (!r) {
            snprintf(why, whylen, "installing capture on %s: %s", s->t[i].name,
                     PQerrorMessage(s->pc));
            rc = MS_EDB;
        }
        PQclear(r);
        if (rc == 0) {
            buf_t cols, keys;
            buf_init(&cols);
            buf_init(&keys);
            key_names(&keys, &s->t[i]);
            for (unsigned k = 0; k < s->t[i].ncols; k++) {
                buf_printf(&cols, "%s%s", k ? "," : "", VCOL(&s->t[i], k));
            }
            char fp[33];
            for (int k = 0; k < 16; k++) {
                snprintf(fp + 2 * k, 3, "%02x", s->t[i].fp[k]);
            }
            const char *p[4] = {s->t[i].name, sync_pg_cstr(&keys),
                                cols.len ? sync_pg_cstr(&cols) : "", fp};
            r = sync_pg_q(s,
                          "INSERT INTO rep_table(name, pk, cols, fp) VALUES($1, $2, $3, decode($4, "
                          "'hex')) ON CONFLICT (name) DO UPDATE SET pk = excluded.pk, cols = "
                          "excluded.cols, fp = excluded.fp",
                          4, p);
            rc = r ? 0 : MS_EDB;
            PQclear(r);
            buf_deinit(&cols);
            buf_deinit(&keys);
        }
        buf_deinit(&b);
    }
    if (rc != 0) {
        if (!why[0]) {
            snprintf(why, whylen, "init failed: %s", PQerrorMessage(s->pc));
        }
        PQclear(PQexec(s->pc, "ROLLBACK"));
        sync_pg_tables_free(s);
        return rc;
    }
    if (sync_pg_ex(s, "COMMIT") != 0) {
        snprintf(why, whylen, "commit of init: %s", PQerrorMessage(s->pc));
        sync_pg_tables_free(s);
        return MS_EDB;
    }
    return 0;
}

int sync_pg_attach(sync_db_t *db, char *why, size_t whylen)
{
    return sync_pg_init(db, why, whylen);
}
