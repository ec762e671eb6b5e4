/* metrics.c: the cluster's state as Prometheus text (exposition format 0.0.4): per-site
 * availability and its inputs, verdict transitions, probe latency histograms, heartbeat ages
 * and rejections, and what each load-balanced name answers. docs/status.md lists the names.
 *
 * Runs on the loop thread (it reads health, heartbeat and admin state); the status module
 * calls it and hands the text to its HTTP thread. Every family is written whole (HELP, TYPE,
 * then all its samples), as the format requires. */
#include "internal.h"

#include <string.h>

/* A label value: backslash, double quote and newline escaped. */
static void label(buf_t *b, const char *s)
{
    buf_append(b, "\"", 1);
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') {
            buf_printf(b, "\\%c", *s);
        } else if (*s == '\n') {
            buf_append(b, "\\n", 2);
        } else {
            buf_append(b, s, 1);
        }
    }
    buf_append(b, "\"", 1);
}

static void family(buf_t *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{site="S"} value */
static void site_sample(buf_t *b, const char *name, const char *site, double v)
{
    buf_printf(b, "%s{site=", name);
    label(b, site);
    buf_printf(b, "} %.15g\n", v);
}

static bool effective_up(cluster_t *c, const char *site, const site_view_t *v)
{
    const admin_t *a = admin_find(c, site, false);
    if (a && a->drain == ADMIN_DRAIN_HARD) {
        return false;
    }
    if (a && a->force) {
        return a->force == ADMIN_FORCE_UP;
    }
    return v->up;
}

static void site_gauges(cluster_t *c, const conf_t *conf, const site_view_t *v, buf_t *b)
{
    family(b, "multisite_site_available", "gauge",
           "1 when the site is in the answers (after drain and force), else 0");
    for (size_t i = 0; i < conf->n_sites; i++) {
        site_sample(b, "multisite_site_available", conf->sites[i].name,
                    effective_up(c, conf->sites[i].name, &v[i]));
    }
    family(b, "multisite_site_evidence_available", "gauge",
           "1 when probes and heartbeats (by the site's monitor) say available, before operator "
           "overrides");
    for (size_t i = 0; i < conf->n_sites; i++) {
        site_sample(b, "multisite_site_evidence_available", conf->sites[i].name, v[i].up);
    }
    family(b, "multisite_site_drained", "gauge", "0 none, 1 soft drain (last), 2 hard (left out)");
    for (size_t i = 0; i < conf->n_sites; i++) {
        const admin_t *a = admin_find(c, conf->sites[i].name, false);
        site_sample(b, "multisite_site_drained", conf->sites[i].name, a ? a->drain : 0);
    }
    family(b, "multisite_site_probe_verdict", "gauge",
           "the probes' site verdict: 1 UP, 0 DOWN, -1 no result yet (probed sites only)");
    for (size_t i = 0; i < conf->n_sites; i++) {
        if (v[i].hs && v[i].hs->probed) {
            health_state_t s = v[i].hs->state;
            site_sample(b, "multisite_site_probe_verdict", conf->sites[i].name,
                        s == HEALTH_UP     ? 1
                        : s == HEALTH_DOWN ? 0
                                           : -1);
        }
    }
    family(b, "multisite_site_web_servers_up", "gauge", "web servers whose probes pass");
    for (size_t i = 0; i < conf->n_sites; i++) {
        if (v[i].hs && v[i].hs->probed) {
            site_sample(b, "multisite_site_web_servers_up", conf->sites[i].name, v[i].hs->web_up);
        }
    }
    family(b, "multisite_site_load", "gauge", "site load (0..1 of the limit), when known");
    for (size_t i = 0; i < conf->n_sites; i++) {
        if (v[i].load >= 0) {
            site_sample(b, "multisite_site_load", conf->sites[i].name, v[i].load);
        }
    }
    family(b, "multisite_site_response_time_seconds", "gauge",
           "site response time (EWMA of probe times, or as its heartbeats report), when known");
    for (size_t i = 0; i < conf->n_sites; i++) {
        if (v[i].rtt_ms >= 0) {
            site_sample(b, "multisite_site_response_time_seconds", conf->sites[i].name,
                        v[i].rtt_ms / 1000.0);
        }
    }
}

static void site_counters(const conf_t *conf, const site_view_t *v, buf_t *b)
{
    family(b, "multisite_site_verdict_transitions_total", "counter",
           "changes of a site's verdict, by source: probe (UP/DOWN/UNKNOWN) or heartbeat "
           "(available or not)");
    for (size_t i = 0; i < conf->n_sites; i++) {
        if (v[i].hs && v[i].hs->probed) {
            buf_printf(b, "multisite_site_verdict_transitions_total{site=");
            label(b, conf->sites[i].name);
            buf_printf(b, ",source=\"probe\"} %llu\n", (unsigned long long)v[i].hs->transitions);
        }
        if (v[i].hb) {
            buf_printf(b, "multisite_site_verdict_transitions_total{site=");
            label(b, conf->sites[i].name);
            buf_printf(b, ",source=\"heartbeat\"} %llu\n",
                       (unsigned long long)v[i].hb->transitions);
        }
    }
    family(b, "multisite_probe_duration_seconds", "histogram",
           "time of successful web probes (TCP connect or whole HTTP request), or of the "
           "database page's when a site has no web servers");
    for (size_t i = 0; i < conf->n_sites; i++) {
        const health_site_t *hs = v[i].hs;
        if (!hs || !hs->probed) {
            continue;
        }
        uint64_t cum = 0;
        for (size_t k = 0; k <= HEALTH_RTT_BUCKETS; k++) {
            cum += hs->rtt_hist[k];
            buf_printf(b, "multisite_probe_duration_seconds_bucket{site=");
            label(b, conf->sites[i].name);
            if (k < HEALTH_RTT_BUCKETS) {
                buf_printf(b, ",le=\"%g\"} %llu\n", health_rtt_bounds_ms[k] / 1000.0,
                           (unsigned long long)cum);
            } else {
                buf_printf(b, ",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
            }
        }
        site_sample(b, "multisite_probe_duration_seconds_sum", conf->sites[i].name,
                    hs->rtt_sum_ms / 1000.0);
        site_sample(b, "multisite_probe_duration_seconds_count", conf->sites[i].name,
                    (double)hs->rtt_count);
    }
}

static void heartbeats(cluster_t *c, const conf_t *conf, const site_view_t *v, buf_t *b)
{
    if (!c->hb) {
        return;
    }
    uint64_t now = time_mono_ms();
    family(b, "multisite_heartbeat_age_seconds", "gauge",
           "time since the last valid heartbeat from the site (sites heard from at least once)");
    for (size_t i = 0; i < conf->n_sites; i++) {
        if (v[i].hb && v[i].hb->last_rx_ms) {
            site_sample(b, "multisite_heartbeat_age_seconds", conf->sites[i].name,
                        now > v[i].hb->last_rx_ms ? (double)(now - v[i].hb->last_rx_ms) / 1000.0
                                                  : 0.0);
        }
    }
    family(b, "multisite_heartbeat_alive", "gauge",
           "1 when the site delivered a valid heartbeat in each of the last N periods");
    for (size_t i = 0; i < conf->n_sites; i++) {
        if (v[i].hb) {
            site_sample(b, "multisite_heartbeat_alive", conf->sites[i].name, v[i].hb->alive);
        }
    }
    family(b, "multisite_heartbeat_live_senders", "gauge",
           "multisited instances of the site whose heartbeats are alive");
    for (size_t i = 0; i < conf->n_sites; i++) {
        if (v[i].hb) {
            site_sample(b, "multisite_heartbeat_live_senders", conf->sites[i].name,
                        v[i].hb->live_senders);
        }
    }
    hb_stats_t st;
    hb_get_stats(c->hb, &st);
    family(b, "multisite_heartbeats_received_total", "counter", "valid heartbeats received");
    buf_printf(b, "multisite_heartbeats_received_total %llu\n", (unsigned long long)st.rx_ok);
    family(b, "multisite_heartbeats_sent_total", "counter", "heartbeats sent");
    buf_printf(b, "multisite_heartbeats_sent_total %llu\n", (unsigned long long)st.tx);
    family(b, "multisite_heartbeat_send_errors_total", "counter", "heartbeats that failed to send");
    buf_printf(b, "multisite_heartbeat_send_errors_total %llu\n", (unsigned long long)st.tx_err);
    const struct {
        const char *reason;
        uint64_t n;
    } rej[] = {
        {"truncated", st.rej_truncated}, {"oversized", st.rej_oversized},
        {"bad_magic", st.rej_bad_magic}, {"bad_version", st.rej_bad_version},
        {"malformed", st.rej_malformed}, {"unknown_key", st.rej_unknown_key},
        {"bad_mac", st.rej_bad_mac},     {"unknown_sender", st.rej_unknown_sender},
        {"skew", st.rej_skew},           {"replay", st.rej_replay},
        {"too_old", st.rej_too_old},
    };
    family(b, "multisite_heartbeats_rejected_total", "counter",
           "datagrams dropped on the heartbeat port, by the first reason found");
    for (size_t k = 0; k < MS_ARRAY_LEN(rej); k++) {
        buf_printf(b, "multisite_heartbeats_rejected_total{reason=\"%s\"} %llu\n", rej[k].reason,
                   (unsigned long long)rej[k].n);
    }
}

static void names(const snap_t *s, buf_t *b)
{
    family(b, "multisite_name_answer_sites", "gauge",
           "sites in a load-balanced name's answer (clients without locality)");
    for (size_t i = 0; i < s->n_lb; i++) {
        buf_printf(b, "multisite_name_answer_sites{name=");
        label(b, s->lb[i].conf->name);
        buf_printf(b, "} %zu\n", s->lb[i].servfail ? (size_t)0 : s->lb[i].cls[0].n_order);
    }
    family(b, "multisite_name_servfail", "gauge",
           "1 when a load-balanced name answers SERVFAIL (no site available, fallback servfail)");
    for (size_t i = 0; i < s->n_lb; i++) {
        buf_printf(b, "multisite_name_servfail{name=");
        label(b, s->lb[i].conf->name);
        buf_printf(b, "} %d\n", s->lb[i].servfail ? 1 : 0);
    }
}

void cluster_metrics(cluster_t *c, buf_t *out)
{
    const snap_t *s = snap_current();
    if (!s) {
        return;
    }
    /* The config allows at most MAX_SITES sites; be safe if that ever changes. */
    conf_t bounded = *s->conf;
    size_t n = bounded.n_sites < MAX_SITES ? bounded.n_sites : MAX_SITES;
    bounded.n_sites = n;
    const conf_t *conf = &bounded;
    family(out, "multisite_snapshot_generation", "gauge",
           "generation of the published snapshot (grows with every reload and verdict change)");
    buf_printf(out, "multisite_snapshot_generation %llu\n", (unsigned long long)s->generation);
    site_view_t v[MAX_SITES];
    for (size_t i = 0; i < n; i++) {
        cluster_site_view(c, i, &v[i]);
    }
    site_gauges(c, conf, v, out);
    site_counters(conf, v, out);
    heartbeats(c, conf, v, out);
    names(s, out);
}
