/* heartbeat.c: the heartbeat module on the control-plane loop: UDP sockets, the send timer,
 * the period-boundary timer, and the config digest.
 *
 * Sending: HB_TX_PER_INTERVAL datagrams per configured interval to every heartbeat peer of
 * every other site, each with its own sequence number (so each is individually
 * replay-checked), from the listen socket of the peer's address family (peers may filter by
 * source address). Why more than one per interval: the liveness rule wants a heartbeat in
 * EVERY period, and with 30% random loss 5 datagrams per period leave one period in
 * 0.3^5 = 1/412 empty: about 3 spurious DOWNs in 10 minutes. 15 per period make it
 * 0.3^15 = 1.4e-8 per period (docs/heartbeat.md has the arithmetic). A datagram is ~130 bytes,
 * so this is ~4 KB/s per peer.
 *
 * Receiving: one static buffer (libuv hands us one datagram at a time on this thread), larger
 * than any heartbeat, so a bigger datagram arrives flagged partial and is counted oversized.
 *
 * Evaluation: on every accepted datagram (a report of DOWN takes effect at once) and at every
 * period boundary (where liveness changes, and where load/rtt are folded in). */
#include "heartbeat/internal.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HB_TX_PER_INTERVAL 3
#define HB_RXBUF           512 /* > HB_MAX_LEN: larger datagrams are flagged UV_UDP_PARTIAL */

typedef struct {
    uv_udp_t h; /* first: the handle pointer is the struct pointer */
    net_addr_t addr;
    hb_t *hb;
} hb_sock_t;

struct hb {
    uv_loop_t *loop;
    hb_cb_t cb;
    void *ud;
    hb_keys_t keys;
    hb_core_t core;
    char self_name[HB_NAME_MAX + 1];
    char id[HB_NAME_MAX + 1];
    uint64_t epoch, seq;
    hb_self_t self;
    unsigned tx_every_ms;
    char *key_file;
    hb_sock_t **socks; /* each its own allocation: open handles never move */
    size_t n_socks;
    net_addr_t *peers;
    size_t n_peers;
    uv_timer_t tx_timer, eval_timer;
    unsigned open_handles;
    bool closing;
    uint8_t rxbuf[HB_RXBUF];
};

static_assert(HB_RXBUF > HB_MAX_LEN, "oversized datagrams must be detectable");

/* Every open handle holds a reference; the last close frees everything (after hb_free). */
static void release(hb_t *hb)
{
    if (--hb->open_handles > 0 || !hb->closing) {
        return;
    }
    hb_core_deinit(&hb->core);
    hb_keys_deinit(&hb->keys);
    free(hb->socks);
    free(hb->peers);
    free(hb->key_file);
    free(hb);
}

static void on_timer_close(uv_handle_t *h)
{
    release(h->data);
}

static void on_sock_close(uv_handle_t *h)
{
    hb_sock_t *s = (hb_sock_t *)h;
    hb_t *hb = s->hb;
    free(s);
    release(hb);
}

void hb_free(hb_t *hb)
{
    if (!hb || hb->closing) {
        return;
    }
    hb->closing = true;
    hb->open_handles++; /* held across the loop below, so nothing is freed under it */
    for (size_t i = 0; i < hb->n_socks; i++) {
        uv_close((uv_handle_t *)&hb->socks[i]->h, on_sock_close);
    }
    hb->n_socks = 0;
    uv_close((uv_handle_t *)&hb->tx_timer, on_timer_close);
    uv_close((uv_handle_t *)&hb->eval_timer, on_timer_close);
    release(hb);
}

static uint16_t load_wire(double load)
{
    if (!(load >= 0)) {
        return HB_LOAD_NONE;
    }
    return load >= 1 ? HB_LOAD_SCALE : (uint16_t)(load * HB_LOAD_SCALE + 0.5);
}

static uint32_t rtt_wire(double ms)
{
    if (!(ms >= 0)) {
        return HB_RTT_NONE;
    }
    return ms * 1000.0 >= (double)(HB_RTT_NONE - 1) ? HB_RTT_NONE - 1 : (uint32_t)(ms * 1000.0);
}

