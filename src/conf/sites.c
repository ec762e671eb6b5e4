/* sites.c: the sites: and names: sections of the multisited config (sites with their web
 * servers, database check and load balancer; load-balanced names over them). */
#include "conf.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

const char *const conf_probe_types[] = {"tcp", "http", "https", NULL};
const char *const conf_fallbacks[] = {"all", "last", "servfail", NULL};
const char *const conf_monitors[] = {"auto", "probe", "heartbeat", "both", NULL};
const char *const conf_partitions[] = {"availability", "safety", NULL};
const char *const conf_orders[] = {"static", "locality", "load", "rtt", "weighted", NULL};

/* Probe defaults: a 1 s interval with rise 2 / fall 2 reacts in ~2 s to a silent failure;
 * refused connections are re-probed at once (health module), so a dead web server is seen
 * in well under a second. gdnsd's fastest is interval 2 s with thresholds 2. */
static const conf_opt_t check_schema[] = {
    {"type", CONF_T_ENUM, offsetof(conf_check_t, type), 0, 0, "http", conf_probe_types,
     "tcp (connect only), http or https"},
    {"path", CONF_T_STR, offsetof(conf_check_t, path), 0, 0, "/", NULL, "HTTP request path"},
    {"host", CONF_T_STR, offsetof(conf_check_t, host), 0, 0, NULL, NULL,
     "Host header and TLS SNI name (default: the address)"},
    {"expect-status", CONF_T_UINT, offsetof(conf_check_t, expect_status), 100, 599, "200", NULL,
     "HTTP status the probe requires"},
    {"expect", CONF_T_STRS, offsetof(conf_check_t, expect), 0, 0, NULL, NULL,
     "keyword(s) that must all appear in the response body"},
    {"tls-verify", CONF_T_BOOL, offsetof(conf_check_t, tls_verify), 0, 0, "true", NULL,
     "verify the HTTPS server's certificate"},
    {"interval", CONF_T_DURATION, offsetof(conf_check_t, interval_ms), 50, 3600000, "1s", NULL,
     "time between probes"},
    {"timeout", CONF_T_DURATION, offsetof(conf_check_t, timeout_ms), 10, 600000, "500ms", NULL,
     "a probe that takes longer fails"},
    {"rise", CONF_T_UINT, offsetof(conf_check_t, rise), 1, 100, "2", NULL,
     "consecutive successes to go from down to up"},
    {"fall", CONF_T_UINT, offsetof(conf_check_t, fall), 1, 100, "2", NULL,
     "consecutive failures to go from up to down"},
};

static const conf_opt_t db_schema[] = {
    {"name", CONF_T_STR, offsetof(conf_db_t, name), 0, 0, NULL, NULL,
     "the database server's name; the default keyword the page must contain (required)"},
    {"url", CONF_T_STR, offsetof(conf_db_t, url), 0, 0, NULL, NULL,
     "http(s) URL of the page a web server executes against the database (required)"},
    {"connect", CONF_T_ADDR, offsetof(conf_db_t, connect), 80, 0, NULL, NULL,
     "connect to this ADDR:PORT instead of the URL's host"},
    {"expect", CONF_T_STRS, offsetof(conf_db_t, check.expect), 0, 0, NULL, NULL,
     "keyword(s) the page must contain (default: name)"},
    {"expect-status", CONF_T_UINT, offsetof(conf_db_t, check.expect_status), 100, 599, "200", NULL,
     "HTTP status the page must have"},
    {"tls-verify", CONF_T_BOOL, offsetof(conf_db_t, check.tls_verify), 0, 0, "true", NULL,
     "verify the HTTPS server's certificate"},
    {"interval", CONF_T_DURATION, offsetof(conf_db_t, check.interval_ms), 50, 3600000, "1s", NULL,
     "time between probes"},
    {"timeout", CONF_T_DURATION, offsetof(conf_db_t, check.timeout_ms), 10, 600000, "1s", NULL,
     "a probe that takes longer fails"},
    {"rise", CONF_T_UINT, offsetof(conf_db_t, check.rise), 1, 100, "2", NULL,
     "consecutive successes to go from down to up"},
    {"fall", CONF_T_UINT, offsetof(conf_db_t, check.fall), 1, 100, "2", NULL,
     "consecutive failures to go from up to down"},
};

