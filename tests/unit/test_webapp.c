/* test_webapp.c: unit tests of the web app's pure helpers: HTML and JSON escaping, form and
 * JSON body parsing, cookies, ids, user text checks and the database spec, each a table of
 * cases with the malformed ones in it. */
#include "tap.h"
#include "webapp/webapp.h"

#include <stdlib.h>
#include <string.h>

/* Strings with embedded NULs or invalid bytes are given with an explicit length. */
typedef struct {
    const char *in;
    size_t len; /* 0: strlen(in) */
    const char *out;
} esc_case_t;

/* Case text for a TAP line: control bytes shown as '.', so each result stays on one line. */
static const char *show(const char *s)
{
    static char b[120];
    size_t i;
    for (i = 0; s[i] && i < sizeof(b) - 1; i++) {
        b[i] = (unsigned char)s[i] < 0x20 ? '.' : s[i];
    }
    b[i] = '\0';
    return b;
}

static size_t len_of(const char *s, size_t len)
{
    return len ? len : strlen(s);
}

static void check_escape(const char *what, void (*fn)(buf_t *, const char *, size_t),
                         const esc_case_t *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        buf_t b;
        buf_init(&b);
        fn(&b, cases[i].in, len_of(cases[i].in, cases[i].len));
        bool ok =
            b.len == strlen(cases[i].out) && (!b.len || memcmp(b.data, cases[i].out, b.len) == 0);
        tap_ok(ok, "%s case %zu -> %s", what, i, show(cases[i].out));
        if (!ok) {
            tap_diag("  got %.*s", (int)b.len, (const char *)b.data);
        }
        buf_deinit(&b);
    }
}

