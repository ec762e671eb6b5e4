/* test_sync.c: unit tests of the sync module's pure parts: HLC, conflict rules (tables of
 * cases), wire codec round trips and rejections, the encrypted channel. */
#include "sync/internal.h"
#include "tap.h"

#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <unistd.h>

static sync_ver_t V(uint64_t hlc, uint32_t site)
{
    return (sync_ver_t){hlc, site};
}

static void test_hlc(void)
{
    static const struct {
        uint64_t last, wall, want;
    } cases[] = {
        {0, 1000, 1000ull << 16},
        {(1000ull << 16) + 5, 1000, (1000ull << 16) + 6}, /* same ms: logical counter */
        {(2000ull << 16), 1000, (2000ull << 16) + 1},     /* clock went back: still increases */
        {(1000ull << 16) + 0xffff, 1000, (1001ull << 16)},
        {(999ull << 16), 1000, 1000ull << 16},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        uint64_t got = sync_hlc_next(cases[i].last, cases[i].wall);
        TAP_EQ_INT(got, cases[i].want, "hlc_next case %zu", i);
        tap_ok(got > cases[i].last, "hlc_next case %zu strictly increases", i);
    }
    tap_ok(!sync_hlc_future(1000ull << 16, 1000, 0), "now is not future");
    tap_ok(!sync_hlc_future(61000ull << 16, 1000, 60000), "exactly max skew ahead is allowed");
    tap_ok(sync_hlc_future(61001ull << 16, 1000, 60000), "past max skew is future");
}

static void test_rules(void)
{
    sync_rules_t lww = {SYNC_RESOLVE_LWW, NULL, 0};
    uint32_t prio[4] = {0, 10, 0, 5}; /* site 1 beats 3 beats 2 */
    sync_rules_t pr = {SYNC_RESOLVE_PRIORITY, prio, 4};
    static const struct {
        int mode; /* 0 lww, 1 priority */
        uint64_t ah;
        uint32_t as;
        uint64_t bh;
        uint32_t bs;
        int want;
    } cmp[] = {
        {0, 10, 1, 20, 1, -1}, {0, 20, 1, 10, 2, 1}, {0, 10, 1, 10, 2, -1}, /* tie: site id */
        {0, 10, 2, 10, 1, 1},  {0, 10, 2, 10, 2, 0}, {0, 0, 0, 1, 1, -1},   /* none loses */
        {1, 10, 2, 5, 1, -1},                                               /* prio 1 > 2 */
        {1, 99, 2, 5, 3, -1},  {1, 5, 3, 99, 2, 1},  {1, 10, 2, 20, 2, -1}, /* same prio */
        {1, 0, 0, 1, 2, -1},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cmp); i++) {
        int got = sync_ver_cmp(cmp[i].mode ? &pr : &lww, V(cmp[i].ah, cmp[i].as),
                               V(cmp[i].bh, cmp[i].bs));
        got = got < 0 ? -1 : got > 0;
        TAP_EQ_INT(got, cmp[i].want, "ver_cmp case %zu", i);
        int rev = sync_ver_cmp(cmp[i].mode ? &pr : &lww, V(cmp[i].bh, cmp[i].bs),
                               V(cmp[i].ah, cmp[i].as));
        rev = rev < 0 ? -1 : rev > 0;
        TAP_EQ_INT(rev, -cmp[i].want, "ver_cmp case %zu antisymmetric", i);
    }

    static const struct {
        uint32_t lcl, rcl;
        sync_row_action_t want;
    } rows[] = {
        {0, 1, SYNC_ROW_REPLACE},                           /* new row */
        {1, 1, SYNC_ROW_MERGE},   {1, 2, SYNC_ROW_REPLACE}, /* delete */
        {2, 1, SYNC_ROW_STALE},   /* update of a deleted row: delete wins */
        {2, 3, SYNC_ROW_REPLACE}, /* re-insert beats delete */
        {3, 2, SYNC_ROW_STALE},   {2, 2, SYNC_ROW_MERGE},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(rows); i++) {
        TAP_EQ_INT(sync_decide_row(rows[i].lcl, rows[i].rcl), rows[i].want, "decide_row %u vs %u",
                   rows[i].lcl, rows[i].rcl);
    }

    /* Column decisions: origin 2 sends to us (site 1). */
    static const struct {
        const char *what;
        sync_ver_t local, remote, base;
        bool take, conflict;
    } cols[] = {
        {"duplicate", {50, 2}, {50, 2}, {10, 1}, false, false},
        {"newer from origin over origin's older", {40, 2}, {50, 2}, {0, 0}, true, false},
        {"origin overwrote exactly what we had", {40, 1}, {50, 2}, {40, 1}, true, false},
        {"concurrent, remote later", {40, 1}, {50, 2}, {30, 3}, true, true},
        {"concurrent, local later", {60, 1}, {50, 2}, {30, 3}, false, true},
        {"concurrent, same hlc, site breaks tie (2 > 1)", {50, 1}, {50, 2}, {0, 0}, true, true},
        {"we have nothing", {0, 0}, {50, 2}, {0, 0}, true, false},
        {"relayed version of a third site, newer", {40, 1}, {50, 3}, {0, 0}, true, false},
        {"relayed version, older", {60, 1}, {50, 3}, {0, 0}, false, false},
        {"older from origin (reordered)", {60, 2}, {50, 2}, {0, 0}, false, false},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cols); i++) {
        sync_col_decision_t d =
            sync_decide_col(&lww, cols[i].local, cols[i].remote, cols[i].base, 2);
        tap_ok(d.take == cols[i].take && d.conflict == cols[i].conflict, "decide_col: %s",
               cols[i].what);
    }

    /* Convergence: merging a set of versions in every order gives the same winner. */
    sync_ver_t set[5] = {{100, 1}, {100, 2}, {99, 3}, {101, 1}, {101, 3}};
    int perm[5] = {0, 1, 2, 3, 4};
    bool same = true;
    for (int n = 0; n < 120; n++) {
        sync_ver_t cur = {0, 0};
        for (int k = 0; k < 5; k++) {
            if (sync_ver_cmp(&lww, set[perm[k]], cur) > 0) {
                cur = set[perm[k]];
            }
        }
        same = same && sync_ver_eq(cur, V(101, 3));
        /* next permutation */
        int i = 3;
        while (i >= 0 && perm[i] > perm[i + 1]) {
            i--;
        }
        if (i < 0) {
            break;
        }
        int j = 4;
        while (perm[j] < perm[i]) {
            j--;
        }
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
        for (int a = i + 1, b = 4; a < b; a++, b--) {
            t = perm[a];
            perm[a] = perm[b];
            perm[b] = t;
        }
    }
    tap_ok(same, "max register: every merge order converges on (101, site 3)");
}

