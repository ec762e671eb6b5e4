/* http.c: the web app's pages, served by libmicrohttpd.
 *
 * Threads: libmicrohttpd's thread per connection (MHD_USE_THREAD_PER_CONNECTION). Every page
 * that touches the database blocks its own connection's thread only, so a database that
 * hangs slows the pages that need it and never /health. The only state shared between
 * threads is the database pool (locked inside db.c), the schema flag (atomic) and the last
 * identity read (mutex).
 *
 * A request's life: the first call of the access handler sees the headers only and rejects
 * what it can right away (unknown path 404, wrong method 405, declared body too large 413);
 * the following calls collect the body, bounded by WEBAPP_MAX_BODY (a chunked body that
 * grows past it closes the connection); the last call builds the whole reply in a reply_t and
 * hands it to libmicrohttpd in one place, which adds the headers every reply carries. */
#include "webapp/internal.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Connections served at once, each a thread (8 MiB of stack reserved, a few KiB touched): far
 * above what the demo and its health probes need, and with the idle timeout below, what a
 * client holding connections open must keep up to starve the rest. Thread per connection is
 * chosen over a polling pool so that a page blocked on a hung database never holds up another
 * connection, /health in particular. */
#define WEBAPP_MAX_CONNECTIONS 256u
/* Idle keep-alive connections and slow clients are dropped after this many seconds. */
#define WEBAPP_CONN_TIMEOUT_S 15u
#define IDENTITY_MAX          128

struct webapp {
    struct MHD_Daemon *mhd;
    webapp_db_t *db;
    char *site, *web, *served_by;
    char *identity;      /* --db-identity, or NULL */
    char *identity_dflt; /* "db-<site>" */
    atomic_bool schema_ok;
    pthread_mutex_t mu;
    char seen_identity[IDENTITY_MAX]; /* guarded by mu: last identity read */
    uint16_t port;
};

typedef enum { R_NONE, R_INDEX, R_SESSION, R_GB_POST, R_GB_JSON, R_HEALTH, R_DB } route_t;

static const struct {
    const char *path;
    route_t route;
    bool post; /* POST only; otherwise GET and HEAD */
} routes[] = {
    {"/", R_INDEX, false},           {"/session", R_SESSION, false},
    {"/guestbook", R_GB_POST, true}, {"/guestbook.json", R_GB_JSON, false},
    {"/health", R_HEALTH, false},    {"/db", R_DB, false},
};

typedef struct {
    route_t route;
    buf_t body;
} req_t;

typedef enum { FMT_TEXT, FMT_HTML, FMT_JSON } fmt_t;

typedef struct {
    unsigned status;
    const char *ctype;
    buf_t body;
    char cookie[128]; /* Set-Cookie value, "" for none */
    const char *location;
    const char *allow;
} reply_t;

static const char CT_TEXT[] = "text/plain; charset=utf-8";
static const char CT_HTML[] = "text/html; charset=utf-8";
static const char CT_JSON[] = "application/json";

static log_ratelimit_t db_rl = LOG_RATELIMIT_INIT(5, 10000);
static log_ratelimit_t req_rl = LOG_RATELIMIT_INIT(5, 10000);

/* ---- replies ---- */

static void page_head(buf_t *b, const char *title)
{
    buf_printf(b, "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>");
    webapp_html_escape(b, title, strlen(title));
    buf_printf(b, "</title></head>\n<body>\n");
}

/* An error reply in the format the client asked for. */
static void fail(reply_t *r, unsigned status, fmt_t fmt, const char *prefix, const char *msg)
{
    char line[WEBAPP_ERRLEN + 64];
    snprintf(line, sizeof(line), "%s%s", prefix, msg);
    r->status = status;
    buf_reset(&r->body);
    switch (fmt) {
    case FMT_JSON:
        r->ctype = CT_JSON;
        buf_printf(&r->body, "{\"error\":");
        webapp_json_escape(&r->body, line, strlen(line));
        buf_printf(&r->body, "}\n");
        break;
    case FMT_HTML:
        r->ctype = CT_HTML;
        page_head(&r->body, "error");
        buf_printf(&r->body, "<p>");
        webapp_html_escape(&r->body, line, strlen(line));
        buf_printf(&r->body, "</p>\n</body></html>\n");
        break;
    case FMT_TEXT:
        r->ctype = CT_TEXT;
        webapp_text_clean(&r->body, line, strlen(line));
        buf_printf(&r->body, "\n");
        break;
    }
}

