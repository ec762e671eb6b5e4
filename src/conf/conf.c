/* conf.c: the multisited configuration: schema tables for each section and the loader that
 * turns a YAML file into a validated, immutable conf_t. */
#include "conf.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

const char *const conf_log_levels[] = {"error", "warning", "info", "debug", NULL};

/* Defaults follow what authoritative servers ship with: 1232 is the DNS Flag Day 2020 UDP
 * size (no fragmentation on common paths); 10 s TCP idle as Knot's tcp-idle-timeout. */
static const conf_opt_t server_schema[] = {
    {"identity", CONF_T_STR, offsetof(conf_t, identity), 0, 0, NULL, NULL,
     "answer to CHAOS TXT id.server/hostname.bind; default the host name; \"\" hides it"},
    {"version", CONF_T_STR, offsetof(conf_t, version), 0, 0, "multisite " MS_VERSION, NULL,
     "answer to CHAOS TXT version.bind/version.server; \"\" hides it"},
    {"nsid", CONF_T_STR, offsetof(conf_t, nsid), 0, 0, "", NULL,
     "EDNS NSID (RFC 5001) payload: text, or 0x followed by hex; \"\" disables NSID"},
    {"listen", CONF_T_ADDRS, offsetof(conf_t, listen), 53, 0, "127.0.0.1:53", NULL,
     "addresses to serve DNS on (UDP and TCP), ADDR or ADDR:PORT or [V6]:PORT; a list"},
    {"udp-threads", CONF_T_UINT, offsetof(conf_t, udp_threads), 1, 64, "2", NULL,
     "UDP threads per listen address, each with its own SO_REUSEPORT socket"},
    {"tcp-threads", CONF_T_UINT, offsetof(conf_t, tcp_threads), 1, 16, "1", NULL,
     "TCP threads (each serves all listen addresses)"},
    {"tcp-idle-timeout", CONF_T_DURATION, offsetof(conf_t, tcp_idle_timeout_ms), 100, 3600000,
     "10s", NULL, "close TCP connections idle for this long"},
    {"tcp-max-clients", CONF_T_UINT, offsetof(conf_t, tcp_max_clients), 1, 100000, "1000", NULL,
     "maximum concurrent TCP connections per TCP thread; more are refused"},
    {"udp-max-payload", CONF_T_UINT, offsetof(conf_t, udp_max_payload), 512, 4096, "1232", NULL,
     "largest UDP reply we send to EDNS clients (RFC 6891), also our advertised size"},
    {"log-level", CONF_T_ENUM, offsetof(conf_t, log_level), 0, 0, "info", conf_log_levels,
     "error, warning, info or debug"},
    {"control-socket", CONF_T_STR, offsetof(conf_t, control_socket), 0, 0, "/run/multisited.sock",
     NULL, "unix socket multisitectl talks to (owner-only, mode 0600); \"\" disables it"},
    {"state-file", CONF_T_STR, offsetof(conf_t, state_file), 0, 0, "", NULL,
     "file that keeps operator state (drain, force) across restarts; \"\" keeps none"},
    {"status-listen", CONF_T_STR, offsetof(conf_t, status_listen), 0, 0, "127.0.0.1:8053", NULL,
     "status HTTP endpoint (/status JSON, /metrics Prometheus, / dashboard), ADDR:PORT or "
     "[V6]:PORT; unauthenticated: keep it on loopback; \"\" disables it"},
    {"sync-status-socket", CONF_T_STR, offsetof(conf_t, sync_status_socket), 0, 0, "", NULL,
     "multisite-syncd's status socket: replication lag, conflicts and quarantine are shown on "
     "the status endpoint; \"\" shows none"},
    {"syslog", CONF_T_BOOL, offsetof(conf_t, log_syslog), 0, 0, "false", NULL,
     "log to syslog instead of stderr"},
};

