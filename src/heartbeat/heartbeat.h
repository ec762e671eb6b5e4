/* heartbeat.h: the heartbeat module's interface: authenticated site-to-site heartbeats and
 * the availability of remote sites that follows from them (features M5, B3 of PRODUCT.md).
 *
 * Every multisited sends, several times per period, a small UDP datagram to the heartbeat
 * address of every multisited of every other site. It carries the sender's own site verdict
 * (state + reason code), load, response time and a digest of the shared part of the config,
 * and is authenticated with HMAC-SHA256 under a pre-shared key (docs/heartbeat.md has the
 * byte diagram and the reasoning behind the numbers).
 *
 * A remote site is
 *   alive      when some sender of it delivered a valid heartbeat in each of the last N
 *              complete periods (periods are the receiver's monotonic clock cut into
 *              period_ms slices; the current, partial period never counts);
 *   available  when it is alive and some alive sender of it reports HEALTH_UP.
 *
 * Threading: everything runs on the loop thread given to hb_new(); the callback too. A
 * pointer returned by hb_site() stays valid until hb_reload() or hb_free(); its contents
 * change as heartbeats arrive (copy what you keep). hb_keygen() and hb_conf_digest() may be
 * called from any thread. */
#ifndef MS_HEARTBEAT_H
#define MS_HEARTBEAT_H

#include "conf/conf.h"
#include "health/health.h"

#include <uv.h>

/* Reason codes carried with the verdict. Unknown codes from newer peers are kept as numbers. */
enum {
    HB_REASON_OK = 0,      /* up, nothing to say */
    HB_REASON_WEB = 1,     /* too few web servers answer */
    HB_REASON_DB = 2,      /* the database check fails */
    HB_REASON_LB = 3,      /* the load balancer reports the backends down */
    HB_REASON_DRAINED = 4, /* taken out by the operator */
    HB_REASON_STARTING = 5 /* no verdict yet */
};
/* "ok", "web", ...; "code N" (into buf) for unknown codes. buf: at least 16 bytes. */
const char *hb_reason_str(uint8_t reason, char *buf, size_t len);

/* What our heartbeats say about our own site. */
typedef struct {
    health_state_t state;
    uint8_t reason; /* HB_REASON_* */
    double load;    /* 0..1; < 0 unknown */
    double rtt_ms;  /* response time of our site's web tier; < 0 unknown */
} hb_self_t;

/* What we know of a remote site. */
typedef struct {
    bool alive;              /* a valid heartbeat from one sender in each of the last N periods */
    bool available;          /* alive and some alive sender reports HEALTH_UP */
    health_state_t reported; /* best report of the alive senders (UP > DOWN > UNKNOWN); when
                              * none is alive, the freshest sender's last report */
    uint8_t reason;          /* with the report */
    double load, rtt_ms;     /* from the same sender; < 0 unknown */
    uint64_t last_rx_ms;     /* monotonic ms of the last valid heartbeat; 0 never */
    unsigned live_senders;   /* senders alive by the N-period rule */
    bool digest_mismatch;    /* that sender's config digest differs from ours */
    uint64_t transitions;    /* changes of `available` */
} hb_site_t;

/* Counters since hb_new(). rej_* are datagrams dropped, by the first reason found. */
typedef struct {
    uint64_t rx_ok, tx, tx_err;
    uint64_t rej_truncated;      /* shorter than its header or its length field */
    uint64_t rej_oversized;      /* longer than any heartbeat can be */
    uint64_t rej_bad_magic;      /* not a heartbeat at all */
    uint64_t rej_bad_version;    /* a version or message type we do not speak */
    uint64_t rej_malformed;      /* fields out of range (string lengths, state, load) */
    uint64_t rej_unknown_key;    /* key id not in our key file */
    uint64_t rej_bad_mac;        /* forged or corrupted */
    uint64_t rej_unknown_sender; /* authentic, but names a site not in our config (or ours) */
    uint64_t rej_skew;           /* timestamp further from our clock than max-skew */
    uint64_t rej_replay;         /* sequence number already seen, or an older boot epoch */
    uint64_t rej_too_old;        /* sequence number behind the replay window */
} hb_stats_t;

typedef struct hb hb_t;

/* Called on the loop thread after any remote site's alive, available, reported state, reason,
 * load or response time changed (load and rtt are folded in at most once per period). */
typedef void (*hb_cb_t)(void *ud);

/* Start heartbeats for conf (conf->hb.enabled must be set): reads the key file (refused when
 * group- or other-accessible; keys live in sodium_malloc memory), binds the UDP sockets and
 * starts sending and receiving on loop. Copies what it needs from conf. Our own state starts
 * as HEALTH_UNKNOWN / HB_REASON_STARTING until hb_set_self(). Returns 0, or MS_ECONF / MS_EIO
 * with the reason logged. */
int hb_new(uv_loop_t *loop, const conf_t *conf, hb_cb_t cb, void *ud, hb_t **out) MS_WUR;
/* Apply a new config (reload) in place: the key file is read again (key rotation), listen
 * sockets whose address is unchanged are kept and others opened/closed, and every remote site
 * that keeps its name keeps its liveness, so a reload never flaps a site. On error (logged)
 * nothing changed. Use this rather than hb_new + hb_free, which would bind the same
 * addresses twice and forget the liveness state. */
int hb_reload(hb_t *hb, const conf_t *conf) MS_WUR;
/* Stop and release. Handles close asynchronously: keep running the loop until they are gone.
 * Accepts NULL. */
void hb_free(hb_t *hb);

/* What subsequent heartbeats carry. A change of state or reason is sent at once. */
void hb_set_self(hb_t *hb, const hb_self_t *self);

/* Remote site i (index into conf_t.sites). Our own site, or i out of range: NULL. */
const hb_site_t *hb_site(const hb_t *hb, size_t i);
void hb_get_stats(const hb_t *hb, hb_stats_t *out);

/* Write a new key file at path (mode 0600; refuses to overwrite an existing file): one key,
 * id 1. With add, append a new key with the next id to an existing file instead, marked
 * verify-only: receivers accept it at once, senders sign with it only once the mark is
 * removed (key rotation without a gap: docs/heartbeat.md). */
int hb_keygen(const char *path, bool add) MS_WUR;

/* Digest of what all sites must agree on: the sites (names, answer addresses) and the
 * load-balanced names (name, sites, ttl, fallback, partition). */
#define HB_DIGEST_LEN 16
void hb_conf_digest(const conf_t *conf, uint8_t out[HB_DIGEST_LEN]);

#endif
