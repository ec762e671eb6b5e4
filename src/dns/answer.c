/* answer.c: one DNS query in, one response out: parsing, authoritative lookup, response
 * assembly with name compression, EDNS, truncation.
 *
 * This is the hot path, written for it: no allocation, no locks, no logging; the query is
 * parsed once into a small struct, the zone lookup is usually one hash probe (see zone.h),
 * and records are copied from their stored wire form. Every read of the query is bounds
 * checked; tests/fuzz/fuzz_query.c drives arbitrary bytes through here.
 *
 * Answer logic, in order (RFC 1034 4.3.2 as refined by RFC 2308, 4592, 6604, 8482):
 *   class CH            -> CHAOS identity (id.server, hostname.bind, version.bind/server)
 *   no zone             -> REFUSED
 *   at/below a zone cut -> referral: NS in authority, glue in additional, AA clear
 *   name exists         -> the RRset, or CNAME and follow it inside the zone, or NODATA
 *   name missing        -> wildcard at the closest encloser, or NXDOMAIN
 * Negative answers carry the SOA with TTL min(SOA TTL, SOA MINIMUM) (RFC 2308 3). */
#include "dns.h"

#include "policy/policy.h"

#include <libknot/descriptor.h>

#include <string.h>

#define HDR            12
#define MAX_CHAIN      12 /* CNAME links followed; Knot and BIND stop at similar depths */
#define MAX_COMP       96 /* compression targets remembered per response */
#define MAX_ADDITIONAL 16

enum { SEC_AN = 0, SEC_NS = 1, SEC_AR = 2 };

typedef struct {
    uint16_t id;
    uint8_t flags1, flags2; /* header bytes 2 and 3 */
    uint8_t opcode;
    uint16_t qtype, qclass;
    size_t qname_len;
    size_t question_end; /* offset just past QCLASS */
    uint8_t lname[DNS_MAX_NAME];
    uint8_t labels[DNS_MAX_LABELS]; /* label offsets, the root label included */
    int nlabels;
    bool edns;
    uint8_t edns_version;
    bool edns_do;
    bool want_nsid;
    uint16_t edns_udp;
    bool ecs;           /* EDNS Client Subnet (RFC 7871) */
    uint8_t ecs_family; /* 1 = IPv4, 2 = IPv6 (address family numbers) */
    uint8_t ecs_src;    /* source prefix length */
    uint8_t ecs_addr[16];
    const net_addr_t *client; /* the packet's source, or NULL */
    bool opt_ok;              /* the OPT record itself was well formed (FORMERR keeps it) */
    size_t tsig_rr;           /* offset of a TSIG record (the last one), 0: none */
    size_t tsig_rdata;
    uint16_t tsig_rdlen;
} query_t;

typedef struct {
    uint8_t *buf;
    size_t limit; /* bytes we may use for sections (OPT space already reserved) */
    size_t len;
    uint16_t count[3];
    uint16_t comp[MAX_COMP];
    int ncomp;
    bool tc;
    uint8_t ecs_scope; /* RFC 7871 scope of the answer: 0 unless it depends on the client */
} resp_t;

/* ---- query parsing ---- */

/* Parse a name with no compression (question). Fills lname/labels. Returns bytes consumed,
 * or 0 if malformed. */
static size_t parse_qname(const uint8_t *p, const uint8_t *end, query_t *q)
{
    size_t off = 0;
    int n = 0;
    for (;;) {
        if (p + off >= end || n >= DNS_MAX_LABELS) {
            return 0;
        }
        uint8_t l = p[off];
        if (l & 0xC0) {
            return 0; /* no compression in a question we answer; 0x40/0x80 are reserved */
        }
        if (off + l + 1 > DNS_MAX_NAME || p + off + 1 + l > end) {
            return 0;
        }
        q->labels[n++] = (uint8_t)off;
        q->lname[off] = l;
        dname_lower(q->lname + off + 1, p + off + 1, l);
        off += (size_t)l + 1;
        if (l == 0) {
            break;
        }
    }
    q->nlabels = n;
    q->qname_len = off;
    return off;
}

/* RFC 7871 6: FAMILY, SOURCE PREFIX-LENGTH, SCOPE PREFIX-LENGTH (0 in queries), ADDRESS
 * with exactly ceil(source/8) octets and no bits set past the source prefix; anything else
 * is FORMERR (7.1.1). A second ECS option is FORMERR too. */
static int parse_ecs(const uint8_t *p, uint16_t len, query_t *q)
{
    if (q->ecs || len < 4) {
        return -1;
    }
    uint16_t family = rd_u16(p);
    uint8_t src = p[2], scope = p[3];
    unsigned max = family == 1 ? 32 : family == 2 ? 128 : 0;
    size_t alen = (src + 7u) / 8u;
    if (!max || src > max || scope != 0 || len != 4 + alen) {
        return -1;
    }
    if (alen && (src % 8) && (p[4 + alen - 1] & (0xFF >> (src % 8)))) {
        return -1;
    }
    q->ecs = true;
    q->ecs_family = (uint8_t)family;
    q->ecs_src = src;
    memset(q->ecs_addr, 0, sizeof(q->ecs_addr));
    memcpy(q->ecs_addr, p + 4, alen);
    return 0;
}

static int parse_opt(const uint8_t *pkt, size_t rr, size_t rdata, uint16_t rdlen, query_t *q)
{
    if (q->edns || pkt[rr] != 0) {
        q->opt_ok = false; /* which one would we answer? FORMERR without OPT */
        return -1;         /* two OPTs, or OPT not owned by the root (RFC 6891 6.1.1) */
    }
    q->edns = true;
    q->opt_ok = true;
    q->edns_udp = rd_u16(pkt + rr + 3);
    q->edns_version = pkt[rr + 6];
    q->edns_do = (pkt[rr + 7] & 0x80) != 0;
    size_t o = rdata, end = rdata + rdlen;
    while (o < end) {
        if (o + 4 > end) {
            return -1;
        }
        uint16_t code = rd_u16(pkt + o), olen = rd_u16(pkt + o + 2);
        if (o + 4 + olen > end) {
            return -1;
        }
        if (code == 3) {
            q->want_nsid = true; /* RFC 5001: the request's payload must be empty; ignore it */
        } else if (code == 8 && parse_ecs(pkt + o + 4, olen, q) != 0) {
            return -1;
        }
        o += 4u + olen; /* unknown options are ignored (RFC 6891 6.1.2) */
    }
    return 0;
}