static const conf_opt_t zone_schema[] = {
    {"origin", CONF_T_CUSTOM, 0, 0, 0, NULL, NULL, "zone apex, e.g. example.com (required)"},
    {"file", CONF_T_CUSTOM, 0, 0, 0, NULL, NULL,
     "RFC 1035 master file, relative to the config file's directory (required)"},
};

void conf_print_schema_table(FILE *f, const char *section, const conf_opt_t *schema, size_t n);
/* sites.c */
void conf_print_sites_schema(FILE *f);
int conf_load_sites(conf_t *c, const conf_node_t *sites, const conf_node_t *names,
                    const conf_node_t *hb, conf_err_t *err);
void conf_free_sites(conf_t *c);
/* regions.c */
int conf_load_regions(conf_t *c, const conf_node_t *regions, const conf_node_t *geoip,
                      conf_err_t *err);
void conf_free_regions(conf_t *c);

void conf_print_schema(FILE *f)
{
    conf_print_schema_table(f, "server", server_schema, MS_ARRAY_LEN(server_schema));
    conf_print_schema_table(f, "zones[]", zone_schema, MS_ARRAY_LEN(zone_schema));
    conf_print_sites_schema(f);
}

static char *default_identity(void)
{
    char host[256];
    if (gethostname(host, sizeof(host) - 1) != 0) {
        return xstrdup("");
    }
    host[sizeof(host) - 1] = '\0';
    return xstrdup(host);
}

conf_t *conf_new_default(void)
{
    conf_t *c = xcalloc(1, sizeof(*c));
    conf_err_t err;
    if (conf_apply(NULL, server_schema, MS_ARRAY_LEN(server_schema), "server", c, &err) != 0) {
        /* The defaults are ours: failing to parse them is a bug. */
        log_err("built-in defaults invalid: %s", err.msg);
        abort();
    }
    c->identity = default_identity();
    /* Quick mode serves zones for a person at a terminal: no control socket unless asked. */
    free(c->control_socket);
    c->control_socket = xstrdup("");
    free(c->status_listen);
    c->status_listen = xstrdup("");
    free(c->listen.v);
    c->listen.v = NULL;
    c->listen.n = 0;
    return c;
}

void conf_add_zone(conf_t *c, const char *origin, const char *file)
{
    c->zones = xrealloc(c->zones, (c->n_zones + 1) * sizeof(*c->zones));
    conf_zone_t *z = &c->zones[c->n_zones++];
    memset(z, 0, sizeof(*z));
    z->origin = xstrdup(origin);
    z->file = xstrdup(file);
    z->src_file = "(command line)";
}

void conf_add_listen(conf_t *c, const net_addr_t *a)
{
    c->listen.v = xrealloc(c->listen.v, (c->listen.n + 1) * sizeof(*c->listen.v));
    c->listen.v[c->listen.n++] = *a;
}

char *conf_resolve_path(const char *conf_path, const char *p)
{
    if (p[0] == '/' || !conf_path || !strchr(conf_path, '/')) {
        return xstrdup(p);
    }
    const char *slash = strrchr(conf_path, '/');
    return xasprintf("%.*s/%s", (int)(slash - conf_path), conf_path, p);
}

static int load_zones(conf_t *c, const conf_node_t *zs, conf_err_t *err)
{
    if (!zs || (zs->kind == CONF_SCALAR && zs->value[0] == '\0')) {
        return 0; /* absent, or "zones:" with nothing under it */
    }
    if (zs->kind != CONF_SEQ) {
        conf_errf(err, zs, "zones: expected a list of {origin, file}");
        return MS_ECONF;
    }
    for (size_t i = 0; i < zs->n; i++) {
        const conf_node_t *z = zs->items[i];
        conf_t dummy;
        if (conf_apply(z, zone_schema, MS_ARRAY_LEN(zone_schema), "zones[]", &dummy, err) != 0) {
            return MS_ECONF;
        }
        const conf_node_t *o = conf_map_get(z, "origin");
        const conf_node_t *f = conf_map_get(z, "file");
        if (!o || o->kind != CONF_SCALAR || !*o->value) {
            conf_errf(err, z, "zones[%zu]: 'origin' is required", i);
            return MS_ECONF;
        }
        if (!f || f->kind != CONF_SCALAR || !*f->value) {
            conf_errf(err, z, "zones[%zu]: 'file' is required", i);
            return MS_ECONF;
        }
        for (size_t j = 0; j < c->n_zones; j++) {
            if (strcasecmp(c->zones[j].origin, o->value) == 0) {
                conf_errf(err, o, "zones[%zu]: zone '%s' defined twice (first on line %d)", i,
                          o->value, c->zones[j].src_line);
                return MS_ECONF;
            }
        }
        char *path = conf_resolve_path(c->path, f->value);
        conf_add_zone(c, o->value, path);
        free(path);
        c->zones[c->n_zones - 1].src_file = c->path; /* the doc (and o->file) is freed */
        c->zones[c->n_zones - 1].src_line = o->line;
    }
    return 0;
}

