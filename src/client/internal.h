/* internal.h: the client module's private parts, shared by its .c files, the unit test
 * (tests/unit/test_client.c) and the fuzz target (tests/fuzz/fuzz_client_dns.c). */
#ifndef MS_CLIENT_INTERNAL_H
#define MS_CLIENT_INTERNAL_H

#include "client/client.h"

#define MSC_DNS_NAME_MAX 255
#define MSC_DNS_MAX_UDP  1232 /* EDNS buffer size we advertise (DNS flag day 2020) */
#define MSC_CNAME_HOPS   8    /* CNAME links we follow before giving up */

/* ---- DNS wire (dns.c) ---- */

/* What a reply says about one question. Addresses are in the order of the answer section. */
typedef struct {
    uint8_t rcode;
    bool aa, tc;
    uint32_t ttl;  /* min TTL over the CNAMEs and addresses used; for a negative answer, the
                      SOA's negative TTL (RFC 2308); MSC_TTL_NONE when the reply gave none */
    size_t n;      /* addresses */
    size_t n_more; /* addresses past MSC_MAX_ADDRS, dropped */
    net_addr_t addr[MSC_MAX_ADDRS];
    /* Where the CNAME chain in the answer ends (lower case, wire format); equal to the
     * question when there is none. n == 0 and a different target: ask again for it. */
    uint8_t target[MSC_DNS_NAME_MAX];
    size_t target_len;
} msc_reply_t;
#define MSC_TTL_NONE UINT32_MAX

/* "www.example.com" or "www.example.com." -> lower-case wire format. MS_EINVAL for empty
 * labels, labels over 63 bytes, names over 255, or a backslash (escapes unsupported). */
int msc_dns_name(const char *s, uint8_t *wire, size_t *len) MS_WUR;
/* Wire name -> text without the final dot ("." for the root). buf of 1024 is always enough. */
void msc_dns_name_str(const uint8_t *wire, char *buf, size_t len);

/* A query with one EDNS OPT record. Returns its length, or 0 when cap is too small. */
size_t msc_dns_query(uint8_t *buf, size_t cap, uint16_t id, bool rd, const uint8_t *qname,
                     size_t qname_len, uint16_t qtype);

/* Parse a reply to (id, qname, qtype, class IN). Addresses get `port`. Returns
 *   0          parsed: see out->rcode, out->tc, out->n, out->target
 *   MS_EINVAL  not a reply to that question (wrong id, question, QR bit or opcode): a
 *              stray or spoofed datagram, keep waiting for the real one
 *   MS_EPARSE  malformed (bounds, bad names, compression loops, bad RDATA lengths)
 * Every read is bounds-checked against len; safe on any bytes. */
int msc_dns_parse(const uint8_t *pkt, size_t len, uint16_t id, const uint8_t *qname,
                  size_t qname_len, uint16_t qtype, uint16_t port, msc_reply_t *out) MS_WUR;

/* nameserver lines of a resolv.conf text -> addresses (port 53), at most max. Other lines
 * are ignored; a bad address is skipped. Returns how many. */
size_t msc_resolv_conf_parse(const char *text, net_addr_t *out, size_t max);

/* The resolved address list of a name with its TTL. */
typedef struct {
    net_addr_t addr[MSC_MAX_ADDRS];
    size_t n;
    uint32_t ttl; /* seconds, already capped */
} msc_addrs_t;

/* Merge AAAA and A lists rank by rank, IPv6 first, into out (capped at MSC_MAX_ADDRS). */
void msc_merge_families(const msc_reply_t *v6, const msc_reply_t *v4, msc_addrs_t *out);

/* ---- the client (client.c) ---- */

/* Seams for the unit test: a clock and a resolver standing in for the network. The resolver
 * fills out and returns 0 or a negative MS_E* code (writing a reason into why). */
typedef uint64_t (*msc_clock_fn)(void *arg);
typedef int (*msc_resolve_fn)(void *arg, const char *name, uint16_t port, msc_addrs_t *out,
                              char *why, size_t whylen);
void msc_set_clock(msc_t *m, msc_clock_fn fn, void *arg);
void msc_set_resolver(msc_t *m, msc_resolve_fn fn, void *arg);

/* The current address list of NAME:PORT, resolving when there is none or its TTL ran out.
 * *cursor is the sticky address's index. The pointer is valid until the next call on m. */
int msc_lookup(msc_t *m, const char *name, uint16_t port, const msc_addrs_t **out,
               size_t *cursor) MS_WUR;

/* Resolve over the wire (dns.c): servers in order starting at *good (updated to the one that
 * answered), rd set for recursive resolvers. */
typedef struct {
    const net_addr_t *servers;
    size_t n_servers;
    size_t *good;
    bool rd;
    int family;
    uint32_t timeout_ms;
    uint32_t max_ttl_s;
} msc_dns_cfg_t;
int msc_dns_resolve(const msc_dns_cfg_t *cfg, const char *name, uint16_t port, msc_addrs_t *out,
                    char *why, size_t whylen) MS_WUR;

/* One call's progress (msc_connect, msc_http_get): the entry, which addresses it tried (one
 * bit per index) and how many, and whether it already asked DNS again after every address
 * failed. begin looks the name up (resolving when due); next connects to the next untried
 * address, and when none is left fills msc_last_error() and returns MS_EIO. */
typedef struct {
    void *entry;
    uint64_t tried;
    unsigned attempts; /* in this call, over both lists when DNS was asked again */
    unsigned budget_used;
    bool refreshed;
} msc_call_t;
int msc__call_begin(msc_t *m, const char *name, uint16_t port, msc_call_t *call) MS_WUR;
int msc__call_next(msc_t *m, msc_call_t *call, msc_conn_t **out) MS_WUR;
void msc__add_err(msc_t *m, const net_addr_t *a, const char *why);
uint32_t msc__io_timeout(const msc_t *m);

/* ---- HTTP (http.c) ---- */

typedef struct {
    char host[256];
    uint16_t port;
    char path[2048];
} msc_url_t;
/* "http://HOST[:PORT][/path]" with HOST a name, an IPv4 address or "[IPv6]". */
int msc_url_parse(const char *url, msc_url_t *out) MS_WUR;

/* Parse a complete response (headers and body as read until EOF). Returns 0, MS_EPARSE, or
 * MS_ETRUNC when the body is shorter than announced. */
int msc_http_parse(const uint8_t *resp, size_t len, msc_http_result_t *out) MS_WUR;

/* Non-blocking connect with a deadline (net.c-like helper in client.c). Returns an fd or a
 * negative MS_E* code, with a reason in why. */
int msc_tcp_connect(const net_addr_t *a, uint32_t timeout_ms, char *why, size_t whylen);

#endif