/* A name inside RDATA at off, ending by `end`: labels, optionally ending in a pointer to an
 * earlier name in the packet (followed to check it is well formed). Returns the offset after
 * the name's in-place bytes, or 0. */
static size_t rdata_name(const uint8_t *pkt, size_t end, size_t off, bool allow_ptr)
{
    size_t total = 0, ret = 0, pos = off, lim = end;
    for (int guard = 0; guard < DNS_MAX_LABELS * 2; guard++) {
        if (pos >= lim) {
            return 0;
        }
        uint8_t l = pkt[pos];
        if ((l & 0xC0) == 0xC0) {
            if (!allow_ptr || pos + 2 > lim) {
                return 0;
            }
            size_t to = ((size_t)(l & 0x3F) << 8) | pkt[pos + 1];
            if (!ret) {
                ret = pos + 2;
            }
            if (to >= pos) {
                return 0; /* pointers go backwards: no loops */
            }
            pos = to;
            lim = end; /* the target lies before us, inside the packet */
            continue;
        }
        if (l & 0xC0) {
            return 0;
        }
        total += (size_t)l + 1;
        if (total > DNS_MAX_NAME) {
            return 0;
        }
        pos += (size_t)l + 1;
        if (l == 0) {
            return ret ? ret : pos;
        }
    }
    return 0;
}

/* RDATA of a known type must have the shape its descriptor gives (libknot's table of RR
 * wire formats); Knot answers FORMERR to queries carrying malformed records, and so do we. */
static bool rdata_valid(const uint8_t *pkt, size_t rdata, uint16_t rdlen, uint16_t type,
                        uint16_t cls)
{
    if (rdlen == 0) {
        /* Empty RDATA means "no data" only outside class IN (ANY and NONE in updates,
         * RFC 2136 2.5); in class IN a known type needs its fields (as Knot checks). */
        const knot_rdata_descriptor_t *e = knot_get_rdata_descriptor(type);
        return cls != 1 || !e || !e->type_name;
    }
    const knot_rdata_descriptor_t *d = knot_get_rdata_descriptor(type);
    if (!d || !d->type_name) {
        d = knot_get_obsolete_rdata_descriptor(type); /* MD, MF, MB, MG, MR, ... */
    }
    if (!d || !d->type_name) {
        return true; /* unknown type: opaque (RFC 3597) */
    }
    size_t o = rdata, end = rdata + rdlen;
    for (int i = 0; i < KNOT_MAX_RDATA_BLOCKS; i++) {
        int b = d->block_types[i];
        if (b == KNOT_RDATA_WF_END) {
            break;
        }
        if (b > 0) {
            if (o + (size_t)b > end) {
                return false;
            }
            o += (size_t)b;
        } else if (b == KNOT_RDATA_WF_REMAINDER) {
            o = end;
        } else if (b == KNOT_RDATA_WF_NAPTR_HEADER) {
            if (o + 4 > end) {
                return false;
            }
            o += 4;
            for (int k = 0; k < 3; k++) {
                if (o >= end || o + 1 + pkt[o] > end) {
                    return false;
                }
                o += 1u + pkt[o];
            }
        } else {
            o = rdata_name(pkt, end, o, b != KNOT_RDATA_WF_FIXED_DNAME);
            if (!o) {
                return false;
            }
        }
    }
    return o == end;
}

/* Returns 0 ok, -1 FORMERR. Parses past the question: other sections are skipped, OPT is
 * read from the additional section. */
/* TSIG RDATA (RFC 8945 4.2): algorithm name, time signed (48 bits), fudge, MAC size and MAC,
 * original ID, error, other length and other data. */
static bool tsig_rdata_valid(const uint8_t *pkt, size_t rdata, uint16_t rdlen)
{
    size_t end = rdata + rdlen;
    size_t o = rdata_name(pkt, end, rdata, false);
    if (!o || o + 10 > end) {
        return false;
    }
    size_t mac = rd_u16(pkt + o + 8);
    o += 10 + mac;
    if (o + 6 > end) {
        return false;
    }
    size_t other = rd_u16(pkt + o + 4);
    return o + 6 + other == end;
}

static int parse_rest(const uint8_t *pkt, size_t len, query_t *q)
{
    size_t off = q->question_end;
    unsigned an = rd_u16(pkt + 6), ns = rd_u16(pkt + 8), ar = rd_u16(pkt + 10);
    unsigned total = an + ns + ar;
    for (unsigned i = 0; i < total; i++) {
        size_t rr = off;
        /* Owner names may be compressed, but only backwards to a well-formed name. */
        off = rdata_name(pkt, len, off, true);
        if (off == 0 || off + 10 > len) {
            return -1;
        }
        uint16_t type = rd_u16(pkt + off);
        uint16_t rdlen = rd_u16(pkt + off + 8);
        size_t rdata = off + 10;
        if (rdata + rdlen > len) {
            return -1;
        }
        if (type == RR_OPT) {
            if (i < an + ns || parse_opt(pkt, rr, rdata, rdlen, q) != 0) {
                return -1;
            }
        } else if (type == RR_TSIG) {
            /* RFC 8945 5.1: the last record of the additional section, class ANY. */
            if (i != total - 1 || i < an + ns || rd_u16(pkt + off + 2) != 255 ||
                !tsig_rdata_valid(pkt, rdata, rdlen)) {
                return -1;
            }
            q->tsig_rr = rr;
            q->tsig_rdata = rdata;
            q->tsig_rdlen = rdlen;
        } else if (!rdata_valid(pkt, rdata, rdlen, type, rd_u16(pkt + off + 2))) {
            return -1;
        }
        off = rdata + rdlen;
    }
    /* Bytes after the last record: not a DNS message we understand (Knot: FORMERR). */
    return off == len ? 0 : -1;
}

/* ---- response writing ---- */

/* Does the name at packet offset `off` (following pointers) equal wire name `name`
 * (lower-case), case-insensitively? */
