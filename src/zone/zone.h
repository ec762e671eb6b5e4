/* zone.h: the zone module's interface: authoritative zone data loaded from RFC 1035 master
 * files (parsed by Knot's libzscanner), stored compactly for fast exact-match lookup.
 *
 * Layout: each zone is a hash table of nodes keyed by the lower-cased wire-format owner
 * name. A node holds its owner and all its RRsets in one contiguous allocation from the
 * zone's arena, RDATA in wire format with uncompressed names, so the answer path copies
 * bytes and never decodes text. Empty non-terminals get nodes of their own, which makes
 * NXDOMAIN vs NODATA and wildcard closest-encloser search plain hash lookups. Flags computed
 * at load time (delegation point, below a cut, has a wildcard child) keep the common query
 * to a single lookup.
 *
 * A zone_db_t is immutable once built and may be read by any number of threads. */
#ifndef MS_ZONE_H
#define MS_ZONE_H

#include "util/util.h"

#define DNS_MAX_NAME   255
#define DNS_MAX_LABELS 128

/* RR types the code refers to by name. */
enum {
    RR_A = 1,
    RR_NS = 2,
    RR_CNAME = 5,
    RR_SOA = 6,
    RR_PTR = 12,
    RR_HINFO = 13,
    RR_MX = 15,
    RR_TXT = 16,
    RR_AAAA = 28,
    RR_SRV = 33,
    RR_DNAME = 39,
    RR_OPT = 41,
    RR_DS = 43,
    RR_RRSIG = 46,
    RR_NSEC = 47,
    RR_SVCB = 64,
    RR_HTTPS = 65,
    RR_TSIG = 250,
    RR_IXFR = 251,
    RR_AXFR = 252,
    RR_ANY = 255,
    RR_CAA = 257
};

enum {
    ZN_DELEG = 1 << 0,      /* has NS and is not the apex: a zone cut */
    ZN_BELOW_CUT = 1 << 1,  /* some ancestor below the apex is a zone cut (occluded/glue) */
    ZN_WILD_CHILD = 1 << 2, /* "*.<this name>" exists */
    ZN_CNAME = 1 << 3,      /* has a CNAME RRset */
    ZN_APEX = 1 << 4,
    ZN_DNAME = 1 << 5,      /* has a DNAME RRset (RFC 6672) */
    ZN_BELOW_DNAME = 1 << 6 /* some ancestor owns a DNAME: this name is occluded */
};

/* A node: owner name and RRsets. The RRset blob is a sequence of
 *   type u16 | count u16 | ttl u32 | count x (rdlen u16 | rdata)
 * in big-endian byte order, types ascending. Read it through zone_rrset_*(). */
typedef struct zone_node zone_node_t;
struct zone_node {
    zone_node_t *next; /* hash chain */
    uint32_t hash;
    uint16_t flags;
    uint8_t name_len;
    uint8_t n_rrsets;
    uint32_t data_len; /* bytes of RRset blob */
    uint8_t data[];    /* name_len bytes of lower-cased wire name, then the RRset blob */
};

typedef struct {
    const uint8_t *p; /* points at the RRset header inside a node */
} zone_rrset_t;

static inline const uint8_t *zone_node_name(const zone_node_t *n)
{
    return n->data;
}
static inline uint16_t zone_rrset_type(zone_rrset_t r)
{
    return rd_u16(r.p);
}
static inline uint16_t zone_rrset_count(zone_rrset_t r)
{
    return rd_u16(r.p + 2);
}
static inline uint32_t zone_rrset_ttl(zone_rrset_t r)
{
    return rd_u32(r.p + 4);
}
/* First RR: pointer to its rdlen field; advance with zone_rr_next. */
static inline const uint8_t *zone_rrset_first(zone_rrset_t r)
{
    return r.p + 8;
}
static inline const uint8_t *zone_rr_next(const uint8_t *rr)
{
    return rr + 2 + rd_u16(rr);
}

/* Find an RRset of `type` in a node. Returns false if absent. */
bool zone_node_find(const zone_node_t *n, uint16_t type, zone_rrset_t *out);
/* The i-th RRset of a node (0 <= i < n_rrsets). */
zone_rrset_t zone_node_rrset(const zone_node_t *n, unsigned i);

typedef struct zone zone_t;
typedef struct zone_db zone_db_t;

/* Load a zone. `origin` is text ("example.com" or "example.com."). On error returns
 * MS_EPARSE/MS_EIO/MS_EINVAL and writes "FILE:LINE: reason" into err. */
int zone_load(const char *origin, const char *path, zone_t **out, char *err, size_t errlen) MS_WUR;
/* Same from a string (tests, fuzzing). */
int zone_load_string(const char *origin, const char *text, size_t len, zone_t **out, char *err,
                     size_t errlen) MS_WUR;
void zone_free(zone_t *z);

const uint8_t *zone_apex(const zone_t *z); /* lower-cased wire name */
size_t zone_apex_len(const zone_t *z);
const zone_node_t *zone_apex_node(const zone_t *z);
size_t zone_node_count(const zone_t *z);
size_t zone_rr_count(const zone_t *z);
size_t zone_mem_bytes(const zone_t *z);

/* Exact lookup of a lower-cased wire name (len bytes including the root label). */
const zone_node_t *zone_lookup(const zone_t *z, const uint8_t *lname, size_t len);
uint32_t zone_name_hash(const uint8_t *lname, size_t len);
const zone_node_t *zone_lookup_hashed(const zone_t *z, const uint8_t *lname, size_t len,
                                      uint32_t hash);

/* A set of zones: takes ownership of the zones added. */
zone_db_t *zone_db_new(void);
int zone_db_add(zone_db_t *db, zone_t *z) MS_WUR; /* MS_EEXIST on a duplicate apex */
/* The zone whose apex is the longest suffix of lname, or NULL. `labels` holds the offsets of
 * each label of lname (nlabels of them); *apex_label is set to the index of the apex's first
 * label. */
const zone_t *zone_db_find(const zone_db_t *db, const uint8_t *lname, const uint8_t *labels,
                           int nlabels, int *apex_label);
size_t zone_db_count(const zone_db_t *db);
const zone_t *zone_db_get(const zone_db_t *db, size_t i);
void zone_db_free(zone_db_t *db);

/* ---- name helpers (wire format) ---- */
/* Length of a wire name at p (bounded by end), or 0 if malformed. No compression. */
size_t dname_wire_len(const uint8_t *p, const uint8_t *end);
/* Is `name` (len bytes) equal to or below `apex`? Both lower-cased wire names; the match
 * must start on a label boundary. */
bool dname_is_below(const uint8_t *name, size_t len, const uint8_t *apex, size_t apex_len);
/* Copy and lower-case (ASCII only). */
void dname_lower(uint8_t *dst, const uint8_t *src, size_t len);
/* Presentation form ("www.example.com.") into buf, for logs. */
const char *dname_str(const uint8_t *name, char *buf, size_t len);
/* Text -> wire (lower-cased). Returns length or 0 on error. */
size_t dname_from_str(const char *s, uint8_t *out, size_t cap);

#endif
