/* track.c: the heartbeat receiver core: checks in order, replay windows, peer liveness and
 * the per-site view. Pure: no I/O, the clocks come in as arguments (tests use a fake clock).
 *
 * A datagram is checked cheapest-first and dropped at the first failure:
 *     size, magic, version/type, structure  (codec.c, before any crypto)
 *     key id known, MAC                    (only key holders get past here)
 *     site known and not ours, timestamp within max-skew of our wall clock
 *     replay window of (sender, boot epoch)
 * so unauthenticated input never creates state: the per-site sender table (bounded,
 * HB_MAX_SENDERS) only grows for datagrams that carry a valid MAC.
 *
 * Liveness, per sender, on the receiver's monotonic clock cut into periods of period_ms:
 *
 *     period:   ... | c-3 | c-2 | c-1 |  c (now, partial) |
 *     alive  <=>  a heartbeat arrived in each of c-N .. c-1   (N = periods, default 3)
 *
 * kept as one run of consecutive periods with a heartbeat (first..last), O(1) for any N:
 * alive <=> last >= c-1 and first <= c-N. The partial period never counts, so a quiet start
 * of the current period cannot flap a site, and a dead sender is noticed when the first
 * empty period completes: 1 to 2 periods after its last heartbeat (docs/heartbeat.md).
 *
 *              heartbeat in each of N complete periods
 *     DEAD  ----------------------------------------->  ALIVE
 *           <-----------------------------------------
 *                    one complete period without
 *
 * A site is alive when one of its senders is; available when alive and an alive sender
 * reports UP. */
#include "heartbeat/internal.h"

#include <sodium.h>
#include <string.h>

hb_rej_t hb_window_check(hb_window_t *w, uint64_t epoch, uint64_t seq, uint64_t ts_ms)
{
    if (w->used && epoch != w->epoch) {
        /* A new life of the sender, or a recording of an old one. Only a new life carries
         * timestamps beyond everything the current epoch said (the skew check has already
         * bounded how far in the future that can be). */
        if (ts_ms <= w->last_ts) {
            return HB_REJ_REPLAY;
        }
        w->used = false;
    }
    if (!w->used) {
        w->used = true;
        w->epoch = epoch;
        w->top = seq;
        w->bits = 1;
        w->last_ts = ts_ms;
        return HB_OK;
    }
    if (seq > w->top) {
        uint64_t d = seq - w->top;
        w->bits = d >= HB_REPLAY_BITS ? 1 : (w->bits << d) | 1;
        w->top = seq;
    } else {
        uint64_t d = w->top - seq;
        if (d >= HB_REPLAY_BITS) {
            return HB_REJ_TOO_OLD;
        }
        if (w->bits & ((uint64_t)1 << d)) {
            return HB_REJ_REPLAY;
        }
        w->bits |= (uint64_t)1 << d;
    }
    if (ts_ms > w->last_ts) {
        w->last_ts = ts_ms;
    }
    return HB_OK;
}

void hb_run_note(hb_run_t *r, uint64_t period)
{
    if (!r->any || period > r->last + 1) {
        r->first = period; /* a gap (or the first heartbeat): a new run */
    }
    if (!r->any || period > r->last) {
        r->last = period;
    }
    r->any = true;
}

bool hb_run_alive(const hb_run_t *r, uint64_t cur, unsigned n)
{
    if (!r->any || cur < n || n == 0) {
        return false;
    }
    return r->last + 1 >= cur && r->first <= cur - n;
}