/* Replace every occurrence of the database's identity in err by "***": the database page's
 * contract is that the keyword is absent when the database cannot be read, and error text
 * (a PostgreSQL "database "db-eu" does not exist", say) could otherwise carry it. */
static void redact(webapp_t *w, char *err, size_t errlen)
{
    char seen[IDENTITY_MAX];
    pthread_mutex_lock(&w->mu);
    memcpy(seen, w->seen_identity, sizeof(seen));
    pthread_mutex_unlock(&w->mu);
    const char *words[] = {seen, w->identity ? w->identity : "", w->identity_dflt};
    buf_t b;
    buf_init(&b);
    for (const char *p = err; *p;) {
        size_t hit = 0;
        for (size_t i = 0; i < MS_ARRAY_LEN(words) && !hit; i++) {
            size_t n = strlen(words[i]);
            if (n && strncmp(p, words[i], n) == 0) {
                hit = n;
            }
        }
        if (hit) {
            buf_append(&b, "***", 3);
            p += hit;
        } else {
            buf_append(&b, p++, 1);
        }
    }
    snprintf(err, errlen, "%.*s", (int)b.len, (const char *)b.data);
    buf_deinit(&b);
}

static void db_unavailable(webapp_t *w, reply_t *r, fmt_t fmt, char *err)
{
    redact(w, err, WEBAPP_ERRLEN);
    log_rl(&db_rl, LOG_LVL_WARN, "database unavailable: %s", err);
    fail(r, MHD_HTTP_SERVICE_UNAVAILABLE, fmt, "database unavailable: ", err);
}

/* ---- database steps shared by the pages ---- */

/* The schema is made at start-up; if the database was down then, the first request that
 * reaches it makes it (without creating a database file: see webapp_db_init). */
static int ensure_schema(webapp_t *w, char *err)
{
    if (atomic_load(&w->schema_ok)) {
        return 0;
    }
    int rc = webapp_db_init(w->db, w->identity, w->identity_dflt, false, err, WEBAPP_ERRLEN);
    if (rc == 0) {
        atomic_store(&w->schema_ok, true);
        log_info("database schema ready (%s)", webapp_db_kind(w->db));
    }
    return rc;
}