static const conf_opt_t lb_schema[] = {
    {"stats", CONF_T_STR, offsetof(conf_lb_t, stats), 0, 0, NULL, NULL,
     "HAProxy runtime API: unix:/path/to/socket or ADDR:PORT (required)"},
    {"web-backend", CONF_T_STR, offsetof(conf_lb_t, web_backend), 0, 0, "web", NULL,
     "backend whose servers are the web tier"},
    {"db-backend", CONF_T_STR, offsetof(conf_lb_t, db_backend), 0, 0, NULL, NULL,
     "backend whose check fetches the database page (optional)"},
    {"interval", CONF_T_DURATION, offsetof(conf_lb_t, interval_ms), 50, 3600000, "500ms", NULL,
     "time between 'show stat' polls"},
    {"timeout", CONF_T_DURATION, offsetof(conf_lb_t, timeout_ms), 10, 600000, "500ms", NULL,
     "a poll that takes longer fails"},
};

static const conf_opt_t site_schema[] = {
    {"name", CONF_T_STR, offsetof(conf_site_t, name), 0, 0, NULL, NULL, "site name (required)"},
    {"addresses", CONF_T_ADDRS, offsetof(conf_site_t, addrs), 0, 0, NULL, NULL,
     "the addresses DNS answers give for this site, IPv4 and/or IPv6 (required)"},
    {"heartbeat-peers", CONF_T_ADDRS, offsetof(conf_site_t, hb_peers), 5400, 0, NULL, NULL,
     "heartbeat addresses (ADDR:PORT) of this site's multisited instances"},
    {"monitor", CONF_T_ENUM, offsetof(conf_site_t, monitor), 0, 0, "auto", conf_monitors,
     "how a remote site's availability is known: probe (our own probes), heartbeat (its "
     "multisited's heartbeats), both (two signals; see names[].partition), or auto "
     "(heartbeat when it has heartbeat-peers, else probe); the own site is always probed"},
    {"location", CONF_T_CUSTOM, 0, 0, 0, NULL, NULL,
     "\"LAT,LON\" in degrees, for geographic distance ordering with a GeoIP database"},
    {"min-web-up", CONF_T_UINT, offsetof(conf_site_t, min_web), 0, 1000, "1", NULL,
     "the site is up only if at least this many web servers are up"},
    {"web-servers", CONF_T_CUSTOM, 0, 0, 0, NULL, NULL,
     "list of {name, address: ADDR:PORT} (or just ADDR:PORT) probed with web-check"},
    {"web-check", CONF_T_CUSTOM, 0, 0, 0, NULL, NULL, "how web servers are probed (see check.*)"},
    {"database", CONF_T_CUSTOM, 0, 0, 0, NULL, NULL, "the database check (see database.*)"},
    {"load-balancer", CONF_T_CUSTOM, 0, 0, 0, NULL, NULL,
     "the site's HAProxy, read through its runtime API (see load-balancer.*)"},
};

static const conf_opt_t name_schema[] = {
    {"name", CONF_T_STR, offsetof(conf_name_t, name), 0, 0, NULL, NULL,
     "the load-balanced name, inside a configured zone (required)"},
    {"sites", CONF_T_CUSTOM, 0, 0, 0, NULL, NULL, "site names in the preferred order (required)"},
    {"ttl", CONF_T_UINT, offsetof(conf_name_t, ttl), 0, 86400, "30", NULL, "TTL of the answers"},
    {"ttl-min", CONF_T_UINT, offsetof(conf_name_t, ttl_min), 0, 86400, "5", NULL,
     "TTL of the answers while a site's state may change soon (inside a rise/fall window)"},
    {"order", CONF_T_CUSTOM, 0, 0, 0, NULL, NULL,
     "ordering policies applied in turn: static, locality, load, rtt, weighted (default static)"},
    {"load-tolerance", CONF_T_UINT, offsetof(conf_name_t, load_tolerance), 0, 100, "10", NULL,
     "percent: sites whose loads are closer than this keep their configured order"},
    {"rtt-tolerance", CONF_T_DURATION, offsetof(conf_name_t, rtt_tolerance_ms), 0, 60000, "20ms",
     NULL, "sites whose response times are closer than this keep their configured order"},
    {"weights", CONF_T_CUSTOM, 0, 0, 0, NULL, NULL,
     "for order weighted: one integer per site in 'sites' (the share of first places)"},
    {"partition", CONF_T_ENUM, offsetof(conf_name_t, partition), 0, 0, "availability",
     conf_partitions,
     "a remote site with monitor both whose heartbeats stop while our probes still reach it "
     "(or the reverse): availability keeps answering with it, safety leaves it out"},
    {"fallback", CONF_T_ENUM, offsetof(conf_name_t, fallback), 0, 0, "all", conf_fallbacks,
     "when no site is available: all (every site, configured order), last (the last set that "
     "was available) or servfail"},
};

