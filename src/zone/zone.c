/* zone.c: zone loading (libzscanner -> sorted records -> compact nodes) and lookup.
 *
 * Loading happens off the answer path (startup, reload) and may allocate freely; the result
 * is immutable. Records are first collected into a flat array, sorted by (owner, type,
 * arrival), then packed into nodes in one arena. Temporary arrays are freed and
 * malloc_trim() hands the memory back, so a large zone's resident size is its nodes plus
 * the hash table. */
#include "zone.h"

#include <errno.h>
#include <libzscanner/scanner.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

struct zone {
    arena_t *arena;
    zone_node_t **table;
    uint32_t mask;
    size_t n_nodes;
    size_t n_rrs;
    uint8_t apex[DNS_MAX_NAME];
    size_t apex_len;
    const zone_node_t *apex_node;
};

/* ---- names ---- */

size_t dname_wire_len(const uint8_t *p, const uint8_t *end)
{
    size_t len = 0;
    while (p < end) {
        uint8_t l = *p;
        if (l & 0xC0) {
            return 0;
        }
        len += (size_t)l + 1;
        if (len > DNS_MAX_NAME) {
            return 0;
        }
        if (l == 0) {
            return len;
        }
        p += l + 1;
    }
    return 0;
}

void dname_lower(uint8_t *dst, const uint8_t *src, size_t len)
{
    /* Label length bytes are < 64 so they are never in 'A'..'Z': lowering the whole buffer
     * byte by byte is safe. */
    for (size_t i = 0; i < len; i++) {
        uint8_t c = src[i];
        dst[i] = (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
    }
}

const char *dname_str(const uint8_t *name, char *buf, size_t len)
{
    size_t o = 0;
    if (len == 0) {
        return buf;
    }
    if (*name == 0) {
        snprintf(buf, len, ".");
        return buf;
    }
    while (*name && o + 5 < len) {
        uint8_t l = *name++;
        for (uint8_t i = 0; i < l && o + 5 < len; i++) {
            uint8_t c = name[i];
            if (c == '.' || c == '\\') {
                buf[o++] = '\\';
                buf[o++] = (char)c;
            } else if (c > 32 && c < 127) {
                buf[o++] = (char)c;
            } else {
                o += (size_t)snprintf(buf + o, len - o, "\\%03u", c);
            }
        }
        buf[o++] = '.';
        name += l;
    }
    buf[o < len ? o : len - 1] = '\0';
    return buf;
}

size_t dname_from_str(const char *s, uint8_t *out, size_t cap)
{
    size_t o = 0;
    if (strcmp(s, ".") == 0 || *s == '\0') {
        if (cap < 1) {
            return 0;
        }
        out[0] = 0;
        return 1;
    }
    while (*s) {
        const char *dot = strchr(s, '.');
        size_t l = dot ? (size_t)(dot - s) : strlen(s);
        if (l == 0 || l > 63 || o + l + 2 > cap || o + l + 2 > DNS_MAX_NAME) {
            return 0;
        }
        out[o++] = (uint8_t)l;
        for (size_t i = 0; i < l; i++) {
            char c = s[i];
            out[o++] = (uint8_t)((c >= 'A' && c <= 'Z') ? c + 32 : c);
        }
        s += l;
        if (*s == '.') {
            s++;
        }
    }
    out[o++] = 0;
    return o;
}

uint32_t zone_name_hash(const uint8_t *lname, size_t len)
{
    /* FNV-1a over 4-byte words with a final avalanche: names are short, and this runs once
     * per query, so simplicity beats a faster but longer hash. */
    uint32_t h = 2166136261u;
    size_t i = 0;
    for (; i + 4 <= len; i += 4) {
        uint32_t w;
        memcpy(&w, lname + i, 4);
        h = (h ^ w) * 16777619u;
    }
    for (; i < len; i++) {
        h = (h ^ lname[i]) * 16777619u;
    }
    h ^= h >> 15;
    h *= 0x2c1b3c6dU;
    h ^= h >> 12;
    return h;
}

/* ---- nodes ---- */

bool zone_node_find(const zone_node_t *n, uint16_t type, zone_rrset_t *out)
{
    const uint8_t *p = n->data + n->name_len;
    for (unsigned i = 0; i < n->n_rrsets; i++) {
        uint16_t t = rd_u16(p);
        if (t == type) {
            out->p = p;
            return true;
        }
        if (t > type) {
            return false;
        }
        uint16_t cnt = rd_u16(p + 2);
        p += 8;
        for (uint16_t j = 0; j < cnt; j++) {
            p += 2 + rd_u16(p);
        }
    }
    return false;
}

zone_rrset_t zone_node_rrset(const zone_node_t *n, unsigned idx)
{
    const uint8_t *p = n->data + n->name_len;
    for (unsigned i = 0; i < idx; i++) {
        uint16_t cnt = rd_u16(p + 2);
        p += 8;
        for (uint16_t j = 0; j < cnt; j++) {
            p += 2 + rd_u16(p);
        }
    }
    return (zone_rrset_t){p};
}

const zone_node_t *zone_lookup_hashed(const zone_t *z, const uint8_t *lname, size_t len,
                                      uint32_t hash)
{
    for (const zone_node_t *n = z->table[hash & z->mask]; n; n = n->next) {
        if (n->hash == hash && n->name_len == len && memcmp(n->data, lname, len) == 0) {
            return n;
        }
    }
    return NULL;
}

const zone_node_t *zone_lookup(const zone_t *z, const uint8_t *lname, size_t len)
{
    return zone_lookup_hashed(z, lname, len, zone_name_hash(lname, len));
}

const uint8_t *zone_apex(const zone_t *z)
{
    return z->apex;
}
size_t zone_apex_len(const zone_t *z)
{
    return z->apex_len;
}
const zone_node_t *zone_apex_node(const zone_t *z)
{
    return z->apex_node;
}
size_t zone_node_count(const zone_t *z)
{
    return z->n_nodes;
}
size_t zone_rr_count(const zone_t *z)
{
    return z->n_rrs;
}
size_t zone_mem_bytes(const zone_t *z)
{
    return arena_bytes(z->arena) + ((size_t)z->mask + 1) * sizeof(*z->table);
}

void zone_free(zone_t *z)
{
    if (!z) {
        return;
    }
    arena_free(z->arena);
    free(z->table);
    free(z);
}

/* ---- loading ---- */

typedef struct {
    uint64_t owner_off; /* into names buf: len byte then lower-cased wire name */
    uint64_t rdata_off; /* into rdata buf */
    uint32_t ttl;
    uint16_t type;
    uint16_t rdlen;
    uint32_t line : 31;
    uint32_t dup : 1; /* identical to an earlier RR of the same RRset: dropped */
} tmp_rec_t;

typedef struct {
    zone_t *z;
    tmp_rec_t *recs;
    size_t n_recs, cap_recs;
    buf_t names;
    buf_t rdata;
    char *err;
    size_t errlen;
    const char *path;
    bool failed;
    size_t out_of_zone;
} loader_t;

static void ld_error(zs_scanner_t *s)
{
    loader_t *ld = s->process.data;
    if (!ld->failed) {
        snprintf(ld->err, ld->errlen, "%s:%llu: %s", ld->path, (unsigned long long)s->line_counter,
                 zs_strerror(s->error.code));
    }
    ld->failed = true;
    s->state = ZS_STATE_STOP;
}

bool dname_is_below(const uint8_t *name, size_t len, const uint8_t *apex, size_t apex_len)
{
    if (len < apex_len || memcmp(name + len - apex_len, apex, apex_len) != 0) {
        return false;
    }
    /* The match must start on a label boundary. */
    size_t off = 0;
    while (off < len - apex_len) {
        off += (size_t)name[off] + 1;
    }
    return off == len - apex_len;
}

static void ld_record(zs_scanner_t *s)
{
    loader_t *ld = s->process.data;
    if (ld->failed) {
        return;
    }
    if (s->r_class != 1) {
        snprintf(ld->err, ld->errlen, "%s:%llu: only class IN is supported", ld->path,
                 (unsigned long long)s->line_counter);
        ld->failed = true;
        s->state = ZS_STATE_STOP;
        return;
    }
    uint8_t lname[DNS_MAX_NAME];
    size_t len = s->r_owner_length;
    if (len == 0 || len > DNS_MAX_NAME) {
        return;
    }
    dname_lower(lname, s->r_owner, len);
    if (!dname_is_below(lname, len, ld->z->apex, ld->z->apex_len)) {
        /* Out-of-zone data is ignored, as Knot and NSD do, with one warning per load. */
        if (ld->out_of_zone++ == 0) {
            char nb[DNS_MAX_NAME * 4];
            log_warn("%s:%llu: record for %s is outside the zone, ignored", ld->path,
                     (unsigned long long)s->line_counter, dname_str(lname, nb, sizeof(nb)));
        }
        return;
    }
    if (s->r_type == RR_OPT || s->r_type == RR_AXFR || s->r_type == RR_IXFR ||
        s->r_type == RR_ANY || s->r_data_length > 65535) {
        snprintf(ld->err, ld->errlen, "%s:%llu: record type %u not allowed in a zone", ld->path,
                 (unsigned long long)s->line_counter, s->r_type);
        ld->failed = true;
        s->state = ZS_STATE_STOP;
        return;
    }
    if (ld->n_recs == ld->cap_recs) {
        ld->cap_recs = ld->cap_recs ? ld->cap_recs * 2 : 1024;
        ld->recs = xrealloc(ld->recs, ld->cap_recs * sizeof(*ld->recs));
    }
    tmp_rec_t *r = &ld->recs[ld->n_recs++];
    r->owner_off = ld->names.len;
    uint8_t lb = (uint8_t)len;
    buf_append(&ld->names, &lb, 1);
    buf_append(&ld->names, lname, len);
    r->rdata_off = ld->rdata.len;
    buf_append(&ld->rdata, s->r_data, s->r_data_length);
    r->rdlen = (uint16_t)s->r_data_length;
    r->ttl = s->r_ttl;
    r->type = s->r_type;
    r->line = (uint32_t)s->line_counter & 0x7FFFFFFF;
    r->dup = 0;
}

static const loader_t *sort_ld;

static int name_cmp(const uint8_t *a, const uint8_t *b)
{
    if (a[0] != b[0]) {
        return a[0] < b[0] ? -1 : 1;
    }
    return memcmp(a + 1, b + 1, a[0]);
}

static int rec_cmp(const void *pa, const void *pb)
{
    const tmp_rec_t *a = pa, *b = pb;
    int c = name_cmp(sort_ld->names.data + a->owner_off, sort_ld->names.data + b->owner_off);
    if (c) {
        return c;
    }
    if (a->type != b->type) {
        return a->type < b->type ? -1 : 1;
    }
    return a->rdata_off < b->rdata_off ? -1 : (a->rdata_off > b->rdata_off);
}

static void table_insert(zone_t *z, zone_node_t *n)
{
    uint32_t b = n->hash & z->mask;
    n->next = z->table[b];
    z->table[b] = n;
}

static zone_node_t *node_alloc(zone_t *z, const uint8_t *name, size_t len, size_t data_len)
{
    zone_node_t *n = arena_alloc(z->arena, sizeof(*n) + len + data_len);
    memset(n, 0, sizeof(*n));
    n->name_len = (uint8_t)len;
    n->data_len = (uint32_t)data_len;
    memcpy(n->data, name, len);
    n->hash = zone_name_hash(name, len);
    return n;
}

static const loader_t *dup_ld;

static int rdata_cmp(const void *pa, const void *pb)
{
    const tmp_rec_t *a = *(tmp_rec_t *const *)pa, *b = *(tmp_rec_t *const *)pb;
    if (a->rdlen != b->rdlen) {
        return a->rdlen < b->rdlen ? -1 : 1;
    }
    int c = memcmp(dup_ld->rdata.data + a->rdata_off, dup_ld->rdata.data + b->rdata_off, a->rdlen);
    if (c) {
        return c;
    }
    return a->rdata_off < b->rdata_off ? -1 : (a->rdata_off > b->rdata_off);
}

static bool same_rdata(const loader_t *ld, const tmp_rec_t *a, const tmp_rec_t *b);

/* RFC 2181 5: an RRset has no duplicate RRs; the first of equal ones is kept. Small sets are
 * compared pairwise; large ones sorted by RDATA (O(n log n)), so a huge RRset loads fast. */
static void mark_duplicates(loader_t *ld, size_t from, size_t to)
{
    size_t n = to - from;
    if (n <= 32) {
        for (size_t k = from + 1; k < to; k++) {
            for (size_t m = from; m < k && !ld->recs[k].dup; m++) {
                ld->recs[k].dup = !ld->recs[m].dup && same_rdata(ld, &ld->recs[m], &ld->recs[k]);
            }
        }
        return;
    }
    tmp_rec_t **idx = xmalloc(n * sizeof(*idx));
    for (size_t k = 0; k < n; k++) {
        idx[k] = &ld->recs[from + k];
    }
    dup_ld = ld;
    qsort(idx, n, sizeof(*idx), rdata_cmp);
    dup_ld = NULL;
    for (size_t k = 1; k < n; k++) {
        if (same_rdata(ld, idx[k - 1], idx[k])) {
            idx[k]->dup = 1; /* sorted by arrival among equals: idx[k-1] came first */
        }
    }
    free(idx);
}

static bool same_rdata(const loader_t *ld, const tmp_rec_t *a, const tmp_rec_t *b)
{
    return a->rdlen == b->rdlen &&
           memcmp(ld->rdata.data + a->rdata_off, ld->rdata.data + b->rdata_off, a->rdlen) == 0;
}

/* Pack one owner's records [i, j) into a node. Returns MS_OK or MS_EPARSE on a semantic
 * error that makes the zone unusable (as Knot's mandatory checks). */
static int build_node(loader_t *ld, size_t i, size_t j)
{
    zone_t *z = ld->z;
    const uint8_t *owner = ld->names.data + ld->recs[i].owner_off;
    size_t data_len = 0;
    unsigned n_sets = 0;
    bool has_cname = false, has_other = false;
    size_t set_start = i;
    for (size_t k = i; k < j; k++) {
        tmp_rec_t *r = &ld->recs[k];
        bool new_set = k == i || ld->recs[k - 1].type != r->type;
        if (new_set) {
            set_start = k;
            data_len += 8;
            n_sets++;
            if (r->type == RR_CNAME) {
                has_cname = true;
            } else if (r->type != RR_RRSIG && r->type != RR_NSEC) {
                has_other = true;
            }
        }
        bool last_of_set = k + 1 == j || ld->recs[k + 1].type != r->type;
        if (last_of_set) {
            mark_duplicates(ld, set_start, k + 1);
            size_t kept = 0;
            for (size_t m = set_start; m <= k; m++) {
                if (!ld->recs[m].dup) {
                    kept++;
                    data_len += 2 + ld->recs[m].rdlen;
                }
            }
            if (kept > 65535) {
                char nb2[DNS_MAX_NAME * 4];
                snprintf(ld->err, ld->errlen, "%s:%u: %s has more than 65535 records of type %u",
                         ld->path, (unsigned)ld->recs[set_start].line,
                         dname_str(owner + 1, nb2, sizeof(nb2)), r->type);
                return MS_EPARSE;
            }
        }
    }
    char nb[DNS_MAX_NAME * 4];
    if (has_cname && has_other) {
        snprintf(ld->err, ld->errlen, "%s:%u: %s has a CNAME and other data", ld->path,
                 (unsigned)ld->recs[i].line, dname_str(owner + 1, nb, sizeof(nb)));
        return MS_EPARSE;
    }
    if (n_sets > 255) {
        snprintf(ld->err, ld->errlen, "%s:%u: %s has more than 255 record types", ld->path,
                 (unsigned)ld->recs[i].line, dname_str(owner + 1, nb, sizeof(nb)));
        return MS_EPARSE;
    }
    zone_node_t *n = node_alloc(z, owner + 1, owner[0], data_len);
    n->n_rrsets = (uint8_t)n_sets;
    uint8_t *p = n->data + n->name_len;
    uint8_t *set_hdr = NULL;
    for (size_t k = i; k < j; k++) {
        const tmp_rec_t *r = &ld->recs[k];
        if (r->dup) {
            continue;
        }
        if (k == i || ld->recs[k - 1].type != r->type) {
            set_hdr = p;
            wr_u16(p, r->type);
            wr_u16(p + 2, 0);
            /* RFC 2181 5.2: one TTL per RRset; the first record's wins (as Knot). */
            wr_u32(p + 4, r->ttl);
            p += 8;
        }
        wr_u16(set_hdr + 2, (uint16_t)(rd_u16(set_hdr + 2) + 1));
        wr_u16(p, r->rdlen);
        memcpy(p + 2, ld->rdata.data + r->rdata_off, r->rdlen);
        p += 2 + r->rdlen;
        z->n_rrs++;
        if (r->type == RR_CNAME && rd_u16(set_hdr + 2) > 1) {
            snprintf(ld->err, ld->errlen, "%s:%u: %s has more than one CNAME", ld->path,
                     (unsigned)r->line, dname_str(owner + 1, nb, sizeof(nb)));
            return MS_EPARSE;
        }
    }
    if (has_cname) {
        n->flags |= ZN_CNAME;
    }
    table_insert(z, n);
    z->n_nodes++;
    return MS_OK;
}

/* Ancestors of every node up to the apex must exist (empty non-terminals). */
static void add_ents(zone_t *z)
{
    size_t cnt = z->n_nodes;
    zone_node_t **all = xmalloc(cnt * sizeof(*all));
    size_t k = 0;
    for (uint32_t b = 0; b <= z->mask; b++) {
        for (zone_node_t *n = z->table[b]; n; n = n->next) {
            all[k++] = n;
        }
    }
    for (size_t i = 0; i < cnt; i++) {
        const uint8_t *name = all[i]->data;
        size_t len = all[i]->name_len;
        while (len > z->apex_len) {
            len -= (size_t)name[0] + 1;
            name += name[0] + 1;
            if (zone_lookup(z, name, len)) {
                break; /* its ancestors were handled when it was */
            }
            zone_node_t *e = node_alloc(z, name, len, 0);
            table_insert(z, e);
            z->n_nodes++;
        }
    }
    free(all);
}

static void compute_flags(zone_t *z)
{
    for (uint32_t b = 0; b <= z->mask; b++) {
        for (zone_node_t *n = z->table[b]; n; n = n->next) {
            zone_rrset_t rs;
            if (n->name_len == z->apex_len) {
                n->flags |= ZN_APEX;
            } else if (zone_node_find(n, RR_NS, &rs)) {
                n->flags |= ZN_DELEG;
            }
            if (zone_node_find(n, RR_DNAME, &rs)) {
                n->flags |= ZN_DNAME;
            }
        }
    }
    for (uint32_t b = 0; b <= z->mask; b++) {
        for (zone_node_t *n = z->table[b]; n; n = n->next) {
            const uint8_t *name = n->data;
            size_t len = n->name_len;
            if (len > z->apex_len && name[0] == 1 && name[1] == '*') {
                zone_node_t *parent =
                    (zone_node_t *)zone_lookup(z, name + 2, len - 2); /* exists: ENTs added */
                if (parent) {
                    parent->flags |= ZN_WILD_CHILD;
                }
            }
            while (len > z->apex_len) {
                len -= (size_t)name[0] + 1;
                name += name[0] + 1;
                if (len == z->apex_len) {
                    break;
                }
                const zone_node_t *a = zone_lookup(z, name, len);
                if (a && (a->flags & ZN_DNAME)) {
                    n->flags |= ZN_BELOW_DNAME;
                }
                if (a && (a->flags & ZN_DELEG)) {
                    n->flags |= ZN_BELOW_CUT;
                    break;
                }
            }
        }
    }
}

static int load_common(const char *origin, const char *path, const char *text, size_t text_len,
                       zone_t **out, char *err, size_t errlen)
{
    zone_t *z = xcalloc(1, sizeof(*z));
    z->arena = arena_new(64 << 10);
    loader_t ld = {.z = z, .err = err, .errlen = errlen, .path = path};
    buf_init(&ld.names);
    buf_init(&ld.rdata);
    int rc = MS_EPARSE;
    zs_scanner_t *s = xmalloc(sizeof(*s));
    z->apex_len = dname_from_str(origin, z->apex, sizeof(z->apex));
    if (z->apex_len == 0) {
        snprintf(err, errlen, "%s: invalid zone origin '%s'", path, origin);
        free(s);
        goto fail;
    }
    if (zs_init(s, origin, 1, 3600) != 0) {
        snprintf(err, errlen, "%s: invalid zone origin '%s'", path, origin);
        free(s);
        goto fail;
    }
    int in_rc = text ? zs_set_input_string(s, text, text_len) : zs_set_input_file(s, path);
    if (in_rc != 0) {
        snprintf(err, errlen, "%s: cannot read: %s", path, zs_strerror(s->error.code));
        rc = MS_EIO;
        zs_deinit(s);
        free(s);
        goto fail;
    }
    zs_set_processing(s, ld_record, ld_error, &ld);
    if (zs_parse_all(s) != 0 && !ld.failed) {
        snprintf(err, errlen, "%s:%llu: %s", path, (unsigned long long)s->line_counter,
                 zs_strerror(s->error.code));
        ld.failed = true;
    }
    zs_deinit(s);
    free(s);
    if (ld.failed) {
        goto fail;
    }
    if (ld.out_of_zone > 1) {
        log_warn("%s: %zu out-of-zone records ignored in all", path, ld.out_of_zone);
    }
    sort_ld = &ld;
    if (ld.n_recs > 0) {
        qsort(ld.recs, ld.n_recs, sizeof(*ld.recs), rec_cmp);
    }
    sort_ld = NULL;
    /* Owners are at most one per record; ENTs at most (labels) per owner, but a table at
     * twice the record count keeps chains short in practice, and grows below if needed. */
    size_t want = 16;
    while (want < ld.n_recs * 2) {
        want <<= 1;
    }
    z->mask = (uint32_t)(want - 1);
    z->table = xcalloc(want, sizeof(*z->table));
    for (size_t i = 0; i < ld.n_recs;) {
        size_t j = i + 1;
        while (j < ld.n_recs && name_cmp(ld.names.data + ld.recs[i].owner_off,
                                         ld.names.data + ld.recs[j].owner_off) == 0) {
            j++;
        }
        if (build_node(&ld, i, j) != MS_OK) {
            goto fail;
        }
        i = j;
    }
    z->apex_node = zone_lookup(z, z->apex, z->apex_len);
    zone_rrset_t soa, ns;
    if (!z->apex_node || !zone_node_find(z->apex_node, RR_SOA, &soa)) {
        snprintf(err, errlen, "%s: no SOA record at the zone apex %s", path, origin);
        goto fail;
    }
    if (zone_rrset_count(soa) != 1) {
        snprintf(err, errlen, "%s: more than one SOA record at the zone apex", path);
        goto fail;
    }
    if (!zone_node_find(z->apex_node, RR_NS, &ns)) {
        snprintf(err, errlen, "%s: no NS records at the zone apex %s", path, origin);
        goto fail;
    }
    if (z->apex_node->flags & ZN_CNAME) {
        snprintf(err, errlen, "%s: CNAME at the zone apex", path);
        goto fail;
    }
    add_ents(z);
    compute_flags(z);
    free(ld.recs);
    buf_deinit(&ld.names);
    buf_deinit(&ld.rdata);
    malloc_trim(0);
    *out = z;
    return MS_OK;
fail:
    free(ld.recs);
    buf_deinit(&ld.names);
    buf_deinit(&ld.rdata);
    zone_free(z);
    malloc_trim(0);
    return rc;
}

int zone_load(const char *origin, const char *path, zone_t **out, char *err, size_t errlen)
{
    return load_common(origin, path, NULL, 0, out, err, errlen);
}

int zone_load_string(const char *origin, const char *text, size_t len, zone_t **out, char *err,
                     size_t errlen)
{
    return load_common(origin, "(string)", text, len, out, err, errlen);
}

/* ---- zone set ---- */

struct zone_db {
    zone_t **zones;
    uint32_t *hashes;
    size_t n;
};

zone_db_t *zone_db_new(void)
{
    return xcalloc(1, sizeof(zone_db_t));
}

int zone_db_add(zone_db_t *db, zone_t *z)
{
    for (size_t i = 0; i < db->n; i++) {
        if (db->zones[i]->apex_len == z->apex_len &&
            memcmp(db->zones[i]->apex, z->apex, z->apex_len) == 0) {
            return MS_EEXIST;
        }
    }
    db->zones = xrealloc(db->zones, (db->n + 1) * sizeof(*db->zones));
    db->hashes = xrealloc(db->hashes, (db->n + 1) * sizeof(*db->hashes));
    db->zones[db->n] = z;
    db->hashes[db->n] = zone_name_hash(z->apex, z->apex_len);
    db->n++;
    return MS_OK;
}

const zone_t *zone_db_find(const zone_db_t *db, const uint8_t *lname, const uint8_t *labels,
                           int nlabels, int *apex_label)
{
    /* Longest suffix first. A linear scan of the zones per suffix: multisited serves a
     * handful of zones; a server with thousands would want a hash here. */
    size_t total = labels[nlabels - 1] + 1u; /* offset of the root label + 1 */
    for (int i = 0; i < nlabels; i++) {
        size_t len = total - labels[i];
        for (size_t k = 0; k < db->n; k++) {
            const zone_t *z = db->zones[k];
            if (z->apex_len == len && memcmp(z->apex, lname + labels[i], len) == 0) {
                *apex_label = i;
                return z;
            }
        }
    }
    return NULL;
}

size_t zone_db_count(const zone_db_t *db)
{
    return db->n;
}

const zone_t *zone_db_get(const zone_db_t *db, size_t i)
{
    return db->zones[i];
}

void zone_db_free(zone_db_t *db)
{
    if (!db) {
        return;
    }
    for (size_t i = 0; i < db->n; i++) {
        zone_free(db->zones[i]);
    }
    free(db->zones);
    free(db->hashes);
    free(db);
}