static int read_identity(webapp_t *w, char *out, char *err)
{
    webapp_rows_t rows = {0};
    int rc =
        webapp_db_query(w->db, webapp_db_identity_sql(w->db), NULL, 0, &rows, err, WEBAPP_ERRLEN);
    if (rc != 0) {
        return rc;
    }
    const char *v = webapp_rows_get(&rows, 0, 0);
    if (!v || !*v) {
        snprintf(err, WEBAPP_ERRLEN, "the database has no identity (site_identity k='name')");
        webapp_rows_free(&rows);
        return MS_ENOENT;
    }
    snprintf(out, IDENTITY_MAX, "%s", v);
    webapp_rows_free(&rows);
    pthread_mutex_lock(&w->mu);
    memcpy(w->seen_identity, out, IDENTITY_MAX);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

typedef struct {
    char id[WEBAPP_ID_LEN + 1];
    bool fresh; /* we issued the cookie with this reply */
    char visits[24];
    char created_ms[24];
} sess_t;

/* A value from the database printed as a JSON number: only if it is one (replicated rows are
 * input like any other). */
static void json_int(buf_t *b, const char *v)
{
    const char *p = v && *v == '-' ? v + 1 : v;
    size_t n = p ? strspn(p, "0123456789") : 0;
    if (n == 0 || n > 19 || p[n]) {
        buf_printf(b, "0");
    } else {
        buf_printf(b, "%s", v);
    }
}

/* The visitor's session: the one its cookie names, or a new one. One statement counts the
 * visit and returns the count, so two web servers serving the same session at once never lose
 * a visit. */
static int session_touch(webapp_t *w, struct MHD_Connection *conn, sess_t *s, reply_t *r, char *err)
{
    const char *hdr = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_COOKIE);
    memset(s, 0, sizeof(*s));
    if (!hdr || !webapp_cookie_get(hdr, "msid", s->id, sizeof(s->id)) || !webapp_id_valid(s->id)) {
        webapp_id_new(s->id);
        s->fresh = true;
    }
    char now[24];
    snprintf(now, sizeof(now), "%llu", (unsigned long long)time_wall_ms());
    buf_t data;
    buf_init(&data);
    buf_printf(&data, "{\"created_by\":");
    webapp_json_escape(&data, w->served_by, strlen(w->served_by));
    buf_printf(&data, "}");
    buf_append(&data, "", 1);
    const char *params[] = {s->id, (const char *)data.data, now, now};
    webapp_rows_t rows = {0};
    int rc = webapp_db_query(w->db,
                             "INSERT INTO sessions(id, data, visits, created_ms, updated_ms)"
                             " VALUES (?, ?, 1, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                             " visits = sessions.visits + 1, updated_ms = excluded.updated_ms"
                             " RETURNING visits, created_ms",
                             params, 4, &rows, err, WEBAPP_ERRLEN);
    buf_deinit(&data);
    if (rc != 0) {
        return rc;
    }
    snprintf(s->visits, sizeof(s->visits), "%s", webapp_rows_get(&rows, 0, 0) ?: "0");
    snprintf(s->created_ms, sizeof(s->created_ms), "%s", webapp_rows_get(&rows, 0, 1) ?: "0");
    webapp_rows_free(&rows);
    if (s->fresh) {
        snprintf(r->cookie, sizeof(r->cookie),
                 "msid=%s; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax", s->id);
    }
    return 0;
}

static int guestbook_list(webapp_t *w, webapp_rows_t *rows, char *err)
{
    char limit[16];
    snprintf(limit, sizeof(limit), "%d", WEBAPP_GUESTBOOK_SHOW);
    const char *params[] = {limit};
    return webapp_db_query(w->db,
                           "SELECT id, site, web, author, message, created_ms FROM guestbook"
                           " ORDER BY created_ms DESC, id DESC LIMIT ?",
                           params, 1, rows, err, WEBAPP_ERRLEN);
}

static void served_by_json(webapp_t *w, buf_t *b)
{
    buf_printf(b, "\"served_by\":{\"site\":");
    webapp_json_escape(b, w->site, strlen(w->site));
    buf_printf(b, ",\"web\":");
    webapp_json_escape(b, w->web, strlen(w->web));
    buf_printf(b, "}");
}

static void html_text(buf_t *b, const char *s)
{
    s = s ? s : "";
    webapp_html_escape(b, s, strlen(s));
}

static void html_time(buf_t *b, const char *ms)
{
    uint64_t v;
    if (!ms || !parse_u64(ms, &v)) {
        buf_printf(b, "?");
        return;
    }
    time_t t = (time_t)(v / 1000);
    struct tm tm;
    char s[32];
    if (!gmtime_r(&t, &tm) || strftime(s, sizeof(s), "%Y-%m-%d %H:%M:%SZ", &tm) == 0) {
        buf_printf(b, "?");
        return;
    }
    buf_printf(b, "%s", s);
}

/* ---- pages ---- */

/* GET /health: the web tier alone; never touches the database. */
static void page_health(webapp_t *w, reply_t *r)
{
    r->ctype = CT_TEXT;
    buf_printf(&r->body, "ok %s\n", w->web);
}

/* GET /db: the database check. One query per request, no caching: a health probe that gets
 * the identity back knows the database answered just now. */
static void page_db(webapp_t *w, reply_t *r)
{
    char err[WEBAPP_ERRLEN], id[IDENTITY_MAX];
    /* Only the identity: health checks fetch this page every second or faster, so it reads
     * one row of a tiny table and never counts a big one. */
    if (ensure_schema(w, err) != 0 || read_identity(w, id, err) != 0) {
        db_unavailable(w, r, FMT_TEXT, err);
        return;
    }
    r->ctype = CT_TEXT;
    buf_printf(&r->body, "database: ");
    webapp_text_clean(&r->body, id, strlen(id));
    buf_printf(&r->body, "\nbackend: %s\nserved-by: ", webapp_db_kind(w->db));
    webapp_text_clean(&r->body, w->served_by, strlen(w->served_by));
    buf_printf(&r->body, "\n");
}

