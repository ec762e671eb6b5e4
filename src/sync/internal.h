/* internal.h: private interface of the sync module: wire codec, channel crypto, hybrid
 * logical clock, merge rules, backend ops (the fault seam) and the agent.
 *
 * Layering, bottom up:
 *   codec.c   messages <-> bytes (pure, fuzzed)
 *   chan.c    handshake + AEAD records over a byte stream (libsodium)
 *   merge.c   HLC and the conflict rules (pure, table-tested)
 *   sqlite.c  backend: capture triggers, read pending rows, apply batches
 *   pg*.c     backend for PostgreSQL (libpq; private header pg_int.h)
 *   agent.c   the daemon: poll loop, peers, status socket
 *   conf.c    the `sync:` section of the config file
 * Only agent.c and the entry point talk to more than one of these. */
#ifndef MS_SYNC_INTERNAL_H
#define MS_SYNC_INTERNAL_H

#include "sync/sync.h"
#include "util/util.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* ---- values and versions ---- */
typedef enum {
    SYNC_V_NULL = 0,
    SYNC_V_INT = 1,
    SYNC_V_REAL = 2,
    SYNC_V_TEXT = 3,
    SYNC_V_BLOB = 4
} sync_vtype_t;

typedef struct {
    uint8_t type;
    int64_t i;
    double r;
    const uint8_t *p; /* TEXT/BLOB bytes (not NUL-terminated), owned by the message */
    uint32_t len;
} sync_val_t;

/* A column version: hybrid logical clock (48-bit Unix ms << 16 | 16-bit counter) and the
 * ORIGIN site that wrote it. {0, 0} is "no version" and loses to every real one. */
typedef struct {
    uint64_t hlc;
    uint32_t site;
} sync_ver_t;

static inline bool sync_ver_eq(sync_ver_t a, sync_ver_t b)
{
    return a.hlc == b.hlc && a.site == b.site;
}
static inline bool sync_ver_none(sync_ver_t a)
{
    return a.hlc == 0 && a.site == 0;
}

#define SYNC_HLC_WALL(h)  ((h) >> 16)
#define SYNC_HLC_MAKE(ms) ((uint64_t)(ms) << 16)

/* ---- wire messages (codec.c, byte diagram in docs/sync.md) ---- */
#define SYNC_MAGIC   0x4D535359u /* "MSSY" */
#define SYNC_PROTO   1
#define SYNC_HDR_LEN 12
/* A batch is cut at SYNC_BATCH_BYTES by the sender; the decoder accepts up to SYNC_MAX_MSG so
 * one row of a few MiB still fits. Anything larger is a protocol error, not an allocation. */
#define SYNC_MAX_MSG     (8u << 20)
#define SYNC_BATCH_BYTES (1u << 20)
#define SYNC_MAX_NAME    63
#define SYNC_MAX_COLS    64 /* value columns per table: the change mask is a u64 */
#define SYNC_MAX_PK      8
#define SYNC_MAX_TABLES  64

enum {
    SYNC_MSG_HELLO = 1,
    SYNC_MSG_BATCH = 2,
    SYNC_MSG_ACK = 3,
    SYNC_MSG_HEARTBEAT = 4,
    SYNC_MSG_ERROR = 5
};

typedef struct {
    char *name;
    unsigned npk, ncols;
    char **cols; /* npk primary key column names, then ncols value column names */
} sync_wtable_t;

typedef struct {
    unsigned table;  /* index into sync_batch_t.tables */
    uint64_t seq;    /* origin's change-table position of this row */
    uint32_t cl;     /* causal length: odd = live, even = deleted */
    sync_ver_t clv;  /* version of the last existence change */
    uint64_t mask;   /* value columns the origin changed since its peers last had the row */
    sync_val_t *pk;  /* npk values */
    sync_val_t *val; /* ncols values; only when cl is odd */
    sync_ver_t *ver;
    sync_ver_t *base; /* per column: the version the origin's change overwrote */
} sync_entry_t;

typedef struct {
    uint32_t origin;
    uint64_t seq_lo; /* entries have seq > seq_lo */
    uint64_t seq_hi; /* receiver's cursor after applying */
    size_t ntables;
    sync_wtable_t *tables;
    size_t nentries;
    sync_entry_t *entries;
} sync_batch_t;

typedef struct {
    char name[SYNC_MAX_NAME + 1];
    uint8_t fp[16];
} sync_fp_t;

typedef struct {
    uint32_t site_id;
    char name[SYNC_MAX_NAME + 1];
    uint64_t hlc;
    uint64_t cursor; /* acceptor -> dialer: how far it applied the dialer's changes */
    unsigned ntables;
    sync_fp_t tables[SYNC_MAX_TABLES];
} sync_hello_t;