static bool pkt_name_eq(const uint8_t *pkt, size_t pkt_len, size_t off, const uint8_t *name)
{
    for (int guard = 0; guard < DNS_MAX_LABELS; guard++) {
        if (off >= pkt_len) {
            return false;
        }
        uint8_t l = pkt[off];
        if ((l & 0xC0) == 0xC0) {
            off = ((size_t)(l & 0x3F) << 8) | pkt[off + 1];
            continue;
        }
        if (l != *name) {
            return false;
        }
        if (l == 0) {
            return true;
        }
        for (uint8_t i = 1; i <= l; i++) {
            uint8_t c = pkt[off + i];
            if (c >= 'A' && c <= 'Z') {
                c = (uint8_t)(c + 32);
            }
            if (c != name[i]) {
                return false;
            }
        }
        off += (size_t)l + 1;
        name += l + 1;
    }
    return false;
}

static void comp_add(resp_t *r, size_t off)
{
    if (r->ncomp < MAX_COMP && off < 0x3FFF) {
        r->comp[r->ncomp++] = (uint16_t)off;
    }
}

/* Write a lower-case wire name with compression. Returns false if it does not fit. */
static bool put_name(resp_t *r, const uint8_t *name, size_t len)
{
    size_t o = 0;
    while (name[o] != 0) {
        for (int i = 0; i < r->ncomp; i++) {
            if (pkt_name_eq(r->buf, r->len, r->comp[i], name + o)) {
                if (r->len + o + 2 > r->limit) {
                    return false;
                }
                size_t start = r->len;
                memcpy(r->buf + r->len, name, o);
                r->len += o;
                wr_u16(r->buf + r->len, (uint16_t)(0xC000 | r->comp[i]));
                r->len += 2;
                for (size_t k = 0; k < o; k += (size_t)name[k] + 1) {
                    comp_add(r, start + k);
                }
                return true;
            }
        }
        o += (size_t)name[o] + 1;
    }
    if (r->len + len > r->limit) {
        return false;
    }
    size_t start = r->len;
    memcpy(r->buf + r->len, name, len);
    r->len += len;
    for (size_t k = 0; name[k] != 0; k += (size_t)name[k] + 1) {
        comp_add(r, start + k);
    }
    return true;
}

/* Names inside RDATA are compressed only for the RFC 1035 types (RFC 3597 4). */
static bool put_rdata(resp_t *r, uint16_t type, const uint8_t *rd, uint16_t rdlen)
{
    const uint8_t *end = rd + rdlen;
    size_t fixed = 0, n1, n2;
    switch (type) {
    case RR_NS:
    case RR_CNAME:
    case RR_PTR:
        n1 = dname_wire_len(rd, end);
        if (n1 != rdlen) {
            break;
        }
        return put_name(r, rd, n1);
    case RR_MX:
        fixed = 2;
        if (rdlen < 3 || (n1 = dname_wire_len(rd + 2, end)) != rdlen - 2u) {
            break;
        }
        if (r->len + 2 > r->limit) {
            return false;
        }
        memcpy(r->buf + r->len, rd, 2);
        r->len += 2;
        return put_name(r, rd + 2, n1);
    case RR_SOA:
        n1 = dname_wire_len(rd, end);
        n2 = n1 ? dname_wire_len(rd + n1, end) : 0;
        if (!n1 || !n2 || n1 + n2 + 20 != rdlen) {
            break;
        }
        if (!put_name(r, rd, n1) || !put_name(r, rd + n1, n2) || r->len + 20 > r->limit) {
            return false;
        }
        memcpy(r->buf + r->len, rd + n1 + n2, 20);
        r->len += 20;
        return true;
    default: break;
    }
    (void)fixed;
    if (r->len + rdlen > r->limit) {
        return false;
    }
    memcpy(r->buf + r->len, rd, rdlen);
    r->len += rdlen;
    return true;
}

/* Owner: ptr != 0 writes a pointer to that offset, else the name with compression. */
typedef struct {
    uint16_t ptr;
    const uint8_t *name;
    size_t len;
} owner_t;

static bool put_rr(resp_t *r, owner_t ow, uint16_t type, uint16_t cls, uint32_t ttl,
                   const uint8_t *rd, uint16_t rdlen)
{
    if (ow.ptr) {
        if (r->len + 2 > r->limit) {
            return false;
        }
        wr_u16(r->buf + r->len, (uint16_t)(0xC000 | ow.ptr));
        r->len += 2;
    } else if (!put_name(r, ow.name, ow.len)) {
        return false;
    }
    if (r->len + 10 > r->limit) {
        return false;
    }
    uint8_t *h = r->buf + r->len;
    wr_u16(h, type);
    wr_u16(h + 2, cls);
    wr_u32(h + 4, ttl);
    r->len += 10;
    size_t rd_start = r->len;
    if (!put_rdata(r, type, rd, rdlen)) {
        return false;
    }
    wr_u16(h + 8, (uint16_t)(r->len - rd_start));
    return true;
}

/* A whole RRset or nothing. Returns false (and rolls back) if it does not fit. */
static bool put_rrset(resp_t *r, int sec, owner_t ow, zone_rrset_t rs, uint32_t ttl)
{
    size_t save_len = r->len;
    int save_comp = r->ncomp;
    uint16_t type = zone_rrset_type(rs), cnt = zone_rrset_count(rs);
    const uint8_t *rr = zone_rrset_first(rs);
    for (uint16_t i = 0; i < cnt; i++, rr = zone_rr_next(rr)) {
        if (!put_rr(r, ow, type, 1, ttl, rr + 2, rd_u16(rr))) {
            r->len = save_len;
            r->ncomp = save_comp;
            return false;
        }
    }
    r->count[sec] = (uint16_t)(r->count[sec] + cnt);
    return true;
}

/* ---- lookup ---- */

typedef enum { LK_EXACT, LK_WILD, LK_DELEG, LK_NXDOMAIN, LK_DNAME } lk_kind_t;

typedef struct {
    lk_kind_t kind;
    const zone_node_t *node; /* EXACT/WILD: the node; DELEG: the cut */
    const zone_node_t *ce;   /* NXDOMAIN: closest encloser */
} lookup_t;

