/* test_dns.c: table-driven tests of dns_answer(), the pure answer function: a snapshot with
 * two zones (built as tests/fuzz/fuzz_query.c does), queries built by a tiny encoder here, and
 * every response parsed back strictly (a malformed response fails the case) before checking
 * rcode, flags, section counts and the detail that matters for the case. */
#include "tap.h"
#include "dns/dns.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- the zones ---- */

static const char zone_com[] = "$ORIGIN example.com.\n"
                               "$TTL 3600\n"
                               "@ SOA ns1 hostmaster 1 7200 3600 1209600 300\n"
                               "@ NS ns1\n"
                               "@ NS ns2.example.net.\n"
                               "@ MX 10 mail\n"
                               "@ A 192.0.2.1\n"
                               "@ AAAA 2001:db8::1\n"
                               "@ TXT \"v=spf1 -all\"\n"
                               "ns1 A 192.0.2.53\n"
                               "mail A 192.0.2.25\n"
                               "mail AAAA 2001:db8::25\n"
                               "www CNAME web\n"
                               "web 120 A 192.0.2.80\n"
                               "c1 CNAME c2\n"
                               "c2 CNAME c3\n"
                               "c3 A 192.0.2.3\n"
                               "dangling CNAME nothere\n"
                               "loop1 CNAME loop2\n"
                               "loop2 CNAME loop1\n"
                               "out CNAME www.example.org.\n"
                               "todeleg CNAME host.sub\n"
                               "_sip._udp SRV 10 5 5060 sip\n"
                               "sip A 192.0.2.70\n"
                               "svc HTTPS 1 web alpn=h2\n"
                               "*.wild A 192.0.2.99\n"
                               "*.wild TXT \"wild\"\n"
                               "*.wc CNAME web\n"
                               "a.b.ent A 192.0.2.5\n"
                               "sub NS ns.sub\n"
                               "sub NS ns.example.net.\n"
                               "ns.sub A 192.0.2.200\n"
                               "ns.sub AAAA 2001:db8::200\n";

/* SOA TTL (60) below MINIMUM (600): the negative TTL is the SOA TTL. */
static const char zone_net[] = "$TTL 60\n"
                               "@ SOA ns hostmaster 1 7200 3600 1209600 600\n"
                               "@ NS ns\n"
                               "ns A 192.0.2.9\n";

/* "big": 7 TXT of 83 bytes, about 700 bytes: over 512, under 1232.
 * "huge": 16 TXT of 100 bytes, about 1800 bytes: over 1232. */
static char *zone_com_full(void)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "%s", zone_com);
    for (int i = 0; i < 7; i++) {
        buf_printf(&b, "big TXT \"");
        for (int k = 0; k < 83; k++) {
            buf_printf(&b, "%c", 'a' + i);
        }
        buf_printf(&b, "\"\n");
    }
    /* A delegation whose 8 NS fit in 512 bytes but whose glue (A + AAAA each) does not. */
    for (int i = 0; i < 8; i++) {
        buf_printf(&b, "wide NS name-server-number-%d.wide\n", i);
        buf_printf(&b, "name-server-number-%d.wide A 192.0.2.%d\n", i, 100 + i);
        buf_printf(&b, "name-server-number-%d.wide AAAA 2001:db8::%d\n", i, 100 + i);
    }
    for (int i = 0; i < 16; i++) {
        buf_printf(&b, "huge TXT \"%02d", i);
        for (int k = 0; k < 98; k++) {
            buf_printf(&b, "x");
        }
        buf_printf(&b, "\"\n");
    }
    return (char *)b.data;
}

static snap_t *make_snap(const char *identity, const char *version, const char *nsid,
                         unsigned udp_max)
{
    conf_t *c = conf_new_default();
    free(c->identity);
    free(c->version);
    free(c->nsid);
    c->identity = xstrdup(identity);
    c->version = xstrdup(version);
    c->nsid = xstrdup(nsid);
    c->udp_max_payload = udp_max;
    snap_t *s = NULL;
    char err[512];
    if (snap_build(c, &s, err, sizeof(err)) != 0) {
        tap_diag("snap_build: %s", err);
        return NULL;
    }
    char *com = zone_com_full();
    zone_t *z1 = NULL, *z2 = NULL;
    if (zone_load_string("example.com", com, strlen(com), &z1, err, sizeof(err)) != 0 ||
        zone_load_string("example.net.", zone_net, strlen(zone_net), &z2, err, sizeof(err)) != 0) {
        tap_diag("zone_load_string: %s", err);
        free(com);
        return NULL;
    }
    free(com);
    if (zone_db_add(s->zones, z1) != 0 || zone_db_add(s->zones, z2) != 0) {
        return NULL;
    }
    return s;
}

/* ---- query encoder ---- */

typedef struct {
    const char *name; /* presentation form, case kept */
    uint16_t type;
    uint16_t cls; /* 0: IN */
    uint8_t f1;   /* header byte 2 (opcode, RD...) */
    uint8_t f2;   /* header byte 3 (AD, CD...) */
    bool edns;
    uint16_t udp; /* EDNS payload size (0: 4096) */
    uint8_t version;
    bool do_bit;
    bool nsid;
    bool unknown_opt;
    const char *ecs; /* EDNS Client Subnet option payload (RFC 7871), ecs_len bytes */
    uint8_t ecs_len;
} qp_t;

static size_t put_qname(uint8_t *p, const char *name)
{
    size_t o = 0;
    while (*name && strcmp(name, ".") != 0) {
        const char *dot = strchr(name, '.');
        size_t l = dot ? (size_t)(dot - name) : strlen(name);
        p[o++] = (uint8_t)l;
        memcpy(p + o, name, l);
        o += l;
        name += l + (dot ? 1 : 0);
    }
    p[o++] = 0;
    return o;
}

static size_t put_opt_rr(uint8_t *p, const qp_t *q)
{
    size_t o = 0;
    p[o++] = 0; /* root owner */
    wr_u16(p + o, RR_OPT);
    wr_u16(p + o + 2, q->udp ? q->udp : 4096);
    p[o + 4] = 0; /* extended rcode */
    p[o + 5] = q->version;
    p[o + 6] = q->do_bit ? 0x80 : 0;
    p[o + 7] = 0;
    o += 8;
    size_t rdlen_at = o;
    o += 2;
    if (q->unknown_opt) {
        wr_u16(p + o, 65001);
        wr_u16(p + o + 2, 3);
        memcpy(p + o + 4, "abc", 3);
        o += 7;
    }
    if (q->ecs) {
        wr_u16(p + o, 8);
        wr_u16(p + o + 2, q->ecs_len);
        memcpy(p + o + 4, q->ecs, q->ecs_len);
        o += 4u + q->ecs_len;
    }
    if (q->nsid) {
        wr_u16(p + o, 3);
        wr_u16(p + o + 2, 0);
        o += 4;
    }
    wr_u16(p + rdlen_at, (uint16_t)(o - rdlen_at - 2));
    return o;
}

static size_t build_query(uint8_t *p, uint16_t id, const qp_t *q)
{
    memset(p, 0, 12);
    wr_u16(p, id);
    p[2] = q->f1;
    p[3] = q->f2;
    wr_u16(p + 4, 1);
    wr_u16(p + 10, q->edns ? 1 : 0);
    size_t o = 12 + put_qname(p + 12, q->name);
    wr_u16(p + o, q->type);
    wr_u16(p + o + 2, q->cls ? q->cls : 1);
    o += 4;
    if (q->edns) {
        o += put_opt_rr(p + o, q);
    }
    return o;
}

/* ---- response parser (strict) ---- */

#define MAX_RR 80

typedef struct {
    char owner[DNS_MAX_NAME * 4];
    uint16_t type, cls;
    uint32_t ttl;
    uint16_t rdlen;
    size_t rdoff;
} rr_t;

typedef struct {
    const uint8_t *pkt;
    size_t len;
    bool ok; /* parsed completely and exactly */
    uint16_t id;
    uint8_t f1, f2;
    unsigned rcode; /* header rcode | OPT extended rcode << 4 */
    bool qr, aa, tc, rd, cd;
    unsigned opcode;
    uint16_t qd, an, ns, ar; /* header counts (ar includes the OPT) */
    char qname[DNS_MAX_NAME * 4];
    uint16_t qtype, qclass;
    rr_t rr[3][MAX_RR];
    /* OPT, taken out of the additional section */
    bool opt;
    uint16_t opt_udp;
    uint8_t opt_ext, opt_version;
    bool opt_do;
    uint16_t opt_rdlen;
    size_t opt_rdoff;
} msg_t;

/* Decompress a name into presentation form with its case. Returns the offset after the name
 * where it started, or 0 if malformed (pointer loops, pointers forward, past the end). */
static size_t read_name(const uint8_t *pkt, size_t len, size_t off, char *out)
{
    size_t after = 0, o = 0;
    int hops = 0;
    for (;;) {
        if (off >= len) {
            return 0;
        }
        uint8_t l = pkt[off];
        if ((l & 0xC0) == 0xC0) {
            if (off + 1 >= len || ++hops > 64) {
                return 0;
            }
            size_t target = ((size_t)(l & 0x3F) << 8) | pkt[off + 1];
            if (target >= off) {
                return 0; /* pointers must point backwards */
            }
            if (!after) {
                after = off + 2;
            }
            off = target;
            continue;
        }
        if (l & 0xC0) {
            return 0;
        }
        if (l == 0) {
            if (o == 0) {
                out[o++] = '.';
            }
            out[o] = 0;
            return after ? after : off + 1;
        }
        if (off + 1 + l > len || o + l + 2 > DNS_MAX_NAME * 4) {
            return 0;
        }
        memcpy(out + o, pkt + off + 1, l);
        o += l;
        out[o++] = '.';
        off += (size_t)l + 1;
    }
}

