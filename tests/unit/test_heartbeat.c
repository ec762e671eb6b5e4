/* test_heartbeat.c: the heartbeat module: codec round trips, key files and keygen, a table of
 * hostile datagrams (forged, unknown key, replayed, reordered, too old, truncated, oversized,
 * bad magic/version, malformed, skewed, restarted sender), the liveness tracker on a fake
 * clock (detection within N+1 periods, recovery, several senders, jitter and loss), reload,
 * the config digest, and two real instances on a libuv loop over loopback.
 *
 * The same binary is also the heartbeat driver of the namespace test and bench/heartbeat.sh:
 *     test_heartbeat --drive CONFIG [--state up|down]
 * runs hb_new() for CONFIG on a libuv loop and prints one line per remote-site change:
 *     t=MONO_MS site=NAME alive=0|1 available=0|1 reported=up|down|unknown live=N digest=ok|bad
 * stdin lines "up" / "down" change what it reports; "reload CONFIG" calls hb_reload() and
 * prints "reload ok|failed"; "stats" (or EOF / SIGTERM) prints
 *     stats rx_ok=N tx=N rej_...=N ...                       */
#include "heartbeat/internal.h"
#include "tap.h"

#include <arpa/inet.h>
#include <signal.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/test_heartbeat.XXXXXX";

static char *write_file(const char *name, const char *text, mode_t mode)
{
    char *p = xasprintf("%s/%s", dir, name);
    unlink(p);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
    chmod(p, mode);
    return p;
}

static uint8_t key1[HB_KEY_LEN], key2[HB_KEY_LEN], key_wrong[HB_KEY_LEN];
static hb_keys_t keys;

static void make_keys(void)
{
    randombytes_buf(key1, sizeof(key1));
    randombytes_buf(key2, sizeof(key2));
    randombytes_buf(key_wrong, sizeof(key_wrong));
    char h1[65], h2[65], text[400];
    sodium_bin2hex(h1, sizeof(h1), key1, 32);
    sodium_bin2hex(h2, sizeof(h2), key2, 32);
    snprintf(text, sizeof(text), "# test keys\n1 %s\n\n  2\t%s   # newer\n3 %s verify-only\n", h1,
             h2, h1);
    char why[200];
    int rc = hb_keys_parse(text, strlen(text), &keys, why, sizeof(why));
    tap_ok(rc == 0 && keys.n == 3 && keys.ids[keys.newest] == 2,
           "key text parses; signing key: 2 (3 is verify-only)");
    tap_ok(rc == 0 && memcmp(hb_keys_find(&keys, 1), key1, 32) == 0 &&
               memcmp(hb_keys_find(&keys, 2), key2, 32) == 0 && hb_keys_find(&keys, 3) &&
               !hb_keys_find(&keys, 4),
           "keys found by id");
}

/* ---- codec ---- */

static hb_msg_t base_msg(const char *site, const char *sender, uint64_t epoch, uint64_t seq,
                         uint64_t ts)
{
    hb_msg_t m = {.type = HB_TYPE_BEAT,
                  .key_id = 2,
                  .epoch = epoch,
                  .seq = seq,
                  .ts_ms = ts,
                  .state = HEALTH_UP,
                  .reason = HB_REASON_OK,
                  .load = 2500,
                  .rtt_us = 12345};
    snprintf(m.site, sizeof(m.site), "%s", site);
    snprintf(m.sender, sizeof(m.sender), "%s", sender);
    return m;
}

static void test_codec(void)
{
    hb_msg_t m = base_msg("us", "dns1.us.example", 0x0102030405060708ull, 42, 1700000000123ull);
    for (int i = 0; i < HB_DIGEST_LEN; i++) {
        m.digest[i] = (uint8_t)(0xa0 + i);
    }
    uint8_t b[HB_MAX_LEN + 8];
    size_t n = hb_encode(&m, key2, b, sizeof(b));
    TAP_EQ_INT(n, HB_FIXED_LEN + 2 + 15 + HB_MAC_LEN, "encoded length");
    tap_ok(rd_u32(b) == HB_MAGIC && b[4] == 1 && b[5] == 1 && rd_u16(b + 6) == n &&
               rd_u32(b + 8) == 2 && rd_u64(b + 12) == 0x0102030405060708ull &&
               rd_u64(b + 20) == 42 && rd_u64(b + 28) == 1700000000123ull && b[36] == 1 &&
               rd_u16(b + 38) == 2500 && rd_u32(b + 40) == 12345 && b[44] == 0xa0 && b[60] == 2 &&
               b[61] == 15 && memcmp(b + 62, "usdns1.us.example", 17) == 0,
           "fields at the documented offsets, big-endian");
    hb_msg_t d;
    tap_ok(hb_decode(b, n, &d) == HB_OK && memcmp(&d, &m, sizeof(d)) == 0, "round trip");
    tap_ok(hb_mac_ok(b, n, key2) && !hb_mac_ok(b, n, key1), "MAC verifies with its key only");
    uint8_t b2[HB_MAX_LEN];
    tap_ok(hb_encode(&d, key2, b2, sizeof(b2)) == n && memcmp(b, b2, n) == 0, "canonical");
    /* Longest names. */
    char longn[HB_NAME_MAX + 1];
    memset(longn, 'x', HB_NAME_MAX);
    longn[HB_NAME_MAX] = '\0';
    m = base_msg(longn, longn, 1, 1, 1);
    TAP_EQ_INT(hb_encode(&m, key1, b, sizeof(b)), HB_MAX_LEN, "63-byte names: maximum size");
    TAP_EQ_INT(hb_encode(&m, key1, b, HB_MAX_LEN - 1), 0, "refuses a short buffer");
    m = base_msg("", "x", 1, 1, 1);
    TAP_EQ_INT(hb_encode(&m, key1, b, sizeof(b)), 0, "refuses an empty site name");
    /* Unknown state/load mark. */
    m = base_msg("a", "b", 1, 1, 1);
    m.load = HB_LOAD_NONE;
    m.rtt_us = HB_RTT_NONE;
    m.state = HEALTH_UNKNOWN;
    n = hb_encode(&m, key1, b, sizeof(b));
    TAP_EQ_INT(n, HB_MIN_LEN, "1-byte names: minimum size");
    tap_ok(hb_decode(b, n, &d) == HB_OK && d.load == HB_LOAD_NONE && d.rtt_us == HB_RTT_NONE,
           "unknown load and rtt survive");
}

