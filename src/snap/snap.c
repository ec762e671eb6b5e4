/* snap.c: building and publishing snapshots with liburcu (memb flavour: readers pay a
 * counter increment, the writer a membarrier). */
#include "snap.h"

#include "policy/policy.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <urcu.h>

typedef struct {
    snap_t pub;
    struct rcu_head rcu;
} snap_box_t;

struct snap_shared {
    unsigned refs; /* atomic: call_rcu frees snapshots on liburcu's own thread */
    conf_t *conf;
    zone_db_t *zones;
    pol_classifier_t *classifier;
};

static snap_t *current;
static uint64_t generation;

static int parse_nsid(const char *s, uint8_t *out, size_t cap, size_t *len)
{
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        size_t n = strlen(s + 2);
        if (n == 0 || n % 2 || n / 2 > cap) {
            return MS_EINVAL;
        }
        for (size_t i = 0; i < n / 2; i++) {
            char hex[3] = {s[2 + 2 * i], s[3 + 2 * i], 0};
            if (!isxdigit((unsigned char)hex[0]) || !isxdigit((unsigned char)hex[1])) {
                return MS_EINVAL;
            }
            out[i] = (uint8_t)strtoul(hex, NULL, 16);
        }
        *len = n / 2;
        return 0;
    }
    size_t n = strlen(s);
    if (n > cap) {
        return MS_EINVAL;
    }
    memcpy(out, s, n);
    *len = n;
    return 0;
}

/* ---- load-balanced names ---- */

/* Render one RRset blob (zone.h layout) of the addresses with family af of the sites in
 * `order`, in that order. NULL if there are none. */
static uint8_t *render_rrset(const conf_t *c, const size_t *order, size_t n, int af, uint32_t ttl)
{
    uint16_t cnt = 0;
    size_t rdlen = af == AF_INET ? 4 : 16;
    for (size_t i = 0; i < n; i++) {
        const conf_site_t *site = &c->sites[order[i]];
        for (size_t k = 0; k < site->addrs.n; k++) {
            cnt += site->addrs.v[k].sa.sa_family == af;
        }
    }
    if (cnt == 0) {
        return NULL;
    }
    uint8_t *blob = xmalloc(8 + (size_t)cnt * (2 + rdlen));
    wr_u16(blob, af == AF_INET ? RR_A : RR_AAAA);
    wr_u16(blob + 2, cnt);
    wr_u32(blob + 4, ttl);
    uint8_t *p = blob + 8;
    for (size_t i = 0; i < n; i++) {
        const conf_site_t *site = &c->sites[order[i]];
        for (size_t k = 0; k < site->addrs.n; k++) {
            const net_addr_t *a = &site->addrs.v[k];
            if (a->sa.sa_family != af) {
                continue;
            }
            wr_u16(p, (uint16_t)rdlen);
            memcpy(p + 2,
                   af == AF_INET ? (const void *)&a->sin.sin_addr
                                 : (const void *)&a->sin6.sin6_addr,
                   rdlen);
            p += 2 + rdlen;
        }
    }
    return blob;
}

static void render_variant(const conf_t *c, snap_rrs_t *v, const size_t *order, size_t n,
                           uint32_t ttl)
{
    v->a = render_rrset(c, order, n, AF_INET, ttl);
    v->aaaa = render_rrset(c, order, n, AF_INET6, ttl);
}

/* Weighted: variant k puts candidate k first, the rest in the class order; slots are dealt
 * to variants in proportion to their weights (largest remainder), so a uniform slot draw
 * picks the first site with probability weight / total. */