static bool parse_msg(const uint8_t *pkt, size_t len, msg_t *m)
{
    memset(m, 0, sizeof(*m));
    m->pkt = pkt;
    m->len = len;
    if (len < 12) {
        return false;
    }
    m->id = rd_u16(pkt);
    m->f1 = pkt[2];
    m->f2 = pkt[3];
    m->qr = pkt[2] & 0x80;
    m->opcode = (pkt[2] >> 3) & 0xF;
    m->aa = pkt[2] & 0x04;
    m->tc = pkt[2] & 0x02;
    m->rd = pkt[2] & 0x01;
    m->cd = pkt[3] & 0x10;
    m->rcode = pkt[3] & 0xF;
    m->qd = rd_u16(pkt + 4);
    m->an = rd_u16(pkt + 6);
    m->ns = rd_u16(pkt + 8);
    m->ar = rd_u16(pkt + 10);
    size_t off = 12;
    if (m->qd > 1) {
        return false;
    }
    if (m->qd == 1) {
        off = read_name(pkt, len, off, m->qname);
        if (!off || off + 4 > len) {
            return false;
        }
        m->qtype = rd_u16(pkt + off);
        m->qclass = rd_u16(pkt + off + 2);
        off += 4;
    }
    uint16_t counts[3] = {m->an, m->ns, m->ar};
    if (m->an > MAX_RR || m->ns > MAX_RR || m->ar > MAX_RR) {
        return false;
    }
    for (int sec = 0; sec < 3; sec++) {
        for (unsigned i = 0; i < counts[sec]; i++) {
            rr_t rr;
            off = read_name(pkt, len, off, rr.owner);
            if (!off || off + 10 > len) {
                return false;
            }
            rr.type = rd_u16(pkt + off);
            rr.cls = rd_u16(pkt + off + 2);
            rr.ttl = rd_u32(pkt + off + 4);
            rr.rdlen = rd_u16(pkt + off + 8);
            rr.rdoff = off + 10;
            off = rr.rdoff + rr.rdlen;
            if (off > len) {
                return false;
            }
            if (rr.type == RR_OPT) {
                if (sec != 2 || m->opt || strcmp(rr.owner, ".") != 0) {
                    return false;
                }
                m->opt = true;
                m->opt_udp = rr.cls;
                m->opt_ext = (uint8_t)(rr.ttl >> 24);
                m->opt_version = (uint8_t)(rr.ttl >> 16);
                m->opt_do = (rr.ttl & 0x8000) != 0;
                m->opt_rdlen = rr.rdlen;
                m->opt_rdoff = rr.rdoff;
                m->rcode |= (unsigned)m->opt_ext << 4;
                continue;
            }
            m->rr[sec][i - (sec == 2 && m->opt ? 1 : 0)] = rr;
        }
    }
    m->ok = off == len;
    return m->ok;
}

/* Records of a section other than OPT. */
static int sec_count(const msg_t *m, int sec)
{
    int n = sec == 0 ? m->an : sec == 1 ? m->ns : m->ar;
    return sec == 2 && m->opt ? n - 1 : n;
}

static const rr_t *find_rr(const msg_t *m, int sec, uint16_t type, int nth)
{
    for (int i = 0; i < sec_count(m, sec); i++) {
        if (m->rr[sec][i].type == type && nth-- == 0) {
            return &m->rr[sec][i];
        }
    }
    return NULL;
}

/* Name in RDATA at offset skip, in presentation form. */
static const char *rd_name(const msg_t *m, const rr_t *rr, size_t skip)
{
    static char buf[DNS_MAX_NAME * 4];
    if (!rr || !read_name(m->pkt, rr->rdoff + rr->rdlen, rr->rdoff + skip, buf)) {
        return "(bad)";
    }
    return buf;
}

static bool rd_is_ip4(const msg_t *m, const rr_t *rr, uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    const uint8_t want[4] = {a, b, c, d};
    return rr && rr->rdlen == 4 && memcmp(m->pkt + rr->rdoff, want, 4) == 0;
}

/* ---- running queries ---- */

enum { UDP, UDP_BIG_BUF, TCP };

static snap_t *snap_main;
static uint8_t qbuf[4096];
static size_t qlen;
static uint8_t *resp;
static size_t resp_len;

static bool ask(const snap_t *s, const qp_t *q, int transport, msg_t *m)
{
    qlen = build_query(qbuf, 0xBEEF, q);
    size_t cap = transport == UDP ? 512 : transport == UDP_BIG_BUF ? 4096 : DNS_MAX_MSG;
    resp_len = dns_answer(s, qbuf, qlen, resp, cap, transport == TCP, NULL);
    if (resp_len > cap) {
        return false;
    }
    return parse_msg(resp, resp_len, m);
}

/* ---- the table ---- */

typedef struct {
    const char *what;
    qp_t q;
    int transport;
    unsigned rcode;
    int aa, tc;         /* expected flag values */
    int an, ns, ar;     /* expected counts (ar includes the OPT) */
    const char *detail; /* what check() verifies, for the test name */
    bool (*check)(const msg_t *m);
} dcase_t;

static bool ck_apex_a(const msg_t *m)
{
    const rr_t *a = find_rr(m, 0, RR_A, 0);
    return a && rd_is_ip4(m, a, 192, 0, 2, 1) && a->ttl == 3600 && a->cls == 1 &&
           m->pkt[12 + 13 + 4] == 0xC0 && m->pkt[12 + 13 + 5] == 12;
}

static bool ck_a_www(const msg_t *m)
{
    const rr_t *cn = find_rr(m, 0, RR_CNAME, 0), *a = find_rr(m, 0, RR_A, 0);
    return cn && a && m->rr[0][0].type == RR_CNAME && strcmp(cn->owner, "www.example.com.") == 0 &&
           strcmp(rd_name(m, cn, 0), "web.example.com.") == 0 &&
           strcmp(a->owner, "web.example.com.") == 0 && rd_is_ip4(m, a, 192, 0, 2, 80) &&
           a->ttl == 120 && cn->ttl == 3600;
}

static bool ck_soa_ttl_300(const msg_t *m)
{
    const rr_t *soa = find_rr(m, 1, RR_SOA, 0);
    return soa && soa->ttl == 300 && strcmp(soa->owner, "example.com.") == 0 &&
           strcmp(rd_name(m, soa, 0), "ns1.example.com.") == 0;
}

static bool ck_soa_ttl_60(const msg_t *m)
{
    const rr_t *soa = find_rr(m, 1, RR_SOA, 0);
    return soa && soa->ttl == 60 && strcmp(soa->owner, "example.net.") == 0;
}

static bool ck_wild_owner(const msg_t *m)
{
    const rr_t *a = find_rr(m, 0, RR_A, 0);
    return a && strcmp(a->owner, "Foo.Wild.Example.COM.") == 0 && rd_is_ip4(m, a, 192, 0, 2, 99);
}

static bool ck_wild_deep(const msg_t *m)
{
    const rr_t *t = find_rr(m, 0, RR_TXT, 0);
    return t && strcmp(t->owner, "a.B.c.wild.example.com.") == 0 && t->rdlen == 5 &&
           memcmp(m->pkt + t->rdoff, "\4wild", 5) == 0;
}

static bool ck_wild_cname(const msg_t *m)
{
    const rr_t *cn = find_rr(m, 0, RR_CNAME, 0), *a = find_rr(m, 0, RR_A, 0);
    return cn && a && strcmp(cn->owner, "X.wc.example.com.") == 0 &&
           strcmp(rd_name(m, cn, 0), "web.example.com.") == 0 && rd_is_ip4(m, a, 192, 0, 2, 80);
}

static bool ck_referral(const msg_t *m)
{
    const rr_t *ns0 = find_rr(m, 1, RR_NS, 0), *ns1 = find_rr(m, 1, RR_NS, 1);
    const rr_t *ga = find_rr(m, 2, RR_A, 0), *g6 = find_rr(m, 2, RR_AAAA, 0);
    if (!ns0 || !ns1 || !ga || !g6) {
        return false;
    }
    char t0[DNS_MAX_NAME * 4];
    strcpy(t0, rd_name(m, ns0, 0));
    const char *t1 = rd_name(m, ns1, 0);
    bool targets = (strcmp(t0, "ns.sub.example.com.") == 0 && strcmp(t1, "ns.example.net.") == 0) ||
                   (strcmp(t1, "ns.sub.example.com.") == 0 && strcmp(t0, "ns.example.net.") == 0);
    return targets && strcmp(ns0->owner, "sub.example.com.") == 0 &&
           strcmp(ga->owner, "ns.sub.example.com.") == 0 && rd_is_ip4(m, ga, 192, 0, 2, 200) &&
           strcmp(g6->owner, "ns.sub.example.com.") == 0;
}

static bool ck_wide_ns(const msg_t *m)
{
    const rr_t *ns = find_rr(m, 1, RR_NS, 7);
    return ns && strcmp(ns->owner, "wide.example.com.") == 0;
}

static bool ck_wide_glue(const msg_t *m)
{
    for (int i = 0; i < 8; i++) {
        char want[64];
        snprintf(want, sizeof(want), "name-server-number-%d.wide.example.com.", i);
        bool a = false, aaaa = false;
        for (int k = 0; k < sec_count(m, 2); k++) {
            const rr_t *rr = &m->rr[2][k];
            a = a || (rr->type == RR_A && strcmp(rr->owner, want) == 0 &&
                      rd_is_ip4(m, rr, 192, 0, 2, (uint8_t)(100 + i)));
            aaaa = aaaa || (rr->type == RR_AAAA && strcmp(rr->owner, want) == 0);
        }
        if (!a || !aaaa) {
            return false;
        }
    }
    return ck_wide_ns(m);
}