static char *cols_items[] = {"id", "a", "b", "c", "d"};

static void make_batch(sync_batch_t *b, sync_wtable_t *t, sync_entry_t *e, sync_val_t *pk,
                       sync_val_t *val, sync_ver_t *ver, sync_ver_t *base)
{
    static const uint8_t blob[] = {0, 1, 2, 255};
    *t = (sync_wtable_t){"items", 1, 4, cols_items};
    pk[0] = (sync_val_t){SYNC_V_INT, 42, 0, NULL, 0};
    pk[1] = (sync_val_t){SYNC_V_TEXT, 0, 0, (const uint8_t *)"k2", 2};
    val[0] = (sync_val_t){SYNC_V_TEXT, 0, 0, (const uint8_t *)"hello", 5};
    val[1] = (sync_val_t){SYNC_V_INT, -7, 0, NULL, 0};
    val[2] = (sync_val_t){SYNC_V_REAL, 0, -2.5, NULL, 0};
    val[3] = (sync_val_t){SYNC_V_BLOB, 0, 0, blob, 4};
    for (int c = 0; c < 4; c++) {
        ver[c] = V(1000 + c, 3);
        base[c] = c == 1 ? V(900, 1) : V(0, 0);
    }
    e[0] = (sync_entry_t){0, 11, 1, {1000, 3}, 0x5, &pk[0], val, ver, base};
    e[1] = (sync_entry_t){0, 12, 2, {1001, 3}, 0, &pk[0], NULL, NULL, NULL};
    *b = (sync_batch_t){3, 10, 12, 1, t, 2, e};
}

