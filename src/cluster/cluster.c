/* cluster.c: site availability from probes and heartbeats, and snapshot publishing. */
#include "cluster.h"

#include "health/health.h"
#include "heartbeat/heartbeat.h"

#include <stdlib.h>
#include <string.h>

#define MAX_SITES 64

struct cluster {
    uv_loop_t *loop;
    health_t *health;
    hb_t *hb;
    uint8_t hb_digest[HB_DIGEST_LEN]; /* of the config the heartbeats run with */
    conf_hb_t hb_conf;                /* its settings (pointers not owned: compare only) */
    net_addr_t *hb_listen;            /* private copy of hb_conf.listen */
    size_t hb_n_sites;
};

/* Our own site's verdict, as the heartbeats carry it. */
static void tell_peers(cluster_t *c, const conf_t *conf)
{
    if (!c->hb || !c->health || conf->hb.self_site >= health_site_count(c->health)) {
        return;
    }
    const health_site_t *hs = health_site(c->health, conf->hb.self_site);
    hb_self_t self = {hs->state, HB_REASON_OK, hs->load, hs->rtt_ms};
    if (hs->state == HEALTH_UNKNOWN) {
        self.reason = HB_REASON_STARTING;
    } else if (hs->state == HEALTH_DOWN) {
        const conf_site_t *cs = &conf->sites[conf->hb.self_site];
        if (hs->web_total && hs->web_up < cs->min_web) {
            self.reason = HB_REASON_WEB;
        } else if (hs->db == HEALTH_DOWN) {
            self.reason = HB_REASON_DB;
        } else {
            self.reason = HB_REASON_LB;
        }
    }
    hb_set_self(c->hb, &self);
}

static void log_changes(const snap_t *cur, const snap_t *s)
{
    for (size_t i = 0; i < s->n_lb; i++) {
        const snap_lb_t *lb = &s->lb[i];
        const snap_lb_t *old = i < cur->n_lb ? &cur->lb[i] : NULL;
        if (old && old->answer_set == lb->answer_set && old->servfail == lb->servfail &&
            old->ttl == lb->ttl) {
            continue;
        }
        char sites[256] = "";
        for (size_t k = 0; k < lb->cls[0].n_order; k++) {
            strncat(sites, *sites ? ", " : "", sizeof(sites) - strlen(sites) - 1);
            strncat(sites, s->conf->sites[lb->cls[0].order[k]].name,
                    sizeof(sites) - strlen(sites) - 1);
        }
        log_info("name %s now answers: %s (ttl %u)", lb->conf->name,
                 lb->servfail ? "SERVFAIL (no site available)" : sites, lb->ttl);
    }
}

static void publish(cluster_t *c)
{
    const snap_t *cur = snap_current();
    if (!cur || cur->conf->n_sites == 0) {
        return;
    }
    const conf_t *conf = cur->conf;
    bool up[MAX_SITES], safe[MAX_SITES], changing[MAX_SITES];
    double load[MAX_SITES], rtt[MAX_SITES];
    for (size_t i = 0; i < conf->n_sites && i < MAX_SITES; i++) {
        const conf_site_t *cs = &conf->sites[i];
        const health_site_t *hs =
            c->health && i < health_site_count(c->health) ? health_site(c->health, i) : NULL;
        const hb_site_t *hb = c->hb && i < c->hb_n_sites ? hb_site(c->hb, i) : NULL;
        /* UNKNOWN (no result yet) counts as up: a restart must not empty the answers. */
        bool probe_up = !hs || hs->state != HEALTH_DOWN;
        bool hb_up = hb && hb->available;
        load[i] = hs ? hs->load : -1;
        rtt[i] = hs ? hs->rtt_ms : -1;
        changing[i] = hs && hs->changing;
        switch (cs->monitor) {
        case CONF_MONITOR_HEARTBEAT:
            up[i] = safe[i] = hb_up;
            load[i] = hb ? hb->load : -1;
            rtt[i] = hb ? hb->rtt_ms : -1;
            changing[i] = false;
            break;
        case CONF_MONITOR_BOTH:
            up[i] = probe_up || hb_up;
            safe[i] = probe_up && hb_up;
            if (hb && hb->load >= 0) {
                load[i] = hb->load;
            }
            if (probe_up != hb_up) {
                static log_ratelimit_t rl = LOG_RATELIMIT_INIT(4, 10000);
                log_rl(&rl, LOG_LVL_WARN,
                       "site %s: signals disagree: probes say %s, heartbeats say %s "
                       "(partition?)",
                       cs->name, probe_up ? "up" : "down", hb_up ? "up" : "down");
            }
            break;
        default: up[i] = safe[i] = probe_up; break;
        }
    }
    snap_state_t st = {up, load, rtt, changing, safe};
    snap_t *s = snap_derive(cur, &st);
    log_changes(cur, s);
    snap_publish(s);
}

