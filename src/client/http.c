/* http.c: a small HTTP/1.1 GET over msc_connect, for multisite-fetch and for programs that
 * want failover with one call.
 *
 * One request per connection ("Connection: close"): the point is to show and exercise the
 * failover, not to be a fast HTTP client. What counts as a failure of the address, so the
 * next one is tried:
 *   - connect refused or timed out (msc_connect);
 *   - a send or receive error, a reset, a read that waits longer than io_timeout, or the whole
 *     response taking longer than RESPONSE_TIMEOUTS x io_timeout (a trickling server);
 *   - a response that is malformed, cut short, or bigger than the limits in client.h;
 *   - status 502, 503 or 504: a load balancer with no live web server behind it still
 *     accepts connections, and this is how it says so. */
#include "client/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define RESPONSE_TIMEOUTS  4
#define MSC_HTTP_MAX_EXTRA 4096 /* extra request headers, CRLFs included */
#define MSC_HTTP_MAX_NHDR  16

int msc_url_parse(const char *url, msc_url_t *out)
{
    static const char scheme[] = "http://";
    memset(out, 0, sizeof(*out));
    if (strncasecmp(url, scheme, sizeof(scheme) - 1) != 0) {
        return MS_EINVAL;
    }
    const char *h = url + sizeof(scheme) - 1;
    const char *hend, *rest;
    if (*h == '[') {
        hend = strchr(h, ']');
        if (!hend) {
            return MS_EINVAL;
        }
        h++;
        rest = hend + 1;
    } else {
        hend = h + strcspn(h, ":/?#");
        rest = hend;
    }
    size_t hl = (size_t)(hend - h);
    if (hl == 0 || hl >= sizeof(out->host) || memchr(h, '@', hl)) {
        return MS_EINVAL;
    }
    memcpy(out->host, h, hl);
    out->port = 80;
    if (*rest == ':') {
        char *end;
        errno = 0;
        unsigned long p = strtoul(rest + 1, &end, 10);
        if (end == rest + 1 || errno || p == 0 || p > 65535 || (*end && *end != '/')) {
            return MS_EINVAL;
        }
        out->port = (uint16_t)p;
        rest = end;
    }
    if (*rest == 0) {
        rest = "/";
    }
    if (*rest != '/' || strlen(rest) >= sizeof(out->path)) {
        return MS_EINVAL;
    }
    for (const char *c = rest; *c; c++) {
        if ((unsigned char)*c <= ' ' || *c == 127) {
            return MS_EINVAL; /* no header injection through the path */
        }
    }
    char *frag = strchr(rest, '#');
    size_t pl = frag ? (size_t)(frag - rest) : strlen(rest);
    memcpy(out->path, rest, pl);
    return 0;
}

static const uint8_t *find_crlf(const uint8_t *p, const uint8_t *end)
{
    for (; p + 1 < end; p++) {
        if (p[0] == '\r' && p[1] == '\n') {
            return p;
        }
    }
    return NULL;
}

/* Copy a header value, trimmed, with control bytes replaced: it ends up on a terminal. */
static void copy_value(char *dst, size_t cap, const uint8_t *v, const uint8_t *end)
{
    while (v < end && (*v == ' ' || *v == '\t')) {
        v++;
    }
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) {
        end--;
    }
    size_t n = 0;
    for (; v < end && n + 1 < cap; v++) {
        dst[n++] = (*v < 32 || *v == 127) ? '?' : (char)*v;
    }
    dst[n] = 0;
}

static bool header_is(const uint8_t *p, const uint8_t *colon, const char *name)
{
    size_t l = strlen(name);
    return (size_t)(colon - p) == l && strncasecmp((const char *)p, name, l) == 0;
}

static int parse_chunked(const uint8_t *p, const uint8_t *end, buf_t *body)
{
    for (;;) {
        const uint8_t *eol = find_crlf(p, end);
        if (!eol) {
            return MS_ETRUNC;
        }
        size_t size = 0;
        const uint8_t *q = p;
        for (; q < eol; q++) {
            int d = (*q >= '0' && *q <= '9')   ? *q - '0'
                    : (*q >= 'a' && *q <= 'f') ? *q - 'a' + 10
                    : (*q >= 'A' && *q <= 'F') ? *q - 'A' + 10
                                               : -1;
            if (d < 0) {
                break;
            }
            size = size * 16 + (size_t)d;
            if (size > MSC_HTTP_MAX_BODY) {
                return MS_EPARSE;
            }
        }
        if (q == p || (q < eol && *q != ';' && *q != ' ')) {
            return MS_EPARSE;
        }
        p = eol + 2;
        if (size == 0) {
            return 0; /* trailers, if any, are ignored */
        }
        if ((size_t)(end - p) < size + 2) {
            return MS_ETRUNC;
        }
        if (body->len + size > MSC_HTTP_MAX_BODY) {
            return MS_EPARSE;
        }
        buf_append(body, p, size);
        p += size;
        if (p[0] != '\r' || p[1] != '\n') {
            return MS_EPARSE;
        }
        p += 2;
    }
}