/* GET /session: the session as JSON; counts a visit. */
static void page_session(webapp_t *w, struct MHD_Connection *conn, reply_t *r)
{
    char err[WEBAPP_ERRLEN];
    sess_t s;
    if (ensure_schema(w, err) != 0 || session_touch(w, conn, &s, r, err) != 0) {
        db_unavailable(w, r, FMT_JSON, err);
        return;
    }
    r->ctype = CT_JSON;
    buf_printf(&r->body, "{\"id\":\"%s\",\"new\":%s,\"visits\":", s.id, s.fresh ? "true" : "false");
    json_int(&r->body, s.visits);
    buf_printf(&r->body, ",\"created_ms\":");
    json_int(&r->body, s.created_ms);
    buf_printf(&r->body, ",");
    served_by_json(w, &r->body);
    buf_printf(&r->body, "}\n");
}

/* GET /guestbook.json */
static void page_guestbook_json(webapp_t *w, reply_t *r)
{
    char err[WEBAPP_ERRLEN];
    webapp_rows_t rows = {0};
    if (ensure_schema(w, err) != 0 || guestbook_list(w, &rows, err) != 0) {
        db_unavailable(w, r, FMT_JSON, err);
        return;
    }
    static const char *const names[] = {"id", "site", "web", "author", "message"};
    buf_t *b = &r->body;
    r->ctype = CT_JSON;
    buf_printf(b, "{");
    served_by_json(w, b);
    buf_printf(b, ",\"entries\":[");
    for (size_t i = 0; i < rows.nrows; i++) {
        buf_printf(b, "%s{", i ? "," : "");
        for (size_t c = 0; c < MS_ARRAY_LEN(names); c++) {
            const char *v = webapp_rows_get(&rows, i, c) ?: "";
            buf_printf(b, "\"%s\":", names[c]);
            webapp_json_escape(b, v, strlen(v));
            buf_printf(b, ",");
        }
        buf_printf(b, "\"created_ms\":");
        json_int(b, webapp_rows_get(&rows, i, 5));
        buf_printf(b, "}");
    }
    buf_printf(b, "]}\n");
    webapp_rows_free(&rows);
}