static bool ck_cname_then_referral(const msg_t *m)
{
    const rr_t *cn = find_rr(m, 0, RR_CNAME, 0), *ns = find_rr(m, 1, RR_NS, 0);
    return cn && ns && strcmp(rd_name(m, cn, 0), "host.sub.example.com.") == 0 &&
           strcmp(ns->owner, "sub.example.com.") == 0;
}

static bool ck_chain(const msg_t *m)
{
    return m->rr[0][0].type == RR_CNAME && strcmp(m->rr[0][0].owner, "c1.example.com.") == 0 &&
           m->rr[0][1].type == RR_CNAME && strcmp(m->rr[0][1].owner, "c2.example.com.") == 0 &&
           m->rr[0][2].type == RR_A && strcmp(m->rr[0][2].owner, "c3.example.com.") == 0 &&
           rd_is_ip4(m, &m->rr[0][2], 192, 0, 2, 3);
}

static bool ck_loop(const msg_t *m)
{
    /* Terminates with CNAMEs only, alternating between the two names. */
    for (int i = 0; i < m->an; i++) {
        if (m->rr[0][i].type != RR_CNAME ||
            strcmp(m->rr[0][i].owner, i % 2 ? "loop2.example.com." : "loop1.example.com.") != 0) {
            return false;
        }
    }
    return m->an >= 2 && m->an <= 16;
}

static bool ck_dangling(const msg_t *m)
{
    const rr_t *cn = find_rr(m, 0, RR_CNAME, 0);
    return cn && strcmp(rd_name(m, cn, 0), "nothere.example.com.") == 0 && ck_soa_ttl_300(m);
}

static bool ck_out(const msg_t *m)
{
    const rr_t *cn = find_rr(m, 0, RR_CNAME, 0);
    return cn && strcmp(rd_name(m, cn, 0), "www.example.org.") == 0;
}

static bool ck_mx(const msg_t *m)
{
    const rr_t *mx = find_rr(m, 0, RR_MX, 0), *a = find_rr(m, 2, RR_A, 0),
               *aaaa = find_rr(m, 2, RR_AAAA, 0);
    return mx && a && aaaa && rd_u16(m->pkt + mx->rdoff) == 10 &&
           strcmp(rd_name(m, mx, 2), "mail.example.com.") == 0 &&
           strcmp(a->owner, "mail.example.com.") == 0 && rd_is_ip4(m, a, 192, 0, 2, 25);
}

static bool ck_ns_apex(const msg_t *m)
{
    const rr_t *a = find_rr(m, 2, RR_A, 0);
    return a && strcmp(a->owner, "ns1.example.com.") == 0 && rd_is_ip4(m, a, 192, 0, 2, 53) &&
           find_rr(m, 0, RR_NS, 1) != NULL;
}

static bool ck_srv(const msg_t *m)
{
    const rr_t *srv = find_rr(m, 0, RR_SRV, 0), *a = find_rr(m, 2, RR_A, 0);
    return srv && a && strcmp(a->owner, "sip.example.com.") == 0 &&
           rd_is_ip4(m, a, 192, 0, 2, 70) && strcmp(srv->owner, "_sip._udp.example.com.") == 0;
}

static bool ck_https(const msg_t *m)
{
    const rr_t *a = find_rr(m, 2, RR_A, 0);
    return find_rr(m, 0, RR_HTTPS, 0) && a && strcmp(a->owner, "web.example.com.") == 0;
}

static bool ck_any_apex(const msg_t *m)
{
    /* One RRset (RFC 8482): every answer record has the same type. */
    for (int i = 1; i < m->an; i++) {
        if (m->rr[0][i].type != m->rr[0][0].type) {
            return false;
        }
    }
    return m->an >= 1 && strcmp(m->rr[0][0].owner, "example.com.") == 0;
}

static bool ck_any_cname(const msg_t *m)
{
    return m->rr[0][0].type == RR_CNAME;
}

static bool ck_chaos_id(const msg_t *m)
{
    const rr_t *t = find_rr(m, 0, RR_TXT, 0);
    return t && t->cls == 3 && strcmp(t->owner, "ID.Server.") == 0 && t->rdlen == 14 &&
           memcmp(m->pkt + t->rdoff, "\15test-identity", 14) == 0;
}

static bool ck_chaos_version(const msg_t *m)
{
    const rr_t *t = find_rr(m, 0, RR_TXT, 0);
    return t && t->cls == 3 && t->rdlen == 15 &&
           memcmp(m->pkt + t->rdoff, "\16test-version 9", 15) == 0;
}

static bool ck_big_complete(const msg_t *m)
{
    return find_rr(m, 0, RR_TXT, 6) != NULL && find_rr(m, 0, RR_TXT, 0)->rdlen == 84;
}

static bool ck_opt_plain(const msg_t *m)
{
    return m->opt && m->opt_udp == 1232 && m->opt_version == 0 && !m->opt_do && m->opt_rdlen == 0 &&
           m->opt_ext == 0;
}

static bool ck_opt_do(const msg_t *m)
{
    return m->opt && m->opt_do && m->opt_udp == 1232;
}

static bool ck_badvers(const msg_t *m)
{
    return m->opt && m->opt_ext == 1 && (m->f2 & 0xF) == 0 && m->opt_version == 0;
}

static bool ck_nsid(const msg_t *m)
{
    static const uint8_t want[] = {0, 3, 0, 7, 't', 'e', 's', 't', '-', 'n', 's'};
    return m->opt && m->opt_rdlen == sizeof(want) &&
           memcmp(m->pkt + m->opt_rdoff, want, sizeof(want)) == 0;
}

static bool ck_no_nsid(const msg_t *m)
{
    return m->opt && m->opt_rdlen == 0;
}

/* The reply's ECS option, or NULL; *len set to its payload length. */
static const uint8_t *opt_find(const msg_t *m, uint16_t code, uint16_t *len)
{
    size_t o = m->opt_rdoff, end = m->opt_rdoff + m->opt_rdlen;
    while (m->opt && o + 4 <= end) {
        uint16_t c = rd_u16(m->pkt + o), l = rd_u16(m->pkt + o + 2);
        if (c == code && o + 4 + l <= end) {
            *len = l;
            return m->pkt + o + 4;
        }
        o += 4u + l;
    }
    return NULL;
}

static bool ck_ecs_v4_24(const msg_t *m)
{
    uint16_t l = 0;
    const uint8_t *e = opt_find(m, 8, &l);
    static const uint8_t want[] = {0, 1, 24, 0, 192, 0, 2};
    return e && l == sizeof(want) && memcmp(e, want, l) == 0;
}

static bool ck_ecs_v6_56_nsid(const msg_t *m)
{
    uint16_t l = 0, nl = 0;
    const uint8_t *e = opt_find(m, 8, &l);
    const uint8_t *n = opt_find(m, 3, &nl);
    static const uint8_t want[] = {0, 2, 56, 0, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0};
    return e && l == sizeof(want) && memcmp(e, want, l) == 0 && n && nl == 7 &&
           memcmp(n, "test-ns", 7) == 0;
}

static bool ck_ecs_zero(const msg_t *m)
{
    uint16_t l = 0;
    const uint8_t *e = opt_find(m, 8, &l);
    static const uint8_t want[] = {0, 1, 0, 0};
    return e && l == sizeof(want) && memcmp(e, want, l) == 0;
}

static bool ck_notimp_opcode(const msg_t *m)
{
    return m->opcode == 2;
}

static bool ck_flags_copied(const msg_t *m)
{
    /* RD and CD copied, AD (0x20) and RA cleared, ID echoed. */
    return m->id == 0xBEEF && m->rd && m->cd && !(m->f2 & 0x20) && !(m->f2 & 0x80);
}

static bool ck_fits_512(const msg_t *m)
{
    return m->len <= 512;
}

#define EDNS .edns = true

/* One case is two lines: the query and transport, then what the answer must be: rcode, AA,
 * TC, answer/authority/additional counts (additional includes the OPT; -1: any), and the
 * detail that check() verifies. */