typedef struct {
    uint8_t type;
    union {
        sync_hello_t hello;
        sync_batch_t batch;
        struct {
            uint32_t origin;
            uint64_t seq;
        } ack;
        uint64_t heartbeat_hlc;
        struct {
            uint16_t code;
            char text[256];
        } error;
    } u;
} sync_msg_t;

/* Append one whole message (header + body) to out. */
void sync_enc_hello(buf_t *out, const sync_hello_t *h);
void sync_enc_batch(buf_t *out, const sync_batch_t *b);
void sync_enc_ack(buf_t *out, uint32_t origin, uint64_t seq);
void sync_enc_heartbeat(buf_t *out, uint64_t hlc);
void sync_enc_error(buf_t *out, uint16_t code, const char *text);
/* Decode one whole message. Pointers in the result point into `data` or `a`, so both must
 * outlive it. Every length is checked against the remaining input before use; a message is
 * either fully valid or rejected (MS_EPARSE / MS_ETRUNC with a reason in why). */
int sync_decode(const uint8_t *data, size_t len, arena_t *a, sync_msg_t *out,
                const char **why) MS_WUR;
const char *sync_msg_name(unsigned type);

/* Canonical value encoding, shared by the codec and the quarantine table. */
void sync_enc_val(buf_t *out, const sync_val_t *v);
/* Human-readable rendering of a primary key ("42", "'abc'", "x'00ff'"), for logs. */
void sync_val_text(buf_t *out, const sync_val_t *v, size_t nv);

/* ---- channel: handshake + AEAD records (chan.c) ---- */
#define SYNC_HS_LEN       48
#define SYNC_KEY_LEN      32
#define SYNC_REC_OVERHEAD (4 + 16) /* length prefix + Poly1305 tag */

typedef struct sync_chan sync_chan_t;
/* role 0 = dialer (sender of its changes), 1 = acceptor. psk is SYNC_KEY_LEN bytes. */
sync_chan_t *sync_chan_new(int role, uint32_t site_id, const uint8_t *psk);
void sync_chan_free(sync_chan_t *c);
/* Our cleartext handshake record (SYNC_HS_LEN bytes). */
const uint8_t *sync_chan_hs(const sync_chan_t *c);
/* Take the peer's handshake; derive the session keys. Returns 0, MS_EPARSE (not a multisite
 * sync handshake, wrong version, same role) or MS_EAUTH. peer_site gets the claimed id. */
int sync_chan_accept_hs(sync_chan_t *c, const uint8_t *hs, uint32_t *peer_site) MS_WUR;
/* Encrypt one message into a record appended to out. */
void sync_chan_seal(sync_chan_t *c, const uint8_t *msg, size_t len, buf_t *out);
/* If in[0..len) starts with a whole record: decrypt it into plain (resized as needed), set
 * *used to the record's size and return 1; return 0 when more bytes are needed; MS_EAUTH when
 * the record does not authenticate (wrong key, tampering, replay), MS_ERANGE when the
 * announced length is over the limit. */
int sync_chan_open(sync_chan_t *c, const uint8_t *in, size_t len, buf_t *plain,
                   size_t *used) MS_WUR;
/* Load a key file: 64 hex digits (whitespace allowed around). Key in sodium_malloc memory. */
int sync_key_load(const char *path, uint8_t **key, char *why, size_t whylen) MS_WUR;
void sync_key_free(uint8_t *key);

/* ---- clock and merge rules (merge.c) ---- */
/* Next local HLC after `last`, given the wall clock: max(wall << 16, last + 1). */
uint64_t sync_hlc_next(uint64_t last, uint64_t wall_ms);
/* A remote version is too far in the future to apply now. */
bool sync_hlc_future(uint64_t hlc, uint64_t now_ms, uint64_t max_skew_ms);

typedef struct {
    int mode;                /* SYNC_RESOLVE_* */
    const uint32_t *prio_of; /* site id -> priority, for SYNC_RESOLVE_PRIORITY */
    size_t nprio;
} sync_rules_t;

/* Total order on versions under the rules: <0, 0, >0. */
int sync_ver_cmp(const sync_rules_t *r, sync_ver_t a, sync_ver_t b);

typedef enum {
    SYNC_ROW_MERGE,   /* same incarnation: merge column by column */
    SYNC_ROW_REPLACE, /* remote is a newer incarnation (re-insert or delete): take it whole */
    SYNC_ROW_STALE    /* remote is an older incarnation: ignore it (delete beats update) */
} sync_row_action_t;