void hb_core_init(hb_core_t *c, const char *const *site_names, size_t n_sites, size_t self,
                  const hb_timing_t *t, const hb_keys_t *keys, const uint8_t digest[HB_DIGEST_LEN])
{
    memset(c, 0, sizeof(*c));
    c->keys = keys;
    c->t = *t;
    assert(c->t.period_ms > 0 && c->t.periods > 0);
    c->n_sites = n_sites;
    c->self = self;
    c->sites = xcalloc(n_sites ? n_sites : 1, sizeof(*c->sites));
    for (size_t i = 0; i < n_sites; i++) {
        c->sites[i].name = xstrdup(site_names[i]);
        c->sites[i].senders = xcalloc(HB_MAX_SENDERS, sizeof(hb_sender_t));
        c->sites[i].view.load = -1;
        c->sites[i].view.rtt_ms = -1;
    }
    memcpy(c->digest, digest, HB_DIGEST_LEN);
}

void hb_core_deinit(hb_core_t *c)
{
    for (size_t i = 0; i < c->n_sites; i++) {
        free(c->sites[i].name);
        free(c->sites[i].senders);
    }
    free(c->sites);
    memset(c, 0, sizeof(*c));
}

/* A run measured in periods of old_p, in periods of new_p: never longer than it was. */
static void rescale(hb_run_t *r, uint64_t last_rx_ms, unsigned old_p, unsigned new_p)
{
    if (!r->any) {
        return;
    }
    uint64_t first = (r->first * old_p + new_p - 1) / new_p;
    r->last = last_rx_ms / new_p;
    r->first = first < r->last ? first : r->last;
}

void hb_core_reconf(hb_core_t *c, const char *const *site_names, size_t n_sites, size_t self,
                    const hb_timing_t *t, const uint8_t digest[HB_DIGEST_LEN], uint64_t now_mono)
{
    (void)now_mono;
    assert(t->period_ms > 0 && t->periods > 0);
    hb_rsite_t *ns = xcalloc(n_sites ? n_sites : 1, sizeof(*ns));
    for (size_t i = 0; i < n_sites; i++) {
        size_t k;
        for (k = 0; k < c->n_sites; k++) {
            if (c->sites[k].name && strcmp(c->sites[k].name, site_names[i]) == 0) {
                break;
            }
        }
        if (k < c->n_sites && k != c->self && i != self) {
            ns[i] = c->sites[k]; /* moved: senders, windows, runs, view */
            c->sites[k].name = NULL;
            c->sites[k].senders = NULL;
            continue;
        }
        ns[i].name = xstrdup(site_names[i]);
        ns[i].senders = xcalloc(HB_MAX_SENDERS, sizeof(hb_sender_t));
        ns[i].view.load = -1;
        ns[i].view.rtt_ms = -1;
    }
    for (size_t k = 0; k < c->n_sites; k++) {
        free(c->sites[k].name);
        free(c->sites[k].senders);
    }
    free(c->sites);
    c->sites = ns;
    c->n_sites = n_sites;
    c->self = self;
    memcpy(c->digest, digest, HB_DIGEST_LEN);
    for (size_t i = 0; i < n_sites; i++) {
        for (size_t j = 0; j < ns[i].n_senders; j++) {
            hb_sender_t *x = &ns[i].senders[j];
            x->digest_bad = memcmp(x->digest, digest, HB_DIGEST_LEN) != 0;
            if (t->period_ms != c->t.period_ms) {
                rescale(&x->run, x->last_rx_ms, c->t.period_ms, t->period_ms);
            }
        }
    }
    c->t = *t;
}

static void count(hb_stats_t *s, hb_rej_t r)
{
    uint64_t *ctr[HB_REJ_COUNT] = {
        [HB_OK] = &s->rx_ok,
        [HB_REJ_TRUNCATED] = &s->rej_truncated,
        [HB_REJ_OVERSIZED] = &s->rej_oversized,
        [HB_REJ_BAD_MAGIC] = &s->rej_bad_magic,
        [HB_REJ_BAD_VERSION] = &s->rej_bad_version,
        [HB_REJ_MALFORMED] = &s->rej_malformed,
        [HB_REJ_UNKNOWN_KEY] = &s->rej_unknown_key,
        [HB_REJ_BAD_MAC] = &s->rej_bad_mac,
        [HB_REJ_UNKNOWN_SENDER] = &s->rej_unknown_sender,
        [HB_REJ_SKEW] = &s->rej_skew,
        [HB_REJ_REPLAY] = &s->rej_replay,
        [HB_REJ_TOO_OLD] = &s->rej_too_old,
    };
    (*ctr[r])++;
}

