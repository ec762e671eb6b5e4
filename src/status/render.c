/* render.c: the DNS counters as Prometheus text and JSON, and multisite-syncd's status JSON
 * turned into Prometheus text. Pure functions of their inputs (loop thread). */
#include "status.h"

#include <string.h>

static const char *const rcode_names[DNS_RCODE_SLOTS] = {
    [RCODE_NOERROR] = "NOERROR",   [RCODE_FORMERR] = "FORMERR", [RCODE_SERVFAIL] = "SERVFAIL",
    [RCODE_NXDOMAIN] = "NXDOMAIN", [RCODE_NOTIMP] = "NOTIMP",   [RCODE_REFUSED] = "REFUSED",
    [RCODE_NOTAUTH] = "NOTAUTH",   [RCODE_BADVERS] = "BADVERS",
};

static void family(buf_t *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(buf_t *b, const char *name, const char *help, uint64_t v)
{
    family(b, name, "counter", help);
    buf_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

void status_dns_metrics(const dns_stats_t *st, buf_t *b)
{
    family(b, "multisite_dns_responses_total", "counter",
           "DNS responses sent, by response code (codes we can send)");
    for (unsigned i = 0; i < DNS_RCODE_SLOTS; i++) {
        if (rcode_names[i]) {
            buf_printf(b, "multisite_dns_responses_total{rcode=\"%s\"} %llu\n", rcode_names[i],
                       (unsigned long long)st->rcode[i]);
        }
    }
    family(b, "multisite_dns_queries_total", "counter",
           "DNS queries answered, by query type (other: the rest, and unreadable questions)");
    for (unsigned i = 0; i < DNS_QTYPE_SLOTS; i++) {
        buf_printf(b, "multisite_dns_queries_total{qtype=\"%s\"} %llu\n", dns_qtype_slot_name(i),
                   (unsigned long long)st->qtype[i]);
    }
    family(b, "multisite_dns_transport_queries_total", "counter",
           "DNS queries received, by transport");
    buf_printf(b, "multisite_dns_transport_queries_total{transport=\"udp\"} %llu\n",
               (unsigned long long)st->udp);
    buf_printf(b, "multisite_dns_transport_queries_total{transport=\"tcp\"} %llu\n",
               (unsigned long long)st->tcp);
    counter(b, "multisite_dns_truncated_total", "UDP responses truncated (TC set)", st->truncated);
    counter(b, "multisite_dns_dropped_total",
            "DNS messages dropped: too short, a response, or the reply could not be sent",
            st->dropped);
    counter(b, "multisite_dns_tcp_refused_total", "TCP connections refused over tcp-max-clients",
            st->tcp_refused);
}

void status_json_str(buf_t *b, const char *s)
{
    buf_append(b, "\"", 1);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            buf_printf(b, "\\%c", ch);
        } else if (ch < 0x20 || ch == 0x7f) {
            buf_printf(b, "\\u%04x", ch);
        } else {
            buf_append(b, s, 1);
        }
    }
    buf_append(b, "\"", 1);
}

void status_dns_json(const dns_stats_t *st, buf_t *b)
{
    buf_printf(b, "{\"queries\":%llu,\"dropped\":%llu,\"truncated\":%llu,\"udp\":%llu,\"tcp\":%llu",
               (unsigned long long)st->queries, (unsigned long long)st->dropped,
               (unsigned long long)st->truncated, (unsigned long long)st->udp,
               (unsigned long long)st->tcp);
    buf_printf(b, ",\"rcode\":{");
    bool first = true;
    for (unsigned i = 0; i < DNS_RCODE_SLOTS; i++) {
        if (rcode_names[i]) {
            buf_printf(b, "%s\"%s\":%llu", first ? "" : ",", rcode_names[i],
                       (unsigned long long)st->rcode[i]);
            first = false;
        }
    }
    buf_printf(b, "},\"qtype\":{");
    for (unsigned i = 0; i < DNS_QTYPE_SLOTS; i++) {
        buf_printf(b, "%s\"%s\":%llu", i ? "," : "", dns_qtype_slot_name(i),
                   (unsigned long long)st->qtype[i]);
    }
    buf_printf(b, "}}");
}

/* ---- multisite-syncd's status (docs/sync.md): our own flat format, read by key ---- */

/* The unsigned number after "key": within [p, end) (not NUL-terminated: digits are read by
 * hand, never past end); false when absent, not a number or over 18 digits. */
static bool num_after(const char *p, const char *end, const char *key, unsigned long long *v)
{
    char pat[48];
    int pl = snprintf(pat, sizeof(pat), "\"%s\":", key);
    for (const char *q = p; q + pl < end; q++) {
        if (memcmp(q, pat, (size_t)pl) == 0) {
            const char *d = q + pl;
            unsigned long long n = 0;
            int digits = 0;
            for (; d < end && *d >= '0' && *d <= '9' && digits < 19; d++, digits++) {
                n = n * 10 + (unsigned long long)(*d - '0');
            }
            if (digits == 0 || digits > 18) {
                return false;
            }
            *v = n;
            return true;
        }
    }
    return false;
}

