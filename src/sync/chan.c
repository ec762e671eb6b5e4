/* chan.c: the encrypted, authenticated channel between two agents.
 *
 * Why this construction: the sites share one pre-shared key (PSK) and nothing else, so there
 * is no PKI to do TLS against. Each connection does an X25519 exchange of fresh ephemeral
 * keys (crypto_kx) and mixes the PSK and both handshake records into the session keys with
 * keyed BLAKE2b. So
 *   - only holders of the PSK derive the keys: a peer without it fails on its first record;
 *   - each connection has fresh keys (forward secrecy against a later PSK leak for recorded
 *     traffic would need the ephemeral secrets, which are never stored);
 *   - a recorded session cannot be replayed into a new one (different ephemeral keys).
 * Records are XChaCha20-Poly1305 with a per-direction 64-bit counter as nonce, the length
 * prefix as associated data, so dropped, reordered, replayed or altered records fail to
 * open. crypto_secretstream would do the same job; a plain counter nonce keeps the record
 * format one length and one ciphertext, documented in docs/sync.md.
 *
 *   handshake record (cleartext, 48 bytes):
 *     "MSSH" | version u8 | role u8 | 0 u16 | site_id u32 | X25519 public key (32) | 0 u32
 */
#include "sync/internal.h"

#include <ctype.h>
#include <sodium.h>
#include <string.h>

#define HS_MAGIC 0x4D535348u /* "MSSH" */

struct sync_chan {
    int role;
    uint8_t hs[SYNC_HS_LEN];
    uint8_t pk[crypto_kx_PUBLICKEYBYTES];
    uint8_t *secret; /* sodium_malloc: ephemeral secret key, then tx key, rx key, psk */
    uint64_t tx_ctr, rx_ctr;
    bool ready;
};

#define SK(c)  ((c)->secret)
#define TXK(c) ((c)->secret + 32)
#define RXK(c) ((c)->secret + 64)
#define PSK(c) ((c)->secret + 96)

static void sodium_once(void)
{
    if (sodium_init() < 0) {
        log_err("libsodium failed to initialise");
        abort();
    }
}

void sync_hash16(const void *p, size_t n, uint8_t out[16])
{
    crypto_generichash(out, 16, p, n, NULL, 0);
}

sync_chan_t *sync_chan_new(int role, uint32_t site_id, const uint8_t *psk)
{
    sodium_once();
    sync_chan_t *c = xcalloc(1, sizeof(*c));
    c->role = role;
    c->secret = sodium_malloc(128);
    if (!c->secret) {
        log_err("sodium_malloc failed");
        abort();
    }
    memcpy(PSK(c), psk, SYNC_KEY_LEN);
    crypto_kx_keypair(c->pk, SK(c));
    wr_u32(c->hs, HS_MAGIC);
    c->hs[4] = SYNC_PROTO;
    c->hs[5] = (uint8_t)role;
    wr_u16(c->hs + 6, 0);
    wr_u32(c->hs + 8, site_id);
    memcpy(c->hs + 12, c->pk, 32);
    wr_u32(c->hs + 44, 0);
    return c;
}

void sync_chan_free(sync_chan_t *c)
{
    if (!c) {
        return;
    }
    sodium_free(c->secret);
    free(c);
}

const uint8_t *sync_chan_hs(const sync_chan_t *c)
{
    return c->hs;
}

static void mix(uint8_t out[32], const uint8_t *psk, const char *label, const uint8_t kx[32],
                const uint8_t *hs_d, const uint8_t *hs_a)
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, psk, SYNC_KEY_LEN, 32);
    crypto_generichash_update(&st, (const uint8_t *)"multisite-sync-1", 16);
    crypto_generichash_update(&st, (const uint8_t *)label, 3);
    crypto_generichash_update(&st, kx, 32);
    crypto_generichash_update(&st, hs_d, SYNC_HS_LEN);
    crypto_generichash_update(&st, hs_a, SYNC_HS_LEN);
    crypto_generichash_final(&st, out, 32);
}