/* Heartbeat defaults (issue 4): several heartbeats per period so that one lost packet never
 * empties a period; N = 3 periods of 500 ms reflect a dead site within 2 s. */
static const conf_opt_t hb_schema[] = {
    {"self", CONF_T_STR, offsetof(conf_hb_t, self), 0, 0, NULL, NULL,
     "the site this multisited belongs to (required)"},
    {"id", CONF_T_STR, offsetof(conf_hb_t, id), 0, 0, NULL, NULL,
     "this multisited's sender id, unique among all (default: the host name)"},
    {"listen", CONF_T_ADDRS, offsetof(conf_hb_t, listen), 5400, 0, NULL, NULL,
     "UDP ADDR:PORT to receive heartbeats on (required)"},
    {"key-file", CONF_T_STR, offsetof(conf_hb_t, key_file), 0, 0, NULL, NULL,
     "pre-shared key file written by `multisited keygen` (required; relative to the config)"},
    {"interval", CONF_T_DURATION, offsetof(conf_hb_t, interval_ms), 10, 60000, "100ms", NULL,
     "time between heartbeat rounds to each peer (each round sends 3 datagrams)"},
    {"period", CONF_T_DURATION, offsetof(conf_hb_t, period_ms), 50, 600000, "500ms", NULL,
     "a remote site is available only with a valid heartbeat in each of the last N periods"},
    {"periods", CONF_T_UINT, offsetof(conf_hb_t, periods), 1, 100, "3", NULL, "N"},
    {"max-skew", CONF_T_DURATION, offsetof(conf_hb_t, max_skew_ms), 10, 3600000, "2s", NULL,
     "heartbeats whose timestamp differs from our clock by more are rejected"},
};

void conf_print_schema_table(FILE *f, const char *section, const conf_opt_t *schema, size_t n);

void conf_print_sites_schema(FILE *f);
void conf_print_sites_schema(FILE *f)
{
    conf_print_schema_table(f, "sites[]", site_schema, MS_ARRAY_LEN(site_schema));
    conf_print_schema_table(f, "sites[].web-check", check_schema, MS_ARRAY_LEN(check_schema));
    conf_print_schema_table(f, "sites[].database", db_schema, MS_ARRAY_LEN(db_schema));
    conf_print_schema_table(f, "sites[].load-balancer", lb_schema, MS_ARRAY_LEN(lb_schema));
    conf_print_schema_table(f, "names[]", name_schema, MS_ARRAY_LEN(name_schema));
    conf_print_schema_table(f, "heartbeat", hb_schema, MS_ARRAY_LEN(hb_schema));
}

static int load_hb(conf_t *c, const conf_node_t *n, conf_err_t *err)
{
    conf_hb_t *hb = &c->hb;
    if (conf_apply(n, hb_schema, MS_ARRAY_LEN(hb_schema), "heartbeat", hb, err) != 0) {
        return MS_ECONF;
    }
    if (!n) {
        return 0;
    }
    hb->enabled = true;
    if (!hb->self || !hb->listen.n || !hb->key_file) {
        conf_errf(err, n, "heartbeat: 'self', 'listen' and 'key-file' are required");
        return MS_ECONF;
    }
    size_t k;
    for (k = 0; k < c->n_sites && strcmp(c->sites[k].name, hb->self) != 0; k++) {
    }
    if (k == c->n_sites) {
        conf_errf(err, conf_map_get(n, "self"),
                  "heartbeat.self: site '%s' is not defined under "
                  "sites:",
                  hb->self);
        return MS_ECONF;
    }
    hb->self_site = k;
    if (hb->interval_ms > hb->period_ms) {
        conf_errf(err, n,
                  "heartbeat: interval %ums is longer than the period %ums: some periods "
                  "would see no heartbeat",
                  hb->interval_ms, hb->period_ms);
        return MS_ECONF;
    }
    char *kf = conf_resolve_path(c->path, hb->key_file);
    free(hb->key_file);
    hb->key_file = kf;
    if (!hb->id) {
        char host[256];
        if (gethostname(host, sizeof(host) - 1) != 0) {
            snprintf(host, sizeof(host), "multisited");
        }
        host[sizeof(host) - 1] = '\0';
        hb->id = xstrdup(host);
    }
    return 0;
}

