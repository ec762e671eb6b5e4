/* client.c: the failover client: per-name address lists with their TTL, the sticky cursor,
 * and connecting with a deadline.
 *
 * Per name the state is
 *
 *     addresses (DNS order) a0 a1 a2 ...     expires_ms     cursor
 *                                ^cursor
 *
 *   connect:        try a[cursor], a[cursor+1], ... (wrapping, each once); the one that
 *                   connects becomes the cursor
 *   report_failure: cursor moves past the failed address (only if it still is the cursor:
 *                   a late report about an address we already left changes nothing)
 *   TTL runs out:   resolve again at the next call; cursor back to 0, the top of the new
 *                   order. A failed resolution keeps the old list (serve stale) and retries
 *                   after STALE_RETRY_MS rather than on every call.
 *   all failed:     every address failed in one call: resolve again at once (at most every
 *                   STALE_RETRY_MS) and try the new list if it differs (msc__call_next).
 *
 * So the client follows the DNS order the authoritative servers chose, changes address
 * only when one fails, and never returns to an address it left before the TTL says the
 * order should be looked at again. */
#include "client/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

/* After a failed re-resolution, the stale list is used and DNS asked again this much later:
 * often enough to pick up a recovered server, rarely enough not to add a DNS timeout to
 * every request while the servers are unreachable. Also the least age of an answer before
 * "every address failed" asks DNS again. */
#define STALE_RETRY_MS 1000

typedef struct {
    bool used;
    char name[256];
    uint16_t port;
    msc_addrs_t list;
    size_t cursor;
    uint64_t expires_ms;
    uint64_t resolved_ms; /* last successful resolution; UINT64_MAX for an IP literal */
    uint64_t last_use_ms;
    uint64_t generation; /* bumped on every resolution: a conn from an older list is stale */
} entry_t;

struct msc {
    net_addr_t servers[MSC_MAX_SERVERS];
    size_t n_servers;
    size_t good_server;
    bool recursive;
    int family;
    uint32_t connect_timeout_ms, io_timeout_ms, dns_timeout_ms, max_ttl_s;
    unsigned max_attempts;
    msc_event_fn on_event;
    void *event_arg;
    msc_clock_fn clock;
    void *clock_arg;
    msc_resolve_fn resolve;
    void *resolve_arg;
    uint64_t generation;
    entry_t names[MSC_MAX_NAMES];
    char err[1024];
};

struct msc_conn {
    msc_t *m;
    int fd;
    net_addr_t addr;
    char name[256];
    uint16_t port;
    size_t index;
    uint64_t generation;
};

static void event(msc_t *m, const char *fmt, ...) MS_PRINTF(2, 3);
static void event(msc_t *m, const char *fmt, ...)
{
    if (!m->on_event) {
        return;
    }
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    m->on_event(m->event_arg, msg);
}

static uint64_t now_ms(msc_t *m)
{
    return m->clock ? m->clock(m->clock_arg) : time_mono_ms();
}

static int wire_resolve(void *arg, const char *name, uint16_t port, msc_addrs_t *out, char *why,
                        size_t whylen)
{
    msc_t *m = arg;
    msc_dns_cfg_t cfg = {m->servers, m->n_servers,      &m->good_server, m->recursive,
                         m->family,  m->dns_timeout_ms, m->max_ttl_s};
    return msc_dns_resolve(&cfg, name, port, out, why, whylen);
}

msc_t *msc_new(const msc_opts_t *opts, char *err, size_t errlen)
{
    static const msc_opts_t defaults = {0};
    char dummy[8];
    if (!err) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    if (!opts) {
        opts = &defaults;
    }
    if (opts->family != AF_UNSPEC && opts->family != AF_INET && opts->family != AF_INET6) {
        snprintf(err, errlen, "family must be AF_INET, AF_INET6 or AF_UNSPEC");
        return NULL;
    }
    msc_t *m = xcalloc(1, sizeof(*m));
    m->family = opts->family;
    m->connect_timeout_ms = opts->connect_timeout_ms ? opts->connect_timeout_ms : 1000;
    m->io_timeout_ms = opts->io_timeout_ms ? opts->io_timeout_ms : 5000;
    m->dns_timeout_ms = opts->dns_timeout_ms ? opts->dns_timeout_ms : 1000;
    m->max_ttl_s = opts->max_ttl_s ? opts->max_ttl_s : 300;
    m->max_attempts = opts->max_attempts;
    m->on_event = opts->on_event;
    m->event_arg = opts->event_arg;
    m->resolve = wire_resolve;
    m->resolve_arg = m;
    if (opts->n_servers > MSC_MAX_SERVERS) {
        snprintf(err, errlen, "at most %d DNS servers", MSC_MAX_SERVERS);
        goto fail;
    }
    for (size_t i = 0; i < opts->n_servers; i++) {
        if (net_parse_addr(opts->servers[i], 53, &m->servers[i])) {
            snprintf(err, errlen, "DNS server '%s': expected ADDR or ADDR:PORT", opts->servers[i]);
            goto fail;
        }
    }
    m->n_servers = opts->n_servers;
    if (m->n_servers == 0) {
        const char *path = opts->resolv_conf ? opts->resolv_conf : "/etc/resolv.conf";
        char *text;
        size_t len;
        if (file_read_all(path, 1 << 20, &text, &len)) {
            snprintf(err, errlen, "%s: cannot read", path);
            goto fail;
        }
        m->n_servers = msc_resolv_conf_parse(text, m->servers, MSC_MAX_SERVERS);
        free(text);
        if (m->n_servers == 0) {
            snprintf(err, errlen, "%s: no usable nameserver line", path);
            goto fail;
        }
        m->recursive = true;
    }
    return m;
fail:
    free(m);
    return NULL;
}

