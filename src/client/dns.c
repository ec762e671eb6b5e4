/* dns.c: the client's own small stub resolver: query building, a bounds-checked reply
 * parser, UDP with TCP fallback, CNAME chasing, and the A/AAAA merge.
 *
 * Why not getaddrinfo(): it gives no TTL, and glibc sorts the addresses by RFC 6724, which
 * throws away the order multisited put them in. Why not libknot's packet API: the parser is
 * the one part of the client that reads bytes from the network, and ~150 lines we own and
 * fuzz (tests/fuzz/fuzz_client_dns.c) are easier to reason about than a general parser plus
 * the glue around it; the queries we send and the replies we accept are a narrow subset.
 *
 * A UDP reply is accepted only from the server we asked (connected socket), with our random
 * ID and our exact question; anything else is ignored and we keep waiting until the
 * deadline, so a stray or spoofed datagram cannot cut an exchange short. */
#include "client/internal.h"

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

enum { RR_A_T = 1, RR_CNAME_T = 5, RR_SOA_T = 6, RR_AAAA_T = 28 };

/* ---- names ---- */

int msc_dns_name(const char *s, uint8_t *wire, size_t *len)
{
    size_t n = 0, slen = strlen(s);
    if (slen > 0 && s[slen - 1] == '.') {
        slen--;
    }
    if (slen == 0) {
        return MS_EINVAL; /* the root is never a service name */
    }
    size_t i = 0;
    while (i < slen) {
        size_t j = i;
        while (j < slen && s[j] != '.') {
            if (s[j] == '\\') {
                return MS_EINVAL;
            }
            j++;
        }
        size_t l = j - i;
        if (l == 0 || l > 63 || n + 1 + l + 1 > MSC_DNS_NAME_MAX) {
            return MS_EINVAL;
        }
        wire[n++] = (uint8_t)l;
        for (size_t k = i; k < j; k++) {
            char c = s[k];
            wire[n++] = (uint8_t)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        }
        i = j + 1;
    }
    wire[n++] = 0;
    *len = n;
    return 0;
}

void msc_dns_name_str(const uint8_t *wire, char *buf, size_t len)
{
    size_t o = 0;
    if (len == 0) {
        return;
    }
    if (wire[0] == 0) {
        snprintf(buf, len, ".");
        return;
    }
    for (size_t i = 0; wire[i] != 0 && i < MSC_DNS_NAME_MAX; i += 1 + wire[i]) {
        for (size_t k = 0; k < wire[i] && o + 5 < len; k++) {
            uint8_t c = wire[i + 1 + k];
            if (c > 32 && c < 127 && c != '.' && c != '\\') {
                buf[o++] = (char)c;
            } else {
                o += (size_t)snprintf(buf + o, len - o, "\\%03u", c);
            }
        }
        if (wire[i + 1 + wire[i]] != 0 && o + 1 < len) {
            buf[o++] = '.';
        }
    }
    buf[o < len ? o : len - 1] = 0;
}

/* ---- query ---- */

size_t msc_dns_query(uint8_t *buf, size_t cap, uint16_t id, bool rd, const uint8_t *qname,
                     size_t qname_len, uint16_t qtype)
{
    size_t need = 12 + qname_len + 4 + 11;
    if (cap < need) {
        return 0;
    }
    memset(buf, 0, 12);
    wr_u16(buf, id);
    buf[2] = rd ? 0x01 : 0x00;
    wr_u16(buf + 4, 1);  /* QDCOUNT */
    wr_u16(buf + 10, 1); /* ARCOUNT: OPT */
    memcpy(buf + 12, qname, qname_len);
    uint8_t *p = buf + 12 + qname_len;
    wr_u16(p, qtype);
    wr_u16(p + 2, 1); /* IN */
    p += 4;
    p[0] = 0; /* OPT: root owner, type 41, class = UDP size, TTL 0, no options */
    wr_u16(p + 1, 41);
    wr_u16(p + 3, MSC_DNS_MAX_UDP);
    wr_u32(p + 5, 0);
    wr_u16(p + 9, 0);
    return need;
}

/* ---- reply parser ---- */