sync_row_action_t sync_decide_row(uint32_t cl_local, uint32_t cl_remote);

typedef struct {
    bool take;     /* write the remote value and version */
    bool conflict; /* both sides changed it since they last exchanged it: log the loser */
} sync_col_decision_t;

/* One column of a MERGE. origin is the site that sent the change; base is the version the
 * origin's change overwrote (none when the origin did not change this column itself). */
sync_col_decision_t sync_decide_col(const sync_rules_t *r, sync_ver_t local, sync_ver_t remote,
                                    sync_ver_t base, uint32_t origin);

/* Tombstone clean-up (docs/sync.md §9). A tombstone whose delete is older than the horizon
 * (now - tombstone_retention) counts as absent, whether it was purged yet or not, so every
 * site decides the same way. A change to an absent row whose incarnation began before the
 * horizon can only come from a site that missed the delete for longer than the backlog
 * limit: it is refused (quarantined as "stale"), never allowed to bring the row back. An
 * expired delete of an absent row changes nothing. horizon 0: no clean-up. */
typedef enum {
    SYNC_GC_APPLY,  /* decide with the usual rules */
    SYNC_GC_REFUSE, /* stale incarnation of a row whose tombstone may be gone */
    SYNC_GC_IGNORE  /* an expired delete of an absent row: nothing to do */
} sync_gc_verdict_t;

typedef struct {
    bool local_absent; /* treat the local (expired) tombstone as no row at all */
    sync_gc_verdict_t verdict;
} sync_gc_t;

#define SYNC_STALE_MSG                                                                             \
    "row unknown here (or deleted longer ago than tombstone_retention) and its incarnation is "    \
    "older than that: the origin missed the delete; it must re-join"
sync_gc_t sync_gc_row(bool found, uint32_t cl_local, sync_ver_t clv_local, uint32_t cl_remote,
                      sync_ver_t clv_remote, uint64_t horizon_hlc);
/* The horizon for a wall clock: tombstones of deletes stamped before it are expired. */
uint64_t sync_gc_horizon(uint64_t now_ms, unsigned retention_ms);
/* Backlog limit: a peer whose oldest unacknowledged change is at oldest_ms is past the limit. */
bool sync_backlog_exceeded(uint64_t oldest_ms, uint64_t now_ms, unsigned limit_ms);

/* ---- fault seams (agent.c / tests) ---- */
/* Called at every step of the I/O paths with a point name. When MS_SYNC_FAULT=point:n is set
 * in the environment, the n-th call at that point kills the process with SIGKILL, as a crash
 * or kill -9 would at that instant. */
void sync_fault(const char *point);
/* True when MS_SYNC_AUDIT=1 is set (tests): the backends then record every change they apply
 * as (origin, position) in rep_audit, in the apply's transaction, so a test can prove that no
 * change was applied twice. */
bool sync_audit_on(void);

/* ---- backend ops ---- */
typedef struct sync_db sync_db_t;

typedef struct {
    uint32_t peer;
    uint64_t acked;     /* highest position the peer acknowledged */
    uint64_t backlog;   /* rows changed here that the peer has not acknowledged */
    uint64_t oldest_ms; /* wall time of the oldest unacknowledged change, 0 if none */
} sync_peer_db_t;

typedef struct {
    uint32_t origin;
    uint64_t applied_seq;
    uint64_t applied; /* entries applied from that origin, ever */
} sync_inbound_t;

typedef struct {
    uint64_t entries_applied, entries_skipped, conflicts, quarantined, held;
    uint64_t max_hlc; /* highest version applied */
} sync_apply_res_t;

typedef struct {
    uint64_t conflicts, quarantined, held, hlc;
    sync_peer_db_t peers[64];
    size_t npeers;
    sync_inbound_t inbound[64];
    size_t ninbound;
    unsigned ntables;
    sync_fp_t tables[SYNC_MAX_TABLES];
} sync_db_status_t;

/* Every database access of the agent goes through these. A test can wrap them to inject
 * errors; sync_fault() marks the crash points inside apply. All run on the agent thread. */
