/* db.c: the web app's database layer: one backend (SQLite or PostgreSQL), a small pool of idle
 * connections, the schema.
 *
 * Why a pool that re-checks, rather than one connection per thread or per request: the pages
 * run on libmicrohttpd's per-connection threads, which come and go, so per-thread connections
 * would leak with them; and opening per request costs a PostgreSQL backend fork each time.
 * Instead idle connections wait in a list (at most POOL_MAX_IDLE), are checked cheaply before
 * reuse (backend `usable`), and any connection that saw an error is closed, never returned.
 * A statement that fails on a reused connection that turns out stale is retried once on a
 * fresh one, and the other idle connections are dropped: after a PostgreSQL restart every
 * pooled connection is dead, and the first request after recovery must not fail for that. So
 * the web app recovers by itself when its database comes back. */
#include "webapp/internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Enough for a handful of concurrent page loads without reconnecting; more concurrent requests
 * open more connections and close the surplus when done. */
#define POOL_MAX_IDLE 8

struct webapp_db {
    const webapp_db_ops_t *ops;
    char *target;
    pthread_mutex_t mu;
    webapp_conn_t *idle; /* guarded by mu */
    unsigned nidle;      /* guarded by mu */
};

/* The tables. Portable SQL (SQLite and PostgreSQL both take it as is). Every table has a
 * primary key and every key is a random id or a name, so rows made at different sites never
 * collide when multisite-syncd replicates them. Counters are one row per site ("hits@SITE"):
 * only that site writes its row, so replication never has two sites incrementing the same row
 * (which a last-writer-wins merge would turn into lost increments). site_identity names this
 * database and must not be replicated. Every column that can be NOT NULL has a default, so a
 * replicated row applied column by column always satisfies the constraints. */
static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS site_identity(k TEXT PRIMARY KEY, v TEXT NOT NULL DEFAULT '');"
    "CREATE TABLE IF NOT EXISTS sessions(id TEXT PRIMARY KEY, data TEXT,"
    " visits BIGINT NOT NULL DEFAULT 0, created_ms BIGINT NOT NULL DEFAULT 0,"
    " updated_ms BIGINT NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS guestbook(id TEXT PRIMARY KEY, site TEXT NOT NULL DEFAULT '',"
    " web TEXT NOT NULL DEFAULT '', author TEXT NOT NULL DEFAULT '',"
    " message TEXT NOT NULL DEFAULT '', created_ms BIGINT NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS guestbook_created ON guestbook(created_ms);"
    "CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, site TEXT NOT NULL DEFAULT '',"
    " value BIGINT NOT NULL DEFAULT 0);";

void webapp_rows_free(webapp_rows_t *r)
{
    if (!r->v) {
        return;
    }
    for (size_t i = 0; i < r->nrows * r->ncols; i++) {
        free(r->v[i]);
    }
    free(r->v);
    r->v = NULL;
    r->nrows = r->ncols = 0;
}

int webapp_db_new(const char *spec, webapp_db_t **out, char *err, size_t errlen)
{
    const char *target;
    int kind = webapp_db_spec(spec, &target);
    if (kind < 0) {
        snprintf(err, errlen,
                 "bad database spec: expected sqlite:PATH, postgresql://... or a libpq "
                 "conninfo (key=value ...)");
        return MS_EINVAL;
    }
    webapp_db_t *db = xcalloc(1, sizeof(*db));
    db->ops = kind == WEBAPP_DB_SQLITE ? &webapp_db_sqlite : &webapp_db_pg;
    db->target = xstrdup(target);
    pthread_mutex_init(&db->mu, NULL);
    *out = db;
    return 0;
}

void webapp_db_free(webapp_db_t *db)
{
    if (!db) {
        return;
    }
    while (db->idle) {
        webapp_conn_t *c = db->idle;
        db->idle = c->next;
        db->ops->close(c);
    }
    pthread_mutex_destroy(&db->mu);
    free(db->target);
    free(db);
}

