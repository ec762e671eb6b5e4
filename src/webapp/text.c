/* text.c: the web app's pure text helpers: HTML and JSON escaping, form and JSON body parsing,
 * cookies, ids, and the database spec. Everything here takes hostile bytes: lengths are
 * explicit, nothing assumes NUL termination of the input, invalid UTF-8 is replaced, never
 * passed through. */
#include "webapp/webapp.h"

#include <string.h>
#include <sys/random.h>

/* Decode one UTF-8 sequence at s (n bytes available). Returns its length and the code point,
 * or 0 when the bytes there are not valid UTF-8 (overlong forms, surrogates and values past
 * U+10FFFF included, as RFC 3629 requires). */
static size_t utf8_decode(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t c = s[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return 0;
        }
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
        return 0;
    }
    *cp = v;
    return len;
}

static void utf8_encode(buf_t *out, uint32_t cp)
{
    uint8_t b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (uint8_t)cp, n = 1;
    } else if (cp < 0x800) {
        b[0] = (uint8_t)(0xC0 | (cp >> 6)), b[1] = (uint8_t)(0x80 | (cp & 0x3F)), n = 2;
    } else if (cp < 0x10000) {
        b[0] = (uint8_t)(0xE0 | (cp >> 12)), b[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (uint8_t)(0x80 | (cp & 0x3F)), n = 3;
    } else {
        b[0] = (uint8_t)(0xF0 | (cp >> 18)), b[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)), b[3] = (uint8_t)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buf_append(out, b, n);
}

#define REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD */

/* Copy s[0..len) as valid UTF-8 without control characters (but \n and \t); with html, also
 * escape the five characters that mean something in HTML text and attributes. */
static void clean(buf_t *out, const char *s, size_t len, bool html)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n = utf8_decode(p + i, len - i, &cp);
        if (n == 0) {
            buf_append(out, REPLACEMENT, 3);
            i++;
            continue;
        }
        const char *ent = NULL;
        if (html) {
            switch (cp) {
            case '&': ent = "&amp;"; break;
            case '<': ent = "&lt;"; break;
            case '>': ent = "&gt;"; break;
            case '"': ent = "&quot;"; break;
            case '\'': ent = "&#39;"; break;
            default: break;
            }
        }
        if (ent) {
            buf_append(out, ent, strlen(ent));
        } else if ((cp < 0x20 && cp != '\n' && cp != '\t') || (cp >= 0x7F && cp < 0xA0)) {
            buf_append(out, REPLACEMENT, 3); /* C0 and C1 controls, DEL */
        } else {
            buf_append(out, p + i, n);
        }
        i += n;
    }
}

void webapp_html_escape(buf_t *out, const char *s, size_t len)
{
    clean(out, s, len, true);
}

void webapp_text_clean(buf_t *out, const char *s, size_t len)
{
    clean(out, s, len, false);
}

void webapp_json_escape(buf_t *out, const char *s, size_t len)
{
    const uint8_t *p = (const uint8_t *)s;
    buf_append(out, "\"", 1);
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n = utf8_decode(p + i, len - i, &cp);
        if (n == 0) {
            buf_append(out, "\\ufffd", 6);
            i++;
            continue;
        }
        switch (cp) {
        case '"': buf_append(out, "\\\"", 2); break;
        case '\\': buf_append(out, "\\\\", 2); break;
        case '\n': buf_append(out, "\\n", 2); break;
        case '\r': buf_append(out, "\\r", 2); break;
        case '\t': buf_append(out, "\\t", 2); break;
        /* "</" inside a JSON string embedded in a page must not close a <script>. */
        case '<': buf_append(out, "\\u003c", 6); break;
        default:
            if (cp < 0x20 || cp == 0x7F || cp == 0x2028 || cp == 0x2029) {
                buf_printf(out, "\\u%04x", (unsigned)cp);
            } else {
                buf_append(out, p + i, n);
            }
        }
        i += n;
    }
    buf_append(out, "\"", 1);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Decode a form component (s[0..n)) into out. Returns 0 or MS_EPARSE. */
static int form_decode(const char *s, size_t n, buf_t *out)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            if (i + 2 >= n) {
                return MS_EPARSE;
            }
            int hi = hexval((unsigned char)s[i + 1]);
            int lo = hexval((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0) {
                return MS_EPARSE;
            }
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (c == '\0') {
            return MS_EPARSE;
        }
        buf_append(out, &c, 1);
    }
    return 0;
}

