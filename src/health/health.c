/* health.c: the health module's lifecycle and scheduling: one target per web server, per
 * database page and per load balancer, each with its own timer and verdict tracker; the
 * site verdicts combined from them; the change callback.
 *
 * A target's timer does two jobs: while idle it starts the next probe; while a probe is in
 * flight it is that probe's timeout. Probes start `interval` after the previous one started
 * (a slow probe does not stretch the period), or at once after a refused or reset connection
 * while the target is still UP (hv_record's re-probe), so a dead web server is DOWN after
 * `fall` refusals, within milliseconds.
 *
 * The change callback is deferred through a 0 ms timer: it runs from a clean stack (never
 * inside a libcurl or libuv callback of ours), and several changes in one loop iteration
 * make one call. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

const double health_rtt_bounds_ms[HEALTH_RTT_BUCKETS] = {1,   2.5, 5,   10,   25,   50,
                                                         100, 250, 500, 1000, 2500, 5000};

static void timer_cb(uv_timer_t *tm);

void ht_maybe_free(health_t *h)
{
    if (!h->closing || h->handles > 0) {
        return;
    }
    for (size_t i = 0; i < h->n_targets; i++) {
        ht_target_t *t = h->targets[i];
        free(t->name);
        free(t->url);
        free(t->connect_to);
        free(t->host_header);
        hs_kw_deinit(&t->kw);
        free(t->stats);
        free(t->web_be);
        free(t->db_be);
        free(t);
    }
    free(h->targets);
    for (size_t i = 0; i < h->n_sites; i++) {
        free(h->sites[i].name);
        free(h->sites[i].web);
        free(h->sites[i].web_in);
    }
    free(h->sites);
    free(h);
}

void ht_handle_closed(uv_handle_t *hd)
{
    health_t *h = hd->data;
    h->handles--;
    ht_maybe_free(h);
}

/* ---- verdicts ---- */

static void notify_cb(uv_timer_t *tm)
{
    health_t *h = tm->data;
    h->notify_pending = false;
    if (h->cb && !h->closing) {
        h->cb(h->ud);
    }
}

static void notify(health_t *h)
{
    if (!h->notify_pending && !h->closing) {
        h->notify_pending = true;
        uv_timer_start(&h->notify_timer, notify_cb, 0, 0);
    }
}

static void site_eval(const ht_site_t *s, health_site_t *out)
{
    hv_site_in_t in = {
        .min_web = s->min_web,
        .n_web = s->n_web,
        .web = s->web_in,
        .db = s->db ? &s->db->v : NULL,
        .lb = s->lb ? &s->lb->v : NULL,
    };
    if (s->lb) {
        in.lb_report = s->lb->lb_report;
        in.lb_web_up = s->lb->lb_up;
        in.lb_web_total = s->lb->lb_total;
        in.load = s->lb->load;
    }
    hv_site_eval(&in, out);
}

/* Re-evaluate a site; log a transition; notify when anything a snapshot shows changed. */
static void site_update(health_t *h, ht_site_t *s)
{
    health_site_t nw = s->out;
    site_eval(s, &nw);
    bool moved = nw.state != s->out.state;
    if (moved) {
        nw.since_ms = time_wall_ms();
        nw.transitions++;
    }
    if (moved) {
        log_info("site %s %s: %s", s->name, health_state_str(nw.state), nw.reason);
    }
    double dl = nw.load - s->out.load;
    bool changed = moved || nw.changing != s->out.changing || nw.web_up != s->out.web_up ||
                   nw.db != s->out.db || nw.lb != s->out.lb || dl > 0.01 || dl < -0.01 ||
                   strcmp(nw.reason, s->out.reason) != 0;
    s->out = nw;
    if (changed) {
        notify(h);
    }
}