static void render_weighted(const conf_t *c, const conf_name_t *nm, snap_class_t *cl, uint32_t ttl)
{
    unsigned w[64];
    unsigned total = 0;
    for (size_t k = 0; k < cl->n_order; k++) {
        w[k] = 0;
        for (size_t j = 0; j < nm->n_sites; j++) {
            if (nm->sites[j] == cl->order[k]) {
                w[k] = nm->weights[j];
            }
        }
        total += w[k];
    }
    if (total == 0 || cl->n_order < 2) {
        return; /* variant 0 only */
    }
    cl->var = xrealloc(cl->var, cl->n_order * sizeof(*cl->var));
    size_t tmp[64];
    for (size_t k = 1; k < cl->n_order; k++) {
        tmp[0] = cl->order[k];
        size_t m = 1;
        for (size_t j = 0; j < cl->n_order; j++) {
            if (j != k) {
                tmp[m++] = cl->order[j];
            }
        }
        render_variant(c, &cl->var[k], tmp, m, ttl);
    }
    cl->n_var = (uint8_t)cl->n_order;
    unsigned given = 0, share[64];
    for (size_t k = 0; k < cl->n_order; k++) {
        share[k] = (unsigned)((uint64_t)w[k] * SNAP_WEIGHT_SLOTS / total);
        given += share[k];
    }
    /* Largest remainder: each leftover slot goes to a different site, biggest remainder
     * first, ties in answer order. */
    bool got[64] = {false};
    while (given < SNAP_WEIGHT_SLOTS) {
        size_t best = SIZE_MAX;
        uint64_t best_rem = 0;
        for (size_t k = 0; k < cl->n_order; k++) {
            uint64_t rem = ((uint64_t)w[k] * SNAP_WEIGHT_SLOTS) % total;
            if (w[k] && !got[k] && (best == SIZE_MAX || rem > best_rem)) {
                best_rem = rem;
                best = k;
            }
        }
        if (best == SIZE_MAX) {
            memset(got, 0, sizeof(got)); /* more leftovers than sites: another round */
            continue;
        }
        got[best] = true;
        share[best]++;
        given++;
    }
    unsigned slot = 0;
    for (size_t k = 0; k < cl->n_order; k++) {
        for (unsigned i = 0; i < share[k] && slot < SNAP_WEIGHT_SLOTS; i++) {
            cl->slot[slot++] = (uint8_t)k;
        }
    }
}

static void render_lb(const conf_t *c, snap_lb_t *lb, const snap_state_t *st, uint64_t last)
{
    const conf_name_t *nm = lb->conf;
    pol_site_t ps[64];
    uint64_t up = 0, all = 0;
    bool changing = false;
    for (size_t i = 0; i < c->n_sites && i < 64; i++) {
        const bool *upv = st ? st->site_up : NULL;
        if (st && st->site_up_safe && nm->partition == CONF_PARTITION_SAFETY) {
            upv = st->site_up_safe;
        }
        ps[i].up = !upv || upv[i];
        ps[i].load = st && st->site_load ? st->site_load[i] : -1;
        ps[i].rtt_ms = st && st->site_rtt ? st->site_rtt[i] : -1;
    }
    for (size_t i = 0; i < nm->n_sites; i++) {
        size_t si = nm->sites[i];
        all |= 1ull << si;
        if (ps[si].up) {
            up |= 1ull << si;
        }
        if (st && st->site_changing && st->site_changing[si]) {
            changing = true; /* B1: answers that may change soon get a short TTL */
        }
    }
    lb->servfail = false;
    lb->last_set = up ? up : last;
    uint64_t set = up;
    if (!up) {
        switch (nm->fallback) {
        case CONF_FALLBACK_LAST: set = last ? last : all; break;
        case CONF_FALLBACK_SERVFAIL: lb->servfail = true; break;
        default: set = all; break;
        }
        /* Fallback: the chosen sites count as up for ordering. */
        for (size_t i = 0; i < nm->n_sites; i++) {
            ps[nm->sites[i]].up = (set >> nm->sites[i]) & 1;
        }
    }
    lb->ttl = changing ? nm->ttl_min : nm->ttl;
    lb->locality = pol_uses_locality(nm);
    lb->n_cls = lb->locality ? pol_class_count(c) : 1;
    lb->cls = xcalloc(lb->n_cls, sizeof(*lb->cls));
    bool weighted = nm->n_order && nm->order[nm->n_order - 1] == CONF_ORDER_WEIGHTED;
    for (unsigned k = 0; k < lb->n_cls; k++) {
        snap_class_t *cl = &lb->cls[k];
        cl->n_order = lb->servfail ? 0 : pol_order(c, nm, ps, k, cl->order);
        if (st && st->site_drained) {
            /* Drained sites go last, keeping their relative order (a stable partition). */
            size_t tmp[64], m = 0;
            for (int pass = 0; pass < 2; pass++) {
                for (size_t i = 0; i < cl->n_order; i++) {
                    if (st->site_drained[cl->order[i]] == (pass == 1)) {
                        tmp[m++] = cl->order[i];
                    }
                }
            }
            memcpy(cl->order, tmp, m * sizeof(size_t));
        }
        cl->set = 0;
        for (size_t i = 0; i < cl->n_order; i++) {
            cl->set |= 1ull << cl->order[i];
        }
        cl->var = xcalloc(1, sizeof(*cl->var));
        cl->n_var = 1;
        render_variant(c, &cl->var[0], cl->order, cl->n_order, lb->ttl);
        if (weighted) {
            render_weighted(c, nm, cl, lb->ttl);
        }
    }
    lb->answer_set = lb->cls[0].set;
    lb->a = lb->cls[0].var[0].a;
    lb->aaaa = lb->cls[0].var[0].aaaa;
}

