/* classify.c: client address -> client class, with the prefix length the answer holds for
 * (the ECS scope, RFC 7871 7.2.1).
 *
 * Subnet maps are binary tries, one per family, walked bit by bit (at most 32 or 128 steps,
 * no allocation). The longest matching prefix wins. The scope is exact for the trie: the
 * depth at which the walk could not go on (every address below that prefix gets the same
 * class), or, when the client's source prefix ends above more specific entries, the deepest
 * of those (RFC 7871 allows a scope longer than the source prefix for that case).
 *
 * GeoIP (libmaxminddb) is consulted only when no subnet matches. Its lookups cost a tree walk
 * plus a record decode, so results are cached per thread by (family, source prefix, bits). */
#include "policy.h"

#include <maxminddb.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct {
    int32_t child[2];
    int32_t region;   /* -1 none */
    uint8_t maxdepth; /* deepest entry in this subtree (this node included) */
} tnode_t;

typedef struct {
    tnode_t *nodes;
    size_t n, cap;
} trie_t;

struct pol_classifier {
    trie_t t4, t6;
    size_t n_regions;
    size_t n_sites;
    bool geo;
    MMDB_s mmdb;
    conf_geomap_t *geomap;
    size_t n_geomap;
    struct {
        bool has;
        double lat, lon;
    } * sites;
    uint64_t generation; /* tags the per-thread cache */
};

static uint64_t classifier_gen;

static int32_t trie_node(trie_t *t)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->nodes = xrealloc(t->nodes, t->cap * sizeof(*t->nodes));
    }
    tnode_t *n = &t->nodes[t->n];
    n->child[0] = n->child[1] = -1;
    n->region = -1;
    n->maxdepth = 0;
    return (int32_t)t->n++;
}

static void trie_insert(trie_t *t, const uint8_t *addr, unsigned len, int32_t region)
{
    if (t->n == 0) {
        trie_node(t);
    }
    int32_t cur = 0;
    for (unsigned i = 0; i < len; i++) {
        if (t->nodes[cur].maxdepth < len) {
            t->nodes[cur].maxdepth = (uint8_t)len;
        }
        int bit = (addr[i / 8] >> (7 - i % 8)) & 1;
        if (t->nodes[cur].child[bit] < 0) {
            int32_t nn = trie_node(t); /* may move t->nodes */
            t->nodes[cur].child[bit] = nn;
        }
        cur = t->nodes[cur].child[bit];
    }
    if (t->nodes[cur].maxdepth < len) {
        t->nodes[cur].maxdepth = (uint8_t)len;
    }
    if (t->nodes[cur].region < 0) { /* the first region listing a prefix keeps it */
        t->nodes[cur].region = region;
    }
}

static int32_t trie_lookup(const trie_t *t, const uint8_t *addr, unsigned src, unsigned *scope)
{
    if (t->n == 0) {
        *scope = 0;
        return -1;
    }
    int32_t cur = 0, best = t->nodes[0].region;
    unsigned i;
    for (i = 0; i < src; i++) {
        int bit = (addr[i / 8] >> (7 - i % 8)) & 1;
        int32_t nx = t->nodes[cur].child[bit];
        if (nx < 0) {
            /* Nothing more specific below prefix+bit. If the other side has entries, the
             * answer holds for prefix+bit only (i + 1 bits); a leaf holds for all i bits. */
            *scope = t->nodes[cur].child[!bit] >= 0 ? i + 1 : i;
            return best;
        }
        cur = nx;
        if (t->nodes[cur].region >= 0) {
            best = t->nodes[cur].region;
        }
    }
    bool deeper = t->nodes[cur].child[0] >= 0 || t->nodes[cur].child[1] >= 0;
    *scope = deeper ? t->nodes[cur].maxdepth : src;
    return best;
}

int pol_classifier_new(const conf_t *c, pol_classifier_t **out, char *err, size_t errlen)
{
    pol_classifier_t *p = xcalloc(1, sizeof(*p));
    p->n_regions = c->n_regions;
    p->n_sites = c->n_sites;
    p->generation = ++classifier_gen;
    for (size_t r = 0; r < c->n_regions; r++) {
        for (size_t k = 0; k < c->regions[r].n_subnets; k++) {
            const conf_prefix_t *px = &c->regions[r].subnets[k];
            trie_insert(px->family == AF_INET ? &p->t4 : &p->t6, px->addr, px->len, (int32_t)r);
        }
    }
    p->sites = xcalloc(c->n_sites ? c->n_sites : 1, sizeof(*p->sites));
    for (size_t i = 0; i < c->n_sites; i++) {
        p->sites[i].has = c->sites[i].has_location;
        p->sites[i].lat = c->sites[i].lat;
        p->sites[i].lon = c->sites[i].lon;
    }
    if (c->geoip_db) {
        int rc = MMDB_open(c->geoip_db, MMDB_MODE_MMAP, &p->mmdb);
        if (rc != MMDB_SUCCESS) {
            snprintf(err, errlen, "%s: geoip.database %s: %s", c->path ? c->path : "", c->geoip_db,
                     MMDB_strerror(rc));
            pol_classifier_free(p);
            return MS_ECONF;
        }
        p->geo = true;
        p->n_geomap = c->n_geomap;
        p->geomap = xcalloc(c->n_geomap ? c->n_geomap : 1, sizeof(*p->geomap));
        memcpy(p->geomap, c->geomap, c->n_geomap * sizeof(*p->geomap));
    }
    *out = p;
    return 0;
}

