/* test_snap.c: load-balanced names in the snapshot: which sites an answer has, in which
 * order, for each state; fallbacks; config clashes rejected; answers through dns_answer. */
#include "dns/dns.h"
#include "tap.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char zone_text[] = "$ORIGIN example.com.\n$TTL 300\n"
                                "@ SOA ns1 h 1 2 3 4 60\n@ NS ns1\nns1 A 192.0.2.53\n"
                                "www A 192.0.2.80\napp TXT \"zone data\"\n";

static char dir[] = "/tmp/test_snap.XXXXXX";

static char *write_file(const char *name, const char *text)
{
    char *p = xasprintf("%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
    return p;
}

#define CONF_FMT                                                                                   \
    "server:\n  listen: 127.0.0.1:1\n"                                                             \
    "zones:\n  - origin: example.com\n    file: example.com.zone\n"                                \
    "sites:\n"                                                                                     \
    "  - name: eu\n    addresses: [192.0.2.10, \"2001:db8::10\"]\n"                                \
    "    web-servers: [127.0.0.1:1]\n"                                                             \
    "  - name: us\n    addresses: [198.51.100.10]\n    web-servers: [127.0.0.1:2]\n"               \
    "  - name: ap\n    addresses: [203.0.113.10, 203.0.113.11]\n"                                  \
    "    web-servers: [127.0.0.1:3]\n"                                                             \
    "names:\n"                                                                                     \
    "  - name: %s\n    sites: [us, eu, ap]\n    ttl: 20\n    fallback: %s\n"

static snap_t *build(const char *name, const char *fallback, char *err, size_t errlen)
{
    char text[2048];
    snprintf(text, sizeof(text), CONF_FMT, name, fallback);
    char *path = write_file("ms.yaml", text);
    conf_t *c = NULL;
    conf_err_t ce;
    snap_t *s = NULL;
    if (conf_load(path, &c, &ce) != 0) {
        snprintf(err, errlen, "%s", ce.msg);
    } else if (snap_build(c, &s, err, errlen) != 0) {
        s = NULL;
    }
    free(path);
    return s;
}

/* The A (or AAAA) addresses of a rendered RRset as "a,b,c". */
static void addrs(const uint8_t *blob, char *out, size_t len)
{
    out[0] = '\0';
    if (!blob) {
        snprintf(out, len, "-");
        return;
    }
    zone_rrset_t rs = {blob};
    const uint8_t *rr = zone_rrset_first(rs);
    for (uint16_t i = 0; i < zone_rrset_count(rs); i++, rr = zone_rr_next(rr)) {
        char ip[64];
        inet_ntop(rd_u16(rr) == 4 ? AF_INET : AF_INET6, rr + 2, ip, sizeof(ip));
        if (i) {
            strncat(out, ",", len - strlen(out) - 1);
        }
        strncat(out, ip, len - strlen(out) - 1);
    }
}

static void check_state(snap_t **cur, bool eu, bool us, bool ap, const char *want_a,
                        const char *want_aaaa, bool servfail, const char *what)
{
    bool up[3] = {eu, us, ap};
    snap_state_t st = {up};
    snap_t *s = snap_derive(*cur, &st);
    snap_free(*cur);
    *cur = s;
    char a[256], aaaa[256];
    addrs(s->lb[0].a, a, sizeof(a));
    addrs(s->lb[0].aaaa, aaaa, sizeof(aaaa));
    tap_ok(strcmp(a, want_a) == 0 && strcmp(aaaa, want_aaaa) == 0 && s->lb[0].servfail == servfail,
           "%s: A %s AAAA %s%s", what, a, aaaa, s->lb[0].servfail ? " SERVFAIL" : "");
    if (strcmp(a, want_a) || strcmp(aaaa, want_aaaa)) {
        tap_diag("  expected A %s AAAA %s", want_a, want_aaaa);
    }
}

static size_t query(const snap_t *s, const char *name, uint16_t qtype, uint8_t *resp)
{
    uint8_t q[512] = {0x12, 0x34, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
    size_t n = dname_from_str(name, q + 12, sizeof(q) - 16);
    wr_u16(q + 12 + n, qtype);
    wr_u16(q + 14 + n, 1);
    return dns_answer(s, q, 16 + n, resp, 512, false, NULL);
}

int main(void)
{
    log_init("test_snap", false, LOG_LVL_ERR);
    if (!mkdtemp(dir)) {
        return 1;
    }
    free(write_file("example.com.zone", zone_text));
    char err[512] = "";

    snap_t *s = build("app.example.com", "all", err, sizeof(err));
    tap_ok(s != NULL, "config with a load-balanced name builds (%s)", err);
    if (!s) {
        return tap_done();
    }
    char a[256];
    addrs(s->lb[0].a, a, sizeof(a));
    tap_ok(strcmp(a, "198.51.100.10,192.0.2.10,203.0.113.10,203.0.113.11") == 0,
           "all up: configured order us, eu, ap (%s)", a);
    check_state(&s, true, true, true, "198.51.100.10,192.0.2.10,203.0.113.10,203.0.113.11",
                "2001:db8::10", false, "all up");
    check_state(&s, true, false, true, "192.0.2.10,203.0.113.10,203.0.113.11", "2001:db8::10",
                false, "us down: left out");
    check_state(&s, false, false, true, "203.0.113.10,203.0.113.11", "-", false,
                "only ap: no AAAA");
    check_state(&s, false, false, false, "198.51.100.10,192.0.2.10,203.0.113.10,203.0.113.11",
                "2001:db8::10", false, "all down, fallback all: every site");

    uint8_t resp[512];
    size_t n = query(s, "APP.example.com", RR_A, resp);
    tap_ok(n > 12 && rd_u16(resp + 6) == 4 && (resp[3] & 0xF) == 0 && (resp[2] & 0x04),
           "dns_answer: A for the name: 4 records, NOERROR, AA");
    n = query(s, "app.example.com", RR_TXT, resp);
    tap_ok(n > 12 && rd_u16(resp + 6) == 1, "dns_answer: TXT comes from the zone");
    n = query(s, "app.example.com", RR_MX, resp);
    tap_ok(n > 12 && rd_u16(resp + 6) == 0 && rd_u16(resp + 8) == 1 && (resp[3] & 0xF) == 0,
           "dns_answer: MX is NODATA with SOA");
    snap_free(s);

    s = build("app.example.com", "last", err, sizeof(err));
    check_state(&s, true, false, false, "192.0.2.10", "2001:db8::10", false, "last: eu only");
    check_state(&s, false, false, false, "192.0.2.10", "2001:db8::10", false,
                "all down, fallback last: the last available set (eu)");
    check_state(&s, false, true, false, "198.51.100.10", "-", false, "recovered: us");
    snap_free(s);

    s = build("app.example.com", "servfail", err, sizeof(err));
    check_state(&s, false, false, false, "-", "-", true, "all down, fallback servfail");
    n = query(s, "app.example.com", RR_A, resp);
    tap_ok(n > 12 && (resp[3] & 0xF) == RCODE_SERVFAIL, "dns_answer: SERVFAIL");
    snap_free(s);

    s = build("www.example.com", "all", err, sizeof(err));
    tap_ok(s == NULL && strstr(err, "ms.yaml:17: names[www.example.com]: the zone also has"),
           "a name with A records in the zone is refused with file:line (%s)", err);
    snap_free(s);
    s = build("app.example.org", "all", err, sizeof(err));
    tap_ok(s == NULL && strstr(err, "not inside any configured zone"),
           "a name outside every zone is refused (%s)", err);
    snap_free(s);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) {
        tap_diag("could not remove %s", dir);
    }
    return tap_done();
}