/* clang-format off */
static const dcase_t cases[] = {
    /* positive answers */
    {"A at the apex", {"example.com", RR_A}, UDP,
     0, 1, 0, 1, 0, 0, "192.0.2.1, owner a pointer to the question", ck_apex_a},
    {"CNAME followed in the zone", {"www.example.com", RR_A}, UDP,
     0, 1, 0, 2, 0, 0, "CNAME then A, own TTLs", ck_a_www},
    {"CNAME chain", {"c1.example.com", RR_A}, UDP,
     0, 1, 0, 3, 0, 0, "c1 -> c2 -> c3 A", ck_chain},
    {"CNAME loop terminates", {"loop1.example.com", RR_A}, UDP,
     0, 1, 0, -1, 0, 0, "CNAMEs only, bounded", ck_loop},
    {"CNAME to a missing name", {"dangling.example.com", RR_A}, UDP,
     RCODE_NXDOMAIN, 1, 0, 1, 1, 0, "NXDOMAIN after the CNAME (RFC 6604)", ck_dangling},
    {"CNAME out of the zone", {"out.example.com", RR_A}, UDP,
     0, 1, 0, 1, 0, 0, "only the CNAME", ck_out},
    {"CNAME into a delegation", {"todeleg.example.com", RR_A}, UDP,
     0, 1, 0, 1, 2, 2, "CNAME and the referral", ck_cname_then_referral},
    {"CNAME asked for", {"www.example.com", RR_CNAME}, UDP,
     0, 1, 0, 1, 0, 0, "not followed", ck_any_cname},
    {"CNAME then NODATA", {"www.example.com", RR_AAAA}, UDP,
     0, 1, 0, 1, 1, 0, "CNAME and SOA", ck_soa_ttl_300},
    {"RRSIG at a CNAME", {"www.example.com", RR_RRSIG}, UDP,
     0, 1, 0, 0, 1, 0, "not followed (RFC 4035 3.1.4): NODATA", ck_soa_ttl_300},
    {"NSEC at a CNAME", {"www.example.com", RR_NSEC}, UDP,
     0, 1, 0, 0, 1, 0, "not followed: NODATA", ck_soa_ttl_300},
    {"MX with additional", {"example.com", RR_MX}, UDP,
     0, 1, 0, 1, 0, 2, "mail A and AAAA in additional", ck_mx},
    {"NS at the apex", {"example.com", RR_NS}, UDP,
     0, 1, 0, 2, 0, 1, "in-zone NS address only", ck_ns_apex},
    {"SRV with additional", {"_sip._udp.example.com", RR_SRV}, UDP,
     0, 1, 0, 1, 0, 1, "sip A in additional", ck_srv},
    {"HTTPS with additional", {"svc.example.com", RR_HTTPS}, UDP,
     0, 1, 0, 1, 0, 1, "target address in additional", ck_https},
    {"ANY at the apex", {"example.com", RR_ANY}, UDP,
     0, 1, 0, 1, 0, 0, "exactly one RRset (RFC 8482)", ck_any_apex},
    {"ANY at a CNAME", {"www.example.com", RR_ANY}, UDP,
     0, 1, 0, 1, 0, 0, "the CNAME only", ck_any_cname},
    {"ANY at an empty non-terminal", {"b.ent.example.com", RR_ANY}, UDP,
     0, 1, 0, 0, 1, 0, "NODATA", ck_soa_ttl_300},
    /* wildcards */
    {"wildcard A, case kept", {"Foo.Wild.Example.COM", RR_A}, UDP,
     0, 1, 0, 1, 0, 0, "owner is the query name as sent", ck_wild_owner},
    {"wildcard several labels down", {"a.B.c.wild.example.com", RR_TXT}, UDP,
     0, 1, 0, 1, 0, 0, "owner is the query name", ck_wild_deep},
    {"wildcard NODATA", {"foo.wild.example.com", RR_MX}, UDP,
     0, 1, 0, 0, 1, 0, "SOA", ck_soa_ttl_300},
    {"wildcard CNAME", {"X.wc.example.com", RR_A}, UDP,
     0, 1, 0, 2, 0, 0, "synthesised CNAME followed", ck_wild_cname},
    {"wildcard parent itself (an ENT)", {"wild.example.com", RR_A}, UDP,
     0, 1, 0, 0, 1, 0, "NODATA, not the wildcard", ck_soa_ttl_300},
    {"the wildcard name itself", {"*.wild.example.com", RR_A}, UDP,
     0, 1, 0, 1, 0, 0, "its data", NULL},
    /* negative answers */
    {"NXDOMAIN", {"nope.example.com", RR_A}, UDP,
     RCODE_NXDOMAIN, 1, 0, 0, 1, 0, "SOA TTL = MINIMUM 300 < SOA TTL 3600", ck_soa_ttl_300},
    {"NXDOMAIN, SOA TTL below MINIMUM", {"nope.example.net", RR_A}, UDP,
     RCODE_NXDOMAIN, 1, 0, 0, 1, 0, "SOA TTL = 60 (SOA TTL < MINIMUM 600)", ck_soa_ttl_60},
    {"NXDOMAIN below an existing name", {"x.a.b.ent.example.com", RR_A}, UDP,
     RCODE_NXDOMAIN, 1, 0, 0, 1, 0, "SOA", ck_soa_ttl_300},
    {"NODATA", {"web.example.com", RR_AAAA}, UDP,
     0, 1, 0, 0, 1, 0, "SOA with negative TTL", ck_soa_ttl_300},
    {"NODATA at an empty non-terminal", {"ent.example.com", RR_A}, UDP,
     0, 1, 0, 0, 1, 0, "not NXDOMAIN", ck_soa_ttl_300},
    {"NODATA for a type with no data anywhere", {"example.com", 65000}, UDP,
     0, 1, 0, 0, 1, 0, "SOA", ck_soa_ttl_300},
    /* delegations */
    {"referral below a cut", {"host.sub.example.com", RR_A}, UDP,
     0, 0, 0, 0, 2, 2, "AA clear, NS in authority, glue A+AAAA", ck_referral},
    {"referral at the cut", {"sub.example.com", RR_NS}, UDP,
     0, 0, 0, 0, 2, 2, "NS in authority, not answer", ck_referral},
    {"referral for glue", {"ns.sub.example.com", RR_A}, UDP,
     0, 0, 0, 0, 2, 2, "glue is not answered authoritatively", ck_referral},
    {"referral whose glue does not fit in 512", {"x.wide.example.com", RR_A}, UDP,
     0, 0, 1, 0, 8, -1, "TC (RFC 9471), NS kept", ck_wide_ns},
    {"referral with all glue over EDNS", {"x.wide.example.com", RR_A, EDNS}, UDP_BIG_BUF,
     0, 0, 0, 0, 8, 17, "8 A and 8 AAAA glue", ck_wide_glue},
    {"referral with all glue over TCP", {"x.wide.example.com", RR_A}, TCP,
     0, 0, 0, 0, 8, 16, "8 A and 8 AAAA glue", ck_wide_glue},
    {"DS at the cut", {"sub.example.com", RR_DS}, UDP,
     0, 1, 0, 0, 1, 0, "parent side: NODATA (RFC 4035)", ck_soa_ttl_300},
    /* refused */
    {"name outside our zones", {"example.org", RR_A}, UDP,
     RCODE_REFUSED, 0, 0, 0, 0, 0, "", NULL},
    {"suffix that is not a subdomain", {"badexample.com", RR_A}, UDP,
     RCODE_REFUSED, 0, 0, 0, 0, 0, "", NULL},
    {"root", {".", RR_NS}, UDP,
     RCODE_REFUSED, 0, 0, 0, 0, 0, "", NULL},
    {"AXFR refused", {"example.com", RR_AXFR}, TCP,
     RCODE_REFUSED, 0, 0, 0, 0, 0, "", NULL},
    {"IXFR refused", {"example.com", RR_IXFR}, TCP,
     RCODE_REFUSED, 0, 0, 0, 0, 0, "", NULL},
    {"class NONE", {"example.com", RR_A, 254}, UDP,
     RCODE_REFUSED, 0, 0, 0, 0, 0, "", NULL},
    /* header */
    {"RD and CD copied, AD cleared", {"example.com", RR_A, .f1 = 0x01, .f2 = 0x30}, UDP,
     0, 1, 0, 1, 0, 0, "ID echoed too", ck_flags_copied},
    {"opcode STATUS", {"example.com", RR_A, .f1 = 2 << 3}, UDP,
     RCODE_NOTIMP, 0, 0, 0, 0, 0, "opcode echoed", ck_notimp_opcode},
    {"opcode NOTIFY with EDNS", {"example.com", RR_SOA, .f1 = 4 << 3, EDNS}, UDP,
     RCODE_NOTIMP, 0, 0, 0, 0, 1, "OPT in the reply", ck_opt_plain},
    /* truncation */
    {"big RRset over UDP 512", {"big.example.com", RR_TXT}, UDP,
     0, 1, 1, 0, 0, 0, "TC, no partial RRset, <= 512 bytes", ck_fits_512},
    {"big RRset over UDP with a big buffer, no EDNS", {"big.example.com", RR_TXT}, UDP_BIG_BUF,
     0, 1, 1, 0, 0, 0, "still limited to 512 without EDNS", ck_fits_512},
    {"big RRset over TCP", {"big.example.com", RR_TXT}, TCP,
     0, 1, 0, 7, 0, 0, "all 7 TXT", ck_big_complete},
    {"big RRset over UDP with EDNS 1232", {"big.example.com", RR_TXT, EDNS}, UDP_BIG_BUF,
     0, 1, 0, 7, 0, 1, "fits", ck_big_complete},
    {"big RRset, EDNS payload 100", {"big.example.com", RR_TXT, EDNS, .udp = 100}, UDP_BIG_BUF,
     0, 1, 1, 0, 0, 1, "payload under 512 counts as 512", ck_opt_plain},
    {"huge RRset, EDNS 4096 > our 1232", {"huge.example.com", RR_TXT, EDNS}, UDP_BIG_BUF,
     0, 1, 1, 0, 0, 1, "our udp-max-payload caps it", ck_opt_plain},
    {"huge RRset over TCP", {"huge.example.com", RR_TXT}, TCP,
     0, 1, 0, 16, 0, 0, "all 16", NULL},
    /* EDNS */
    {"EDNS query", {"example.com", RR_A, EDNS}, UDP,
     0, 1, 0, 1, 0, 1, "OPT advertises 1232, version 0, no DO", ck_opt_plain},
    {"EDNS DO bit", {"example.com", RR_A, EDNS, .do_bit = true}, UDP,
     0, 1, 0, 1, 0, 1, "DO echoed", ck_opt_do},
    {"EDNS version 1", {"example.com", RR_A, EDNS, .version = 1}, UDP,
     RCODE_BADVERS, 0, 0, 0, 0, 1, "BADVERS: ext rcode 1 in the OPT TTL", ck_badvers},
    {"EDNS NSID requested", {"example.com", RR_A, EDNS, .nsid = true}, UDP,
     0, 1, 0, 1, 0, 1, "NSID option with our id", ck_nsid},
    {"EDNS NSID with an unknown option",
     {"example.com", RR_A, EDNS, .nsid = true, .unknown_opt = true}, UDP,
     0, 1, 0, 1, 0, 1,
     "unknown ignored, NSID answered", ck_nsid},
    {"EDNS unknown option only", {"example.com", RR_A, EDNS, .unknown_opt = true}, UDP,
     0, 1, 0, 1, 0, 1, "ignored", ck_no_nsid},
    {"EDNS NXDOMAIN", {"nope.example.com", RR_A, EDNS}, UDP,
     RCODE_NXDOMAIN, 1, 0, 0, 1, 1, "OPT after the SOA", ck_soa_ttl_300},
    {"EDNS REFUSED", {"example.org", RR_A, EDNS}, UDP,
     RCODE_REFUSED, 0, 0, 0, 0, 1, "OPT even when refused", ck_opt_plain},
    /* EDNS Client Subnet (RFC 7871): echoed with scope 0 (no client-dependent data here);
     * malformed options are FORMERR (7.1.1), with an OPT of our own as Knot answers */
    {"ECS IPv4 /24", {"example.com", RR_A, EDNS, .ecs = "\0\1\x18\0\xc0\0\2", .ecs_len = 7}, UDP,
     0, 1, 0, 1, 0, 1, "option echoed, scope 0", ck_ecs_v4_24},
    {"ECS IPv6 /56 and NSID", {"www.example.com", RR_AAAA, EDNS, .nsid = true,
     .ecs = "\0\2\x38\0\x20\x01\x0d\xb8\0\0\0", .ecs_len = 11}, UDP,
     0, 1, 0, 1, 1, 1, "both options in the reply", ck_ecs_v6_56_nsid},
    {"ECS /0", {"example.com", RR_A, EDNS, .ecs = "\0\1\0\0", .ecs_len = 4}, UDP,
     0, 1, 0, 1, 0, 1, "no address bytes", ck_ecs_zero},
    {"ECS address longer than the prefix", {"example.com", RR_A, EDNS,
     .ecs = "\0\1\x18\0\xc0\0\2\1", .ecs_len = 8}, UDP,
     RCODE_FORMERR, 0, 0, 0, 0, 1, "OPT kept (RFC 6891 7, as Knot)", NULL},
    {"ECS bits set past the prefix", {"example.com", RR_A, EDNS,
     .ecs = "\0\1\x17\0\xc0\0\3", .ecs_len = 7}, UDP,
     RCODE_FORMERR, 0, 0, 0, 0, 1, "OPT kept (RFC 6891 7, as Knot)", NULL},
    {"ECS scope set in a query", {"example.com", RR_A, EDNS,
     .ecs = "\0\1\x18\x18\xc0\0\2", .ecs_len = 7}, UDP,
     RCODE_FORMERR, 0, 0, 0, 0, 1, "OPT kept (RFC 6891 7, as Knot)", NULL},
    {"ECS unknown family", {"example.com", RR_A, EDNS, .ecs = "\0\3\x08\0\1", .ecs_len = 5}, UDP,
     RCODE_FORMERR, 0, 0, 0, 0, 1, "OPT kept (RFC 6891 7, as Knot)", NULL},
    {"ECS IPv4 prefix 33", {"example.com", RR_A, EDNS,
     .ecs = "\0\1\x21\0\1\2\3\4\0", .ecs_len = 9}, UDP,
     RCODE_FORMERR, 0, 0, 0, 0, 1, "OPT kept (RFC 6891 7, as Knot)", NULL},
    {"ECS too short", {"example.com", RR_A, EDNS, .ecs = "\0\1\0", .ecs_len = 3}, UDP,
     RCODE_FORMERR, 0, 0, 0, 0, 1, "OPT kept (RFC 6891 7, as Knot)", NULL},
    /* CHAOS */
    {"CHAOS id.server", {"ID.Server", RR_TXT, 3}, UDP,
     0, 1, 0, 1, 0, 0, "configured identity, class CH", ck_chaos_id},
    {"CHAOS hostname.bind", {"hostname.bind", RR_TXT, 3}, UDP,
     0, 1, 0, 1, 0, 0, "identity", NULL},
    {"CHAOS version.bind", {"version.bind", RR_TXT, 3}, UDP,
     0, 1, 0, 1, 0, 0, "configured version", ck_chaos_version},
    {"CHAOS version.server", {"version.server", RR_TXT, 3}, UDP,
     0, 1, 0, 1, 0, 0, "version", ck_chaos_version},
    {"CHAOS ANY version.bind", {"version.bind", RR_ANY, 3}, UDP,
     0, 1, 0, 1, 0, 0, "TXT", ck_chaos_version},
    {"CHAOS A id.server", {"id.server", RR_A, 3}, UDP,
     RCODE_REFUSED, 0, 0, 0, 0, 0, "", NULL},
    {"CHAOS unknown name", {"authors.bind", RR_TXT, 3}, UDP,
     RCODE_REFUSED, 0, 0, 0, 0, 0, "", NULL},
    {"CHAOS for a zone name", {"example.com", RR_TXT, 3}, UDP,
     RCODE_REFUSED, 0, 0, 0, 0, 0, "", NULL},
};
/* clang-format on */