/* GET /: the demo page. */
static void page_index(webapp_t *w, struct MHD_Connection *conn, reply_t *r)
{
    char err[WEBAPP_ERRLEN], id[IDENTITY_MAX], hits_name[160];
    sess_t s;
    webapp_rows_t hits = {0}, gb = {0};
    snprintf(hits_name, sizeof(hits_name), "hits@%s", w->site);
    const char *hp[] = {hits_name, w->site};
    if (ensure_schema(w, err) != 0 || session_touch(w, conn, &s, r, err) != 0 ||
        webapp_db_query(w->db,
                        "INSERT INTO counters(name, site, value) VALUES (?, ?, 1)"
                        " ON CONFLICT(name) DO UPDATE SET value = counters.value + 1",
                        hp, 2, NULL, err, WEBAPP_ERRLEN) != 0 ||
        read_identity(w, id, err) != 0 ||
        webapp_db_query(w->db, "SELECT site, value FROM counters ORDER BY name LIMIT 32", NULL, 0,
                        &hits, err, WEBAPP_ERRLEN) != 0 ||
        guestbook_list(w, &gb, err) != 0) {
        webapp_rows_free(&hits);
        r->cookie[0] = '\0';
        db_unavailable(w, r, FMT_HTML, err);
        return;
    }
    buf_t *b = &r->body;
    r->ctype = CT_HTML;
    page_head(b, "multisite demo");
    buf_printf(b, "<h1>multisite demo</h1>\n<p>Served by site <b>");
    html_text(b, w->site);
    buf_printf(b, "</b>, web server <b>");
    html_text(b, w->web);
    buf_printf(b, "</b>, database <b>");
    html_text(b, id);
    buf_printf(b, "</b> (%s).</p>\n<p>Session <code>%s</code>: visit ", webapp_db_kind(w->db),
               s.id);
    html_text(b, s.visits); /* a replicated row is input too: escape what the database says */
    buf_printf(b, ", started ");
    html_time(b, s.created_ms);
    buf_printf(b, ".</p>\n<p>Page views by site:");
    for (size_t i = 0; i < hits.nrows; i++) {
        buf_printf(b, "%s ", i ? "," : "");
        html_text(b, webapp_rows_get(&hits, i, 0));
        buf_printf(b, " ");
        html_text(b, webapp_rows_get(&hits, i, 1));
    }
    buf_printf(b,
               "</p>\n<h2>Guestbook</h2>\n"
               "<form method=\"post\" action=\"/guestbook\">\n"
               "<input name=\"author\" placeholder=\"name\" maxlength=\"%d\">\n"
               "<input name=\"message\" placeholder=\"message\" maxlength=\"%d\" required>\n"
               "<button>sign</button>\n</form>\n<ul>\n",
               WEBAPP_MAX_AUTHOR, WEBAPP_MAX_MESSAGE);
    for (size_t i = 0; i < gb.nrows; i++) {
        buf_printf(b, "<li><b>");
        html_text(b, webapp_rows_get(&gb, i, 3));
        buf_printf(b, "</b> (");
        html_text(b, webapp_rows_get(&gb, i, 1));
        buf_printf(b, "/");
        html_text(b, webapp_rows_get(&gb, i, 2));
        buf_printf(b, ", ");
        html_time(b, webapp_rows_get(&gb, i, 5));
        buf_printf(b, "): ");
        html_text(b, webapp_rows_get(&gb, i, 4));
        buf_printf(b, "</li>\n");
    }
    buf_printf(b, "</ul>\n</body></html>\n");
    webapp_rows_free(&hits);
    webapp_rows_free(&gb);
}

/* POST /guestbook: a form (answered with a redirect to /) or JSON (answered with the entry). */
static void page_guestbook_post(webapp_t *w, struct MHD_Connection *conn, req_t *q, reply_t *r)
{
    const char *ct =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    bool json = ct && strncasecmp(ct, "application/json", 16) == 0;
    bool form = ct && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0;
    fmt_t fmt = json ? FMT_JSON : FMT_TEXT;
    if (!json && !form) {
        fail(r, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, fmt, "",
             "expected application/json or application/x-www-form-urlencoded");
        return;
    }
    const char *body = q->body.data ? (const char *)q->body.data : "";
    char *author = NULL, *message = NULL;
    int rc = json ? webapp_json_get(body, q->body.len, "author", &author)
                  : webapp_form_get(body, q->body.len, "author", &author);
    if (rc == 0 || rc == MS_ENOENT) {
        rc = json ? webapp_json_get(body, q->body.len, "message", &message)
                  : webapp_form_get(body, q->body.len, "message", &message);
    }
    const char *why = NULL;
    if (rc == MS_EPARSE) {
        why = json ? "body is not a valid JSON object" : "body is not a valid form";
    } else if (rc == MS_EINVAL) {
        why = "author and message must be strings";
    } else if (!message) {
        why = "message is required";
    } else if (!webapp_text_ok(message, strlen(message), WEBAPP_MAX_MESSAGE, true)) {
        why = "message must be 1 to 2000 bytes of UTF-8 text";
    } else if (author && *author &&
               !webapp_text_ok(author, strlen(author), WEBAPP_MAX_AUTHOR, false)) {
        why = "author must be at most 64 bytes of UTF-8 text on one line";
    }
    if (why) {
        fail(r, MHD_HTTP_BAD_REQUEST, fmt, "", why);
        free(author);
        free(message);
        return;
    }
    char id[WEBAPP_ID_LEN + 1], now[24], err[WEBAPP_ERRLEN];
    webapp_id_new(id);
    snprintf(now, sizeof(now), "%llu", (unsigned long long)time_wall_ms());
    const char *who = author && *author ? author : "anonymous";
    const char *params[] = {id, w->site, w->web, who, message, now};
    if (ensure_schema(w, err) != 0 ||
        webapp_db_query(w->db,
                        "INSERT INTO guestbook(id, site, web, author, message, created_ms)"
                        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
                        params, 6, NULL, err, WEBAPP_ERRLEN) != 0) {
        db_unavailable(w, r, fmt, err);
    } else if (json) {
        r->status = MHD_HTTP_CREATED;
        r->ctype = CT_JSON;
        buf_printf(&r->body, "{\"id\":\"%s\",\"created_ms\":%s,", id, now);
        served_by_json(w, &r->body);
        buf_printf(&r->body, "}\n");
    } else {
        r->status = MHD_HTTP_SEE_OTHER;
        r->ctype = CT_TEXT;
        r->location = "/";
        buf_printf(&r->body, "added %s\n", id);
    }
    free(author);
    free(message);
}