void msc_free(msc_t *m)
{
    free(m);
}

void msc_set_clock(msc_t *m, msc_clock_fn fn, void *arg)
{
    m->clock = fn;
    m->clock_arg = arg;
}

void msc_set_resolver(msc_t *m, msc_resolve_fn fn, void *arg)
{
    m->resolve = fn ? fn : wire_resolve;
    m->resolve_arg = fn ? arg : m;
}

const char *msc_last_error(const msc_t *m)
{
    return m->err;
}

static void list_str(const msc_addrs_t *l, char *buf, size_t len)
{
    size_t o = 0;
    buf[0] = 0;
    for (size_t i = 0; i < l->n && o < len; i++) {
        char a[NET_ADDR_STRLEN];
        o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? ", " : "",
                              net_addr_str(&l->addr[i], a, sizeof(a)));
    }
}

static entry_t *entry_get(msc_t *m, const char *name, uint16_t port)
{
    entry_t *lru = &m->names[0];
    for (size_t i = 0; i < MSC_MAX_NAMES; i++) {
        entry_t *e = &m->names[i];
        if (e->used && e->port == port && strcasecmp(e->name, name) == 0) {
            return e;
        }
        if (!e->used || (lru->used && e->last_use_ms < lru->last_use_ms)) {
            lru = e;
        }
    }
    memset(lru, 0, sizeof(*lru));
    lru->used = true;
    snprintf(lru->name, sizeof(lru->name), "%s", name);
    lru->port = port;
    return lru;
}

/* An IP literal needs no DNS and never expires. */
static bool literal(const char *name, uint16_t port, msc_addrs_t *out)
{
    if (net_parse_ip(name, &out->addr[0])) {
        return false;
    }
    if (out->addr[0].sa.sa_family == AF_INET) {
        out->addr[0].sin.sin_port = htons(port);
    } else {
        out->addr[0].sin6.sin6_port = htons(port);
    }
    out->n = 1;
    out->ttl = UINT32_MAX;
    return true;
}

static int refresh(msc_t *m, entry_t *e, uint64_t now)
{
    msc_addrs_t fresh = {0};
    char why[512] = "";
    int rc = 0;
    if (!literal(e->name, e->port, &fresh)) {
        rc = m->resolve(m->resolve_arg, e->name, e->port, &fresh, why, sizeof(why));
    }
    if (rc == 0 && fresh.n == 0) {
        rc = MS_ENOENT;
        snprintf(why, sizeof(why), "%s: no address", e->name);
    }
    if (rc) {
        if (e->list.n > 0) {
            event(m, "resolve %s failed (%s); keeping the old list for now", e->name, why);
            e->expires_ms = now + STALE_RETRY_MS;
            return 0;
        }
        snprintf(m->err, sizeof(m->err), "resolve %s: %s", e->name, why);
        return rc;
    }
    if (fresh.ttl != UINT32_MAX && fresh.ttl > m->max_ttl_s) {
        fresh.ttl = m->max_ttl_s; /* a long TTL would pin clients to an old order */
    }
    e->list = fresh;
    e->cursor = 0;
    e->generation = ++m->generation;
    e->resolved_ms = fresh.ttl == UINT32_MAX ? UINT64_MAX : now;
    e->expires_ms = fresh.ttl == UINT32_MAX ? UINT64_MAX : now + (uint64_t)fresh.ttl * 1000;
    if (fresh.ttl != UINT32_MAX) {
        char l[1024];
        list_str(&e->list, l, sizeof(l));
        event(m, "resolved %s: %s (ttl %u s)", e->name, l, fresh.ttl);
    }
    return 0;
}

