/* sqlite_read.c: the SQLite backend's sender side: pending entries in position order. */
#include "sync/sqlite_int.h"

/* ---- read: the sender side ---- */

typedef struct {
    sq_table_t *t;
    bool row; /* a row is waiting in t->read */
    uint64_t seq;
} cursor_t;

static void entry_from_read(sq_db_t *s, sq_table_t *t, unsigned ti, arena_t *a, sync_entry_t *e)
{
    sqlite3_stmt *st = t->read;
    unsigned k = t->npk;
    e->table = ti;
    e->pk = arena_alloc(a, sizeof(sync_val_t) * t->npk);
    for (unsigned i = 0; i < t->npk; i++) {
        sync_sq_val_from_col(st, (int)i, a, &e->pk[i]);
    }
    e->seq = (uint64_t)sqlite3_column_int64(st, (int)k);
    e->mask = (uint64_t)sqlite3_column_int64(st, (int)k + 1);
    e->cl = (uint32_t)sqlite3_column_int64(st, (int)k + 2);
    e->clv = sync_sq_ver_col(st, (int)k + 3);
    e->val = NULL;
    if (e->cl % 2 == 1 && t->ncols) {
        e->val = arena_alloc(a, sizeof(sync_val_t) * t->ncols);
        e->ver = arena_alloc(a, sizeof(sync_ver_t) * t->ncols);
        e->base = arena_alloc(a, sizeof(sync_ver_t) * t->ncols);
        for (unsigned c = 0; c < t->ncols; c++) {
            int at = (int)(k + 5 + 5 * c);
            e->ver[c] = sync_sq_ver_col(st, at);
            /* The base matters only for a version this site wrote (merge.c). */
            e->base[c] =
                e->ver[c].site == s->site ? sync_sq_ver_col(st, at + 2) : (sync_ver_t){0, 0};
            sync_sq_val_from_col(st, at + 4, a, &e->val[c]);
        }
    }
}

int sync_sq_read(sync_db_t *db, uint64_t after, size_t max, buf_t *out, size_t *n, uint64_t *hi)
{
    sq_db_t *s = (sq_db_t *)db;
    *n = 0;
    *hi = after;
    /* No fold here: changed() folds whenever something was committed, and a change not folded
     * yet has a position above everything folded, so it is simply sent next time. */
    if (sync_sq_exec(s, "BEGIN") != 0) {
        return MS_EDB;
    }
    arena_t *a = arena_new(64 * 1024);
    cursor_t cur[SYNC_MAX_TABLES];
    sync_batch_t b = {0};
    b.origin = s->site;
    b.seq_lo = after;
    b.ntables = s->nt;
    b.tables = arena_alloc(a, sizeof(sync_wtable_t) * (s->nt ? s->nt : 1));
    b.entries = arena_alloc(a, sizeof(sync_entry_t) * max);
    int rc = 0;
    for (size_t i = 0; i < s->nt; i++) {
        b.tables[i] = s->t[i].w;
        cur[i].t = &s->t[i];
        sqlite3_reset(s->t[i].read);
        sqlite3_bind_int64(s->t[i].read, 1, (int64_t)after);
        sqlite3_bind_int64(s->t[i].read, 2, (int64_t)max);
        int r = sqlite3_step(s->t[i].read);
        cur[i].row = r == SQLITE_ROW;
        if (r != SQLITE_ROW && r != SQLITE_DONE) {
            rc = MS_EDB;
        }
        cur[i].seq = cur[i].row ? (uint64_t)sqlite3_column_int64(s->t[i].read, s->t[i].npk) : 0;
    }
    /* k-way merge in position order, so a cut after any entry leaves nothing behind it. */
    size_t bytes = 0;
    while (rc == 0 && b.nentries < max && bytes < SYNC_BATCH_BYTES) {
        size_t best = SIZE_MAX;
        for (size_t i = 0; i < s->nt; i++) {
            if (cur[i].row && (best == SIZE_MAX || cur[i].seq < cur[best].seq)) {
                best = i;
            }
        }
        if (best == SIZE_MAX) {
            break;
        }
        sq_table_t *t = cur[best].t;
        sync_entry_t *e = &b.entries[b.nentries++];
        entry_from_read(s, t, (unsigned)best, a, e);
        for (unsigned c = 0; e->val && c < t->ncols; c++) {
            bytes += 25 + e->val[c].len;
        }
        bytes += 40;
        b.seq_hi = e->seq;
        int r = sqlite3_step(t->read);
        cur[best].row = r == SQLITE_ROW;
        if (r != SQLITE_ROW && r != SQLITE_DONE) {
            rc = MS_EDB;
        }
        cur[best].seq = cur[best].row ? (uint64_t)sqlite3_column_int64(t->read, t->npk) : 0;
    }
    for (size_t i = 0; i < s->nt; i++) {
        sqlite3_reset(s->t[i].read);
    }
    sync_sq_exec(s, "COMMIT");
    if (rc == 0 && b.nentries > 0) {
        sync_enc_batch(out, &b);
        *n = b.nentries;
        *hi = b.seq_hi;
    }
    arena_free(a);
    return rc;
}
