/* cluster.h: the cluster module: what multisited knows about every site, and the snapshots
 * that follow from it.
 *
 * It owns the site probes (health) and the heartbeats (heartbeat), merges them per site by
 * the site's monitor setting, tells the other sites about our own site through heartbeats,
 * and publishes a new snapshot whenever an input of the answers changes:
 *
 *   monitor probe      available = our probes do not say DOWN
 *   monitor heartbeat  available = heartbeats alive and the site reports UP
 *   monitor both       two independent signals (B3); when they disagree (a partition),
 *                      each name's `partition` decides: availability keeps the site,
 *                      safety leaves it out
 *
 * Everything runs on the main thread's libuv loop. */
#ifndef MS_CLUSTER_H
#define MS_CLUSTER_H

#include "snap/snap.h"

#include <uv.h>

typedef struct cluster cluster_t;

/* Start probes and heartbeats for the config of the current snapshot. */
int cluster_new(uv_loop_t *loop, cluster_t **out) MS_WUR;
/* After a reload published a new snapshot: restart probes (keeping the state of targets
 * that did not change) and heartbeats (only if their settings changed), then republish. */
int cluster_reload(cluster_t *c) MS_WUR;
/* Stop; handles close asynchronously (keep running the loop). Accepts NULL. */
void cluster_free(cluster_t *c);

/* Operator commands (multisitectl; docs/ctl.md): status [--json], drain SITE [--hard],
 * undrain SITE, force SITE up|down|clear [--for DURATION], explain NAME CLIENT_IP
 * [--ecs SUBNET]. Writes the reply text into out; returns a CTL_* status. Drain and force
 * are persisted in server.state-file (when set) and survive restarts; draining our own site
 * is carried to the other sites in our heartbeats. */
unsigned cluster_ctl(cluster_t *c, size_t argc, char *const *argv, buf_t *out);

/* Append the cluster's metrics in Prometheus text format (docs/status.md) to out. Loop
 * thread only. */
void cluster_metrics(cluster_t *c, buf_t *out);

#endif