static void test_html_escape(void)
{
    static const esc_case_t cases[] = {
        {"", 0, ""},
        {"plain text", 0, "plain text"},
        {"<script>alert('x')</script>", 0, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"},
        {"a & b \"c\"", 0, "a &amp; b &quot;c&quot;"},
        {"&amp;", 0, "&amp;amp;"},
        {"line1\nline2\ttab", 0, "line1\nline2\ttab"},
        {"bell\a esc\x1b del\x7f", 0, "bell\xEF\xBF\xBD esc\xEF\xBF\xBD del\xEF\xBF\xBD"},
        {"caf\xC3\xA9 \xE2\x98\x83 \xF0\x9F\x98\x80", 0,
         "caf\xC3\xA9 \xE2\x98\x83 \xF0\x9F\x98\x80"},
        {"bad \xFF byte", 0, "bad \xEF\xBF\xBD byte"},
        {"overlong \xC0\xBC", 0, "overlong \xEF\xBF\xBD\xEF\xBF\xBD"}, /* an overlong '<' */
        {"surrogate \xED\xA0\x80", 0, "surrogate \xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"cut \xE2\x98", 0, "cut \xEF\xBF\xBD\xEF\xBF\xBD"},
        {"too big \xF4\x90\x80\x80", 0, "too big \xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"nul\0inside", 10, "nul\xEF\xBF\xBDinside"},
    };
    check_escape("html_escape", webapp_html_escape, cases, MS_ARRAY_LEN(cases));

    static const esc_case_t plain[] = {
        {"<b> & \"q\"", 0, "<b> & \"q\""},
        {"a\rb\x01", 0,
         "a\xEF\xBF\xBD"
         "b\xEF\xBF\xBD"},
        {"\xFE", 0, "\xEF\xBF\xBD"},
    };
    check_escape("text_clean", webapp_text_clean, plain, MS_ARRAY_LEN(plain));
}

static void test_json_escape(void)
{
    static const esc_case_t cases[] = {
        {"", 0, "\"\""},
        {"abc", 0, "\"abc\""},
        {"quote\" back\\slash", 0, "\"quote\\\" back\\\\slash\""},
        {"nl\ncr\rtab\t", 0, "\"nl\\ncr\\rtab\\t\""},
        {"ctl\x01\x1f\x7f", 0, "\"ctl\\u0001\\u001f\\u007f\""},
        {"</script>", 0, "\"\\u003c/script>\""},
        {"caf\xC3\xA9", 0, "\"caf\xC3\xA9\""},
        {"ls\xE2\x80\xA8ps\xE2\x80\xA9", 0, "\"ls\\u2028ps\\u2029\""},
        {"bad\xFF", 0, "\"bad\\ufffd\""},
        {"\xC0\x80", 0, "\"\\ufffd\\ufffd\""},
        {"nul\0x", 5, "\"nul\\u0000x\""},
    };
    check_escape("json_escape", webapp_json_escape, cases, MS_ARRAY_LEN(cases));
}

typedef struct {
    const char *body;
    const char *key;
    int rc;
    const char *val;
} get_case_t;

static void check_get(const char *what, int (*fn)(const char *, size_t, const char *, char **),
                      const get_case_t *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *v = (char *)"untouched";
        int rc = fn(cases[i].body, strlen(cases[i].body), cases[i].key, &v);
        bool ok = rc == cases[i].rc && (rc == 0 ? v && strcmp(v, cases[i].val) == 0 : v == NULL);
        tap_ok(ok, "%s(%s, %s) -> %d", what, show(cases[i].body), cases[i].key, cases[i].rc);
        if (!ok) {
            tap_diag("  got %d %s", rc, rc == 0 && v ? show(v) : "(null or untouched)");
        }
        if (rc == 0) {
            free(v);
        }
    }
}

static void test_form_get(void)
{
    static const get_case_t cases[] = {
        {"author=ann&message=hi", "author", 0, "ann"},
        {"author=ann&message=hi", "message", 0, "hi"},
        {"message=hello+world%21", "message", 0, "hello world!"},
        {"message=%3Cb%3E%26%25", "message", 0, "<b>&%"},
        {"message=%c3%a9", "message", 0, "\xC3\xA9"},
        {"message=", "message", 0, ""},
        {"message", "message", 0, ""},
        {"a=1&&message=x&", "message", 0, "x"},
        {"message=first&message=second", "message", 0, "first"},
        {"mess%61ge=encoded+name", "message", 0, "encoded name"},
        {"message=a=b", "message", 0, "a=b"},
        {"", "message", MS_ENOENT, NULL},
        {"author=ann", "message", MS_ENOENT, NULL},
        {"messages=x", "message", MS_ENOENT, NULL},
        {"messag=x", "message", MS_ENOENT, NULL},
        {"message=%", "message", MS_EPARSE, NULL},
        {"message=%4", "message", MS_EPARSE, NULL},
        {"message=%4g", "message", MS_EPARSE, NULL},
        {"message=%zz", "message", MS_EPARSE, NULL},
        {"message=a%00b", "message", MS_EPARSE, NULL},
        {"message=ok&x=%", "message", MS_EPARSE, NULL},
        {"%zz=1&message=ok", "message", MS_EPARSE, NULL},
        {"x=%&message=ok", "message", MS_EPARSE, NULL},
    };
    check_get("form_get", webapp_form_get, cases, MS_ARRAY_LEN(cases));
}

static void test_json_get(void)
{
    static const get_case_t cases[] = {
        {"{\"message\":\"hi\"}", "message", 0, "hi"},
        {"  {\n\"author\" : \"a\" , \"message\" : \"m\" }  ", "message", 0, "m"},
        {"{\"message\":\"esc \\\" \\\\ \\/ \\b\\f\\n\\r\\t\"}", "message", 0,
         "esc \" \\ / \b\f\n\r\t"},
        {"{\"message\":\"\\u00e9\\u2603\"}", "message", 0, "\xC3\xA9\xE2\x98\x83"},
        {"{\"message\":\"\\ud83d\\ude00\"}", "message", 0, "\xF0\x9F\x98\x80"},
        {"{\"message\":\"caf\xC3\xA9\"}", "message", 0, "caf\xC3\xA9"},
        {"{\"message\":\"\"}", "message", 0, ""},
        {"{\"n\":[1,-2.5e+3,{\"x\":[true,false,null]}],\"message\":\"deep\"}", "message", 0,
         "deep"},
        {"{\"message\":\"first\",\"message\":\"second\"}", "message", 0, "first"},
        {"{\"me\\u0073sage\":\"escaped key\"}", "message", 0, "escaped key"},
        {"{\"nested\":{\"message\":\"no\"}}", "message", MS_ENOENT, NULL},
        {"{}", "message", MS_ENOENT, NULL},
        {"{\"message\":5}", "message", MS_EINVAL, NULL},
        {"{\"message\":null}", "message", MS_EINVAL, NULL},
        {"{\"message\":[\"x\"]}", "message", MS_EINVAL, NULL},
        {"{\"message\":\"a\\u0000b\"}", "message", MS_EINVAL, NULL},
        {"", "message", MS_EPARSE, NULL},
        {"   ", "message", MS_EPARSE, NULL},
        {"[\"message\"]", "message", MS_EPARSE, NULL},
        {"\"message\"", "message", MS_EPARSE, NULL},
        {"{", "message", MS_EPARSE, NULL},
        {"{\"message\"", "message", MS_EPARSE, NULL},
        {"{\"message\":", "message", MS_EPARSE, NULL},
        {"{\"message\":\"x", "message", MS_EPARSE, NULL},
        {"{\"message\":\"x\"", "message", MS_EPARSE, NULL},
        {"{\"message\":\"x\",}", "message", MS_EPARSE, NULL},
        {"{,\"message\":\"x\"}", "message", MS_EPARSE, NULL},
        {"{\"message\" \"x\"}", "message", MS_EPARSE, NULL},
        {"{message:\"x\"}", "message", MS_EPARSE, NULL},
        {"{'message':'x'}", "message", MS_EPARSE, NULL},
        {"{\"message\":\"x\"} {}", "message", MS_EPARSE, NULL},
        {"{\"message\":\"x\"}x", "message", MS_EPARSE, NULL},
        {"{\"message\":\"raw\nnewline\"}", "message", MS_EPARSE, NULL},
        {"{\"message\":\"bad \\x escape\"}", "message", MS_EPARSE, NULL},
        {"{\"message\":\"\\u12\"}", "message", MS_EPARSE, NULL},
        {"{\"message\":\"\\ud800\"}", "message", MS_EPARSE, NULL},
        {"{\"message\":\"\\ud800\\u0041\"}", "message", MS_EPARSE, NULL},
        {"{\"message\":\"\\udc00\"}", "message", MS_EPARSE, NULL},
        {"{\"message\":\"bad \xFF utf8\"}", "message", MS_EPARSE, NULL},
        {"{\"message\":\"overlong \xC0\xAF\"}", "message", MS_EPARSE, NULL},
        {"{\"a\":01,\"message\":\"x\"}", "message", MS_EPARSE, NULL},
        {"{\"a\":1.,\"message\":\"x\"}", "message", MS_EPARSE, NULL},
        {"{\"a\":-,\"message\":\"x\"}", "message", MS_EPARSE, NULL},
        {"{\"a\":1e,\"message\":\"x\"}", "message", MS_EPARSE, NULL},
        {"{\"a\":+1,\"message\":\"x\"}", "message", MS_EPARSE, NULL},
        {"{\"a\":tru,\"message\":\"x\"}", "message", MS_EPARSE, NULL},
        {"{\"a\":[1,],\"message\":\"x\"}", "message", MS_EPARSE, NULL},
        {"{\"a\":[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}", "message", MS_EPARSE, NULL},
    };
    check_get("json_get", webapp_json_get, cases, MS_ARRAY_LEN(cases));

    /* Nesting: 15 levels below the top object are fine, 16 are not. */
    for (int depth = 14; depth <= 16; depth++) {
        buf_t b;
        buf_init(&b);
        buf_printf(&b, "{\"message\":\"m\",\"a\":");
        for (int i = 0; i < depth; i++) {
            buf_printf(&b, "[");
        }
        for (int i = 0; i < depth; i++) {
            buf_printf(&b, "]");
        }
        buf_printf(&b, "}");
        char *v = NULL;
        int rc = webapp_json_get((const char *)b.data, b.len, "message", &v);
        TAP_EQ_INT(rc, depth <= 15 ? 0 : MS_EPARSE, "json_get nesting %d below the object", depth);
        free(v);
        buf_deinit(&b);
    }
    /* A NUL byte in the body is just invalid JSON, whatever follows it. */
    char *v = NULL;
    TAP_EQ_INT(webapp_json_get("{\"message\":\"a\0b\"}", 16, "message", &v), MS_EPARSE,
               "json_get raw NUL in a string");
    /* Not NUL-terminated: the length is respected. */
    TAP_EQ_INT(webapp_json_get("{\"message\":\"m\"}garbage", 15, "message", &v), 0,
               "json_get stops at len");
    tap_ok(v && strcmp(v, "m") == 0, "json_get value within len");
    free(v);
}

static void test_cookie_get(void)
{
    static const struct {
        const char *hdr;
        size_t outlen;
        bool found;
        const char *val;
    } cases[] = {
        {"msid=abc", 64, true, "abc"},
        {"a=1; msid=abc; b=2", 64, true, "abc"},
        {"a=1;msid=abc;b=2", 64, true, "abc"},
        {"  msid = abc  ", 64, true, "abc"},
        {"msid=\"quoted\"", 64, true, "quoted"},
        {"msid=\"", 64, true, "\""},
        {"msid=", 64, true, ""},
        {"xmsid=abc", 64, false, NULL},
        {"msidx=abc", 64, false, NULL},
        {"msid", 64, false, NULL},
        {"a=1; msid", 64, false, NULL},
        {"", 64, false, NULL},
        {";;;", 64, false, NULL},
        {"=;=;=", 64, false, NULL},
        {"msid=first; msid=second", 64, true, "first"},
        {"msid=abcd", 5, true, "abcd"},
        {"msid=abcde", 5, false, NULL},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        char out[64] = "";
        bool f = webapp_cookie_get(cases[i].hdr, "msid", out, cases[i].outlen);
        tap_ok(f == cases[i].found && (!f || strcmp(out, cases[i].val) == 0),
               "cookie_get(\"%s\", outlen %zu) -> %s %s", cases[i].hdr, cases[i].outlen,
               cases[i].found ? "found" : "absent", cases[i].val ? cases[i].val : "");
    }
}

static void test_ids(void)
{
    static const struct {
        const char *s;
        bool ok;
    } cases[] = {
        {"0123456789abcdef0123456789abcdef", true},
        {"ffffffffffffffffffffffffffffffff", true},
        {"0123456789ABCDEF0123456789abcdef", false},
        {"0123456789abcdef0123456789abcde", false},
        {"0123456789abcdef0123456789abcdef0", false},
        {"0123456789abcdef0123456789abcdeg", false},
        {"", false},
        {"../../../../../../../etc/passwd", false},
        {" 123456789abcdef0123456789abcdef", false},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        tap_ok(webapp_id_valid(cases[i].s) == cases[i].ok, "id_valid(\"%s\") == %d", cases[i].s,
               cases[i].ok);
    }
    char a[WEBAPP_ID_LEN + 1], b[WEBAPP_ID_LEN + 1];
    webapp_id_new(a);
    webapp_id_new(b);
    tap_ok(webapp_id_valid(a) && webapp_id_valid(b), "id_new makes valid ids (%s)", a);
    tap_ok(strcmp(a, b) != 0, "id_new ids differ");
}

static void test_text_ok(void)
{
    static const struct {
        const char *s;
        size_t len; /* 0: strlen */
        size_t max;
        bool multiline, ok;
    } cases[] = {
        {"hello", 0, 64, false, true},
        {"caf\xC3\xA9 \xF0\x9F\x98\x80", 0, 64, false, true},
        {"", 0, 64, false, false},
        {"12345", 0, 5, false, true},
        {"123456", 0, 5, false, false},
        {"two\nlines", 0, 64, false, false},
        {"two\nlines", 0, 64, true, true},
        {"crlf\r\ntab\t", 0, 64, true, true},
        {"bell\a", 0, 64, true, false},
        {"esc\x1b[2J", 0, 64, true, false},
        {"del\x7f", 0, 64, true, false},
        {"c1 \xC2\x85", 0, 64, true, false}, /* U+0085 NEL */
        {"bad \xFF", 0, 64, true, false},
        {"cut \xE2\x98", 0, 64, true, false},
        {"surrogate \xED\xA0\x80", 0, 64, true, false},
        {"nul\0x", 5, 64, true, false},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        size_t len = len_of(cases[i].s, cases[i].len);
        tap_ok(webapp_text_ok(cases[i].s, len, cases[i].max, cases[i].multiline) == cases[i].ok,
               "text_ok case %zu (max %zu, multiline %d) == %d", i, cases[i].max,
               cases[i].multiline, cases[i].ok);
    }
}

static void test_db_spec(void)
{
    static const struct {
        const char *spec;
        int kind;
        const char *target;
    } cases[] = {
        {"sqlite:/var/lib/site.db", WEBAPP_DB_SQLITE, "/var/lib/site.db"},
        {"sqlite:rel.db", WEBAPP_DB_SQLITE, "rel.db"},
        {"sqlite:", MS_EINVAL, NULL},
        {"postgresql://u@127.0.0.1:5432/db", WEBAPP_DB_PG, "postgresql://u@127.0.0.1:5432/db"},
        {"postgres://h/db", WEBAPP_DB_PG, "postgres://h/db"},
        {"host=127.0.0.1 port=5432 dbname=x", WEBAPP_DB_PG, "host=127.0.0.1 port=5432 dbname=x"},
        {"pg:dbname=x", WEBAPP_DB_PG, "dbname=x"},
        {"pg:", MS_EINVAL, NULL},
        {"/var/lib/site.db", MS_EINVAL, NULL},
        {"mysql://h/db", MS_EINVAL, NULL},
        {"", MS_EINVAL, NULL},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        const char *t = NULL;
        int k = webapp_db_spec(cases[i].spec, &t);
        tap_ok(k == cases[i].kind && (k < 0 || strcmp(t, cases[i].target) == 0),
               "db_spec(\"%s\") -> %d %s", cases[i].spec, cases[i].kind,
               cases[i].target ? cases[i].target : "");
    }
}

int main(void)
{
    test_html_escape();
    test_json_escape();
    test_form_get();
    test_json_get();
    test_cookie_get();
    test_ids();
    test_text_ok();
    test_db_spec();
    return tap_done();
}
