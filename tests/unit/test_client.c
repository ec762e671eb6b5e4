/* test_client.c: the client failover library (src/client): names, the query builder, a table
 * of good and malformed DNS replies for the parser (order kept, TTLs, CNAMEs, negative
 * answers, compression, bounds), resolv.conf, the A/AAAA merge, URL and HTTP response
 * parsing, and the sticky cursor and TTL on a fake clock with a fake resolver (connections
 * go to real listening sockets on loopback). */
#include "client/internal.h"
#include "tap.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- a tiny reply builder ---- */

typedef struct {
    uint8_t b[70000];
    size_t n;
} pkt_t;

static void put(pkt_t *p, const void *d, size_t n)
{
    memcpy(p->b + p->n, d, n);
    p->n += n;
}
static void put16(pkt_t *p, uint16_t v)
{
    wr_u16(p->b + p->n, v);
    p->n += 2;
}
static void put32(pkt_t *p, uint32_t v)
{
    wr_u32(p->b + p->n, v);
    p->n += 4;
}
/* A name in text ("a.b") or, with a leading '@', a compression pointer to an offset. */
static void putname(pkt_t *p, const char *s)
{
    if (s[0] == '@') {
        put16(p, (uint16_t)(0xC000 | atoi(s + 1)));
        return;
    }
    uint8_t w[MSC_DNS_NAME_MAX];
    size_t l;
    if (msc_dns_name(s, w, &l)) {
        abort();
    }
    put(p, w, l);
}

#define QID 0x1234

static void header(pkt_t *p, uint8_t flags2, uint8_t rcode, uint16_t qd, uint16_t an, uint16_t ns)
{
    p->n = 0;
    put16(p, QID);
    p->b[p->n++] = flags2;
    p->b[p->n++] = rcode;
    put16(p, qd);
    put16(p, an);
    put16(p, ns);
    put16(p, 0);
}

static void question(pkt_t *p, const char *name, uint16_t type)
{
    putname(p, name);
    put16(p, type);
    put16(p, 1);
}

static void rr_a(pkt_t *p, const char *owner, uint32_t ttl, const char *ip)
{
    putname(p, owner);
    put16(p, 1);
    put16(p, 1);
    put32(p, ttl);
    put16(p, 4);
    struct in_addr a;
    inet_pton(AF_INET, ip, &a);
    put(p, &a, 4);
}

static void rr_aaaa(pkt_t *p, const char *owner, uint32_t ttl, const char *ip)
{
    putname(p, owner);
    put16(p, 28);
    put16(p, 1);
    put32(p, ttl);
    put16(p, 16);
    struct in6_addr a;
    inet_pton(AF_INET6, ip, &a);
    put(p, &a, 16);
}

static void rr_cname(pkt_t *p, const char *owner, uint32_t ttl, const char *target)
{
    putname(p, owner);
    put16(p, 5);
    put16(p, 1);
    put32(p, ttl);
    size_t at = p->n;
    put16(p, 0);
    size_t start = p->n;
    putname(p, target);
    wr_u16(p->b + at, (uint16_t)(p->n - start));
}

static void rr_soa(pkt_t *p, const char *owner, uint32_t ttl, uint32_t minimum)
{
    putname(p, owner);
    put16(p, 6);
    put16(p, 1);
    put32(p, ttl);
    size_t at = p->n;
    put16(p, 0);
    size_t start = p->n;
    putname(p, "ns1.test");
    putname(p, "host.test");
    put32(p, 1);
    put32(p, 7200);
    put32(p, 3600);
    put32(p, 1209600);
    put32(p, minimum);
    wr_u16(p->b + at, (uint16_t)(p->n - start));
}

#define AA 0x84 /* QR | AA */

static int parse(const pkt_t *p, const char *qname, uint16_t qtype, msc_reply_t *out)
{
    uint8_t w[MSC_DNS_NAME_MAX];
    size_t l;
    if (msc_dns_name(qname, w, &l)) {
        abort();
    }
    /* An exactly-sized copy, so a read past the end is an ASan error. */
    uint8_t *copy = xmalloc(p->n ? p->n : 1);
    memcpy(copy, p->b, p->n);
    int rc = msc_dns_parse(copy, p->n, QID, w, l, qtype, 80, out);
    free(copy);
    return rc;
}

static const char *ip(const net_addr_t *a)
{
    static char s[8][INET6_ADDRSTRLEN];
    static int k;
    k = (k + 1) % 8;
    if (a->sa.sa_family == AF_INET) {
        inet_ntop(AF_INET, &a->sin.sin_addr, s[k], sizeof(s[k]));
    } else {
        inet_ntop(AF_INET6, &a->sin6.sin6_addr, s[k], sizeof(s[k]));
    }
    return s[k];
}

/* The addresses as "a b c", for comparing with the table. */
static const char *addrs(const msc_reply_t *r)
{
    static char s[2048];
    size_t o = 0;
    s[0] = 0;
    for (size_t i = 0; i < r->n; i++) {
        o += (size_t)snprintf(s + o, sizeof(s) - o, "%s%s", i ? " " : "", ip(&r->addr[i]));
    }
    return s;
}

/* ---- good replies ---- */

typedef struct {
    const char *what;
    void (*build)(pkt_t *);
    const char *qname;
    uint16_t qtype;
    uint8_t rcode;
    const char *addrs;
    uint32_t ttl;
    const char *target; /* NULL: the question */
    bool tc;
} good_t;

