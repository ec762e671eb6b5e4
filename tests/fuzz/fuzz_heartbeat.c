/* fuzz_heartbeat.c: fuzz target for the heartbeat decoder and receiver core (src/heartbeat).
 *
 * The first input byte picks the mode:
 *   bit 0 clear: the rest is a datagram as it arrives (decoder, key lookup, MAC check);
 *   bit 0 set:   the rest is re-signed with the fuzzer's key first, so the fuzzer gets past
 *                the MAC to the checks behind it (site, skew, replay window, liveness);
 *   bit 1 set:   our wall clock is the datagram's own timestamp (gets past the skew check).
 * The receiver core persists across inputs, like a long-lived daemon.
 * Whatever the decoder accepts must re-encode to the same bytes (the codec is canonical). */
#include "heartbeat/internal.h"

#include <sodium.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static hb_keys_t keys;
static hb_core_t core;
static bool ready;
static uint64_t now_mono = 1000000;

static void setup(void)
{
    static const char text[] =
        "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";
    static const char *const sites[] = {"eu", "us", "ap"};
    static const hb_timing_t t = {500, 3, 2000};
    static const uint8_t digest[HB_DIGEST_LEN] = {0};
    char why[200];
    if (sodium_init() < 0 || hb_keys_parse(text, sizeof(text) - 1, &keys, why, sizeof(why))) {
        __builtin_trap();
    }
    log_init("fuzz_heartbeat", false, LOG_LVL_ERR);
    hb_core_init(&core, sites, 3, 0, &t, &keys, digest);
    ready = true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ready) {
        setup();
    }
    if (size < 1) {
        return 0;
    }
    uint8_t mode = data[0];
    bool resign = mode & 1;
    data++;
    size--;
    uint8_t buf[512];
    if (size > sizeof(buf)) {
        size = sizeof(buf);
    }
    memcpy(buf, data, size);
    if (resign && size >= HB_MAC_LEN) {
        crypto_auth_hmacsha256(buf + size - HB_MAC_LEN, buf, size - HB_MAC_LEN, keys.bytes);
    }
    hb_msg_t m;
    if (hb_decode(buf, size, &m) == HB_OK) {
        uint8_t out[HB_MAX_LEN];
        const uint8_t *k = hb_keys_find(&keys, m.key_id);
        if (k && hb_mac_ok(buf, size, k)) {
            if (hb_encode(&m, k, out, sizeof(out)) != size || memcmp(out, buf, size) != 0) {
                __builtin_trap(); /* canonical */
            }
        }
    }
    /* The wall clock follows the datagram's own timestamp now and then, so that the window
     * and epoch logic behind the skew check is reached. */
    uint64_t wall = size >= 36 && (mode & 2) ? rd_u64(buf + 28) : 1700000000000ull;
    now_mono += 37;
    hb_rej_t r = hb_core_rx(&core, buf, size, now_mono, wall);
    if ((unsigned)r >= HB_REJ_COUNT) {
        __builtin_trap();
    }
    hb_core_eval(&core, now_mono, (now_mono / 37) % 2);
    return 0;
}
