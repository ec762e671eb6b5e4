/* internal.h: private to the cluster module. */
#ifndef MS_CLUSTER_INTERNAL_H
#define MS_CLUSTER_INTERNAL_H

#include "cluster.h"

#include "health/health.h"
#include "heartbeat/heartbeat.h"

#define MAX_SITES 64

enum { ADMIN_DRAIN_NONE = 0, ADMIN_DRAIN_SOFT = 1, ADMIN_DRAIN_HARD = 2 };
enum { ADMIN_FORCE_NONE = 0, ADMIN_FORCE_UP = 1, ADMIN_FORCE_DOWN = 2 };

/* Operator state of a site, kept by site name so it survives reloads and restarts. */
typedef struct {
    char site[64];
    int drain;
    int force;
    uint64_t force_until; /* wall ms; 0 = until cleared */
    int last;             /* last known availability: 0 unknown, 1 up, 2 down (persisted, so
                           * a restart answers from it until fresh results arrive) */
} admin_t;

struct cluster {
    uv_loop_t *loop;
    health_t *health;
    hb_t *hb;
    size_t hb_n_sites;
    admin_t admin[MAX_SITES];
    size_t n_admin;
    uv_timer_t expiry; /* force --for expiry */
    bool admin_loaded;
    double pub_load[MAX_SITES]; /* load and rtt in the last published snapshot */
    double pub_rtt[MAX_SITES];
};

/* Everything known about site i, merged. */
typedef struct {
    bool up;
    double load, rtt_ms;
    const health_site_t *hs; /* NULL: not probed */
    const hb_site_t *hb;     /* NULL: no heartbeats */
} site_view_t;

void cluster_site_view(cluster_t *c, size_t i, site_view_t *out);
void cluster_publish(cluster_t *c, bool force);

admin_t *admin_find(cluster_t *c, const char *site, bool create);
void admin_save(cluster_t *c);
void admin_load(cluster_t *c, const char *path);

#endif
