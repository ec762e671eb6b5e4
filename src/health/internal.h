/* internal.h: the health module's private parts, shared by its files and its unit tests:
 * the verdict tracker and site combiner (verdict.c), the streaming keyword scanner (scan.c)
 * and the HAProxy `show stat` CSV parser (haproxy.c). All three are pure: no I/O, no clock of
 * their own (time is passed in), so the tests drive them with tables and a fake clock. */
#ifndef MS_HEALTH_INTERNAL_H
#define MS_HEALTH_INTERNAL_H

#include "health.h"

/* ---- verdict tracker (verdict.c) ----
 *
 * One per probe target (a web server, the database page, the load balancer):
 *
 *                first result ok                    first result failed
 *     UNKNOWN ─────────────────────▶ UP   UNKNOWN ─────────────────────▶ DOWN
 *
 *            `fall` consecutive failures
 *        ┌──────────────────────────────────┐
 *        │                                  ▼
 *        UP ◀─────────────────────────────── DOWN
 *            `rise` consecutive successes
 *
 * `run` counts the consecutive results that disagree with the state; a result that agrees
 * resets it. While run > 0 the target is "changing" (inside a rise or fall window). A
 * failure that is a refused or reset connection asks for an immediate re-probe while the
 * target is still UP, so `fall` refusals take milliseconds rather than `fall` intervals; once
 * DOWN the normal interval applies (no busy loop against a dead server). */
typedef struct {
    health_state_t state;
    unsigned rise, fall;
    unsigned run;        /* consecutive results against the state */
    char reason[160];    /* the last failure's reason ("" before any failure) */
    uint64_t changed_ms; /* clock of the last state change */
    uint64_t results;    /* number of results recorded */
} hv_t;

void hv_init(hv_t *v, unsigned rise, unsigned fall);
/* Record a probe result at now_ms. `refused`: the failure was a refused or reset connection.
 * Returns true when the state changed. *reprobe (may be NULL) is set when the target should
 * be probed again at once instead of after its interval. */
bool hv_record(hv_t *v, bool ok, bool refused, const char *reason, uint64_t now_ms, bool *reprobe);
/* Set the state directly (an authoritative report, e.g. from the load balancer, which applies
 * its own rise/fall). Returns true when the state changed. */
bool hv_set(hv_t *v, bool ok, const char *reason, uint64_t now_ms);
bool hv_changing(const hv_t *v);
const char *health_state_str(health_state_t s); /* "UNKNOWN", "UP", "DOWN" */

/* The inputs of one site's verdict. */
typedef struct {
    const char *name;
    const hv_t *v;
    bool drained; /* taken out by the operator: counts as not up, whatever its probes say */
} hv_web_t;

typedef struct {
    unsigned min_web; /* k of n */
    size_t n_web;
    const hv_web_t *web;
    const hv_t *db; /* NULL: no database check */
    const hv_t *lb; /* NULL: no load balancer */
    /* the load balancer's last report (when lb is given and lb_report): */
    bool lb_report;
    unsigned lb_web_up, lb_web_total;
    double load;
} hv_site_in_t;

/* Combine the inputs into out's state, changing, reason, web_up, web_total, db, lb and load
 * (rtt_ms, since_ms and transitions are left alone). The state is DOWN as soon as one
 * failed input decides it, UP when every input is known and passes, UNKNOWN otherwise. */
void hv_site_eval(const hv_site_in_t *in, health_site_t *out);

/* ---- streaming keyword scanner (scan.c) ----
 * Finds every keyword anywhere in a body fed in chunks of any size, matches spanning chunk
 * boundaries included (a KMP automaton per keyword, so overlapping prefixes such as "aab" in
 * "aaab" are found). Case-sensitive, as HAProxy's `http-check expect string`. Memory is fixed
 * at init; the body is never stored. */
typedef struct {
    size_t n;
    char **kw;
    size_t *len;
    size_t **fail; /* KMP failure function per keyword */
} hs_kw_t;

void hs_kw_init(hs_kw_t *k, const char *const *kw, size_t n);
void hs_kw_deinit(hs_kw_t *k);

typedef struct {
    const hs_kw_t *k;
    size_t *state; /* matched prefix length per keyword */
    bool *found;
    size_t n_found;
    size_t total; /* bytes fed so far (counted up to cap + 1) */
    size_t cap;
} hs_scan_t;

enum { HS_MORE = 0, HS_DONE = 1, HS_OVER = 2 };
void hs_scan_init(hs_scan_t *s, const hs_kw_t *k, size_t cap);
void hs_scan_deinit(hs_scan_t *s);
/* Feed a chunk. HS_DONE once every keyword was found (further input is ignored), HS_OVER
 * when the body exceeds cap bytes before that (bytes past the cap are not scanned), HS_MORE
 * otherwise. */
int hs_scan_feed(hs_scan_t *s, const void *p, size_t n);
/* Write `"kw1", "kw2"` of the keywords not found (at most len bytes). */
void hs_scan_missing(const hs_scan_t *s, char *out, size_t len);