int sync_chan_accept_hs(sync_chan_t *c, const uint8_t *hs, uint32_t *peer_site)
{
    if (rd_u32(hs) != HS_MAGIC || hs[4] != SYNC_PROTO || hs[5] > 1 || hs[5] == c->role) {
        return MS_EPARSE;
    }
    *peer_site = rd_u32(hs + 8);
    uint8_t rx[32], tx[32];
    const uint8_t *peer_pk = hs + 12;
    int rc = c->role == 0 ? crypto_kx_client_session_keys(rx, tx, c->pk, SK(c), peer_pk)
                          : crypto_kx_server_session_keys(rx, tx, c->pk, SK(c), peer_pk);
    if (rc != 0) {
        return MS_EAUTH; /* a degenerate public key */
    }
    const uint8_t *hs_d = c->role == 0 ? c->hs : hs;
    const uint8_t *hs_a = c->role == 0 ? hs : c->hs;
    mix(TXK(c), PSK(c), c->role == 0 ? "d2a" : "a2d", tx, hs_d, hs_a);
    mix(RXK(c), PSK(c), c->role == 0 ? "a2d" : "d2a", rx, hs_d, hs_a);
    sodium_memzero(rx, sizeof(rx));
    sodium_memzero(tx, sizeof(tx));
    sodium_memzero(SK(c), 32);
    c->ready = true;
    return 0;
}

static void nonce_of(uint8_t n[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES], uint64_t ctr)
{
    memset(n, 0, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
    wr_u64(n, ctr);
}

void sync_chan_seal(sync_chan_t *c, const uint8_t *msg, size_t len, buf_t *out)
{
    assert(c->ready);
    uint8_t n[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];
    size_t ct_len = len + crypto_aead_xchacha20poly1305_ietf_ABYTES;
    buf_reserve(out, 4 + ct_len);
    uint8_t *p = out->data + out->len;
    wr_u32(p, (uint32_t)ct_len);
    nonce_of(n, c->tx_ctr++);
    unsigned long long clen;
    crypto_aead_xchacha20poly1305_ietf_encrypt(p + 4, &clen, msg, len, p, 4, NULL, n, TXK(c));
    out->len += 4 + (size_t)clen;
}

int sync_chan_open(sync_chan_t *c, const uint8_t *in, size_t len, buf_t *plain, size_t *used)
{
    assert(c->ready);
    if (len < 4) {
        return 0;
    }
    uint32_t ct_len = rd_u32(in);
    if (ct_len < crypto_aead_xchacha20poly1305_ietf_ABYTES ||
        ct_len > SYNC_MAX_MSG + SYNC_HDR_LEN + crypto_aead_xchacha20poly1305_ietf_ABYTES) {
        return MS_ERANGE;
    }
    if (len < 4 + (size_t)ct_len) {
        return 0;
    }
    uint8_t n[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];
    nonce_of(n, c->rx_ctr);
    buf_reset(plain);
    buf_reserve(plain, ct_len);
    unsigned long long mlen;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(plain->data, &mlen, NULL, in + 4, ct_len, in, 4,
                                                   n, RXK(c)) != 0) {
        return MS_EAUTH;
    }
    c->rx_ctr++;
    plain->len = (size_t)mlen;
    *used = 4 + (size_t)ct_len;
    return 1;
}

int sync_key_load(const char *path, uint8_t **key, char *why, size_t whylen)
{
    char *text = NULL;
    size_t len = 0;
    sodium_once();
    if (file_read_all(path, 4096, &text, &len) != 0) {
        snprintf(why, whylen, "cannot read key file %s", path);
        return MS_EIO;
    }
    char hex[65];
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (isspace((unsigned char)text[i])) {
            continue;
        }
        if (!isxdigit((unsigned char)text[i]) || n == 64) {
            n = 65;
            break;
        }
        hex[n++] = text[i];
    }
    sodium_memzero(text, len);
    free(text);
    if (n != 64) {
        snprintf(why, whylen, "key file %s: expected 64 hex digits (multisite-syncd keygen)", path);
        return MS_EPARSE;
    }
    uint8_t *k = sodium_malloc(SYNC_KEY_LEN);
    size_t bin_len = 0;
    if (!k || sodium_hex2bin(k, SYNC_KEY_LEN, hex, 64, NULL, &bin_len, NULL) != 0 ||
        bin_len != SYNC_KEY_LEN) {
        sodium_free(k);
        snprintf(why, whylen, "key file %s: not hex", path);
        return MS_EPARSE;
    }
    sodium_memzero(hex, sizeof(hex));
    *key = k;
    return 0;
}

void sync_key_free(uint8_t *key)
{
    if (key) {
        sodium_free(key);
    }
}

int sync_cmd_keygen(FILE *out)
{
    uint8_t k[SYNC_KEY_LEN];
    char hex[2 * SYNC_KEY_LEN + 1];
    sodium_once();
    randombytes_buf(k, sizeof(k));
    sodium_bin2hex(hex, sizeof(hex), k, sizeof(k));
    sodium_memzero(k, sizeof(k));
    fprintf(out, "%s\n", hex);
    sodium_memzero(hex, sizeof(hex));
    return ferror(out) ? MS_EIO : 0;
}
