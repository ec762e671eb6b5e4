/* health.h: the health module's interface: is each site able to serve?
 *
 * Probes run on the control-plane libuv loop (main thread), never on the DNS threads:
 *   - TCP connect to each web server;
 *   - HTTP(S) requests through libcurl's multi interface driven by the loop, with expected
 *     status and keyword(s) found anywhere in the body (scanned across chunk boundaries);
 *     the database check is such a request for a page a web server executes against the
 *     site's database;
 *   - HAProxy's runtime API (`show stat` over a unix or TCP socket): which servers of the
 *     web (and optional database-check) backend are UP, and sessions against limits as load.
 * Each probe target has a verdict tracker with rise/fall thresholds (hysteresis); a refused
 * or reset connection is re-probed at once instead of waiting for the next interval.
 *
 * Site verdict = at least min-web-up of the web servers up AND the database check passing
 * (when configured) AND, when a load balancer is configured, it reports at least one web
 * backend server up (and the db backend up, when configured). Every transition is logged
 * with its reasons, e.g.  site eu DOWN: 0/3 web servers answer; db page lacks "db-eu-1"
 *
 * A site whose monitor is "heartbeat" gets no probes here: probed=false, state UNKNOWN.
 *
 * Threading: everything here runs on the loop's thread, the change callback too; the
 * health_site_t values may be read there at any time (copy them into a snapshot for other
 * threads). The process must ignore SIGPIPE (libuv writes with write(2); a load balancer
 * that closes early would otherwise kill it); multisited does. docs/health.md has the probe
 * details, the state machine and the defaults. */
#ifndef MS_HEALTH_H
#define MS_HEALTH_H

#include "conf/conf.h"

#include <uv.h>

typedef enum { HEALTH_UNKNOWN = 0, HEALTH_UP = 1, HEALTH_DOWN = 2 } health_state_t;

/* Probe latency histogram: loopback connects take well under 1 ms, a WAN HTTP request with
 * TLS some hundreds; the probe timeout bounds the top (defaults of a few seconds). */
#define HEALTH_RTT_BUCKETS 12

typedef struct {
    health_state_t state; /* the site verdict: DOWN as soon as the results so far decide it,
                             UP once every input has passed, UNKNOWN until then */
    bool probed;          /* false: monitor heartbeat, no probes here (state UNKNOWN) */
    bool changing;        /* some input is inside a rise/fall window (state may flip soon) */
    char reason[384];     /* human text of the last verdict, with counts and causes */
    unsigned web_up, web_total;
    health_state_t db;    /* UNKNOWN when not configured */
    health_state_t lb;    /* UNKNOWN when not configured */
    double load;          /* from the load balancer: sessions/limit over its UP web servers
                             (0..1); a plain session count when no server has a limit;
                             < 0 unknown (no load balancer, or no report yet) */
    double rtt_ms;        /* EWMA (weight 0.3) of successful web probes' times (TCP connect or
                             whole HTTP request), or of the db page's when there are no web
                             servers; < 0 unknown */
    uint64_t since_ms;    /* wall clock ms of the last verdict transition */
    uint64_t transitions; /* number of verdict transitions */
    /* Histogram of the samples rtt_ms averages (one per successful web probe, or db page
     * probe when there are no web servers): rtt_hist[k] counts samples <= the k-th bound of
     * health_rtt_bounds_ms and above the previous one; the last slot counts the rest. Kept
     * across reloads like transitions (for the /metrics endpoint). */
    uint64_t rtt_hist[HEALTH_RTT_BUCKETS + 1];
    uint64_t rtt_count;
    double rtt_sum_ms;
} health_site_t;

/* Upper bounds (ms) of the rtt_hist slots, ascending. */
extern const double health_rtt_bounds_ms[HEALTH_RTT_BUCKETS];

typedef struct health health_t;

/* Called on the loop thread, from a clean stack (a 0 ms timer: never inside a probe's
 * callback; several changes in one loop iteration make one call), after something a snapshot
 * shows changed for one or more sites: state, changing, reason, web_up, db, lb, or load by
 * more than 0.01. rtt_ms alone does not trigger it. The callback may call health_free. */
typedef void (*health_cb_t)(void *ud);

/* Start probing every site of conf on loop (first probes at once). Copies what it needs from
 * conf (conf may be freed afterwards). If prev is given (a reload), targets with the same
 * site and name keep their state and counters and sites keep their verdict, since_ms and
 * transitions, so a reload does not flap verdicts; prev is not modified (free it after).
 * Returns 0, MS_EINVAL (no loop or conf) or MS_ENOMEM/MS_EIO (libcurl could not start; what
 * was set up is being closed: keep running the loop). */
int health_new(uv_loop_t *loop, const conf_t *conf, const health_t *prev, health_cb_t cb, void *ud,
               health_t **out) MS_WUR;
/* Stop probes and release. Handles close asynchronously: the caller keeps running the
 * loop (uv_run) until they are gone. Accepts NULL. */
void health_free(health_t *h);

size_t health_site_count(const health_t *h);
/* Operator drain of one web server of site i (by its configured name): it counts as not up
 * in the site's verdict, whatever its probes say. Returns MS_ENOENT for an unknown name. */
int health_set_web_drained(health_t *h, size_t site, const char *web, bool drained) MS_WUR;
/* Site i, in conf order (the same index as conf_t.sites); NULL when out of range. The pointer
 * stays valid until health_free. */
const health_site_t *health_site(const health_t *h, size_t i);

#endif