static int name_labels(const uint8_t *name, uint8_t *labels)
{
    int n = 0;
    size_t o = 0;
    for (;;) {
        labels[n++] = (uint8_t)o;
        if (name[o] == 0) {
            return n;
        }
        o += (size_t)name[o] + 1;
    }
}

/* The topmost zone cut on the path from the apex down to `name` (labels[0..ce_idx]). */
static const zone_node_t *find_cut(const zone_t *z, const uint8_t *name, size_t len,
                                   const uint8_t *labels, int nlabels, int from_idx)
{
    size_t apex_len = zone_apex_len(z);
    for (int i = nlabels - 1; i >= from_idx; i--) {
        size_t l = len - labels[i];
        if (l <= apex_len) {
            continue;
        }
        const zone_node_t *n = zone_lookup(z, name + labels[i], l);
        if (n && (n->flags & ZN_DELEG)) {
            return n;
        }
    }
    return NULL;
}

/* The topmost DNAME owner above `name` (labels[from..] are its ancestors), or NULL. A DNAME
 * occludes everything below its owner, including lower DNAMEs (RFC 6672 2.4). */
static const zone_node_t *find_dname(const zone_t *z, const uint8_t *name, size_t len,
                                     const uint8_t *labels, int nlabels, int from)
{
    size_t apex_len = zone_apex_len(z);
    for (int i = nlabels - 1; i >= from; i--) {
        size_t l = len - labels[i];
        if (l <= apex_len) {
            continue;
        }
        const zone_node_t *n = zone_lookup(z, name + labels[i], l);
        if (n && (n->flags & ZN_DNAME)) {
            return n;
        }
    }
    return NULL;
}

static lookup_t lookup(const zone_t *z, const uint8_t *name, size_t len, uint32_t hash,
                       uint16_t qtype)
{
    lookup_t res = {LK_NXDOMAIN, NULL, NULL};
    const zone_node_t *n = zone_lookup_hashed(z, name, len, hash);
    if (MS_LIKELY(n && !(n->flags & (ZN_DELEG | ZN_BELOW_CUT | ZN_BELOW_DNAME)))) {
        res.kind = LK_EXACT;
        res.node = n;
        return res;
    }
    uint8_t labels[DNS_MAX_LABELS];
    int nl = name_labels(name, labels);
    if (n && (n->flags & (ZN_DELEG | ZN_BELOW_CUT))) {
        if ((n->flags & ZN_DELEG) && !(n->flags & ZN_BELOW_CUT) && qtype == RR_DS) {
            res.kind = LK_EXACT; /* DS lives on the parent side of the cut (RFC 4035 3.1.4.1) */
            res.node = n;
            return res;
        }
        res.kind = LK_DELEG;
        res.node = find_cut(z, name, len, labels, nl, 0);
        if (!res.node) { /* cannot happen with consistent flags; answer as data */
            res.kind = LK_EXACT;
            res.node = n;
        }
        return res;
    }
    if (n) { /* below a DNAME: the name is redirected, its own data occluded */
        res.node = find_dname(z, name, len, labels, nl, 1);
        res.kind = res.node ? LK_DNAME : LK_EXACT;
        res.node = res.node ? res.node : n;
        return res;
    }
    size_t apex_len = zone_apex_len(z);
    for (int i = 1; i < nl; i++) {
        size_t l = len - labels[i];
        if (l < apex_len) {
            break;
        }
        const zone_node_t *a = zone_lookup(z, name + labels[i], l);
        if (!a) {
            continue;
        }
        if (a->flags & (ZN_DELEG | ZN_BELOW_CUT)) {
            res.kind = LK_DELEG;
            res.node = find_cut(z, name, len, labels, nl, i);
            if (!res.node) {
                res.kind = LK_NXDOMAIN;
                res.ce = a;
            }
            return res;
        }
        if (a->flags & (ZN_DNAME | ZN_BELOW_DNAME)) {
            res.kind = LK_DNAME;
            res.node = find_dname(z, name, len, labels, nl, i);
            if (res.node) {
                return res;
            }
            res.kind = LK_NXDOMAIN;
        }
        if (a->flags & ZN_WILD_CHILD) {
            uint8_t wname[DNS_MAX_NAME + 2];
            wname[0] = 1;
            wname[1] = '*';
            memcpy(wname + 2, name + labels[i], l);
            const zone_node_t *w = zone_lookup(z, wname, l + 2);
            if (w) {
                /* A wildcard that owns NS is a delegation (RFC 4592 4.2): a referral. */
                res.kind = (w->flags & ZN_DELEG) ? LK_DELEG : LK_WILD;
                res.node = w;
                return res;
            }
        }
        res.ce = a;
        return res;
    }
    res.ce = zone_apex_node(z);
    return res;
}

/* ---- answer assembly ---- */

typedef struct {
    const snap_t *snap;
    const query_t *q;
    resp_t *r;
    const zone_t *zone;
    uint8_t rcode;
    bool aa;
} ctx_t;

static void put_soa_negative(ctx_t *c)
{
    zone_rrset_t soa;
    const zone_node_t *apex = zone_apex_node(c->zone);
    if (!zone_node_find(apex, RR_SOA, &soa)) {
        return;
    }
    const uint8_t *rr = zone_rrset_first(soa);
    uint16_t rdlen = rd_u16(rr);
    uint32_t ttl = zone_rrset_ttl(soa);
    uint32_t minimum = rdlen >= 4 ? rd_u32(rr + 2 + rdlen - 4) : ttl;
    owner_t ow = {0, zone_apex(c->zone), zone_apex_len(c->zone)};
    if (!put_rrset(c->r, SEC_NS, ow, soa, ttl < minimum ? ttl : minimum)) {
        c->r->tc = true;
    }
}

/* Target name of an NS/MX/SRV RR, or NULL. */
static const uint8_t *rr_target(uint16_t type, const uint8_t *rr, size_t *len)
{
    uint16_t rdlen = rd_u16(rr);
    const uint8_t *rd = rr + 2, *end = rd + rdlen;
    size_t skip = type == RR_SRV                                           ? 6
                  : (type == RR_MX || type == RR_SVCB || type == RR_HTTPS) ? 2
                                                                           : 0;
    if (rdlen <= skip) {
        return NULL;
    }
    *len = dname_wire_len(rd + skip, end);
    return *len > 1 ? rd + skip : NULL; /* "." (SVCB: the owner itself) adds nothing */
}

