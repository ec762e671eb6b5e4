/* internal.h: the heartbeat module's private parts, exposed to its unit tests and fuzz target:
 * the wire codec (codec.c), the key ring (keys.c), and the receiver core (track.c): the
 * replay window, the per-period liveness tracker and the per-site view, all pure and driven
 * by the clocks passed in, so tests run them on a fake clock. heartbeat.c adds the sockets
 * and timers. */
#ifndef MS_HEARTBEAT_INTERNAL_H
#define MS_HEARTBEAT_INTERNAL_H

#include "heartbeat/heartbeat.h"

#include <assert.h>

/* ---- wire format (docs/heartbeat.md) ---- */
#define HB_MAGIC      0x4d534842u /* "MSHB" */
#define HB_VERSION    1
#define HB_TYPE_BEAT  1
#define HB_FIXED_LEN  62 /* through the two string lengths */
#define HB_MAC_LEN    32 /* full HMAC-SHA256: 32 bytes cost nothing at 30 datagrams/s */
#define HB_NAME_MAX   63
#define HB_MIN_LEN    (HB_FIXED_LEN + 1 + 1 + HB_MAC_LEN)
#define HB_MAX_LEN    (HB_FIXED_LEN + HB_NAME_MAX + HB_NAME_MAX + HB_MAC_LEN)
#define HB_LOAD_SCALE 10000u      /* load on the wire: 0..10000 = 0..1 */
#define HB_LOAD_NONE  0xffffu     /* unknown load */
#define HB_RTT_NONE   0xffffffffu /* unknown response time (wire: microseconds) */
#define HB_KEY_LEN    32
#define HB_REPLAY_BITS                                                                             \
    64 /* replay window: ~2 s of heartbeats at 30/s, far more than reordering                      \
        */

static_assert(HB_MIN_LEN == 96, "heartbeat minimum size");
static_assert(HB_MAX_LEN == 220, "heartbeat maximum size");

typedef struct {
    uint8_t type;
    uint32_t key_id;
    uint64_t epoch;
    uint64_t seq;
    uint64_t ts_ms;
    uint8_t state; /* health_state_t */
    uint8_t reason;
    uint16_t load;   /* HB_LOAD_SCALE units or HB_LOAD_NONE */
    uint32_t rtt_us; /* or HB_RTT_NONE */
    uint8_t digest[HB_DIGEST_LEN];
    char site[HB_NAME_MAX + 1];
    char sender[HB_NAME_MAX + 1];
} hb_msg_t;

/* Rejection reasons, in check order; HB_OK accepted. */
typedef enum {
    HB_OK = 0,
    HB_REJ_TRUNCATED,
    HB_REJ_OVERSIZED,
    HB_REJ_BAD_MAGIC,
    HB_REJ_BAD_VERSION,
    HB_REJ_MALFORMED,
    HB_REJ_UNKNOWN_KEY,
    HB_REJ_BAD_MAC,
    HB_REJ_UNKNOWN_SENDER,
    HB_REJ_SKEW,
    HB_REJ_REPLAY,
    HB_REJ_TOO_OLD,
    HB_REJ_COUNT
} hb_rej_t;
const char *hb_rej_str(hb_rej_t r);

/* Encoded size of m (without writing), or 0 when its strings are empty or too long. */
size_t hb_encoded_len(const hb_msg_t *m);
/* Encode m and append the MAC under key; returns the length or 0 (see hb_encoded_len, cap). */
size_t hb_encode(const hb_msg_t *m, const uint8_t key[HB_KEY_LEN], uint8_t *out, size_t cap);
/* Structural decode, no MAC check: HB_OK or a HB_REJ_ up to HB_REJ_MALFORMED. */
hb_rej_t hb_decode(const uint8_t *p, size_t len, hb_msg_t *m);
/* Check the MAC of a decoded datagram of length len. */
bool hb_mac_ok(const uint8_t *p, size_t len, const uint8_t key[HB_KEY_LEN]);

