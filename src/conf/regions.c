/* regions.c: the regions: and geoip: sections: client subnets mapped to regions, each with a
 * preferred site order, and GeoIP country/continent codes mapped to those regions. */
#include "conf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int conf_parse_prefix(const char *s, conf_prefix_t *out)
{
    char buf[INET6_ADDRSTRLEN + 8];
    const char *slash = strchr(s, '/');
    if (!slash || (size_t)(slash - s) >= INET6_ADDRSTRLEN) {
        return MS_EINVAL;
    }
    memcpy(buf, s, (size_t)(slash - s));
    buf[slash - s] = '\0';
    uint64_t len;
    if (!parse_u64(slash + 1, &len)) {
        return MS_EINVAL;
    }
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        if (len > 32) {
            return MS_EINVAL;
        }
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        if (len > 128) {
            return MS_EINVAL;
        }
    } else {
        return MS_EINVAL;
    }
    out->len = (uint8_t)len;
    /* Host bits set are a typo more often than not: refuse them. */
    size_t bytes = out->family == AF_INET ? 4 : 16;
    for (size_t bit = len; bit < bytes * 8; bit++) {
        if (out->addr[bit / 8] & (0x80 >> (bit % 8))) {
            return MS_ERANGE;
        }
    }
    return 0;
}

static int site_index(const conf_t *c, const char *name, size_t *out)
{
    for (size_t k = 0; k < c->n_sites; k++) {
        if (strcmp(c->sites[k].name, name) == 0) {
            *out = k;
            return 0;
        }
    }
    return MS_ENOENT;
}

static int load_region(conf_t *c, const conf_node_t *n, conf_err_t *err)
{
    conf_region_t *r = &c->regions[c->n_regions++];
    memset(r, 0, sizeof(*r));
    r->src_file = c->path ? c->path : "(config)";
    r->src_line = n->line;
    const conf_node_t *name = conf_map_get(n, "name");
    const conf_node_t *subnets = conf_map_get(n, "subnets");
    const conf_node_t *prefer = conf_map_get(n, "prefer");
    if (n->kind != CONF_MAP || !name || name->kind != CONF_SCALAR || !prefer) {
        conf_errf(err, n, "regions[]: 'name' and 'prefer' are required");
        return MS_ECONF;
    }
    for (size_t i = 0; i < n->n; i++) {
        if (strcmp(n->keys[i], "name") && strcmp(n->keys[i], "subnets") &&
            strcmp(n->keys[i], "prefer")) {
            conf_node_t at = *n->items[i];
            at.line = n->key_lines[i];
            conf_errf(err, &at, "unknown option 'regions[].%s' (known: name, subnets, prefer)",
                      n->keys[i]);
            return MS_ECONF;
        }
    }
    r->name = xstrdup(name->value);
    for (size_t i = 0; i + 1 < c->n_regions; i++) {
        if (strcmp(c->regions[i].name, r->name) == 0) {
            conf_errf(err, name, "regions[%s]: defined twice", r->name);
            return MS_ECONF;
        }
    }
    if (subnets) {
        size_t cnt = subnets->kind == CONF_SEQ ? subnets->n : 1;
        r->subnets = xcalloc(cnt ? cnt : 1, sizeof(*r->subnets));
        for (size_t i = 0; i < cnt; i++) {
            const conf_node_t *it = subnets->kind == CONF_SEQ ? subnets->items[i] : subnets;
            int rc =
                it->kind == CONF_SCALAR ? conf_parse_prefix(it->value, &r->subnets[i]) : MS_EINVAL;
            if (rc != 0) {
                conf_errf(err, it, "regions[%s].subnets: '%s' is not a prefix like 192.0.2.0/24%s",
                          r->name, it->kind == CONF_SCALAR ? it->value : "?",
                          rc == MS_ERANGE ? " (host bits are set)" : "");
                return MS_ECONF;
            }
            r->n_subnets++;
        }
    }
    size_t cnt = prefer->kind == CONF_SEQ ? prefer->n : 1;
    r->prefer = xcalloc(cnt ? cnt : 1, sizeof(size_t));
    for (size_t i = 0; i < cnt; i++) {
        const conf_node_t *it = prefer->kind == CONF_SEQ ? prefer->items[i] : prefer;
        size_t k;
        if (it->kind != CONF_SCALAR || site_index(c, it->value, &k) != 0) {
            conf_errf(err, it,
                      "regions[%s].prefer: '%s' is not a site defined under sites:", r->name,
                      it->kind == CONF_SCALAR ? it->value : "?");
            return MS_ECONF;
        }
        r->prefer[r->n_prefer++] = k;
    }
    return 0;
}