int msc_http_parse(const uint8_t *resp, size_t len, msc_http_result_t *out)
{
    const uint8_t *end = resp + len, *p = resp;
    out->status = 0;
    out->served_by[0] = 0;
    out->cookie[0] = 0;
    /* status line: HTTP/1.x NNN reason */
    const uint8_t *eol = find_crlf(p, end);
    if (!eol || eol - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ' ||
        (eol - p > 12 && p[12] != ' ')) {
        return eol || len > MSC_HTTP_MAX_HEADER ? MS_EPARSE : MS_ETRUNC;
    }
    for (int i = 9; i < 12; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return MS_EPARSE;
        }
        out->status = out->status * 10 + (p[i] - '0');
    }
    if (out->status < 100) {
        return MS_EPARSE;
    }
    p = eol + 2;
    long long clen = -1;
    bool chunked = false;
    for (;;) {
        eol = find_crlf(p, end);
        if (!eol || eol - resp > MSC_HTTP_MAX_HEADER) {
            return eol || len > MSC_HTTP_MAX_HEADER ? MS_EPARSE : MS_ETRUNC;
        }
        if (eol == p) {
            p += 2;
            break;
        }
        const uint8_t *colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon || colon == p) {
            return MS_EPARSE;
        }
        char v[128];
        copy_value(v, sizeof(v), colon + 1, eol);
        if (header_is(p, colon, "X-Served-By")) {
            snprintf(out->served_by, sizeof(out->served_by), "%s", v);
        } else if (header_is(p, colon, "Set-Cookie") && !out->cookie[0]) {
            char c[sizeof(out->cookie)];
            copy_value(c, sizeof(c), colon + 1, eol);
            c[strcspn(c, ";")] = 0; /* NAME=VALUE; attributes are not ours to keep */
            snprintf(out->cookie, sizeof(out->cookie), "%s", c);
        } else if (header_is(p, colon, "Content-Length")) {
            uint64_t n;
            if (!parse_u64(v, &n) || n > MSC_HTTP_MAX_BODY || (clen >= 0 && (uint64_t)clen != n)) {
                return MS_EPARSE;
            }
            clen = (long long)n;
        } else if (header_is(p, colon, "Transfer-Encoding")) {
            chunked = strcasecmp(v, "chunked") == 0;
            if (!chunked && strcasecmp(v, "identity") != 0) {
                return MS_EPARSE;
            }
        }
        p = eol + 2;
    }
    buf_t body;
    buf_init(&body);
    int rc = 0;
    if (chunked) {
        rc = parse_chunked(p, end, &body);
    } else if (clen >= 0) {
        if ((size_t)(end - p) < (size_t)clen) {
            rc = MS_ETRUNC;
        } else {
            buf_append(&body, p, (size_t)clen);
        }
    } else if ((size_t)(end - p) > MSC_HTTP_MAX_BODY) {
        rc = MS_EPARSE;
    } else {
        buf_append(&body, p, (size_t)(end - p));
    }
    if (rc) {
        buf_deinit(&body);
        return rc;
    }
    buf_append(&body, "", 1);
    out->body = (char *)body.data;
    out->body_len = body.len - 1;
    return 0;
}

/* Send the request and read until the server closes, within the limits. Returns 0 or a
 * negative code with a reason in why. */