/* ---- keys (keys.c) ---- */
typedef struct {
    size_t n;
    uint32_t *ids;  /* heap */
    uint8_t *bytes; /* sodium_malloc: n * HB_KEY_LEN, read-only except while loading */
    size_t newest;  /* index of the highest id: the one we send with */
} hb_keys_t;
/* Parse a key file: lines "ID HEX64", '#' comments, ids 1..2^32-1 unique. why gets the
 * reason on failure. check_mode: refuse a file group/other can access. */
int hb_keys_load(const char *path, bool check_mode, hb_keys_t *k, char *why, size_t whylen);
int hb_keys_parse(const char *text, size_t len, hb_keys_t *k, char *why, size_t whylen);
const uint8_t *hb_keys_find(const hb_keys_t *k, uint32_t id);
void hb_keys_deinit(hb_keys_t *k);

/* ---- replay window per (sender, boot epoch) ---- */
typedef struct {
    uint64_t epoch;
    uint64_t top;  /* highest sequence number accepted in this epoch */
    uint64_t bits; /* bit i: top - i was accepted */
    uint64_t last_ts;
    bool used;
} hb_window_t;
/* HB_OK (and the window updated), HB_REJ_REPLAY or HB_REJ_TOO_OLD. A different epoch replaces
 * the current one only if its timestamp is newer than every timestamp accepted in the current
 * epoch: a restarted sender comes back at once, a recording of its previous life does not. */
hb_rej_t hb_window_check(hb_window_t *w, uint64_t epoch, uint64_t seq, uint64_t ts_ms);

/* ---- liveness: runs of consecutive periods with a heartbeat ---- */
typedef struct {
    uint64_t first; /* first period of the current unbroken run */
    uint64_t last;  /* last period with a heartbeat */
    bool any;
} hb_run_t;
void hb_run_note(hb_run_t *r, uint64_t period);
/* Each of the n complete periods before cur had a heartbeat. */
bool hb_run_alive(const hb_run_t *r, uint64_t cur, unsigned n);

/* ---- receiver core ---- */
#define HB_MAX_SENDERS 16 /* per site; more evicts the longest silent (authentic senders only) */

typedef struct {
    char id[HB_NAME_MAX + 1];
    hb_window_t win;
    hb_run_t run;
    uint64_t last_rx_ms;
    uint8_t state, reason;
    uint16_t load;
    uint32_t rtt_us;
    uint8_t digest[HB_DIGEST_LEN];
    bool digest_bad;
} hb_sender_t;

typedef struct {
    char *name;
    hb_sender_t *senders;
    size_t n_senders;
    hb_site_t view;
} hb_rsite_t;

typedef struct {
    unsigned period_ms, periods, max_skew_ms;
} hb_timing_t;

typedef struct {
    const hb_keys_t *keys; /* not owned */
    hb_timing_t t;
    size_t n_sites, self;
    hb_rsite_t *sites;
    uint8_t digest[HB_DIGEST_LEN];
    hb_stats_t stats;
} hb_core_t;

void hb_core_init(hb_core_t *c, const char *const *site_names, size_t n_sites, size_t self,
                  const hb_timing_t *t, const hb_keys_t *keys, const uint8_t digest[HB_DIGEST_LEN]);
void hb_core_deinit(hb_core_t *c);
/* A new config (reload): sites keep their senders, windows and liveness by name; sites no
 * longer configured (or now our own) are forgotten; runs are rescaled if the period changed. */
void hb_core_reconf(hb_core_t *c, const char *const *site_names, size_t n_sites, size_t self,
                    const hb_timing_t *t, const uint8_t digest[HB_DIGEST_LEN], uint64_t now_mono);
/* One received datagram at the given clocks: counted, and HB_OK or why it was dropped. */
hb_rej_t hb_core_rx(hb_core_t *c, const uint8_t *p, size_t len, uint64_t now_mono,
                    uint64_t now_wall);
/* Recompute every site view at now_mono; true when something a callback reports changed.
 * fold_metrics: also take new load/rtt values (done once per period). */
bool hb_core_eval(hb_core_t *c, uint64_t now_mono, bool fold_metrics);

#endif