void ht_done(ht_target_t *t, ht_result_t *r)
{
    health_t *h = t->h;
    ht_site_t *s = &h->sites[t->site];
    uint64_t now_ns = time_mono_ns(), now = now_ns / 1000000;
    double rtt = (double)(now_ns - t->started_ns) / 1e6;
    bool reprobe = false, changed;
    uv_timer_stop(&t->timer);
    if (t->kind == HT_LB && r->lb_report) {
        /* HAProxy applies its own rise/fall to its servers: its report is taken as is. */
        t->lb_report = true;
        t->lb_up = r->stat.web_up;
        t->lb_total = r->stat.web_total;
        t->load = r->stat.load;
        changed = hv_set(&t->v, r->ok, r->reason, now);
    } else {
        changed = hv_record(&t->v, r->ok, r->refused, r->reason, now, &reprobe);
    }
    if (changed) {
        /* A flapping server (rise/fall 1, short interval) must not flood the log; the site
         * transitions below are logged every time (hysteresis and the config bound them). */
        static log_ratelimit_t rl = LOG_RATELIMIT_INIT(30, 10000);
        log_rl(&rl, LOG_LVL_INFO, "site %s: %s %s %s%s%s", s->name,
               t->kind == HT_WEB ? "web server" : "check", t->name, health_state_str(t->v.state),
               r->ok ? "" : ": ", r->ok ? "" : r->reason);
    } else if (!r->ok) {
        log_debug("site %s: %s probe failed: %s", s->name, t->name, r->reason);
    }
    if (r->ok && t->kind != HT_LB && (t->kind == HT_WEB || s->n_web == 0)) {
        /* response time: web servers' probes, or the db page when there are none */
        s->out.rtt_ms = s->out.rtt_ms < 0 ? rtt : 0.7 * s->out.rtt_ms + 0.3 * rtt;
        size_t k = 0;
        while (k < HEALTH_RTT_BUCKETS && rtt > health_rtt_bounds_ms[k]) {
            k++;
        }
        s->out.rtt_hist[k]++;
        s->out.rtt_count++;
        s->out.rtt_sum_ms += rtt;
    }
    site_update(h, s);
    if (h->closing) {
        return;
    }
    uint64_t elapsed = (now_ns - t->started_ns) / 1000000;
    uint64_t delay = reprobe || elapsed >= t->interval_ms ? 0 : t->interval_ms - elapsed;
    uv_timer_start(&t->timer, timer_cb, delay, 0);
}

/* ---- probes ---- */

static void probe_abort(ht_target_t *t, bool report)
{
    if (t->kind != HT_LB && t->type != CONF_PROBE_TCP) {
        ht_http_abort(t, report);
    } else {
        ht_stream_abort(t, report);
    }
}

static void timer_cb(uv_timer_t *tm)
{
    ht_target_t *t = tm->data;
    if (t->attempt && !t->grace) {
        /* libuv runs timers before it polls for I/O. After a stall of the loop (a slow
         * callback, the process descheduled) an answer may be waiting in the socket while
         * the timeout fires: poll once more (1 ms, so not in this timer pass) before
         * blaming the server. */
        t->grace = true;
        uv_timer_start(&t->timer, timer_cb, 1, 0);
        return;
    }
    if (t->attempt) {
        probe_abort(t, true); /* the timeout of the probe in flight */
        return;
    }
    t->grace = false;
    t->started_ns = time_mono_ns();
    if (t->kind != HT_LB && t->type != CONF_PROBE_TCP) {
        ht_http_start(t);
    } else {
        ht_stream_start(t);
    }
    if (t->attempt) {
        uv_timer_start(&t->timer, timer_cb, t->timeout_ms, 0);
    }
}

/* ---- setup ---- */

static ht_target_t *target_new(health_t *h, size_t site, ht_kind_t kind, const char *name)
{
    ht_target_t *t = xcalloc(1, sizeof(*t));
    t->h = h;
    t->site = site;
    t->kind = kind;
    t->name = xstrdup(name);
    t->load = -1.0;
    h->targets = xrealloc(h->targets, (h->n_targets + 1) * sizeof(*h->targets));
    h->targets[h->n_targets++] = t;
    return t;
}

static void target_check(ht_target_t *t, const conf_check_t *c)
{
    t->type = c->type;
    t->interval_ms = c->interval_ms ? c->interval_ms : 1000;
    t->timeout_ms = c->timeout_ms ? c->timeout_ms : 500;
    t->expect_status = c->expect_status;
    t->tls_verify = c->tls_verify;
    hs_kw_init(&t->kw, (const char *const *)c->expect.v, c->expect.n);
    hv_init(&t->v, c->rise, c->fall);
}