static void test_table(void)
{
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        const dcase_t *c = &cases[i];
        msg_t m;
        bool ok = ask(snap_main, &c->q, c->transport, &m);
        if (!ok) {
            tap_ok(false, "%s: well-formed response (got %zu bytes)", c->what, resp_len);
            continue;
        }
        size_t qsec = 12 + put_qname(qbuf + 12, c->q.name) + 4; /* end of the question */
        bool hdr = m.qr && m.id == 0xBEEF && m.qd == 1 && resp_len >= qsec &&
                   memcmp(resp + 12, qbuf + 12, qsec - 12) == 0;
        bool counts = (c->an < 0 || m.an == c->an) && m.ns == c->ns && (c->ar < 0 || m.ar == c->ar);
        bool flags = m.aa == (c->aa != 0) && m.tc == (c->tc != 0);
        bool detail = !c->check || c->check(&m);
        bool all = hdr && m.rcode == c->rcode && counts && flags && detail;
        tap_ok(all, "%s: rcode %u aa %d tc %d an %d ns %d ar %d%s%s", c->what, c->rcode, c->aa,
               c->tc, c->an, c->ns, c->ar, c->check ? "; " : "", c->check ? c->detail : "");
        if (!all) {
            tap_diag("  got: rcode %u aa %d tc %d an %u ns %u ar %u; question echoed %d; "
                     "detail %s",
                     m.rcode, m.aa, m.tc, m.an, m.ns, m.ar, hdr, detail ? "ok" : "FAILED");
            for (int s = 0; s < 3; s++) {
                for (int k = 0; k < sec_count(&m, s) && k < 8; k++) {
                    tap_diag("  sec %d: %s type %u class %u ttl %u rdlen %u", s, m.rr[s][k].owner,
                             m.rr[s][k].type, m.rr[s][k].cls, m.rr[s][k].ttl, m.rr[s][k].rdlen);
                }
            }
        }
    }
}

/* ---- hand-made packets ---- */

static size_t raw_answer(const uint8_t *p, size_t n, bool tcp, msg_t *m, dns_stats_t *st)
{
    /* Exactly sized copy, so ASan sees any read past the query. */
    uint8_t *q = xmalloc(n ? n : 1);
    memcpy(q, p, n);
    resp_len = dns_answer(snap_main, q, n, resp, tcp ? DNS_MAX_MSG : 512, tcp, st);
    free(q);
    if (resp_len) {
        parse_msg(resp, resp_len, m);
    } else {
        memset(m, 0, sizeof(*m));
    }
    return resp_len;
}

