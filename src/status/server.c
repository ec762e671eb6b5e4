/* server.c: the status HTTP endpoint: libmicrohttpd on its own thread serving documents the
 * loop thread renders, and the loop-side poller of multisite-syncd's status socket.
 *
 *   loop thread                              HTTP thread (libmicrohttpd)
 *   ---------------------------------        ------------------------------
 *   timer (100 ms): snapshot changed or      request: lock, copy the current
 *   500 ms passed -> render JSON and         document, unlock, send
 *   Prometheus text into new buffers,
 *   lock, swap, unlock, free the old
 *
 * The copy under the lock is a memcpy of some kilobytes; nothing else is shared. */
#include "status.h"

#include "ctl/ctl.h"

#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Bounds. An operator's browser and a Prometheus scraper need a handful of connections; a
 * request is a line and some headers (MHD answers 431 past the memory limit); an idle
 * connection is closed after the timeout, so a slow client cannot pin the thread's slots. */
#define MAX_CONNECTIONS    64
#define MAX_PER_IP         32
#define CONN_MEMORY        (16 * 1024)
#define CONN_TIMEOUT_S     10
#define TICK_MS            100 /* snapshot-change check */
#define RENDER_EVERY_MS    500
#define SYNC_POLL_MS       1000
#define SYNC_MAX_BYTES     (256 * 1024) /* its status is some hundred bytes per peer */
#define SYNC_STALE_MS      5000         /* older than this: shown as unreachable */
#define SYNC_CONNECT_LIMIT 3000

typedef struct {
    char *data;
    size_t len;
} doc_t;

typedef struct {
    uv_pipe_t pipe;
    uv_connect_t req;
    uv_timer_t timeout;
    status_server_t *srv;
    buf_t in;
    bool failed;
    bool ended;
    unsigned open; /* handles not yet closed */
} sync_poll_t;

struct status_server {
    uv_loop_t *loop;
    cluster_t *cluster;
    dns_server_t *dns;
    struct MHD_Daemon *mhd;
    uv_timer_t tick;
    uint64_t last_render_ms, last_gen;
    /* multisite-syncd */
    char *sync_path;
    uint64_t last_sync_poll_ms, sync_ok_ms;
    buf_t sync_json; /* last good document */
    sync_poll_t *poll;
    /* what the HTTP thread serves */
    pthread_mutex_t mu;
    doc_t json, metrics;
    bool closing;
};

/* ---- HTTP thread ---- */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned code, const char *type,
                             const void *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, mode);
    if (!r) {
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    }
    enum MHD_Result rc = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result reply_doc(status_server_t *s, struct MHD_Connection *conn, doc_t *d,
                                 const char *type)
{
    pthread_mutex_lock(&s->mu);
    size_t len = d->len;
    char *copy = len ? xmalloc(len) : NULL;
    if (len) {
        memcpy(copy, d->data, len);
    }
    pthread_mutex_unlock(&s->mu);
    if (!copy) {
        static const char msg[] = "not ready\n";
        return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", msg,
                     sizeof(msg) - 1, MHD_RESPMEM_PERSISTENT);
    }
    return reply(conn, MHD_HTTP_OK, type, copy, len, MHD_RESPMEM_MUST_FREE);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)con_cls;
    status_server_t *s = cls;
    static const char text[] = "text/plain; charset=utf-8";
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        /* Answered before any body is read; MHD closes the connection after it. */
        static const char msg[] = "method not allowed: GET or HEAD\n";
        *upload_size = 0;
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, text, msg, sizeof(msg) - 1,
                     MHD_RESPMEM_PERSISTENT);
    }
    if (strcmp(url, "/status") == 0) {
        return reply_doc(s, conn, &s->json, "application/json");
    }
    if (strcmp(url, "/metrics") == 0) {
        return reply_doc(s, conn, &s->metrics, "text/plain; version=0.0.4; charset=utf-8");
    }
    if (strcmp(url, "/") == 0) {
        return reply(conn, MHD_HTTP_OK, "text/html; charset=utf-8", status_dashboard_html,
                     strlen(status_dashboard_html), MHD_RESPMEM_PERSISTENT);
    }
    static const char msg[] = "not found: try /, /status or /metrics\n";
    return reply(conn, MHD_HTTP_NOT_FOUND, text, msg, sizeof(msg) - 1, MHD_RESPMEM_PERSISTENT);
}

/* ---- loop thread: rendering ---- */

static void swap_in(status_server_t *s, doc_t *d, buf_t *b)
{
    doc_t nw = {(char *)b->data, b->len}; /* ownership moves to the doc */
    pthread_mutex_lock(&s->mu);
    doc_t old = *d;
    *d = nw;
    pthread_mutex_unlock(&s->mu);
    free(old.data);
}