int webapp_form_get(const char *body, size_t len, const char *key, char **out)
{
    size_t klen = strlen(key);
    buf_t name, val, found;
    buf_init(&name);
    buf_init(&val);
    buf_init(&found);
    bool have = false;
    int rc = 0;
    *out = NULL;
    /* Every pair is decoded, wanted or not: a body with one malformed escape is rejected as a
     * whole rather than half-read. */
    for (size_t i = 0; i <= len && rc == 0;) {
        const char *amp = i < len ? memchr(body + i, '&', len - i) : NULL;
        size_t end = amp ? (size_t)(amp - body) : len;
        const char *pair = body + i;
        size_t plen = end - i;
        const char *eq = memchr(pair, '=', plen);
        size_t nlen = eq ? (size_t)(eq - pair) : plen;
        buf_reset(&name);
        buf_reset(&val);
        rc = form_decode(pair, nlen, &name);
        if (rc == 0 && eq) {
            rc = form_decode(eq + 1, plen - nlen - 1, &val);
        }
        if (rc == 0 && !have && name.len == klen && (!klen || memcmp(name.data, key, klen) == 0)) {
            buf_append(&found, val.data ? val.data : (const uint8_t *)"", val.len);
            have = true;
        }
        if (!amp) {
            break;
        }
        i = end + 1;
    }
    buf_deinit(&name);
    buf_deinit(&val);
    if (rc == 0 && !have) {
        rc = MS_ENOENT;
    }
    if (rc != 0) {
        buf_deinit(&found);
        return rc;
    }
    buf_append(&found, "", 1);
    *out = (char *)found.data;
    return 0;
}

/* ---- a strict little JSON reader (RFC 8259), enough to pull strings out of one object ---- */

#define JSON_MAX_DEPTH 16

typedef struct {
    const uint8_t *p, *end;
    int depth;
} jrd_t;

static void j_ws(jrd_t *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) {
        j->p++;
    }
}

static int j_hex4(jrd_t *j, uint32_t *v)
{
    if (j->end - j->p < 4) {
        return MS_EPARSE;
    }
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(j->p[i]);
        if (h < 0) {
            return MS_EPARSE;
        }
        *v = (*v << 4) | (uint32_t)h;
    }
    j->p += 4;
    return 0;
}

/* A string at j->p (which is '"'); decoded into out unless out is NULL. */
static int j_string(jrd_t *j, buf_t *out)
{
    j->p++;
    while (j->p < j->end) {
        uint8_t c = *j->p;
        if (c == '"') {
            j->p++;
            return 0;
        }
        if (c < 0x20) {
            return MS_EPARSE;
        }
        if (c != '\\') {
            uint32_t cp;
            size_t n = utf8_decode(j->p, (size_t)(j->end - j->p), &cp);
            if (n == 0) {
                return MS_EPARSE;
            }
            if (out) {
                buf_append(out, j->p, n);
            }
            j->p += n;
            continue;
        }
        if (++j->p >= j->end) {
            return MS_EPARSE;
        }
        uint32_t cp;
        switch (*j->p++) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (j_hex4(j, &cp) != 0) {
                return MS_EPARSE;
            }
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return MS_EPARSE; /* a lone low surrogate */
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') {
                    return MS_EPARSE;
                }
                j->p += 2;
                if (j_hex4(j, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF) {
                    return MS_EPARSE;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            break;
        default: return MS_EPARSE;
        }
        if (out) {
            utf8_encode(out, cp);
        }
    }
    return MS_EPARSE;
}

static bool j_digits(jrd_t *j)
{
    const uint8_t *start = j->p;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        j->p++;
    }
    return j->p > start;
}

static int j_number(jrd_t *j)
{
    if (*j->p == '-') {
        j->p++;
    }
    if (j->p < j->end && *j->p == '0') {
        j->p++;
    } else if (!j_digits(j)) {
        return MS_EPARSE;
    }
    if (j->p < j->end && *j->p == '.') {
        j->p++;
        if (!j_digits(j)) {
            return MS_EPARSE;
        }
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) {
            j->p++;
        }
        if (!j_digits(j)) {
            return MS_EPARSE;
        }
    }
    return 0;
}

static int j_literal(jrd_t *j, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0) {
        return MS_EPARSE;
    }
    j->p += n;
    return 0;
}

static int j_value(jrd_t *j);

/* An object or array at j->p. For the top-level object (key != NULL), the first member named
 * key is reported through *found: 1 with its string in *val, or -1 when it is not a string. */
static int j_container(jrd_t *j, const char *key, int *found, buf_t *val)
{
    bool obj = *j->p == '{';
    uint8_t close = obj ? '}' : ']';
    if (++j->depth > JSON_MAX_DEPTH) {
        return MS_EPARSE;
    }
    j->p++;
    j_ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        j->depth--;
        return 0;
    }
    for (;;) {
        bool want = false;
        if (obj) {
            if (j->p >= j->end || *j->p != '"') {
                return MS_EPARSE;
            }
            buf_t name;
            buf_init(&name);
            int rc = j_string(j, &name);
            want = rc == 0 && key && *found == 0 && name.len == strlen(key) &&
                   (!name.len || memcmp(name.data, key, name.len) == 0);
            buf_deinit(&name);
            if (rc != 0) {
                return rc;
            }
            j_ws(j);
            if (j->p >= j->end || *j->p != ':') {
                return MS_EPARSE;
            }
            j->p++;
            j_ws(j);
        }
        int rc;
        if (want && j->p < j->end && *j->p == '"') {
            rc = j_string(j, val);
            *found = 1;
        } else {
            rc = j_value(j);
            if (want) {
                *found = -1;
            }
        }
        if (rc != 0) {
            return rc;
        }
        j_ws(j);
        if (j->p >= j->end) {
            return MS_EPARSE;
        }
        if (*j->p == close) {
            j->p++;
            j->depth--;
            return 0;
        }
        if (*j->p != ',') {
            return MS_EPARSE;
        }
        j->p++;
        j_ws(j);
    }
}

