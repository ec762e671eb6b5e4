/* order.c: the order of sites for a load-balanced name.
 *
 * Each policy in the name's `order` list contributes one sort key; keys compare in list
 * order and the configured site order breaks ties, so the result is a total order and never
 * depends on the sort algorithm. load and rtt are quantised into bands of their tolerance
 * (load-tolerance percent, rtt-tolerance ms): two sites in the same band compare equal and
 * keep their configured order, so near-equal values do not flip the answer back and forth.
 * A site whose load or rtt is unknown sorts after those with a known value. */
#include "policy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

unsigned pol_class_count(const conf_t *c)
{
    return 1u + (unsigned)c->n_regions + (unsigned)c->n_sites;
}

bool pol_uses_locality(const conf_name_t *nm)
{
    for (size_t i = 0; i < nm->n_order; i++) {
        if (nm->order[i] == CONF_ORDER_LOCALITY) {
            return true;
        }
    }
    return false;
}

static uint64_t locality_rank(const conf_t *c, size_t site, unsigned cls)
{
    if (cls == 0) {
        return 0;
    }
    if (cls <= c->n_regions) {
        const conf_region_t *r = &c->regions[cls - 1];
        for (size_t i = 0; i < r->n_prefer; i++) {
            if (r->prefer[i] == site) {
                return i;
            }
        }
        return r->n_prefer; /* not listed: after the listed ones */
    }
    size_t nearest = cls - 1 - c->n_regions;
    if (site == nearest) {
        return 0;
    }
    /* Then by distance from the nearest site, when locations are known. */
    const conf_site_t *n = &c->sites[nearest], *s = &c->sites[site];
    if (n->has_location && s->has_location) {
        return 1 + (uint64_t)pol_distance_km(n->lat, n->lon, s->lat, s->lon);
    }
    return UINT64_MAX; /* distance unknown: after every site at a known distance */
}

static uint64_t band(double v, double width)
{
    if (v < 0) {
        return UINT64_MAX; /* unknown: last */
    }
    if (width <= 0) {
        return (uint64_t)(v * 1e6);
    }
    /* The epsilon keeps exact multiples on their own band: 0.30 / 0.10 is 2.9999999999999996
     * in binary floating point, and HAProxy loads like 30/100 hit that exactly. */
    return (uint64_t)floor(v / width + 1e-9);
}

typedef struct {
    size_t site;
    uint64_t key[CONF_ORDER_MAX];
    size_t pos; /* configured position */
} sortent_t;

static size_t sort_nkeys;

static int ent_cmp(const void *pa, const void *pb)
{
    const sortent_t *a = pa, *b = pb;
    for (size_t i = 0; i < sort_nkeys; i++) {
        if (a->key[i] != b->key[i]) {
            return a->key[i] < b->key[i] ? -1 : 1;
        }
    }
    return a->pos < b->pos ? -1 : (a->pos > b->pos);
}

size_t pol_order(const conf_t *c, const conf_name_t *nm, const pol_site_t *st, unsigned cls,
                 size_t *out)
{
    sortent_t ents[64];
    size_t n = 0;
    for (size_t i = 0; i < nm->n_sites && n < 64; i++) {
        size_t si = nm->sites[i];
        if (st && !st[si].up) {
            continue;
        }
        sortent_t *e = &ents[n++];
        e->site = si;
        e->pos = i;
        for (size_t k = 0; k < nm->n_order; k++) {
            switch (nm->order[k]) {
            case CONF_ORDER_LOCALITY: e->key[k] = locality_rank(c, si, cls); break;
            case CONF_ORDER_LOAD:
                e->key[k] = band(st ? st[si].load : -1, nm->load_tolerance / 100.0);
                break;
            case CONF_ORDER_RTT:
                e->key[k] = band(st ? st[si].rtt_ms : -1, (double)nm->rtt_tolerance_ms);
                break;
            default: e->key[k] = 0; break; /* static, weighted: configured order */
            }
        }
    }
    /* qsort is not reentrant with a global; pol_order runs on the main thread only. */
    sort_nkeys = nm->n_order;
    qsort(ents, n, sizeof(*ents), ent_cmp);
    for (size_t i = 0; i < n; i++) {
        out[i] = ents[i].site;
    }
    return n;
}

double pol_distance_km(double lat1, double lon1, double lat2, double lon2)
{
    const double r = 6371.0, d2r = M_PI / 180.0;
    double dlat = (lat2 - lat1) * d2r, dlon = (lon2 - lon1) * d2r;
    double a = sin(dlat / 2) * sin(dlat / 2) +
               cos(lat1 * d2r) * cos(lat2 * d2r) * sin(dlon / 2) * sin(dlon / 2);
    return 2 * r * atan2(sqrt(a), sqrt(1 - a));
}