static void g_order(pkt_t *p)
{
    header(p, AA, 0, 1, 3, 0);
    question(p, "svc.test", 1);
    rr_a(p, "@12", 30, "192.0.2.3");
    rr_a(p, "@12", 30, "192.0.2.1");
    rr_a(p, "@12", 30, "192.0.2.2");
}
static void g_ttl_min(pkt_t *p)
{
    header(p, AA, 0, 1, 3, 0);
    question(p, "svc.test", 1);
    rr_a(p, "svc.test", 30, "192.0.2.1");
    rr_a(p, "svc.test", 7, "192.0.2.2");
    rr_a(p, "svc.test", 60, "192.0.2.3");
}
static void g_case(pkt_t *p)
{
    header(p, AA, 0, 1, 1, 0);
    question(p, "SVC.Test", 1);
    rr_a(p, "svc.TEST", 5, "192.0.2.9");
}
static void g_other_owner(pkt_t *p)
{
    header(p, AA, 0, 1, 3, 0);
    question(p, "svc.test", 1);
    rr_a(p, "other.test", 1, "192.0.2.66");
    rr_a(p, "svc.test", 10, "192.0.2.1");
    rr_aaaa(p, "svc.test", 1, "2001:db8::1"); /* wrong type for an A question: ignored */
}
static void g_cname(pkt_t *p)
{
    header(p, AA, 0, 1, 3, 0);
    question(p, "www.test", 1);
    rr_cname(p, "@12", 100, "svc.test");
    rr_a(p, "svc.test", 20, "192.0.2.2");
    rr_a(p, "svc.test", 20, "192.0.2.1");
}
static void g_cname_short_ttl(pkt_t *p)
{
    header(p, AA, 0, 1, 2, 0);
    question(p, "www.test", 1);
    rr_cname(p, "www.test", 3, "svc.test");
    rr_a(p, "svc.test", 20, "192.0.2.2");
}
static void g_cname_reversed(pkt_t *p)
{
    /* chain records out of order: b -> c listed before a -> b */
    header(p, AA, 0, 1, 3, 0);
    question(p, "a.test", 1);
    rr_a(p, "c.test", 9, "192.0.2.7");
    rr_cname(p, "b.test", 9, "c.test");
    rr_cname(p, "a.test", 9, "b.test");
}
static void g_cname_out(pkt_t *p)
{
    header(p, AA, 0, 1, 1, 0);
    question(p, "www.test", 1);
    rr_cname(p, "www.test", 50, "svc.example.net");
}
static void g_nxdomain(pkt_t *p)
{
    header(p, AA, 3, 1, 0, 1);
    question(p, "nope.test", 1);
    rr_soa(p, "test", 3600, 5);
}
static void g_nodata(pkt_t *p)
{
    header(p, AA, 0, 1, 0, 1);
    question(p, "svc.test", 28);
    rr_soa(p, "test", 4, 300);
}
static void g_tc(pkt_t *p)
{
    header(p, AA | 0x02, 0, 1, 5, 0); /* counts say 5, nothing follows: TC reply */
    question(p, "svc.test", 1);
}
static void g_tc_noq(pkt_t *p)
{
    header(p, 0x80 | 0x02, 0, 0, 0, 0);
}
static void g_servfail_noq(pkt_t *p)
{
    header(p, 0x80, 2, 0, 0, 0); /* found by the fuzzer: the target must still be set */
}
static void g_servfail(pkt_t *p)
{
    header(p, 0x80, 2, 1, 0, 0);
    question(p, "svc.test", 1);
}
static void g_aaaa(pkt_t *p)
{
    header(p, AA, 0, 1, 2, 0);
    question(p, "svc.test", 28);
    rr_aaaa(p, "@12", 60, "2001:db8::2");
    rr_aaaa(p, "@12", 60, "2001:db8::1");
}
static void g_topbit_ttl(pkt_t *p)
{
    header(p, AA, 0, 1, 1, 0);
    question(p, "svc.test", 1);
    rr_a(p, "@12", 0x80000005u, "192.0.2.1");
}
static void g_many(pkt_t *p)
{
    header(p, AA, 0, 1, 40, 0);
    question(p, "svc.test", 1);
    for (int i = 0; i < 40; i++) {
        char s[32];
        snprintf(s, sizeof(s), "10.0.0.%d", i);
        rr_a(p, "@12", 9, s);
    }
}
static void g_ptr_chain(pkt_t *p)
{
    /* owner "svc" + pointer to "test" inside the question name */
    header(p, AA, 0, 1, 1, 0);
    question(p, "svc.test", 1);
    p->b[p->n++] = 3;
    put(p, "SVC", 3);
    put16(p, 0xC000 | 16); /* offset of "test" in the question */
    put16(p, 1);
    put16(p, 1);
    put32(p, 8);
    put16(p, 4);
    put(p, "\xc0\x00\x02\x05", 4);
}

static const good_t goods[] = {
    {"order kept (3, 1, 2)", g_order, "svc.test", 1, 0, "192.0.2.3 192.0.2.1 192.0.2.2", 30},
    {"TTL is the minimum", g_ttl_min, "svc.test", 1, 0, "192.0.2.1 192.0.2.2 192.0.2.3", 7},
    {"names compare case-insensitively", g_case, "SVC.test", 1, 0, "192.0.2.9", 5},
    {"other owners and types ignored", g_other_owner, "svc.test", 1, 0, "192.0.2.1", 10},
    {"CNAME then addresses", g_cname, "www.test", 1, 0, "192.0.2.2 192.0.2.1", 20, "svc.test"},
    {"CNAME TTL counts", g_cname_short_ttl, "www.test", 1, 0, "192.0.2.2", 3, "svc.test"},
    {"CNAME chain out of order", g_cname_reversed, "a.test", 1, 0, "192.0.2.7", 9, "c.test"},
    {"CNAME leaving the reply", g_cname_out, "www.test", 1, 0, "", 50, "svc.example.net"},
    {"NXDOMAIN: SOA minimum", g_nxdomain, "nope.test", 1, 3, "", 5},
    {"NODATA: SOA TTL", g_nodata, "svc.test", 28, 0, "", 4},
    {"TC: nothing else read", g_tc, "svc.test", 1, 0, "", MSC_TTL_NONE, NULL, true},
    {"TC without question", g_tc_noq, "svc.test", 1, 0, "", MSC_TTL_NONE, NULL, true},
    {"SERVFAIL without question", g_servfail_noq, "svc.test", 1, 2, "", MSC_TTL_NONE},
    {"SERVFAIL", g_servfail, "svc.test", 1, 2, "", MSC_TTL_NONE},
    {"AAAA order kept", g_aaaa, "svc.test", 28, 0, "2001:db8::2 2001:db8::1", 60},
    {"TTL with the top bit is 0", g_topbit_ttl, "svc.test", 1, 0, "192.0.2.1", 0},
    {"compressed owner inside a label", g_ptr_chain, "svc.test", 1, 0, "192.0.2.5", 8},
};

