/* fuzz_webapp.c: the web app's decoders of request bytes (JSON and form bodies, cookies) on
 * arbitrary input, plus round trips that must hold for every input: whatever the JSON escaper
 * writes, the JSON reader reads back as the same string; whatever a form encoder writes, the
 * form reader reads back; the HTML escaper never lets a '<' or an invalid byte through. Any
 * violation aborts.
 *
 * Input: byte 0 selects the key looked up ("message", "", "a"); the rest is the body. */
#include "webapp/webapp.h"

#include <stdlib.h>
#include <string.h>

static bool valid_text(const char *s, size_t len)
{
    return webapp_text_ok(s, len, (size_t)-1, true);
}

static void round_trip_json(const char *s, size_t len)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "{\"k\":");
    webapp_json_escape(&b, s, len);
    buf_printf(&b, "}");
    char *v = NULL;
    int rc = webapp_json_get((const char *)b.data, b.len, "k", &v);
    bool has_nul = len && memchr(s, '\0', len);
    if (has_nul ? rc != MS_EINVAL : rc != 0) {
        abort(); /* the escaper wrote something the reader rejects */
    }
    if (rc == 0 && valid_text(s, len) && (strlen(v) != len || memcmp(v, s, len) != 0)) {
        abort(); /* valid text must come back unchanged */
    }
    free(v);
    buf_deinit(&b);
}

static void round_trip_form(const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "x=1&k=");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[3] = {'%', hex[c >> 4], hex[c & 15]};
        buf_append(&b, e, 3);
    }
    char *v = NULL;
    int rc = webapp_form_get((const char *)b.data, b.len, "k", &v);
    bool has_nul = len && memchr(s, '\0', len);
    if (has_nul ? rc != MS_EPARSE : (rc != 0 || strlen(v) != len || memcmp(v, s, len) != 0)) {
        abort();
    }
    free(v);
    buf_deinit(&b);
}

static void check_html(const char *s, size_t len)
{
    buf_t b;
    buf_init(&b);
    webapp_html_escape(&b, s, len);
    if (b.len && (memchr(b.data, '<', b.len) || memchr(b.data, '"', b.len) ||
                  !webapp_text_ok((const char *)b.data, b.len, (size_t)-1, true))) {
        abort();
    }
    buf_deinit(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    static const char *const keys[] = {"message", "", "a"};
    const char *key = keys[data[0] % MS_ARRAY_LEN(keys)];
    const char *body = (const char *)data + 1;
    size_t len = size - 1;

    char *v = NULL;
    if (webapp_json_get(body, len, key, &v) == 0) {
        free(v);
    }
    v = NULL;
    if (webapp_form_get(body, len, key, &v) == 0) {
        free(v);
    }
    /* Cookies arrive as a NUL-terminated header value. */
    char *hdr = xstrndup(body, len);
    char out[WEBAPP_ID_LEN + 1];
    if (webapp_cookie_get(hdr, "msid", out, sizeof(out)) && strlen(out) > WEBAPP_ID_LEN) {
        abort();
    }
    webapp_id_valid(hdr);
    free(hdr);

    round_trip_json(body, len);
    round_trip_form(body, len);
    check_html(body, len);
    return 0;
}