/* ---- key files and keygen ---- */

static void test_keyfiles(void)
{
    static const struct {
        const char *text;
        const char *why; /* substring of the reason */
    } bad[] = {
        {"", "no keys"},
        {"# only a comment\n", "no keys"},
        {"1 abcd\n", "64 hex"},
        {"0 "
         "0000000000000000000000000000000000000000000000000000000000000000\n",
         "ID 1.."},
        {"4294967296 "
         "0000000000000000000000000000000000000000000000000000000000000000\n",
         "ID 1.."},
        {"x 0000000000000000000000000000000000000000000000000000000000000000\n", "ID 1.."},
        {"1 000000000000000000000000000000000000000000000000000000000000000g\n", "64 hex"},
        {"1 0000000000000000000000000000000000000000000000000000000000000000 junk\n",
         "after the key"},
        {"1 0000000000000000000000000000000000000000000000000000000000000000\n"
         "1 1111111111111111111111111111111111111111111111111111111111111111\n",
         "twice"},
        {"1\n", "ID 1.."},
        {"1 0000000000000000000000000000000000000000000000000000000000000000 verify-only\n",
         "nothing to sign"},
        {"1 0000000000000000000000000000000000000000000000000000000000000000 verify-onlyx\n",
         "after the key"},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(bad); i++) {
        hb_keys_t k;
        char why[200] = "";
        int rc = hb_keys_parse(bad[i].text, strlen(bad[i].text), &k, why, sizeof(why));
        tap_ok(rc != 0 && strstr(why, bad[i].why), "bad key file %zu refused: %s", i, why);
    }
    char *path = xasprintf("%s/hb.key", dir);
    TAP_EQ_INT(hb_keygen(path, false), 0, "keygen writes a key file");
    struct stat st;
    tap_ok(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600, "keygen: mode 0600");
    TAP_EQ_INT(hb_keygen(path, false), MS_EEXIST, "keygen refuses to overwrite");
    hb_keys_t k;
    char why[300];
    tap_ok(hb_keys_load(path, true, &k, why, sizeof(why)) == 0 && k.n == 1 && k.ids[0] == 1,
           "generated file loads: one key, id 1");
    uint8_t first[HB_KEY_LEN];
    memcpy(first, hb_keys_find(&k, 1), HB_KEY_LEN);
    hb_keys_deinit(&k);
    TAP_EQ_INT(hb_keygen(path, true), 0, "keygen --add appends");
    tap_ok(hb_keys_load(path, true, &k, why, sizeof(why)) == 0 && k.n == 2 &&
               k.ids[k.newest] == 1 && memcmp(hb_keys_find(&k, 1), first, HB_KEY_LEN) == 0 &&
               hb_keys_find(&k, 2) && memcmp(hb_keys_find(&k, 2), first, HB_KEY_LEN) != 0,
           "rotation: key 1 kept and still signs; new key 2 verify-only");
    hb_keys_deinit(&k);
    char *text;
    size_t tl;
    if (file_read_all(path, 4096, &text, &tl) == 0) {
        char *vo = strstr(text, " verify-only\n");
        tap_ok(vo != NULL, "keygen --add marks the key verify-only");
        if (vo) {
            memmove(vo, vo + 12, strlen(vo + 12) + 1);
        }
        tap_ok(hb_keys_parse(text, strlen(text), &k, why, sizeof(why)) == 0 && k.ids[k.newest] == 2,
               "mark removed: key 2 signs");
        hb_keys_deinit(&k);
        sodium_memzero(text, tl);
        free(text);
    }
    chmod(path, 0640);
    tap_ok(hb_keys_load(path, true, &k, why, sizeof(why)) != 0 && strstr(why, "chmod 600"),
           "group-readable key file refused: %s", why);
    chmod(path, 0604);
    tap_ok(hb_keys_load(path, true, &k, why, sizeof(why)) != 0, "other-readable refused");
    char *missing = xasprintf("%s/nope.key", dir);
    tap_ok(hb_keys_load(missing, true, &k, why, sizeof(why)) != 0 && strstr(why, "nope.key"),
           "missing key file: %s", why);
    free(missing);
    free(path);
}

/* ---- hostile datagrams through the receiver core ---- */

#define WALL0 1700000000000ull
#define MONO0 1000000ull

static const char *const site_names[] = {"eu", "us", "ap"};
static const hb_timing_t timing = {500, 3, 2000};
static const uint8_t digest0[HB_DIGEST_LEN] = {1, 2, 3};

typedef struct {
    const char *site, *sender;
    uint64_t epoch, seq;
    int64_t ts_off; /* from the receiver's wall clock */
    uint32_t key_id;
    const uint8_t *key; /* NULL: the key of key_id */
    int mutate;         /* see dgram() */
    hb_rej_t want;
    const char *what;
} rx_case_t;

enum {
    MUT_NONE,
    MUT_FLIP_BODY, /* a byte of the seq number changed after signing */
    MUT_FLIP_MAC,  /* a MAC byte changed */
    MUT_CUT_50,    /* first 50 bytes */
    MUT_CUT_3,     /* first 3 bytes */
    MUT_CUT_MAC,   /* the MAC's last byte missing */
    MUT_TRAIL,     /* one byte appended */
    MUT_HUGE,      /* 300 bytes */
    MUT_MAGIC,     /* magic changed */
    MUT_VERSION,   /* version 2 */
    MUT_TYPE,      /* type 7 */
    MUT_STATE,     /* state 3, re-signed */
    MUT_LOAD,      /* load 20000, re-signed */
    MUT_LEN_FIELD, /* length field 4 bytes short, re-signed */
    MUT_NAME_CTRL, /* control character in the sender id, re-signed */
    MUT_STRLEN,    /* site length 0, re-signed */
    MUT_EMPTY      /* zero bytes */
};

