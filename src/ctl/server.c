/* server.c: the daemon's control socket (unix, owner-only) on the libuv loop, and the
 * blocking client used by multisitectl. One request per connection. */
#include "ctl.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

struct ctl_server {
    uv_pipe_t pipe;
    ctl_handler_t handler;
    void *ud;
    char *path;
};

typedef struct {
    uv_pipe_t pipe;
    ctl_server_t *srv;
    uint8_t *in;
    size_t in_len;
    bool replied;
    uv_write_t wr;
    buf_t out;
} ctl_conn_t;

static void conn_closed(uv_handle_t *h)
{
    ctl_conn_t *c = (ctl_conn_t *)h;
    free(c->in);
    buf_deinit(&c->out);
    free(c);
}

static void conn_written(uv_write_t *w, int status)
{
    (void)status;
    ctl_conn_t *c = w->data;
    uv_close((uv_handle_t *)&c->pipe, conn_closed);
}

static void reply(ctl_conn_t *c, uint16_t status, const char *text, size_t len)
{
    c->replied = true;
    uv_read_stop((uv_stream_t *)&c->pipe);
    ctl_encode_reply(&c->out, status, text, len);
    uv_buf_t b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
    c->wr.data = c;
    if (uv_write(&c->wr, (uv_stream_t *)&c->pipe, &b, 1, conn_written) != 0) {
        uv_close((uv_handle_t *)&c->pipe, conn_closed);
    }
}

static void process(ctl_conn_t *c)
{
    ctl_header_t h;
    int rc = ctl_decode_header(c->in, c->in_len, &h);
    if (rc == MS_ETRUNC) {
        return; /* wait for more */
    }
    if (rc != 0 || h.type != CTL_T_REQUEST) {
        static const char msg[] = "malformed request header\n";
        reply(c, CTL_EPROTO, msg, sizeof(msg) - 1);
        return;
    }
    if (c->in_len < CTL_HDR_LEN + (size_t)h.length) {
        return;
    }
    ctl_request_t *req = xmalloc(sizeof(*req));
    if (ctl_decode_request(c->in + CTL_HDR_LEN, h.length, req) != 0) {
        static const char msg[] = "malformed request\n";
        reply(c, CTL_EPROTO, msg, sizeof(msg) - 1);
        free(req);
        return;
    }
    buf_t text;
    buf_init(&text);
    uint16_t st = c->srv->handler(c->srv->ud, req, &text);
    reply(c, st, text.data ? (const char *)text.data : "", text.len);
    buf_deinit(&text);
    free(req);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    static char slab[16384]; /* the loop is single-threaded and copies out at once */
    *b = uv_buf_init(slab, sizeof(slab));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    ctl_conn_t *c = (ctl_conn_t *)s;
    if (n < 0) {
        if (!c->replied) {
            uv_close((uv_handle_t *)&c->pipe, conn_closed);
        }
        return;
    }
    if (c->replied || n == 0) {
        return;
    }
    if (c->in_len + (size_t)n > CTL_HDR_LEN + CTL_MAX_REQUEST) {
        static const char msg[] = "request too large\n";
        reply(c, CTL_EPROTO, msg, sizeof(msg) - 1);
        return;
    }
    c->in = xrealloc(c->in, c->in_len + (size_t)n);
    memcpy(c->in + c->in_len, b->base, (size_t)n);
    c->in_len += (size_t)n;
    process(c);
}

static void on_connection(uv_stream_t *server, int status)
{
    ctl_server_t *srv = server->data;
    if (status < 0) {
        return;
    }
    ctl_conn_t *c = xcalloc(1, sizeof(*c));
    c->srv = srv;
    buf_init(&c->out);
    uv_pipe_init(server->loop, &c->pipe, 0);
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0 ||
        uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) != 0) {
        uv_close((uv_handle_t *)&c->pipe, conn_closed);
    }
}

