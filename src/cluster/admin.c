/* admin.c: operator state (drain, force) with its persistence, and the commands that show
 * and steer the cluster: status, drain, undrain, force, explain. */
#include "internal.h"

#include "ctl/ctl.h"
#include "policy/policy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

admin_t *admin_find(cluster_t *c, const char *site, bool create)
{
    for (size_t i = 0; i < c->n_admin; i++) {
        if (strcmp(c->admin[i].site, site) == 0) {
            return &c->admin[i];
        }
    }
    if (!create || c->n_admin == MAX_SITES) {
        return NULL;
    }
    admin_t *a = &c->admin[c->n_admin++];
    memset(a, 0, sizeof(*a));
    snprintf(a->site, sizeof(a->site), "%s", site);
    return a;
}

/* State file: one line per site with operator state:
 *   SITE drain soft|hard|none force up|down|none UNTIL_WALL_MS
 * written to a temporary file and renamed over the old one, so a crash never leaves half. */
void admin_save(cluster_t *c)
{
    const snap_t *cur = snap_current();
    const char *path = cur ? cur->conf->state_file : NULL;
    if (!path || !*path) {
        return;
    }
    char *tmp = xasprintf("%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        log_warn("state file %s: %s", tmp, strerror(errno));
        free(tmp);
        return;
    }
    fprintf(f, "# multisited operator state: SITE drain soft|hard|none force up|down|none "
               "UNTIL_WALL_MS (0 = no expiry)\n");
    for (size_t i = 0; i < c->n_admin; i++) {
        const admin_t *a = &c->admin[i];
        if (!a->drain && !a->force) {
            continue;
        }
        fprintf(f, "%s drain %s force %s %llu\n", a->site,
                a->drain == ADMIN_DRAIN_HARD ? "hard"
                : a->drain                   ? "soft"
                                             : "none",
                a->force == ADMIN_FORCE_UP     ? "up"
                : a->force == ADMIN_FORCE_DOWN ? "down"
                                               : "none",
                (unsigned long long)a->force_until);
    }
    bool ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        log_warn("state file %s: cannot write: %s", path, strerror(errno));
    }
    free(tmp);
}

void admin_load(cluster_t *c, const char *path)
{
    if (!path || !*path) {
        return;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno != ENOENT) {
            log_warn("state file %s: %s", path, strerror(errno));
        }
        return;
    }
    char line[512];
    int lineno = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        if (line[0] == '#' || line[0] == '\n') {
            continue;
        }
        char site[64], drain[8], force[8], last[8] = "unknown";
        unsigned long long until;
        if (sscanf(line, "%63s drain %7s force %7s %llu last %7s", site, drain, force, &until,
                   last) < 4) {
            log_warn("%s:%d: ignored (not SITE drain X force Y UNTIL)", path, lineno);
            continue;
        }
        admin_t *a = admin_find(c, site, true);
        if (!a) {
            continue;
        }
        a->drain = strcmp(drain, "hard") == 0   ? ADMIN_DRAIN_HARD
                   : strcmp(drain, "soft") == 0 ? ADMIN_DRAIN_SOFT
                                                : ADMIN_DRAIN_NONE;
        a->force = strcmp(force, "up") == 0     ? ADMIN_FORCE_UP
                   : strcmp(force, "down") == 0 ? ADMIN_FORCE_DOWN
                                                : ADMIN_FORCE_NONE;
        a->force_until = until;
        a->last = strcmp(last, "up") == 0 ? 1 : strcmp(last, "down") == 0 ? 2 : 0;
        log_info("state file: site %s drain %s force %s last known %s", site, drain, force, last);
    }
    fclose(f);
}

/* Availability after the operator's overrides (what the answers use). */
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

static void fmt_num(char *b, size_t n, double v, const char *unit)
{
    if (v < 0) {
        snprintf(b, n, "unknown");
    } else {
        snprintf(b, n, "%.2f%s", v, unit);
    }
}

static const char *state_str(health_state_t s)
{
    return s == HEALTH_UP ? "UP" : s == HEALTH_DOWN ? "DOWN" : "UNKNOWN";
}