const char *webapp_db_kind(const webapp_db_t *db)
{
    return db->ops->name;
}

const char *webapp_db_identity_sql(const webapp_db_t *db)
{
    return db->ops->identity_sql;
}

static webapp_conn_t *pool_get(webapp_db_t *db)
{
    pthread_mutex_lock(&db->mu);
    webapp_conn_t *c = db->idle;
    if (c) {
        db->idle = c->next;
        db->nidle--;
    }
    pthread_mutex_unlock(&db->mu);
    return c;
}

static void pool_put(webapp_db_t *db, webapp_conn_t *c)
{
    pthread_mutex_lock(&db->mu);
    bool keep = db->nidle < POOL_MAX_IDLE;
    if (keep) {
        c->next = db->idle;
        db->idle = c;
        db->nidle++;
    }
    pthread_mutex_unlock(&db->mu);
    if (!keep) {
        db->ops->close(c);
    }
}

/* Close every idle connection: after one of them failed, the rest were most likely made before
 * the same event (a database restart) and would fail the same way, one request at a time. */
static void pool_drain(webapp_db_t *db)
{
    pthread_mutex_lock(&db->mu);
    webapp_conn_t *list = db->idle;
    db->idle = NULL;
    db->nidle = 0;
    pthread_mutex_unlock(&db->mu);
    while (list) {
        webapp_conn_t *next = list->next;
        db->ops->close(list);
        list = next;
    }
}

int webapp_db_query(webapp_db_t *db, const char *sql, const char *const *params, int nparams,
                    webapp_rows_t *out, char *err, size_t errlen)
{
    webapp_conn_t *c = pool_get(db);
    if (c && !db->ops->usable(c)) {
        db->ops->close(c);
        pool_drain(db);
        c = NULL;
    }
    if (c) {
        int rc = db->ops->query(c, sql, params, nparams, out, err, errlen);
        if (rc == 0) {
            pool_put(db, c);
            return 0;
        }
        /* Was it the connection (the database restarted, the file was replaced since it was
         * made)? Then retry once on a fresh one. Otherwise (a lock timeout, a constraint) the
         * failure is the database's answer: trying again would only double the wait. */
        bool stale = !db->ops->usable(c);
        db->ops->close(c);
        if (!stale) {
            return rc;
        }
        pool_drain(db);
    }
    int rc = db->ops->open(db->target, false, &c, err, errlen);
    if (rc != 0) {
        return rc;
    }
    rc = db->ops->query(c, sql, params, nparams, out, err, errlen);
    if (rc == 0) {
        pool_put(db, c);
    } else {
        db->ops->close(c);
    }
    return rc;
}

int webapp_db_init(webapp_db_t *db, const char *identity, const char *dflt, bool create, char *err,
                   size_t errlen)
{
    const webapp_db_ops_t *ops = db->ops;
    webapp_conn_t *c;
    int rc = ops->open(db->target, create, &c, err, errlen);
    if (rc != 0) {
        return rc;
    }
    /* Identity: an explicit one replaces what is stored; the default only fills a gap. */
    const char *set_sql =
        identity ? "INSERT INTO site_identity(k, v) VALUES ('name', ?)"
                   " ON CONFLICT(k) DO UPDATE SET v = excluded.v"
                 : "INSERT INTO site_identity(k, v) VALUES ('name', ?) ON CONFLICT(k) DO NOTHING";
    const char *param = identity ? identity : dflt;
    if ((ops->schema_pre && (rc = ops->exec(c, ops->schema_pre, err, errlen)) != 0) ||
        (rc = ops->exec(c, ops->schema_begin, err, errlen)) != 0 ||
        (rc = ops->exec(c, schema_sql, err, errlen)) != 0 ||
        (rc = ops->query(c, set_sql, &param, 1, NULL, err, errlen)) != 0 ||
        (rc = ops->exec(c, ops->schema_end, err, errlen)) != 0) {
        ops->close(c); /* closing rolls back what the failed transaction did */
        return rc;
    }
    pool_put(db, c);
    return 0;
}