/* Addresses of the targets of rs (NS, MX, SRV) into the additional section. `glue_cut` is
 * the delegation for a referral: addresses at or below it are glue, which must fit or the
 * reply is truncated (RFC 9471); others are optional. */
static void put_additional(ctx_t *c, zone_rrset_t rs, const zone_node_t *glue_cut)
{
    const zone_node_t *done[MAX_ADDITIONAL];
    int ndone = 0;
    uint16_t type = zone_rrset_type(rs), cnt = zone_rrset_count(rs);
    const uint8_t *rr = zone_rrset_first(rs);
    for (uint16_t i = 0; i < cnt && ndone < MAX_ADDITIONAL; i++, rr = zone_rr_next(rr)) {
        size_t tl;
        const uint8_t *t = rr_target(type, rr, &tl);
        if (!t) {
            continue;
        }
        uint8_t lt[DNS_MAX_NAME];
        dname_lower(lt, t, tl);
        if (!dname_is_below(lt, tl, zone_apex(c->zone), zone_apex_len(c->zone))) {
            continue;
        }
        const zone_node_t *n = zone_lookup(c->zone, lt, tl);
        if (!n || ((n->flags & ZN_BELOW_CUT) && !glue_cut)) {
            continue; /* occluded names are only used as glue */
        }
        bool dup = false;
        for (int k = 0; k < ndone && !dup; k++) {
            dup = done[k] == n;
        }
        if (dup) {
            continue;
        }
        done[ndone++] = n;
        bool is_glue =
            glue_cut && dname_is_below(lt, tl, zone_node_name(glue_cut), glue_cut->name_len);
        static const uint16_t addr_types[] = {RR_A, RR_AAAA};
        for (int k = 0; k < 2; k++) {
            zone_rrset_t a;
            if (!zone_node_find(n, addr_types[k], &a)) {
                continue;
            }
            owner_t ow = {0, lt, tl};
            if (!put_rrset(c->r, SEC_AR, ow, a, zone_rrset_ttl(a)) && is_glue) {
                c->r->tc = true;
            }
        }
    }
}

static void put_referral(ctx_t *c, const zone_node_t *cut)
{
    zone_rrset_t ns;
    if (!zone_node_find(cut, RR_NS, &ns)) {
        return;
    }
    owner_t ow = {0, zone_node_name(cut), cut->name_len};
    if (!put_rrset(c->r, SEC_NS, ow, ns, zone_rrset_ttl(ns))) {
        c->r->tc = true;
        return;
    }
    put_additional(c, ns, cut);
}

/* Types whose targets get their addresses in the additional section: RFC 1035 (NS, MX),
 * RFC 2782 (SRV), RFC 9460 4.1 (SVCB, HTTPS). */
static bool has_additional(uint16_t type)
{
    return type == RR_NS || type == RR_MX || type == RR_SRV || type == RR_SVCB || type == RR_HTTPS;
}

/* A load-balanced name: the pre-rendered A/AAAA RRsets of the available sites; other types
 * come from the zone's data at that name, if any (NODATA otherwise: the name exists). */