/* The string after "key": (no escapes in our names); false when absent or too long. */
static bool str_after(const char *p, const char *end, const char *key, char *out, size_t n)
{
    char pat[48];
    int pl = snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    for (const char *q = p; q + pl < end; q++) {
        if (memcmp(q, pat, (size_t)pl) == 0) {
            const char *s = q + pl, *e = memchr(s, '"', (size_t)(end - s));
            if (!e || (size_t)(e - s) >= n) {
                return false;
            }
            for (const char *c = s; c < e; c++) {
                if (*c == '\\' || (unsigned char)*c < 0x20) {
                    return false;
                }
            }
            memcpy(out, s, (size_t)(e - s));
            out[e - s] = '\0';
            return true;
        }
    }
    return false;
}

/* A flag of a peer as 0 or 1: "key":true|false, or for a string field (how F_STR) whether it
 * is not empty (its text is not read: it may hold escapes); false when absent or malformed. */
enum { F_NUM, F_BOOL, F_STR };

static bool flag_after(const char *p, const char *end, const char *key, int how,
                       unsigned long long *v)
{
    char pat[48];
    int pl = snprintf(pat, sizeof(pat), "\"%s\":", key);
    for (const char *q = p; q + pl < end; q++) {
        if (memcmp(q, pat, (size_t)pl) != 0) {
            continue;
        }
        const char *d = q + pl;
        if (how == F_STR) {
            if (end - d < 2 || d[0] != '"') {
                return false;
            }
            *v = d[1] != '"';
            return true;
        }
        if (end - d >= 4 && memcmp(d, "true", 4) == 0) {
            *v = 1;
            return true;
        }
        if (end - d >= 5 && memcmp(d, "false", 5) == 0) {
            *v = 0;
            return true;
        }
        return false;
    }
    return false;
}

void status_sync_metrics(const char *json, size_t len, buf_t *b)
{
    const char *end = json + len;
    const char *peers = NULL;
    for (const char *q = json; q + 9 <= end; q++) {
        if (memcmp(q, "\"peers\":[", 9) == 0) {
            peers = q + 9;
            break;
        }
    }
    if (!peers) {
        return;
    }
    /* Counters only grow; the quarantine and the held-back changes are what is there now
     * (a retry applies them, quarantine_retention deletes them): gauges. */
    static const struct {
        const char *key, *name, *type, *help;
    } totals[] = {
        {"conflicts", "multisite_sync_conflicts_total", "counter",
         "conflicting changes resolved by discarding one (multisite-syncd)"},
        {"quarantined", "multisite_sync_quarantined", "gauge",
         "changes that failed to apply and are in quarantine with their reason"},
        {"held_future", "multisite_sync_held_future", "gauge",
         "changes stamped too far in the future, held back until the clock catches up"},
        {"quarantine_purged", "multisite_sync_quarantine_purged_total", "counter",
         "quarantined changes deleted after quarantine_retention (lost at this site)"},
        {"bad_messages", "multisite_sync_bad_messages_total", "counter",
         "sync messages rejected as malformed or unauthentic"},
    };
    for (size_t k = 0; k < MS_ARRAY_LEN(totals); k++) {
        unsigned long long v;
        if (num_after(json, peers, totals[k].key, &v)) {
            family(b, totals[k].name, totals[k].type, totals[k].help);
            buf_printf(b, "%s %llu\n", totals[k].name, v);
        }
    }
    /* Per peer: each object starts with "name"; fields up to the next one belong to it. */
    static const struct {
        const char *key, *name, *type, *help;
        double scale;
        int how; /* F_NUM: a number, F_BOOL / F_STR: a flag (0 or 1) */
    } per[] = {
        {"lag_ms", "multisite_sync_lag_seconds", "gauge",
         "age of the oldest local change the peer has not acknowledged", 1e-3},
        {"backlog", "multisite_sync_backlog", "gauge",
         "local changes the peer has not acknowledged", 1},
        {"recv_lag_p99_ms", "multisite_sync_receive_lag_p99_seconds", "gauge",
         "99th percentile of commit at the peer to apply here", 1e-3},
        {"rows_applied", "multisite_sync_rows_applied_total", "counter",
         "the peer's rows applied here", 1},
        /* Site lifecycle (docs/sync.md 9.2): either needs an operator to re-join a site. */
        {"must_rejoin", "multisite_sync_peer_must_rejoin", "gauge",
         "1 when the peer passed the backlog limit: refused here until it re-joins", 1, F_BOOL},
        {"refuses_us", "multisite_sync_refused_by_peer", "gauge",
         "1 when the peer refuses this site, which must re-join", 1, F_STR},
    };
    for (size_t k = 0; k < MS_ARRAY_LEN(per); k++) {
        family(b, per[k].name, per[k].type, per[k].help);
        const char *p = peers;
        for (int guard = 0; guard < 1024; guard++) {
            const char *obj = NULL;
            for (const char *q = p; q + 8 <= end; q++) {
                if (memcmp(q, "{\"name\":", 8) == 0) {
                    obj = q;
                    break;
                }
            }
            if (!obj) {
                break;
            }
            const char *next = obj + 8, *stop = end;
            for (const char *q = next; q + 8 <= end; q++) {
                if (memcmp(q, "{\"name\":", 8) == 0) {
                    stop = q;
                    break;
                }
            }
            char name[128];
            unsigned long long v;
            bool got = per[k].how == F_NUM ? num_after(obj, stop, per[k].key, &v)
                                           : flag_after(obj, stop, per[k].key, per[k].how, &v);
            if (str_after(obj, stop, "name", name, sizeof(name)) && got) {
                buf_printf(b, "%s{peer=\"%s\"} %.15g\n", per[k].name, name,
                           (double)v * per[k].scale);
            }
            p = stop;
        }
    }
}