int ctl_server_new(uv_loop_t *loop, const char *path, ctl_handler_t h, void *ud, ctl_server_t **out)
{
    ctl_server_t *s = xcalloc(1, sizeof(*s));
    s->handler = h;
    s->ud = ud;
    s->path = xstrdup(path);
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        /* Replace it only if nobody answers there: never steal a running daemon's socket. */
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool live = false;
        if (fd >= 0 && strlen(path) < sizeof(sa.sun_path)) {
            strcpy(sa.sun_path, path);
            live = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
        }
        if (fd >= 0) {
            close(fd);
        }
        if (live) {
            log_err("control socket %s: another daemon is listening there", path);
            free(s->path);
            free(s);
            *out = NULL;
            return MS_EEXIST;
        }
        unlink(path); /* a stale socket from a previous run */
    }
    uv_pipe_init(loop, &s->pipe, 0);
    s->pipe.data = s;
    /* Owner-only from the start: the umask covers the window before chmod. */
    mode_t old = umask(0177);
    int rc = uv_pipe_bind(&s->pipe, path);
    umask(old);
    if (rc == 0) {
        chmod(path, 0600);
        rc = uv_listen((uv_stream_t *)&s->pipe, 16, on_connection);
    }
    if (rc != 0) {
        log_err("control socket %s: %s", path, uv_strerror(rc));
        uv_close((uv_handle_t *)&s->pipe, NULL);
        s->handler = NULL;
        *out = NULL;
        /* the handle is closed by the loop; the struct is leaked only on this startup
         * failure path, where the daemon exits */
        return MS_EIO;
    }
    *out = s;
    return 0;
}

static void server_closed(uv_handle_t *h)
{
    ctl_server_t *s = h->data;
    free(s->path);
    free(s);
}

void ctl_server_free(ctl_server_t *s)
{
    if (!s) {
        return;
    }
    unlink(s->path);
    uv_close((uv_handle_t *)&s->pipe, server_closed);
}

/* ---- client ---- */

static int wait_fd(int fd, short ev, uint64_t deadline)
{
    for (;;) {
        uint64_t now = time_mono_ms();
        if (now >= deadline) {
            return -1;
        }
        struct pollfd p = {fd, ev, 0};
        int r = poll(&p, 1, (int)(deadline - now));
        if (r > 0) {
            return 0;
        }
        if (r < 0 && errno != EINTR) {
            return -1;
        }
    }
}

int ctl_call(const char *path, size_t argc, const char *const *argv, buf_t *out,
             unsigned timeout_ms)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        buf_printf(out, "control socket path too long: %s", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        buf_printf(out, "cannot connect to %s: %s (is multisited running?)", path, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    uint64_t deadline = time_mono_ms() + timeout_ms;
    buf_t req;
    buf_init(&req);
    int st = -1;
    if (ctl_encode_request(&req, argc, argv) != 0) {
        buf_printf(out, "request too large");
        goto done;
    }
    for (size_t off = 0; off < req.len;) {
        if (wait_fd(fd, POLLOUT, deadline) != 0) {
            buf_printf(out, "timed out sending to %s", path);
            goto done;
        }
        ssize_t n = send(fd, req.data + off, req.len - off, MSG_NOSIGNAL);
        if (n < 0 && errno != EINTR && errno != EAGAIN) {
            buf_printf(out, "send: %s", strerror(errno));
            goto done;
        }
        off += n > 0 ? (size_t)n : 0;
    }
    buf_t in;
    buf_init(&in);
    ctl_header_t h = {0};
    bool have_hdr = false;
    for (;;) {
        if (have_hdr && in.len >= CTL_HDR_LEN + (size_t)h.length) {
            break;
        }
        if (wait_fd(fd, POLLIN, deadline) != 0) {
            buf_printf(out, "timed out waiting for the reply from %s", path);
            buf_deinit(&in);
            goto done;
        }
        buf_reserve(&in, 65536);
        ssize_t n = recv(fd, in.data + in.len, in.cap - in.len - 1, 0);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            buf_printf(out, "connection closed before a complete reply");
            buf_deinit(&in);
            goto done;
        }
        in.len += (size_t)n;
        if (!have_hdr && in.len >= CTL_HDR_LEN) {
            if (ctl_decode_header(in.data, in.len, &h) != 0 || h.type != CTL_T_REPLY) {
                buf_printf(out, "malformed reply");
                buf_deinit(&in);
                goto done;
            }
            have_hdr = true;
        }
    }
    buf_append(out, in.data + CTL_HDR_LEN, h.length);
    st = h.status;
    buf_deinit(&in);
done:
    buf_deinit(&req);
    close(fd);
    return st;
}
