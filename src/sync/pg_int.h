/* pg_int.h: private interface of the PostgreSQL backend, shared by its files:
 *   pg.c          connection, query helpers, value conversion, status, ops table
 *   pg_capture.c  metadata tables, table loading, capture triggers (init)
 *   pg_read.c     the sender side: ticks, windows, reading pending rows
 *   pg_apply.c    the receiver side: set-based apply, conflicts, quarantine, retry
 * Nothing here is used outside src/sync/pg*.c. */
#ifndef MS_SYNC_PG_INT_H
#define MS_SYNC_PG_INT_H

#include "sync/internal.h"

#include <libpq-fe.h>

typedef struct {
    char *name;
    unsigned npk, ncols;
    char **cols;  /* npk primary key columns in key order, then value columns sorted by name */
    char **types; /* format_type() of each */
    unsigned *oids;
    sync_wtable_t w;
    uint8_t fp[16];
} pg_table_t;

typedef struct {
    sync_db_t base;
    PGconn *pc;
    pg_table_t *t;
    size_t nt;
    uint32_t site;
    buf_t fold_sql;        /* SELECT rep_fold_T(NULL), ... for every table */
    uint64_t next_fold_ms; /* idle fold of the capture logs (sync_pg_changed) */
    /* The read fast path (pg_read.c): tip is the position of the last part of the newest
     * tick, when the last window computation found nothing past it; dirty is set by every
     * fold that moved rows since. A peer at tip with dirty clear only needs a fold to learn
     * that nothing is new. */
    uint64_t tip;
    char *tip_snap; /* snapshot of tip's tick: a read from tip needs no tick lookup */
    bool dirty;
    uint64_t next_full_ms; /* a full read at least this often: folds by other sessions */
    /* The cursor of the last origin applied, known after its commit (pg_apply.c). */
    uint32_t cur_origin;
    uint64_t cur_seq;
    bool cur_ok;
    /* Acknowledged positions not written yet (pg.c, sync_pg_flush_acked). */
    uint32_t ack_peer[64];
    uint64_t ack_val[64];
    size_t nack;
    uint64_t next_ack_ms;
    bool ro; /* a read-only session for status (sync_pg_open_ro) */
} pg_db_t;

#define PG_ACK_WRITE_MS 200

/* Positions on PostgreSQL: tick id << PG_PART_BITS | part (pg_read.c). */
#define PG_PART_BITS 24

/* NUL-terminate a buffer in place (not counted in len) and return it as a string. */
const char *sync_pg_cstr(buf_t *b);
/* Run a statement (params in text format when n > 0); NULL on error (logged at debug). */
PGresult *sync_pg_q(pg_db_t *s, const char *sql, int n, const char *const *params);
/* Run a statement, log an error; 0 or MS_EDB. */
int sync_pg_ex(pg_db_t *s, const char *sql);
/* First column of the first row as an integer (0 when none). */
int64_t sync_pg_q_int(pg_db_t *s, const char *sql);
void sync_pg_tables_free(pg_db_t *s);
int sync_pg_flush_acked(pg_db_t *s);

/* Key column lists for generated SQL (pg_capture.c): "p"."a", "p"."b" (prefix "" gives
 * bare quoted names); and the join a."k1" = b."k1" AND ... where b names the columns of an
 * unnest() alias (bidx: b.k0, b.k1, ...) or, when bidx is false, the table's own names. */
void sync_pg_key_list(buf_t *b, const pg_table_t *t, const char *prefix);
void sync_pg_key_eq(buf_t *b, const pg_table_t *t, const char *a, const char *bp, bool bidx);
/* The key's array types as unnest() arguments: $first::type0[], $first+1::type1[], ... */
void sync_pg_key_params(buf_t *b, const pg_table_t *t, unsigned first);

/* Values: text result -> wire value; wire value -> array literal element. */
void sync_pg_val(PGresult *r, int row, int col, unsigned oid, arena_t *a, sync_val_t *v);
void sync_pg_put_i64(buf_t *b, int64_t x);
void sync_pg_arr_add(buf_t *b, const sync_val_t *v, bool first);
void sync_pg_arr_int(buf_t *b, bool isnull, int64_t x, bool first);
void sync_pg_arr_text(buf_t *b, const char *s, bool first);
/* A version from two adjacent result columns (hlc, site); none when either is NULL. */
sync_ver_t sync_pg_ver(PGresult *r, int row, int col);

/* Fold every table's capture log into its change table, in one statement run after `prefix`
 * (e.g. a BEGIN) in the same round trip; the number of log rows moved, or MS_EDB. Sets dirty
 * when rows moved (pg_capture.c). */
int sync_pg_fold(pg_db_t *s, const char *prefix);
/* Rows of table k with changes in the capture log (not folded yet) and the oldest one's HLC,
 * for status and the backlog limit. */
void sync_pg_log_pending(pg_db_t *s, size_t k, uint64_t *rows, uint64_t *oldest_hlc);

/* Backend operations, by file. */
int sync_pg_init(sync_db_t *db, char *why, size_t whylen);   /* pg_capture.c */
int sync_pg_attach(sync_db_t *db, char *why, size_t whylen); /* pg_capture.c */
bool sync_pg_changed(sync_db_t *db);                         /* pg_read.c */
int sync_pg_read(sync_db_t *db, uint64_t after, size_t max, buf_t *out, size_t *n,
                 uint64_t *hi);                                                 /* pg_read.c */
int sync_pg_apply(sync_db_t *db, const sync_batch_t *b, sync_apply_res_t *res); /* pg_apply.c */
int sync_pg_retry(sync_db_t *db, sync_apply_res_t *res);                        /* pg_apply.c */
int sync_pg_cursor(sync_db_t *db, uint32_t origin, uint64_t *applied);          /* pg_apply.c */

/* pg_life.c: site lifecycle (docs/sync.md §9) */
void sync_pg_acked_sql(buf_t *b, const sync_conf_t *c);
int sync_pg_oldest(sync_db_t *db, uint32_t peer, uint64_t *oldest_ms);
int sync_pg_peer_get(sync_db_t *db, uint32_t peer, uint64_t *since_ms, char *why, size_t whylen);
int sync_pg_peer_mark(sync_db_t *db, uint32_t peer, const char *why);
int sync_pg_peer_forget(sync_db_t *db, uint32_t peer, bool readmit);
int sync_pg_purge(sync_db_t *db, uint64_t horizon_hlc, uint64_t *purged);
int sync_pg_purge_quarantine(sync_db_t *db, uint64_t before_ms, uint64_t *purged);

#endif
