/* test_status.c: the status module's renderers: DNS counters as Prometheus text and JSON,
 * and multisite-syncd's status document turned into metrics, including every truncation of
 * it and bytes that are not JSON at all (run under ASan by make check: no read past the
 * end, which is not NUL-terminated). */
#include "status/status.h"
#include "tap.h"

#include <stdlib.h>
#include <string.h>

static bool has(const buf_t *b, const char *line)
{
    size_t n = strlen(line);
    for (size_t i = 0; i + n <= b->len; i++) {
        if ((i == 0 || b->data[i - 1] == '\n') && memcmp(b->data + i, line, n) == 0 &&
            (i + n == b->len || b->data[i + n] == '\n')) {
            return true;
        }
    }
    return false;
}

/* Every line is a comment or `name[{labels}] value`, the name [a-z_][a-z0-9_]*. */
static bool well_formed(const buf_t *b)
{
    size_t i = 0;
    while (i < b->len) {
        const uint8_t *nl = memchr(b->data + i, '\n', b->len - i);
        if (!nl) {
            return false; /* every line ends with a newline */
        }
        size_t end = (size_t)(nl - b->data);
        if (b->data[i] != '#') {
            size_t k = i;
            while (k < end && ((b->data[k] >= 'a' && b->data[k] <= 'z') || b->data[k] == '_' ||
                               (k > i && b->data[k] >= '0' && b->data[k] <= '9'))) {
                k++;
            }
            if (k == i) {
                return false;
            }
            if (k < end && b->data[k] == '{') {
                bool quoted = false; /* a label value may hold any byte but " \ and newline */
                while (k < end && (quoted || b->data[k] != '}')) {
                    if (b->data[k] == '\\') {
                        k++;
                    } else if (b->data[k] == '"') {
                        quoted = !quoted;
                    }
                    k++;
                }
                k++;
            }
            if (k >= end || b->data[k] != ' ' || k + 1 == end) {
                return false;
            }
        }
        i = end + 1;
    }
    return true;
}

static const char sync_doc[] =
    "{\"site\":\"s1\",\"site_id\":1,\"backend\":\"sqlite\",\"agent\":\"running\","
    "\"database_ok\":true,\"hlc\":123,\"conflicts\":4,\"quarantined\":2,\"held_future\":0,"
    "\"quarantine_purged\":5,"
    "\"bad_messages\":1,\"peers\":[{\"name\":\"s2\",\"id\":2,\"out\":\"ready\",\"in\":\"ready\","
    "\"acked\":10,\"backlog\":7,\"lag_ms\":1500,\"applied_seq\":3,\"applied\":3,"
    "\"recv_lag_p50_ms\":5,\"recv_lag_p99_ms\":250,\"rows_sent\":9,\"rows_applied\":3,"
    "\"apply_ms\":1,\"schema\":\"same\",\"must_rejoin\":false,\"rejoin_since_ms\":0,"
    "\"rejoin_reason\":\"\",\"refuses_us\":\"re-join required: \\\"x\\\"\"},"
    "{\"name\":\"s3\",\"id\":3,\"out\":\"down\","
    "\"in\":\"down\",\"acked\":0,\"backlog\":0,\"lag_ms\":0,\"applied_seq\":0,\"applied\":0,"
    "\"recv_lag_p50_ms\":0,\"recv_lag_p99_ms\":0,\"rows_sent\":0,\"rows_applied\":0,"
    "\"apply_ms\":0,\"schema\":\"same\",\"must_rejoin\":true,\"rejoin_since_ms\":1700000000000,"
    "\"rejoin_reason\":\"oldest change unacknowledged for 8d\",\"refuses_us\":\"\"}]}";

static void test_dns(void)
{
    dns_stats_t st;
    memset(&st, 0, sizeof(st));
    st.queries = 10;
    st.rcode[RCODE_NOERROR] = 7;
    st.rcode[RCODE_NXDOMAIN] = 3;
    st.qtype[dns_qtype_slot(1)] = 6;
    st.qtype[dns_qtype_slot(28)] = 3;
    st.qtype[dns_qtype_slot(99)] = 1;
    st.udp = 9;
    st.tcp = 1;
    buf_t b;
    buf_init(&b);
    status_dns_metrics(&st, &b);
    tap_ok(has(&b, "multisite_dns_responses_total{rcode=\"NOERROR\"} 7") &&
               has(&b, "multisite_dns_responses_total{rcode=\"NXDOMAIN\"} 3"),
           "responses by rcode");
    tap_ok(has(&b, "multisite_dns_queries_total{qtype=\"A\"} 6") &&
               has(&b, "multisite_dns_queries_total{qtype=\"AAAA\"} 3") &&
               has(&b, "multisite_dns_queries_total{qtype=\"other\"} 1") &&
               has(&b, "multisite_dns_queries_total{qtype=\"MX\"} 0"),
           "queries by qtype, unknown types as other");
    tap_ok(has(&b, "# TYPE multisite_dns_queries_total counter") && well_formed(&b),
           "DNS metrics well formed");
    static const struct {
        uint16_t type;
        const char *name;
    } types[] = {{1, "A"},      {2, "NS"},    {5, "CNAME"}, {6, "SOA"},    {12, "PTR"},
                 {15, "MX"},    {16, "TXT"},  {28, "AAAA"}, {33, "SRV"},   {64, "SVCB"},
                 {65, "HTTPS"}, {255, "ANY"}, {3, "other"}, {99, "other"}, {256, "other"}};
    bool names_ok = true;
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        names_ok = names_ok &&
                   strcmp(dns_qtype_slot_name(dns_qtype_slot(types[i].type)), types[i].name) == 0;
    }
    tap_ok(names_ok, "every counted type has its own slot and name; the rest are other");
    tap_ok(strcmp(dns_qtype_slot_name(dns_qtype_slot(65)), "HTTPS") == 0 &&
               strcmp(dns_qtype_slot_name(dns_qtype_slot(0)), "other") == 0 &&
               dns_qtype_slot(65535) == DNS_QTYPE_OTHER,
           "qtype slots and names");
    buf_reset(&b);
    status_dns_json(&st, &b);
    buf_append(&b, "", 1);
    tap_ok(strstr((char *)b.data, "\"queries\":10") && strstr((char *)b.data, "\"AAAA\":3") &&
               strstr((char *)b.data, "\"NXDOMAIN\":3") && b.data[0] == '{' &&
               b.data[b.len - 2] == '}',
           "DNS counters as JSON");
    buf_deinit(&b);
}