static void on_health(void *ud)
{
    cluster_t *c = ud;
    const snap_t *cur = snap_current();
    if (cur) {
        tell_peers(c, cur->conf);
    }
    publish(c);
}

static void on_hb(void *ud)
{
    publish(ud);
}

static bool hb_same(const cluster_t *c, const conf_t *conf)
{
    uint8_t d[HB_DIGEST_LEN];
    hb_conf_digest(conf, d);
    const conf_hb_t *a = &c->hb_conf, *b = &conf->hb;
    return memcmp(d, c->hb_digest, sizeof(d)) == 0 && a->enabled == b->enabled &&
           a->self_site == b->self_site && a->interval_ms == b->interval_ms &&
           a->period_ms == b->period_ms && a->periods == b->periods &&
           a->max_skew_ms == b->max_skew_ms && a->listen.n == b->listen.n &&
           (!a->listen.n ||
            memcmp(a->listen.v, b->listen.v, a->listen.n * sizeof(net_addr_t)) == 0) &&
           c->hb_n_sites == conf->n_sites;
}

static int start(cluster_t *c, const conf_t *conf)
{
    health_t *h = NULL;
    if (conf->n_sites > 0 && health_new(c->loop, conf, c->health, on_health, c, &h) != 0) {
        return MS_ECONF;
    }
    if (c->hb && hb_same(c, conf)) {
        /* Same heartbeat settings: keep the running instance and its liveness state. */
    } else {
        hb_t *hb = NULL;
        if (conf->hb.enabled && hb_new(c->loop, conf, on_hb, c, &hb) != 0) {
            health_free(h);
            return MS_ECONF;
        }
        hb_free(c->hb);
        c->hb = hb;
        hb_conf_digest(conf, c->hb_digest);
        c->hb_conf = conf->hb;
        free(c->hb_listen);
        c->hb_listen = xcalloc(conf->hb.listen.n + 1, sizeof(net_addr_t));
        if (conf->hb.listen.n) {
            memcpy(c->hb_listen, conf->hb.listen.v, conf->hb.listen.n * sizeof(net_addr_t));
        }
        c->hb_conf.listen.v = c->hb_listen;
        c->hb_n_sites = conf->n_sites;
    }
    health_free(c->health);
    c->health = h;
    tell_peers(c, conf);
    publish(c);
    return 0;
}

int cluster_new(uv_loop_t *loop, cluster_t **out)
{
    cluster_t *c = xcalloc(1, sizeof(*c));
    c->loop = loop;
    const snap_t *cur = snap_current();
    if (cur && start(c, cur->conf) != 0) {
        free(c);
        return MS_ECONF;
    }
    *out = c;
    return 0;
}

int cluster_reload(cluster_t *c)
{
    const snap_t *cur = snap_current();
    return cur ? start(c, cur->conf) : 0;
}

void cluster_free(cluster_t *c)
{
    if (!c) {
        return;
    }
    health_free(c->health);
    hb_free(c->hb);
    free(c->hb_listen);
    free(c);
}