static void test_raw(void)
{
    msg_t m;
    uint8_t p[600];
    qp_t www = {"www.example.com", RR_A};
    size_t n = build_query(p, 0x1234, &www);

    /* Well-formed base query first, so the failures below are due to the change made. */
    tap_ok(raw_answer(p, n, false, &m, NULL) > 0 && m.ok && m.rcode == 0 && m.an == 2,
           "raw: base query answered");

    p[2] |= 0x80;
    TAP_EQ_INT(raw_answer(p, n, false, &m, NULL), 0, "QR=1: dropped (returns 0)");
    p[2] &= 0x7F;
    for (size_t len = 0; len < 12; len++) {
        if (raw_answer(p, len, false, &m, NULL) != 0) {
            tap_ok(false, "short packet of %zu bytes dropped", len);
            break;
        }
        if (len == 11) {
            tap_ok(true, "packets of 0..11 bytes dropped (returns 0)");
        }
    }

    wr_u16(p + 4, 0);
    tap_ok(raw_answer(p, n, false, &m, NULL) > 0 && m.ok && m.rcode == RCODE_FORMERR && m.qd == 0 &&
               m.an == 0 && m.id == 0x1234 && m.qr,
           "qdcount 0: FORMERR, ID echoed, QR set");
    wr_u16(p + 4, 2);
    tap_ok(raw_answer(p, n, false, &m, NULL) > 0 && m.ok && m.rcode == RCODE_FORMERR && m.an == 0,
           "qdcount 2: FORMERR");
    wr_u16(p + 4, 1);

    /* Header only, qdcount 1: no question. */
    tap_ok(raw_answer(p, 12, false, &m, NULL) > 0 && m.rcode == RCODE_FORMERR,
           "question missing: FORMERR");
    /* Question cut in the name, and in QTYPE/QCLASS. */
    tap_ok(raw_answer(p, 16, false, &m, NULL) > 0 && m.rcode == RCODE_FORMERR,
           "question cut inside the name: FORMERR");
    tap_ok(raw_answer(p, n - 1, false, &m, NULL) > 0 && m.rcode == RCODE_FORMERR,
           "question cut inside QCLASS: FORMERR");
    /* Trailing garbage after the question. */
    p[n] = 0xAB;
    tap_ok(raw_answer(p, n + 1, false, &m, NULL) > 0 && m.rcode == RCODE_FORMERR,
           "a byte after the last record: FORMERR");

    /* Compression pointer in the question: "www" + pointer to offset 12. */
    uint8_t c[40] = {0x12, 0x34, 0,   0,   0,   1,    0,  0, 0, 0, 0,
                     0,    3,    'w', 'w', 'w', 0xC0, 12, 0, 1, 0, 1};
    tap_ok(raw_answer(c, 22, false, &m, NULL) > 0 && m.rcode == RCODE_FORMERR && m.an == 0,
           "compression pointer in the question: FORMERR");
    c[16] = 0x40; /* reserved label type */
    tap_ok(raw_answer(c, 22, false, &m, NULL) > 0 && m.rcode == RCODE_FORMERR,
           "label type 0x40 in the question: FORMERR");

    /* A name longer than 255 bytes: 5 labels of 63 bytes. */
    uint8_t l[400];
    memset(l, 0, sizeof(l));
    wr_u16(l, 7);
    wr_u16(l + 4, 1);
    size_t o = 12;
    for (int i = 0; i < 5; i++) {
        l[o++] = 63;
        memset(l + o, 'a', 63);
        o += 63;
    }
    l[o++] = 0;
    wr_u16(l + o, RR_A);
    wr_u16(l + o + 2, 1);
    o += 4;
    tap_ok(raw_answer(l, o, false, &m, NULL) > 0 && m.rcode == RCODE_FORMERR,
           "question name over 255 bytes: FORMERR");

    /* EDNS problems: build an EDNS query and damage it. */
    qp_t e = {"example.com", RR_A, EDNS};
    n = build_query(p, 0x4321, &e);
    size_t opt = n - 11; /* the OPT RR: 11 bytes, no options */
    tap_ok(raw_answer(p, n, false, &m, NULL) > 0 && m.ok && m.rcode == 0 && m.opt,
           "raw: EDNS base query answered");
    memcpy(p + n, p + opt, 11);
    wr_u16(p + 10, 2);
    tap_ok(raw_answer(p, n + 11, false, &m, NULL) > 0 && m.ok && m.rcode == RCODE_FORMERR && !m.opt,
           "two OPT RRs: FORMERR without OPT");
    wr_u16(p + 10, 0);
    wr_u16(p + 6, 1);
    tap_ok(raw_answer(p, n, false, &m, NULL) > 0 && m.ok && m.rcode == RCODE_FORMERR,
           "OPT in the answer section: FORMERR");
    wr_u16(p + 6, 0);
    wr_u16(p + 10, 1);
    /* OPT owned by "a." instead of the root. */
    uint8_t p2[600];
    memcpy(p2, p, opt);
    p2[opt] = 1;
    p2[opt + 1] = 'a';
    p2[opt + 2] = 0;
    memcpy(p2 + opt + 3, p + opt + 1, 10);
    tap_ok(raw_answer(p2, n + 2, false, &m, NULL) > 0 && m.ok && m.rcode == RCODE_FORMERR,
           "OPT not owned by the root: FORMERR");
    /* An option whose length runs past the RDATA. */
    memcpy(p2, p, n);
    wr_u16(p2 + opt + 9, 4);
    wr_u16(p2 + n, 3);
    wr_u16(p2 + n + 2, 1);
    tap_ok(raw_answer(p2, n + 4, false, &m, NULL) > 0 && m.ok && m.rcode == RCODE_FORMERR,
           "EDNS option longer than the OPT RDATA: FORMERR");
    /* OPT RDLEN past the end of the packet. */
    memcpy(p2, p, n);
    wr_u16(p2 + opt + 9, 10);
    tap_ok(raw_answer(p2, n, false, &m, NULL) > 0 && m.ok && m.rcode == RCODE_FORMERR,
           "OPT RDLEN past the end: FORMERR");
    /* A record in the authority section is skipped, even with a compressed owner. */
    memcpy(p2, p, opt);
    static const uint8_t auth_rr[] = {0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 0, 0, 2, 1, 'x'};
    memcpy(p2 + opt, auth_rr, sizeof(auth_rr));
    memcpy(p2 + opt + sizeof(auth_rr), p + opt, 11);
    wr_u16(p2 + 8, 1);
    tap_ok(raw_answer(p2, n + sizeof(auth_rr), false, &m, NULL) > 0 && m.ok && m.rcode == 0 &&
               m.an == 1 && m.opt,
           "a record in the authority section is skipped, OPT after it read");

    /* RDATA of known types must be well formed (FORMERR otherwise, as Knot); unknown types
     * are opaque; empty RDATA is "no data" only outside class IN (update semantics). Each is
     * one record in the authority section of a plain query for www.example.com. */
    static const struct {
        const char *what;
        uint8_t rr[24];
        size_t n;
        bool ok;
    } rds[] = {
        {"A with 4 bytes", {0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4}, 16, true},
        {"A with 3 bytes", {0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 3, 1, 2, 3}, 15, false},
        {"empty A in class IN", {0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0}, 12, false},
        {"empty A in class NONE", {0xC0, 12, 0, 1, 0, 254, 0, 0, 0, 0, 0, 0}, 12, true},
        {"NS pointing back at the qname",
         {0xC0, 12, 0, 2, 0, 1, 0, 0, 0, 0, 0, 2, 0xC0, 12},
         14,
         true},
        {"NS with a forward pointer",
         {0xC0, 12, 0, 2, 0, 1, 0, 0, 0, 0, 0, 2, 0xC0, 0x30},
         14,
         false},
        {"NS name running past RDLEN", {0xC0, 12, 0, 2, 0, 1, 0, 0, 0, 0, 0, 2, 3, 'a'}, 14, false},
        {"MX without its name", {0xC0, 12, 0, 15, 0, 1, 0, 0, 0, 0, 0, 2, 0, 10}, 14, false},
        {"unknown type, any bytes",
         {0xC0, 12, 0xFF, 0x00, 0, 1, 0, 0, 0, 0, 0, 3, 0xC0, 0xFF, 7},
         15,
         true},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(rds); i++) {
        n = build_query(p, 0x5151, &www);
        memcpy(p + n, rds[i].rr, rds[i].n);
        wr_u16(p + 8, 1);
        size_t rl = raw_answer(p, n + rds[i].n, false, &m, NULL);
        tap_ok(rl > 0 && m.ok && m.rcode == (rds[i].ok ? RCODE_NOERROR : RCODE_FORMERR),
               "record in the query, %s: %s", rds[i].what, rds[i].ok ? "answered" : "FORMERR");
    }

    /* Counters. */
    dns_stats_t st;
    memset(&st, 0, sizeof(st));
    n = build_query(p, 1, &www);
    (void)raw_answer(p, n, false, &m, &st);
    qp_t nx = {"nope.example.com", RR_A};
    n = build_query(p, 2, &nx);
    (void)raw_answer(p, n, false, &m, &st);
    qp_t big = {"big.example.com", RR_TXT};
    n = build_query(p, 3, &big);
    (void)raw_answer(p, n, false, &m, &st);
    p[2] |= 0x80;
    (void)raw_answer(p, n, false, &m, &st);
    tap_ok(st.queries == 3 && st.rcode[RCODE_NOERROR] == 2 && st.rcode[RCODE_NXDOMAIN] == 1 &&
               st.truncated == 1 && st.dropped == 1,
           "stats: queries %llu noerror %llu nxdomain %llu truncated %llu dropped %llu",
           (unsigned long long)st.queries, (unsigned long long)st.rcode[0],
           (unsigned long long)st.rcode[3], (unsigned long long)st.truncated,
           (unsigned long long)st.dropped);
}

/* Name compression: the answer's owner points at the question; an NS target in the zone
 * points into the owner. */
static void test_compression(void)
{
    msg_t m;
    qp_t q = {"example.com", RR_NS};
    if (!ask(snap_main, &q, UDP, &m)) {
        tap_ok(false, "compression: response parses");
        return;
    }
    const uint8_t *ans = resp + 12 + 13 + 4;
    tap_ok(ans[0] == 0xC0 && ans[1] == 12, "answer owner is a pointer to the question");
    const rr_t *ns1 = NULL;
    for (int i = 0; i < m.an; i++) {
        if (strcmp(rd_name(&m, &m.rr[0][i], 0), "ns1.example.com.") == 0) {
            ns1 = &m.rr[0][i];
        }
    }
    tap_ok(ns1 && ns1->rdlen == 6 && resp[ns1->rdoff] == 3 && resp[ns1->rdoff + 4] == 0xC0,
           "in-zone NS target compressed to label + pointer (rdlen %u)", ns1 ? ns1->rdlen : 0);
    tap_ok(resp_len < 120, "NS answer with additional is compact (%zu bytes)", resp_len);
}