static void web_target(health_t *h, size_t si, const conf_site_t *cs, size_t k)
{
    const conf_check_t *c = &cs->web_check;
    ht_target_t *t = target_new(h, si, HT_WEB, cs->web[k].name);
    target_check(t, c);
    t->addr = cs->web[k].addr;
    if (c->type == CONF_PROBE_TCP) {
        return;
    }
    char ab[NET_ADDR_STRLEN];
    net_addr_str(&t->addr, ab, sizeof(ab));
    const char *scheme = c->type == CONF_PROBE_HTTPS ? "https" : "http";
    const char *path = c->path && *c->path ? c->path : "/";
    const char *slash = path[0] == '/' ? "" : "/";
    if (c->host && *c->host) {
        /* The URL names the host (TLS SNI, certificate name); CONNECT_TO sends the
         * connection to the web server's address whatever the host resolves to. */
        t->url = xasprintf("%s://%s:%u%s%s", scheme, c->host, net_addr_port(&t->addr), slash, path);
        t->connect_to = xasprintf("::%s", ab);
        t->host_header = xasprintf("Host: %s", c->host);
    } else {
        t->url = xasprintf("%s://%s%s%s", scheme, ab, slash, path);
    }
}

static void db_target(health_t *h, size_t si, const conf_site_t *cs)
{
    ht_target_t *t = target_new(h, si, HT_DB, "db");
    target_check(t, &cs->db.check);
    t->url = xstrdup(cs->db.url);
    if (cs->db.has_connect) {
        char ab[NET_ADDR_STRLEN];
        t->connect_to = xasprintf("::%s", net_addr_str(&cs->db.connect, ab, sizeof(ab)));
    }
}

static void lb_target(health_t *h, size_t si, const conf_site_t *cs)
{
    ht_target_t *t = target_new(h, si, HT_LB, "lb");
    t->interval_ms = cs->lb.interval_ms ? cs->lb.interval_ms : 500;
    t->timeout_ms = cs->lb.timeout_ms ? cs->lb.timeout_ms : 500;
    t->stats = xstrdup(cs->lb.stats);
    t->web_be = xstrdup(cs->lb.web_backend ? cs->lb.web_backend : "web");
    t->db_be = cs->lb.db_backend && *cs->lb.db_backend ? xstrdup(cs->lb.db_backend) : NULL;
    /* Rise 1: a good report is authoritative. Fall 2 for failed polls (a refused one is
     * re-probed at once): one lost poll does not take the site down. */
    hv_init(&t->v, 1, 2);
}

/* Reload: carry state over from the same target of the same site in prev. */
static void carry_over(health_t *h, const health_t *prev)
{
    for (size_t i = 0; i < h->n_targets; i++) {
        ht_target_t *t = h->targets[i];
        const char *sname = h->sites[t->site].name;
        for (size_t j = 0; j < prev->n_targets; j++) {
            const ht_target_t *p = prev->targets[j];
            if (p->kind != t->kind || strcmp(p->name, t->name) != 0 ||
                strcmp(prev->sites[p->site].name, sname) != 0) {
                continue;
            }
            unsigned rise = t->v.rise, fall = t->v.fall;
            t->v = p->v;
            t->v.rise = rise;
            t->v.fall = fall;
            t->lb_report = p->lb_report;
            t->lb_up = p->lb_up;
            t->lb_total = p->lb_total;
            t->load = p->load;
            break;
        }
    }
    for (size_t i = 0; i < h->n_sites; i++) {
        for (size_t j = 0; j < prev->n_sites && h->sites[i].out.probed; j++) {
            if (strcmp(h->sites[i].name, prev->sites[j].name) == 0 && prev->sites[j].out.probed) {
                h->sites[i].out = prev->sites[j].out;
                break;
            }
        }
    }
}