static bool sync_fresh(const status_server_t *s, uint64_t now)
{
    return s->sync_json.len && now - s->sync_ok_ms <= SYNC_STALE_MS;
}

static void render(status_server_t *s)
{
    uint64_t now = time_mono_ms();
    dns_stats_t st;
    if (s->dns) {
        dns_server_stats(s->dns, &st);
    }
    buf_t json, prom;
    buf_init(&json);
    buf_init(&prom);
    char *argv[] = {"status", "--json", NULL};
    unsigned rc = cluster_ctl(s->cluster, 2, argv, &json);
    /* Extend the status object: everything up to its closing brace, then our fields. */
    while (json.len && json.data[json.len - 1] != '}') {
        json.len--;
    }
    if (rc != CTL_OK || json.len < 2) {
        buf_reset(&json);
        buf_printf(&json, "{\"ready\":false}");
    }
    json.len--;
    buf_printf(&json, ",\"time_ms\":%llu", (unsigned long long)time_wall_ms());
    const snap_t *cur = snap_current();
    if (cur) {
        /* Which multisited this is: the dashboard's title. */
        const conf_t *conf = cur->conf;
        buf_printf(&json, ",\"identity\":");
        status_json_str(&json, conf->identity ? conf->identity : "");
        if (conf->hb.enabled && conf->hb.self_site < conf->n_sites) {
            buf_printf(&json, ",\"self_site\":");
            status_json_str(&json, conf->sites[conf->hb.self_site].name);
        }
    }
    if (s->dns) {
        buf_printf(&json, ",\"dns\":");
        status_dns_json(&st, &json);
    }
    if (s->sync_path) {
        buf_printf(&json, ",\"sync\":");
        if (sync_fresh(s, now)) {
            buf_append(&json, s->sync_json.data, s->sync_json.len);
        } else {
            buf_printf(&json, "null");
        }
    }
    buf_printf(&json, "}\n");
    if (s->dns) {
        status_dns_metrics(&st, &prom);
    }
    cluster_metrics(s->cluster, &prom);
    if (s->sync_path) {
        buf_printf(&prom,
                   "# HELP multisite_sync_up 1 when multisite-syncd's status socket answered "
                   "within the last %d s\n# TYPE multisite_sync_up gauge\nmultisite_sync_up %d\n",
                   SYNC_STALE_MS / 1000, sync_fresh(s, now) ? 1 : 0);
        if (sync_fresh(s, now)) {
            status_sync_metrics((const char *)s->sync_json.data, s->sync_json.len, &prom);
        }
    }
    swap_in(s, &s->json, &json);
    swap_in(s, &s->metrics, &prom);
    s->last_render_ms = now;
}

bool status_sync_doc(const status_server_t *s, const uint8_t **data, size_t *len)
{
    if (!s || !s->sync_path || !sync_fresh(s, time_mono_ms())) {
        return false;
    }
    *data = s->sync_json.data;
    *len = s->sync_json.len;
    return true;
}

/* ---- loop thread: multisite-syncd's status socket (connect, read to EOF, bounded) ---- */

static void poll_closed(uv_handle_t *h)
{
    sync_poll_t *p = h->data;
    if (--p->open == 0) {
        buf_deinit(&p->in);
        free(p);
    }
}

static void poll_end(sync_poll_t *p)
{
    if (p->ended) {
        return; /* e.g. the connect callback after a close cancelled it */
    }
    p->ended = true;
    status_server_t *s = p->srv;
    if (s && s->poll == p) {
        s->poll = NULL;
        /* Only a whole JSON object from our own daemon is kept: it is spliced into /status. */
        const char *d = (const char *)p->in.data;
        size_t n = p->in.len;
        while (n && (d[n - 1] == '\n' || d[n - 1] == ' ')) {
            n--;
        }
        if (!p->failed && n >= 2 && d[0] == '{' && d[n - 1] == '}' && !memchr(d, '\0', n)) {
            buf_reset(&s->sync_json);
            buf_append(&s->sync_json, d, n);
            s->sync_ok_ms = time_mono_ms();
        }
    }
    uv_timer_stop(&p->timeout);
    uv_close((uv_handle_t *)&p->timeout, poll_closed);
    uv_close((uv_handle_t *)&p->pipe, poll_closed);
}

static void poll_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    static char scratch[16384]; /* the loop thread is the only reader */
    (void)h;
    *b = uv_buf_init(scratch, sizeof(scratch));
}

static void poll_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    sync_poll_t *p = st->data;
    if (n > 0) {
        if (p->in.len + (size_t)n > SYNC_MAX_BYTES) {
            p->failed = true;
            poll_end(p);
            return;
        }
        buf_append(&p->in, b->base, (size_t)n);
        return;
    }
    if (n < 0) {
        p->failed = n != UV_EOF;
        poll_end(p);
    }
}