/* A second snapshot: identity, version and NSID hidden, udp-max-payload 1400. */
static void test_other_config(void)
{
    snap_t *s = make_snap("", "", "", 1400);
    if (!s) {
        tap_ok(false, "second snapshot");
        return;
    }
    msg_t m;
    qp_t id = {"id.server", RR_TXT, 3};
    tap_ok(ask(s, &id, UDP, &m) && m.rcode == RCODE_REFUSED && m.an == 0,
           "hidden identity: id.server REFUSED");
    qp_t ver = {"version.bind", RR_TXT, 3};
    tap_ok(ask(s, &ver, UDP, &m) && m.rcode == RCODE_REFUSED && m.an == 0,
           "hidden version: version.bind REFUSED");
    qp_t ns = {"example.com", RR_A, EDNS, .nsid = true};
    tap_ok(ask(s, &ns, UDP, &m) && m.rcode == 0 && m.opt && m.opt_rdlen == 0,
           "NSID off: no option even when asked");
    tap_ok(m.opt_udp == 1400, "OPT advertises the configured udp-max-payload (%u)", m.opt_udp);
    snap_free(s);

    /* Hex NSID. */
    s = make_snap("h", "v", "0xC0FFEE", 1232);
    if (s) {
        static const uint8_t want[] = {0, 3, 0, 3, 0xC0, 0xFF, 0xEE};
        tap_ok(ask(s, &ns, UDP, &m) && m.opt && m.opt_rdlen == sizeof(want) &&
                   memcmp(resp + m.opt_rdoff, want, sizeof(want)) == 0,
               "hex NSID sent as bytes");
        snap_free(s);
    } else {
        tap_ok(false, "snapshot with a hex NSID");
    }
}

/* Names at the 255-byte limit: "ab." + 117 x "a." + "wild.example.com." is 255 bytes in wire
 * form; the wildcard answers it with the full name as owner. One byte more is FORMERR. */
static void test_long_names(void)
{
    char name[600] = "ab.";
    for (int i = 0; i < 117; i++) {
        strcat(name, "a.");
    }
    strcat(name, "wild.example.com");
    uint8_t w[600];
    TAP_EQ_INT(put_qname(w, name), 255, "test name is 255 bytes in wire form");
    msg_t m;
    qp_t q = {name, RR_A, EDNS};
    bool ok = ask(snap_main, &q, UDP, &m);
    const rr_t *a = ok ? find_rr(&m, 0, RR_A, 0) : NULL;
    char want[sizeof(name) + 2];
    snprintf(want, sizeof(want), "%s.", name);
    tap_ok(ok && m.rcode == 0 && m.an == 1 && a && strcmp(a->owner, want) == 0,
           "255-byte name: wildcard answer with the full name as owner");
    qp_t nx = {name + 3, RR_A};
    char nxname[sizeof(name) + 4];
    snprintf(nxname, sizeof(nxname), "x.%s", name + 3);
    nxname[strlen(nxname) - strlen("wild.example.com")] = 0;
    strcat(nxname, "nope.example.com");
    nx.name = nxname;
    ok = ask(snap_main, &nx, UDP, &m);
    tap_ok(ok && m.rcode == RCODE_NXDOMAIN && m.ns == 1, "long name: NXDOMAIN with SOA");
    char longer[sizeof(name) + 2];
    snprintf(longer, sizeof(longer), "b%s", name);
    qp_t tl = {longer, RR_A};
    ok = ask(snap_main, &tl, UDP, &m);
    tap_ok(resp_len > 0 && m.rcode == RCODE_FORMERR, "256-byte name: FORMERR");
}

/* Properties over many mutated queries (fixed seed, so a failure reproduces): every reply is
 * a well-formed message (strict parse, pointers backwards, counts exact), fits the buffer,
 * has QR set and the query's ID and opcode, echoes the question byte for byte when it has
 * one, and only queries with QR=1 or under 12 bytes go unanswered. libFuzzer checks for
 * crashes; this checks the replies. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static const char *check_reply(const uint8_t *q, size_t n, size_t cap, bool tcp)
{
    resp_len = dns_answer(snap_main, q, n, resp, cap, tcp, NULL);
    if (n < 12 || (q[2] & 0x80)) {
        return resp_len == 0 ? NULL : "answered a response or a short packet";
    }
    if (resp_len == 0) {
        return "dropped a query";
    }
    if (resp_len > cap) {
        return "reply larger than the buffer";
    }
    msg_t m;
    if (!parse_msg(resp, resp_len, &m)) {
        return "malformed reply";
    }
    if (!m.qr || m.id != rd_u16(q) || m.opcode != ((q[2] >> 3) & 0xF)) {
        return "header: QR, ID or opcode wrong";
    }
    if (m.qd == 1) {
        size_t qe = 12;
        while (qe < n && q[qe] != 0 && qe < 12 + 255) {
            qe += (size_t)q[qe] + 1;
        }
        qe += 5;
        if (qe > n || resp_len < qe || memcmp(resp + 12, q + 12, qe - 12) != 0) {
            return "question not echoed byte for byte";
        }
    }
    if (!tcp && resp_len > 512 && !m.opt) {
        return "UDP reply over 512 bytes without EDNS";
    }
    if (m.qd == 1 && m.an > 0) {
        /* The first answer is for the question's name, in the question's class (IN for
         * class ANY), and every record of every section has class IN or CH. */
        if (strcasecmp(m.rr[0][0].owner, m.qname) != 0) {
            return "first answer owner is not the question name";
        }
        if (m.rr[0][0].cls != (m.qclass == 255 ? 1 : m.qclass)) {
            return "answer class differs from the question's";
        }
    }
    for (int sec = 0; sec < 3; sec++) {
        for (int i = 0; i < sec_count(&m, sec); i++) {
            if (m.rr[sec][i].cls != 1 && m.rr[sec][i].cls != 3) {
                return "record with a class other than IN or CH";
            }
        }
    }
    return NULL;
}

static void test_random(void)
{
    static const qp_t bases[] = {
        {"www.example.com", RR_A, EDNS, .nsid = true},
        {"Foo.wild.example.com", RR_TXT},
        {"host.sub.example.com", RR_A, EDNS, .do_bit = true},
        {"wide.example.com", RR_NS},
        {"nope.example.com", RR_A, EDNS},
        {"big.example.com", RR_TXT, EDNS, .udp = 600},
        {"example.com", RR_MX},
        {"loop1.example.com", RR_A},
        {"id.server", RR_TXT, 3, EDNS},
        {"todeleg.example.com", RR_ANY},
    };
    int runs = 0, bad = 0;
    const char *first = NULL;
    uint8_t first_q[700];
    size_t first_n = 0;
    for (int iter = 0; iter < 40000; iter++) {
        uint8_t q[700];
        size_t n = build_query(q, (uint16_t)rng(), &bases[rng() % MS_ARRAY_LEN(bases)]);
        int muts = 1 + (int)(rng() % 4);
        for (int k = 0; k < muts; k++) {
            uint32_t r = rng();
            switch (r % 5) {
            case 0: q[rng() % n] ^= (uint8_t)(1u << (rng() % 8)); break;
            case 1: q[rng() % n] = (uint8_t)rng(); break;
            case 2: n = 1 + rng() % n; break;
            case 3:
                if (n < sizeof(q) - 8) {
                    for (int j = 0; j < 4; j++) {
                        q[n++] = (uint8_t)rng();
                    }
                }
                break;
            default: q[2 + rng() % 10] = (uint8_t)rng(); break; /* header fields */
            }
        }
        q[2] &= (uint8_t)(rng() % 8 ? 0x7F : 0xFF); /* mostly queries, some responses */
        static const size_t caps[] = {512, 1232, 4096, DNS_MAX_MSG};
        size_t cap = caps[rng() % 4];
        const char *why = check_reply(q, n, cap, cap == DNS_MAX_MSG);
        runs++;
        if (why) {
            bad++;
            if (!first) {
                first = why;
                memcpy(first_q, q, n);
                first_n = n;
            }
        }
    }
    tap_ok(bad == 0, "%d mutated queries: every reply well-formed and consistent (%d bad)", runs,
           bad);
    if (first) {
        tap_diag("  first failure: %s; query (%zu bytes):", first, first_n);
        char hex[1500] = "";
        for (size_t i = 0; i < first_n && i < 400; i++) {
            snprintf(hex + strlen(hex), sizeof(hex) - strlen(hex), "%02x", first_q[i]);
        }
        tap_diag("  %s", hex);
    }
}

/* server.nsid is checked when the snapshot is built: text of at most 128 bytes, or 0x and
 * an even number of hex digits. */
static void test_nsid_values(void)
{
    char t128[130], t129[131];
    memset(t128, 'n', 128);
    t128[128] = 0;
    memset(t129, 'n', 129);
    t129[129] = 0;
    static const struct {
        const char *v;
        bool ok;
        size_t len;
    } nsid_cases[] = {
        {"", true, 0},       {"ns1", true, 3},  {"0X00ff", true, 2},
        {"0xABC", false, 0}, {"0x", false, 0},  {"0xZZ", false, 0},
        {"0x1g", false, 0},  {NULL, true, 128}, {NULL, false, 0},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(nsid_cases); i++) {
        const char *v = nsid_cases[i].v ? nsid_cases[i].v : nsid_cases[i].ok ? t128 : t129;
        conf_t *c = conf_new_default();
        free(c->nsid);
        c->nsid = xstrdup(v);
        snap_t *s = NULL;
        char err[512] = "";
        int rc = snap_build(c, &s, err, sizeof(err));
        if (nsid_cases[i].ok) {
            tap_ok(rc == 0 && s && s->nsid_len == nsid_cases[i].len,
                   "nsid \"%.12s\" (%zu chars) accepted", v, strlen(v));
        } else {
            tap_ok(rc == MS_ECONF && !s && strstr(err, "server.nsid: "),
                   "nsid \"%.12s\" (%zu chars) refused: %s", v, strlen(v), err);
        }
        snap_free(s);
    }
}

/* DNAME details (RFC 6672), in a zone of their own: chains, YXDOMAIN, occlusion, and a
 * synthesised CNAME that does not fit in 512 bytes (the reply must stay well formed). */