static void test_codec(void)
{
    sync_batch_t b;
    sync_wtable_t t;
    sync_entry_t e[2];
    sync_val_t pk[2], val[4];
    sync_ver_t ver[4], base[4];
    make_batch(&b, &t, e, pk, val, ver, base);
    buf_t o;
    buf_init(&o);
    sync_enc_batch(&o, &b);
    arena_t *a = arena_new(4096);
    sync_msg_t m;
    const char *why = NULL;
    int rc = sync_decode(o.data, o.len, a, &m, &why);
    TAP_EQ_INT(rc, 0, "batch round trip decodes (%s)", why ? why : "ok");
    if (rc == 0) {
        const sync_batch_t *d = &m.u.batch;
        tap_ok(m.type == SYNC_MSG_BATCH && d->origin == 3 && d->seq_lo == 10 && d->seq_hi == 12,
               "batch header fields");
        tap_ok(d->ntables == 1 && strcmp(d->tables[0].name, "items") == 0 &&
                   d->tables[0].ncols == 4 && strcmp(d->tables[0].cols[4], "d") == 0,
               "table dictionary");
        const sync_entry_t *x = &d->entries[0];
        tap_ok(d->nentries == 2 && x->seq == 11 && x->cl == 1 && x->mask == 5 && x->pk[0].i == 42,
               "entry fields");
        tap_ok(x->val[0].len == 5 && memcmp(x->val[0].p, "hello", 5) == 0 && x->val[1].i == -7 &&
                   x->val[2].r == -2.5 && x->val[3].len == 4 && x->val[3].p[3] == 255,
               "values of every type");
        tap_ok(sync_ver_eq(x->base[1], V(900, 1)) && sync_ver_eq(x->ver[3], V(1003, 3)),
               "versions and bases");
        tap_ok(d->entries[1].cl == 2 && d->entries[1].val == NULL, "tombstone carries no row");
        buf_t o2;
        buf_init(&o2);
        sync_enc_batch(&o2, d);
        tap_ok(o2.len == o.len && memcmp(o2.data, o.data, o.len) == 0,
               "re-encoding the decoded batch gives the same bytes");
        buf_deinit(&o2);
    }
    /* every truncation is rejected */
    bool all = true;
    for (size_t n = 0; n < o.len; n++) {
        arena_t *a2 = arena_new(4096);
        if (sync_decode(o.data, n, a2, &m, &why) == 0) {
            all = false;
        }
        arena_free(a2);
    }
    tap_ok(all, "every truncated prefix is rejected");

    /* table of corruptions: offset, new byte, expected reason */
    static const struct {
        size_t off;
        uint8_t byte;
        const char *why;
    } bad[] = {
        {0, 'X', "bad magic"},
        {4, 9, "unsupported protocol version"},
        {5, 77, "unknown message type"},
        {11, 0, "length field does not match the message"},
        {12, 0, "origin site id out of range 1..65535"}, /* origin hi byte ok, see below */
        {35, '-', "name with a non-identifier character"},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(bad); i++) {
        buf_t c;
        buf_init(&c);
        buf_append(&c, o.data, o.len);
        if (bad[i].off == 12) {
            memset(c.data + 12, 0, 4);
        } else {
            c.data[bad[i].off] = bad[i].byte;
        }
        arena_t *a2 = arena_new(4096);
        rc = sync_decode(c.data, c.len, a2, &m, &why);
        tap_ok(rc != 0 && why && strcmp(why, bad[i].why) == 0, "corruption %zu rejected: %s (%s)",
               i, bad[i].why, why ? why : "accepted");
        arena_free(a2);
        buf_deinit(&c);
    }
    /* entries out of range / order, NaN, NULL pk */
    {
        sync_batch_t b2 = b;
        sync_entry_t e2[2] = {e[1], e[0]};
        b2.entries = e2;
        buf_t c;
        buf_init(&c);
        sync_enc_batch(&c, &b2);
        rc = sync_decode(c.data, c.len, a, &m, &why);
        tap_ok(rc != 0 && strcmp(why, "entries not in increasing position order") == 0,
               "entries out of order rejected");
        buf_reset(&c);
        b2 = b;
        b2.seq_hi = 11;
        sync_enc_batch(&c, &b2);
        rc = sync_decode(c.data, c.len, a, &m, &why);
        tap_ok(rc != 0 && strcmp(why, "entry position outside the batch range") == 0,
               "entry beyond the batch range rejected");
        buf_reset(&c);
        val[2].r = NAN;
        sync_enc_batch(&c, &b);
        rc = sync_decode(c.data, c.len, a, &m, &why);
        tap_ok(rc != 0 && strcmp(why, "NaN value") == 0, "NaN rejected");
        val[2].r = -2.5;
        buf_reset(&c);
        pk[0].type = SYNC_V_NULL;
        sync_enc_batch(&c, &b);
        rc = sync_decode(c.data, c.len, a, &m, &why);
        tap_ok(rc != 0 && strcmp(why, "NULL primary key value") == 0, "NULL key rejected");
        pk[0].type = SYNC_V_INT;
        buf_deinit(&c);
    }
    /* huge entry count with few bytes: no allocation, clear error */
    {
        buf_t c;
        buf_init(&c);
        sync_batch_t b3 = b;
        b3.nentries = 0;
        sync_enc_batch(&c, &b3);
        wr_u32(c.data + c.len - 4, 0xffffffffu);
        rc = sync_decode(c.data, c.len, a, &m, &why);
        tap_ok(rc != 0 && strcmp(why, "entry count larger than the message") == 0,
               "absurd entry count rejected before allocating");
        buf_deinit(&c);
    }
    /* hello, ack, heartbeat, error */
    {
        sync_hello_t h = {0};
        h.site_id = 7;
        strcpy(h.name, "eu_1");
        h.hlc = 123;
        h.cursor = 456;
        h.ntables = 1;
        strcpy(h.tables[0].name, "items");
        memset(h.tables[0].fp, 0xab, 16);
        buf_t c;
        buf_init(&c);
        sync_enc_hello(&c, &h);
        rc = sync_decode(c.data, c.len, a, &m, &why);
        tap_ok(rc == 0 && m.u.hello.site_id == 7 && strcmp(m.u.hello.name, "eu_1") == 0 &&
                   m.u.hello.cursor == 456 && m.u.hello.tables[0].fp[15] == 0xab,
               "hello round trip");
        buf_reset(&c);
        sync_enc_ack(&c, 3, 99);
        rc = sync_decode(c.data, c.len, a, &m, &why);
        tap_ok(rc == 0 && m.type == SYNC_MSG_ACK && m.u.ack.origin == 3 && m.u.ack.seq == 99,
               "ack round trip");
        buf_reset(&c);
        sync_enc_error(&c, 2, "schema differs");
        rc = sync_decode(c.data, c.len, a, &m, &why);
        tap_ok(rc == 0 && strcmp(m.u.error.text, "schema differs") == 0, "error round trip");
        buf_append(&c, "x", 1);
        rc = sync_decode(c.data, c.len, a, &m, &why);
        tap_ok(rc != 0, "trailing byte rejected");
        buf_deinit(&c);
    }
    arena_free(a);
    buf_deinit(&o);
}