static size_t dgram(const rx_case_t *c, uint64_t wall, uint8_t *b)
{
    hb_msg_t m =
        base_msg(c->site, c->sender, c->epoch, c->seq, (uint64_t)((int64_t)wall + c->ts_off));
    memcpy(m.digest, digest0, HB_DIGEST_LEN);
    m.key_id = c->key_id;
    const uint8_t *key = c->key ? c->key : c->key_id == 1 ? key1 : key2;
    size_t n = hb_encode(&m, key, b, HB_MAX_LEN);
    switch (c->mutate) {
    case MUT_FLIP_BODY: b[27] ^= 1; break;
    case MUT_FLIP_MAC: b[n - 1] ^= 0x80; break;
    case MUT_CUT_50: n = 50; break;
    case MUT_CUT_3: n = 3; break;
    case MUT_CUT_MAC: n--; break;
    case MUT_TRAIL: b[n++] = 0; break;
    case MUT_HUGE: memset(b + n, 0, 300 - n), n = 300; break;
    case MUT_MAGIC: b[0] = 'X'; break;
    case MUT_VERSION: b[4] = 2; break;
    case MUT_TYPE: b[5] = 7; break;
    case MUT_EMPTY: n = 0; break;
    default: break;
    }
    if (c->mutate >= MUT_STATE && c->mutate <= MUT_STRLEN) {
        if (c->mutate == MUT_STATE) {
            b[36] = 3;
        } else if (c->mutate == MUT_LOAD) {
            wr_u16(b + 38, 20000);
        } else if (c->mutate == MUT_LEN_FIELD) {
            memmove(b + n - 36, b + n - 32, 32);
            n -= 4;
            wr_u16(b + 6, (uint16_t)n);
        } else if (c->mutate == MUT_NAME_CTRL) {
            b[62 + strlen(c->site)] = '\n';
        } else {
            b[60] = 0;
        }
        crypto_auth_hmacsha256(b + n - 32, b, n - 32, key);
    }
    return n;
}

static void test_rejections(void)
{
    hb_core_t c;
    hb_core_init(&c, site_names, 3, 0, &timing, &keys, digest0);
    const uint64_t E1 = 111, E2 = 222;
    const rx_case_t cases[] = {
        {"us", "us-1", E1, 10, 0, 2, NULL, 0, HB_OK, "first heartbeat accepted"},
        {"us", "us-1", E1, 10, 0, 2, NULL, 0, HB_REJ_REPLAY, "same sequence number: replay"},
        {"us", "us-1", E1, 8, 0, 2, NULL, 0, HB_OK, "reordered within the window accepted"},
        {"us", "us-1", E1, 8, 0, 2, NULL, 0, HB_REJ_REPLAY, "reordered one again: replay"},
        {"us", "us-1", E1, 11, 0, 1, NULL, 0, HB_OK, "older key id 1 still accepted"},
        {"us", "us-1", E1, 100, 0, 2, NULL, 0, HB_OK, "jump ahead"},
        {"us", "us-1", E1, 36, 0, 2, NULL, 0, HB_REJ_TOO_OLD, "64 behind: too old"},
        {"us", "us-1", E1, 37, 0, 2, NULL, 0, HB_OK, "63 behind: inside the window"},
        {"us", "us-1", E1, 37, 0, 2, NULL, 0, HB_REJ_REPLAY, "63 behind again: replay"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_FLIP_BODY, HB_REJ_BAD_MAC, "forged body"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_FLIP_MAC, HB_REJ_BAD_MAC, "forged MAC"},
        {"us", "us-1", E1, 101, 0, 2, key_wrong, 0, HB_REJ_BAD_MAC, "signed with a wrong key"},
        {"us", "us-1", E1, 101, 0, 9, key_wrong, 0, HB_REJ_UNKNOWN_KEY, "unknown key id"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_CUT_50, HB_REJ_TRUNCATED, "truncated to 50"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_CUT_3, HB_REJ_TRUNCATED, "truncated to 3"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_CUT_MAC, HB_REJ_TRUNCATED, "MAC cut short"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_EMPTY, HB_REJ_TRUNCATED, "empty datagram"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_TRAIL, HB_REJ_OVERSIZED, "trailing byte"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_HUGE, HB_REJ_OVERSIZED, "300 bytes"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_MAGIC, HB_REJ_BAD_MAGIC, "bad magic"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_VERSION, HB_REJ_BAD_VERSION, "version 2"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_TYPE, HB_REJ_BAD_VERSION, "unknown type"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_STATE, HB_REJ_MALFORMED, "state 3"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_LOAD, HB_REJ_MALFORMED, "load > 1"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_LEN_FIELD, HB_REJ_MALFORMED,
         "strings overrun the length"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_NAME_CTRL, HB_REJ_MALFORMED, "control char"},
        {"us", "us-1", E1, 101, 0, 2, NULL, MUT_STRLEN, HB_REJ_MALFORMED, "empty site name"},
        {"zz", "zz-1", E1, 101, 0, 2, NULL, 0, HB_REJ_UNKNOWN_SENDER, "site not configured"},
        {"eu", "eu-2", E1, 101, 0, 2, NULL, 0, HB_REJ_UNKNOWN_SENDER, "claims our own site"},
        {"us", "us-1", E1, 101, 2001, 2, NULL, 0, HB_REJ_SKEW, "2.001 s in the future"},
        {"us", "us-1", E1, 101, -2500, 2, NULL, 0, HB_REJ_SKEW, "2.5 s in the past"},
        {"us", "us-1", E1, 101, -1999, 2, NULL, 0, HB_OK, "1.999 s in the past accepted"},
        {"us", "us-1", E1, 102, 1500, 2, NULL, 0, HB_OK, "1.5 s ahead accepted (last ts)"},
        {"us", "us-1", E2, 1, 1000, 2, NULL, 0, HB_REJ_REPLAY,
         "new epoch not newer than the last timestamp: replay"},
        {"us", "us-1", E2, 1, 1600, 2, NULL, 0, HB_OK, "restarted sender (new epoch) accepted"},
        {"us", "us-1", E2, 1, 1600, 2, NULL, 0, HB_REJ_REPLAY, "new epoch: seq 1 again"},
        {"us", "us-1", E1, 103, 1500, 2, NULL, 0, HB_REJ_REPLAY, "old epoch recorded: replay"},
        {"us", "us-1", E1, 5000, 0, 2, NULL, 0, HB_REJ_REPLAY, "old epoch, high seq: replay"},
        {"us", "us-1", E2, 2, 1601, 2, NULL, 0, HB_OK, "new epoch continues"},
        {"us", "us-2", E1, 1, 0, 2, NULL, 0, HB_OK, "second sender of the site"},
        {"ap", "us-1", E1, 1, 0, 2, NULL, 0, HB_OK, "same id at another site: own window"},
    };
    uint64_t counts[HB_REJ_COUNT] = {0};
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        uint8_t b[400];
        size_t n = dgram(&cases[i], WALL0, b);
        hb_rej_t r = hb_core_rx(&c, b, n, MONO0, WALL0);
        counts[cases[i].want]++;
        tap_ok(r == cases[i].want, "rx %zu: %s -> %s", i, cases[i].what, hb_rej_str(r));
        if (r != cases[i].want) {
            tap_diag("  expected %s", hb_rej_str(cases[i].want));
        }
    }
    const hb_stats_t *s = &c.stats;
    tap_ok(s->rx_ok == counts[HB_OK] && s->rej_truncated == counts[HB_REJ_TRUNCATED] &&
               s->rej_oversized == counts[HB_REJ_OVERSIZED] &&
               s->rej_bad_magic == counts[HB_REJ_BAD_MAGIC] &&
               s->rej_bad_version == counts[HB_REJ_BAD_VERSION] &&
               s->rej_malformed == counts[HB_REJ_MALFORMED] &&
               s->rej_unknown_key == counts[HB_REJ_UNKNOWN_KEY] &&
               s->rej_bad_mac == counts[HB_REJ_BAD_MAC] &&
               s->rej_unknown_sender == counts[HB_REJ_UNKNOWN_SENDER] &&
               s->rej_skew == counts[HB_REJ_SKEW] && s->rej_replay == counts[HB_REJ_REPLAY] &&
               s->rej_too_old == counts[HB_REJ_TOO_OLD],
           "every datagram counted under its reason");
    TAP_EQ_INT(c.sites[1].n_senders, 2, "site us: two senders");
    TAP_EQ_INT(c.sites[0].n_senders, 0, "no state for our own site");
    hb_core_deinit(&c);

    /* Unauthenticated input never creates state; an authentic flood of ids is bounded. */
    hb_core_init(&c, site_names, 3, 0, &timing, &keys, digest0);
    for (int i = 0; i < 40; i++) {
        char id[16];
        snprintf(id, sizeof(id), "s%d", i);
        rx_case_t x = {"us", id, 1, 1, 0, 2, key_wrong, 0, HB_REJ_BAD_MAC, ""};
        uint8_t b[400];
        size_t n = dgram(&x, WALL0, b);
        (void)hb_core_rx(&c, b, n, MONO0 + (uint64_t)i, WALL0);
    }
    TAP_EQ_INT(c.sites[1].n_senders, 0, "forged datagrams create no sender state");
    for (int i = 0; i < 40; i++) {
        char id[16];
        snprintf(id, sizeof(id), "s%d", i);
        rx_case_t x = {"us", id, 1, 1, 0, 2, NULL, 0, HB_OK, ""};
        uint8_t b[400];
        size_t n = dgram(&x, WALL0, b);
        (void)hb_core_rx(&c, b, n, MONO0 + (uint64_t)i, WALL0);
    }
    TAP_EQ_INT(c.sites[1].n_senders, HB_MAX_SENDERS, "sender table bounded");
    hb_core_deinit(&c);
}

