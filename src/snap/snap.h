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

typedef struct snap {
    conf_t *conf;
    zone_db_t *zones;
    uint8_t nsid[128]; /* NSID option payload; nsid_len 0 = NSID off */
    uint16_t nsid_len;
    uint16_t udp_max; /* our UDP payload size (conf udp-max-payload) */
    uint64_t generation;
} snap_t;

/* Build a snapshot from a config: loads every zone. Takes ownership of conf in all cases.
 * On error returns MS_ECONF/MS_EPARSE/MS_EIO and writes "file:line: reason" to err. */
int snap_build(conf_t *conf, snap_t **out, char *err, size_t errlen) MS_WUR;
void snap_free(snap_t *s);

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