static void lb_free_all(snap_t *s)
{
    for (size_t i = 0; i < s->n_lb; i++) {
        for (unsigned k = 0; k < s->lb[i].n_cls; k++) {
            snap_class_t *cl = &s->lb[i].cls[k];
            for (unsigned v = 0; v < cl->n_var; v++) {
                free(cl->var[v].a);
                free(cl->var[v].aaaa);
            }
            free(cl->var);
        }
        free(s->lb[i].cls);
    }
    free(s->lb);
    free(s->lb_table);
    s->lb = NULL;
    s->lb_table = NULL;
    s->n_lb = 0;
}

/* Resolve every load-balanced name to its zone and check it against the zone's data. */
static int lb_setup(snap_t *s, char *err, size_t errlen)
{
    const conf_t *c = s->conf;
    if (c->n_names == 0) {
        return 0;
    }
    if (c->n_sites > 64) {
        snprintf(err, errlen, "%s: at most 64 sites are supported", c->path ? c->path : "");
        return MS_ECONF;
    }
    s->lb = xcalloc(c->n_names, sizeof(*s->lb));
    size_t tsize = 16;
    while (tsize < c->n_names * 2) {
        tsize <<= 1;
    }
    s->lb_table = xcalloc(tsize, sizeof(*s->lb_table));
    s->lb_mask = (uint32_t)(tsize - 1);
    for (size_t i = 0; i < c->n_names; i++) {
        const conf_name_t *nm = &c->names[i];
        snap_lb_t *lb = &s->lb[i];
        s->n_lb++;
        lb->conf = nm;
        size_t len = dname_from_str(nm->name, lb->name, sizeof(lb->name));
        if (len == 0) {
            snprintf(err, errlen, "%s:%d: names[%s]: not a valid domain name", nm->src_file,
                     nm->src_line, nm->name);
            return MS_ECONF;
        }
        lb->name_len = (uint8_t)len;
        lb->hash = zone_name_hash(lb->name, len);
        /* The longest zone apex that is a suffix of the name. */
        const zone_t *best = NULL;
        for (size_t k = 0; k < zone_db_count(s->zones); k++) {
            const zone_t *z = zone_db_get(s->zones, k);
            size_t al = zone_apex_len(z);
            if ((!best || al > zone_apex_len(best)) &&
                dname_is_below(lb->name, len, zone_apex(z), al)) {
                best = z;
            }
        }
        if (!best) {
            snprintf(err, errlen, "%s:%d: names[%s]: not inside any configured zone", nm->src_file,
                     nm->src_line, nm->name);
            return MS_ECONF;
        }
        lb->zone = best;
        const zone_node_t *n = zone_lookup(best, lb->name, len);
        zone_rrset_t rs;
        if (n && (zone_node_find(n, RR_A, &rs) || zone_node_find(n, RR_AAAA, &rs) ||
                  (n->flags & ZN_CNAME))) {
            snprintf(err, errlen,
                     "%s:%d: names[%s]: the zone also has A, AAAA or CNAME records for this "
                     "name; a load-balanced name gets its addresses from its sites only",
                     nm->src_file, nm->src_line, nm->name);
            return MS_ECONF;
        }
        if (n && (n->flags & (ZN_DELEG | ZN_BELOW_CUT))) {
            snprintf(err, errlen, "%s:%d: names[%s]: at or below a delegation", nm->src_file,
                     nm->src_line, nm->name);
            return MS_ECONF;
        }
        uint32_t b = lb->hash & s->lb_mask;
        lb->next = s->lb_table[b];
        s->lb_table[b] = lb;
    }
    return 0;
}

const snap_lb_t *snap_lb_find_hashed(const snap_t *s, const uint8_t *lname, size_t len, uint32_t h)
{
    if (!s->n_lb) {
        return NULL;
    }
    for (const snap_lb_t *lb = s->lb_table[h & s->lb_mask]; lb; lb = lb->next) {
        if (lb->hash == h && lb->name_len == len && memcmp(lb->name, lname, len) == 0) {
            return lb;
        }
    }
    return NULL;
}

const snap_lb_t *snap_lb_find(const snap_t *s, const uint8_t *lname, size_t len)
{
    return s->n_lb ? snap_lb_find_hashed(s, lname, len, zone_name_hash(lname, len)) : NULL;
}