/* ---- window unit cases ---- */

static void test_window(void)
{
    hb_window_t w = {0};
    tap_ok(hb_window_check(&w, 1, 1000, 10) == HB_OK, "window: first");
    tap_ok(hb_window_check(&w, 1, 1000 + 200, 11) == HB_OK, "window: jump beyond its width");
    tap_ok(hb_window_check(&w, 1, 1000, 12) == HB_REJ_TOO_OLD, "window: the old top is too old");
    tap_ok(hb_window_check(&w, 1, 1199, 12) == HB_OK, "window: just below the top");
    tap_ok(hb_window_check(&w, 1, UINT64_MAX, 13) == HB_OK, "window: max seq");
    tap_ok(hb_window_check(&w, 1, UINT64_MAX, 13) == HB_REJ_REPLAY, "window: max seq replay");
    tap_ok(hb_window_check(&w, 2, 0, 13) == HB_REJ_REPLAY, "window: epoch with an equal ts");
    tap_ok(hb_window_check(&w, 2, 0, 14) == HB_OK, "window: epoch with a newer ts");
}

/* ---- liveness on a fake clock ---- */

typedef struct {
    hb_core_t c;
    uint64_t now; /* mono ms */
    uint64_t seq[4];
    uint8_t state[4];
    uint64_t down_transitions;
    bool last_avail;
} sim_t;

static void sim_init(sim_t *s, const hb_timing_t *t)
{
    memset(s, 0, sizeof(*s));
    hb_core_init(&s->c, site_names, 3, 0, t, &keys, digest0);
    s->now = MONO0;
    for (int i = 0; i < 4; i++) {
        s->state[i] = HEALTH_UP;
    }
}

static void sim_send(sim_t *s, int sender)
{
    char id[8];
    snprintf(id, sizeof(id), "us-%d", sender);
    hb_msg_t m = base_msg("us", id, 7 + (uint64_t)sender, ++s->seq[sender], WALL0 + s->now);
    m.state = s->state[sender];
    m.load = (uint16_t)(1000 * (sender + 1));
    memcpy(m.digest, digest0, HB_DIGEST_LEN);
    uint8_t b[HB_MAX_LEN];
    size_t n = hb_encode(&m, key2, b, sizeof(b));
    hb_rej_t r = hb_core_rx(&s->c, b, n, s->now, WALL0 + s->now);
    if (r != HB_OK) {
        tap_diag("sim_send: %s", hb_rej_str(r));
    }
    hb_core_eval(&s->c, s->now, false);
}

/* Advance the clock 1 ms at a time (evaluating like the boundary timer would), sending from
 * each sender in mask every `every` ms (offset by sender). Returns the first time (ms from
 * the start) site us's availability equals `until`, or -1. */
static long sim_run(sim_t *s, unsigned mask, unsigned every, uint64_t ms, int until)
{
    for (uint64_t k = 0; k < ms; k++) {
        s->now++;
        for (int i = 0; i < 4; i++) {
            if ((mask & (1u << i)) && (s->now + (uint64_t)i * 7) % every == 0) {
                sim_send(s, i);
            }
        }
        hb_core_eval(&s->c, s->now, true);
        bool av = s->c.sites[1].view.available;
        if (s->last_avail && !av) {
            s->down_transitions++;
        }
        s->last_avail = av;
        if (until >= 0 && av == (bool)until) {
            return (long)k + 1;
        }
    }
    return -1;
}