/* The sender's slot in site s: found, new, or the longest silent one evicted. */
static hb_sender_t *sender_slot(hb_rsite_t *s, const char *id)
{
    for (size_t i = 0; i < s->n_senders; i++) {
        if (strcmp(s->senders[i].id, id) == 0) {
            return &s->senders[i];
        }
    }
    hb_sender_t *slot;
    if (s->n_senders < HB_MAX_SENDERS) {
        slot = &s->senders[s->n_senders++];
    } else {
        slot = &s->senders[0];
        for (size_t i = 1; i < s->n_senders; i++) {
            if (s->senders[i].last_rx_ms < slot->last_rx_ms) {
                slot = &s->senders[i];
            }
        }
        log_warn("heartbeat: site %s: more than %d senders; forgetting %s for %s", s->name,
                 HB_MAX_SENDERS, slot->id, id);
    }
    memset(slot, 0, sizeof(*slot));
    snprintf(slot->id, sizeof(slot->id), "%s", id);
    return slot;
}

static void note_digest(hb_core_t *c, const hb_rsite_t *s, hb_sender_t *snd, const hb_msg_t *m,
                        bool fresh)
{
    bool bad = memcmp(m->digest, c->digest, HB_DIGEST_LEN) != 0;
    bool changed = memcmp(m->digest, snd->digest, HB_DIGEST_LEN) != 0;
    if (bad && (fresh || changed)) {
        char hex[2 * HB_DIGEST_LEN + 1];
        sodium_bin2hex(hex, sizeof(hex), m->digest, HB_DIGEST_LEN);
        log_warn("heartbeat: site %s sender %s: config digest %s differs from ours: the sites "
                 "do not serve the same names and sites",
                 s->name, snd->id, hex);
    } else if (!bad && snd->digest_bad && !fresh) {
        log_info("heartbeat: site %s sender %s: config digest now matches ours", s->name, snd->id);
    }
    memcpy(snd->digest, m->digest, HB_DIGEST_LEN);
    snd->digest_bad = bad;
}

static hb_rej_t check(hb_core_t *c, const uint8_t *p, size_t len, uint64_t now_mono,
                      uint64_t now_wall)
{
    hb_msg_t m;
    hb_rej_t r = hb_decode(p, len, &m);
    if (r != HB_OK) {
        return r;
    }
    const uint8_t *key = hb_keys_find(c->keys, m.key_id);
    if (!key) {
        return HB_REJ_UNKNOWN_KEY;
    }
    if (!hb_mac_ok(p, len, key)) {
        return HB_REJ_BAD_MAC;
    }
    size_t si;
    for (si = 0; si < c->n_sites && strcmp(c->sites[si].name, m.site) != 0; si++) {
    }
    if (si == c->n_sites || si == c->self) {
        return HB_REJ_UNKNOWN_SENDER;
    }
    uint64_t skew = m.ts_ms > now_wall ? m.ts_ms - now_wall : now_wall - m.ts_ms;
    if (skew > c->t.max_skew_ms) {
        return HB_REJ_SKEW;
    }
    hb_rsite_t *s = &c->sites[si];
    hb_sender_t *snd = sender_slot(s, m.sender);
    bool fresh = !snd->win.used;
    uint64_t old_epoch = snd->win.epoch;
    r = hb_window_check(&snd->win, m.epoch, m.seq, m.ts_ms);
    if (r != HB_OK) {
        assert(!fresh); /* a fresh window accepts anything */
        return r;
    }
    if (!fresh && old_epoch != m.epoch) {
        static log_ratelimit_t rl = LOG_RATELIMIT_INIT(10, 60000);
        log_rl(&rl, LOG_LVL_INFO, "heartbeat: site %s sender %s restarted (new boot epoch)",
               s->name, snd->id);
    }
    hb_run_note(&snd->run, now_mono / c->t.period_ms);
    snd->last_rx_ms = now_mono ? now_mono : 1;
    snd->state = m.state;
    snd->reason = m.reason;
    snd->load = m.load;
    snd->rtt_us = m.rtt_us;
    note_digest(c, s, snd, &m, fresh);
    return HB_OK;
}