static void test_good(void)
{
    pkt_t *p = xmalloc(sizeof(*p));
    for (size_t i = 0; i < MS_ARRAY_LEN(goods); i++) {
        const good_t *g = &goods[i];
        msc_reply_t r;
        g->build(p);
        int rc = parse(p, g->qname, g->qtype, &r);
        TAP_EQ_INT(rc, 0, "good: %s: parses", g->what);
        if (rc) {
            continue;
        }
        tap_ok(strcmp(addrs(&r), g->addrs) == 0, "good: %s: addresses '%s'", g->what, g->addrs);
        if (strcmp(addrs(&r), g->addrs) != 0) {
            tap_diag("  got '%s'", addrs(&r));
        }
        TAP_EQ_INT(r.ttl, g->ttl, "good: %s: ttl", g->what);
        TAP_EQ_INT(r.rcode, g->rcode, "good: %s: rcode", g->what);
        TAP_EQ_INT(r.tc, g->tc, "good: %s: tc", g->what);
        uint8_t w[MSC_DNS_NAME_MAX];
        size_t l;
        if (msc_dns_name(g->target ? g->target : g->qname, w, &l)) {
            abort();
        }
        tap_ok(r.target_len == l && memcmp(r.target, w, l) == 0, "good: %s: target", g->what);
        for (size_t k = 0; k < r.n; k++) {
            if (net_addr_port(&r.addr[k]) != 80) {
                tap_ok(false, "good: %s: port of address %zu", g->what, k);
            }
        }
    }
    msc_reply_t r;
    g_many(p);
    TAP_EQ_INT(parse(p, "svc.test", 1, &r), 0, "40 addresses parse");
    TAP_EQ_INT(r.n, MSC_MAX_ADDRS, "kept the first %d", MSC_MAX_ADDRS);
    TAP_EQ_INT(r.n_more, 40 - MSC_MAX_ADDRS, "counted the rest");
    tap_ok(strcmp(ip(&r.addr[0]), "10.0.0.0") == 0 && strcmp(ip(&r.addr[31]), "10.0.0.31") == 0,
           "the first ones, in order");
    free(p);
}

/* ---- malformed or foreign replies ---- */

typedef struct {
    const char *what;
    void (*build)(pkt_t *);
    int rc;
} bad_t;

static void b_short(pkt_t *p)
{
    header(p, AA, 0, 1, 0, 0);
    p->n = 11;
}
static void b_id(pkt_t *p)
{
    g_order(p);
    p->b[1] ^= 1;
}
static void b_query(pkt_t *p)
{
    g_order(p);
    p->b[2] &= 0x7F; /* QR clear: a query, not a reply */
}
static void b_opcode(pkt_t *p)
{
    g_order(p);
    p->b[2] |= 0x10; /* opcode 2 */
}
static void b_qname(pkt_t *p)
{
    header(p, AA, 0, 1, 1, 0);
    question(p, "other.test", 1);
    rr_a(p, "@12", 30, "192.0.2.1");
}
static void b_qtype(pkt_t *p)
{
    header(p, AA, 0, 1, 0, 0);
    question(p, "svc.test", 28);
}
static void b_qclass(pkt_t *p)
{
    header(p, AA, 0, 1, 0, 0);
    putname(p, "svc.test");
    put16(p, 1);
    put16(p, 3); /* CH */
}
static void b_qd2(pkt_t *p)
{
    header(p, AA, 0, 2, 0, 0);
    question(p, "svc.test", 1);
    question(p, "svc.test", 1);
}
static void b_qd0(pkt_t *p)
{
    header(p, AA, 0, 0, 0, 0); /* no question, no error: not an answer to anything */
}
static void b_fwd_ptr(pkt_t *p)
{
    header(p, AA, 0, 1, 1, 0);
    question(p, "svc.test", 1);
    put16(p, 0xC000 | (uint16_t)(p->n + 2)); /* points forward */
    put16(p, 1);
}
static void b_self_ptr(pkt_t *p)
{
    header(p, AA, 0, 1, 1, 0);
    question(p, "svc.test", 1);
    put16(p, 0xC000 | (uint16_t)p->n); /* points at itself */
    put16(p, 1);
    put16(p, 1);
    put32(p, 1);
    put16(p, 4);
    put32(p, 0);
}
static void b_qptr_loop(pkt_t *p)
{
    header(p, AA, 0, 1, 0, 0);
    put16(p, 0xC000 | 12); /* the question name points at itself */
    put16(p, 1);
    put16(p, 1);
}
static void b_label_past_end(pkt_t *p)
{
    header(p, AA, 0, 1, 0, 0);
    p->b[p->n++] = 40;
    put(p, "abc", 3);
}
static void b_ext_label(pkt_t *p)
{
    header(p, AA, 0, 1, 0, 0);
    p->b[p->n++] = 0x41;
    put16(p, 0);
}
static void b_long_name(pkt_t *p)
{
    /* 5 x 63-byte labels: 320 bytes, over the 255 limit */
    header(p, AA, 0, 1, 0, 0);
    for (int i = 0; i < 5; i++) {
        p->b[p->n++] = 63;
        memset(p->b + p->n, 'a', 63);
        p->n += 63;
    }
    p->b[p->n++] = 0;
    put16(p, 1);
    put16(p, 1);
}
static void b_long_via_ptrs(pkt_t *p)
{
    /* a 200-byte name in the question, and an owner adding 63 + pointer to it: > 255 */
    header(p, AA, 0, 1, 1, 0);
    question(p, "svc.test", 1);
    size_t base = p->n;
    for (int i = 0; i < 3; i++) {
        p->b[p->n++] = 63;
        memset(p->b + p->n, 'b', 63);
        p->n += 63;
    }
    p->b[p->n++] = 0;
    p->b[p->n++] = 63;
    memset(p->b + p->n, 'c', 63);
    p->n += 63;
    put16(p, (uint16_t)(0xC000 | base));
    put16(p, 1);
    put16(p, 1);
    put32(p, 1);
    put16(p, 4);
    put32(p, 0);
}
static void b_a_rdlen(pkt_t *p)
{
    header(p, AA, 0, 1, 1, 0);
    question(p, "svc.test", 1);
    putname(p, "@12");
    put16(p, 1);
    put16(p, 1);
    put32(p, 1);
    put16(p, 5);
    put(p, "\x01\x02\x03\x04\x05", 5);
}
static void b_rdata_past_end(pkt_t *p)
{
    header(p, AA, 0, 1, 1, 0);
    question(p, "svc.test", 1);
    putname(p, "@12");
    put16(p, 1);
    put16(p, 1);
    put32(p, 1);
    put16(p, 4);
    put16(p, 0);
}
static void b_rr_header_cut(pkt_t *p)
{
    header(p, AA, 0, 1, 1, 0);
    question(p, "svc.test", 1);
    putname(p, "@12");
    put16(p, 1);
    put16(p, 1);
}
static void b_ancount(pkt_t *p)
{
    g_order(p);
    wr_u16(p->b + 6, 4); /* one more than there is */
}
static void b_question_cut(pkt_t *p)
{
    header(p, AA, 0, 1, 0, 0);
    putname(p, "svc.test");
    put16(p, 1);
}
static void b_cname_loop(pkt_t *p)
{
    header(p, AA, 0, 1, 2, 0);
    question(p, "a.test", 1);
    rr_cname(p, "a.test", 9, "b.test");
    rr_cname(p, "b.test", 9, "a.test");
}
static void b_cname_rdata(pkt_t *p)
{
    /* a CNAME whose RDATA holds a name plus trailing junk */
    header(p, AA, 0, 1, 1, 0);
    question(p, "www.test", 1);
    putname(p, "@12");
    put16(p, 5);
    put16(p, 1);
    put32(p, 1);
    put16(p, 9);
    putname(p, "x.test");
    p->b[p->n++] = 0;
}
static void b_soa_cut(pkt_t *p)
{
    header(p, AA, 3, 1, 0, 1);
    question(p, "nope.test", 1);
    putname(p, "test");
    put16(p, 6);
    put16(p, 1);
    put32(p, 1);
    put16(p, 10);
    putname(p, "a.b");
    put(p, "\0\0\0\0\0\0", 6);
}
static void b_ns_past_end(pkt_t *p)
{
    header(p, AA, 0, 1, 0, 2);
    question(p, "svc.test", 1);
    rr_soa(p, "test", 1, 1);
    wr_u16(p->b + 8, 2);
    /* the counts promise a second authority record that is not there, but the SOA is found
     * first: fine. Then break it: an NS count past the data with no SOA at all. */
    p->n -= 40;
}