#define OWN145                                                                                     \
    "ooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooo."                             \
    "ppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp.qqqqq"
#define TGT153                                                                                     \
    "ttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt."                             \
    "uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu.vvvvvvvvvvvv.example.net."
#define PRE98                                                                                      \
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa."                             \
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

static bool ck_dn_chain(const msg_t *m)
{
    /* d1 DNAME, CNAME a.d1 -> a.d2, d2 DNAME, CNAME a.d2 -> a.new, a.new A */
    return m->an == 5 && m->rr[0][0].type == RR_DNAME &&
           strcmp(m->rr[0][0].owner, "d1.example.org.") == 0 && m->rr[0][1].type == RR_CNAME &&
           strcmp(m->rr[0][1].owner, "A.d1.example.org.") == 0 && m->rr[0][2].type == RR_DNAME &&
           m->rr[0][3].type == RR_CNAME &&
           strcmp(rd_name(m, &m->rr[0][3], 0), "a.new.example.org.") == 0 &&
           m->rr[0][4].type == RR_A && rd_is_ip4(m, &m->rr[0][4], 192, 0, 2, 4);
}

static bool ck_dn_only(const msg_t *m)
{
    return m->an == 1 && m->rr[0][0].type == RR_DNAME &&
           strcmp(rd_name(m, &m->rr[0][0], 0), "new.example.org.") == 0;
}

static bool ck_dn_ttl(const msg_t *m)
{
    /* The synthesised CNAME has the DNAME's TTL (RFC 6672 3.3 allows it, Knot does it). */
    const rr_t *d = find_rr(m, 0, RR_DNAME, 0), *c = find_rr(m, 0, RR_CNAME, 0);
    return d && c && d->ttl == 300 && c->ttl == d->ttl;
}

static bool ck_dn_long(const msg_t *m)
{
    const rr_t *c = find_rr(m, 0, RR_CNAME, 0);
    return m->an == 2 && c && strcmp(rd_name(m, c, 0), PRE98 "." TGT153) == 0;
}

static void test_dname_cases(void)
{
    static const char text[] = "$TTL 300\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n"
                               "old DNAME new.example.org.\nnew A 192.0.2.2\n"
                               "y.old A 192.0.2.99\n" /* occluded by the DNAME */
                               "d1 DNAME d2.example.org.\nd2 DNAME new.example.org.\n"
                               "a.new A 192.0.2.4\n" OWN145 " DNAME " TGT153 "\n";
    zone_t *z = NULL;
    char err[512] = "";
    snap_t *s = make_snap("i", "v", "", 1232);
    if (!s || zone_load_string("example.org", text, sizeof(text) - 1, &z, err, sizeof(err)) != 0 ||
        zone_db_add(s->zones, z) != 0) {
        tap_ok(false, "snapshot for the DNAME cases (%s)", err);
        snap_free(s);
        return;
    }
    static const dcase_t dn[] = {
        {"DNAME chain",
         {"A.d1.example.org", RR_A},
         UDP,
         0,
         1,
         0,
         5,
         0,
         0,
         "two DNAMEs, two CNAMEs, the A",
         ck_dn_chain},
        {"DNAME to a missing name",
         {"zz.old.example.org", RR_A},
         UDP,
         RCODE_NXDOMAIN,
         1,
         0,
         2,
         1,
         0,
         "DNAME, CNAME, then NXDOMAIN with SOA",
         ck_dn_ttl},
        {"name below a DNAME is occluded",
         {"y.old.example.org", RR_A},
         UDP,
         RCODE_NXDOMAIN,
         1,
         0,
         2,
         1,
         0,
         "redirected, its own A not served",
         ck_dn_ttl},
        {"the DNAME itself",
         {"old.example.org", RR_DNAME},
         UDP,
         0,
         1,
         0,
         1,
         0,
         0,
         "answer",
         ck_dn_only},
        {"A at a DNAME owner", {"old.example.org", RR_A}, UDP, 0, 1, 0, 0, 1, 0, "NODATA", NULL},
        {"CNAME asked below a DNAME",
         {"x.old.example.org", RR_CNAME},
         UDP,
         0,
         1,
         0,
         2,
         0,
         0,
         "DNAME and the synthesised CNAME, not followed",
         ck_dn_ttl},
        {"substituted name too long",
         {"ccccc." PRE98 "." OWN145 ".example.org", RR_A},
         UDP,
         6,
         1,
         0,
         1,
         0,
         0,
         "YXDOMAIN with the DNAME",
         NULL},
        {"long synthesised CNAME over UDP 512",
         {PRE98 "." OWN145 ".example.org", RR_A},
         UDP,
         0,
         1,
         1,
         -1,
         0,
         0,
         "TC, well-formed",
         NULL},
        {"long synthesised CNAME with EDNS",
         {PRE98 "." OWN145 ".example.org", RR_A, EDNS},
         UDP_BIG_BUF,
         0,
         1,
         0,
         2,
         0,
         1,
         "DNAME and CNAME to the 253-byte name",
         ck_dn_long},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(dn); i++) {
        const dcase_t *c = &dn[i];
        msg_t m;
        bool ok = ask(s, &c->q, c->transport, &m);
        bool all = ok && m.rcode == c->rcode && m.aa == (c->aa != 0) && m.tc == (c->tc != 0) &&
                   (c->an < 0 || m.an == c->an) && m.ns == c->ns && m.ar == c->ar &&
                   (!c->check || c->check(&m));
        tap_ok(all, "%s: rcode %u aa %d tc %d an %d ns %d ar %d; %s", c->what, c->rcode, c->aa,
               c->tc, c->an, c->ns, c->ar, c->detail);
        if (!all) {
            tap_diag("  got: parsed %d (%zu bytes), rcode %u aa %d tc %d an %u ns %u ar %u", ok,
                     resp_len, m.rcode, m.aa, m.tc, m.an, m.ns, m.ar);
        }
    }
    snap_free(s);
}

/* DNAME (RFC 6672): either refused when the zone is loaded, or answered as a DNAME: a name
 * below the owner gets the DNAME and a synthesised CNAME, never NXDOMAIN. */
static void test_dname(void)
{
    static const char text[] = "$TTL 300\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n"
                               "old DNAME new.example.org.\nnew A 192.0.2.2\nx.new A 192.0.2.3\n";
    zone_t *z = NULL;
    char err[512] = "";
    int rc = zone_load_string("example.org", text, sizeof(text) - 1, &z, err, sizeof(err));
    if (rc != 0) {
        tap_ok(strstr(err, "(string):5: ") && strstr(err, "DNAME"),
               "DNAME refused at load with its line: %s", err);
        return;
    }
    snap_t *s = make_snap("i", "v", "", 1232);
    if (!s || zone_db_add(s->zones, z) != 0) {
        tap_ok(false, "snapshot for the DNAME zone");
        zone_free(z);
        snap_free(s);
        return;
    }
    msg_t m;
    qp_t q = {"x.old.example.org", RR_A};
    bool ok = ask(s, &q, UDP, &m);
    const rr_t *d = ok ? find_rr(&m, 0, RR_DNAME, 0) : NULL;
    const rr_t *cn = ok ? find_rr(&m, 0, RR_CNAME, 0) : NULL;
    tap_ok(ok && m.rcode == 0 && m.aa && d && cn &&
               strcmp(rd_name(&m, cn, 0), "x.new.example.org.") == 0,
           "DNAME: x.old -> DNAME + CNAME x.new (got rcode %u, an %u)", ok ? m.rcode : 99,
           ok ? m.an : 0);
    snap_free(s);
    test_dname_cases();
}

/* RFC 4592 4.2: a wildcard owning NS is a delegation; names it matches get a referral (NS
 * in authority, AA clear), never data (the TXT beside the NS is occluded). knotd answers
 * so. */
static void test_wildcard_ns(void)
{
    static const char text[] = "$TTL 300\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n"
                               "*.wd NS ns.other.net.\n*.wd TXT \"t\"\n";
    zone_t *z = NULL;
    char err[512] = "";
    snap_t *s = make_snap("i", "v", "", 1232);
    if (!s || zone_load_string("example.org", text, sizeof(text) - 1, &z, err, sizeof(err)) != 0 ||
        zone_db_add(s->zones, z) != 0) {
        tap_ok(false, "snapshot for the wildcard NS zone (%s)", err);
        snap_free(s);
        return;
    }
    static const uint16_t types[] = {RR_A, RR_NS, RR_TXT};
    for (size_t i = 0; i < MS_ARRAY_LEN(types); i++) {
        msg_t m;
        qp_t q = {"a.wd.example.org", types[i]};
        bool ok = ask(s, &q, UDP, &m);
        const rr_t *ns = ok ? find_rr(&m, 1, RR_NS, 0) : NULL;
        tap_ok(ok && m.rcode == 0 && !m.aa && m.an == 0 && ns &&
                   strcmp(rd_name(&m, ns, 0), "ns.other.net.") == 0,
               "wildcard NS, qtype %u: referral (got aa %d an %u ns %u)", types[i], ok ? m.aa : -1,
               ok ? m.an : 0, ok ? m.ns : 0);
    }
    snap_free(s);
}

int main(void)
{
    log_init("test_dns", false, LOG_LVL_ERR);
    resp = xmalloc(DNS_MAX_MSG);
    snap_main = make_snap("test-identity", "test-version 9", "test-ns", 1232);
    if (!snap_main) {
        tap_ok(false, "snapshot builds");
        return tap_done();
    }
    test_table();
    test_raw();
    test_compression();
    test_long_names();
    test_random();
    test_other_config();
    test_nsid_values();
    test_dname();
    test_wildcard_ns();
    snap_free(snap_main);
    free(resp);
    return tap_done();
}