static void test_chan(void)
{
    uint8_t psk[32], psk2[32];
    randombytes_buf(psk, 32);
    randombytes_buf(psk2, 32);
    sync_chan_t *d = sync_chan_new(0, 1, psk), *ac = sync_chan_new(1, 2, psk);
    uint32_t site = 0;
    TAP_EQ_INT(sync_chan_accept_hs(ac, sync_chan_hs(d), &site), 0, "acceptor takes handshake");
    TAP_EQ_INT(site, 1, "acceptor learns the dialer's site id");
    TAP_EQ_INT(sync_chan_accept_hs(d, sync_chan_hs(ac), &site), 0, "dialer takes handshake");
    buf_t rec, plain;
    buf_init(&rec);
    buf_init(&plain);
    sync_chan_seal(d, (const uint8_t *)"one", 3, &rec);
    sync_chan_seal(d, (const uint8_t *)"two!", 4, &rec);
    size_t used = 0;
    int r = sync_chan_open(ac, rec.data, rec.len, &plain, &used);
    tap_ok(r == 1 && plain.len == 3 && memcmp(plain.data, "one", 3) == 0, "first record opens");
    size_t u2 = 0;
    r = sync_chan_open(ac, rec.data + used, rec.len - used, &plain, &u2);
    tap_ok(r == 1 && plain.len == 4, "second record opens");
    r = sync_chan_open(ac, rec.data, used, &plain, &u2);
    TAP_EQ_INT(r, MS_EAUTH, "replayed record fails");
    TAP_EQ_INT(sync_chan_open(ac, rec.data, 3, &plain, &u2), 0, "partial record waits");
    buf_reset(&rec);
    sync_chan_seal(ac, (const uint8_t *)"back", 4, &rec);
    rec.data[6] ^= 1;
    TAP_EQ_INT(sync_chan_open(d, rec.data, rec.len, &plain, &u2), MS_EAUTH,
               "tampered record fails");
    buf_reset(&rec);
    uint8_t huge[4] = {0x7f, 0xff, 0xff, 0xff};
    TAP_EQ_INT(sync_chan_open(d, huge, 4, &plain, &u2), MS_ERANGE, "oversized length refused");
    sync_chan_free(d);
    sync_chan_free(ac);

    /* wrong key: handshake works, first record does not open */
    d = sync_chan_new(0, 1, psk);
    ac = sync_chan_new(1, 2, psk2);
    (void)!sync_chan_accept_hs(ac, sync_chan_hs(d), &site);
    (void)!sync_chan_accept_hs(d, sync_chan_hs(ac), &site);
    sync_chan_seal(d, (const uint8_t *)"hi", 2, &rec);
    TAP_EQ_INT(sync_chan_open(ac, rec.data, rec.len, &plain, &u2), MS_EAUTH,
               "a peer with another key is refused");
    uint8_t bad_hs[SYNC_HS_LEN];
    memcpy(bad_hs, sync_chan_hs(ac), SYNC_HS_LEN);
    TAP_EQ_INT(sync_chan_accept_hs(ac, bad_hs, &site), MS_EPARSE, "same-role handshake refused");
    sync_chan_free(d);
    sync_chan_free(ac);
    buf_deinit(&rec);
    buf_deinit(&plain);
}