/* Resolve monitor: auto for each site, and check it against the heartbeat section. */
static int check_monitors(conf_t *c, conf_err_t *err)
{
    for (size_t i = 0; i < c->n_sites; i++) {
        conf_site_t *s = &c->sites[i];
        bool self = c->hb.enabled && c->hb.self_site == i;
        if (s->monitor == CONF_MONITOR_AUTO) {
            s->monitor = (!self && c->hb.enabled && s->hb_peers.n) ? CONF_MONITOR_HEARTBEAT
                                                                   : CONF_MONITOR_PROBE;
        }
        if (self) {
            s->monitor = CONF_MONITOR_PROBE; /* our own site: we probe it and tell the others */
        }
        if ((s->monitor == CONF_MONITOR_HEARTBEAT || s->monitor == CONF_MONITOR_BOTH) &&
            (!c->hb.enabled || !s->hb_peers.n)) {
            conf_node_t at = {.file = s->src_file, .line = s->src_line};
            conf_errf(err, &at,
                      "sites[%s]: monitor %s needs a heartbeat: section and this "
                      "site's heartbeat-peers",
                      s->name, conf_monitors[s->monitor]);
            return MS_ECONF;
        }
        if ((s->monitor == CONF_MONITOR_PROBE || s->monitor == CONF_MONITOR_BOTH) &&
            s->n_web == 0 && !s->has_lb && !s->has_db) {
            conf_node_t at = {.file = s->src_file, .line = s->src_line};
            conf_errf(err, &at,
                      "sites[%s]: nothing to probe: give web-servers, a database or "
                      "a load-balancer (or monitor: heartbeat)",
                      s->name);
            return MS_ECONF;
        }
    }
    return 0;
}

static int load_web(conf_site_t *s, const conf_node_t *list, conf_err_t *err)
{
    if (!list) {
        return 0;
    }
    if (list->kind != CONF_SEQ) {
        conf_errf(err, list, "sites[%s].web-servers: expected a list", s->name);
        return MS_ECONF;
    }
    s->web = xcalloc(list->n ? list->n : 1, sizeof(*s->web));
    for (size_t i = 0; i < list->n; i++) {
        const conf_node_t *w = list->items[i];
        conf_web_t *cw = &s->web[s->n_web];
        const conf_node_t *addr = w;
        if (w->kind == CONF_MAP) {
            static const conf_opt_t web_schema[] = {
                {"name", CONF_T_STR, offsetof(conf_web_t, name), 0, 0, NULL, NULL, ""},
                {"address", CONF_T_ADDR, offsetof(conf_web_t, addr), 80, 0, NULL, NULL, ""},
            };
            if (conf_apply(w, web_schema, 2, "web-servers[]", cw, err) != 0) {
                return MS_ECONF;
            }
            addr = conf_map_get(w, "address");
            if (!addr) {
                conf_errf(err, w, "sites[%s].web-servers[%zu]: 'address' is required", s->name, i);
                free(cw->name);
                return MS_ECONF;
            }
        } else if (w->kind != CONF_SCALAR || net_parse_addr(w->value, 80, &cw->addr) != 0) {
            conf_errf(err, w, "sites[%s].web-servers[%zu]: expected ADDR:PORT or {name, address}",
                      s->name, i);
            return MS_ECONF;
        }
        if (!cw->name) {
            char ab[NET_ADDR_STRLEN];
            cw->name = xstrdup(net_addr_str(&cw->addr, ab, sizeof(ab)));
        }
        (void)addr;
        s->n_web++;
    }
    return 0;
}

static int load_location(conf_site_t *s, const conf_node_t *n, conf_err_t *err);