hb_rej_t hb_core_rx(hb_core_t *c, const uint8_t *p, size_t len, uint64_t now_mono,
                    uint64_t now_wall)
{
    hb_rej_t r = check(c, p, len, now_mono, now_wall);
    count(&c->stats, r);
    return r;
}

static int state_rank(uint8_t st)
{
    return st == HEALTH_UP ? 2 : st == HEALTH_DOWN ? 1 : 0;
}

static bool eval_site(hb_core_t *c, hb_rsite_t *s, uint64_t cur, bool fold)
{
    const hb_sender_t *best = NULL, *fresh = NULL;
    unsigned live = 0;
    for (size_t i = 0; i < s->n_senders; i++) {
        const hb_sender_t *x = &s->senders[i];
        if (!fresh || x->last_rx_ms > fresh->last_rx_ms) {
            fresh = x;
        }
        if (!hb_run_alive(&x->run, cur, c->t.periods)) {
            continue;
        }
        live++;
        if (!best || state_rank(x->state) > state_rank(best->state) ||
            (state_rank(x->state) == state_rank(best->state) && x->last_rx_ms > best->last_rx_ms)) {
            best = x;
        }
    }
    const hb_sender_t *src = best ? best : fresh;
    hb_site_t v = s->view;
    v.alive = live > 0;
    v.available = best && best->state == HEALTH_UP;
    v.live_senders = live;
    v.reported = src ? (health_state_t)src->state : HEALTH_UNKNOWN;
    v.reason = src ? src->reason : HB_REASON_STARTING;
    v.digest_mismatch = src && src->digest_bad;
    v.last_rx_ms = fresh ? fresh->last_rx_ms : 0;
    bool changed = v.alive != s->view.alive || v.available != s->view.available ||
                   v.live_senders != s->view.live_senders || v.reported != s->view.reported ||
                   v.reason != s->view.reason || v.digest_mismatch != s->view.digest_mismatch;
    if (fold || changed) {
        v.load = !src || src->load == HB_LOAD_NONE ? -1 : src->load / (double)HB_LOAD_SCALE;
        v.rtt_ms = !src || src->rtt_us == HB_RTT_NONE ? -1 : src->rtt_us / 1000.0;
        changed = changed || v.load != s->view.load || v.rtt_ms != s->view.rtt_ms;
    }
    if (v.available != s->view.available) {
        v.transitions++;
        char rb[16];
        log_info("heartbeat: site %s %s: %u/%zu senders alive (a heartbeat in each of the last "
                 "%u periods of %ums), reported %s (%s)",
                 s->name, v.available ? "AVAILABLE" : "UNAVAILABLE", live, s->n_senders,
                 c->t.periods, c->t.period_ms,
                 v.reported == HEALTH_UP     ? "up"
                 : v.reported == HEALTH_DOWN ? "down"
                                             : "unknown",
                 hb_reason_str(v.reason, rb, sizeof(rb)));
    }
    s->view = v;
    return changed;
}

bool hb_core_eval(hb_core_t *c, uint64_t now_mono, bool fold_metrics)
{
    uint64_t cur = now_mono / c->t.period_ms;
    bool changed = false;
    for (size_t i = 0; i < c->n_sites; i++) {
        if (i != c->self) {
            changed |= eval_site(c, &c->sites[i], cur, fold_metrics);
        }
    }
    return changed;
}