int conf_load(const char *path, conf_t **out, conf_err_t *err)
{
    conf_doc_t *doc = NULL;
    if (conf_doc_load(path, &doc, err) != 0) {
        return MS_ECONF;
    }
    const conf_node_t *root = conf_doc_root(doc);
    conf_t *c = xcalloc(1, sizeof(*c));
    c->path = xstrdup(path);
    /* "sync" belongs to multisite-syncd, which reads the same file with its own schema. */
    static const char *const sections[] = {"server",    "zones",   "sites", "names",
                                           "heartbeat", "regions", "geoip", "sync"};
    for (size_t i = 0; i < root->n; i++) {
        bool known = false;
        for (size_t j = 0; j < MS_ARRAY_LEN(sections); j++) {
            known = known || strcmp(root->keys[i], sections[j]) == 0;
        }
        if (!known) {
            conf_node_t at = *root->items[i];
            at.line = root->key_lines[i];
            conf_errf(err, &at,
                      "unknown section '%s' (known: server, zones, sites, names, heartbeat, "
                      "regions, geoip, sync)",
                      root->keys[i]);
            goto fail;
        }
    }
    if (conf_apply(conf_map_get(root, "server"), server_schema, MS_ARRAY_LEN(server_schema),
                   "server", c, err) != 0) {
        goto fail;
    }
    if (!c->identity) {
        c->identity = default_identity();
    }
    if (c->listen.n == 0) {
        const conf_node_t *srv = conf_map_get(root, "server");
        const conf_node_t *l = conf_map_get(srv, "listen");
        conf_errf(err, l ? l : root, "server.listen: at least one address is required");
        goto fail;
    }
    net_addr_t sa;
    if (*c->status_listen && net_parse_addr(c->status_listen, 8053, &sa) != 0) {
        const conf_node_t *srv = conf_map_get(root, "server");
        conf_errf(err, srv ? conf_map_get(srv, "status-listen") : NULL,
                  "server.status-listen: '%s' is not ADDR:PORT or [V6]:PORT", c->status_listen);
        goto fail;
    }
    if (load_zones(c, conf_map_get(root, "zones"), err) != 0) {
        goto fail;
    }
    if (conf_load_sites(c, conf_map_get(root, "sites"), conf_map_get(root, "names"),
                        conf_map_get(root, "heartbeat"), err) != 0) {
        goto fail;
    }
    if (conf_load_regions(c, conf_map_get(root, "regions"), conf_map_get(root, "geoip"), err) !=
        0) {
        goto fail;
    }
    conf_doc_free(doc);
    *out = c;
    return 0;
fail:
    conf_doc_free(doc);
    conf_free(c);
    return MS_ECONF;
}

void conf_free(conf_t *c)
{
    if (!c) {
        return;
    }
    conf_release(server_schema, MS_ARRAY_LEN(server_schema), c);
    for (size_t i = 0; i < c->n_zones; i++) {
        free(c->zones[i].origin);
        free(c->zones[i].file);
    }
    free(c->zones);
    conf_free_sites(c);
    conf_free_regions(c);
    free(c->path);
    free(c);
}
