/* probe_stream.c: probes over a plain stream on the libuv loop: the TCP connect probe of a
 * web server, and the HAProxy runtime API poll (connect over a unix or TCP socket, send
 * "show stat\n", read to EOF, at most HT_MAX_STATS bytes, parse).
 *
 * Each probe attempt owns one stream handle. Finishing (success, failure or timeout) detaches
 * the attempt from its target and closes the handle; libuv then calls any pending connect or
 * write callback with UV_ECANCELED (ignored: the attempt is detached) before the close
 * callback frees the attempt. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    ht_target_t *t; /* NULL once finished */
    health_t *h;
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } u;
    uv_connect_t conn;
    uv_write_t wr;
    buf_t in; /* LB: the output read so far */
} stream_attempt_t;

const char *ht_uv_reason(int status)
{
    switch (status) {
    case UV_ECONNREFUSED: return "connection refused";
    case UV_ECONNRESET: return "connection reset";
    case UV_ETIMEDOUT: return "connection timed out";
    case UV_EHOSTUNREACH: return "host unreachable";
    case UV_ENETUNREACH: return "network unreachable";
    case UV_ENOENT: return "no such socket file";
    case UV_EACCES: return "permission denied";
    case UV_EPIPE: return "broken pipe";
    case UV_EOF: return "connection closed early";
    default: return uv_strerror(status);
    }
}

static bool is_refusal(int status)
{
    /* ENOENT: a unix stats socket whose HAProxy is gone. */
    return status == UV_ECONNREFUSED || status == UV_ECONNRESET || status == UV_ENOENT ||
           status == UV_EPIPE;
}

static void attempt_closed(uv_handle_t *hd)
{
    stream_attempt_t *a = hd->data;
    health_t *h = a->h;
    buf_deinit(&a->in);
    free(a);
    h->handles--;
    ht_maybe_free(h);
}

/* Detach from the target and close; returns the target (for ht_done). */
static ht_target_t *detach(stream_attempt_t *a)
{
    ht_target_t *t = a->t;
    a->t = NULL;
    t->attempt = NULL;
    uv_close(&a->u.handle, attempt_closed);
    return t;
}

static void finish(stream_attempt_t *a, bool ok, bool refused, const char *reason)
{
    ht_result_t r;
    memset(&r, 0, sizeof(r));
    r.ok = ok;
    r.refused = refused;
    snprintf(r.reason, sizeof(r.reason), "%s", reason);
    ht_done(detach(a), &r);
}

static void finish_err(stream_attempt_t *a, const char *what, int status)
{
    char buf[128];
    snprintf(buf, sizeof(buf), "%s%s", what, ht_uv_reason(status));
    finish(a, false, is_refusal(status), buf);
}

/* The poll's verdict from the parsed output (see health.h: at least one web backend server
 * UP, and the db backend UP when configured). */
static void lb_report(stream_attempt_t *a)
{
    ht_target_t *t = a->t;
    ht_result_t r;
    memset(&r, 0, sizeof(r));
    char err[128];
    if (hp_parse_stat((const char *)a->in.data, a->in.len, t->web_be, t->db_be, &r.stat, err,
                      sizeof(err)) != 0) {
        snprintf(r.reason, sizeof(r.reason), "bad show stat output: %s", err);
        ht_done(detach(a), &r);
        return;
    }
    const hp_stat_t *s = &r.stat;
    r.lb_report = true;
    r.ok = true;
    if (!s->web_found) {
        r.ok = false;
        hs_appendf(r.reason, sizeof(r.reason), "no backend '%s'", t->web_be);
    } else if (s->web_up == 0) {
        r.ok = false;
        hs_appendf(r.reason, sizeof(r.reason), "0/%u web servers UP%s%s%s", s->web_total,
                   s->web_down[0] ? " (" : "", s->web_down, s->web_down[0] ? ")" : "");
    }
    if (t->db_be && (!s->db_found || s->db != HEALTH_UP)) {
        const char *sep = r.ok ? "" : "; ";
        r.ok = false;
        if (!s->db_found) {
            hs_appendf(r.reason, sizeof(r.reason), "%sno backend '%s'", sep, t->db_be);
        } else {
            hs_appendf(r.reason, sizeof(r.reason), "%sdb backend '%s' DOWN%s%s%s", sep, t->db_be,
                       s->db_detail[0] ? " (" : "", s->db_detail, s->db_detail[0] ? ")" : "");
        }
    }
    ht_done(detach(a), &r);
}

