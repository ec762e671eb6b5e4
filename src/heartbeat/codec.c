/* codec.c: heartbeat datagram encode/decode and MAC (byte diagram in docs/heartbeat.md).
 *
 * Explicit big-endian field by field, never struct casts. The decoder is strict and
 * canonical: every field has one valid encoding, the length field must equal the datagram
 * length, and the two strings must exactly fill the space before the MAC, so that
 * encode(decode(d)) == d for every accepted d (the fuzz target checks this). */
#include "heartbeat/internal.h"

#include <sodium.h>
#include <string.h>

/* Field offsets. */
enum {
    OFF_MAGIC = 0,
    OFF_VERSION = 4,
    OFF_TYPE = 5,
    OFF_LENGTH = 6,
    OFF_KEY_ID = 8,
    OFF_EPOCH = 12,
    OFF_SEQ = 20,
    OFF_TS = 28,
    OFF_STATE = 36,
    OFF_REASON = 37,
    OFF_LOAD = 38,
    OFF_RTT = 40,
    OFF_DIGEST = 44,
    OFF_SITE_LEN = 60,
    OFF_SENDER_LEN = 61,
    OFF_STRINGS = 62
};
static_assert(OFF_DIGEST + HB_DIGEST_LEN == OFF_SITE_LEN, "digest ends at the string lengths");
static_assert(OFF_STRINGS == HB_FIXED_LEN, "fixed part");
static_assert(crypto_auth_hmacsha256_BYTES == HB_MAC_LEN, "MAC size");
static_assert(crypto_auth_hmacsha256_KEYBYTES == HB_KEY_LEN, "key size");

const char *hb_rej_str(hb_rej_t r)
{
    static const char *const names[HB_REJ_COUNT] = {
        [HB_OK] = "ok",
        [HB_REJ_TRUNCATED] = "truncated",
        [HB_REJ_OVERSIZED] = "oversized",
        [HB_REJ_BAD_MAGIC] = "bad magic",
        [HB_REJ_BAD_VERSION] = "bad version or type",
        [HB_REJ_MALFORMED] = "malformed",
        [HB_REJ_UNKNOWN_KEY] = "unknown key id",
        [HB_REJ_BAD_MAC] = "bad MAC",
        [HB_REJ_UNKNOWN_SENDER] = "unknown site",
        [HB_REJ_SKEW] = "timestamp skew",
        [HB_REJ_REPLAY] = "replayed",
        [HB_REJ_TOO_OLD] = "sequence number too old",
    };
    return (unsigned)r < HB_REJ_COUNT ? names[r] : "?";
}

const char *hb_reason_str(uint8_t reason, char *buf, size_t len)
{
    static const char *const names[] = {"ok", "web", "db", "lb", "drained", "starting"};
    if (reason < MS_ARRAY_LEN(names)) {
        return names[reason];
    }
    snprintf(buf, len, "code %u", reason);
    return buf;
}

size_t hb_encoded_len(const hb_msg_t *m)
{
    size_t s = strnlen(m->site, sizeof(m->site)), i = strnlen(m->sender, sizeof(m->sender));
    if (s == 0 || s > HB_NAME_MAX || i == 0 || i > HB_NAME_MAX) {
        return 0;
    }
    return HB_FIXED_LEN + s + i + HB_MAC_LEN;
}