/* Tombstone clean-up and the backlog limit (docs/sync.md §9). Horizon H = 1000 << 16. */
static void test_gc(void)
{
    const uint64_t H = 1000ull << 16;
    static const struct {
        bool found;
        uint32_t lcl;
        uint64_t lh;
        uint32_t rcl;
        uint64_t rh;
        bool absent;
        sync_gc_verdict_t want;
        const char *what;
    } cases[] = {
        {false, 0, 0, 1, 2000ull << 16, false, SYNC_GC_APPLY, "new row, fresh insert"},
        {false, 0, 0, 1, 500ull << 16, false, SYNC_GC_REFUSE, "unknown row, old incarnation"},
        {false, 0, 0, 3, 500ull << 16, false, SYNC_GC_REFUSE, "unknown row, old re-insert"},
        {false, 0, 0, 2, 500ull << 16, false, SYNC_GC_IGNORE, "expired delete of absent row"},
        {false, 0, 0, 2, 2000ull << 16, false, SYNC_GC_APPLY, "fresh delete of unknown row"},
        {true, 2, 500ull << 16, 1, 2000ull << 16, true, SYNC_GC_APPLY,
         "re-insert (counter restarted) over an expired tombstone"},
        {true, 2, 500ull << 16, 1, 400ull << 16, true, SYNC_GC_REFUSE,
         "stale update over an expired tombstone"},
        {true, 2, 2000ull << 16, 1, 400ull << 16, false, SYNC_GC_APPLY,
         "update vs a fresh tombstone: the usual rules (delete wins)"},
        {true, 1, 500ull << 16, 1, 400ull << 16, false, SYNC_GC_APPLY,
         "update of a live old row: the usual rules"},
        {true, 1, 2000ull << 16, 2, 500ull << 16, false, SYNC_GC_IGNORE,
         "expired delete of an older incarnation than ours"},
        {true, 1, 400ull << 16, 2, 500ull << 16, false, SYNC_GC_APPLY,
         "late delete of our incarnation: the usual rules"},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        sync_gc_t g = sync_gc_row(cases[i].found, cases[i].lcl, V(cases[i].lh, 1), cases[i].rcl,
                                  V(cases[i].rh, 2), H);
        TAP_EQ_INT(g.verdict, cases[i].want, "gc_row: %s", cases[i].what);
        tap_ok(g.local_absent == cases[i].absent, "gc_row: %s: local absent %d", cases[i].what,
               cases[i].absent);
        sync_gc_t off = sync_gc_row(cases[i].found, cases[i].lcl, V(cases[i].lh, 1), cases[i].rcl,
                                    V(cases[i].rh, 2), 0);
        tap_ok(off.verdict == SYNC_GC_APPLY && !off.local_absent, "gc_row off: %s", cases[i].what);
    }
    tap_ok(sync_gc_row(false, 0, V(0, 0), 1, V(0, 0), H).verdict == SYNC_GC_APPLY,
           "gc_row: no version is not judged");
    TAP_EQ_INT(sync_gc_horizon(10000, 3000), 7000ull << 16, "horizon");
    TAP_EQ_INT(sync_gc_horizon(10000, 0), 0, "horizon: retention 0 = off");
    TAP_EQ_INT(sync_gc_horizon(2000, 3000), 0, "horizon before the epoch");
    tap_ok(!sync_backlog_exceeded(0, 10000, 1000), "no backlog is never past the limit");
    tap_ok(!sync_backlog_exceeded(9000, 10000, 1000), "exactly the limit is within it");
    tap_ok(sync_backlog_exceeded(8999, 10000, 1000), "older than the limit");
    tap_ok(!sync_backlog_exceeded(1, 10000, 0), "limit 0 = keep forever");
    tap_ok(!sync_backlog_exceeded(20000, 10000, 1000), "a change from the future is not old");
}