static void test_liveness(void)
{
    hb_run_t r = {0};
    tap_ok(!hb_run_alive(&r, 10, 3), "run: nothing heard");
    hb_run_note(&r, 7);
    hb_run_note(&r, 8);
    hb_run_note(&r, 9);
    tap_ok(hb_run_alive(&r, 10, 3), "run: 7,8,9 complete at 10: alive");
    tap_ok(!hb_run_alive(&r, 9, 3), "run: at 9 only 7,8 complete: not yet");
    tap_ok(hb_run_alive(&r, 10, 1) && !hb_run_alive(&r, 11, 1), "run: N=1");
    tap_ok(!hb_run_alive(&r, 11, 3), "run: 10 empty: dead at 11");
    hb_run_note(&r, 11);
    tap_ok(!hb_run_alive(&r, 12, 1) || r.first == 11, "run: gap restarts the run");
    tap_ok(!hb_run_alive(&r, 12, 2), "run: after a gap one period is not enough for N=2");

    sim_t s;
    sim_init(&s, &timing);
    unsigned P = timing.period_ms, N = timing.periods;
    long up = sim_run(&s, 1, 33, 10000, 1);
    tap_ok(up > (long)(N - 1) * (long)P && up <= (long)(N + 1) * (long)P,
           "available after N complete periods: %ld ms", up);
    tap_ok(s.c.sites[1].view.alive && s.c.sites[1].view.live_senders == 1 &&
               s.c.sites[1].view.reported == HEALTH_UP,
           "alive, 1 live sender, reported up");
    tap_ok(s.c.sites[1].view.load > 0.099 && s.c.sites[1].view.load < 0.101,
           "load from the heartbeat: %.3f", s.c.sites[1].view.load);
    tap_ok(s.c.sites[1].view.rtt_ms > 12.3 && s.c.sites[1].view.rtt_ms < 12.4, "rtt 12.345 ms");
    tap_ok(s.c.sites[2].view.available == false && s.c.sites[2].view.last_rx_ms == 0,
           "silent site ap: not available");

    /* Kill the sender at many phases of the period: detection within N+1 periods, and in
     * fact within 2 periods (the first empty period, once complete). */
    long worst = 0, best = 1 << 30;
    for (unsigned phase = 0; phase < 500; phase += 37) {
        if (sim_run(&s, 1, 33, 3000, 1) < 0) {
            tap_ok(false, "recovered before the next trial");
        }
        sim_run(&s, 1, 33, phase, -1); /* recovery ends on a boundary: move off it */
        long det = sim_run(&s, 0, 33, 5000, 0);
        worst = det > worst ? det : worst;
        best = det >= 0 && det < best ? det : best;
        if (det < 0) {
            worst = 1 << 30;
        }
    }
    tap_ok(worst > 0 && worst <= (long)(N + 1) * (long)P && worst <= 2 * (long)P,
           "sender killed: noticed within %ld..%ld ms (bound: 2 periods, N+1 = %u ms)", best, worst,
           (N + 1) * P);
    long back = sim_run(&s, 1, 33, 5000, 1);
    tap_ok(back > 0 && back <= (long)(N + 1) * (long)P, "recovery after %ld ms", back);

    /* One missing period is enough to fail (the rule is strict), one period too short. */
    s.now += P;
    sim_run(&s, 0, 33, 1, -1);
    tap_ok(!s.c.sites[1].view.available, "a whole period without heartbeat: unavailable");
    hb_core_deinit(&s.c);

    /* Several senders: any alive one keeps the site alive; any UP report makes it available. */
    sim_init(&s, &timing);
    sim_run(&s, 3, 33, 3000, -1);
    tap_ok(s.c.sites[1].view.available && s.c.sites[1].view.live_senders == 2, "2 senders live");
    sim_run(&s, 2, 33, 1200, -1);
    tap_ok(s.c.sites[1].view.available && s.c.sites[1].view.live_senders == 1,
           "one sender dead: site still available");
    s.state[1] = HEALTH_DOWN;
    sim_run(&s, 2, 33, 40, -1);
    tap_ok(!s.c.sites[1].view.available && s.c.sites[1].view.alive &&
               s.c.sites[1].view.reported == HEALTH_DOWN,
           "its only live sender reports DOWN: alive, not available, reported down");
    s.state[0] = HEALTH_UP;
    sim_run(&s, 3, 33, 2100, -1);
    tap_ok(s.c.sites[1].view.available && s.c.sites[1].view.reported == HEALTH_UP &&
               s.c.sites[1].view.load > 0.09 && s.c.sites[1].view.load < 0.11,
           "sender 0 back and UP: available, its load %.2f", s.c.sites[1].view.load);
    s.state[0] = HEALTH_DOWN;
    long t_down = sim_run(&s, 3, 33, 200, 0);
    tap_ok(t_down > 0 && t_down <= 40, "a DOWN report takes effect at once (%ld ms)", t_down);
    hb_core_deinit(&s.c);

    /* Jitter and loss: 15 heartbeats per period with 30% loss and +-15 ms jitter for 1200
     * periods (10 minutes): no DOWN; 5 per period (one per 100 ms): some periods go empty. */
    unsigned seed = 12345;
    for (int variant = 0; variant < 2; variant++) {
        sim_init(&s, &timing);
        unsigned every = variant == 0 ? 33 : 100;
        sim_run(&s, 1, 33, 3000, -1);
        uint64_t next = s.now + every, end = s.now + 1200ull * P;
        uint64_t sent = 0, lost = 0;
        while (s.now < end) {
            s.now++;
            if (s.now >= next) {
                sent++;
                if (rand_r(&seed) % 100 >= 30) {
                    sim_send(&s, 0);
                } else {
                    lost++;
                }
                next = s.now + every - 15 + (uint64_t)(rand_r(&seed) % 31);
            }
            hb_core_eval(&s.c, s.now, true);
            bool av = s.c.sites[1].view.available;
            s.down_transitions += s.last_avail && !av;
            s.last_avail = av;
        }
        if (variant == 0) {
            TAP_EQ_INT(s.down_transitions, 0,
                       "30%% loss, 15/period, 10 min: no DOWN (lost %llu of %llu)",
                       (unsigned long long)lost, (unsigned long long)sent);
        } else {
            tap_ok(s.down_transitions > 0,
                   "30%% loss, 5/period, 10 min: %llu DOWNs (why we send 3 per interval)",
                   (unsigned long long)s.down_transitions);
        }
        hb_core_deinit(&s.c);
    }

    /* Digest mismatch shows in the view. */
    uint8_t other[HB_DIGEST_LEN] = {9};
    hb_core_init(&s.c, site_names, 3, 0, &timing, &keys, other);
    s.now = MONO0;
    s.seq[0] = 0;
    sim_send(&s, 0);
    tap_ok(s.c.sites[1].view.digest_mismatch, "config digest mismatch shown");
    hb_core_deinit(&s.c);
}