static int exchange(msc_t *m, int fd, const msc_url_t *u, const char *extra, msc_http_result_t *out,
                    char *why, size_t whylen)
{
    char req[2600 + MSC_HTTP_MAX_EXTRA];
    bool v6 = strchr(u->host, ':') != NULL;
    int rl = snprintf(req, sizeof(req),
                      "GET %s HTTP/1.1\r\nHost: %s%s%s:%u\r\nUser-Agent: multisite-fetch/%s\r\n"
                      "Accept: */*\r\n%sConnection: close\r\n\r\n",
                      u->path, v6 ? "[" : "", u->host, v6 ? "]" : "", u->port, MS_VERSION, extra);
    for (int off = 0; off < rl;) {
        ssize_t w = send(fd, req + off, (size_t)(rl - off), MSG_NOSIGNAL);
        if (w <= 0) {
            snprintf(why, whylen, "send: %s",
                     errno == EAGAIN ? "I/O timeout"
                     : w == 0        ? "closed"
                                     : strerror(errno));
            return MS_EIO;
        }
        off += (int)w;
    }
    const size_t cap = MSC_HTTP_MAX_HEADER + MSC_HTTP_MAX_BODY + 64 * 1024; /* chunk framing */
    uint64_t deadline = time_mono_ms() + (uint64_t)msc__io_timeout(m) * RESPONSE_TIMEOUTS;
    buf_t in;
    buf_init(&in);
    int rc = 0;
    for (;;) {
        if (time_mono_ms() >= deadline) {
            snprintf(why, whylen, "response took over %u ms",
                     msc__io_timeout(m) * RESPONSE_TIMEOUTS);
            rc = MS_EAGAIN;
            break;
        }
        if (in.len == cap) {
            snprintf(why, whylen, "response over %zu bytes", cap);
            rc = MS_EPARSE;
            break;
        }
        buf_reserve(&in, 16384);
        size_t room = in.cap - in.len < cap - in.len ? in.cap - in.len : cap - in.len;
        ssize_t r = recv(fd, in.data + in.len, room, 0);
        if (r > 0) {
            in.len += (size_t)r;
            continue;
        }
        if (r == 0) {
            break;
        }
        if (errno == EINTR) {
            continue;
        }
        snprintf(why, whylen, "%s",
                 errno == EAGAIN || errno == EWOULDBLOCK ? "I/O timeout" : strerror(errno));
        rc = errno == EAGAIN || errno == EWOULDBLOCK ? MS_EAGAIN : MS_EIO;
        break;
    }
    if (rc == 0) {
        rc = msc_http_parse(in.data, in.len, out);
        if (rc) {
            snprintf(why, whylen, "%s response (%zu bytes)",
                     rc == MS_ETRUNC ? "truncated" : "malformed", in.len);
        }
    }
    buf_deinit(&in);
    return rc;
}

/* Extra headers -> "Name: value\r\n..." in extra (MSC_HTTP_MAX_EXTRA + 1 bytes). */
static int extra_headers(const char *const *h, size_t n, char *extra)
{
    size_t o = 0;
    extra[0] = 0;
    if (n > MSC_HTTP_MAX_NHDR) {
        return MS_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        const char *colon = strchr(h[i], ':');
        size_t l = strlen(h[i]);
        if (!colon || colon == h[i] || o + l + 2 > MSC_HTTP_MAX_EXTRA) {
            return MS_EINVAL;
        }
        for (const char *c = h[i]; *c; c++) {
            if (((unsigned char)*c < 32 && *c != '\t') || *c == 127) {
                return MS_EINVAL; /* no CR/LF: one header per entry, no injection */
            }
        }
        memcpy(extra + o, h[i], l);
        memcpy(extra + o + l, "\r\n", 3);
        o += l + 2;
    }
    return 0;
}

int msc_http_get(msc_t *m, const char *url, msc_http_result_t *out)
{
    return msc_http_get_with(m, url, NULL, 0, out);
}

int msc_http_get_with(msc_t *m, const char *url, const char *const *headers, size_t n_headers,
                      msc_http_result_t *out)
{
    memset(out, 0, sizeof(*out));
    msc_url_t u;
    char extra[MSC_HTTP_MAX_EXTRA + 1];
    if (msc_url_parse(url, &u) || extra_headers(headers, n_headers, extra)) {
        return MS_EINVAL;
    }
    uint64_t t0 = time_mono_ms();
    msc_call_t call;
    int rc = msc__call_begin(m, u.host, u.port, &call);
    if (rc) {
        return rc;
    }
    for (;;) {
        msc_conn_t *c;
        rc = msc__call_next(m, &call, &c);
        if (rc) {
            break;
        }
        char why[256];
        rc = exchange(m, msc_conn_fd(c), &u, extra, out, why, sizeof(why));
        if (rc == 0 && (out->status == 502 || out->status == 503 || out->status == 504)) {
            snprintf(why, sizeof(why), "HTTP %d", out->status);
            msc_http_result_free(out);
            rc = MS_EIO;
        }
        if (rc == 0) {
            out->addr = *msc_conn_addr(c);
            msc_close(c);
            break;
        }
        msc__add_err(m, msc_conn_addr(c), why);
        msc_report_failure(c, why);
        msc_close(c);
    }
    out->attempts = call.attempts;
    out->elapsed_ms = (uint32_t)(time_mono_ms() - t0);
    return rc == 0 ? 0 : MS_EIO;
}

void msc_http_result_free(msc_http_result_t *r)
{
    if (r) {
        free(r->body);
        r->body = NULL;
        r->body_len = 0;
    }
}