static void json_str(buf_t *b, const char *s)
{
    buf_append(b, "\"", 1);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            buf_printf(b, "\\%c", ch);
        } else if (ch < 0x20) {
            buf_printf(b, "\\u%04x", ch);
        } else {
            buf_append(b, s, 1);
        }
    }
    buf_append(b, "\"", 1);
}

static int site_index(const conf_t *conf, const char *name)
{
    for (size_t i = 0; i < conf->n_sites; i++) {
        if (strcmp(conf->sites[i].name, name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static void order_names(const snap_t *s, const snap_class_t *cl, buf_t *b, bool json)
{
    for (size_t k = 0; k < cl->n_order; k++) {
        const char *n = s->conf->sites[cl->order[k]].name;
        if (json) {
            if (k) {
                buf_append(b, ",", 1);
            }
            json_str(b, n);
        } else {
            buf_printf(b, "%s%s", k ? ", " : "", n);
        }
    }
}

static unsigned cmd_status(cluster_t *c, bool json, buf_t *out)
{
    const snap_t *s = snap_current();
    const conf_t *conf = s->conf;
    uint64_t now = time_wall_ms();
    if (json) {
        buf_printf(out, "{\"generation\":%llu,\"sites\":[", (unsigned long long)s->generation);
    } else {
        buf_printf(out, "%-10s %-9s %-10s %-8s %s\n", "SITE", "VERDICT", "MONITOR", "ADMIN",
                   "REASON");
    }
    for (size_t i = 0; i < conf->n_sites; i++) {
        const conf_site_t *cs = &conf->sites[i];
        site_view_t v;
        cluster_site_view(c, i, &v);
        const admin_t *a = admin_find(c, cs->name, false);
        char adm[32] = "-";
        if (a && (a->drain || a->force)) {
            snprintf(adm, sizeof(adm), "%s%s%s",
                     a->drain == ADMIN_DRAIN_HARD ? "drain!"
                     : a->drain                   ? "drain"
                                                  : "",
                     a->drain && a->force ? "," : "",
                     a->force == ADMIN_FORCE_UP ? "force-up"
                     : a->force                 ? "force-down"
                                                : "");
        }
        if (json) {
            buf_printf(out, "%s{\"name\":", i ? "," : "");
            json_str(out, cs->name);
            buf_printf(out,
                       ",\"available\":%s,\"evidence_available\":%s,\"monitor\":\"%s\","
                       "\"drain\":\"%s\",\"force\":\"%s\",\"load\":%.3f,\"rtt_ms\":%.2f",
                       effective_up(c, cs->name, &v) ? "true" : "false", v.up ? "true" : "false",
                       conf_monitors[cs->monitor],
                       a && a->drain == ADMIN_DRAIN_HARD ? "hard"
                       : a && a->drain                   ? "soft"
                                                         : "none",
                       a && a->force == ADMIN_FORCE_UP     ? "up"
                       : a && a->force == ADMIN_FORCE_DOWN ? "down"
                                                           : "none",
                       v.load, v.rtt_ms);
            if (v.hs) {
                buf_printf(out,
                           ",\"probe\":{\"verdict\":\"%s\",\"web_up\":%u,\"web_total\":%u,"
                           "\"db\":\"%s\",\"lb\":\"%s\",\"transitions\":%llu,"
                           "\"since_ms_ago\":%lld,\"reason\":",
                           state_str(v.hs->state), v.hs->web_up, v.hs->web_total,
                           state_str(v.hs->db), state_str(v.hs->lb),
                           (unsigned long long)v.hs->transitions,
                           v.hs->since_ms ? (long long)(now - v.hs->since_ms) : -1LL);
                json_str(out, v.hs->reason);
                buf_append(out, "}", 1);
            }
            if (v.hb) {
                buf_printf(out,
                           ",\"heartbeat\":{\"alive\":%s,\"available\":%s,"
                           "\"reported\":\"%s\",\"live_senders\":%u,"
                           "\"last_rx_ms_ago\":%lld,\"digest_mismatch\":%s}",
                           v.hb->alive ? "true" : "false", v.hb->available ? "true" : "false",
                           state_str(v.hb->reported), v.hb->live_senders,
                           v.hb->last_rx_ms ? (long long)(time_mono_ms() - v.hb->last_rx_ms) : -1LL,
                           v.hb->digest_mismatch ? "true" : "false");
            }
            buf_append(out, "}", 1);
        } else {
            char why[400];
            if (cs->monitor == CONF_MONITOR_HEARTBEAT && v.hb) {
                snprintf(why, sizeof(why), "heartbeats %s, %u sender(s), reports %s%s",
                         v.hb->alive ? "alive" : "missing", v.hb->live_senders,
                         state_str(v.hb->reported),
                         v.hb->digest_mismatch ? "; CONFIG DIGEST DIFFERS" : "");
            } else if (v.hs) {
                snprintf(why, sizeof(why), "%s", v.hs->reason[0] ? v.hs->reason : "no result yet");
            } else {
                snprintf(why, sizeof(why), "-");
            }
            buf_printf(out, "%-10s %-9s %-10s %-8s %s\n", cs->name,
                       effective_up(c, cs->name, &v) ? "available" : "DOWN",
                       conf_monitors[cs->monitor], adm, why);
        }
    }
    if (json) {
        buf_append(out, "],\"names\":[", 11);
    } else {
        buf_printf(out, "\n%-28s %-6s %s\n", "NAME", "TTL", "ANSWER (clients without locality)");
    }
    for (size_t i = 0; i < s->n_lb; i++) {
        const snap_lb_t *lb = &s->lb[i];
        if (json) {
            buf_printf(out, "%s{\"name\":", i ? "," : "");
            json_str(out, lb->conf->name);
            buf_printf(out, ",\"ttl\":%u,\"servfail\":%s,\"order\":[", lb->ttl,
                       lb->servfail ? "true" : "false");
            order_names(s, &lb->cls[0], out, true);
            buf_append(out, "]}", 2);
        } else {
            buf_printf(out, "%-28s %-6u ", lb->conf->name, lb->ttl);
            if (lb->servfail) {
                buf_printf(out, "SERVFAIL");
            } else {
                order_names(s, &lb->cls[0], out, false);
            }
            buf_append(out, "\n", 1);
        }
    }
    if (json) {
        buf_append(out, "]}\n", 3);
    }
    return CTL_OK;
}

/* drain SITE/WEB: one web server counts as down in its site's verdict. */
static unsigned cmd_drain_web(cluster_t *c, const char *arg, buf_t *out, bool on)
{
    const conf_t *conf = snap_current()->conf;
    const char *slash = strchr(arg, '/');
    char site[64];
    snprintf(site, sizeof(site), "%.*s", (int)(slash - arg), arg);
    int si = site_index(conf, site);
    if (si < 0 || !c->health || health_set_web_drained(c->health, (size_t)si, slash + 1, on) != 0) {
        buf_printf(out, "no web server '%s' (SITE/WEB, as named under web-servers)\n", arg);
        return CTL_ENOENT;
    }
    admin_t *a = admin_find(c, arg, true);
    if (a) {
        a->drain = on ? ADMIN_DRAIN_SOFT : ADMIN_DRAIN_NONE;
    }
    log_info("operator: web server %s %s", arg, on ? "drained" : "undrained");
    admin_save(c);
    buf_printf(out, "web server %s: %s\n", arg,
               on ? "drained: counts as down in its site's verdict" : "undrained");
    return CTL_OK;
}

static unsigned cmd_drain(cluster_t *c, size_t argc, char *const *argv, buf_t *out, bool on)
{
    const conf_t *conf = snap_current()->conf;
    if (argc == 2 && strchr(argv[1], '/')) {
        return cmd_drain_web(c, argv[1], out, on);
    }
    if (argc < 2 || argc > 3 || (argc == 3 && (!on || strcmp(argv[2], "--hard") != 0))) {
        buf_printf(out, "usage: drain SITE [--hard] | drain SITE/WEB | undrain SITE[/WEB]\n");
        return CTL_EUSAGE;
    }
    if (site_index(conf, argv[1]) < 0) {
        buf_printf(out, "no site '%s'\n", argv[1]);
        return CTL_ENOENT;
    }
    admin_t *a = admin_find(c, argv[1], true);
    a->drain = !on ? ADMIN_DRAIN_NONE : argc == 3 ? ADMIN_DRAIN_HARD : ADMIN_DRAIN_SOFT;
    log_info("operator: site %s %s", argv[1],
             !on         ? "undrained"
             : argc == 3 ? "drained (hard: left out)"
                         : "drained (last)");
    admin_save(c);
    cluster_publish(c, true);
    buf_printf(out, "site %s: %s\n", argv[1],
               !on         ? "undrained"
               : argc == 3 ? "drained: left out of every answer"
                           : "drained: last in every answer");
    return CTL_OK;
}

static bool parse_duration_ms(const char *s, uint64_t *ms)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s) {
        return false;
    }
    uint64_t mult = strcmp(end, "ms") == 0           ? 1
                    : strcmp(end, "s") == 0 || !*end ? 1000
                    : strcmp(end, "m") == 0          ? 60000
                    : strcmp(end, "h") == 0          ? 3600000
                    : strcmp(end, "d") == 0          ? 86400000
                                                     : 0;
    if (!mult || v > 1000000000ull) {
        return false;
    }
    *ms = v * mult;
    return true;
}

static unsigned cmd_force(cluster_t *c, size_t argc, char *const *argv, buf_t *out)
{
    const conf_t *conf = snap_current()->conf;
    uint64_t dur = 0;
    bool ok = argc == 3 ||
              (argc == 5 && strcmp(argv[3], "--for") == 0 && parse_duration_ms(argv[4], &dur));
    int f = argc >= 3 ? (strcmp(argv[2], "up") == 0      ? ADMIN_FORCE_UP
                         : strcmp(argv[2], "down") == 0  ? ADMIN_FORCE_DOWN
                         : strcmp(argv[2], "clear") == 0 ? ADMIN_FORCE_NONE
                                                         : -1)
                      : -1;
    if (!ok || f < 0) {
        buf_printf(out, "usage: force SITE up|down|clear [--for DURATION]\n");
        return CTL_EUSAGE;
    }
    if (site_index(conf, argv[1]) < 0) {
        buf_printf(out, "no site '%s'\n", argv[1]);
        return CTL_ENOENT;
    }
    admin_t *a = admin_find(c, argv[1], true);
    a->force = f;
    a->force_until = f && dur ? time_wall_ms() + dur : 0;
    log_info("operator: site %s forced %s%s%s", argv[1], argv[2], dur ? " for " : "",
             dur ? argv[4] : "");
    admin_save(c);
    cluster_publish(c, true);
    buf_printf(out, "site %s: force %s%s%s\n", argv[1], argv[2], dur ? " for " : "",
               dur ? argv[4] : "");
    return CTL_OK;
}

static unsigned cmd_explain(cluster_t *c, size_t argc, char *const *argv, buf_t *out)
{
    const snap_t *s = snap_current();
    const char *ecs = NULL;
    if (argc == 5 && strcmp(argv[3], "--ecs") == 0) {
        ecs = argv[4];
    } else if (argc != 3) {
        buf_printf(out, "usage: explain NAME CLIENT_IP [--ecs SUBNET]\n");
        return CTL_EUSAGE;
    }
    uint8_t wire[DNS_MAX_NAME];
    size_t wl = dname_from_str(argv[1], wire, sizeof(wire));
    const snap_lb_t *lb = wl ? snap_lb_find(s, wire, wl) : NULL;
    if (!lb) {
        buf_printf(out, "'%s' is not a load-balanced name\n", argv[1]);
        return CTL_ENOENT;
    }
    net_addr_t client;
    if (net_parse_ip(argv[2], &client) != 0) {
        buf_printf(out, "'%s' is not an IP address\n", argv[2]);
        return CTL_EUSAGE;
    }
    int fam = client.sa.sa_family;
    uint8_t addr[16] = {0};
    unsigned src = fam == AF_INET ? 32 : 128, scope = 0;
    memcpy(addr, fam == AF_INET ? (void *)&client.sin.sin_addr : (void *)&client.sin6.sin6_addr,
           fam == AF_INET ? 4 : 16);
    const char *via = "the query's source address";
    if (ecs) {
        conf_prefix_t px;
        if (conf_parse_prefix(ecs, &px) != 0) {
            buf_printf(out, "'%s' is not a subnet like 192.0.2.0/24\n", ecs);
            return CTL_EUSAGE;
        }
        fam = px.family;
        memcpy(addr, px.addr, sizeof(addr));
        src = px.len;
        via = "the EDNS Client Subnet";
    }
    unsigned cls = 0;
    if (lb->locality && s->classifier && src > 0) {
        cls = pol_classify(s->classifier, fam, addr, src, &scope);
    }
    const conf_t *conf = s->conf;
    buf_printf(out, "name %s, client %s%s%s\n", lb->conf->name, argv[2], ecs ? " with ECS " : "",
               ecs ? ecs : "");
    buf_printf(out, "policies: ");
    for (size_t k = 0; k < lb->conf->n_order; k++) {
        buf_printf(out, "%s%s", k ? ", " : "", conf_orders[lb->conf->order[k]]);
    }
    buf_printf(out, "; then the configured order\n");
    if (!lb->locality) {
        buf_printf(out, "client class: none (the name does not order by locality; ECS scope 0)\n");
    } else if (cls == 0) {
        buf_printf(out, "client class: none: %s matches no region (ECS scope /%u)\n", via, scope);
    } else if (cls <= conf->n_regions) {
        buf_printf(out, "client class: region %s, from %s (ECS scope /%u)\n",
                   conf->regions[cls - 1].name, via, scope);
    } else {
        buf_printf(out,
                   "client class: nearest site %s by GeoIP location, from %s (ECS scope /%u)\n",
                   conf->sites[cls - 1 - conf->n_regions].name, via, scope);
    }
    const snap_class_t *cl = &lb->cls[cls < lb->n_cls ? cls : 0];
    if (lb->servfail) {
        buf_printf(out, "answer: SERVFAIL (no site available, fallback servfail)\n");
    } else {
        buf_printf(out, "answer (ttl %u): ", lb->ttl);
        order_names(s, cl, out, false);
        buf_printf(out, "%s\n",
                   cl->n_var > 1 ? "  (weighted: the first site is drawn per query)" : "");
    }
    for (size_t k = 0; k < lb->conf->n_sites; k++) {
        size_t si = lb->conf->sites[k];
        site_view_t v;
        cluster_site_view(c, si, &v);
        const admin_t *a = admin_find(c, conf->sites[si].name, false);
        char ld[32], rt[32];
        fmt_num(ld, sizeof(ld), v.load, "");
        fmt_num(rt, sizeof(rt), v.rtt_ms, " ms");
        bool eff = effective_up(c, conf->sites[si].name, &v);
        buf_printf(out, "  %-10s %s; %s (monitor %s%s); load %s; rtt %s%s\n", conf->sites[si].name,
                   (cl->set >> si) & 1 ? "in the answer" : "left out",
                   eff ? "available" : "unavailable", conf_monitors[conf->sites[si].monitor],
                   a && a->force ? (a->force == ADMIN_FORCE_UP ? ", forced up" : ", forced down")
                                 : "",
                   ld, rt,
                   a && a->drain == ADMIN_DRAIN_HARD ? "; drained (hard)"
                   : a && a->drain                   ? "; drained (last)"
                                                     : "");
    }
    return CTL_OK;
}

unsigned cluster_ctl(cluster_t *c, size_t argc, char *const *argv, buf_t *out)
{
    if (!snap_current()) {
        buf_printf(out, "not ready\n");
        return CTL_EFAIL;
    }
    const char *cmd = argv[0];
    if (strcmp(cmd, "status") == 0) {
        return cmd_status(c, argc > 1 && strcmp(argv[1], "--json") == 0, out);
    }
    if (strcmp(cmd, "drain") == 0 || strcmp(cmd, "undrain") == 0) {
        return cmd_drain(c, argc, argv, out, strcmp(cmd, "drain") == 0);
    }
    if (strcmp(cmd, "force") == 0) {
        return cmd_force(c, argc, argv, out);
    }
    if (strcmp(cmd, "explain") == 0) {
        return cmd_explain(c, argc, argv, out);
    }
    buf_printf(out, "unknown command '%s' (status, drain, undrain, force, explain, reload)\n", cmd);
    return CTL_EUSAGE;
}