static void send_now(hb_t *hb)
{
    hb_msg_t m = {
        .type = HB_TYPE_BEAT,
        .key_id = hb->keys.ids[hb->keys.newest],
        .epoch = hb->epoch,
        .seq = ++hb->seq,
        .ts_ms = time_wall_ms(),
        .state = (uint8_t)hb->self.state,
        .reason = hb->self.reason,
        .load = load_wire(hb->self.load),
        .rtt_us = rtt_wire(hb->self.rtt_ms),
    };
    memcpy(m.digest, hb->core.digest, HB_DIGEST_LEN);
    memcpy(m.site, hb->self_name, sizeof(m.site));
    memcpy(m.sender, hb->id, sizeof(m.sender));
    uint8_t out[HB_MAX_LEN];
    size_t len = hb_encode(&m, hb->keys.bytes + hb->keys.newest * HB_KEY_LEN, out, sizeof(out));
    assert(len > 0); /* lengths were checked in hb_new */
    for (size_t i = 0; i < hb->n_peers; i++) {
        const net_addr_t *a = &hb->peers[i];
        hb_sock_t *s = NULL;
        for (size_t k = 0; k < hb->n_socks && !s; k++) {
            if (hb->socks[k]->addr.sa.sa_family == a->sa.sa_family) {
                s = hb->socks[k];
            }
        }
        int rc = UV_EAFNOSUPPORT;
        if (s) {
            uv_buf_t b = uv_buf_init((char *)out, (unsigned)len);
            rc = uv_udp_try_send(&s->h, &b, 1, &a->sa);
        }
        if (rc >= 0) {
            hb->core.stats.tx++;
            continue;
        }
        hb->core.stats.tx_err++;
        static log_ratelimit_t rl = LOG_RATELIMIT_INIT(5, 60000);
        char as[NET_ADDR_STRLEN];
        log_rl(&rl, LOG_LVL_WARN, "heartbeat: cannot send to %s: %s",
               net_addr_str(a, as, sizeof(as)),
               s ? uv_strerror(rc) : "no listen address of that family");
    }
}

static void on_tx(uv_timer_t *t)
{
    send_now(t->data);
}

static void on_eval(uv_timer_t *t);

static void arm_eval(hb_t *hb)
{
    uint64_t p = hb->core.t.period_ms, now = time_mono_ms();
    /* +1: wake just past the boundary, never just before it. */
    uv_timer_start(&hb->eval_timer, on_eval, p - now % p + 1, 0);
}

