/* status.h: the status HTTP endpoint (feature B6 of PRODUCT.md; docs/status.md):
 *
 *   GET /status    the cluster as JSON: what `multisitectl status --json` prints, plus the
 *                  DNS counters and, when configured, multisite-syncd's replication status
 *   GET /metrics   Prometheus text format 0.0.4
 *   GET /          a live dashboard (one page, inline CSS and JS, no external assets) that
 *                  polls /status every second
 *
 * Threads: libmicrohttpd serves connections on its own thread and never touches loop state.
 * The loop thread renders /status and /metrics into fresh buffers (every 500 ms, and within
 * 100 ms of a new snapshot) and swaps them in under a mutex; a request copies the current
 * buffer under that mutex. So a request sees data at most ~500 ms old and never blocks the
 * loop. Only GET and HEAD are served (405 otherwise), other paths get 404; connections,
 * request sizes and idle times are bounded (see server.c). */
#ifndef MS_STATUS_H
#define MS_STATUS_H

#include "cluster/cluster.h"
#include "dns/dns.h"

#include <uv.h>

typedef struct status_server status_server_t;

/* Listen on conf->status_listen (ADDR:PORT; must not be "") and start rendering from c and
 * dns (dns may be NULL: no DNS counters). conf->sync_status_socket, when set, is polled once a
 * second. Both c and dns must outlive the server. Returns 0, or MS_EIO (cannot listen; logged).
 * Loop thread only. */
int status_server_new(uv_loop_t *loop, const conf_t *conf, cluster_t *c, dns_server_t *dns,
                      status_server_t **out) MS_WUR;
/* Stop the HTTP thread (in-flight requests finish first) and release; the loop handles close
 * asynchronously (keep running the loop). Call before freeing the cluster. Accepts NULL. */
void status_server_free(status_server_t *s);

/* The dashboard page (dashboard.c), NUL-terminated. */
extern const char status_dashboard_html[];

/* Append the DNS counters as Prometheus text (render.c). */
void status_dns_metrics(const dns_stats_t *st, buf_t *out);
/* Append s as a JSON string (quotes, backslashes and control bytes escaped). */
void status_json_str(buf_t *out, const char *s);
/* Append the DNS counters as a JSON object. */
void status_dns_json(const dns_stats_t *st, buf_t *out);
/* multisite-syncd's last status document, if fresh (loop thread). For multisitectl status. */
bool status_sync_doc(const status_server_t *s, const uint8_t **data, size_t *len);

/* From multisite-syncd's status JSON (its own format, docs/sync.md): append Prometheus
 * text for replication lag, backlog, conflicts, quarantine. Unparseable input adds nothing. */
void status_sync_metrics(const char *json, size_t len, buf_t *out);

#endif