size_t hb_encode(const hb_msg_t *m, const uint8_t key[HB_KEY_LEN], uint8_t *out, size_t cap)
{
    size_t len = hb_encoded_len(m);
    if (len == 0 || len > cap) {
        return 0;
    }
    size_t s = strlen(m->site), i = strlen(m->sender);
    wr_u32(out + OFF_MAGIC, HB_MAGIC);
    out[OFF_VERSION] = HB_VERSION;
    out[OFF_TYPE] = m->type;
    wr_u16(out + OFF_LENGTH, (uint16_t)len);
    wr_u32(out + OFF_KEY_ID, m->key_id);
    wr_u64(out + OFF_EPOCH, m->epoch);
    wr_u64(out + OFF_SEQ, m->seq);
    wr_u64(out + OFF_TS, m->ts_ms);
    out[OFF_STATE] = m->state;
    out[OFF_REASON] = m->reason;
    wr_u16(out + OFF_LOAD, m->load);
    wr_u32(out + OFF_RTT, m->rtt_us);
    memcpy(out + OFF_DIGEST, m->digest, HB_DIGEST_LEN);
    out[OFF_SITE_LEN] = (uint8_t)s;
    out[OFF_SENDER_LEN] = (uint8_t)i;
    memcpy(out + OFF_STRINGS, m->site, s);
    memcpy(out + OFF_STRINGS + s, m->sender, i);
    crypto_auth_hmacsha256(out + len - HB_MAC_LEN, out, len - HB_MAC_LEN, key);
    return len;
}

/* Names end up in logs: no control characters (bytes >= 0x80 are fine, UTF-8 names). */
static bool name_ok(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f) {
            return false;
        }
    }
    return true;
}

hb_rej_t hb_decode(const uint8_t *p, size_t len, hb_msg_t *m)
{
    if (len > HB_MAX_LEN) {
        return HB_REJ_OVERSIZED;
    }
    if (len < OFF_VERSION) {
        return HB_REJ_TRUNCATED;
    }
    if (rd_u32(p + OFF_MAGIC) != HB_MAGIC) {
        return HB_REJ_BAD_MAGIC;
    }
    if (len < OFF_KEY_ID) {
        return HB_REJ_TRUNCATED;
    }
    if (p[OFF_VERSION] != HB_VERSION || p[OFF_TYPE] != HB_TYPE_BEAT) {
        return HB_REJ_BAD_VERSION;
    }
    size_t flen = rd_u16(p + OFF_LENGTH);
    if (len < flen) {
        return HB_REJ_TRUNCATED;
    }
    if (len > flen) {
        return HB_REJ_OVERSIZED; /* trailing bytes */
    }
    if (len < HB_MIN_LEN) {
        return HB_REJ_TRUNCATED; /* consistent length field, but too short for a heartbeat */
    }
    size_t s = p[OFF_SITE_LEN], i = p[OFF_SENDER_LEN];
    if (s == 0 || s > HB_NAME_MAX || i == 0 || i > HB_NAME_MAX ||
        HB_FIXED_LEN + s + i + HB_MAC_LEN != len || !name_ok(p + OFF_STRINGS, s + i)) {
        return HB_REJ_MALFORMED;
    }
    uint16_t load = rd_u16(p + OFF_LOAD);
    if (p[OFF_STATE] > HEALTH_DOWN || (load > HB_LOAD_SCALE && load != HB_LOAD_NONE)) {
        return HB_REJ_MALFORMED;
    }
    memset(m, 0, sizeof(*m));
    m->type = p[OFF_TYPE];
    m->key_id = rd_u32(p + OFF_KEY_ID);
    m->epoch = rd_u64(p + OFF_EPOCH);
    m->seq = rd_u64(p + OFF_SEQ);
    m->ts_ms = rd_u64(p + OFF_TS);
    m->state = p[OFF_STATE];
    m->reason = p[OFF_REASON];
    m->load = load;
    m->rtt_us = rd_u32(p + OFF_RTT);
    memcpy(m->digest, p + OFF_DIGEST, HB_DIGEST_LEN);
    memcpy(m->site, p + OFF_STRINGS, s);
    memcpy(m->sender, p + OFF_STRINGS + s, i);
    return HB_OK;
}

bool hb_mac_ok(const uint8_t *p, size_t len, const uint8_t key[HB_KEY_LEN])
{
    if (len < HB_MAC_LEN) {
        return false;
    }
    /* crypto_auth_hmacsha256_verify compares in constant time. */
    return crypto_auth_hmacsha256_verify(p + len - HB_MAC_LEN, p, len - HB_MAC_LEN, key) == 0;
}