static void test_sync(void)
{
    buf_t b;
    buf_init(&b);
    status_sync_metrics(sync_doc, strlen(sync_doc), &b);
    tap_ok(has(&b, "multisite_sync_conflicts_total 4") && has(&b, "multisite_sync_quarantined 2") &&
               has(&b, "# TYPE multisite_sync_quarantined gauge") &&
               has(&b, "# TYPE multisite_sync_held_future gauge") &&
               has(&b, "multisite_sync_bad_messages_total 1") &&
               has(&b, "multisite_sync_quarantine_purged_total 5"),
           "sync totals");
    tap_ok(has(&b, "multisite_sync_lag_seconds{peer=\"s2\"} 1.5") &&
               has(&b, "multisite_sync_lag_seconds{peer=\"s3\"} 0") &&
               has(&b, "multisite_sync_backlog{peer=\"s2\"} 7") &&
               has(&b, "multisite_sync_receive_lag_p99_seconds{peer=\"s2\"} 0.25") &&
               has(&b, "multisite_sync_rows_applied_total{peer=\"s2\"} 3"),
           "sync per peer, each field with its own peer");
    tap_ok(has(&b, "multisite_sync_peer_must_rejoin{peer=\"s2\"} 0") &&
               has(&b, "multisite_sync_peer_must_rejoin{peer=\"s3\"} 1") &&
               has(&b, "# TYPE multisite_sync_peer_must_rejoin gauge") &&
               has(&b, "multisite_sync_refused_by_peer{peer=\"s2\"} 1") &&
               has(&b, "multisite_sync_refused_by_peer{peer=\"s3\"} 0"),
           "sync lifecycle flags per peer: must re-join, refuses us (text with escapes)");
    tap_ok(well_formed(&b), "sync metrics well formed");

    /* Every truncation, in a heap buffer of exactly that size (ASan sees a read past it). */
    bool ok = true;
    size_t n = strlen(sync_doc);
    for (size_t len = 0; len <= n; len++) {
        char *p = xmalloc(len ? len : 1);
        memcpy(p, sync_doc, len ? len : 1);
        buf_reset(&b);
        status_sync_metrics(p, len, &b);
        ok = ok && well_formed(&b);
        free(p);
    }
    tap_ok(ok, "every truncation of the document: well-formed output (or none)");

    static const char *const bad[] = {
        "",
        "{",
        "not json",
        "{\"peers\":[",
        "{\"peers\":[{\"name\":",
        "{\"peers\":[{\"name\":\"a",
        "{\"peers\":[{\"name\":\"a\\\"b\",\"lag_ms\":5}]}",
        "{\"peers\":[{\"name\":\"a\nb\",\"lag_ms\":5}]}",
        "{\"conflicts\":-1,\"peers\":[{\"name\":\"x\",\"lag_ms\":99999999999999999999999}]}",
    };
    ok = true;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        buf_reset(&b);
        status_sync_metrics(bad[i], strlen(bad[i]), &b);
        ok = ok && well_formed(&b) && !has(&b, "multisite_sync_lag_seconds{peer=\"x\"} 1e+20") &&
             !has(&b, "multisite_sync_conflicts_total -1");
        for (size_t k = 0; k < b.len; k++) {
            ok = ok && !(b.data[k] == '\\');
        }
    }
    tap_ok(ok, "malformed documents: no sample from a bad name or number, output well formed");

    /* Random bytes seeded with the keys the parser looks for. */
    srand(7);
    ok = true;
    static const char *const frags[] = {
        "\"peers\":[", "{\"name\":\"", "\"lag_ms\":", "\"", "1", "}",
        ",",           "\"backlog\":", "\\",          "\n"};
    for (int round = 0; round < 2000; round++) {
        buf_t in;
        buf_init(&in);
        int parts = rand() % 12;
        for (int k = 0; k < parts; k++) {
            const char *f = frags[rand() % 10];
            buf_append(&in, f, strlen(f));
        }
        char *p = xmalloc(in.len ? in.len : 1);
        if (in.len) {
            memcpy(p, in.data, in.len);
        }
        buf_reset(&b);
        status_sync_metrics(p, in.len, &b);
        ok = ok && well_formed(&b);
        free(p);
        buf_deinit(&in);
    }
    tap_ok(ok, "2000 random documents from the parser's own keys: well-formed output");
    buf_deinit(&b);
}

static void test_json_str(void)
{
    buf_t b;
    buf_init(&b);
    status_json_str(&b, "a\"b\\c\nd\x01\x7f\xc3\xa9");
    buf_append(&b, "", 1);
    tap_ok(strcmp((char *)b.data, "\"a\\\"b\\\\c\\u000ad\\u0001\\u007f\xc3\xa9\"") == 0,
           "JSON string escaping: %s", (char *)b.data);
    buf_deinit(&b);
}

int main(void)
{
    test_json_str();
    test_dns();
    test_sync();
    return tap_done();
}