/* Read the (possibly compressed) name at *off into out (lower case, uncompressed) and move
 * *off past it. Compression pointers must point strictly backwards from where they are,
 * which rules out loops; the expanded name must fit 255 bytes. */
static int read_name(const uint8_t *pkt, size_t len, size_t *off, uint8_t *out, size_t *out_len)
{
    size_t pos = *off, n = 0;
    bool jumped = false;
    for (;;) {
        if (pos >= len) {
            return MS_EPARSE;
        }
        uint8_t l = pkt[pos];
        if ((l & 0xC0) == 0xC0) {
            if (pos + 1 >= len) {
                return MS_EPARSE;
            }
            size_t target = ((size_t)(l & 0x3F) << 8) | pkt[pos + 1];
            if (target >= pos) {
                return MS_EPARSE;
            }
            if (!jumped) {
                *off = pos + 2;
                jumped = true;
            }
            pos = target;
            continue;
        }
        if (l & 0xC0) {
            return MS_EPARSE; /* 0x40, 0x80: extended label types, never valid here */
        }
        if (n + 1 + l > MSC_DNS_NAME_MAX || pos + 1 + l > len) {
            return MS_EPARSE;
        }
        out[n++] = l;
        if (l == 0) {
            break;
        }
        for (size_t k = 0; k < l; k++) {
            uint8_t c = pkt[pos + 1 + k];
            out[n++] = (uint8_t)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        }
        pos += 1 + l;
    }
    if (!jumped) {
        *off = pos + 1;
    }
    *out_len = n;
    return 0;
}

static bool name_eq(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    return alen == blen && memcmp(a, b, alen) == 0;
}

typedef struct {
    uint8_t owner[MSC_DNS_NAME_MAX];
    size_t owner_len;
    uint16_t type, cls;
    uint32_t ttl;
    size_t rdata, rdlen; /* offset and length of RDATA in the packet */
} rr_t;

static int read_rr(const uint8_t *pkt, size_t len, size_t *off, rr_t *rr)
{
    int rc = read_name(pkt, len, off, rr->owner, &rr->owner_len);
    if (rc) {
        return rc;
    }
    if (*off + 10 > len) {
        return MS_EPARSE;
    }
    const uint8_t *p = pkt + *off;
    rr->type = rd_u16(p);
    rr->cls = rd_u16(p + 2);
    rr->ttl = rd_u32(p + 4);
    if (rr->ttl > 0x7FFFFFFF) {
        rr->ttl = 0; /* RFC 2181 section 8: a TTL with the top bit set is zero */
    }
    rr->rdlen = rd_u16(p + 8);
    rr->rdata = *off + 10;
    if (rr->rdata + rr->rdlen > len) {
        return MS_EPARSE;
    }
    *off = rr->rdata + rr->rdlen;
    return 0;
}

static uint32_t ttl_min(uint32_t a, uint32_t b)
{
    return a < b ? a : b;
}

/* The answer section holds at most 65535 records; we walk it once per CNAME hop and once for
 * the addresses, so the cost stays linear in the reply size times a small constant. */