static int lookup(msc_t *m, const char *name, uint16_t port, entry_t **out)
{
    if (strlen(name) >= sizeof(((entry_t *)0)->name)) {
        snprintf(m->err, sizeof(m->err), "name too long");
        return MS_EINVAL;
    }
    uint64_t now = now_ms(m);
    entry_t *e = entry_get(m, name, port);
    e->last_use_ms = now;
    if (e->list.n == 0 || now >= e->expires_ms) {
        int rc = refresh(m, e, now);
        if (rc) {
            e->used = e->list.n > 0;
            return rc;
        }
    }
    *out = e;
    return 0;
}

int msc_lookup(msc_t *m, const char *name, uint16_t port, const msc_addrs_t **out, size_t *cursor)
{
    entry_t *e;
    int rc = lookup(m, name, port, &e);
    if (rc == 0) {
        *out = &e->list;
        *cursor = e->cursor;
    }
    return rc;
}

int msc_tcp_connect(const net_addr_t *a, uint32_t timeout_ms, char *why, size_t whylen)
{
    int fd = socket(a->sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(why, whylen, "socket: %s", strerror(errno));
        return MS_EIO;
    }
    if (connect(fd, &a->sa, net_addr_len(a)) == 0) {
        return fd;
    }
    if (errno != EINPROGRESS) {
        snprintf(why, whylen, "%s", strerror(errno));
        close(fd);
        return MS_EIO;
    }
    uint64_t deadline = time_mono_ms() + timeout_ms;
    for (;;) {
        uint64_t now = time_mono_ms();
        if (now >= deadline) {
            snprintf(why, whylen, "connect timeout (%u ms)", timeout_ms);
            close(fd);
            return MS_EAGAIN;
        }
        struct pollfd p = {fd, POLLOUT, 0};
        int r = poll(&p, 1, (int)(deadline - now));
        if (r < 0 && errno != EINTR) {
            snprintf(why, whylen, "poll: %s", strerror(errno));
            close(fd);
            return MS_EIO;
        }
        if (r > 0) {
            break;
        }
    }
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
        snprintf(why, whylen, "%s", strerror(soerr ? soerr : errno));
        close(fd);
        return MS_EIO;
    }
    return fd;
}

