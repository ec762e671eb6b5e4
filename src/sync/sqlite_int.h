/* sqlite_int.h: private to the SQLite backend (sqlite.c, sqlite_capture.c, sqlite_read.c,
 * sqlite_apply.c). The design is described at the top of sqlite.c and in docs/sync.md §3-4. */
#ifndef MS_SYNC_SQLITE_INT_H
#define MS_SYNC_SQLITE_INT_H

#include "sync/internal.h"

#include <sqlite3.h>

typedef struct {
    char *name;
    unsigned npk, ncols;
    char **cols; /* npk pk names (pk order), then value columns sorted by name */
    sync_wtable_t w;
    uint8_t fp[16];
    sqlite3_stmt *read, *clk_get, *clk_put, *clk_upd, *row_get, *row_del, *log_sel, *log_del,
        *log_any;
    char *up_sql; /* the last apply upsert (sqlite_apply.c), kept while peers send the same */
    sqlite3_stmt *up_st; /* columns, so a batch of a few rows does not prepare it again */
} sq_table_t;

typedef struct {
    sync_db_t base;
    sqlite3 *db;
    sq_table_t *t;
    size_t nt;
    int64_t data_version;
    int schema_version;
    uint32_t site;
    struct sq_ckpt *ckpt; /* the checkpointer thread (sqlite.c) */
    bool ro;              /* opened read-only for status (sync_sqlite_open_ro) */
    sqlite3_stmt *inb_get, *inb_put, *conflict_ins, *quar_ins, *hlc_bump, *data_ver, *acked_get;
} sq_db_t;

/* One row of a change table rep_c_T (the row's clock), as read or to be written. */
typedef struct {
    uint64_t seq, mask;
    uint32_t cl;
    sync_ver_t clv;
    sync_ver_t v[SYNC_MAX_COLS], b[SYNC_MAX_COLS];
    bool found;
} sq_clock_t;

/* sqlite.c: statements and values */
int sync_sq_why_db(sq_db_t *s, char *why, size_t whylen, const char *what);
int sync_sq_exec(sq_db_t *s, const char *sql);
sqlite3_stmt *sync_sq_prep(sq_db_t *s, const char *sql);
const char *sync_sq_cstr(buf_t *b);
void sync_sq_pk_list(buf_t *b, const sq_table_t *t, const char *prefix);
void sync_sq_pk_where(buf_t *b, const sq_table_t *t, const char *a, const char *bb);
void sync_sq_val_from_col(sqlite3_stmt *st, int i, arena_t *a, sync_val_t *v);
void sync_sq_bind_val(sqlite3_stmt *st, int i, const sync_val_t *v);
sync_ver_t sync_sq_ver_col(sqlite3_stmt *st, int i);
void sync_sq_bind_ver(sqlite3_stmt *st, int i, sync_ver_t v);
int sync_sq_clock_get(sq_table_t *t, const sync_val_t *pk, sq_clock_t *ck);
int sync_sq_clock_put(sq_table_t *t, const sync_val_t *pk, const sq_clock_t *ck, bool full);

/* sqlite_capture.c: change tables, triggers, fold */
int sync_sq_init(sync_db_t *db, char *why, size_t whylen);
int sync_sq_attach(sync_db_t *db, char *why, size_t whylen);
bool sync_sq_changed(sync_db_t *db);
void sync_sq_tables_free(sq_db_t *s);
int sync_sq_fold(sq_db_t *s);
int sync_sq_fold_txn(sq_db_t *s);

/* sqlite_read.c */
int sync_sq_read(sync_db_t *db, uint64_t after, size_t max, buf_t *out, size_t *n, uint64_t *hi);

/* sqlite_apply.c */
int sync_sq_apply(sync_db_t *db, const sync_batch_t *b, sync_apply_res_t *res);
int sync_sq_retry(sync_db_t *db, sync_apply_res_t *res);
int sync_sq_inbound_get(sq_db_t *s, uint32_t origin, uint64_t *seq, uint64_t *count);

/* sqlite_life.c: site lifecycle (docs/sync.md §9) */
int sync_sq_life_schema(sq_db_t *s);
void sync_sq_acked_sql(buf_t *b, const sync_conf_t *c);
int sync_sq_oldest(sync_db_t *db, uint32_t peer, uint64_t *oldest_ms);
int sync_sq_peer_get(sync_db_t *db, uint32_t peer, uint64_t *since_ms, char *why, size_t whylen);
int sync_sq_peer_mark(sync_db_t *db, uint32_t peer, const char *why);
int sync_sq_peer_forget(sync_db_t *db, uint32_t peer, bool readmit);
int sync_sq_purge(sync_db_t *db, uint64_t horizon_hlc, uint64_t *purged);
int sync_sq_purge_quarantine(sync_db_t *db, uint64_t before_ms, uint64_t *purged);

#endif