static int scan_answers(const uint8_t *pkt, size_t len, size_t start, uint16_t ancount,
                        uint16_t qtype, uint16_t port, msc_reply_t *out, size_t *end)
{
    rr_t rr;
    size_t off;
    for (int hop = 0;; hop++) {
        bool moved = false;
        off = start;
        for (uint16_t i = 0; i < ancount; i++) {
            int rc = read_rr(pkt, len, &off, &rr);
            if (rc) {
                return rc;
            }
            if (moved || rr.type != RR_CNAME_T || rr.cls != 1 ||
                !name_eq(rr.owner, rr.owner_len, out->target, out->target_len)) {
                continue;
            }
            if (hop >= MSC_CNAME_HOPS) {
                return MS_EPARSE; /* a chain this long is a loop or an attack */
            }
            size_t roff = rr.rdata;
            uint8_t t[MSC_DNS_NAME_MAX];
            size_t tlen;
            rc = read_name(pkt, len, &roff, t, &tlen);
            if (rc || roff != rr.rdata + rr.rdlen) {
                return MS_EPARSE;
            }
            memcpy(out->target, t, tlen);
            out->target_len = tlen;
            out->ttl = ttl_min(out->ttl, rr.ttl);
            moved = true;
        }
        *end = off;
        if (!moved) {
            break;
        }
    }
    size_t alen = qtype == RR_AAAA_T ? 16 : 4;
    uint32_t attl = MSC_TTL_NONE;
    off = start;
    for (uint16_t i = 0; i < ancount; i++) {
        int rc = read_rr(pkt, len, &off, &rr);
        if (rc) {
            return rc;
        }
        if (rr.type != qtype || rr.cls != 1 ||
            !name_eq(rr.owner, rr.owner_len, out->target, out->target_len)) {
            continue;
        }
        if (rr.rdlen != alen) {
            return MS_EPARSE;
        }
        attl = ttl_min(attl, rr.ttl);
        if (out->n == MSC_MAX_ADDRS) {
            out->n_more++;
            continue;
        }
        net_addr_t *a = &out->addr[out->n++];
        memset(a, 0, sizeof(*a));
        if (alen == 4) {
            a->sin.sin_family = AF_INET;
            a->sin.sin_port = htons(port);
            memcpy(&a->sin.sin_addr, pkt + rr.rdata, 4);
        } else {
            a->sin6.sin6_family = AF_INET6;
            a->sin6.sin6_port = htons(port);
            memcpy(&a->sin6.sin6_addr, pkt + rr.rdata, 16);
        }
    }
    if (out->n > 0) {
        out->ttl = ttl_min(out->ttl, attl);
    }
    return 0;
}

/* Negative answers (RFC 2308): the TTL is min(SOA TTL, SOA MINIMUM) from the authority. */
static int scan_authority(const uint8_t *pkt, size_t len, size_t off, uint16_t nscount,
                          msc_reply_t *out)
{
    for (uint16_t i = 0; i < nscount; i++) {
        rr_t rr;
        int rc = read_rr(pkt, len, &off, &rr);
        if (rc) {
            return rc;
        }
        if (rr.type != RR_SOA_T || rr.cls != 1) {
            continue;
        }
        size_t roff = rr.rdata;
        uint8_t skip[MSC_DNS_NAME_MAX];
        size_t sl;
        if (read_name(pkt, len, &roff, skip, &sl) || read_name(pkt, len, &roff, skip, &sl) ||
            roff + 20 != rr.rdata + rr.rdlen) {
            return MS_EPARSE;
        }
        uint32_t minimum = rd_u32(pkt + roff + 16);
        out->ttl = ttl_min(out->ttl, ttl_min(rr.ttl, minimum));
        break;
    }
    return 0;
}

int msc_dns_parse(const uint8_t *pkt, size_t len, uint16_t id, const uint8_t *qname,
                  size_t qname_len, uint16_t qtype, uint16_t port, msc_reply_t *out)
{
    memset(out, 0, offsetof(msc_reply_t, addr));
    out->ttl = MSC_TTL_NONE;
    if (qname_len == 0 || qname_len > MSC_DNS_NAME_MAX) {
        return MS_EINVAL;
    }
    /* Set before any early return: a caller may look at the target of any parsed reply. */
    memcpy(out->target, qname, qname_len);
    out->target_len = qname_len;
    if (len < 12) {
        return MS_EPARSE;
    }
    if (rd_u16(pkt) != id || !(pkt[2] & 0x80) || ((pkt[2] >> 3) & 0x0F) != 0) {
        return MS_EINVAL;
    }
    uint16_t qd = rd_u16(pkt + 4), an = rd_u16(pkt + 6), ns = rd_u16(pkt + 8);
    out->aa = (pkt[2] & 0x04) != 0;
    out->tc = (pkt[2] & 0x02) != 0;
    out->rcode = pkt[3] & 0x0F;
    if (qd != 1) {
        /* A truncated or FORMERR reply may carry no question; with our ID and QR set it is
         * still the server talking to us (RFC 1035 allows either). */
        if (qd == 0 && (out->tc || out->rcode != 0)) {
            return 0;
        }
        return MS_EINVAL;
    }
    size_t off = 12;
    uint8_t name[MSC_DNS_NAME_MAX];
    size_t nlen;
    int rc = read_name(pkt, len, &off, name, &nlen);
    if (rc) {
        return rc;
    }
    if (off + 4 > len) {
        return MS_EPARSE;
    }
    if (!name_eq(name, nlen, qname, qname_len) || rd_u16(pkt + off) != qtype ||
        rd_u16(pkt + off + 2) != 1) {
        return MS_EINVAL;
    }
    off += 4;
    if (out->tc) {
        return 0; /* the caller asks again over TCP; the rest may be cut anywhere */
    }
    size_t end;
    rc = scan_answers(pkt, len, off, an, qtype, port, out, &end);
    if (rc) {
        return rc;
    }
    if (out->n == 0 && (out->rcode == 0 || out->rcode == 3)) {
        rc = scan_authority(pkt, len, end, ns, out);
    }
    return rc;
}

