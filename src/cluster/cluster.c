/* cluster.c: site availability from probes and heartbeats, and snapshot publishing. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Our own site's verdict, as the heartbeats carry it. */
static void tell_peers(cluster_t *c, const conf_t *conf)
{
    if (!c->hb || !c->health || conf->hb.self_site >= health_site_count(c->health)) {
        return;
    }
    const health_site_t *hs = health_site(c->health, conf->hb.self_site);
    hb_self_t self = {hs->state, HB_REASON_OK, hs->load, hs->rtt_ms};
    const admin_t *a = admin_find(c, conf->sites[conf->hb.self_site].name, false);
    if (a && a->drain) {
        /* Tell the others, so every site answers alike: soft = up but last; hard = down. */
        self.reason = HB_REASON_DRAINED;
        self.state = a->drain == ADMIN_DRAIN_HARD ? HEALTH_DOWN : hs->state;
        hb_set_self(c->hb, &self);
        return;
    }
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

void cluster_site_view(cluster_t *c, size_t i, site_view_t *v)
{
    const conf_t *conf = snap_current()->conf;
    const conf_site_t *cs = &conf->sites[i];
    const health_site_t *hs =
        c->health && i < health_site_count(c->health) ? health_site(c->health, i) : NULL;
    const hb_site_t *hb = c->hb && i < c->hb_n_sites ? hb_site(c->hb, i) : NULL;
    v->hs = hs;
    v->hb = hb;
    /* UNKNOWN (no result yet) counts as up: a restart must not empty the answers. */
    bool probe_up = !hs || hs->state != HEALTH_DOWN;
    bool hb_up = hb && hb->available;
    v->load = hs ? hs->load : -1;
    v->rtt_ms = hs ? hs->rtt_ms : -1;
    switch (cs->monitor) {
    case CONF_MONITOR_HEARTBEAT:
        v->up = hb_up;
        v->load = hb ? hb->load : -1;
        v->rtt_ms = hb ? hb->rtt_ms : -1;
        break;
    case CONF_MONITOR_BOTH:
        v->up = probe_up || hb_up;
        if (hb && hb->load >= 0) {
            v->load = hb->load;
        }
        break;
    default: v->up = probe_up; break;
    }
    /* Nothing fresh yet (just started): answer from the last known state, not from nothing. */
    bool fresh = cs->monitor == CONF_MONITOR_HEARTBEAT ? hb && hb->last_rx_ms
                 : cs->monitor == CONF_MONITOR_BOTH
                     ? (hs && hs->state != HEALTH_UNKNOWN) || (hb && hb->last_rx_ms)
                     : hs && hs->state != HEALTH_UNKNOWN;
    const admin_t *a = admin_find(c, cs->name, false);
    if (!fresh && a && a->last) {
        v->up = a->last == 1;
    }
}

/* Remember each site's availability in the state file when it changes. */
static void remember(cluster_t *c, const conf_t *conf)
{
    const snap_t *cur = snap_current();
    if (!cur || !cur->conf->state_file || !*cur->conf->state_file) {
        return;
    }
    bool changed = false;
    for (size_t i = 0; i < conf->n_sites; i++) {
        site_view_t v;
        cluster_site_view(c, i, &v);
        bool fresh = (v.hs && v.hs->state != HEALTH_UNKNOWN) || (v.hb && v.hb->last_rx_ms);
        admin_t *a = admin_find(c, conf->sites[i].name, true);
        int now = v.up ? 1 : 2;
        if (fresh && a && a->last != now) {
            a->last = now;
            changed = true;
        }
    }
    if (changed) {
        admin_save(c);
    }
}

static void expire_forces(cluster_t *c)
{
    uint64_t now = time_wall_ms();
    for (size_t i = 0; i < c->n_admin; i++) {
        admin_t *a = &c->admin[i];
        if (a->force && a->force_until && now >= a->force_until) {
            log_info("operator: site %s: forced state expired", a->site);
            a->force = ADMIN_FORCE_NONE;
            a->force_until = 0;
            admin_save(c);
        }
    }
}

void cluster_publish(cluster_t *c, bool force)
{
    (void)force;
    const snap_t *cur = snap_current();
    if (!cur || cur->conf->n_sites == 0) {
        return;
    }
    expire_forces(c);
    const conf_t *conf = cur->conf;
    bool up[MAX_SITES], safe[MAX_SITES], changing[MAX_SITES], drained[MAX_SITES];
    double load[MAX_SITES], rtt[MAX_SITES];
    for (size_t i = 0; i < conf->n_sites && i < MAX_SITES; i++) {
        const conf_site_t *cs = &conf->sites[i];
        site_view_t v;
        cluster_site_view(c, i, &v);
        bool probe_up = !v.hs || v.hs->state != HEALTH_DOWN;
        bool hb_up = v.hb && v.hb->available;
        up[i] = v.up;
        safe[i] = cs->monitor == CONF_MONITOR_BOTH ? probe_up && hb_up : v.up;
        load[i] = v.load;
        rtt[i] = v.rtt_ms;
        changing[i] = cs->monitor != CONF_MONITOR_HEARTBEAT && v.hs && v.hs->changing;
        /* A remote site that reports itself drained (soft) goes last here too. */
        drained[i] = v.hb && v.hb->reason == HB_REASON_DRAINED && v.hb->available;
        if (cs->monitor == CONF_MONITOR_BOTH && probe_up != hb_up) {
            static log_ratelimit_t rl = LOG_RATELIMIT_INIT(4, 10000);
            log_rl(&rl, LOG_LVL_WARN,
                   "site %s: signals disagree: probes say %s, heartbeats say %s (partition?)",
                   cs->name, probe_up ? "up" : "down", hb_up ? "up" : "down");
        }
        const admin_t *a = admin_find(c, cs->name, false);
        if (a) {
            if (a->force) {
                up[i] = safe[i] = a->force == ADMIN_FORCE_UP;
                changing[i] = false;
            }
            if (a->drain == ADMIN_DRAIN_HARD) {
                up[i] = safe[i] = false;
            } else if (a->drain == ADMIN_DRAIN_SOFT) {
                drained[i] = true;
            }
        }
    }
    remember(c, conf);
    memcpy(c->pub_load, load,
           sizeof(double) * (conf->n_sites < MAX_SITES ? conf->n_sites : MAX_SITES));
    memcpy(c->pub_rtt, rtt,
           sizeof(double) * (conf->n_sites < MAX_SITES ? conf->n_sites : MAX_SITES));
    snap_state_t st = {up, load, rtt, changing, safe, drained};
    snap_t *s = snap_derive(cur, &st);
    log_changes(cur, s);
    snap_publish(s);
}

static void publish(cluster_t *c)
{
    cluster_publish(c, false);
}

/* Load and response time move without a verdict change (the probes report them only with
 * other changes): names ordered by them are re-rendered once a second when either moved. */
static bool inputs_moved(cluster_t *c)
{
    const snap_t *cur = snap_current();
    if (!cur) {
        return false;
    }
    bool uses = false; /* only names ordered by load or rtt depend on them */
    for (size_t k = 0; k < cur->conf->n_names && !uses; k++) {
        for (size_t j = 0; j < cur->conf->names[k].n_order; j++) {
            unsigned o = cur->conf->names[k].order[j];
            uses = uses || o == CONF_ORDER_LOAD || o == CONF_ORDER_RTT;
        }
    }
    if (!uses) {
        return false;
    }
    for (size_t i = 0; i < cur->conf->n_sites && i < MAX_SITES; i++) {
        site_view_t v;
        cluster_site_view(c, i, &v);
        if (fabs(v.rtt_ms - c->pub_rtt[i]) >= 0.5 || fabs(v.load - c->pub_load[i]) >= 0.005) {
            return true;
        }
    }
    return false;
}

static void on_expiry_timer(uv_timer_t *t)
{
    cluster_t *c = t->data;
    if (inputs_moved(c)) {
        publish(c);
        return;
    }
    for (size_t i = 0; i < c->n_admin; i++) {
        if (c->admin[i].force && c->admin[i].force_until &&
            time_wall_ms() >= c->admin[i].force_until) {
            publish(c);
            return;
        }
    }
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

static int start(cluster_t *c, const conf_t *conf)
{
    health_t *h = NULL;
    if (conf->n_sites > 0 && health_new(c->loop, conf, c->health, on_health, c, &h) != 0) {
        return MS_ECONF;
    }
    if (c->hb && conf->hb.enabled) {
        /* Reload in place: sockets and the liveness of sites that keep their names stay, the
         * key file is read again (rotation); on error nothing changes. */
        if (hb_reload(c->hb, conf) != 0) {
            log_err("reload: heartbeat settings not applied; the previous ones stay");
        }
        c->hb_n_sites = conf->n_sites;
    } else {
        hb_t *hb = NULL;
        if (conf->hb.enabled && hb_new(c->loop, conf, on_hb, c, &hb) != 0) {
            health_free(h);
            return MS_ECONF;
        }
        hb_free(c->hb);
        c->hb = hb;
        c->hb_n_sites = conf->n_sites;
    }
    health_free(c->health);
    c->health = h;
    /* Web servers drained by the operator stay drained across reloads and restarts. */
    for (size_t i = 0; i < c->n_admin; i++) {
        const char *slash = strchr(c->admin[i].site, '/');
        if (!slash || !c->admin[i].drain) {
            continue;
        }
        for (size_t k = 0; k < conf->n_sites; k++) {
            if (strlen(conf->sites[k].name) == (size_t)(slash - c->admin[i].site) &&
                strncmp(conf->sites[k].name, c->admin[i].site,
                        (size_t)(slash - c->admin[i].site)) == 0) {
                (void)!health_set_web_drained(h, k, slash + 1, true);
            }
        }
    }
    tell_peers(c, conf);
    publish(c);
    return 0;
}

int cluster_new(uv_loop_t *loop, cluster_t **out)
{
    cluster_t *c = xcalloc(1, sizeof(*c));
    c->loop = loop;
    uv_timer_init(loop, &c->expiry);
    c->expiry.data = c;
    uv_timer_start(&c->expiry, on_expiry_timer, 1000, 1000);
    const snap_t *cur = snap_current();
    if (cur) {
        admin_load(c, cur->conf->state_file);
    }
    if (cur && start(c, cur->conf) != 0) {
        cluster_free(c);
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

static void expiry_closed(uv_handle_t *h)
{
    free(h->data);
}

void cluster_free(cluster_t *c)
{
    if (!c) {
        return;
    }
    health_free(c->health);
    hb_free(c->hb);
    uv_close((uv_handle_t *)&c->expiry, expiry_closed); /* frees c */
}