/* ---- HAProxy `show stat` CSV (haproxy.c) ---- */
typedef struct {
    bool web_found;             /* the web backend appeared */
    unsigned web_up, web_total; /* its servers (FRONTEND/BACKEND rows excluded) */
    char web_down[192];         /* "web1 DOWN L4CON, web2 MAINT" for servers not UP */
    bool db_found;
    health_state_t db; /* db backend: UP when one of its servers is UP */
    char db_detail[96];
    double load; /* see hp_parse_stat */
    unsigned rows;
} hp_stat_t;

/* Parse `show stat` output: a header line "# pxname,svname,..." (columns found by name), one
 * row per proxy or server, terminated lines. Reports the servers of web_be (UP: status "UP",
 * "UP n/m" going down, or "no check") and the state of db_be (may be NULL).
 * load = sum(scur) / sum(slim) over the web backend's UP servers that have a limit (slim > 0);
 * when none has a limit, load = sum(scur) over its UP servers (a count, not a fraction).
 * Returns 0, or MS_EPARSE with a reason in err (missing header or column, truncated line,
 * bad number, too many columns). A missing backend is not a parse error: web_found=false. */
int hp_parse_stat(const char *data, size_t len, const char *web_be, const char *db_be,
                  hp_stat_t *out, char *err, size_t errlen);

/* ---- small helpers (verdict.c) ---- */
/* Append printf text to a fixed buffer, ending in "..." when it does not fit. */
void hs_appendf(char *buf, size_t size, const char *fmt, ...) MS_PRINTF(3, 4);

/* ---- probes and their scheduling (health.c, probe_stream.c, probe_http.c) ---- */
#include <curl/curl.h>

#define HT_MAX_BODY  (1u << 20) /* HTTP body scanned at most; the DB page is small */
#define HT_MAX_STATS (4u << 20) /* `show stat` read at most; ~1 KiB per server line */

typedef enum { HT_WEB, HT_DB, HT_LB } ht_kind_t;

typedef struct {
    bool ok;
    bool refused; /* refused or reset connection: worth an immediate re-probe */
    char reason[160];
    bool lb_report; /* LB: a `show stat` was read and parsed into stat */
    hp_stat_t stat;
} ht_result_t;

typedef struct ht_target ht_target_t;
struct ht_target {
    health_t *h;
    size_t site;
    ht_kind_t kind;
    char *name; /* web server name, "db" or "lb" */
    hv_t v;
    unsigned interval_ms, timeout_ms;
    /* web servers and the database page */
    unsigned type;   /* CONF_PROBE_* */
    net_addr_t addr; /* TCP probe: where to connect */
    char *url;
    char *connect_to;  /* CURLOPT_CONNECT_TO entry, or NULL */
    char *host_header; /* "Host: ..." or NULL */
    unsigned expect_status;
    bool tls_verify;
    hs_kw_t kw;
    /* load balancer */
    char *stats; /* "unix:/path" or "ADDR:PORT" */
    char *web_be, *db_be;
    bool lb_report; /* a report was read; the next fields hold the last one */
    unsigned lb_up, lb_total;
    double load;
    /* scheduling: the timer starts the next probe, or times out the one in flight */
    uv_timer_t timer;
    void *attempt; /* in-flight probe state, NULL when idle */
    bool grace;    /* the timeout fired once; it ends the probe after one more I/O poll */
    uint64_t started_ns;
};

typedef struct {
    char *name;
    unsigned min_web;
    size_t n_web;
    ht_target_t **web;
    hv_web_t *web_in;
    ht_target_t *db, *lb;
    health_site_t out;
} ht_site_t;

typedef struct ht_sock ht_sock_t; /* a socket libcurl asked us to watch */

struct health {
    uv_loop_t *loop;
    health_cb_t cb;
    void *ud;
    size_t n_sites;
    ht_site_t *sites;
    size_t n_targets;
    ht_target_t **targets;
    CURLM *multi;
    uv_timer_t curl_timer;
    ht_sock_t *socks; /* list, so health_free can close what libcurl left open */
    uv_timer_t notify_timer;
    bool notify_pending;
    bool closing;
    unsigned handles; /* open uv handles; the struct is freed when the last one closes */
};

/* health.c */
void ht_done(ht_target_t *t, ht_result_t *r); /* a probe finished; t->attempt is NULL */
void ht_handle_closed(uv_handle_t *hd);       /* close callback for handles with data = h */
void ht_maybe_free(health_t *h);
/* probe_stream.c: TCP connect and the HAProxy runtime API */
void ht_stream_start(ht_target_t *t);
void ht_stream_abort(ht_target_t *t, bool report); /* report: ht_done with a timeout */
/* probe_http.c */
int ht_http_init(health_t *h) MS_WUR;
void ht_http_deinit(health_t *h);
void ht_http_start(ht_target_t *t);
void ht_http_abort(ht_target_t *t, bool report);
/* A libuv error as probe reason text ("connection refused"). */
const char *ht_uv_reason(int status);

#endif