static bool is_continent(const char *code)
{
    static const char *const cont[] = {"AF", "AN", "AS", "EU", "NA", "OC", "SA"};
    for (size_t i = 0; i < MS_ARRAY_LEN(cont); i++) {
        if (strcasecmp(code, cont[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* One of geoip.regions (continent codes are continents, other codes countries: NA is North
 * America there, never Namibia), geoip.countries, geoip.continents. */
static int load_geomap(conf_t *c, const conf_node_t *m, const char *key, int kind, conf_err_t *err)
{
    if (!m) {
        return 0;
    }
    if (m->kind != CONF_MAP) {
        conf_errf(err, m, "geoip.%s: expected a mapping CODE: region", key);
        return MS_ECONF;
    }
    c->geomap = xrealloc(c->geomap, (c->n_geomap + m->n + 1) * sizeof(*c->geomap));
    for (size_t i = 0; i < m->n; i++) {
        conf_geomap_t *gm = &c->geomap[c->n_geomap];
        memset(gm, 0, sizeof(*gm));
        const char *code = m->keys[i];
        size_t cl = strlen(code);
        bool ok = cl == 2 && isalpha((unsigned char)code[0]) && isalpha((unsigned char)code[1]);
        bool cont = kind == 2 || (kind == 0 && ok && is_continent(code));
        if (ok && kind == 2 && !is_continent(code)) {
            ok = false;
        }
        const conf_node_t *v = m->items[i];
        size_t r = c->n_regions;
        if (ok && v->kind == CONF_SCALAR) {
            for (r = 0; r < c->n_regions && strcmp(c->regions[r].name, v->value); r++) {
            }
        }
        if (!ok || r == c->n_regions) {
            conf_errf(err, v,
                      "geoip.%s: '%s: %s' needs a 2-letter %s code and a region defined under "
                      "regions:",
                      key, code, v->kind == CONF_SCALAR ? v->value : "?",
                      kind == 2   ? "continent (AF AN AS EU NA OC SA)"
                      : kind == 1 ? "ISO country"
                                  : "country or continent");
            return MS_ECONF;
        }
        gm->code[0] = (char)toupper((unsigned char)code[0]);
        gm->code[1] = (char)toupper((unsigned char)code[1]);
        gm->continent = cont;
        gm->region = r;
        c->n_geomap++;
    }
    return 0;
}

static int load_geoip(conf_t *c, const conf_node_t *g, conf_err_t *err)
{
    if (g->kind != CONF_MAP) {
        conf_errf(err, g, "geoip: expected a mapping (database, countries, continents, regions)");
        return MS_ECONF;
    }
    for (size_t i = 0; i < g->n; i++) {
        if (strcmp(g->keys[i], "database") && strcmp(g->keys[i], "regions") &&
            strcmp(g->keys[i], "countries") && strcmp(g->keys[i], "continents")) {
            conf_node_t at = *g->items[i];
            at.line = g->key_lines[i];
            conf_errf(err, &at,
                      "unknown option 'geoip.%s' (known: database, countries, continents, "
                      "regions)",
                      g->keys[i]);
            return MS_ECONF;
        }
    }
    const conf_node_t *db = conf_map_get(g, "database");
    if (!db || db->kind != CONF_SCALAR || !*db->value) {
        conf_errf(err, g, "geoip: 'database' (a MaxMind .mmdb file) is required");
        return MS_ECONF;
    }
    c->geoip_db = conf_resolve_path(c->path, db->value);
    if (load_geomap(c, conf_map_get(g, "countries"), "countries", 1, err) != 0 ||
        load_geomap(c, conf_map_get(g, "continents"), "continents", 2, err) != 0 ||
        load_geomap(c, conf_map_get(g, "regions"), "regions", 0, err) != 0) {
        return MS_ECONF;
    }
    return 0;
}

int conf_load_regions(conf_t *c, const conf_node_t *regions, const conf_node_t *geoip,
                      conf_err_t *err);
int conf_load_regions(conf_t *c, const conf_node_t *regions, const conf_node_t *geoip,
                      conf_err_t *err)
{
    if (regions && !(regions->kind == CONF_SCALAR && regions->value[0] == 0)) {
        if (regions->kind != CONF_SEQ) {
            conf_errf(err, regions, "regions: expected a list of {name, subnets, prefer}");
            return MS_ECONF;
        }
        c->regions = xcalloc(regions->n ? regions->n : 1, sizeof(*c->regions));
        for (size_t i = 0; i < regions->n; i++) {
            if (load_region(c, regions->items[i], err) != 0) {
                return MS_ECONF;
            }
        }
    }
    if (geoip && load_geoip(c, geoip, err) != 0) {
        return MS_ECONF;
    }
    return 0;
}

void conf_free_regions(conf_t *c);
void conf_free_regions(conf_t *c)
{
    for (size_t i = 0; i < c->n_regions; i++) {
        free(c->regions[i].name);
        free(c->regions[i].subnets);
        free(c->regions[i].prefer);
    }
    free(c->regions);
    free(c->geomap);
    free(c->geoip_db);
}