/* The caller's socket: blocking, with io_timeout on every read and write. */
static void make_caller_socket(msc_t *m, int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) {
        (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    }
    struct timeval tv = {m->io_timeout_ms / 1000, (m->io_timeout_ms % 1000) * 1000};
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Append "ADDR: why" to m->err. */
static void add_err(msc_t *m, const net_addr_t *a, const char *why)
{
    size_t o = strlen(m->err);
    char s[NET_ADDR_STRLEN];
    if (o + 1 < sizeof(m->err)) {
        snprintf(m->err + o, sizeof(m->err) - o, "%s%s: %s", o ? "; " : "",
                 net_addr_str(a, s, sizeof(s)), why);
    }
}

/* Connect to the first address from the cursor on that this call has not tried yet, within
 * the attempt budget. */
static int connect_entry(msc_t *m, entry_t *e, msc_call_t *call, msc_conn_t **out)
{
    size_t n = e->list.n;
    unsigned budget = m->max_attempts ? m->max_attempts : (unsigned)n;
    for (size_t k = 0; k < n && call->budget_used < budget; k++) {
        size_t i = (e->cursor + k) % n;
        if (call->tried & (1ULL << i)) {
            continue;
        }
        call->tried |= 1ULL << i;
        call->attempts++;
        call->budget_used++;
        const net_addr_t *a = &e->list.addr[i];
        char why[256], as[NET_ADDR_STRLEN];
        int fd = msc_tcp_connect(a, m->connect_timeout_ms, why, sizeof(why));
        if (fd < 0) {
            add_err(m, a, why);
            event(m, "%s: %s, trying the next address", net_addr_str(a, as, sizeof(as)), why);
            continue;
        }
        make_caller_socket(m, fd);
        if (i != e->cursor) {
            char from[NET_ADDR_STRLEN];
            event(m, "now using %s (was %s)", net_addr_str(a, as, sizeof(as)),
                  net_addr_str(&e->list.addr[e->cursor], from, sizeof(from)));
        }
        e->cursor = i;
        msc_conn_t *c = xcalloc(1, sizeof(*c));
        c->m = m;
        c->fd = fd;
        c->addr = *a;
        snprintf(c->name, sizeof(c->name), "%s", e->name);
        c->port = e->port;
        c->index = i;
        c->generation = e->generation;
        *out = c;
        return 0;
    }
    return MS_EIO;
}

static void all_failed(msc_t *m, const entry_t *e, const msc_call_t *call)
{
    char prefix[400];
    if (call->refreshed) {
        snprintf(prefix, sizeof(prefix),
                 "%s:%u: every address failed, also after asking DNS "
                 "again (%u tried): ",
                 e->name, e->port, call->attempts);
    } else {
        snprintf(prefix, sizeof(prefix), "%s:%u: %u of %zu address%s failed: ", e->name, e->port,
                 call->attempts, e->list.n, e->list.n == 1 ? "" : "es");
    }
    size_t pl = strlen(prefix), el = strlen(m->err);
    if (pl + el + 1 > sizeof(m->err)) {
        el = sizeof(m->err) - pl - 1;
    }
    memmove(m->err + pl, m->err, el);
    memcpy(m->err, prefix, pl);
    m->err[pl + el] = 0;
}

static bool same_list(const msc_addrs_t *a, const msc_addrs_t *b)
{
    if (a->n != b->n) {
        return false;
    }
    for (size_t i = 0; i < a->n; i++) {
        if (net_addr_len(&a->addr[i]) != net_addr_len(&b->addr[i]) ||
            memcmp(&a->addr[i], &b->addr[i], net_addr_len(&a->addr[i])) != 0) {
            return false;
        }
    }
    return true;
}

int msc__call_begin(msc_t *m, const char *name, uint16_t port, msc_call_t *call)
{
    memset(call, 0, sizeof(*call));
    m->err[0] = 0;
    entry_t *e;
    int rc = lookup(m, name, port, &e);
    call->entry = rc ? NULL : e;
    return rc;
}

/* When every address failed, the order we hold may be old news: the DNS may already list a
 * site that came back, or have dropped the ones that died. So before giving up, ask again
 * once, unless we asked less than STALE_RETRY_MS ago (then the answer is what we have), and
 * try the new list only if it differs from the one that just failed. This is the one case
 * where the client resolves before the TTL runs out: nothing it holds works. */
int msc__call_next(msc_t *m, msc_call_t *call, msc_conn_t **out)
{
    entry_t *e = call->entry;
    int rc = connect_entry(m, e, call, out);
    if (rc == 0) {
        return 0;
    }
    uint64_t now = now_ms(m);
    if (!call->refreshed && e->resolved_ms != UINT64_MAX &&
        now - e->resolved_ms >= STALE_RETRY_MS) {
        call->refreshed = true;
        msc_addrs_t old = e->list;
        uint64_t gen = e->generation;
        event(m, "every address of %s failed; asking DNS again", e->name);
        if (refresh(m, e, now) == 0 && e->generation != gen && !same_list(&old, &e->list)) {
            call->tried = 0;
            call->budget_used = 0;
            rc = connect_entry(m, e, call, out);
            if (rc == 0) {
                return 0;
            }
        }
    }
    all_failed(m, e, call);
    return MS_EIO;
}

int msc_connect(msc_t *m, const char *name, uint16_t port, msc_conn_t **out)
{
    msc_call_t call;
    int rc = msc__call_begin(m, name, port, &call);
    if (rc) {
        return rc;
    }
    return msc__call_next(m, &call, out);
}

int msc_conn_fd(const msc_conn_t *c)
{
    return c->fd;
}

const net_addr_t *msc_conn_addr(const msc_conn_t *c)
{
    return &c->addr;
}

void msc_report_failure(msc_conn_t *c, const char *why)
{
    msc_t *m = c->m;
    for (size_t i = 0; i < MSC_MAX_NAMES; i++) {
        entry_t *e = &m->names[i];
        if (!e->used || e->port != c->port || strcasecmp(e->name, c->name) != 0) {
            continue;
        }
        char as[NET_ADDR_STRLEN];
        event(m, "%s: %s", net_addr_str(&c->addr, as, sizeof(as)), why ? why : "failed");
        if (e->generation == c->generation && e->cursor == c->index && e->list.n > 0) {
            e->cursor = (c->index + 1) % e->list.n;
        }
        return;
    }
}

void msc_close(msc_conn_t *c)
{
    if (!c) {
        return;
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    free(c);
}

/* ---- for http.c ---- */

void msc__add_err(msc_t *m, const net_addr_t *a, const char *why)
{
    add_err(m, a, why);
}

uint32_t msc__io_timeout(const msc_t *m)
{
    return m->io_timeout_ms;
}