static int load_site(conf_t *c, const conf_node_t *n, conf_err_t *err)
{
    conf_site_t *s = &c->sites[c->n_sites];
    memset(s, 0, sizeof(*s));
    s->src_file = c->path ? c->path : "(config)";
    s->src_line = n->line;
    c->n_sites++; /* counted now so conf_free releases a partly loaded site */
    if (conf_apply(n, site_schema, MS_ARRAY_LEN(site_schema), "sites[]", s, err) != 0) {
        return MS_ECONF;
    }
    if (!s->name || !*s->name) {
        conf_errf(err, n, "sites[]: 'name' is required");
        return MS_ECONF;
    }
    for (size_t i = 0; i + 1 < c->n_sites; i++) {
        if (strcmp(c->sites[i].name, s->name) == 0) {
            conf_errf(err, n, "sites[%s]: defined twice (first on line %d)", s->name,
                      c->sites[i].src_line);
            return MS_ECONF;
        }
    }
    if (s->addrs.n == 0) {
        conf_errf(err, n, "sites[%s]: 'addresses' is required (the addresses answers give)",
                  s->name);
        return MS_ECONF;
    }
    if (conf_apply(conf_map_get(n, "web-check"), check_schema, MS_ARRAY_LEN(check_schema),
                   "web-check", &s->web_check, err) != 0) {
        return MS_ECONF;
    }
    if (load_web(s, conf_map_get(n, "web-servers"), err) != 0) {
        return MS_ECONF;
    }
    if (load_location(s, n, err) != 0) {
        return MS_ECONF;
    }
    if (!conf_map_get(n, "min-web-up") && s->min_web > s->n_web) {
        s->min_web = (unsigned)s->n_web; /* default 1, or 0 for a site without web servers */
    }
    if (s->min_web > s->n_web) {
        conf_errf(err, n, "sites[%s]: min-web-up %u is more than its %zu web servers", s->name,
                  s->min_web, s->n_web);
        return MS_ECONF;
    }
    const conf_node_t *db = conf_map_get(n, "database");
    if (db) {
        s->has_db = true;
        if (conf_apply(db, db_schema, MS_ARRAY_LEN(db_schema), "database", &s->db, err) != 0) {
            return MS_ECONF;
        }
        s->db.has_connect = conf_map_get(db, "connect") != NULL;
        if (!s->db.name || !*s->db.name || !s->db.url) {
            conf_errf(err, db, "sites[%s].database: 'name' and 'url' are required", s->name);
            return MS_ECONF;
        }
        if (strncmp(s->db.url, "http://", 7) == 0) {
            s->db.check.type = CONF_PROBE_HTTP;
        } else if (strncmp(s->db.url, "https://", 8) == 0) {
            s->db.check.type = CONF_PROBE_HTTPS;
        } else {
            conf_errf(err, conf_map_get(db, "url"),
                      "sites[%s].database.url: '%s' is not an "
                      "http:// or https:// URL",
                      s->name, s->db.url);
            return MS_ECONF;
        }
        if (s->db.check.expect.n == 0) {
            s->db.check.expect.v = xcalloc(1, sizeof(char *));
            s->db.check.expect.v[0] = xstrdup(s->db.name);
            s->db.check.expect.n = 1;
        }
    }
    const conf_node_t *lb = conf_map_get(n, "load-balancer");
    if (lb) {
        s->has_lb = true;
        if (conf_apply(lb, lb_schema, MS_ARRAY_LEN(lb_schema), "load-balancer", &s->lb, err) != 0) {
            return MS_ECONF;
        }
        if (!s->lb.stats || !*s->lb.stats) {
            conf_errf(err, lb, "sites[%s].load-balancer: 'stats' is required", s->name);
            return MS_ECONF;
        }
        net_addr_t a;
        if (strncmp(s->lb.stats, "unix:", 5) != 0 && net_parse_addr(s->lb.stats, 0, &a) != 0) {
            conf_errf(err, conf_map_get(lb, "stats"),
                      "sites[%s].load-balancer.stats: '%s' is "
                      "neither unix:/path nor ADDR:PORT",
                      s->name, s->lb.stats);
            return MS_ECONF;
        }
    }
    return 0;
}