/* ---- libmicrohttpd glue ---- */

static enum MHD_Result send_reply(webapp_t *w, struct MHD_Connection *conn, reply_t *r)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        r->body.len, r->body.len ? r->body.data : (void *)"", MHD_RESPMEM_MUST_COPY);
    buf_deinit(&r->body);
    if (!resp) {
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->ctype ? r->ctype : CT_TEXT);
    MHD_add_response_header(resp, "X-Served-By", w->served_by);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    /* text/plain echoing a path stays text: no browser may sniff it into HTML */
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (r->cookie[0]) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_SET_COOKIE, r->cookie);
    }
    if (r->location) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, r->location);
    }
    if (r->allow) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    }
    enum MHD_Result ret = MHD_queue_response(conn, r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void reply_init(reply_t *r)
{
    memset(r, 0, sizeof(*r));
    r->status = MHD_HTTP_OK;
    buf_init(&r->body);
}

/* First call: the headers are in. Returns true when a reply was made (r filled). */
static bool screen(struct MHD_Connection *conn, const char *url, const char *method, req_t *q,
                   reply_t *r)
{
    size_t i;
    for (i = 0; i < MS_ARRAY_LEN(routes) && strcmp(routes[i].path, url) != 0; i++) {
    }
    if (i == MS_ARRAY_LEN(routes)) {
        fail(r, MHD_HTTP_NOT_FOUND, FMT_TEXT, "not found: ", url);
        return true;
    }
    q->route = routes[i].route;
    /* OPTIONS answers with what the path allows: it is also what HAProxy's bare
     * `option httpchk` sends, which then checks the web tier alone. */
    if (strcmp(method, MHD_HTTP_METHOD_OPTIONS) == 0) {
        r->status = MHD_HTTP_NO_CONTENT;
        r->allow = routes[i].post ? "POST, OPTIONS" : "GET, HEAD, OPTIONS";
        return true;
    }
    bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    bool get =
        strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (routes[i].post ? !post : !get) {
        fail(r, MHD_HTTP_METHOD_NOT_ALLOWED, FMT_TEXT, "method not allowed: ", method);
        r->allow = routes[i].post ? "POST, OPTIONS" : "GET, HEAD, OPTIONS";
        return true;
    }
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    uint64_t n;
    if (cl && parse_u64(cl, &n) && n > WEBAPP_MAX_BODY) {
        fail(r, MHD_HTTP_CONTENT_TOO_LARGE, FMT_TEXT, "", "request body too large (64 KiB max)");
        return true;
    }
    return false;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **ctx)
{
    (void)version;
    webapp_t *w = cls;
    req_t *q = *ctx;
    reply_t r;
    if (!q) {
        q = xcalloc(1, sizeof(*q));
        buf_init(&q->body);
        *ctx = q;
        reply_init(&r);
        if (screen(conn, url, method, q, &r)) {
            return send_reply(w, conn, &r);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (q->body.len + *upload_size > WEBAPP_MAX_BODY) {
            log_rl(&req_rl, LOG_LVL_WARN, "request body over %d bytes: connection closed",
                   WEBAPP_MAX_BODY);
            return MHD_NO;
        }
        buf_append(&q->body, upload_data, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    reply_init(&r);
    switch (q->route) {
    case R_INDEX: page_index(w, conn, &r); break;
    case R_SESSION: page_session(w, conn, &r); break;
    case R_GB_POST: page_guestbook_post(w, conn, q, &r); break;
    case R_GB_JSON: page_guestbook_json(w, &r); break;
    case R_HEALTH: page_health(w, &r); break;
    case R_DB: page_db(w, &r); break;
    case R_NONE: fail(&r, MHD_HTTP_INTERNAL_SERVER_ERROR, FMT_TEXT, "", "no route"); break;
    }
    log_debug("%s %s -> %u", method, url, r.status);
    return send_reply(w, conn, &r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **ctx,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    req_t *q = *ctx;
    if (q) {
        buf_deinit(&q->body);
        free(q);
        *ctx = NULL;
    }
}

__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) {
        msg[--n] = '\0';
    }
    log_rl(&req_rl, LOG_LVL_WARN, "http: %s", msg);
}

/* ---- life cycle ---- */

static char *default_identity(const char *site)
{
    return xasprintf("db-%s", site);
}

int webapp_init_db(const webapp_conf_t *c, char *err, size_t errlen)
{
    webapp_db_t *db;
    int rc = webapp_db_new(c->db, &db, err, errlen);
    if (rc != 0) {
        return rc;
    }
    char *dflt = default_identity(c->site);
    rc = webapp_db_init(db, c->db_identity, dflt, true, err, errlen);
    free(dflt);
    webapp_db_free(db);
    return rc;
}

int webapp_start(const webapp_conf_t *c, webapp_t **out, char *err, size_t errlen)
{
    net_addr_t addr;
    if (net_parse_addr(c->listen, 8080, &addr) != 0) {
        snprintf(err, errlen, "--listen %s: expected ADDR:PORT", c->listen);
        return MS_EINVAL;
    }
    webapp_t *w = xcalloc(1, sizeof(*w));
    pthread_mutex_init(&w->mu, NULL);
    w->site = xstrdup(c->site);
    w->web = xstrdup(c->name);
    w->served_by = xasprintf("%s/%s", c->site, c->name);
    w->identity = c->db_identity ? xstrdup(c->db_identity) : NULL;
    w->identity_dflt = default_identity(c->site);
    int rc = webapp_db_new(c->db, &w->db, err, errlen);
    if (rc != 0) {
        webapp_stop(w);
        return rc;
    }
    char why[WEBAPP_ERRLEN];
    if (webapp_db_init(w->db, w->identity, w->identity_dflt, true, why, sizeof(why)) == 0) {
        atomic_store(&w->schema_ok, true);
    } else {
        log_warn("database not ready at start (the pages that need it answer 503 until it "
                 "is): %s",
                 why);
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_ERROR_LOG | (addr.sa.sa_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    /* The logger goes first: messages about the options before it would go to stderr raw. */
    w->mhd = MHD_start_daemon(flags, net_addr_port(&addr), NULL, NULL, on_request, w,
                              MHD_OPTION_EXTERNAL_LOGGER, mhd_log, w, MHD_OPTION_SOCK_ADDR,
                              &addr.sa, MHD_OPTION_CONNECTION_LIMIT, WEBAPP_MAX_CONNECTIONS,
                              MHD_OPTION_CONNECTION_TIMEOUT, WEBAPP_CONN_TIMEOUT_S,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, w, MHD_OPTION_END);
    if (!w->mhd) {
        snprintf(err, errlen, "cannot listen on %s (see the message above)", c->listen);
        webapp_stop(w);
        return MS_EIO;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(w->mhd, MHD_DAEMON_INFO_BIND_PORT);
    w->port = di ? di->port : net_addr_port(&addr);
    *out = w;
    return 0;
}

uint16_t webapp_port(const webapp_t *w)
{
    return w->port;
}

void webapp_stop(webapp_t *w)
{
    if (!w) {
        return;
    }
    if (w->mhd) {
        MHD_stop_daemon(w->mhd);
    }
    webapp_db_free(w->db);
    pthread_mutex_destroy(&w->mu);
    free(w->site);
    free(w->web);
    free(w->served_by);
    free(w->identity);
    free(w->identity_dflt);
    free(w);
}
