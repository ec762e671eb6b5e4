/* db_pg.c: the web app's PostgreSQL backend (libpq, blocking calls on the request's thread).
 *
 * Connection failures must surface quickly and as text a person can act on: connect_timeout
 * bounds a connect to an address that does not answer (the libpq default is to wait forever),
 * tcp_user_timeout a server that stops acknowledging mid-query, statement_timeout a query
 * stuck behind a lock. A conninfo may override each. Not bounded: a server host that still
 * acknowledges but never answers (a stopped postmaster process); the request then waits for
 * statement_timeout's server-side cancel or for the client to give up. */
#include "webapp/internal.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

#define PG_CONNECT_TIMEOUT_S    "3"
#define PG_STATEMENT_TIMEOUT_MS "5000"
/* Sent data left unacknowledged this long (a server host gone, a network cut) breaks the
 * connection instead of blocking the request until TCP gives up many minutes later. */
#define PG_TCP_USER_TIMEOUT_MS "5000"

typedef struct {
    webapp_conn_t base;
    PGconn *pg;
} pg_conn_t;

/* libpq messages end in a newline and may span lines; pages and logs want one line. */
static void one_line(char *err, size_t errlen, const char *prefix, const char *msg)
{
    snprintf(err, errlen, "%s%s", prefix, msg && *msg ? msg : "unknown error");
    for (char *p = err; *p; p++) {
        if (*p == '\n' || *p == '\r' || *p == '\t') {
            *p = ' ';
        }
    }
    size_t n = strlen(err);
    while (n > 0 && err[n - 1] == ' ') {
        err[--n] = '\0';
    }
}

/* CREATE TABLE IF NOT EXISTS on an existing table is a NOTICE: not worth a line on stderr. */
static void quiet_notice(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static void pgc_close(webapp_conn_t *c)
{
    pg_conn_t *p = (pg_conn_t *)c;
    if (!p) {
        return;
    }
    PQfinish(p->pg);
    free(p);
}

static int pgc_open(const char *target, bool create, webapp_conn_t **out, char *err, size_t errlen)
{
    (void)create; /* a PostgreSQL database is created by its administrator, not by us */
    /* With expand_dbname, the keywords before dbname are defaults that the conninfo can
     * override; options sets statement_timeout for the session in the startup packet. */
    const char *const keys[] = {"connect_timeout", "tcp_user_timeout", "application_name",
                                "options",         "dbname",           NULL};
    const char *const vals[] = {PG_CONNECT_TIMEOUT_S,
                                PG_TCP_USER_TIMEOUT_MS,
                                "multisite-webapp",
                                "-c statement_timeout=" PG_STATEMENT_TIMEOUT_MS,
                                target,
                                NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (!pg) {
        snprintf(err, errlen, "postgresql: out of memory");
        return MS_ENOMEM;
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        one_line(err, errlen, "postgresql: ", PQerrorMessage(pg));
        PQfinish(pg);
        return MS_EDB;
    }
    PQsetNoticeProcessor(pg, quiet_notice, NULL);
    pg_conn_t *p = xcalloc(1, sizeof(*p));
    p->pg = pg;
    *out = &p->base;
    return 0;
}

static bool pgc_usable(webapp_conn_t *c)
{
    return PQstatus(((pg_conn_t *)c)->pg) == CONNECTION_OK;
}

/* "... = ? AND ... = ?" -> "... = $1 AND ... = $2". Our SQL has no '?' in literals. */
static char *pg_placeholders(const char *sql)
{
    buf_t b;
    buf_init(&b);
    int n = 0;
    for (const char *p = sql; *p; p++) {
        if (*p == '?') {
            buf_printf(&b, "$%d", ++n);
        } else {
            buf_append(&b, p, 1);
        }
    }
    buf_append(&b, "", 1);
    return (char *)b.data;
}

static int pgc_query(webapp_conn_t *c, const char *sql, const char *const *params, int nparams,
                     webapp_rows_t *out, char *err, size_t errlen)
{
    pg_conn_t *p = (pg_conn_t *)c;
    char *q = pg_placeholders(sql);
    PGresult *res = PQexecParams(p->pg, q, nparams, NULL, params, NULL, NULL, 0);
    free(q);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        one_line(err, errlen,
                 "postgresql: ", res ? PQresultErrorMessage(res) : PQerrorMessage(p->pg));
        PQclear(res);
        return MS_EDB;
    }
    if (out) {
        webapp_rows_t r = {0};
        r.nrows = (size_t)PQntuples(res);
        r.ncols = (size_t)PQnfields(res);
        if (r.nrows * r.ncols > 0) {
            r.v = xcalloc(r.nrows * r.ncols, sizeof(char *));
        }
        for (size_t i = 0; i < r.nrows; i++) {
            for (size_t j = 0; j < r.ncols; j++) {
                if (!PQgetisnull(res, (int)i, (int)j)) {
                    r.v[i * r.ncols + j] = xstrdup(PQgetvalue(res, (int)i, (int)j));
                }
            }
        }
        *out = r;
    }
    PQclear(res);
    return 0;
}

static int pgc_exec(webapp_conn_t *c, const char *script, char *err, size_t errlen)
{
    pg_conn_t *p = (pg_conn_t *)c;
    PGresult *res = PQexec(p->pg, script);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        one_line(err, errlen,
                 "postgresql: ", res ? PQresultErrorMessage(res) : PQerrorMessage(p->pg));
        PQclear(res);
        return MS_EDB;
    }
    PQclear(res);
    return 0;
}

const webapp_db_ops_t webapp_db_pg = {
    .name = "postgresql",
    .open = pgc_open,
    .close = pgc_close,
    .usable = pgc_usable,
    .query = pgc_query,
    .exec = pgc_exec,
    .schema_pre = NULL,
    /* CREATE TABLE IF NOT EXISTS is not safe against a concurrent twin in PostgreSQL (both can
     * pass the check, one then fails on the catalog's unique index): serialise schema setup
     * across web servers with a transaction-scoped advisory lock (key: "mswa" in ASCII). */
    .schema_begin = "BEGIN; SELECT pg_advisory_xact_lock(1836283745)",
    .schema_end = "COMMIT",
    /* The configured identity row, or the address the server answered on (NULL over a unix
     * socket: then the page reports the identity as missing). */
    .identity_sql = "SELECT coalesce((SELECT v FROM site_identity WHERE k = 'name'),"
                    " host(inet_server_addr()))",
};