/* Reload: a site that keeps its name keeps its liveness; renamed or now-own sites do not; a
 * changed period keeps an alive sender alive. */
static void test_reconf(void)
{
    sim_t s;
    sim_init(&s, &timing);
    sim_run(&s, 1, 33, 3000, -1);
    tap_ok(s.c.sites[1].view.available, "reconf: us available before");
    const char *const renamed[] = {"ap", "eu", "us", "sa"};
    hb_timing_t t2 = {400, 3, 2000};
    uint8_t d2[HB_DIGEST_LEN] = {7};
    hb_core_reconf(&s.c, renamed, 4, 1, &t2, d2, s.now);
    tap_ok(s.c.n_sites == 4 && strcmp(s.c.sites[2].name, "us") == 0 &&
               s.c.sites[2].n_senders == 1 && s.c.sites[2].view.available,
           "reconf: us moved to index 2 with its sender and view");
    tap_ok(s.c.sites[2].senders[0].digest_bad, "reconf: digest flags recomputed");
    bool ch = hb_core_eval(&s.c, s.now, true);
    tap_ok(s.c.sites[2].view.available && s.c.sites[2].view.digest_mismatch && ch,
           "reconf: still available after a period change (digest now differs)");
    TAP_EQ_INT(s.c.sites[1].n_senders, 0, "reconf: our own site has no senders");
    /* Keep sending as site us to index 2: the window continues, no replay. */
    uint64_t rej = s.c.stats.rej_replay;
    for (int k = 0; k < 100; k++) {
        s.now += 33;
        sim_send(&s, 0);
        hb_core_eval(&s.c, s.now, true);
        if (!s.c.sites[2].view.available) {
            break;
        }
    }
    tap_ok(s.c.sites[2].view.available && s.c.stats.rej_replay == rej,
           "reconf: stream continues without a flap or a replay");
    const char *const gone[] = {"eu", "ap"};
    hb_core_reconf(&s.c, gone, 2, 0, &timing, digest0, s.now);
    hb_core_eval(&s.c, s.now, true);
    tap_ok(s.c.n_sites == 2 && !s.c.sites[1].view.available && s.c.sites[1].n_senders == 0,
           "reconf: site us removed, ap starts empty");
    hb_core_deinit(&s.c);
}

/* ---- config digest ---- */

static conf_t *load_conf(const char *text)
{
    char *p = write_file("ms.yaml", text, 0644);
    conf_t *c = NULL;
    conf_err_t ce;
    if (conf_load(p, &c, &ce) != 0) {
        tap_diag("conf: %s", ce.msg);
        c = NULL;
    }
    free(p);
    return c;
}

#define DCONF(sites, names) "server:\n  listen: 127.0.0.1:1\nsites:\n" sites "names:\n" names
#define SITE_EU             "  - name: eu\n    addresses: [192.0.2.10]\n    web-servers: [127.0.0.1:1]\n"
#define SITE_US             "  - name: us\n    addresses: [198.51.100.10]\n    web-servers: [127.0.0.1:2]\n"
#define SITE_US2            "  - name: us\n    addresses: [198.51.100.11]\n    web-servers: [127.0.0.1:3]\n"
#define NAME_W              "  - name: www.example.com\n    sites: [eu, us]\n"
#define NAME_W2             "  - name: WWW.example.com.\n    sites: [eu, us]\n"
#define NAME_WR             "  - name: www.example.com\n    sites: [us, eu]\n"

static void test_digest(void)
{
    const char *texts[] = {
        DCONF(SITE_EU SITE_US, NAME_W),
        DCONF(SITE_US SITE_EU, NAME_W2),
        DCONF(SITE_EU SITE_US2, NAME_W),
        DCONF(SITE_EU SITE_US, NAME_WR),
    };
    uint8_t d[4][HB_DIGEST_LEN];
    for (int i = 0; i < 4; i++) {
        conf_t *c = load_conf(texts[i]);
        tap_ok(c != NULL, "digest conf %d loads", i);
        if (c) {
            hb_conf_digest(c, d[i]);
            conf_free(c);
        }
    }
    tap_ok(memcmp(d[0], d[1], HB_DIGEST_LEN) == 0,
           "digest ignores section order, name case and trailing dot, web servers");
    tap_ok(memcmp(d[0], d[2], HB_DIGEST_LEN) != 0, "digest sees an answer address");
    tap_ok(memcmp(d[0], d[3], HB_DIGEST_LEN) != 0, "digest sees a name's site order");
}

/* ---- the module on a real loop over loopback: two instances talk ---- */