static void poll_connected(uv_connect_t *req, int status)
{
    sync_poll_t *p = req->data;
    if (status != 0 || uv_read_start((uv_stream_t *)&p->pipe, poll_alloc, poll_read) != 0) {
        if (p->ended) {
            return;
        }
        if (p->srv) {
            static log_ratelimit_t rl = LOG_RATELIMIT_INIT(1, 60000);
            log_rl(&rl, LOG_LVL_WARN, "status: multisite-syncd status socket %s: %s",
                   p->srv->sync_path, uv_strerror(status ? status : UV_EIO));
        }
        p->failed = true;
        poll_end(p);
    }
}

static void poll_timeout(uv_timer_t *t)
{
    sync_poll_t *p = t->data;
    p->failed = true;
    poll_end(p);
}

static void sync_poll_start(status_server_t *s)
{
    if (s->poll) {
        return; /* the previous one is still running (bounded by its timeout) */
    }
    sync_poll_t *p = xcalloc(1, sizeof(*p));
    p->srv = s;
    buf_init(&p->in);
    uv_pipe_init(s->loop, &p->pipe, 0);
    uv_timer_init(s->loop, &p->timeout);
    p->pipe.data = p->timeout.data = p->req.data = p;
    p->open = 2;
    s->poll = p;
    uv_timer_start(&p->timeout, poll_timeout, SYNC_CONNECT_LIMIT, 0);
    uv_pipe_connect(&p->req, &p->pipe, s->sync_path, poll_connected);
}

static void on_tick(uv_timer_t *t)
{
    status_server_t *s = t->data;
    uint64_t now = time_mono_ms();
    if (s->sync_path && now - s->last_sync_poll_ms >= SYNC_POLL_MS) {
        s->last_sync_poll_ms = now;
        sync_poll_start(s);
    }
    const snap_t *cur = snap_current();
    uint64_t gen = cur ? cur->generation : 0;
    if (gen != s->last_gen || now - s->last_render_ms >= RENDER_EVERY_MS) {
        s->last_gen = gen;
        render(s);
    }
}

/* ---- lifetime ---- */

int status_server_new(uv_loop_t *loop, const conf_t *conf, cluster_t *c, dns_server_t *dns,
                      status_server_t **out)
{
    *out = NULL;
    net_addr_t a;
    if (!conf->status_listen || net_parse_addr(conf->status_listen, 8053, &a) != 0) {
        log_err("status endpoint: '%s' is not ADDR:PORT", conf->status_listen);
        return MS_EINVAL;
    }
    status_server_t *s = xcalloc(1, sizeof(*s));
    s->loop = loop;
    s->cluster = c;
    s->dns = dns;
    pthread_mutex_init(&s->mu, NULL);
    buf_init(&s->sync_json);
    if (conf->sync_status_socket && *conf->sync_status_socket) {
        s->sync_path = xstrdup(conf->sync_status_socket);
    }
    render(s); /* the first request already has something to read */
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | (a.sa.sa_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    s->mhd = MHD_start_daemon(
        flags, net_addr_port(&a), NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, &a.sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)MAX_CONNECTIONS, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)MAX_PER_IP, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONN_TIMEOUT_S, MHD_OPTION_END);
    if (!s->mhd) {
        int e = errno;
        log_err("status endpoint %s: cannot listen: %s", conf->status_listen,
                e ? strerror(e) : "libmicrohttpd failed to start");
        free(s->json.data);
        free(s->metrics.data);
        free(s->sync_path);
        buf_deinit(&s->sync_json);
        pthread_mutex_destroy(&s->mu);
        free(s);
        return MS_EIO;
    }
    uv_timer_init(loop, &s->tick);
    s->tick.data = s;
    uv_timer_start(&s->tick, on_tick, TICK_MS, TICK_MS);
    log_info("status endpoint on http://%s/ (/status, /metrics)", conf->status_listen);
    *out = s;
    return 0;
}

static void tick_closed(uv_handle_t *h)
{
    status_server_t *s = h->data;
    free(s->json.data);
    free(s->metrics.data);
    free(s->sync_path);
    buf_deinit(&s->sync_json);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

void status_server_free(status_server_t *s)
{
    if (!s || s->closing) {
        return;
    }
    s->closing = true;
    MHD_stop_daemon(s->mhd); /* joins the HTTP thread: no request runs after this */
    s->mhd = NULL;
    if (s->poll) {
        sync_poll_t *p = s->poll;
        s->poll = NULL;
        p->srv = NULL;
        poll_end(p); /* closes its handles; it frees itself when they are closed */
    }
    uv_timer_stop(&s->tick);
    uv_close((uv_handle_t *)&s->tick, tick_closed);
}