static const bad_t bads[] = {
    {"11-byte packet", b_short, MS_EPARSE},
    {"wrong ID", b_id, MS_EINVAL},
    {"QR bit clear", b_query, MS_EINVAL},
    {"opcode not QUERY", b_opcode, MS_EINVAL},
    {"other question name", b_qname, MS_EINVAL},
    {"other question type", b_qtype, MS_EINVAL},
    {"other question class", b_qclass, MS_EINVAL},
    {"two questions", b_qd2, MS_EINVAL},
    {"no question, NOERROR", b_qd0, MS_EINVAL},
    {"forward compression pointer", b_fwd_ptr, MS_EPARSE},
    {"pointer to itself", b_self_ptr, MS_EPARSE},
    {"question name pointing at itself", b_qptr_loop, MS_EPARSE},
    {"label past the end", b_label_past_end, MS_EPARSE},
    {"extended label type 0x40", b_ext_label, MS_EPARSE},
    {"name over 255 bytes", b_long_name, MS_EPARSE},
    {"name over 255 bytes via a pointer", b_long_via_ptrs, MS_EPARSE},
    {"A with 5-byte RDATA", b_a_rdlen, MS_EPARSE},
    {"RDATA past the end", b_rdata_past_end, MS_EPARSE},
    {"RR header cut", b_rr_header_cut, MS_EPARSE},
    {"ANCOUNT past the records", b_ancount, MS_EPARSE},
    {"question cut", b_question_cut, MS_EPARSE},
    {"CNAME loop", b_cname_loop, MS_EPARSE},
    {"CNAME RDATA with trailing bytes", b_cname_rdata, MS_EPARSE},
    {"SOA RDATA cut", b_soa_cut, MS_EPARSE},
    {"authority cut", b_ns_past_end, MS_EPARSE},
};

static void test_bad(void)
{
    pkt_t *p = xmalloc(sizeof(*p));
    for (size_t i = 0; i < MS_ARRAY_LEN(bads); i++) {
        msc_reply_t r;
        bads[i].build(p);
        const char *q = bads[i].build == b_cname_loop || bads[i].build == b_cname_rdata
                            ? (bads[i].build == b_cname_loop ? "a.test" : "www.test")
                        : bads[i].build == b_soa_cut ? "nope.test"
                                                     : "svc.test";
        TAP_EQ_INT(parse(p, q, 1, &r), bads[i].rc, "bad: %s", bads[i].what);
    }
    /* Every prefix of a good reply: never a crash, and never more than the whole has. */
    g_cname(p);
    size_t full = p->n;
    int ok = 0;
    for (size_t cut = 0; cut < full; cut++) {
        msc_reply_t r;
        p->n = cut;
        int rc = parse(p, "www.test", 1, &r);
        ok += rc == MS_EPARSE;
    }
    TAP_EQ_INT(ok, full, "every strict prefix of a reply is MS_EPARSE");
    free(p);
}

/* ---- names, query, resolv.conf, merge ---- */