static uint16_t free_udp_port(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &l) != 0) {
        return 0;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static conf_t *loop_conf(const char *self, uint16_t pa, uint16_t pb, const char *key,
                         const char *extra_name)
{
    char text[2048];
    snprintf(text, sizeof(text),
             "server:\n  listen: 127.0.0.1:1\nsites:\n"
             "  - name: eu\n    addresses: [192.0.2.10]\n    web-servers: [127.0.0.1:1]\n"
             "    heartbeat-peers: [127.0.0.1:%u]\n"
             "  - name: us\n    addresses: [198.51.100.10]\n    web-servers: [127.0.0.1:2]\n"
             "    heartbeat-peers: [127.0.0.1:%u]\n"
             "names:\n  - name: www.example.com\n    sites: [eu, us]\n%s"
             "heartbeat:\n  self: %s\n  id: dns-%s\n  listen: 127.0.0.1:%u\n"
             "  key-file: %s\n",
             pa, pb, extra_name ? extra_name : "", self, self, strcmp(self, "eu") == 0 ? pa : pb,
             key);
    return load_conf(text);
}

static int loop_changes;
static void loop_cb(void *ud)
{
    (void)ud;
    loop_changes++;
}
static void loop_tick(uv_timer_t *t)
{
    (void)t;
}

/* Run the loop until pred(a) or ms pass; returns the ms it took, or -1. */
static long loop_until(uv_loop_t *loop, hb_t *a, bool (*pred)(hb_t *), long ms)
{
    uint64_t t0 = time_mono_ms();
    while (!pred(a)) {
        if ((long)(time_mono_ms() - t0) > ms) {
            return -1;
        }
        uv_run(loop, UV_RUN_ONCE);
    }
    return (long)(time_mono_ms() - t0);
}

static bool us_available(hb_t *a)
{
    return hb_site(a, 1)->available;
}
static bool us_down(hb_t *a)
{
    return hb_site(a, 1)->alive && hb_site(a, 1)->reported == HEALTH_DOWN;
}
static bool us_gone(hb_t *a)
{
    return !hb_site(a, 1)->alive;
}

static void test_loop(void)
{
    uint16_t pa = free_udp_port(), pb = free_udp_port();
    char *key = xasprintf("%s/loop.key", dir);
    tap_ok(pa && pb && pa != pb && hb_keygen(key, false) == 0, "loop: ports %u %u, key", pa, pb);
    conf_t *ca = loop_conf("eu", pa, pb, key, NULL), *cb = loop_conf("us", pa, pb, key, NULL);
    if (!ca || !cb) {
        tap_ok(false, "loop: configs");
        return;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_timer_t tick;
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, loop_tick, 10, 10);
    hb_t *a = NULL, *b = NULL;
    tap_ok(hb_new(&loop, ca, loop_cb, NULL, &a) == 0 && hb_new(&loop, cb, NULL, NULL, &b) == 0,
           "loop: two instances start");
    if (!a || !b) {
        return;
    }
    tap_ok(hb_site(a, 0) == NULL && hb_site(a, 2) == NULL && hb_site(a, 1) != NULL,
           "loop: no view of our own site or past the end");
    hb_self_t up = {HEALTH_UP, HB_REASON_OK, 0.5, 20.0},
              down = {HEALTH_DOWN, HB_REASON_DB, 0.5, 20.0};
    hb_set_self(b, &up);
    long t = loop_until(&loop, a, us_available, 4000);
    tap_ok(t > 0 && t <= 2100, "loop: us available after %ld ms (N complete periods)", t);
    tap_ok(loop_changes > 0, "loop: change callback ran");
    loop_until(&loop, a, us_gone, 600); /* one more period folds the load in */
    tap_ok(hb_site(a, 1)->load > 0.49 && hb_site(a, 1)->load < 0.51 &&
               hb_site(a, 1)->rtt_ms > 19.9 && hb_site(a, 1)->rtt_ms < 20.1,
           "loop: load %.2f and rtt %.1f ms carried", hb_site(a, 1)->load, hb_site(a, 1)->rtt_ms);
    hb_set_self(b, &down);
    t = loop_until(&loop, a, us_down, 1000);
    tap_ok(t >= 0 && t < 200 && !hb_site(a, 1)->available && hb_site(a, 1)->reason == HB_REASON_DB,
           "loop: DOWN (db) reported within %ld ms", t);
    hb_set_self(b, &up);
    loop_until(&loop, a, us_available, 1000);

    /* Reload: a new name changes our digest; sockets and liveness are kept. */
    conf_t *ca2 = loop_conf("eu", pa, pb, key, "  - name: api.example.com\n    sites: [us]\n");
    uint64_t tr0 = hb_site(a, 1)->transitions;
    tap_ok(ca2 && hb_reload(a, ca2) == 0, "loop: reload");
    t = loop_until(&loop, a, us_gone, 1200);
    tap_ok(t < 0 && hb_site(a, 1)->available && hb_site(a, 1)->transitions == tr0 &&
               hb_site(a, 1)->digest_mismatch,
           "loop: no flap across the reload; digest now differs");
    char *bad = xasprintf("%s/bad.key", dir);
    free(write_file("bad.key", "1 00\n", 0600));
    conf_t *ca3 = loop_conf("eu", pa, pb, bad, NULL);
    tap_ok(ca3 && hb_reload(a, ca3) != 0, "loop: reload with a bad key file refused");
    t = loop_until(&loop, a, us_gone, 700);
    tap_ok(t < 0 && hb_site(a, 1)->available, "loop: still running on the old keys");

    hb_free(b);
    uint64_t t0 = time_mono_ms();
    t = loop_until(&loop, a, us_gone, 3000);
    tap_ok(t >= 0 && time_mono_ms() - t0 <= 2000, "loop: us gone %llu ms after it stopped",
           (unsigned long long)(time_mono_ms() - t0));
    hb_stats_t st;
    hb_get_stats(a, &st);
    tap_ok(st.tx > 20 && st.rx_ok > 20 && st.tx_err == 0 && st.rej_bad_mac == 0 &&
               st.rej_replay == 0 && st.rej_skew == 0,
           "loop: tx %llu rx_ok %llu, nothing rejected", (unsigned long long)st.tx,
           (unsigned long long)st.rx_ok);
    hb_free(a);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    TAP_EQ_INT(uv_loop_close(&loop), 0, "loop: every handle closed");
    conf_free(ca);
    conf_free(cb);
    conf_free(ca2);
    conf_free(ca3);
    free(bad);
    free(key);
}

/* ---- the driver (namespace test, bench) ---- */

static hb_t *drv_hb;
static const conf_t *drv_conf;
static hb_site_t *drv_prev;
static uv_pipe_t drv_in;
static uv_signal_t drv_sig;
static hb_self_t drv_self = {HEALTH_UP, HB_REASON_OK, 0.25, 5.0};

static void drv_stats(void)
{
    hb_stats_t s;
    hb_get_stats(drv_hb, &s);
    printf("stats rx_ok=%llu tx=%llu tx_err=%llu truncated=%llu oversized=%llu bad_magic=%llu "
           "bad_version=%llu malformed=%llu unknown_key=%llu bad_mac=%llu unknown_sender=%llu "
           "skew=%llu replay=%llu too_old=%llu\n",
           (unsigned long long)s.rx_ok, (unsigned long long)s.tx, (unsigned long long)s.tx_err,
           (unsigned long long)s.rej_truncated, (unsigned long long)s.rej_oversized,
           (unsigned long long)s.rej_bad_magic, (unsigned long long)s.rej_bad_version,
           (unsigned long long)s.rej_malformed, (unsigned long long)s.rej_unknown_key,
           (unsigned long long)s.rej_bad_mac, (unsigned long long)s.rej_unknown_sender,
           (unsigned long long)s.rej_skew, (unsigned long long)s.rej_replay,
           (unsigned long long)s.rej_too_old);
    fflush(stdout);
}

static void drv_changed(void *ud)
{
    (void)ud;
    for (size_t i = 0; i < drv_conf->n_sites; i++) {
        const hb_site_t *v = hb_site(drv_hb, i);
        if (!v) {
            continue;
        }
        hb_site_t *p = &drv_prev[i];
        if (p->alive == v->alive && p->available == v->available && p->reported == v->reported &&
            p->live_senders == v->live_senders && p->digest_mismatch == v->digest_mismatch) {
            continue;
        }
        *p = *v;
        printf("t=%llu site=%s alive=%d available=%d reported=%s live=%u digest=%s\n",
               (unsigned long long)time_mono_ms(), drv_conf->sites[i].name, v->alive, v->available,
               v->reported == HEALTH_UP     ? "up"
               : v->reported == HEALTH_DOWN ? "down"
                                            : "unknown",
               v->live_senders, v->digest_mismatch ? "bad" : "ok");
        fflush(stdout);
    }
}

static void drv_stop(void)
{
    drv_stats();
    uv_close((uv_handle_t *)&drv_in, NULL);
    uv_close((uv_handle_t *)&drv_sig, NULL);
    hb_free(drv_hb);
    drv_hb = NULL;
}

/* "reload PATH": hb_reload() with a new config; prints "reload ok" or "reload failed". */
static void drv_reload(char *path)
{
    conf_t *c;
    conf_err_t ce;
    int rc = conf_load(path, &c, &ce);
    if (rc != 0) {
        fprintf(stderr, "%s\n", ce.msg);
    } else if ((rc = hb_reload(drv_hb, c)) != 0) {
        conf_free(c);
    } else {
        conf_free((conf_t *)drv_conf);
        drv_conf = c;
        free(drv_prev);
        drv_prev = xcalloc(c->n_sites, sizeof(*drv_prev));
        drv_changed(NULL);
    }
    printf("reload %s\n", rc == 0 ? "ok" : "failed");
    fflush(stdout);
    free(path);
}

static void drv_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    (void)sz;
    static char buf[1024];
    *b = uv_buf_init(buf, sizeof(buf) - 1);
}