void pol_classifier_free(pol_classifier_t *p)
{
    if (!p) {
        return;
    }
    free(p->t4.nodes);
    free(p->t6.nodes);
    if (p->geo) {
        MMDB_close(&p->mmdb);
    }
    free(p->geomap);
    free(p->sites);
    free(p);
}

static int32_t geomap_find(const pol_classifier_t *p, const char *code, uint32_t len,
                           bool continent)
{
    if (len != 2) {
        return -1;
    }
    for (size_t i = 0; i < p->n_geomap; i++) {
        if (p->geomap[i].continent == continent && strncasecmp(p->geomap[i].code, code, 2) == 0) {
            return (int32_t)p->geomap[i].region;
        }
    }
    return -1;
}

static unsigned geo_classify(const pol_classifier_t *p, int family, const uint8_t *addr,
                             unsigned src, unsigned *scope)
{
    net_addr_t sa;
    memset(&sa, 0, sizeof(sa));
    if (family == AF_INET) {
        sa.sin.sin_family = AF_INET;
        memcpy(&sa.sin.sin_addr, addr, 4);
    } else {
        sa.sin6.sin6_family = AF_INET6;
        memcpy(&sa.sin6.sin6_addr, addr, 16);
    }
    int gai = 0, mmerr = 0;
    MMDB_lookup_result_s res = MMDB_lookup_sockaddr(&p->mmdb, &sa.sa, &mmerr);
    (void)gai;
    unsigned nm = res.netmask;
    if (family == AF_INET && p->mmdb.metadata.ip_version == 6 && nm >= 96) {
        nm -= 96; /* an IPv4 address in an IPv6 tree */
    }
    (void)src;
    *scope = nm; /* the database network: every address in it gets the same answer */
    if (mmerr != MMDB_SUCCESS || !res.found_entry) {
        return 0;
    }
    MMDB_entry_data_s d;
    if (MMDB_get_value(&res.entry, &d, "country", "iso_code", NULL) == MMDB_SUCCESS && d.has_data &&
        d.type == MMDB_DATA_TYPE_UTF8_STRING) {
        int32_t r = geomap_find(p, d.utf8_string, d.data_size, false);
        if (r >= 0) {
            return 1u + (unsigned)r;
        }
    }
    if (MMDB_get_value(&res.entry, &d, "continent", "code", NULL) == MMDB_SUCCESS && d.has_data &&
        d.type == MMDB_DATA_TYPE_UTF8_STRING) {
        int32_t r = geomap_find(p, d.utf8_string, d.data_size, true);
        if (r >= 0) {
            return 1u + (unsigned)r;
        }
    }
    MMDB_entry_data_s lat, lon;
    if (MMDB_get_value(&res.entry, &lat, "location", "latitude", NULL) == MMDB_SUCCESS &&
        MMDB_get_value(&res.entry, &lon, "location", "longitude", NULL) == MMDB_SUCCESS &&
        lat.has_data && lon.has_data && lat.type == MMDB_DATA_TYPE_DOUBLE &&
        lon.type == MMDB_DATA_TYPE_DOUBLE) {
        double best = 1e300;
        size_t bi = SIZE_MAX;
        for (size_t i = 0; i < p->n_sites; i++) {
            if (!p->sites[i].has) {
                continue;
            }
            double km = pol_distance_km(lat.double_value, lon.double_value, p->sites[i].lat,
                                        p->sites[i].lon);
            if (km < best) {
                best = km;
                bi = i;
            }
        }
        if (bi != SIZE_MAX) {
            return 1u + (unsigned)p->n_regions + (unsigned)bi;
        }
    }
    return 0;
}

#define GEO_CACHE 1024

typedef struct {
    uint64_t gen;
    uint8_t family, src;
    uint8_t addr[16];
    uint16_t cls;
    uint8_t scope;
} geo_cache_t;

static __thread geo_cache_t geo_cache[GEO_CACHE];

unsigned pol_classify(const pol_classifier_t *p, int family, const uint8_t *addr,
                      unsigned src_prefix, unsigned *scope)
{
    unsigned max = family == AF_INET ? 32 : 128;
    if (src_prefix > max) {
        src_prefix = max;
    }
    int32_t r = trie_lookup(family == AF_INET ? &p->t4 : &p->t6, addr, src_prefix, scope);
    if (r >= 0) {
        return 1u + (unsigned)r;
    }
    if (!p->geo) {
        return 0;
    }
    unsigned unscoped = *scope;
    size_t bytes = (src_prefix + 7) / 8;
    uint32_t h = 2166136261u ^ (uint32_t)family ^ (src_prefix << 8);
    for (size_t i = 0; i < bytes; i++) {
        h = (h ^ addr[i]) * 16777619u;
    }
    geo_cache_t *e = &geo_cache[h % GEO_CACHE];
    if (e->gen == p->generation && e->family == family && e->src == src_prefix &&
        memcmp(e->addr, addr, bytes) == 0) {
        *scope = e->scope;
        return e->cls;
    }
    unsigned gscope;
    unsigned cls = geo_classify(p, family, addr, src_prefix, &gscope);
    /* The subnet trie said "no region" for the range it scoped; GeoIP may be more specific. */
    *scope = gscope > unscoped ? gscope : unscoped;
    e->gen = p->generation;
    e->family = (uint8_t)family;
    e->src = (uint8_t)src_prefix;
    memset(e->addr, 0, sizeof(e->addr));
    memcpy(e->addr, addr, bytes);
    e->cls = (uint16_t)cls;
    e->scope = (uint8_t)*scope;
    return cls;
}