static unsigned conf_quarantine_ms; /* quarantine_retention of the last config loaded */

static int conf_try(const char *sync_extra, char *msg, size_t n)
{
    char path[] = "/tmp/test_sync_conf_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        return -1;
    }
    FILE *f = fdopen(fd, "w");
    fprintf(f,
            "sync:\n  site: a\n  site_id: 1\n  database: /tmp/x.db\n  tables: [t]\n"
            "  listen: 127.0.0.1:7800\n  key_file: /tmp/k\n%s",
            sync_extra);
    fclose(f);
    sync_conf_t *c = NULL;
    conf_err_t err;
    int rc = sync_conf_load(path, &c, &err);
    snprintf(msg, n, "%s", rc == 0 ? "" : err.msg);
    if (rc == 0) {
        rc = (int)(c->tombstone_retention_ms / 60000); /* minutes: what the cases check */
        conf_quarantine_ms = c->quarantine_retention_ms;
    }
    sync_conf_free(c);
    unlink(path);
    return rc;
}

static void test_conf_life(void)
{
    char msg[512];
    TAP_EQ_INT(conf_try("", msg, sizeof(msg)), 7 * 24 * 60, "default retention 7d");
    TAP_EQ_INT(conf_quarantine_ms, 30u * 86400000u, "default quarantine retention 30d");
    tap_ok(conf_try("  quarantine_retention: 1s\n", msg, sizeof(msg)) >= 0 &&
               conf_quarantine_ms == 1000,
           "quarantine retention 1s");
    tap_ok(conf_try("  quarantine_retention: 0\n", msg, sizeof(msg)) >= 0 &&
               conf_quarantine_ms == 0,
           "quarantine retention 0: keep forever");
    tap_ok(conf_try("  quarantine_retention: 31d\n", msg, sizeof(msg)) < 0 &&
               strstr(msg, "quarantine_retention") != NULL && strstr(msg, "out of range") != NULL,
           "quarantine retention over 30 days refused: %s", msg);
    TAP_EQ_INT(conf_try("  max_peer_offline: 1d\n  tombstone_retention: 2d\n", msg, sizeof(msg)),
               2 * 24 * 60, "1d / 2d accepted");
    TAP_EQ_INT(conf_try("  max_peer_offline: 0\n  tombstone_retention: 0\n", msg, sizeof(msg)), 0,
               "both off accepted");
    tap_ok(conf_try("  max_peer_offline: 2d\n  tombstone_retention: 1d\n", msg, sizeof(msg)) < 0 &&
               strstr(msg, "is shorter than max_peer_offline") != NULL,
           "retention shorter than the backlog limit refused: %s", msg);
    tap_ok(conf_try("  max_peer_offline: 0\n", msg, sizeof(msg)) < 0 &&
               strstr(msg, "needs a max_peer_offline limit") != NULL,
           "retention without a backlog limit refused: %s", msg);
    tap_ok(conf_try("  max_peer_offline: 31d\n", msg, sizeof(msg)) < 0 &&
               strstr(msg, "out of range") != NULL,
           "limit over 30 days refused: %s", msg);
}

int main(void)
{
    if (sodium_init() < 0) {
        return 1;
    }
    test_hlc();
    test_rules();
    test_codec();
    test_chan();
    test_gc();
    test_conf_life();
    return tap_done();
}
