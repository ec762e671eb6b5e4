/* client.h: libmultisite's client failover interface (feature M13), prefix msc_.
 *
 * A program that talks to a service behind multisite connects to NAME:PORT through this
 * library instead of getaddrinfo() + connect(). The library
 *
 *   - resolves NAME itself, over UDP (TCP when the reply is truncated), either asking the
 *     authoritative multisited servers directly (opts.servers: the order they answer is the
 *     order we use, exactly) or the recursive resolvers of /etc/resolv.conf (which may
 *     reorder: see docs/client.md);
 *   - keeps the DNS order: glibc's getaddrinfo() sorts by RFC 6724 and would undo the order
 *     multisited chose, so it is not used;
 *   - connects to the first address and stays on it ("sticky") across calls until it fails:
 *     a connect error, a connect timeout, or a failure the caller reports (I/O error, reset,
 *     I/O timeout, HTTP 502/503/504) moves it to the next address;
 *   - resolves again when the answer's TTL runs out, and then starts from the top of the new
 *     order. Until then it never goes back to an address it left.
 *
 * Thread contract: an msc_t and its connections belong to one thread at a time (no locks
 * inside); use one msc_t per thread, or lock around it. Different msc_t are independent.
 * Functions returning int return 0 or a negative MS_E* code (util/util.h, err_str());
 * msc_last_error() then says what happened, address by address. */
#ifndef MS_CLIENT_H
#define MS_CLIENT_H

#include "util/util.h"

#define MSC_MAX_SERVERS 8  /* DNS servers we ask, in order */
#define MSC_MAX_ADDRS   32 /* addresses kept per name: far more sites than anyone runs */
#define MSC_MAX_NAMES   16 /* names cached per msc_t; the least recently used is dropped */

typedef struct msc msc_t;
typedef struct msc_conn msc_conn_t;

/* Events the library reports as they happen (resolution, failures, moves), for a CLI or a
 * log. Called on the caller's thread, inside the msc_* call. */
typedef void (*msc_event_fn)(void *arg, const char *msg);

typedef struct {
    /* DNS servers to ask directly, "ADDR" or "ADDR:PORT" (port 53 by default): normally the
     * authoritative multisited of every site. NULL/0: the nameservers of resolv_conf. */
    const char *const *servers;
    size_t n_servers;
    const char *resolv_conf;     /* NULL: /etc/resolv.conf (used only when n_servers is 0) */
    int family;                  /* AF_INET, AF_INET6 or AF_UNSPEC (0: both, see below) */
    uint32_t connect_timeout_ms; /* 0: 1000 */
    uint32_t io_timeout_ms;      /* each read/write on a connection; 0: 5000 */
    uint32_t dns_timeout_ms;     /* per DNS server and query; 0: 1000 */
    uint32_t max_ttl_s;          /* cap on a DNS TTL; 0: 300 */
    unsigned max_attempts;       /* addresses tried per call; 0: all of them */
    msc_event_fn on_event;       /* may be NULL */
    void *event_arg;
} msc_opts_t;

/* With family AF_UNSPEC both A and AAAA are asked for and merged rank by rank, IPv6 first
 * (AAAA[0], A[0], AAAA[1], A[1], ...): multisited lists every site in the same order in
 * both, so the merge keeps the site order. */

/* A new client. Copies what it needs from opts (NULL: all defaults). Returns NULL and, if
 * err is not NULL, a reason in err when the options are invalid (bad server address, no
 * nameserver in resolv.conf). Free with msc_free(). */
msc_t *msc_new(const msc_opts_t *opts, char *err, size_t errlen);
void msc_free(msc_t *m); /* accepts NULL; close every connection first */

/* Connect to NAME:PORT (NAME may also be an IPv4/IPv6 literal): the current sticky address
 * first, then the following ones in DNS order, each at most once. On success *out is a
 * connected, blocking socket whose reads and writes time out after io_timeout_ms (they
 * then fail with EAGAIN). MS_ENOENT: the name has no address; MS_EIO: every address
 * failed (msc_last_error() lists why). */
int msc_connect(msc_t *m, const char *name, uint16_t port, msc_conn_t **out) MS_WUR;
int msc_conn_fd(const msc_conn_t *c);
const net_addr_t *msc_conn_addr(const msc_conn_t *c);
/* The caller saw this address fail (I/O error, reset, timeout, HTTP 502/503/504): the next
 * msc_connect() for the name starts at the following address. `why` is for the event log.
 * Does not close the connection. */
void msc_report_failure(msc_conn_t *c, const char *why);
void msc_close(msc_conn_t *c); /* closes the socket and frees c; accepts NULL */

/* What went wrong in the last failed call, e.g. "127.0.0.2:80: connection refused;
 * 127.0.0.3:80: connect timeout". Valid until the next call on m. */
const char *msc_last_error(const msc_t *m);

/* ---- a small HTTP/1.1 GET on top of msc_connect ---- */

#define MSC_HTTP_MAX_HEADER (16 * 1024)   /* status line + headers */
#define MSC_HTTP_MAX_BODY   (1024 * 1024) /* bigger bodies fail the request */

typedef struct {
    int status;          /* HTTP status code */
    net_addr_t addr;     /* the address that answered */
    char served_by[128]; /* X-Served-By header ("" when absent), control bytes replaced */
    char cookie[256];    /* NAME=VALUE of the first Set-Cookie ("" when none) */
    char *body;          /* NUL-terminated, heap; free with msc_http_result_free() */
    size_t body_len;
    unsigned attempts;   /* addresses tried, including the one that answered */
    uint32_t elapsed_ms; /* whole call, failures included */
} msc_http_result_t;

/* GET url ("http://NAME[:PORT]/path"). A connect failure, an I/O error, timeout or reset,
 * a malformed or oversized response, and status 502/503/504 count as failures of that
 * address: it is reported and the next address is tried, each at most once. The sticky
 * choice carries over to later calls. Returns 0 with *out filled (any other status is a
 * success of the transport: the caller judges 4xx and 500); MS_EINVAL for a bad URL;
 * MS_EIO or MS_ENOENT as msc_connect. */
int msc_http_get(msc_t *m, const char *url, msc_http_result_t *out) MS_WUR;
/* The same with extra request headers, each "Name: value" (e.g. "Cookie: msid=..."), at
 * most 16 and 4 KiB together; MS_EINVAL for one without a colon or with a control byte. */
int msc_http_get_with(msc_t *m, const char *url, const char *const *headers, size_t n_headers,
                      msc_http_result_t *out) MS_WUR;
void msc_http_result_free(msc_http_result_t *r); /* frees body; accepts NULL */

#endif
