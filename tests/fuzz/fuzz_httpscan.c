/* fuzz_httpscan.c: the streaming keyword scanner, differentially: keywords and a body from
 * the input, fed in a chunking the input also chooses, must give exactly what memmem over
 * the whole body (up to the cap) gives. Any difference aborts.
 *
 * Input: byte 0 = number of keywords (mod 4); byte 1 = cap selector; then per keyword a
 * length byte (mod 24) and its bytes; then 4 bytes seeding the chunk sizes; the rest is the
 * body. */
#include "health/internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) {
        return 0;
    }
    size_t nkw = data[0] % 4, pos = 2;
    static const size_t caps[] = {1u << 20, 1, 7, 64, 0};
    size_t cap = caps[data[1] % MS_ARRAY_LEN(caps)];
    char kwbuf[4][32];
    const char *kw[4];
    for (size_t i = 0; i < nkw; i++) {
        size_t l = pos < size ? data[pos++] % 24 : 0;
        l = l > size - pos ? size - pos : l;
        memcpy(kwbuf[i], data + pos, l);
        kwbuf[i][l] = '\0'; /* a NUL inside ends the keyword early, as in a config string */
        kw[i] = kwbuf[i];
        pos += l;
    }
    uint32_t seed = 1;
    for (int i = 0; i < 4 && pos < size; i++) {
        seed = seed * 131 + data[pos++];
    }
    const uint8_t *body = data + pos;
    size_t len = size - pos;

    hs_kw_t k;
    hs_kw_init(&k, kw, nkw);
    hs_scan_t s;
    hs_scan_init(&s, &k, cap);
    int r = HS_MORE;
    for (size_t off = 0; off < len;) {
        seed = seed * 1103515245u + 12345u;
        size_t n = 1 + (seed >> 16) % 17;
        n = n > len - off ? len - off : n;
        r = hs_scan_feed(&s, body + off, n);
        off += n;
    }
    if (len == 0) {
        r = hs_scan_feed(&s, "", 0);
    }
    /* the oracle */
    size_t scanned = len < cap ? len : cap;
    bool all = true;
    for (size_t i = 0; i < nkw; i++) {
        size_t l = strlen(kw[i]);
        bool found = l == 0 || memmem(body, scanned, kw[i], l) != NULL;
        all &= found;
        if (!all && r == HS_DONE) {
            abort(); /* claimed done with a keyword missing */
        }
        if (r != HS_DONE && found != s.found[i]) {
            abort();
        }
    }
    int expect = all ? HS_DONE : len > cap ? HS_OVER : HS_MORE;
    if (r != expect) {
        abort();
    }
    hs_scan_deinit(&s);
    hs_kw_deinit(&k);
    return 0;
}
