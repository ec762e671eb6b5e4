/* db_sqlite.c: the web app's SQLite backend.
 *
 * The database file is shared with the site's other web servers and with multisite-syncd,
 * each in its own process: WAL mode (readers never block the writer), and a busy timeout so a
 * writer waits for another instead of failing at once.
 *
 * A connection is reused only while the path still names the file it opened and we may still
 * read and write it: a file that was moved away, replaced or made unreadable must make the
 * pages fail (the database check's whole point), not be served from a stale descriptor. Note
 * that root passes every permission check, so `chmod 000` only breaks the database for a web
 * app that runs as an unprivileged user; the integration test covers both that and a file
 * that is moved away or replaced by garbage. */
#include "webapp/internal.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* How long a writer waits for another before giving up with "database is locked": longer than
 * any of our transactions (one statement) and than syncd's apply batches, short enough that a
 * health probe still gets an answer inside its timeout. */
#define SQ_BUSY_TIMEOUT_MS 2000

typedef struct {
    webapp_conn_t base;
    sqlite3 *db;
    char *path;
    dev_t dev;
    ino_t ino;
} sq_conn_t;

static void sq_close(webapp_conn_t *c)
{
    sq_conn_t *s = (sq_conn_t *)c;
    if (!s) {
        return;
    }
    sqlite3_close_v2(s->db);
    free(s->path);
    free(s);
}

static int sq_open(const char *target, bool create, webapp_conn_t **out, char *err, size_t errlen)
{
    /* Ask the file system first: SQLite's unix VFS reuses a descriptor it still holds for the
     * same file (one that another connection in this process closed while locks were held),
     * and such an open skips the permission check a fresh open(2) would make. */
    if (!create && access(target, R_OK | W_OK) != 0) {
        snprintf(err, errlen, "sqlite: cannot open the database file: %s", strerror(errno));
        return MS_EDB;
    }
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0);
    int rc = sqlite3_open_v2(target, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "sqlite: %s", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close_v2(db);
        return MS_EDB;
    }
    struct stat st;
    if (stat(target, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "sqlite: database file vanished after opening");
        sqlite3_close_v2(db);
        return MS_EDB;
    }
    sqlite3_busy_timeout(db, SQ_BUSY_TIMEOUT_MS);
    /* NORMAL in WAL mode: a commit is not synced until the next checkpoint, so a power cut can
     * lose the last visits but never corrupts the file; FULL costs an fsync per page view.
     * multisite-syncd runs its connections the same way. */
    sqlite3_exec(db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
    sq_conn_t *s = xcalloc(1, sizeof(*s));
    s->db = db;
    s->path = xstrdup(target);
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    *out = &s->base;
    return 0;
}

static bool sq_usable(webapp_conn_t *c)
{
    sq_conn_t *s = (sq_conn_t *)c;
    struct stat st;
    return stat(s->path, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino &&
           access(s->path, R_OK | W_OK) == 0;
}

static int sq_fail(sq_conn_t *s, char *err, size_t errlen)
{
    snprintf(err, errlen, "sqlite: %s", sqlite3_errmsg(s->db));
    return MS_EDB;
}

static int sq_query(webapp_conn_t *c, const char *sql, const char *const *params, int nparams,
                    webapp_rows_t *out, char *err, size_t errlen)
{
    sq_conn_t *s = (sq_conn_t *)c;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        return sq_fail(s, err, errlen);
    }
    for (int i = 0; i < nparams; i++) {
        if (sqlite3_bind_text(st, i + 1, params[i], -1, SQLITE_TRANSIENT) != SQLITE_OK) {
            sqlite3_finalize(st);
            return sq_fail(s, err, errlen);
        }
    }
    webapp_rows_t r = {0};
    size_t cap = 0;
    int rc;
    r.ncols = (size_t)sqlite3_column_count(st);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!out) {
            continue;
        }
        if ((r.nrows + 1) * r.ncols > cap) {
            cap = cap ? cap * 2 : r.ncols * 8;
            r.v = xrealloc(r.v, cap * sizeof(char *));
        }
        for (size_t i = 0; i < r.ncols; i++) {
            const unsigned char *t = sqlite3_column_text(st, (int)i);
            r.v[r.nrows * r.ncols + i] = t ? xstrdup((const char *)t) : NULL;
        }
        r.nrows++;
    }
    if (rc != SQLITE_DONE) {
        int e = sq_fail(s, err, errlen);
        sqlite3_finalize(st);
        webapp_rows_free(&r);
        return e;
    }
    sqlite3_finalize(st);
    if (out) {
        *out = r;
    }
    return 0;
}

static int sq_exec(webapp_conn_t *c, const char *script, char *err, size_t errlen)
{
    sq_conn_t *s = (sq_conn_t *)c;
    char *msg = NULL;
    if (sqlite3_exec(s->db, script, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "sqlite: %s", msg ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        return MS_EDB;
    }
    return 0;
}

const webapp_db_ops_t webapp_db_sqlite = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .usable = sq_usable,
    .query = sq_query,
    .exec = sq_exec,
    /* WAL must be set outside a transaction; it is persistent, so setting it once is enough. */
    .schema_pre = "PRAGMA journal_mode=WAL",
    /* IMMEDIATE: take the write lock first, so two web servers starting together do not both
     * read an empty schema and then collide. */
    .schema_begin = "BEGIN IMMEDIATE",
    .schema_end = "COMMIT",
    .identity_sql = "SELECT v FROM site_identity WHERE k = 'name'",
};
