/* fuzz_query.c: arbitrary bytes as a DNS query through the whole answer path (parse, zone
 * lookup, CNAME/wildcard/referral logic, compression, EDNS, truncation), over UDP-sized and
 * TCP-sized output buffers, against a zone that has one of every feature. */
#include "dns/dns.h"

#include <stdlib.h>
#include <string.h>

static const char zone_text[] =
    "$ORIGIN example.com.\n"
    "$TTL 3600\n"
    "@ SOA ns1 hostmaster 1 7200 3600 1209600 300\n"
    "@ NS ns1\n"
    "@ NS ns2.example.net.\n"
    "@ MX 10 mail\n"
    "@ A 192.0.2.1\n"
    "@ AAAA 2001:db8::1\n"
    "@ TXT \"v=spf1 -all\"\n"
    "@ CAA 0 issue \"ca.example\"\n"
    "@ HTTPS 1 . alpn=h2\n"
    "ns1 A 192.0.2.53\n"
    "mail A 192.0.2.25\n"
    "mail AAAA 2001:db8::25\n"
    "www CNAME web\n"
    "web A 192.0.2.80\n"
    "loop1 CNAME loop2\n"
    "loop2 CNAME loop1\n"
    "out CNAME www.example.org.\n"
    "_sip._udp SRV 10 5 5060 sip\n"
    "sip A 192.0.2.70\n"
    "*.wild A 192.0.2.99\n"
    "*.wild TXT \"wild\"\n"
    "*.wc CNAME web\n"
    "a.b.ent A 192.0.2.5\n"
    "sub NS ns.sub\n"
    "sub NS ns.example.net.\n"
    "ns.sub A 192.0.2.200\n"
    "ns.sub AAAA 2001:db8::200\n"
    "big TXT "
    "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n"
    "big TXT "
    "\"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\"\n"
    "big TXT "
    "\"ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\"\n"
    "big TXT "
    "\"ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd\"\n"
    "big TXT "
    "\"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\"\n"
    "big TXT "
    "\"fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff\"\n"
    "big TXT "
    "\"ggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg\"\n"
    "unk TYPE65400 \\# 4 deadbeef\n"
    "ptr PTR web.example.com.\n";

static snap_t *snap;

static void setup(void)
{
    log_init("fuzz", false, LOG_LVL_ERR);
    conf_t *c = conf_new_default();
    free(c->nsid);
    c->nsid = xstrdup("fuzz-ns");
    snap_t *s = NULL;
    char err[256];
    if (snap_build(c, &s, err, sizeof(err)) != 0) {
        abort();
    }
    zone_t *z = NULL;
    if (zone_load_string("example.com", zone_text, sizeof(zone_text) - 1, &z, err, sizeof(err)) !=
            0 ||
        zone_db_add(s->zones, z) != 0) {
        abort();
    }
    snap = s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t udp[4096];
    static uint8_t *tcp;
    if (!snap) {
        setup();
        tcp = xmalloc(DNS_MAX_MSG);
    }
    size_t n = dns_answer(snap, data, size, udp, 512, false, NULL);
    if (n > 512) {
        abort();
    }
    n = dns_answer(snap, data, size, udp, sizeof(udp), false, NULL);
    if (n > sizeof(udp)) {
        abort();
    }
    n = dns_answer(snap, data, size, tcp, DNS_MAX_MSG, true, NULL);
    if (n > DNS_MAX_MSG) {
        abort();
    }
    return 0;
}