/* ---- resolv.conf ---- */

size_t msc_resolv_conf_parse(const char *text, net_addr_t *out, size_t max)
{
    size_t n = 0;
    const char *p = text;
    while (*p && n < max) {
        const char *eol = strchr(p, '\n');
        size_t l = eol ? (size_t)(eol - p) : strlen(p);
        char line[256];
        if (l < sizeof(line)) {
            memcpy(line, p, l);
            line[l] = 0;
            char *save = NULL;
            char *kw = strtok_r(line, " \t\r", &save);
            char *val = kw ? strtok_r(NULL, " \t\r", &save) : NULL;
            if (kw && val && strcmp(kw, "nameserver") == 0) {
                char *pct = strchr(val, '%'); /* fe80::1%eth0: scope ids unsupported */
                if (!pct && net_parse_ip(val, &out[n]) == 0) {
                    if (out[n].sa.sa_family == AF_INET) {
                        out[n].sin.sin_port = htons(53);
                    } else {
                        out[n].sin6.sin6_port = htons(53);
                    }
                    n++;
                }
            }
        }
        p += l;
        if (*p == '\n') {
            p++;
        }
    }
    return n;
}

/* ---- merge ---- */

void msc_merge_families(const msc_reply_t *v6, const msc_reply_t *v4, msc_addrs_t *out)
{
    out->n = 0;
    size_t n6 = v6 ? v6->n : 0, n4 = v4 ? v4->n : 0;
    for (size_t i = 0; (i < n6 || i < n4) && out->n < MSC_MAX_ADDRS; i++) {
        if (i < n6) {
            out->addr[out->n++] = v6->addr[i];
        }
        if (i < n4 && out->n < MSC_MAX_ADDRS) {
            out->addr[out->n++] = v4->addr[i];
        }
    }
}

/* ---- transport ---- */

static int64_t left_ms(uint64_t deadline)
{
    uint64_t now = time_mono_ms();
    return now >= deadline ? 0 : (int64_t)(deadline - now);
}

static int wait_fd(int fd, short ev, uint64_t deadline)
{
    for (;;) {
        int64_t left = left_ms(deadline);
        if (left <= 0) {
            return MS_EAGAIN;
        }
        struct pollfd p = {fd, ev, 0};
        int r = poll(&p, 1, (int)left);
        if (r > 0) {
            return 0;
        }
        if (r < 0 && errno != EINTR) {
            return MS_EIO;
        }
    }
}

typedef struct {
    uint16_t id;
    const uint8_t *qname;
    size_t qname_len;
    uint16_t qtype, port;
    msc_reply_t *out;
} exch_t;

