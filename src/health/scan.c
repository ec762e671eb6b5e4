/* scan.c: the streaming keyword scanner for HTTP probe bodies. Each keyword has a KMP
 * automaton; its state (the length of the keyword prefix that ends the input so far) is all
 * that crosses a chunk boundary, so a keyword split over any number of chunks is found and
 * memory does not depend on the body. Pure; see internal.h. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

void hs_kw_init(hs_kw_t *k, const char *const *kw, size_t n)
{
    memset(k, 0, sizeof(*k));
    k->n = n;
    k->kw = xcalloc(n ? n : 1, sizeof(*k->kw));
    k->len = xcalloc(n ? n : 1, sizeof(*k->len));
    k->fail = xcalloc(n ? n : 1, sizeof(*k->fail));
    for (size_t i = 0; i < n; i++) {
        size_t m = strlen(kw[i]);
        k->kw[i] = xstrdup(kw[i]);
        k->len[i] = m;
        size_t *f = xcalloc(m ? m : 1, sizeof(size_t));
        /* f[j]: length of the longest proper prefix of kw[0..j] that is also its suffix */
        for (size_t j = 1, q = 0; j < m; j++) {
            while (q > 0 && kw[i][j] != kw[i][q]) {
                q = f[q - 1];
            }
            if (kw[i][j] == kw[i][q]) {
                q++;
            }
            f[j] = q;
        }
        k->fail[i] = f;
    }
}

void hs_kw_deinit(hs_kw_t *k)
{
    for (size_t i = 0; i < k->n; i++) {
        free(k->kw[i]);
        free(k->fail[i]);
    }
    free(k->kw);
    free(k->len);
    free(k->fail);
    memset(k, 0, sizeof(*k));
}

void hs_scan_init(hs_scan_t *s, const hs_kw_t *k, size_t cap)
{
    memset(s, 0, sizeof(*s));
    s->k = k;
    s->cap = cap;
    s->state = xcalloc(k->n ? k->n : 1, sizeof(*s->state));
    s->found = xcalloc(k->n ? k->n : 1, sizeof(*s->found));
    for (size_t i = 0; i < k->n; i++) {
        if (k->len[i] == 0) {
            s->found[i] = true; /* the empty keyword is in every body */
            s->n_found++;
        }
    }
}

void hs_scan_deinit(hs_scan_t *s)
{
    free(s->state);
    free(s->found);
    memset(s, 0, sizeof(*s));
}

/* Advance keyword i's automaton over p[0..n); true when it completes a match. */
static bool kmp_feed(const hs_kw_t *k, size_t i, size_t *state, const uint8_t *p, size_t n)
{
    const char *kw = k->kw[i];
    const size_t *f = k->fail[i];
    size_t m = k->len[i], q = *state;
    /* Fast path: while no prefix is pending, let memchr skip to the first byte. */
    for (size_t j = 0; j < n; j++) {
        if (q == 0) {
            const uint8_t *hit = memchr(p + j, (uint8_t)kw[0], n - j);
            if (!hit) {
                break;
            }
            j = (size_t)(hit - p);
        }
        while (q > 0 && (uint8_t)kw[q] != p[j]) {
            q = f[q - 1];
        }
        if ((uint8_t)kw[q] == p[j]) {
            q++;
        }
        if (q == m) {
            *state = 0;
            return true;
        }
    }
    *state = q;
    return false;
}

int hs_scan_feed(hs_scan_t *s, const void *p, size_t n)
{
    if (s->n_found == s->k->n) {
        return HS_DONE;
    }
    if (s->total > s->cap) {
        return HS_OVER;
    }
    bool over = n > s->cap - s->total;
    size_t take = over ? s->cap - s->total : n;
    s->total = over ? s->cap + 1 : s->total + n;
    for (size_t i = 0; i < s->k->n; i++) {
        if (!s->found[i] && kmp_feed(s->k, i, &s->state[i], p, take)) {
            s->found[i] = true;
            s->n_found++;
        }
    }
    if (s->n_found == s->k->n) {
        return HS_DONE;
    }
    return over ? HS_OVER : HS_MORE;
}

void hs_scan_missing(const hs_scan_t *s, char *out, size_t len)
{
    if (len == 0) {
        return;
    }
    out[0] = '\0';
    const char *sep = "";
    for (size_t i = 0; i < s->k->n; i++) {
        if (!s->found[i]) {
            hs_appendf(out, len, "%s\"%.64s\"", sep, s->k->kw[i]);
            sep = ", ";
        }
    }
}