static void on_eval(uv_timer_t *t)
{
    hb_t *hb = t->data;
    bool changed = hb_core_eval(&hb->core, time_mono_ms(), true);
    arm_eval(hb);
    if (changed && hb->cb) {
        hb->cb(hb->ud);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    hb_t *hb = ((hb_sock_t *)h)->hb;
    *buf = uv_buf_init((char *)hb->rxbuf, sizeof(hb->rxbuf));
}

static void on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *addr,
                    unsigned flags)
{
    hb_t *hb = ((hb_sock_t *)h)->hb;
    static log_ratelimit_t rl = LOG_RATELIMIT_INIT(10, 60000);
    if (nread < 0) {
        log_rl(&rl, LOG_LVL_WARN, "heartbeat: receive error: %s", uv_strerror((int)nread));
        return;
    }
    if (!addr) {
        return; /* nothing more to read */
    }
    hb_rej_t r;
    if (flags & UV_UDP_PARTIAL) {
        r = HB_REJ_OVERSIZED;
        hb->core.stats.rej_oversized++;
    } else {
        uint64_t now = time_mono_ms();
        r = hb_core_rx(&hb->core, (const uint8_t *)buf->base, (size_t)nread, now, time_wall_ms());
        if (r == HB_OK) {
            if (hb_core_eval(&hb->core, now, false) && hb->cb) {
                hb->cb(hb->ud);
            }
            return;
        }
    }
    net_addr_t from;
    memset(&from, 0, sizeof(from));
    memcpy(&from, addr,
           addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    char as[NET_ADDR_STRLEN];
    log_rl(&rl, LOG_LVL_WARN, "heartbeat: dropped %zd bytes from %s: %s", nread,
           net_addr_str(&from, as, sizeof(as)), hb_rej_str(r));
}

/* A new socket bound to a and receiving, or NULL (logged; a half-made one is closed). */
static hb_sock_t *open_socket(hb_t *hb, const net_addr_t *a)
{
    char as[NET_ADDR_STRLEN];
    net_addr_str(a, as, sizeof(as));
    hb_sock_t *s = xcalloc(1, sizeof(*s));
    s->hb = hb;
    s->addr = *a;
    int rc = uv_udp_init(hb->loop, &s->h);
    if (rc != 0) {
        log_err("heartbeat: %s: %s", as, uv_strerror(rc));
        free(s);
        return NULL;
    }
    hb->open_handles++;
    rc = uv_udp_bind(&s->h, &a->sa, a->sa.sa_family == AF_INET6 ? UV_UDP_IPV6ONLY : 0);
    if (rc == 0) {
        rc = uv_udp_recv_start(&s->h, on_alloc, on_recv);
    }
    if (rc != 0) {
        log_err("heartbeat: cannot listen on UDP %s: %s", as, uv_strerror(rc));
        uv_close((uv_handle_t *)&s->h, on_sock_close);
        return NULL;
    }
    return s;
}

static bool same_addr(const net_addr_t *a, const net_addr_t *b)
{
    return a->sa.sa_family == b->sa.sa_family && net_addr_len(a) == net_addr_len(b) &&
           memcmp(a, b, net_addr_len(a)) == 0;
}

/* Everything hb_new and hb_reload check and read before they change anything. */
typedef struct {
    hb_keys_t keys;
    const char **names;
} hb_prep_t;

static int prepare(const conf_t *conf, hb_prep_t *p)
{
    const conf_hb_t *ch = &conf->hb;
    memset(p, 0, sizeof(*p));
    if (!ch->enabled || ch->self_site >= conf->n_sites || sodium_init() < 0) {
        log_err("heartbeat: no heartbeat section (or libsodium failed to start)");
        return MS_ECONF;
    }
    if (!ch->id || !ch->id[0] || strlen(ch->id) > HB_NAME_MAX) {
        log_err("heartbeat: id '%s' must have 1 to %d bytes", ch->id ? ch->id : "", HB_NAME_MAX);
        return MS_ECONF;
    }
    for (size_t i = 0; i < conf->n_sites; i++) {
        if (strlen(conf->sites[i].name) > HB_NAME_MAX) {
            log_err("heartbeat: site name '%s' is longer than %d bytes", conf->sites[i].name,
                    HB_NAME_MAX);
            return MS_ECONF;
        }
    }
    char why[400];
    if (hb_keys_load(ch->key_file, true, &p->keys, why, sizeof(why)) != 0) {
        log_err("heartbeat: %s", why);
        return MS_ECONF;
    }
    p->names = xcalloc(conf->n_sites, sizeof(*p->names));
    for (size_t i = 0; i < conf->n_sites; i++) {
        p->names[i] = conf->sites[i].name;
    }
    return 0;
}

/* Peers, identity and timers from conf (sockets and keys are done by the caller). */
static void apply(hb_t *hb, const conf_t *conf)
{
    const conf_hb_t *ch = &conf->hb;
    snprintf(hb->self_name, sizeof(hb->self_name), "%s", conf->sites[ch->self_site].name);
    snprintf(hb->id, sizeof(hb->id), "%s", ch->id);
    free(hb->key_file);
    hb->key_file = xstrdup(ch->key_file);
    hb->n_peers = 0;
    for (size_t i = 0; i < conf->n_sites; i++) {
        if (i == ch->self_site) {
            continue;
        }
        const conf_addrs_t *p = &conf->sites[i].hb_peers;
        hb->peers = xrealloc(hb->peers, (hb->n_peers + p->n) * sizeof(*hb->peers));
        memcpy(hb->peers + hb->n_peers, p->v, p->n * sizeof(*p->v));
        hb->n_peers += p->n;
    }
    unsigned every = ch->interval_ms / HB_TX_PER_INTERVAL;
    hb->tx_every_ms = every ? every : 1;
    uv_timer_start(&hb->tx_timer, on_tx, 0, hb->tx_every_ms);
    arm_eval(hb);
}

int hb_new(uv_loop_t *loop, const conf_t *conf, hb_cb_t cb, void *ud, hb_t **out)
{
    const conf_hb_t *ch = &conf->hb;
    *out = NULL;
    hb_prep_t p;
    int rc = prepare(conf, &p);
    if (rc != 0) {
        return rc;
    }
    hb_t *hb = xcalloc(1, sizeof(*hb));
    hb->loop = loop;
    hb->cb = cb;
    hb->ud = ud;
    hb->keys = p.keys;
    uint8_t digest[HB_DIGEST_LEN];
    hb_conf_digest(conf, digest);
    hb_timing_t t = {ch->period_ms, ch->periods, ch->max_skew_ms};
    hb_core_init(&hb->core, p.names, conf->n_sites, ch->self_site, &t, &hb->keys, digest);
    free(p.names);
    /* Random boot epoch: a restarted sender is a new (sender, epoch) stream. */
    randombytes_buf(&hb->epoch, sizeof(hb->epoch));
    hb->self = (hb_self_t){HEALTH_UNKNOWN, HB_REASON_STARTING, -1, -1};
    uv_timer_init(loop, &hb->tx_timer);
    uv_timer_init(loop, &hb->eval_timer);
    hb->tx_timer.data = hb->eval_timer.data = hb;
    hb->open_handles += 2;
    hb->socks = xcalloc(ch->listen.n, sizeof(*hb->socks));
    for (size_t i = 0; i < ch->listen.n; i++) {
        hb_sock_t *s = open_socket(hb, &ch->listen.v[i]);
        if (!s) {
            hb_free(hb);
            return MS_EIO;
        }
        hb->socks[hb->n_socks++] = s;
    }
    apply(hb, conf);
    log_info("heartbeat: site %s sender %s: %zu peers, %u per %ums, period %ums x %u, key %u",
             hb->self_name, hb->id, hb->n_peers, HB_TX_PER_INTERVAL, ch->interval_ms, ch->period_ms,
             ch->periods, hb->keys.ids[hb->keys.newest]);
    *out = hb;
    return 0;
}

int hb_reload(hb_t *hb, const conf_t *conf)
{
    const conf_hb_t *ch = &conf->hb;
    hb_prep_t p;
    int rc = prepare(conf, &p);
    if (rc != 0) {
        return rc;
    }
    /* New sockets first: on failure nothing has changed. */
    size_t n_new = 0;
    hb_sock_t **socks = xcalloc(ch->listen.n, sizeof(*socks));
    bool *kept = xcalloc(hb->n_socks + 1, sizeof(*kept));
    for (size_t i = 0; i < ch->listen.n && rc == 0; i++) {
        hb_sock_t *s = NULL;
        for (size_t k = 0; k < hb->n_socks && !s; k++) {
            if (!kept[k] && same_addr(&hb->socks[k]->addr, &ch->listen.v[i])) {
                s = hb->socks[k];
                kept[k] = true;
            }
        }
        if (!s && !(s = open_socket(hb, &ch->listen.v[i]))) {
            rc = MS_EIO;
            break;
        }
        socks[n_new++] = s;
    }
    if (rc != 0) {
        for (size_t i = 0; i < n_new; i++) {
            bool old = false;
            for (size_t k = 0; k < hb->n_socks; k++) {
                old = old || socks[i] == hb->socks[k];
            }
            if (!old) {
                uv_close((uv_handle_t *)&socks[i]->h, on_sock_close);
            }
        }
        free(socks);
        free(kept);
        free(p.names);
        hb_keys_deinit(&p.keys);
        return rc;
    }
    for (size_t k = 0; k < hb->n_socks; k++) {
        if (!kept[k]) {
            uv_close((uv_handle_t *)&hb->socks[k]->h, on_sock_close);
        }
    }
    free(kept);
    free(hb->socks);
    hb->socks = socks;
    hb->n_socks = n_new;
    hb_keys_deinit(&hb->keys);
    hb->keys = p.keys; /* the core points at hb->keys: same address, new contents */
    uint8_t digest[HB_DIGEST_LEN];
    hb_conf_digest(conf, digest);
    hb_timing_t t = {ch->period_ms, ch->periods, ch->max_skew_ms};
    hb_core_reconf(&hb->core, p.names, conf->n_sites, ch->self_site, &t, digest, time_mono_ms());
    free(p.names);
    apply(hb, conf);
    log_info("heartbeat: reloaded: site %s sender %s: %zu peers, period %ums x %u, key %u",
             hb->self_name, hb->id, hb->n_peers, ch->period_ms, ch->periods,
             hb->keys.ids[hb->keys.newest]);
    if (hb_core_eval(&hb->core, time_mono_ms(), true) && hb->cb) {
        hb->cb(hb->ud);
    }
    return 0;
}

void hb_set_self(hb_t *hb, const hb_self_t *self)
{
    bool news = self->state != hb->self.state || self->reason != hb->self.reason;
    hb->self = *self;
    if (news && !hb->closing) {
        send_now(hb);
    }
}

const hb_site_t *hb_site(const hb_t *hb, size_t i)
{
    if (i >= hb->core.n_sites || i == hb->core.self) {
        return NULL;
    }
    return &hb->core.sites[i].view;
}

void hb_get_stats(const hb_t *hb, hb_stats_t *out)
{
    *out = hb->core.stats;
}

/* ---- config digest ---- */

static void h_bytes(crypto_generichash_state *st, const void *p, size_t n)
{
    uint8_t l[4];
    wr_u32(l, (uint32_t)n);
    crypto_generichash_update(st, l, 4);
    crypto_generichash_update(st, p, n);
}

static void h_u32(crypto_generichash_state *st, uint32_t v)
{
    uint8_t b[4];
    wr_u32(b, v);
    crypto_generichash_update(st, b, 4);
}

/* qsort_r (glibc) comparators: the context is the conf, so any thread may digest. */
static int cmp_site(const void *a, const void *b, void *ctx)
{
    const conf_t *c = ctx;
    return strcmp(c->sites[*(const size_t *)a].name, c->sites[*(const size_t *)b].name);
}

static int cmp_name(const void *a, const void *b, void *ctx)
{
    const conf_t *c = ctx;
    return strcasecmp(c->names[*(const size_t *)a].name, c->names[*(const size_t *)b].name);
}

/* Sites and names are hashed in sorted order: reordering the sections of the file is not a
 * disagreement. A name's own site list keeps its order: that is its static priority. */
void hb_conf_digest(const conf_t *conf, uint8_t out[HB_DIGEST_LEN])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, (const uint8_t *)"multisite conf digest v1", 24, HB_DIGEST_LEN);
    size_t n = conf->n_sites > conf->n_names ? conf->n_sites : conf->n_names;
    size_t *ord = xcalloc(n ? n : 1, sizeof(*ord));
    for (size_t i = 0; i < conf->n_sites; i++) {
        ord[i] = i;
    }
    qsort_r(ord, conf->n_sites, sizeof(*ord), cmp_site, (void *)conf);
    h_u32(&st, (uint32_t)conf->n_sites);
    for (size_t k = 0; k < conf->n_sites; k++) {
        const conf_site_t *s = &conf->sites[ord[k]];
        h_bytes(&st, s->name, strlen(s->name));
        h_u32(&st, (uint32_t)s->addrs.n);
        for (size_t j = 0; j < s->addrs.n; j++) {
            const net_addr_t *a = &s->addrs.v[j];
            if (a->sa.sa_family == AF_INET6) {
                h_bytes(&st, &a->sin6.sin6_addr, 16);
            } else {
                h_bytes(&st, &a->sin.sin_addr, 4);
            }
        }
    }
    for (size_t i = 0; i < conf->n_names; i++) {
        ord[i] = i;
    }
    qsort_r(ord, conf->n_names, sizeof(*ord), cmp_name, (void *)conf);
    h_u32(&st, (uint32_t)conf->n_names);
    for (size_t k = 0; k < conf->n_names; k++) {
        const conf_name_t *nm = &conf->names[ord[k]];
        char lower[256];
        size_t l = strlen(nm->name);
        l = l < sizeof(lower) ? l : sizeof(lower) - 1;
        for (size_t j = 0; j < l; j++) {
            lower[j] =
                (char)(nm->name[j] >= 'A' && nm->name[j] <= 'Z' ? nm->name[j] + 32 : nm->name[j]);
        }
        if (l > 0 && lower[l - 1] == '.') {
            l--;
        }
        h_bytes(&st, lower, l);
        h_u32(&st, (uint32_t)nm->n_sites);
        for (size_t j = 0; j < nm->n_sites; j++) {
            const char *sn = conf->sites[nm->sites[j]].name;
            h_bytes(&st, sn, strlen(sn));
        }
        h_u32(&st, nm->ttl);
        h_u32(&st, nm->fallback);
        h_u32(&st, nm->partition);
    }
    free(ord);
    crypto_generichash_final(&st, out, HB_DIGEST_LEN);
}