static void test_names(void)
{
    static const struct {
        const char *s;
        int rc;
        size_t len;
    } t[] = {
        {"svc.test", 0, 10}, {"svc.test.", 0, 10},   {"A.B.C", 0, 7},      {"", MS_EINVAL, 0},
        {".", MS_EINVAL, 0}, {"a..b", MS_EINVAL, 0}, {".a", MS_EINVAL, 0}, {"a\\.b", MS_EINVAL, 0},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(t); i++) {
        uint8_t w[MSC_DNS_NAME_MAX];
        size_t l = 0;
        int rc = msc_dns_name(t[i].s, w, &l);
        TAP_EQ_INT(rc, t[i].rc, "name '%s'", t[i].s);
        if (rc == 0) {
            TAP_EQ_INT(l, t[i].len, "name '%s' length", t[i].s);
        }
    }
    char l63[64], big[300];
    memset(l63, 'x', 63);
    l63[63] = 0;
    uint8_t w[MSC_DNS_NAME_MAX];
    size_t l;
    TAP_EQ_INT(msc_dns_name(l63, w, &l), 0, "63-byte label");
    char l64[65];
    memset(l64, 'x', 64);
    l64[64] = 0;
    TAP_EQ_INT(msc_dns_name(l64, w, &l), MS_EINVAL, "64-byte label");
    /* 4 x 63 + 3 dots = 255 chars -> 257 wire bytes: too long; 61 in the last: 255 wire */
    snprintf(big, sizeof(big), "%s.%s.%s.%s", l63, l63, l63, l63);
    TAP_EQ_INT(msc_dns_name(big, w, &l), MS_EINVAL, "257-byte wire name");
    big[strlen(big) - 2] = 0;
    TAP_EQ_INT(msc_dns_name(big, w, &l), 0, "255-byte wire name");
    TAP_EQ_INT(l, 255, "255 bytes");
    char s[1024];
    if (msc_dns_name("Www.Test", w, &l)) {
        abort();
    }
    msc_dns_name_str(w, s, sizeof(s));
    tap_ok(strcmp(s, "www.test") == 0, "name back to text, lower case");
}

static void test_query(void)
{
    uint8_t w[MSC_DNS_NAME_MAX], q[512];
    size_t l;
    if (msc_dns_name("svc.test", w, &l)) {
        abort();
    }
    size_t n = msc_dns_query(q, sizeof(q), 0xBEEF, false, w, l, 28);
    TAP_EQ_INT(n, 12 + 10 + 4 + 11, "query length");
    TAP_EQ_INT(rd_u16(q), 0xBEEF, "query id");
    TAP_EQ_INT(q[2], 0, "RD clear for authoritative servers");
    TAP_EQ_INT(rd_u16(q + 4), 1, "one question");
    TAP_EQ_INT(rd_u16(q + 10), 1, "one additional (OPT)");
    TAP_EQ_INT(rd_u16(q + 22), 28, "qtype");
    TAP_EQ_INT(rd_u16(q + 26 + 1), 41, "OPT type");
    TAP_EQ_INT(rd_u16(q + 26 + 3), MSC_DNS_MAX_UDP, "EDNS size");
    n = msc_dns_query(q, sizeof(q), 1, true, w, l, 1);
    TAP_EQ_INT(q[2], 1, "RD set for recursive resolvers");
    TAP_EQ_INT(msc_dns_query(q, 20, 1, true, w, l, 1), 0, "too small a buffer");
}

static void test_resolv_conf(void)
{
    static const char text[] = "# comment\n"
                               "search example.com\n"
                               "nameserver 192.0.2.53\n"
                               "nameserver\t2001:db8::53  \r\n"
                               "nameserver fe80::1%eth0\n"
                               "nameserver not-an-address\n"
                               "options timeout:1\n"
                               "nameserver 192.0.2.54";
    net_addr_t a[MSC_MAX_SERVERS];
    size_t n = msc_resolv_conf_parse(text, a, MSC_MAX_SERVERS);
    TAP_EQ_INT(n, 3, "resolv.conf: three usable nameservers");
    char s[NET_ADDR_STRLEN];
    tap_ok(n == 3 && strcmp(net_addr_str(&a[0], s, sizeof(s)), "192.0.2.53:53") == 0,
           "first, port 53");
    tap_ok(n == 3 && strcmp(net_addr_str(&a[1], s, sizeof(s)), "[2001:db8::53]:53") == 0,
           "IPv6 second");
    tap_ok(n == 3 && strcmp(net_addr_str(&a[2], s, sizeof(s)), "192.0.2.54:53") == 0,
           "last line without newline");
    TAP_EQ_INT(msc_resolv_conf_parse(text, a, 1), 1, "capped at max");
    TAP_EQ_INT(msc_resolv_conf_parse("", a, 3), 0, "empty file");
}

static void test_merge(void)
{
    msc_reply_t *r = xcalloc(2, sizeof(*r));
    pkt_t *p = xmalloc(sizeof(*p));
    g_aaaa(p);
    if (parse(p, "svc.test", 28, &r[0])) {
        abort();
    }
    g_order(p);
    if (parse(p, "svc.test", 1, &r[1])) {
        abort();
    }
    msc_addrs_t out;
    msc_merge_families(&r[0], &r[1], &out);
    TAP_EQ_INT(out.n, 5, "merge: all five");
    char s[512] = "";
    for (size_t i = 0; i < out.n; i++) {
        strcat(s, ip(&out.addr[i]));
        strcat(s, " ");
    }
    tap_ok(strcmp(s, "2001:db8::2 192.0.2.3 2001:db8::1 192.0.2.1 192.0.2.2 ") == 0,
           "merge: rank by rank, IPv6 first");
    msc_merge_families(NULL, &r[1], &out);
    TAP_EQ_INT(out.n, 3, "merge: A only");
    free(p);
    free(r);
}

/* ---- URL and HTTP response ---- */