int snap_build(conf_t *conf, snap_t **out, char *err, size_t errlen)
{
    snap_box_t *box = xcalloc(1, sizeof(*box));
    snap_t *s = &box->pub;
    s->shared = xcalloc(1, sizeof(*s->shared));
    s->shared->refs = 1;
    s->shared->conf = s->conf = conf;
    s->shared->zones = s->zones = zone_db_new();
    s->udp_max = (uint16_t)conf->udp_max_payload;
    size_t nl = 0;
    if (parse_nsid(conf->nsid ? conf->nsid : "", s->nsid, sizeof(s->nsid), &nl) != 0) {
        snprintf(err, errlen, "%s: server.nsid: not text of at most %zu bytes or 0x + hex",
                 conf->path ? conf->path : "(command line)", sizeof(s->nsid));
        snap_free(s);
        return MS_ECONF;
    }
    s->nsid_len = (uint16_t)nl;
    for (size_t i = 0; i < conf->n_zones; i++) {
        zone_t *z = NULL;
        int rc = zone_load(conf->zones[i].origin, conf->zones[i].file, &z, err, errlen);
        if (rc != 0) {
            snap_free(s);
            return rc;
        }
        if (zone_db_add(s->zones, z) != 0) {
            snprintf(err, errlen, "%s:%d: zone %s is defined twice", conf->zones[i].src_file,
                     conf->zones[i].src_line, conf->zones[i].origin);
            zone_free(z);
            snap_free(s);
            return MS_ECONF;
        }
        log_info("zone %s loaded from %s: %zu records, %zu names, %zu KiB", conf->zones[i].origin,
                 conf->zones[i].file, zone_rr_count(z), zone_node_count(z),
                 zone_mem_bytes(z) / 1024);
    }
    int rc = lb_setup(s, err, errlen);
    if (rc != 0) {
        snap_free(s);
        return rc;
    }
    if (conf->n_names && pol_classifier_new(conf, &s->shared->classifier, err, errlen) != 0) {
        snap_free(s);
        return MS_ECONF;
    }
    s->classifier = s->shared->classifier;
    for (size_t i = 0; i < s->n_lb; i++) {
        render_lb(s->conf, &s->lb[i], NULL, 0);
    }
    s->generation = ++generation;
    *out = s;
    return 0;
}

snap_t *snap_derive(const snap_t *cur, const snap_state_t *st)
{
    snap_box_t *box = xcalloc(1, sizeof(*box));
    snap_t *s = &box->pub;
    memcpy(s->nsid, cur->nsid, sizeof(s->nsid));
    s->nsid_len = cur->nsid_len;
    s->udp_max = cur->udp_max;
    s->shared = cur->shared;
    __atomic_fetch_add(&s->shared->refs, 1, __ATOMIC_RELAXED);
    s->conf = cur->conf;
    s->zones = cur->zones;
    s->classifier = cur->classifier;
    char err[512];
    if (lb_setup(s, err, sizeof(err)) != 0) {
        /* cur passed the same checks with the same config and zones */
        log_err("snapshot: %s", err);
        abort();
    }
    for (size_t i = 0; i < s->n_lb; i++) {
        render_lb(s->conf, &s->lb[i], st, i < cur->n_lb ? cur->lb[i].last_set : 0);
    }
    s->generation = ++generation;
    return s;
}

void snap_free(snap_t *s)
{
    if (!s) {
        return;
    }
    lb_free_all(s);
    if (s->shared && __atomic_sub_fetch(&s->shared->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        zone_db_free(s->shared->zones);
        pol_classifier_free(s->shared->classifier);
        conf_free(s->shared->conf);
        free(s->shared);
    }
    free((snap_box_t *)s);
}

static void snap_free_rcu(struct rcu_head *h)
{
    snap_box_t *box = caa_container_of(h, snap_box_t, rcu);
    snap_free(&box->pub);
}

void snap_publish(snap_t *s)
{
    snap_t *old = rcu_xchg_pointer(&current, s);
    if (old) {
        call_rcu(&((snap_box_t *)old)->rcu, snap_free_rcu);
    }
}

void snap_shutdown(void)
{
    snap_t *old = rcu_xchg_pointer(&current, NULL);
    synchronize_rcu();
    snap_free(old);
}

void snap_reader_register(void)
{
    rcu_register_thread();
}

void snap_reader_unregister(void)
{
    rcu_unregister_thread();
}

void snap_read_lock(void)
{
    rcu_read_lock();
}

void snap_read_unlock(void)
{
    rcu_read_unlock();
}

const snap_t *snap_current(void)
{
    return rcu_dereference(current);
}