static void alloc_cb(uv_handle_t *hd, size_t suggested, uv_buf_t *b)
{
    stream_attempt_t *a = hd->data;
    (void)suggested;
    buf_reserve(&a->in, 64 * 1024);
    b->base = (char *)a->in.data + a->in.len;
    b->len = a->in.cap - a->in.len - 1;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    stream_attempt_t *a = s->data;
    (void)b;
    if (!a->t) {
        return;
    }
    if (nread > 0) {
        a->in.len += (size_t)nread;
        if (a->in.len > HT_MAX_STATS) {
            finish(a, false, false, "show stat output over 4 MiB");
        }
        return;
    }
    if (nread == UV_EOF) {
        lb_report(a);
    } else if (nread < 0) {
        finish_err(a, "reading show stat: ", (int)nread);
    }
}

static void write_cb(uv_write_t *req, int status)
{
    stream_attempt_t *a = req->data;
    if (!a->t || status == 0) {
        return;
    }
    finish_err(a, "sending show stat: ", status);
}

static void connect_cb(uv_connect_t *req, int status)
{
    stream_attempt_t *a = req->data;
    if (!a->t) {
        return; /* timed out or cancelled: the handle is closing */
    }
    if (status < 0) {
        finish_err(a, a->t->kind == HT_LB ? "stats socket: " : "", status);
        return;
    }
    if (a->t->kind != HT_LB) {
        finish(a, true, false, "");
        return;
    }
    static char cmd[] = "show stat\n";
    uv_buf_t b = uv_buf_init(cmd, sizeof(cmd) - 1);
    int rc = uv_write(&a->wr, &a->u.stream, &b, 1, write_cb);
    if (rc == 0) {
        rc = uv_read_start(&a->u.stream, alloc_cb, read_cb);
    }
    if (rc < 0) {
        finish_err(a, "stats socket: ", rc);
    }
}

void ht_stream_start(ht_target_t *t)
{
    health_t *h = t->h;
    stream_attempt_t *a = xcalloc(1, sizeof(*a));
    a->t = t;
    a->h = h;
    a->conn.data = a;
    a->wr.data = a;
    buf_init(&a->in);
    bool unix_sock = t->kind == HT_LB && strncmp(t->stats, "unix:", 5) == 0;
    net_addr_t addr = t->addr;
    int rc = 0;
    if (t->kind == HT_LB && !unix_sock && net_parse_addr(t->stats, 0, &addr) != 0) {
        rc = UV_EINVAL; /* conf validated it; keep going without a crash anyway */
    }
    if (unix_sock) {
        rc = uv_pipe_init(h->loop, &a->u.pipe, 0);
    } else {
        rc = rc ? rc : uv_tcp_init(h->loop, &a->u.tcp);
    }
    if (rc < 0) {
        ht_result_t r;
        memset(&r, 0, sizeof(r));
        snprintf(r.reason, sizeof(r.reason), "cannot start probe: %s", uv_strerror(rc));
        free(a);
        ht_done(t, &r);
        return;
    }
    a->u.handle.data = a;
    h->handles++;
    t->attempt = a;
    if (unix_sock) {
        uv_pipe_connect(&a->conn, &a->u.pipe, t->stats + 5, connect_cb);
        return;
    }
    rc = uv_tcp_connect(&a->conn, &a->u.tcp, &addr.sa, connect_cb);
    if (rc < 0) {
        finish_err(a, "", rc);
    }
}

void ht_stream_abort(ht_target_t *t, bool report)
{
    stream_attempt_t *a = t->attempt;
    if (!a) {
        return;
    }
    if (!report) {
        detach(a);
        return;
    }
    char what[96];
    snprintf(what, sizeof(what), "%s after %u ms",
             t->kind != HT_LB ? "no connection"
             : a->in.len == 0 ? "no show stat output"
                              : "show stat output incomplete",
             t->timeout_ms);
    finish(a, false, false, what);
}