typedef struct {
    const char *name;
    /* Install or refresh capture for the configured tables (idempotent). */
    int (*init)(sync_db_t *db, char *why, size_t whylen);
    /* Load table metadata; fails if init was not run. */
    int (*attach)(sync_db_t *db, char *why, size_t whylen);
    /* Has anything been committed by other connections since the last call? */
    bool (*changed)(sync_db_t *db);
    /* Rows changed here with position > after, up to max rows / SYNC_BATCH_BYTES, as one
     * encoded BATCH message appended to out. *n gets the entry count, *hi the new position. */
    int (*read)(sync_db_t *db, uint64_t after, size_t max, buf_t *out, size_t *n, uint64_t *hi);
    /* Apply a decoded batch from origin in one transaction together with the cursor. */
    int (*apply)(sync_db_t *db, const sync_batch_t *b, sync_apply_res_t *res);
    /* Retry held-back and quarantined changes whose cause may have gone. */
    int (*retry)(sync_db_t *db, sync_apply_res_t *res);
    int (*cursor)(sync_db_t *db, uint32_t origin, uint64_t *applied);
    int (*set_acked)(sync_db_t *db, uint32_t peer, uint64_t acked);
    int (*status)(sync_db_t *db, sync_db_status_t *st);
    void (*close)(sync_db_t *db);
    /* ---- site lifecycle (sqlite_life.c, pg_life.c; docs/sync.md §9) ---- */
    /* Wall time (ms) of the oldest local change the peer has not acknowledged; 0 if none. */
    int (*oldest)(sync_db_t *db, uint32_t peer, uint64_t *oldest_ms);
    /* The peer's must-rejoin mark: *since_ms = when it was set, 0 if not marked. */
    int (*peer_get)(sync_db_t *db, uint32_t peer, uint64_t *since_ms, char *why, size_t whylen);
    /* Mark the peer must-rejoin (persisted); from then on it holds nothing back here. */
    int (*peer_mark)(sync_db_t *db, uint32_t peer, const char *why);
    /* Delete the peer's rep_peer and rep_inbound rows (and its mark) and release what was
     * kept for it alone. readmit: it comes back as a fresh copy of a running site, so keep
     * changes for it from the slowest other peer's position on. */
    int (*peer_forget)(sync_db_t *db, uint32_t peer, bool readmit);
    /* Purge tombstones of deletes stamped before horizon_hlc that every peer not marked
     * must-rejoin has acknowledged. */
    int (*purge)(sync_db_t *db, uint64_t horizon_hlc, uint64_t *purged);
    /* Delete quarantined changes first quarantined before before_ms (wall clock, ms). */
    int (*purge_quarantine)(sync_db_t *db, uint64_t before_ms, uint64_t *purged);
} sync_db_ops_t;

struct sync_db {
    const sync_db_ops_t *ops;
    const sync_conf_t *conf;
    sync_rules_t rules;
};

int sync_sqlite_open(const sync_conf_t *c, sync_db_t **out, char *why, size_t whylen) MS_WUR;
int sync_pg_open(const sync_conf_t *c, sync_db_t **out, char *why, size_t whylen) MS_WUR;
int sync_sqlite_join(const sync_conf_t *c, const char *src_path, char *why, size_t whylen) MS_WUR;
int sync_pg_join(const sync_conf_t *c, const char *src, char *why, size_t whylen) MS_WUR;
int sync_db_open(const sync_conf_t *c, sync_db_t **out, char *why, size_t whylen) MS_WUR;
/* Open the database read-only, for `status` while the agent is down: nothing is created,
 * installed or folded (SQLite: SQLITE_OPEN_READONLY; PostgreSQL: a read-only session). Table
 * metadata comes from what init stored; MS_ENOENT when init never ran ("capture is not
 * installed ..." in why). Only ops->status, ops->peer_get and ops->close may be called. */
int sync_db_open_ro(const sync_conf_t *c, sync_db_t **out, char *why, size_t whylen) MS_WUR;
int sync_sqlite_open_ro(const sync_conf_t *c, sync_db_t **out, char *why, size_t whylen) MS_WUR;
int sync_pg_open_ro(const sync_conf_t *c, sync_db_t **out, char *why, size_t whylen) MS_WUR;

/* s is a plain SQL identifier we can quote without escaping: 1..max of [A-Za-z0-9_]
 * (conf.c; the backends check column names with it, max leaving room for our prefixes). */
bool sync_ident_ok(const char *s, size_t max);
/* The identifiers in a list as init stored it in rep_table ("a", "b" or a,b): up to max of
 * them into out (each xstrndup'ed, the caller frees); returns how many. */
unsigned sync_split_names(const char *s, char **out, unsigned max);

/* BLAKE2b-128 of a byte string (chan.c). */
void sync_hash16(const void *p, size_t n, uint8_t out[16]);
/* Schema fingerprint of a table: BLAKE2b-128 over "pk1,pk2|col1,col2" (names sorted). */
void sync_fingerprint(const sync_wtable_t *t, uint8_t fp[16]);

#endif