/* A per-thread xorshift64* generator for weighted answers: no lock, no syscall. */
static uint64_t rng_next(void)
{
    static __thread uint64_t x;
    if (MS_UNLIKELY(x == 0)) {
        x = time_mono_ns() ^ (uint64_t)(uintptr_t)&x;
        x = x ? x : 0x9E3779B97F4A7C15ull;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return x * 0x2545F4914F6CDD1Dull;
}

/* The client class of this query for a locality-ordered name: the ECS address when the
 * query carries one (with a non-zero source prefix), else the packet's source address. */
static unsigned client_class(ctx_t *c)
{
    const query_t *q = c->q;
    const pol_classifier_t *pc = c->snap->classifier;
    unsigned scope = 0;
    if (!pc) {
        return 0;
    }
    if (q->ecs) {
        if (q->ecs_src == 0) {
            return 0; /* the resolver asks us not to use any client address (RFC 7871 7.1.2) */
        }
        unsigned cls = pol_classify(pc, q->ecs_family == 1 ? AF_INET : AF_INET6, q->ecs_addr,
                                    q->ecs_src, &scope);
        c->r->ecs_scope = (uint8_t)scope;
        return cls;
    }
    if (!q->client) {
        return 0;
    }
    if (q->client->sa.sa_family == AF_INET) {
        return pol_classify(pc, AF_INET, (const uint8_t *)&q->client->sin.sin_addr, 32, &scope);
    }
    return pol_classify(pc, AF_INET6, (const uint8_t *)&q->client->sin6.sin6_addr, 128, &scope);
}

static void answer_lb(ctx_t *c, const snap_lb_t *lb, owner_t ow)
{
    uint16_t qt = c->q->qtype;
    zone_rrset_t rs;
    if (qt == RR_A || qt == RR_AAAA || qt == RR_ANY) {
        if (lb->servfail) {
            c->rcode = RCODE_SERVFAIL; /* no site available, and the name says so */
            c->aa = false;
            return;
        }
        const snap_class_t *cl = &lb->cls[0];
        if (lb->locality) {
            unsigned k = client_class(c);
            cl = &lb->cls[k < lb->n_cls ? k : 0];
        }
        const snap_rrs_t *v = &cl->var[0];
        if (cl->n_var > 1) {
            v = &cl->var[cl->slot[rng_next() % SNAP_WEIGHT_SLOTS]];
        }
        const uint8_t *blob = qt == RR_AAAA ? v->aaaa : v->a;
        if (!blob && qt == RR_ANY) {
            blob = v->aaaa;
        }
        if (blob) {
            rs.p = blob;
            if (!put_rrset(c->r, SEC_AN, ow, rs, zone_rrset_ttl(rs))) {
                c->r->tc = true;
            }
            return;
        }
        put_soa_negative(c);
        return;
    }
    const zone_node_t *n = zone_lookup(c->zone, lb->name, lb->name_len);
    if (n && zone_node_find(n, qt, &rs)) {
        if (!put_rrset(c->r, SEC_AN, ow, rs, zone_rrset_ttl(rs))) {
            c->r->tc = true;
            return;
        }
        if (has_additional(qt)) {
            put_additional(c, rs, NULL);
        }
        return;
    }
    put_soa_negative(c);
}

static void answer_in(ctx_t *c)
{
    const query_t *q = c->q;
    int apex_label;
    c->zone = zone_db_find(c->snap->zones, q->lname, q->labels, q->nlabels, &apex_label);
    if (c->zone && q->qtype == RR_DS && apex_label == 0 && q->nlabels > 1) {
        /* The DS of a zone we serve lives in its parent: answer from the parent when we
         * serve that too (RFC 4035 3.1.4.1). */
        int parent_label;
        const zone_t *parent =
            zone_db_find(c->snap->zones, q->lname, q->labels + 1, q->nlabels - 1, &parent_label);
        if (parent) {
            c->zone = parent;
        }
    }
    if (!c->zone) {
        c->rcode = RCODE_REFUSED;
        return;
    }
    if (q->qtype == RR_AXFR || q->qtype == RR_IXFR) {
        c->rcode = RCODE_REFUSED; /* no zone transfers (yet) */
        return;
    }
    c->aa = true;
    const uint8_t *name = q->lname;
    size_t len = q->qname_len;
    uint8_t chain_names[2][DNS_MAX_NAME];
    owner_t ow = {HDR, NULL, 0}; /* the question's name: a pointer to it */
    for (int link = 0; link <= MAX_CHAIN; link++) {
        uint32_t hash = zone_name_hash(name, len); /* one hash per name, shared */
        if (MS_UNLIKELY(c->snap->n_lb != 0)) {
            const snap_lb_t *lb = snap_lb_find_hashed(c->snap, name, len, hash);
            if (lb && lb->zone == c->zone) {
                answer_lb(c, lb, ow);
                return;
            }
        }
        lookup_t lk = lookup(c->zone, name, len, hash, q->qtype);
        if (lk.kind == LK_DELEG) {
            /* A referral; after a CNAME the answer stays authoritative for the CNAME and
             * the referral tells the client where to follow it (as Knot and BIND do). */
            c->aa = link > 0;
            put_referral(c, lk.node);
            return;
        }
        if (lk.kind == LK_DNAME) {
            /* RFC 6672 3.2: the DNAME, then a CNAME synthesised from it, then follow. */
            zone_rrset_t drs;
            const zone_node_t *d = lk.node;
            if (!zone_node_find(d, RR_DNAME, &drs)) {
                return;
            }
            owner_t down = {0, zone_node_name(d), d->name_len};
            if (!put_rrset(c->r, SEC_AN, down, drs, zone_rrset_ttl(drs))) {
                c->r->tc = true;
                return;
            }
            const uint8_t *rr = zone_rrset_first(drs);
            size_t tl = dname_wire_len(rr + 2, rr + 2 + rd_u16(rr));
            size_t prefix = len - d->name_len;
            if (!tl) {
                return;
            }
            if (prefix + tl > DNS_MAX_NAME) {
                c->rcode = 6; /* YXDOMAIN: the substituted name would be too long */
                return;
            }
            uint8_t *next = chain_names[link & 1];
            uint8_t syn[DNS_MAX_NAME];
            memcpy(syn, name, prefix);
            dname_lower(syn + prefix, rr + 2, tl);
            memcpy(next, syn, prefix + tl);
            size_t save_len = c->r->len;
            int save_comp = c->r->ncomp;
            if (!put_rr(c->r, ow, RR_CNAME, 1, zone_rrset_ttl(drs), next,
                        (uint16_t)(prefix + tl))) {
                c->r->len = save_len; /* no half-written record */
                c->r->ncomp = save_comp;
                c->r->tc = true;
                return;
            }
            c->r->count[SEC_AN]++;
            if (q->qtype == RR_CNAME ||
                !dname_is_below(next, prefix + tl, zone_apex(c->zone), zone_apex_len(c->zone))) {
                return;
            }
            name = next;
            len = prefix + tl;
            ow = (owner_t){0, name, len};
            continue;
        }
        if (lk.kind == LK_NXDOMAIN) {
            c->rcode = RCODE_NXDOMAIN; /* also after a CNAME (RFC 6604 2.1) */
            put_soa_negative(c);
            return;
        }
        const zone_node_t *n = lk.node;
        zone_rrset_t rs;
        if (q->qtype == RR_ANY && n->n_rrsets > 0 && !(n->flags & ZN_CNAME)) {
            /* RFC 8482: answer ANY with one RRset, the first in type order. */
            rs = zone_node_rrset(n, 0);
            if (!put_rrset(c->r, SEC_AN, ow, rs, zone_rrset_ttl(rs))) {
                c->r->tc = true;
            }
            return;
        }
        if (q->qtype != RR_ANY && zone_node_find(n, q->qtype, &rs)) {
            if (!put_rrset(c->r, SEC_AN, ow, rs, zone_rrset_ttl(rs))) {
                c->r->tc = true;
                return;
            }
            if (has_additional(q->qtype)) {
                put_additional(c, rs, NULL);
            }
            return;
        }
        /* RRSIG and NSEC of a CNAME owner live at that owner: they are not followed
         * (RFC 4035 3.1.4 and 2.5); without DNSSEC data that is NODATA, as Knot answers. */
        if ((n->flags & ZN_CNAME) && q->qtype != RR_RRSIG && q->qtype != RR_NSEC &&
            zone_node_find(n, RR_CNAME, &rs)) {
            if (!put_rrset(c->r, SEC_AN, ow, rs, zone_rrset_ttl(rs))) {
                c->r->tc = true;
                return;
            }
            if (q->qtype == RR_ANY) {
                return;
            }
            const uint8_t *rr = zone_rrset_first(rs);
            size_t tl = dname_wire_len(rr + 2, rr + 2 + rd_u16(rr));
            if (!tl) {
                return;
            }
            uint8_t *next = chain_names[link & 1];
            dname_lower(next, rr + 2, tl);
            if (!dname_is_below(next, tl, zone_apex(c->zone), zone_apex_len(c->zone))) {
                return; /* leaves the zone: the resolver follows it */
            }
            name = next;
            len = tl;
            ow = (owner_t){0, name, len};
            continue;
        }
        put_soa_negative(c); /* NODATA */
        return;
    }
    /* Chain too long or a loop: what we have so far, as Knot does. */
}

static bool chaos_name(const query_t *q, const char *text)
{
    uint8_t w[64];
    size_t l = dname_from_str(text, w, sizeof(w));
    return l == q->qname_len && memcmp(w, q->lname, l) == 0;
}

static void answer_ch(ctx_t *c)
{
    const query_t *q = c->q;
    const conf_t *conf = c->snap->conf;
    const char *text = NULL;
    if (chaos_name(q, "id.server") || chaos_name(q, "hostname.bind")) {
        text = conf->identity;
    } else if (chaos_name(q, "version.bind") || chaos_name(q, "version.server")) {
        text = conf->version;
    }
    if (!text || !*text || (q->qtype != RR_TXT && q->qtype != RR_ANY)) {
        c->rcode = RCODE_REFUSED;
        return;
    }
    uint8_t rd[256];
    size_t tl = strlen(text);
    if (tl > 255) {
        tl = 255;
    }
    rd[0] = (uint8_t)tl;
    memcpy(rd + 1, text, tl);
    c->aa = true;
    owner_t ow = {HDR, NULL, 0};
    size_t save_len = c->r->len;
    if (put_rr(c->r, ow, RR_TXT, 3, 0, rd, (uint16_t)(tl + 1))) {
        c->r->count[SEC_AN]++;
    } else {
        c->r->len = save_len;
        c->r->tc = true;
    }
}

/* ---- entry ---- */

/* The TSIG record of a BADKEY error: the query's key name and algorithm, its time signed and
 * fudge, no MAC, the original ID, error 17, no other data. */
static void put_tsig_badkey(const uint8_t *pkt, const query_t *q, resp_t *r)
{
    uint8_t key[DNS_MAX_NAME], alg[DNS_MAX_NAME];
    size_t kl = 0, al = 0;
    /* Both names were validated by parse_rest; decompress them. */
    for (int pass = 0; pass < 2; pass++) {
        size_t off = pass == 0 ? q->tsig_rr : q->tsig_rdata;
        uint8_t *out = pass == 0 ? key : alg;
        size_t *ol = pass == 0 ? &kl : &al;
        for (int guard = 0; guard < DNS_MAX_LABELS; guard++) {
            uint8_t l = pkt[off];
            if ((l & 0xC0) == 0xC0) {
                off = ((size_t)(l & 0x3F) << 8) | pkt[off + 1];
                continue;
            }
            if (*ol + l + 1 > DNS_MAX_NAME) {
                return;
            }
            dname_lower(out + *ol, pkt + off, (size_t)l + 1);
            *ol += (size_t)l + 1;
            if (l == 0) {
                break;
            }
            off += (size_t)l + 1;
        }
    }
    size_t after_alg = rdata_name(pkt, q->tsig_rdata + q->tsig_rdlen, q->tsig_rdata, false);
    uint8_t rd[DNS_MAX_NAME + 16];
    memcpy(rd, alg, al);
    memcpy(rd + al, pkt + after_alg, 8); /* time signed (6) + fudge (2) */
    wr_u16(rd + al + 8, 0);              /* MAC size */
    wr_u16(rd + al + 10, q->id);         /* original ID */
    wr_u16(rd + al + 12, 17);            /* BADKEY */
    wr_u16(rd + al + 14, 0);             /* other length */
    owner_t ow = {0, key, kl};
    size_t save = r->len;
    if (r->len + kl + 10 + al + 16 > r->limit ||
        !put_rr(r, ow, RR_TSIG, 255, 0, rd, (uint16_t)(al + 16))) {
        r->len = save;
        return;
    }
    r->count[SEC_AR]++;
}

static size_t opt_size(const snap_t *s, const query_t *q)
{
    if (!q->edns) {
        return 0;
    }
    return 11 + (q->want_nsid && s->nsid_len ? 4u + s->nsid_len : 0) +
           (q->ecs ? 8u + (q->ecs_src + 7u) / 8u : 0);
}

static size_t put_opt(const snap_t *s, const query_t *q, uint8_t *p, unsigned ext_rcode,
                      uint8_t ecs_scope)
{
    p[0] = 0;
    wr_u16(p + 1, RR_OPT);
    wr_u16(p + 3, s->udp_max);
    p[5] = (uint8_t)ext_rcode;
    p[6] = 0; /* version */
    p[7] = q->edns_do ? 0x80 : 0;
    p[8] = 0;
    size_t rdlen = 0;
    if (q->want_nsid && s->nsid_len) {
        wr_u16(p + 11, 3);
        wr_u16(p + 13, s->nsid_len);
        memcpy(p + 15, s->nsid, s->nsid_len);
        rdlen = 4u + s->nsid_len;
    }
    if (q->ecs) {
        /* RFC 7871 7.2.1: echo family, source prefix and address; scope is how far the
         * answer holds (0: it does not depend on the client). */
        size_t alen = (q->ecs_src + 7u) / 8u;
        uint8_t *o = p + 11 + rdlen;
        wr_u16(o, 8);
        wr_u16(o + 2, (uint16_t)(4 + alen));
        wr_u16(o + 4, q->ecs_family);
        o[6] = q->ecs_src;
        o[7] = ecs_scope;
        memcpy(o + 8, q->ecs_addr, alen);
        rdlen += 8 + alen;
    }
    wr_u16(p + 9, (uint16_t)rdlen);
    return 11 + rdlen;
}

/* ---- statistics ---- */

/* The types an authoritative server for load-balanced names mostly sees, in slot order. */
static const char *const qtype_names[DNS_QTYPE_OTHER] = {
    "A", "NS", "CNAME", "SOA", "PTR", "MX", "TXT", "AAAA", "SRV", "SVCB", "HTTPS", "ANY",
};

unsigned dns_qtype_slot(uint16_t qtype)
{
    switch (qtype) { /* runs per query: a few compares, no scan */
    case 1: return 0;
    case 2: return 1;
    case 5: return 2;
    case 6: return 3;
    case 12: return 4;
    case 15: return 5;
    case 16: return 6;
    case 28: return 7;
    case 33: return 8;
    case 64: return 9;
    case 65: return 10;
    case 255: return 11;
    default: return DNS_QTYPE_OTHER;
    }
}

const char *dns_qtype_slot_name(unsigned slot)
{
    return slot < DNS_QTYPE_OTHER ? qtype_names[slot] : "other";
}

static size_t finish(const snap_t *s, const query_t *q, resp_t *r, unsigned rcode, bool aa,
                     bool with_opt, dns_stats_t *st)
{
    uint8_t *h = r->buf;
    wr_u16(h, q->id);
    h[2] = (uint8_t)(0x80 | (q->flags1 & 0x79) | (aa ? 0x04 : 0) | (r->tc ? 0x02 : 0));
    /* RD (0x01 of byte 2) and CD (0x10 of byte 3) are copied; RA, Z, AD clear. */
    h[3] = (uint8_t)((q->flags2 & 0x10) | (rcode & 0x0F));
    wr_u16(h + 6, r->count[SEC_AN]);
    wr_u16(h + 8, r->count[SEC_NS]);
    wr_u16(h + 10, r->count[SEC_AR]);
    if (with_opt && q->edns) {
        r->len += put_opt(s, q, r->buf + r->len, rcode >> 4, r->ecs_scope);
        wr_u16(h + 10, (uint16_t)(r->count[SEC_AR] + 1));
    }
    if (st) {
        DNS_STAT_INC(st, queries);
        if (rcode < DNS_RCODE_SLOTS) {
            DNS_STAT_INC(st, rcode[rcode]);
        }
        DNS_STAT_INC(st, qtype[dns_qtype_slot(q->qtype)]);
        if (r->tc) {
            DNS_STAT_INC(st, truncated);
        }
    }
    return r->len;
}

size_t dns_answer(const snap_t *s, const uint8_t *pkt, size_t len, uint8_t *out, size_t cap,
                  bool tcp, dns_stats_t *st)
{
    return dns_answer_client(s, pkt, len, out, cap, tcp, NULL, st);
}

size_t dns_answer_client(const snap_t *s, const uint8_t *pkt, size_t len, uint8_t *out, size_t cap,
                         bool tcp, const net_addr_t *client, dns_stats_t *st)
{
    query_t q;
    if (len < HDR || (pkt[2] & 0x80) || cap < 512) {
        if (st) {
            DNS_STAT_INC(st, dropped);
        }
        return 0; /* too short to answer, or a response: never answer those */
    }
    q.id = rd_u16(pkt);
    q.flags1 = pkt[2];
    q.flags2 = pkt[3];
    q.opcode = (pkt[2] >> 3) & 0x0F;
    q.qtype = 0; /* counted as "other" when the question is unreadable */
    q.edns = false;
    q.opt_ok = false;
    q.tsig_rr = 0;
    q.ecs = false;
    q.client = client;
    q.want_nsid = false;
    q.edns_do = false;
    resp_t r = {.buf = out, .len = HDR, .limit = 512};
    memset(out, 0, HDR);
    if (rd_u16(pkt + 4) != 1) {
        return finish(s, &q, &r, q.opcode ? RCODE_NOTIMP : RCODE_FORMERR, false, false, st);
    }
    size_t ql = parse_qname(pkt + HDR, pkt + len, &q);
    if (ql == 0 || HDR + ql + 4 > len) {
        return finish(s, &q, &r, RCODE_FORMERR, false, false, st);
    }
    q.question_end = HDR + ql + 4;
    q.qtype = rd_u16(pkt + HDR + ql);
    q.qclass = rd_u16(pkt + HDR + ql + 2);
    /* The question is echoed byte for byte: the client's case is preserved. */
    memcpy(out + HDR, pkt + HDR, ql + 4);
    wr_u16(out + 4, 1);
    r.len = q.question_end;
    for (int i = 0; i < q.nlabels - 1; i++) {
        comp_add(&r, HDR + q.labels[i]);
    }
    if (parse_rest(pkt, len, &q) != 0) {
        /* A malformed option inside a well-formed OPT still gets an OPT back (RFC 6891 7,
         * as Knot); no NSID or ECS echo in that reply. */
        q.edns = q.opt_ok && q.edns;
        q.want_nsid = false;
        q.ecs = false;
        q.edns_version = 0;
        r.limit = 512 - (q.edns ? 11 : 0);
        return finish(s, &q, &r, RCODE_FORMERR, false, q.edns, st);
    }
    if (q.tsig_rr) {
        /* We hold no TSIG keys: RFC 8945 5.2.1, NOTAUTH with an unsigned TSIG, BADKEY. The
         * TSIG goes last, after the OPT that finish() adds. */
        q.want_nsid = false;
        q.ecs = false;
        r.limit = 512;
        size_t n = finish(s, &q, &r, RCODE_NOTAUTH, false, true, st);
        uint16_t ar = rd_u16(out + 10);
        r.len = n;
        r.count[SEC_AR] = 0;
        put_tsig_badkey(pkt, &q, &r);
        wr_u16(out + 10, (uint16_t)(ar + r.count[SEC_AR]));
        return r.len;
    }
    size_t limit;
    if (tcp) {
        limit = cap < DNS_MAX_MSG ? cap : DNS_MAX_MSG;
    } else {
        limit = 512;
        if (q.edns) {
            limit = q.edns_udp < 512 ? 512 : q.edns_udp;
            limit = limit > s->udp_max ? s->udp_max : limit;
        }
        limit = limit > cap ? cap : limit;
    }
    r.limit = limit - opt_size(s, &q);
    if (q.edns && q.edns_version > 0) {
        return finish(s, &q, &r, RCODE_BADVERS, false, true, st); /* RFC 6891 6.1.3 */
    }
    if (q.opcode != 0) {
        return finish(s, &q, &r, RCODE_NOTIMP, false, true, st);
    }
    ctx_t c = {.snap = s, .q = &q, .r = &r, .rcode = RCODE_NOERROR};
    if (q.qclass == 1 || q.qclass == 255) {
        answer_in(&c); /* class ANY: our only data class is IN (as Knot) */
    } else if (q.qclass == 3) {
        answer_ch(&c);
    } else {
        c.rcode = RCODE_REFUSED;
    }
    return finish(s, &q, &r, c.rcode, c.aa, true, st);
}
