/* internal.h: the webapp module's private interface between its files: the database layer
 * (db.c, with the SQLite and PostgreSQL backends in db_sqlite.c and db_pg.c) and the pages
 * (http.c). */
#ifndef MS_WEBAPP_INTERNAL_H
#define MS_WEBAPP_INTERNAL_H

#include "webapp/webapp.h"

/* Bounds on what one request can make us hold or store. */
#define WEBAPP_MAX_BODY       (64 * 1024) /* request body, bytes */
#define WEBAPP_MAX_AUTHOR     64          /* guestbook author, bytes of UTF-8 */
#define WEBAPP_MAX_MESSAGE    2000        /* guestbook message */
#define WEBAPP_GUESTBOOK_SHOW 50          /* entries listed, newest first */
#define WEBAPP_ERRLEN         256

/* A query result: every value as text (NULL for SQL NULL), row-major. */
typedef struct {
    size_t nrows, ncols;
    char **v;
} webapp_rows_t;
void webapp_rows_free(webapp_rows_t *r);
static inline const char *webapp_rows_get(const webapp_rows_t *r, size_t row, size_t col)
{
    return row < r->nrows && col < r->ncols ? r->v[row * r->ncols + col] : NULL;
}

/* One backend connection; the backend's own struct starts with this. */
typedef struct webapp_conn {
    struct webapp_conn *next; /* pool free list */
} webapp_conn_t;

/* A backend. SQL is written once with '?' placeholders and no '?' anywhere else; the PG
 * backend turns them into $1, $2, ... Every function fills err (one line) on failure. */
typedef struct {
    const char *name; /* "sqlite" or "postgresql" */
    /* create: allowed to create the database (init only; requests never create a file). */
    int (*open)(const char *target, bool create, webapp_conn_t **out, char *err, size_t errlen);
    void (*close)(webapp_conn_t *c);
    /* Still worth reusing: cheap local checks only (SQLite: the file at the path is still the
     * one we opened and we may still read and write it; PG: the connection is not broken).
     * Also asked after a failure, to tell a stale connection from a database's refusal. */
    bool (*usable)(webapp_conn_t *c);
    /* out may be NULL (rows discarded); on failure *out is left untouched. */
    int (*query)(webapp_conn_t *c, const char *sql, const char *const *params, int nparams,
                 webapp_rows_t *out, char *err, size_t errlen);
    /* Run a ';'-separated script without parameters or results. */
    int (*exec)(webapp_conn_t *c, const char *script, char *err, size_t errlen);
    const char *schema_pre;                /* run first, outside the transaction (or NULL) */
    const char *schema_begin, *schema_end; /* wrap the schema script (locks, transaction) */
    const char *identity_sql;              /* one row, one column: the database's name */
} webapp_db_ops_t;

extern const webapp_db_ops_t webapp_db_sqlite;
extern const webapp_db_ops_t webapp_db_pg;

/* The database: a backend, its target, and a pool of idle connections. Thread-safe. */
typedef struct webapp_db webapp_db_t;
int webapp_db_new(const char *spec, webapp_db_t **out, char *err, size_t errlen) MS_WUR;
void webapp_db_free(webapp_db_t *db);
const char *webapp_db_kind(const webapp_db_t *db);
/* The backend's query for the database's name (one row, one column). */
const char *webapp_db_identity_sql(const webapp_db_t *db);

/* Run one statement (out may be NULL). When a pooled connection fails because it went stale
 * (backend `usable` says so after the failure: the server restarted, the file was replaced),
 * every idle connection is closed and the statement retried once on a fresh connection; every
 * statement we run is idempotent or harmless to repeat (the one exception, a visit counted
 * twice, needs the commit's reply to be lost). Any other failure is returned as is. */
int webapp_db_query(webapp_db_t *db, const char *sql, const char *const *params, int nparams,
                    webapp_rows_t *out, char *err, size_t errlen) MS_WUR;

/* Create the tables if missing and set the identity row: to `identity` when not NULL, else to
 * dflt unless one is stored already. create: may create the database (SQLite file); only
 * start-up and --init pass true, so that a request never conjures up an empty database where
 * the real one went missing. */
int webapp_db_init(webapp_db_t *db, const char *identity, const char *dflt, bool create, char *err,
                   size_t errlen) MS_WUR;

#endif