static int exchange_udp(const net_addr_t *srv, const uint8_t *q, size_t qlen, uint64_t deadline,
                        exch_t *x, char *why, size_t whylen)
{
    int fd = socket(srv->sa.sa_family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(why, whylen, "socket: %s", strerror(errno));
        return MS_EIO;
    }
    int rc = MS_EIO;
    if (connect(fd, &srv->sa, net_addr_len(srv)) != 0 || send(fd, q, qlen, 0) != (ssize_t)qlen) {
        snprintf(why, whylen, "send: %s", strerror(errno));
        goto out;
    }
    uint8_t buf[4096]; /* > MSC_DNS_MAX_UDP: a server that ignores our EDNS size still parses */
    for (;;) {
        rc = wait_fd(fd, POLLIN, deadline);
        if (rc) {
            snprintf(why, whylen, rc == MS_EAGAIN ? "timeout" : "poll: %s", strerror(errno));
            goto out;
        }
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                continue;
            }
            snprintf(why, whylen, "recv: %s", strerror(errno)); /* e.g. ICMP port unreachable */
            rc = MS_EIO;
            goto out;
        }
        rc =
            msc_dns_parse(buf, (size_t)r, x->id, x->qname, x->qname_len, x->qtype, x->port, x->out);
        if (rc == MS_EINVAL) {
            continue; /* not our answer: keep waiting */
        }
        if (rc) {
            snprintf(why, whylen, "malformed reply");
        }
        goto out;
    }
out:
    close(fd);
    return rc;
}

static int io_all(int fd, uint8_t *p, size_t n, bool wr, uint64_t deadline)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r =
            wr ? send(fd, p + done, n - done, MSG_NOSIGNAL) : recv(fd, p + done, n - done, 0);
        if (r > 0) {
            done += (size_t)r;
            continue;
        }
        if (r == 0) {
            return MS_ECLOSED;
        }
        if (errno != EAGAIN && errno != EINTR) {
            return MS_EIO;
        }
        int rc = wait_fd(fd, wr ? POLLOUT : POLLIN, deadline);
        if (rc) {
            return rc;
        }
    }
    return 0;
}

static int exchange_tcp(const net_addr_t *srv, const uint8_t *q, size_t qlen, uint64_t deadline,
                        exch_t *x, char *why, size_t whylen)
{
    int64_t left = left_ms(deadline);
    int fd = msc_tcp_connect(srv, left > 0 ? (uint32_t)left : 1, why, whylen);
    if (fd < 0) {
        return fd;
    }
    uint8_t qbuf[2 + 512];
    uint8_t *resp = NULL;
    int rc = MS_EIO;
    if (qlen > sizeof(qbuf) - 2) {
        goto out;
    }
    wr_u16(qbuf, (uint16_t)qlen);
    memcpy(qbuf + 2, q, qlen);
    rc = io_all(fd, qbuf, qlen + 2, true, deadline);
    uint8_t lb[2];
    if (rc == 0) {
        rc = io_all(fd, lb, 2, false, deadline);
    }
    if (rc == 0) {
        /* At most 65535 bytes: the length field bounds the allocation. */
        size_t rlen = rd_u16(lb);
        resp = xmalloc(rlen ? rlen : 1);
        rc = io_all(fd, resp, rlen, false, deadline);
        if (rc == 0) {
            rc =
                msc_dns_parse(resp, rlen, x->id, x->qname, x->qname_len, x->qtype, x->port, x->out);
            if (rc == 0 && x->out->tc) {
                rc = MS_EPARSE; /* truncated over TCP: nothing more to try on this server */
            }
            if (rc) {
                snprintf(why, whylen, "malformed TCP reply");
            }
            goto out;
        }
    }
    snprintf(why, whylen, "TCP: %s",
             rc == MS_EAGAIN    ? "timeout"
             : rc == MS_ECLOSED ? "closed"
                                : strerror(errno));
out:
    free(resp);
    close(fd);
    return rc;
}

static const char *rcode_str(uint8_t rc)
{
    static const char *const names[] = {"NOERROR",  "FORMERR", "SERVFAIL",
                                        "NXDOMAIN", "NOTIMP",  "REFUSED"};
    return rc < MS_ARRAY_LEN(names) ? names[rc] : "error";
}

/* One question to the servers in turn, starting with the last one that answered. NOERROR and
 * NXDOMAIN are answers; SERVFAIL, REFUSED, timeouts and garbage move to the next server. */