static void test_url(void)
{
    static const struct {
        const char *url;
        int rc;
        const char *host;
        unsigned port;
        const char *path;
    } t[] = {
        {"http://svc.test:8080/a?b=c", 0, "svc.test", 8080, "/a?b=c"},
        {"http://svc.test", 0, "svc.test", 80, "/"},
        {"HTTP://svc.test/x#frag", 0, "svc.test", 80, "/x"},
        {"http://[::1]:81/", 0, "::1", 81, "/"},
        {"http://127.0.0.2:9/", 0, "127.0.0.2", 9, "/"},
        {"https://svc.test/", MS_EINVAL},
        {"http://:80/", MS_EINVAL},
        {"http://svc.test:0/", MS_EINVAL},
        {"http://svc.test:65536/", MS_EINVAL},
        {"http://svc.test:80x/", MS_EINVAL},
        {"http://user@svc.test/", MS_EINVAL},
        {"http://svc.test/a b", MS_EINVAL},
        {"http://svc.test/a\r\nX: y", MS_EINVAL},
        {"http://[::1/", MS_EINVAL},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(t); i++) {
        msc_url_t u;
        int rc = msc_url_parse(t[i].url, &u);
        char shown[64];
        snprintf(shown, sizeof(shown), "%s", t[i].url);
        for (char *c = shown; *c; c++) {
            *c = (*c < 32) ? '?' : *c; /* keep the TAP line one line */
        }
        TAP_EQ_INT(rc, t[i].rc, "url '%s'", shown);
        if (rc == 0 && t[i].rc == 0) {
            tap_ok(strcmp(u.host, t[i].host) == 0 && u.port == t[i].port &&
                       strcmp(u.path, t[i].path) == 0,
                   "url '%s' parts", shown);
        }
    }
}