int health_new(uv_loop_t *loop, const conf_t *conf, const health_t *prev, health_cb_t cb, void *ud,
               health_t **out)
{
    *out = NULL;
    if (!loop || !conf) {
        return MS_EINVAL;
    }
    health_t *h = xcalloc(1, sizeof(*h));
    h->loop = loop;
    h->cb = cb;
    h->ud = ud;
    uv_timer_init(loop, &h->notify_timer);
    h->notify_timer.data = h;
    h->handles++;
    int rc = ht_http_init(h);
    if (rc != 0) {
        health_free(h);
        return rc;
    }
    h->n_sites = conf->n_sites;
    h->sites = xcalloc(conf->n_sites ? conf->n_sites : 1, sizeof(*h->sites));
    for (size_t i = 0; i < conf->n_sites; i++) {
        const conf_site_t *cs = &conf->sites[i];
        ht_site_t *s = &h->sites[i];
        s->name = xstrdup(cs->name);
        s->min_web = cs->min_web;
        s->out.state = HEALTH_UNKNOWN;
        s->out.load = -1.0;
        s->out.rtt_ms = -1.0;
        s->out.probed = cs->monitor != CONF_MONITOR_HEARTBEAT;
        s->web = xcalloc(1, sizeof(*s->web));
        s->web_in = xcalloc(1, sizeof(*s->web_in));
        if (!s->out.probed) {
            /* Another module (heartbeat) knows this site; we leave it UNKNOWN. */
            snprintf(s->out.reason, sizeof(s->out.reason), "not probed (monitor: heartbeat)");
            continue;
        }
        free(s->web);
        free(s->web_in);
        s->n_web = cs->n_web;
        s->web = xcalloc(cs->n_web ? cs->n_web : 1, sizeof(*s->web));
        s->web_in = xcalloc(cs->n_web ? cs->n_web : 1, sizeof(*s->web_in));
        for (size_t k = 0; k < cs->n_web; k++) {
            web_target(h, i, cs, k);
            s->web[k] = h->targets[h->n_targets - 1];
        }
        if (cs->has_db) {
            db_target(h, i, cs);
            s->db = h->targets[h->n_targets - 1];
        }
        if (cs->has_lb) {
            lb_target(h, i, cs);
            s->lb = h->targets[h->n_targets - 1];
        }
    }
    if (prev) {
        carry_over(h, prev);
    }
    for (size_t i = 0; i < h->n_sites; i++) {
        ht_site_t *s = &h->sites[i];
        for (size_t k = 0; k < s->n_web; k++) {
            s->web_in[k].name = s->web[k]->name;
            s->web_in[k].v = &s->web[k]->v;
        }
        if (s->out.probed) {
            site_update(h, s);
        }
    }
    for (size_t i = 0; i < h->n_targets; i++) {
        ht_target_t *t = h->targets[i];
        uv_timer_init(loop, &t->timer);
        t->timer.data = t;
        h->handles++;
        uv_timer_start(&t->timer, timer_cb, 0, 0);
    }
    *out = h;
    return 0;
}

/* Close callback of a target's timer: its data is the target, not h. */
static void target_timer_closed(uv_handle_t *hd)
{
    ht_target_t *t = hd->data;
    health_t *h = t->h;
    h->handles--;
    ht_maybe_free(h);
}

void health_free(health_t *h)
{
    if (!h || h->closing) {
        return;
    }
    h->closing = true;
    for (size_t i = 0; i < h->n_targets; i++) {
        ht_target_t *t = h->targets[i];
        probe_abort(t, false);
        if (t->timer.data) { /* initialised (health_new may have failed before) */
            uv_close((uv_handle_t *)&t->timer, target_timer_closed);
        }
    }
    ht_http_deinit(h);
    uv_timer_stop(&h->notify_timer);
    uv_close((uv_handle_t *)&h->notify_timer, ht_handle_closed);
}

int health_set_web_drained(health_t *h, size_t site, const char *web, bool drained)
{
    if (!h || site >= h->n_sites) {
        return MS_ENOENT;
    }
    ht_site_t *s = &h->sites[site];
    for (size_t k = 0; k < s->n_web; k++) {
        if (strcmp(s->web_in[k].name, web) == 0) {
            if (s->web_in[k].drained != drained) {
                s->web_in[k].drained = drained;
                site_update(h, s);
            }
            return 0;
        }
    }
    return MS_ENOENT;
}

size_t health_site_count(const health_t *h)
{
    return h ? h->n_sites : 0;
}

const health_site_t *health_site(const health_t *h, size_t i)
{
    return h && i < h->n_sites ? &h->sites[i].out : NULL;
}