static void drv_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    (void)st;
    if (n < 0) {
        if (drv_hb) {
            drv_stop();
        }
        return;
    }
    if (!drv_hb) {
        return;
    }
    b->base[n] = '\0'; /* the buffer has room: see drv_alloc */
    /* Commands are short and written one per write: good enough for a test tool. */
    if (n >= 2 && memcmp(b->base, "up", 2) == 0) {
        drv_self.state = HEALTH_UP;
        drv_self.reason = HB_REASON_OK;
        hb_set_self(drv_hb, &drv_self);
    } else if (n >= 4 && memcmp(b->base, "down", 4) == 0) {
        drv_self.state = HEALTH_DOWN;
        drv_self.reason = HB_REASON_WEB;
        hb_set_self(drv_hb, &drv_self);
    } else if (n >= 5 && memcmp(b->base, "stats", 5) == 0) {
        drv_stats();
    } else if (n > 7 && memcmp(b->base, "reload ", 7) == 0) {
        drv_reload(xstrndup(b->base + 7, strcspn(b->base + 7, "\n") < (size_t)n - 7
                                             ? strcspn(b->base + 7, "\n")
                                             : (size_t)n - 7));
    }
}

static void drv_on_signal(uv_signal_t *s, int sig)
{
    (void)s;
    (void)sig;
    if (drv_hb) {
        drv_stop();
    }
}

static int drive(int argc, char **argv)
{
    log_init("test_heartbeat", false, LOG_LVL_INFO);
    if (argc < 3) {
        fprintf(stderr, "usage: test_heartbeat --drive CONFIG [--state up|down]\n");
        return 2;
    }
    if (argc >= 5 && strcmp(argv[3], "--state") == 0 && strcmp(argv[4], "down") == 0) {
        drv_self.state = HEALTH_DOWN;
        drv_self.reason = HB_REASON_WEB;
    }
    conf_t *c;
    conf_err_t ce;
    if (conf_load(argv[2], &c, &ce) != 0) {
        fprintf(stderr, "%s\n", ce.msg);
        return 1;
    }
    drv_conf = c;
    drv_prev = xcalloc(c->n_sites, sizeof(*drv_prev));
    uv_loop_t *loop = uv_default_loop();
    if (hb_new(loop, c, drv_changed, NULL, &drv_hb) != 0) {
        return 1;
    }
    hb_set_self(drv_hb, &drv_self);
    /* Commands only from a pipe (libuv cannot poll a file or /dev/null). */
    uv_pipe_init(loop, &drv_in, 0);
    if (uv_guess_handle(0) == UV_NAMED_PIPE && uv_pipe_open(&drv_in, 0) == 0) {
        uv_read_start((uv_stream_t *)&drv_in, drv_alloc, drv_read);
    }
    uv_signal_init(loop, &drv_sig);
    uv_signal_start(&drv_sig, drv_on_signal, SIGTERM);
    printf("ready t=%llu\n", (unsigned long long)time_mono_ms());
    fflush(stdout);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    free(drv_prev);
    conf_free((conf_t *)drv_conf); /* c, or what a reload replaced it with */
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--drive") == 0) {
        return drive(argc, argv);
    }
    if (sodium_init() < 0 || !mkdtemp(dir)) {
        printf("Bail out! setup\n");
        return 1;
    }
    log_init("test_heartbeat", false, LOG_LVL_ERR);
    make_keys();
    test_codec();
    test_keyfiles();
    test_window();
    test_rejections();
    test_liveness();
    test_reconf();
    test_digest();
    test_loop();
    hb_keys_deinit(&keys);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) {
        tap_diag("cannot remove %s", dir);
    }
    return tap_done();
}