static int j_value(jrd_t *j)
{
    if (j->p >= j->end) {
        return MS_EPARSE;
    }
    switch (*j->p) {
    case '{':
    case '[': return j_container(j, NULL, NULL, NULL);
    case '"': return j_string(j, NULL);
    case 't': return j_literal(j, "true");
    case 'f': return j_literal(j, "false");
    case 'n': return j_literal(j, "null");
    default:
        if (*j->p == '-' || (*j->p >= '0' && *j->p <= '9')) {
            return j_number(j);
        }
        return MS_EPARSE;
    }
}

int webapp_json_get(const char *body, size_t len, const char *key, char **out)
{
    jrd_t j = {(const uint8_t *)body, (const uint8_t *)body + len, 0};
    int found = 0;
    buf_t val;
    buf_init(&val);
    *out = NULL;
    j_ws(&j);
    int rc = j.p < j.end && *j.p == '{' ? j_container(&j, key, &found, &val) : MS_EPARSE;
    if (rc == 0) {
        j_ws(&j);
        if (j.p != j.end) {
            rc = MS_EPARSE;
        }
    }
    if (rc == 0) {
        if (found == 0) {
            rc = MS_ENOENT;
        } else if (found < 0 || (val.len && memchr(val.data, 0, val.len))) {
            rc = MS_EINVAL;
        }
    }
    if (rc != 0) {
        buf_deinit(&val);
        return rc;
    }
    buf_append(&val, "", 1);
    *out = (char *)val.data;
    return 0;
}

/* ---- cookies, ids, user text, database spec ---- */

bool webapp_cookie_get(const char *header, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name);
    const char *p = header;
    while (p && *p) {
        while (*p == ' ' || *p == '\t' || *p == ';') {
            p++;
        }
        const char *end = strchr(p, ';');
        size_t plen = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', plen);
        if (eq) {
            size_t klen = (size_t)(eq - p);
            while (klen > 0 && (p[klen - 1] == ' ' || p[klen - 1] == '\t')) {
                klen--;
            }
            const char *v = eq + 1;
            size_t vlen = plen - (size_t)(v - p);
            while (vlen > 0 && (*v == ' ' || *v == '\t')) {
                v++, vlen--;
            }
            while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) {
                vlen--;
            }
            if (vlen >= 2 && v[0] == '"' && v[vlen - 1] == '"') {
                v++, vlen -= 2;
            }
            if (klen == nlen && memcmp(p, name, nlen) == 0) {
                if (vlen + 1 > outlen) {
                    return false;
                }
                memcpy(out, v, vlen);
                out[vlen] = '\0';
                return true;
            }
        }
        p = end;
    }
    return false;
}

bool webapp_id_valid(const char *s)
{
    size_t i;
    for (i = 0; s[i]; i++) {
        if (i >= WEBAPP_ID_LEN || !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) {
            return false;
        }
    }
    return i == WEBAPP_ID_LEN;
}

void webapp_id_new(char *out)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t r[WEBAPP_ID_LEN / 2];
    size_t got = 0;
    while (got < sizeof(r)) {
        ssize_t n = getrandom(r + got, sizeof(r) - got, 0);
        if (n > 0) {
            got += (size_t)n;
        }
        /* n < 0 is EINTR (the pool is initialised long before we serve): retry. */
    }
    for (size_t i = 0; i < sizeof(r); i++) {
        out[2 * i] = hex[r[i] >> 4];
        out[2 * i + 1] = hex[r[i] & 15];
    }
    out[WEBAPP_ID_LEN] = '\0';
}

bool webapp_text_ok(const char *s, size_t len, size_t max_len, bool multiline)
{
    if (len == 0 || len > max_len) {
        return false;
    }
    const uint8_t *p = (const uint8_t *)s;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t n = utf8_decode(p + i, len - i, &cp);
        if (n == 0) {
            return false;
        }
        bool ctl = cp < 0x20 || (cp >= 0x7F && cp < 0xA0);
        if (ctl && !(multiline && (cp == '\n' || cp == '\r' || cp == '\t'))) {
            return false;
        }
        i += n;
    }
    return true;
}

int webapp_db_spec(const char *spec, const char **target)
{
    if (strncmp(spec, "sqlite:", 7) == 0) {
        *target = spec + 7;
        return **target ? WEBAPP_DB_SQLITE : MS_EINVAL;
    }
    if (strncmp(spec, "pg:", 3) == 0) {
        *target = spec + 3;
        return **target ? WEBAPP_DB_PG : MS_EINVAL;
    }
    if (strncmp(spec, "postgresql://", 13) == 0 || strncmp(spec, "postgres://", 11) == 0 ||
        strchr(spec, '=')) {
        *target = spec;
        return WEBAPP_DB_PG;
    }
    return MS_EINVAL;
}