static int ask(const msc_dns_cfg_t *cfg, const uint8_t *qname, size_t qname_len, uint16_t qtype,
               uint16_t port, msc_reply_t *out, char *why, size_t whylen)
{
    uint8_t q[512];
    char one[160];
    size_t wo = 0;
    why[0] = 0;
    for (size_t k = 0; k < cfg->n_servers; k++) {
        size_t si = (*cfg->good + k) % cfg->n_servers;
        const net_addr_t *srv = &cfg->servers[si];
        uint16_t id;
        if (getrandom(&id, sizeof(id), 0) != sizeof(id)) {
            id = (uint16_t)time_mono_ns();
        }
        size_t qlen = msc_dns_query(q, sizeof(q), id, cfg->rd, qname, qname_len, qtype);
        exch_t x = {id, qname, qname_len, qtype, port, out};
        uint64_t deadline = time_mono_ms() + cfg->timeout_ms;
        int rc = exchange_udp(srv, q, qlen, deadline, &x, one, sizeof(one));
        if (rc == 0 && out->tc) {
            deadline = time_mono_ms() + cfg->timeout_ms;
            rc = exchange_tcp(srv, q, qlen, deadline, &x, one, sizeof(one));
        }
        if (rc == 0 && out->rcode != 0 && out->rcode != 3) {
            snprintf(one, sizeof(one), "%s", rcode_str(out->rcode));
            rc = MS_EAGAIN;
        }
        if (rc == 0) {
            *cfg->good = si;
            return 0;
        }
        char sa[NET_ADDR_STRLEN];
        if (wo < whylen) {
            wo += (size_t)snprintf(why + wo, whylen - wo, "%sDNS %s: %s", wo ? "; " : "",
                                   net_addr_str(srv, sa, sizeof(sa)), one);
        }
    }
    return MS_EIO;
}

/* One address family, following CNAMEs that end outside the reply (another zone). */
static int resolve_family(const msc_dns_cfg_t *cfg, const uint8_t *qname, size_t qname_len,
                          uint16_t qtype, uint16_t port, msc_reply_t *out, char *why, size_t whylen)
{
    uint8_t name[MSC_DNS_NAME_MAX];
    size_t len = qname_len;
    memcpy(name, qname, len);
    uint32_t ttl = MSC_TTL_NONE;
    for (int hop = 0; hop <= MSC_CNAME_HOPS; hop++) {
        int rc = ask(cfg, name, len, qtype, port, out, why, whylen);
        if (rc) {
            return rc;
        }
        ttl = ttl_min(ttl, out->ttl);
        out->ttl = ttl;
        if (out->n > 0 || out->rcode == 3 || name_eq(out->target, out->target_len, name, len)) {
            return 0;
        }
        memcpy(name, out->target, out->target_len);
        len = out->target_len;
    }
    snprintf(why, whylen, "CNAME chain longer than %d", MSC_CNAME_HOPS);
    return MS_EPARSE;
}

int msc_dns_resolve(const msc_dns_cfg_t *cfg, const char *name, uint16_t port, msc_addrs_t *out,
                    char *why, size_t whylen)
{
    uint8_t qname[MSC_DNS_NAME_MAX];
    size_t qlen;
    if (msc_dns_name(name, qname, &qlen)) {
        snprintf(why, whylen, "invalid name '%s'", name);
        return MS_EINVAL;
    }
    msc_reply_t *r6 = NULL, *r4 = NULL;
    msc_reply_t *buf = xcalloc(2, sizeof(*buf));
    int rc = 0;
    if (cfg->family != AF_INET) {
        r6 = &buf[0];
        rc = resolve_family(cfg, qname, qlen, RR_AAAA_T, port, r6, why, whylen);
    }
    if (rc == 0 && cfg->family != AF_INET6) {
        r4 = &buf[1];
        rc = resolve_family(cfg, qname, qlen, RR_A_T, port, r4, why, whylen);
    }
    if (rc == 0) {
        msc_merge_families(r6, r4, out);
        uint32_t ttl = ttl_min(r6 ? r6->ttl : MSC_TTL_NONE, r4 ? r4->ttl : MSC_TTL_NONE);
        out->ttl = ttl_min(ttl, cfg->max_ttl_s);
        if (out->n == 0) {
            snprintf(why, whylen, "%s: no address (%s)", name,
                     (r4 && r4->rcode == 3) || (r6 && r6->rcode == 3) ? "NXDOMAIN" : "NODATA");
            rc = MS_ENOENT;
        }
    }
    free(buf);
    return rc;
}