static int load_order(conf_name_t *nm, const conf_node_t *n, conf_err_t *err)
{
    const conf_node_t *o = conf_map_get(n, "order");
    if (!o) {
        nm->order[0] = CONF_ORDER_STATIC;
        nm->n_order = 1;
    } else {
        size_t cnt = o->kind == CONF_SEQ ? o->n : 1;
        for (size_t i = 0; i < cnt; i++) {
            const conf_node_t *it = o->kind == CONF_SEQ ? o->items[i] : o;
            unsigned k = 0;
            while (it->kind == CONF_SCALAR && conf_orders[k] && strcmp(conf_orders[k], it->value)) {
                k++;
            }
            if (it->kind != CONF_SCALAR || !conf_orders[k]) {
                conf_errf(err, it,
                          "names[%s].order: expected static, locality, load, rtt or "
                          "weighted",
                          nm->name);
                return MS_ECONF;
            }
            for (size_t j = 0; j < nm->n_order; j++) {
                if (nm->order[j] == k) {
                    conf_errf(err, it, "names[%s].order: '%s' listed twice", nm->name,
                              conf_orders[k]);
                    return MS_ECONF;
                }
            }
            if (k == CONF_ORDER_WEIGHTED && i + 1 != cnt) {
                conf_errf(err, it, "names[%s].order: weighted must come last", nm->name);
                return MS_ECONF;
            }
            nm->order[nm->n_order++] = k;
        }
    }
    const conf_node_t *w = conf_map_get(n, "weights");
    bool weighted = nm->order[nm->n_order - 1] == CONF_ORDER_WEIGHTED;
    if (weighted != (w != NULL)) {
        conf_errf(err, w ? w : n,
                  "names[%s]: 'weights' goes with order weighted, and only with "
                  "it",
                  nm->name);
        return MS_ECONF;
    }
    if (w) {
        if (w->kind != CONF_SEQ || w->n != nm->n_sites) {
            conf_errf(err, w, "names[%s].weights: expected %zu integers, one per site", nm->name,
                      nm->n_sites);
            return MS_ECONF;
        }
        nm->weights = xcalloc(nm->n_sites, sizeof(unsigned));
        for (size_t i = 0; i < w->n; i++) {
            uint64_t v;
            if (w->items[i]->kind != CONF_SCALAR || !parse_u64(w->items[i]->value, &v) ||
                v > 1000000) {
                conf_errf(err, w->items[i], "names[%s].weights: expected an integer 0..1000000",
                          nm->name);
                return MS_ECONF;
            }
            nm->weights[i] = (unsigned)v;
        }
    }
    if (nm->ttl_min > nm->ttl) {
        nm->ttl_min = nm->ttl;
    }
    return 0;
}

static int load_location(conf_site_t *s, const conf_node_t *n, conf_err_t *err)
{
    const conf_node_t *l = conf_map_get(n, "location");
    if (!l) {
        return 0;
    }
    char *end;
    double lat = 0, lon = 0;
    if (l->kind == CONF_SCALAR) {
        lat = strtod(l->value, &end);
        if (*end == ',') {
            lon = strtod(end + 1, &end);
        } else {
            end = (char *)"x";
        }
    } else {
        end = (char *)"x";
    }
    if (*end || lat < -90 || lat > 90 || lon < -180 || lon > 180) {
        conf_errf(err, l, "sites[%s].location: expected \"LAT,LON\" in degrees", s->name);
        return MS_ECONF;
    }
    s->has_location = true;
    s->lat = lat;
    s->lon = lon;
    return 0;
}