static void test_http(void)
{
    static const struct {
        const char *what, *resp;
        int rc, status;
        const char *served_by, *body, *cookie;
    } t[] = {
        {"content-length", "HTTP/1.1 200 OK\r\nX-Served-By: a/web1\r\nContent-Length: 2\r\n\r\nhi",
         0, 200, "a/web1", "hi"},
        {"extra bytes after content-length", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhijk", 0,
         200, "", "hi"},
        {"until close", "HTTP/1.0 503 Service Unavailable\r\nx-served-by:  b/web2 \r\n\r\nbusy", 0,
         503, "b/web2", "busy"},
        {"chunked",
         "HTTP/1.1 200 OK\r\nTransfer-Encoding: "
         "chunked\r\n\r\n2\r\nab\r\n3;x=y\r\ncde\r\n0\r\n\r\n",
         0, 200, "", "abcde"},
        {"control bytes in X-Served-By", "HTTP/1.1 200 OK\r\nX-Served-By: a\x1b[2J\r\n\r\n", 0, 200,
         "a?[2J", ""},
        {"short body", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", MS_ETRUNC},
        {"headers cut", "HTTP/1.1 200 OK\r\nContent-Le", MS_ETRUNC},
        {"empty", "", MS_ETRUNC},
        {"chunk cut", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", MS_ETRUNC},
        {"no last chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n",
         MS_ETRUNC},
        {"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
         MS_EPARSE},
        {"huge chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffff\r\n",
         MS_EPARSE},
        {"not HTTP", "SSH-2.0-OpenSSH\r\n\r\n", MS_EPARSE},
        {"bad status", "HTTP/1.1 2x0 OK\r\n\r\n", MS_EPARSE},
        {"header without colon", "HTTP/1.1 200 OK\r\nbogus\r\n\r\n", MS_EPARSE},
        {"two lengths", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
         MS_EPARSE},
        {"negative length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", MS_EPARSE},
        {"Set-Cookie: first kept, attributes dropped",
         "HTTP/1.1 200 OK\r\nSet-Cookie: msid=abc123; Path=/; HttpOnly\r\n"
         "Set-Cookie: other=1\r\nContent-Length: 0\r\n\r\n",
         0, 200, "", "", "msid=abc123"},
        {"gzip coding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", MS_EPARSE},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(t); i++) {
        msc_http_result_t r = {0};
        int rc = msc_http_parse((const uint8_t *)t[i].resp, strlen(t[i].resp), &r);
        TAP_EQ_INT(rc, t[i].rc, "http: %s", t[i].what);
        if (rc == 0 && t[i].rc == 0) {
            tap_ok(r.status == t[i].status && strcmp(r.served_by, t[i].served_by) == 0 &&
                       strcmp(r.body, t[i].body) == 0,
                   "http: %s: status %d, served by '%s', body '%s'", t[i].what, t[i].status,
                   t[i].served_by, t[i].body);
            tap_ok(strcmp(r.cookie, t[i].cookie ? t[i].cookie : "") == 0, "http: %s: cookie '%s'",
                   t[i].what, r.cookie);
        }
        msc_http_result_free(&r);
    }
    /* Extra request headers are checked before anything goes out. */
    msc_opts_t o = {0};
    o.servers = (const char *const[]){"127.0.0.1:1"};
    o.n_servers = 1;
    msc_t *m = msc_new(&o, NULL, 0);
    static const char *const bad[][1] = {
        {"Cookie: a=b\r\nX-Injected: 1"}, {"NoColon"}, {": empty name"}, {"X: \n"}};
    for (size_t i = 0; i < MS_ARRAY_LEN(bad); i++) {
        msc_http_result_t r;
        TAP_EQ_INT(msc_http_get_with(m, "http://127.0.0.1:1/", bad[i], 1, &r), MS_EINVAL,
                   "bad extra header %zu refused", i);
    }
    const char *many[17];
    for (size_t i = 0; i < 17; i++) {
        many[i] = "X-A: b";
    }
    msc_http_result_t r;
    TAP_EQ_INT(msc_http_get_with(m, "http://127.0.0.1:1/", many, 17, &r), MS_EINVAL,
               "17 extra headers refused");
    msc_free(m);
}

/* ---- sticky cursor and TTL: fake clock, fake resolver, real loopback listeners ---- */

static uint64_t fake_now;
static uint64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

typedef struct {
    int calls;
    int fail; /* next call fails */
    msc_addrs_t next;
} fake_dns_t;

static int fake_resolve(void *arg, const char *name, uint16_t port, msc_addrs_t *out, char *why,
                        size_t whylen)
{
    fake_dns_t *f = arg;
    (void)name;
    f->calls++;
    if (f->fail) {
        snprintf(why, whylen, "fake failure");
        return MS_EIO;
    }
    *out = f->next;
    for (size_t i = 0; i < out->n; i++) {
        out->addr[i].sin.sin_port = htons(port);
    }
    return 0;
}

/* Loopback listeners on 127.0.0.1 + distinct addresses so one port serves all. */
static int listeners[3];
static uint16_t lport;

static bool open_listeners(void)
{
    for (int i = 0; i < 3; i++) {
        listeners[i] = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(listeners[i], SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(lport)};
        a.sin_addr.s_addr = htonl(0x7F000001u + 100 + (uint32_t)i); /* 127.0.0.101.. */
        if (bind(listeners[i], (struct sockaddr *)&a, sizeof(a)) || listen(listeners[i], 64)) {
            return false;
        }
        socklen_t sl = sizeof(a);
        getsockname(listeners[i], (struct sockaddr *)&a, &sl);
        lport = ntohs(a.sin_port);
    }
    return true;
}

static void set_list(fake_dns_t *f, const char *const *ips, size_t n, uint32_t ttl)
{
    memset(&f->next, 0, sizeof(f->next));
    for (size_t i = 0; i < n; i++) {
        if (net_parse_ip(ips[i], &f->next.addr[i])) {
            abort();
        }
    }
    f->next.n = n;
    f->next.ttl = ttl;
}

static const char *conn_ip(msc_conn_t *c)
{
    return ip(msc_conn_addr(c));
}

static void test_sticky_ttl(void)
{
    if (!open_listeners()) {
        tap_ok(false, "loopback listeners");
        return;
    }
    msc_opts_t o = {.connect_timeout_ms = 500, .max_ttl_s = 100};
    o.servers = (const char *const[]){"127.0.0.1:1"};
    o.n_servers = 1;
    msc_t *m = msc_new(&o, NULL, 0);
    fake_dns_t f = {0};
    msc_set_clock(m, fake_clock, NULL);
    msc_set_resolver(m, fake_resolve, &f);
    static const char *const abc[] = {"127.0.0.101", "127.0.0.102", "127.0.0.103"};
    static const char *const cba[] = {"127.0.0.103", "127.0.0.102", "127.0.0.101"};
    set_list(&f, abc, 3, 10);
    fake_now = 1000;

    msc_conn_t *c1, *c2, *c3, *first;
    TAP_EQ_INT(msc_connect(m, "svc.test", lport, &first), 0, "connect");
    TAP_EQ_INT(msc_connect(m, "svc.test", lport, &c1), 0, "connect");
    TAP_EQ_INT(f.calls, 1, "resolved once");
    tap_ok(strcmp(conn_ip(c1), "127.0.0.101") == 0, "first address in DNS order");
    TAP_EQ_INT(msc_connect(m, "svc.test", lport, &c2), 0, "connect again");
    tap_ok(strcmp(conn_ip(c2), "127.0.0.101") == 0, "still the first");
    msc_report_failure(c1, "test: I/O error");
    TAP_EQ_INT(msc_connect(m, "svc.test", lport, &c3), 0, "connect after a failure");
    tap_ok(strcmp(conn_ip(c3), "127.0.0.102") == 0, "moved to the second");
    msc_report_failure(c2, "late report about the first");
    msc_close(c3);
    TAP_EQ_INT(msc_connect(m, "svc.test", lport, &c3), 0, "connect after a late report");
    tap_ok(strcmp(conn_ip(c3), "127.0.0.102") == 0, "a late report does not skip the second");
    msc_close(c1);
    msc_close(c2);
    msc_close(c3);

    /* Ten connections within the TTL: sticky on the second, no DNS. */
    fake_now = 1000 + 9999;
    bool all = true;
    for (int i = 0; i < 10; i++) {
        if (msc_connect(m, "svc.test", lport, &c1) != 0) {
            all = false;
            break;
        }
        all = all && strcmp(conn_ip(c1), "127.0.0.102") == 0;
        msc_close(c1);
    }
    tap_ok(all, "sticky on the second until the TTL runs out");

    TAP_EQ_INT(f.calls, 1, "no resolution within the TTL (9.999 s of 10)");

    /* TTL runs out: re-resolve, back to the top of the (new) order. */
    set_list(&f, cba, 3, 10);
    fake_now = 1000 + 10000;
    TAP_EQ_INT(msc_connect(m, "svc.test", lport, &c1), 0, "connect at TTL expiry");
    TAP_EQ_INT(f.calls, 2, "resolved again at exactly the TTL");
    tap_ok(strcmp(conn_ip(c1), "127.0.0.103") == 0, "first of the new order");
    /* A report about a connection from the old list changes nothing now. */
    tap_ok(strcmp(conn_ip(first), "127.0.0.101") == 0, "an old connection at index 0");
    msc_report_failure(first, "stale");
    msc_close(first);
    msc_close(c1);
    const msc_addrs_t *l;
    size_t cur;
    TAP_EQ_INT(msc_lookup(m, "svc.test", lport, &l, &cur), 0, "lookup");
    TAP_EQ_INT(cur, 0, "a report from the old list does not move the cursor");

    /* The same order after expiry: the client goes back to the top (the DNS says so). */
    if (msc_connect(m, "svc.test", lport, &c1) == 0) {
        msc_report_failure(c1, "fail");
        msc_close(c1);
    }
    TAP_EQ_INT(msc_lookup(m, "svc.test", lport, &l, &cur), 0, "lookup");
    TAP_EQ_INT(cur, 1, "moved on within the TTL");
    fake_now += 10000;
    TAP_EQ_INT(msc_lookup(m, "svc.test", lport, &l, &cur), 0, "lookup after expiry");
    TAP_EQ_INT(cur, 0, "back to the top after re-resolution");
    TAP_EQ_INT(f.calls, 3, "third resolution");

    /* Resolution fails: keep the stale list, retry after a second, not on every call. */
    f.fail = 1;
    fake_now += 10000;
    TAP_EQ_INT(msc_lookup(m, "svc.test", lport, &l, &cur), 0, "stale list served");
    TAP_EQ_INT(l->n, 3, "stale list has its addresses");
    TAP_EQ_INT(f.calls, 4, "tried to resolve");
    fake_now += 999;
    TAP_EQ_INT(msc_lookup(m, "svc.test", lport, &l, &cur), 0, "still stale");
    TAP_EQ_INT(f.calls, 4, "no retry within a second");
    fake_now += 1;
    f.fail = 0;
    set_list(&f, abc, 2, 10);
    TAP_EQ_INT(msc_lookup(m, "svc.test", lport, &l, &cur), 0, "retry");
    TAP_EQ_INT(f.calls, 5, "retried after a second");
    TAP_EQ_INT(l->n, 2, "the new list");

    /* TTL 0: resolve on every call. TTL over max_ttl: capped. */
    set_list(&f, abc, 3, 0);
    fake_now += 20000;
    TAP_EQ_INT(msc_lookup(m, "svc.test", lport, &l, &cur), 0, "ttl 0");
    TAP_EQ_INT(msc_lookup(m, "svc.test", lport, &l, &cur), 0, "ttl 0 again");
    TAP_EQ_INT(f.calls, 7, "TTL 0: a resolution per call");
    set_list(&f, abc, 3, 86400);
    TAP_EQ_INT(msc_lookup(m, "svc.test", lport, &l, &cur), 0, "long ttl");
    TAP_EQ_INT(l->ttl, 100, "TTL capped at max_ttl_s");
    fake_now += 99999;
    TAP_EQ_INT(msc_lookup(m, "svc.test", lport, &l, &cur), 0, "long ttl");
    TAP_EQ_INT(f.calls, 8, "not before the cap");
    fake_now += 1;
    TAP_EQ_INT(msc_lookup(m, "svc.test", lport, &l, &cur), 0, "long ttl");
    TAP_EQ_INT(f.calls, 9, "resolved at the cap");

    /* Refused addresses are skipped within one call; all refused: an error naming each. */
    close(listeners[0]);
    close(listeners[1]);
    fake_now += 200000;
    set_list(&f, abc, 3, 10);
    TAP_EQ_INT(msc_connect(m, "svc.test", lport, &c1), 0, "two refused, third works");
    tap_ok(strcmp(conn_ip(c1), "127.0.0.103") == 0, "the third");
    msc_close(c1);
    close(listeners[2]);
    TAP_EQ_INT(msc_connect(m, "svc.test", lport, &c1), MS_EIO, "all refused");
    tap_ok(strstr(msc_last_error(m), "3 of 3 addresses failed") != NULL &&
               strstr(msc_last_error(m), "127.0.0.101") != NULL &&
               strstr(msc_last_error(m), "127.0.0.103") != NULL,
           "error names every address: %s", msc_last_error(m));

    /* Names: an IP literal needs no DNS; a failing first resolution is an error. */
    int before = f.calls;
    TAP_EQ_INT(msc_lookup(m, "127.0.0.9", 80, &l, &cur), 0, "IP literal");
    TAP_EQ_INT(f.calls, before, "no DNS for a literal");
    f.fail = 1;
    TAP_EQ_INT(msc_connect(m, "other.test", 80, &c1), MS_EIO, "resolution fails");
    tap_ok(strstr(msc_last_error(m), "fake failure") != NULL, "says why: %s", msc_last_error(m));
    msc_free(m);
}

/* Every address failed: ask DNS again before giving up, but not more than once a second,
 * and retry only when the answer changed. */
static void test_all_failed_reresolves(void)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(0x7F000001u + 103); /* 127.0.0.104 */
    socklen_t sl = sizeof(a);
    if (bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 16) ||
        getsockname(l, (struct sockaddr *)&a, &sl)) {
        tap_ok(false, "listener on 127.0.0.104");
        return;
    }
    uint16_t p = ntohs(a.sin_port);
    msc_opts_t o = {.connect_timeout_ms = 500};
    o.servers = (const char *const[]){"127.0.0.1:1"};
    o.n_servers = 1;
    msc_t *m = msc_new(&o, NULL, 0);
    fake_dns_t f = {0};
    msc_set_clock(m, fake_clock, NULL);
    msc_set_resolver(m, fake_resolve, &f);
    static const char *const dead[] = {"127.0.0.105"}; /* nothing listens there */
    static const char *const dead_live[] = {"127.0.0.105", "127.0.0.104"};
    set_list(&f, dead, 1, 100);
    fake_now = 5000000;
    msc_conn_t *c;
    TAP_EQ_INT(msc_connect(m, "svc.test", p, &c), MS_EIO, "only address refused");
    TAP_EQ_INT(f.calls, 1, "just resolved: no second question");
    tap_ok(strstr(msc_last_error(m), "1 of 1 address failed") != NULL, "error: %s",
           msc_last_error(m));
    fake_now += 999;
    TAP_EQ_INT(msc_connect(m, "svc.test", p, &c), MS_EIO, "still refused");
    TAP_EQ_INT(f.calls, 1, "not within a second of the last resolution");
    fake_now += 1;
    TAP_EQ_INT(msc_connect(m, "svc.test", p, &c), MS_EIO, "refused, DNS unchanged");
    TAP_EQ_INT(f.calls, 2, "asked DNS again after a second (TTL 100 s not run out)");
    tap_ok(strstr(msc_last_error(m), "also after asking DNS again (1 tried)") != NULL,
           "same answer: not retried: %s", msc_last_error(m));
    fake_now += 1000;
    set_list(&f, dead_live, 2, 100);
    int rc = msc_connect(m, "svc.test", p, &c);
    TAP_EQ_INT(rc, 0, "the new answer lists a live address");
    TAP_EQ_INT(f.calls, 3, "third resolution");
    if (rc == 0) {
        tap_ok(strcmp(conn_ip(c), "127.0.0.104") == 0, "connected to it");
        msc_close(c);
    }
    msc_free(m);
    close(l);
}

static void test_new(void)
{
    char err[256];
    msc_opts_t o = {0};
    o.servers = (const char *const[]){"not an address"};
    o.n_servers = 1;
    tap_ok(msc_new(&o, err, sizeof(err)) == NULL && strstr(err, "not an address"), "bad server: %s",
           err);
    o.n_servers = 0;
    o.resolv_conf = "/nonexistent/resolv.conf";
    tap_ok(msc_new(&o, err, sizeof(err)) == NULL, "missing resolv.conf: %s", err);
    o.resolv_conf = NULL;
    o.family = 12345;
    tap_ok(msc_new(&o, err, sizeof(err)) == NULL, "bad family");
}

int main(void)
{
    test_names();
    test_query();
    test_good();
    test_bad();
    test_resolv_conf();
    test_merge();
    test_url();
    test_http();
    test_new();
    test_sticky_ttl();
    test_all_failed_reresolves();
    return tap_done();
}
