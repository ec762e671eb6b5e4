/* snap.h: the snapshot module: the one immutable object the DNS threads read.
 *
 * A snapshot bundles the validated config, the loaded zones and everything derived from
 * them that the answer path needs (NSID bytes, CHAOS answers; later the load-balanced names
 * and their pre-rendered answers). One writer (the main thread) builds a new snapshot on
 * start, reload or state change and publishes it with liburcu; readers bracket each batch
 * of packets with snap_read_lock/unlock and never block the writer. The old snapshot is
 * freed after a grace period (call_rcu), so a reader never sees it disappear. */
#ifndef MS_SNAP_H
#define MS_SNAP_H

#include "conf/conf.h"
#include "zone/zone.h"

/* One way to answer a load-balanced name: its A and AAAA RRsets, in the zone store's RRset
 * format (zone_rrset_t), so answering costs what answering a static name costs. NULL: no
 * address of that family among the sites. */
typedef struct {
    uint8_t *a;
    uint8_t *aaaa;
} snap_rrs_t;

#define SNAP_WEIGHT_SLOTS 64

/* The answers for one client class (see policy.h): the sites in order, and for order
 * weighted one variant per possible first site with a table of 64 slots drawn per query. */
typedef struct {
    snap_rrs_t *var;
    uint8_t n_var;
    uint8_t slot[SNAP_WEIGHT_SLOTS]; /* variant index per slot (weighted) */
    size_t order[64];                /* site indices of variant 0, in answer order */
    size_t n_order;
    uint64_t set; /* the sites in the answer */
} snap_class_t;

/* A load-balanced name, pre-rendered for every client class whenever site state changes. */
typedef struct snap_lb {
    struct snap_lb *next; /* hash chain */
    uint32_t hash;
    uint8_t name_len;
    uint8_t name[DNS_MAX_NAME]; /* lower-cased wire name */
    const zone_t *zone;
    const conf_name_t *conf;
    bool locality;     /* the order depends on the client: classify per query */
    snap_class_t *cls; /* n_cls classes; class 0 = no locality information */
    unsigned n_cls;
    uint8_t *a; /* class 0, variant 0 (aliases, not owned) */
    uint8_t *aaaa;
    uint32_t ttl;        /* ttl, or ttl-min while a site's state may change soon */
    bool servfail;       /* no site available and fallback servfail */
    uint64_t last_set;   /* bit i = conf site i in the last non-empty available set */
    uint64_t answer_set; /* the sites in class 0's answer */
} snap_lb_t;

/* The inputs a snapshot's answers depend on, besides config and zones. Arrays have
 * conf->n_sites entries; NULL arrays mean: every site up, nothing known, nothing changing. */
typedef struct {
    const bool *site_up;
    const double *site_load; /* 0..1, < 0 unknown */
    const double *site_rtt;  /* ms, < 0 unknown */
    const bool *site_changing;
    const bool *site_up_safe; /* availability for names with partition: safety (B3); NULL:
                               * same as site_up */
    const bool *site_drained; /* soft-drained by an operator: last in every answer */
} snap_state_t;

typedef struct snap_shared snap_shared_t; /* config + zones, shared between snapshots */
typedef struct pol_classifier pol_classifier_t;

typedef struct snap {
    conf_t *conf;
    zone_db_t *zones;
    snap_shared_t *shared;
    uint8_t nsid[128]; /* NSID option payload; nsid_len 0 = NSID off */
    uint16_t nsid_len;
    uint16_t udp_max; /* our UDP payload size (conf udp-max-payload) */
    uint64_t generation;
    snap_lb_t *lb; /* n_lb entries, conf->names order */
    size_t n_lb;
    snap_lb_t **lb_table;
    uint32_t lb_mask;
    const pol_classifier_t *classifier; /* client classes for locality (owned by shared) */
} snap_t;

/* Build a snapshot from a config: loads every zone, checks and renders the load-balanced
 * names (every site up). Takes ownership of conf in all cases. On error returns
 * MS_ECONF/MS_EPARSE/MS_EIO and writes "file:line: reason" to err. */
int snap_build(conf_t *conf, snap_t **out, char *err, size_t errlen) MS_WUR;
/* A new snapshot sharing cur's config and zones, with the load-balanced names rendered for
 * state st (main thread). "last" fallbacks remember cur's last available sets. */
snap_t *snap_derive(const snap_t *cur, const snap_state_t *st);
void snap_free(snap_t *s);

/* The load-balanced name `lname` (lower-cased wire, len bytes), or NULL. */
const snap_lb_t *snap_lb_find(const snap_t *s, const uint8_t *lname, size_t len);
/* The same with the name's zone_name_hash() already computed (the answer path's). */
const snap_lb_t *snap_lb_find_hashed(const snap_t *s, const uint8_t *lname, size_t len,
                                     uint32_t hash);

/* Publish s as the current snapshot (main thread only). The previous one is freed after
 * every reader has left its read-side section. */
void snap_publish(snap_t *s);
/* Drop the current snapshot at shutdown, after the reader threads have stopped. */
void snap_shutdown(void);

/* Reader side (DNS threads). register/unregister once per thread. */
void snap_reader_register(void);
void snap_reader_unregister(void);
void snap_read_lock(void);
void snap_read_unlock(void);
/* The current snapshot; only valid between snap_read_lock and snap_read_unlock (or on the
 * writer thread). NULL before the first publish. */
const snap_t *snap_current(void);

#endif