static int load_name(conf_t *c, const conf_node_t *n, conf_err_t *err)
{
    conf_name_t *nm = &c->names[c->n_names];
    memset(nm, 0, sizeof(*nm));
    nm->src_file = c->path ? c->path : "(config)";
    nm->src_line = n->line;
    c->n_names++;
    if (conf_apply(n, name_schema, MS_ARRAY_LEN(name_schema), "names[]", nm, err) != 0) {
        return MS_ECONF;
    }
    if (!nm->name || !*nm->name) {
        conf_errf(err, n, "names[]: 'name' is required");
        return MS_ECONF;
    }
    for (size_t i = 0; i + 1 < c->n_names; i++) {
        if (strcasecmp(c->names[i].name, nm->name) == 0) {
            conf_errf(err, n, "names[%s]: defined twice (first on line %d)", nm->name,
                      c->names[i].src_line);
            return MS_ECONF;
        }
    }
    const conf_node_t *sl = conf_map_get(n, "sites");
    if (!sl || (sl->kind != CONF_SEQ && sl->kind != CONF_SCALAR)) {
        conf_errf(err, sl ? sl : n, "names[%s]: 'sites' (a list of site names) is required",
                  nm->name);
        return MS_ECONF;
    }
    size_t cnt = sl->kind == CONF_SEQ ? sl->n : 1;
    nm->sites = xcalloc(cnt ? cnt : 1, sizeof(size_t));
    for (size_t i = 0; i < cnt; i++) {
        const conf_node_t *it = sl->kind == CONF_SEQ ? sl->items[i] : sl;
        size_t k = c->n_sites;
        if (it->kind == CONF_SCALAR) {
            for (k = 0; k < c->n_sites && strcmp(c->sites[k].name, it->value) != 0; k++) {
            }
        }
        if (k == c->n_sites) {
            conf_errf(err, it, "names[%s]: site '%s' is not defined under sites:", nm->name,
                      it->kind == CONF_SCALAR ? it->value : "?");
            return MS_ECONF;
        }
        for (size_t j = 0; j < nm->n_sites; j++) {
            if (nm->sites[j] == k) {
                conf_errf(err, it, "names[%s]: site '%s' listed twice", nm->name, it->value);
                return MS_ECONF;
            }
        }
        nm->sites[nm->n_sites++] = k;
    }
    if (nm->n_sites == 0) {
        conf_errf(err, sl, "names[%s]: 'sites' is empty", nm->name);
        return MS_ECONF;
    }
    return load_order(nm, n, err);
}

int conf_load_sites(conf_t *c, const conf_node_t *sites, const conf_node_t *names,
                    const conf_node_t *hb, conf_err_t *err);
int conf_load_sites(conf_t *c, const conf_node_t *sites, const conf_node_t *names,
                    const conf_node_t *hb, conf_err_t *err)
{
    if (sites && !(sites->kind == CONF_SCALAR && sites->value[0] == 0)) {
        if (sites->kind != CONF_SEQ) {
            conf_errf(err, sites, "sites: expected a list of sites");
            return MS_ECONF;
        }
        c->sites = xcalloc(sites->n ? sites->n : 1, sizeof(*c->sites));
        for (size_t i = 0; i < sites->n; i++) {
            if (load_site(c, sites->items[i], err) != 0) {
                return MS_ECONF;
            }
        }
    }
    if (names && !(names->kind == CONF_SCALAR && names->value[0] == 0)) {
        if (names->kind != CONF_SEQ) {
            conf_errf(err, names, "names: expected a list of load-balanced names");
            return MS_ECONF;
        }
        c->names = xcalloc(names->n ? names->n : 1, sizeof(*c->names));
        for (size_t i = 0; i < names->n; i++) {
            if (load_name(c, names->items[i], err) != 0) {
                return MS_ECONF;
            }
        }
    }
    if (load_hb(c, hb, err) != 0) {
        return MS_ECONF;
    }
    return check_monitors(c, err);
}

void conf_free_sites(conf_t *c);
void conf_free_sites(conf_t *c)
{
    for (size_t i = 0; i < c->n_sites; i++) {
        conf_site_t *s = &c->sites[i];
        conf_release(site_schema, MS_ARRAY_LEN(site_schema), s);
        conf_release(check_schema, MS_ARRAY_LEN(check_schema), &s->web_check);
        for (size_t k = 0; k < s->n_web; k++) {
            free(s->web[k].name);
        }
        free(s->web);
        conf_release(db_schema, MS_ARRAY_LEN(db_schema), &s->db);
        conf_release(lb_schema, MS_ARRAY_LEN(lb_schema), &s->lb);
    }
    free(c->sites);
    for (size_t i = 0; i < c->n_names; i++) {
        conf_release(name_schema, MS_ARRAY_LEN(name_schema), &c->names[i]);
        free(c->names[i].sites);
        free(c->names[i].weights);
    }
    free(c->names);
    conf_release(hb_schema, MS_ARRAY_LEN(hb_schema), &c->hb);
}
