/* webapp.h: the webapp module's interface: the demo web application (feature M12), a small
 * stateless web service that keeps every piece of state in its site's database.
 *
 * Stateless means: a web server holds nothing between requests that another web server on the
 * same database could not reproduce. Sessions (cookie `msid`), their visit counters, the
 * guestbook and the hit counters all live in the database, SQLite or PostgreSQL, in tables
 * whose primary keys are random hex ids (never autoincrement), so that multisite-syncd can
 * replicate them between sites without key collisions. The one table that must NOT be
 * replicated is site_identity: it names the database itself, and the database check page
 * (GET /db) prints that name so that a health probe can tell "this site's database answered"
 * from "some database answered".
 *
 * Pages: GET / (HTML), GET /session (JSON), POST /guestbook (form or JSON), GET
 * /guestbook.json, GET /health (web tier only, no database), GET /db (runs a query on every
 * request; 503 "database unavailable: <reason>" without the identity when it cannot).
 * Every response carries `X-Served-By: <site>/<web>`.
 *
 * Threads: libmicrohttpd runs one thread per connection; database connections come from a
 * small pool (src/webapp/db.c) and are checked before reuse, so a database that goes away
 * and comes back is picked up again without a restart. */
#ifndef MS_WEBAPP_H
#define MS_WEBAPP_H

#include "util/util.h"

typedef struct {
    const char *listen;      /* "ADDR:PORT" (util net_parse_addr forms) */
    const char *db;          /* "sqlite:PATH", "postgresql://..." or a libpq "key=value" string */
    const char *name;        /* this web server's name */
    const char *site;        /* this site's name */
    const char *db_identity; /* identity written at init; NULL: keep the stored one, or set
                              * "db-<site>" when there is none */
} webapp_conf_t;

typedef struct webapp webapp_t;

/* Create the tables if missing and set the identity row. Returns 0 or an error code with the
 * reason in err. Safe to run while other web servers use the same database. */
int webapp_init_db(const webapp_conf_t *c, char *err, size_t errlen) MS_WUR;

/* Start serving on c->listen (its strings are copied). A database that cannot be reached at
 * start is not an error: pages that need it answer 503 until it can be reached, and the
 * tables are created then. Returns 0 or an error code with the reason in err. */
int webapp_start(const webapp_conf_t *c, webapp_t **out, char *err, size_t errlen) MS_WUR;
/* The bound port (useful with port 0). */
uint16_t webapp_port(const webapp_t *w);
/* Stop serving, wait for the connection threads, free everything. Accepts NULL. */
void webapp_stop(webapp_t *w);

/* ---- pure helpers, exposed for the unit tests ---- */

/* Append s[0..len) HTML-escaped (& < > " ' and every control character but \n and \t); bytes that
 * are not valid UTF-8 become U+FFFD, so the page is always valid UTF-8. */
void webapp_html_escape(buf_t *out, const char *s, size_t len);
/* The same for text/plain: only invalid UTF-8 and control bytes are replaced. */
void webapp_text_clean(buf_t *out, const char *s, size_t len);
/* Append s[0..len) as a JSON string literal, quotes included. Invalid UTF-8 becomes U+FFFD. */
void webapp_json_escape(buf_t *out, const char *s, size_t len);

/* application/x-www-form-urlencoded: find `key` and decode its value ('+' and %XX) into a
 * NUL-terminated heap string (*out, caller frees). Returns 0, MS_ENOENT when absent, or
 * MS_EPARSE on a malformed escape or a NUL byte anywhere in the body (every pair is checked).
 * The first occurrence wins. */
int webapp_form_get(const char *body, size_t len, const char *key, char **out) MS_WUR;

/* JSON: the body must be exactly one object (whitespace around allowed, nesting at most 16
 * deep); find the top-level member `key` and return its string value decoded (\uXXXX and
 * surrogate pairs included) in *out (caller frees). Returns 0, MS_ENOENT when absent,
 * MS_EINVAL when present but not a string (or it contains NUL), MS_EPARSE on invalid JSON. */
int webapp_json_get(const char *body, size_t len, const char *key, char **out) MS_WUR;

/* Cookie header ("a=1; msid=abc"): copy the value of cookie `name` (quotes stripped) into out.
 * Returns true when found and it fits (outlen includes the NUL). */
bool webapp_cookie_get(const char *header, const char *name, char *out, size_t outlen);

/* A session or entry id: exactly 32 lowercase hex digits. */
#define WEBAPP_ID_LEN 32
bool webapp_id_valid(const char *s);
/* A fresh random id (getrandom); out has room for WEBAPP_ID_LEN + 1. */
void webapp_id_new(char *out);

/* User text we store: valid UTF-8 of 1..max_len bytes, no control characters (C0, DEL, C1)
 * except, when multiline, \n, \r and \t. */
bool webapp_text_ok(const char *s, size_t len, size_t max_len, bool multiline);

/* Database spec: "sqlite:PATH" -> WEBAPP_DB_SQLITE with *target = PATH; "postgresql://...",
 * "postgres://..." or a libpq conninfo containing '=' (optionally prefixed "pg:") ->
 * WEBAPP_DB_PG with *target the conninfo. Returns the kind or MS_EINVAL. */
enum { WEBAPP_DB_SQLITE = 1, WEBAPP_DB_PG = 2 };
int webapp_db_spec(const char *spec, const char **target);

#endif
