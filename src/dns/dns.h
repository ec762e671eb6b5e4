/* dns.h: the dns module's interface: answering one DNS message from a snapshot (pure, no
 * I/O, no allocation), and the UDP/TCP server threads that feed it. */
#ifndef MS_DNS_H
#define MS_DNS_H

#include "snap/snap.h"

/* DNS response codes (RFC 1035, RFC 6891 for the extended ones). */
enum {
    RCODE_NOERROR = 0,
    RCODE_FORMERR = 1,
    RCODE_SERVFAIL = 2,
    RCODE_NXDOMAIN = 3,
    RCODE_NOTIMP = 4,
    RCODE_REFUSED = 5,
    RCODE_NOTAUTH = 9,
    RCODE_BADVERS = 16,
    DNS_RCODE_SLOTS = 17
};

/* Query types counted one by one; the rest (and queries without a readable question) go
 * to DNS_QTYPE_OTHER. dns_qtype_slot() maps a type to its slot, dns_qtype_slot_name() names
 * a slot ("A", ..., "other"). */
enum { DNS_QTYPE_OTHER = 12, DNS_QTYPE_SLOTS = 13 };
unsigned dns_qtype_slot(uint16_t qtype);
const char *dns_qtype_slot_name(unsigned slot);

/* Per-thread counters, written only by their owner thread (relaxed stores), read by anyone
 * with relaxed loads. */
typedef struct {
    uint64_t queries;
    uint64_t dropped; /* malformed beyond a reply, QR=1, or not sent */
    uint64_t truncated;
    uint64_t rcode[DNS_RCODE_SLOTS];
    uint64_t qtype[DNS_QTYPE_SLOTS]; /* answered queries by type (dns_qtype_slot) */
    uint64_t udp, tcp;
    uint64_t tcp_refused; /* connections over the limit */
} dns_stats_t;

#define DNS_STAT_INC(st, field)                                                                    \
    __atomic_store_n(&(st)->field, __atomic_load_n(&(st)->field, __ATOMIC_RELAXED) + 1,            \
                     __ATOMIC_RELAXED)

/* Largest response we ever build (TCP). */
#define DNS_MAX_MSG 65535

/* Answer the query q (qlen bytes) from snapshot s into resp (resp_cap >= 512; for TCP pass
 * DNS_MAX_MSG). Returns the response length, or 0 when the query must be dropped (too short
 * to carry an ID, or a response). Safe on any input bytes. `st` may be NULL. */
size_t dns_answer(const snap_t *s, const uint8_t *q, size_t qlen, uint8_t *resp, size_t resp_cap,
                  bool tcp, dns_stats_t *st);
/* The same, with the client's address (for locality ordering without ECS); may be NULL. */
size_t dns_answer_client(const snap_t *s, const uint8_t *q, size_t qlen, uint8_t *resp,
                         size_t resp_cap, bool tcp, const net_addr_t *client, dns_stats_t *st);

/* ---- server ---- */
typedef struct dns_server dns_server_t;

/* Open every listen socket (UDP: udp_threads SO_REUSEPORT sockets per address; TCP: one per
 * TCP thread per address) and start the threads. The snapshot must be published first. */
int dns_server_start(const conf_t *conf, dns_server_t **out) MS_WUR;
/* Stop the threads (within about a second), close sockets, free. Accepts NULL. */
void dns_server_stop(dns_server_t *srv);
/* Sum of all threads' counters. */
void dns_server_stats(const dns_server_t *srv, dns_stats_t *sum);

#endif
