/* merge.c: the hybrid logical clock and the conflict rules, as pure functions.
 *
 * Every site runs the same functions on the same two versions, so every site picks the same
 * winner whatever order changes arrive in: each column is a max register over a total order
 * of versions, each row's existence a causal-length counter. Nothing here reads the local
 * clock; the future-skew guard takes `now` as an argument. */
#include "sync/internal.h"

uint64_t sync_hlc_next(uint64_t last, uint64_t wall_ms)
{
    uint64_t w = SYNC_HLC_MAKE(wall_ms);
    return w > last ? w : last + 1;
}

bool sync_hlc_future(uint64_t hlc, uint64_t now_ms, uint64_t max_skew_ms)
{
    return SYNC_HLC_WALL(hlc) > now_ms + max_skew_ms;
}

static uint32_t prio(const sync_rules_t *r, uint32_t site)
{
    return site < r->nprio ? r->prio_of[site] : 0;
}

int sync_ver_cmp(const sync_rules_t *r, sync_ver_t a, sync_ver_t b)
{
    /* "No version" loses to everything, whatever the priorities. */
    if (sync_ver_none(a) || sync_ver_none(b)) {
        return sync_ver_none(a) ? (sync_ver_none(b) ? 0 : -1) : 1;
    }
    if (r && r->mode == SYNC_RESOLVE_PRIORITY) {
        uint32_t pa = prio(r, a.site), pb = prio(r, b.site);
        if (pa != pb) {
            return pa < pb ? -1 : 1;
        }
    }
    if (a.hlc != b.hlc) {
        return a.hlc < b.hlc ? -1 : 1;
    }
    if (a.site != b.site) {
        return a.site < b.site ? -1 : 1;
    }
    return 0;
}

sync_row_action_t sync_decide_row(uint32_t cl_local, uint32_t cl_remote)
{
    if (cl_remote > cl_local) {
        return SYNC_ROW_REPLACE;
    }
    if (cl_remote < cl_local) {
        return SYNC_ROW_STALE;
    }
    return SYNC_ROW_MERGE;
}

sync_col_decision_t sync_decide_col(const sync_rules_t *r, sync_ver_t local, sync_ver_t remote,
                                    sync_ver_t base, uint32_t origin)
{
    sync_col_decision_t d = {false, false};
    if (sync_ver_eq(local, remote)) {
        return d; /* already have it: duplicates and relays are no-ops */
    }
    d.take = sync_ver_cmp(r, remote, local) > 0;
    /* A conflict needs both sides to have changed the column independently: the origin wrote
     * it (remote.site == origin), we hold a version the origin did not write, and the origin
     * had not seen our version when it wrote (its base differs from what we hold). */
    d.conflict = remote.site == origin && !sync_ver_none(local) && local.site != origin &&
                 !sync_ver_eq(local, base);
    return d;
}

sync_gc_t sync_gc_row(bool found, uint32_t cl_local, sync_ver_t clv_local, uint32_t cl_remote,
                      sync_ver_t clv_remote, uint64_t horizon_hlc)
{
    sync_gc_t g = {false, SYNC_GC_APPLY};
    if (horizon_hlc == 0 || sync_ver_none(clv_remote)) {
        return g;
    }
    bool absent = !found || cl_local == 0;
    if (!absent && cl_local % 2 == 0 && clv_local.hlc < horizon_hlc) {
        g.local_absent = absent = true; /* expired tombstone: as if purged already */
    }
    bool expired = clv_remote.hlc < horizon_hlc;
    if (absent && expired) {
        g.verdict = cl_remote % 2 == 1 ? SYNC_GC_REFUSE : SYNC_GC_IGNORE;
    } else if (!absent && expired && cl_remote > cl_local && cl_remote % 2 == 0 &&
               sync_ver_cmp(NULL, clv_remote, clv_local) < 0) {
        /* A delete older than the incarnation we hold: ours began after the delete's tombstone
         * was purged (the counter restarted), so the delete is for an older one. */
        g.verdict = SYNC_GC_IGNORE;
    }
    return g;
}

uint64_t sync_gc_horizon(uint64_t now_ms, unsigned retention_ms)
{
    if (retention_ms == 0 || now_ms <= retention_ms) {
        return 0;
    }
    return SYNC_HLC_MAKE(now_ms - retention_ms);
}

bool sync_backlog_exceeded(uint64_t oldest_ms, uint64_t now_ms, unsigned limit_ms)
{
    return limit_ms != 0 && oldest_ms != 0 && now_ms > oldest_ms && now_ms - oldest_ms > limit_ms;
}
