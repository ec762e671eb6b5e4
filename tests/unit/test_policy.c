/* test_policy.c: the policy module and the answers built from it, by tables of cases.
 *
 * - pol_order: static order, load and rtt bands (inside/outside the tolerance), unknown values
 *   last, locality by region preference and by nearest site, compositions, down sites left out.
 * - pol_classify: subnet tries per family, longest prefix, nested prefixes, and the ECS scope
 *   each lookup reports (walk ends early, source prefix above more specific entries, exact).
 * - weighted: the 64-slot table's first-site distribution, weight 0, down sites.
 * - state-aware TTL: snapshots derived with sites "changing" use ttl-min.
 * - dns_answer_client: ECS parsing (FORMERR table), the echoed scope, the client address
 *   without ECS, source prefix 0, and the weighted draw over many queries.
 * No clock is involved: the policy functions are pure over the state handed to them. */
#include "dns/dns.h"
#include "policy/policy.h"
#include "tap.h"

#include <arpa/inet.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[] = "/tmp/test_policy.XXXXXX";

static char *write_file(const char *name, const char *text)
{
    char *p = xasprintf("%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
    return p;
}

static const char zone_text[] = "$ORIGIN example.com.\n$TTL 300\n"
                                "@ SOA ns1 h 1 2 3 4 60\n@ NS ns1\nns1 A 192.0.2.53\n"
                                "loc TXT \"zone data\"\n"
                                "alias CNAME loc\n";

/* Sites a (Berlin), b (New York), c (Tokyo), d and e (no location). Regions: classes 1..5 are
 * corp, europe, america, asia, dup; classes 6..10 are "nearest site a..e". */
static const char conf_text[] =
    "server:\n  listen: 127.0.0.1:1\n"
    "zones:\n  - origin: example.com\n    file: example.com.zone\n"
    "sites:\n"
    "  - name: a\n    addresses: [192.0.2.1, \"2001:db8::a\"]\n    web-servers: [127.0.0.1:1]\n    "
    "location: \"52.5,13.4\"\n"
    "  - name: b\n    addresses: [192.0.2.2]\n    web-servers: [127.0.0.1:1]\n    location: "
    "\"40.7,-74.0\"\n"
    "  - name: c\n    addresses: [192.0.2.3]\n    web-servers: [127.0.0.1:1]\n    location: "
    "\"35.7,139.7\"\n"
    "  - name: d\n    addresses: [192.0.2.4]\n    web-servers: [127.0.0.1:1]\n"
    "  - name: e\n    addresses: [192.0.2.5]\n    web-servers: [127.0.0.1:1]\n"
    "regions:\n"
    "  - name: corp\n    subnets: [10.0.0.0/8, \"2001:db8::/32\"]\n    prefer: [c]\n"
    "  - name: europe\n    subnets: [10.1.0.0/16, 192.168.0.0/16, \"2001:db8:1::/48\"]\n"
    "    prefer: [a, b]\n"
    "  - name: america\n    subnets: [10.1.2.0/24, \"2001:db8:1:2::/64\"]\n    prefer: [b, a]\n"
    "  - name: asia\n    subnets: [10.1.2.128/25]\n    prefer: [c, a]\n"
    "  - name: dup\n    subnets: [192.168.0.0/16]\n    prefer: [d]\n"
    "names:\n"
    "  - name: static.example.com\n    sites: [a, b, c]\n"
    "  - name: cab.example.com\n    sites: [c, a, b]\n    order: [static]\n"
    "  - name: load.example.com\n    sites: [a, b, c]\n    order: [load]\n"
    "    load-tolerance: 10\n"
    "  - name: load0.example.com\n    sites: [a, b, c]\n    order: [load]\n"
    "    load-tolerance: 0\n"
    "  - name: load100.example.com\n    sites: [a, b, c]\n    order: [load]\n"
    "    load-tolerance: 100\n"
    "  - name: rtt.example.com\n    sites: [a, b, c]\n    order: [rtt]\n"
    "    rtt-tolerance: 20ms\n"
    "  - name: rtt0.example.com\n    sites: [a, b, c]\n    order: [rtt]\n"
    "    rtt-tolerance: 0ms\n"
    "  - name: loc.example.com\n    sites: [a, b, c]\n    order: [locality]\n"
    "  - name: loc4.example.com\n    sites: [a, b, c, d]\n    order: [locality]\n"
    "  - name: locload.example.com\n    sites: [a, b, c]\n    order: [locality, load]\n"
    "  - name: loadloc.example.com\n    sites: [a, b, c]\n    order: [load, locality]\n"
    "  - name: loadrtt.example.com\n    sites: [a, b, c]\n    order: [load, rtt]\n"
    "    rtt-tolerance: 20ms\n"
    "  - name: w31.example.com\n    sites: [a, b]\n    order: [weighted]\n"
    "    weights: [3, 1]\n"
    "  - name: w13.example.com\n    sites: [a, b]\n    order: [weighted]\n"
    "    weights: [1, 3]\n"
    "  - name: w111.example.com\n    sites: [a, b, c]\n    order: [weighted]\n"
    "    weights: [1, 1, 1]\n"
    "  - name: w11111.example.com\n    sites: [a, b, c, d, e]\n    order: [weighted]\n"
    "    weights: [1, 1, 1, 1, 1]\n"
    "  - name: w011.example.com\n    sites: [a, b, c]\n    order: [weighted]\n"
    "    weights: [0, 1, 1]\n"
    "  - name: w211.example.com\n    sites: [a, b, c]\n    order: [weighted]\n"
    "    weights: [2, 1, 1]\n"
    "  - name: w00.example.com\n    sites: [a, b]\n    order: [weighted]\n"
    "    weights: [0, 0]\n"
    "  - name: wbig.example.com\n    sites: [a, b, c]\n    order: [weighted]\n"
    "    weights: [1000000, 1, 1]\n"
    "  - name: locw.example.com\n    sites: [a, b, c]\n    order: [locality, weighted]\n"
    "    weights: [1, 1, 2]\n"
    "  - name: ttl.example.com\n    sites: [a, b]\n    ttl: 20\n    ttl-min: 5\n"
    "  - name: ttlclamp.example.com\n    sites: [a, b]\n    ttl: 20\n    ttl-min: 50\n";

enum { A, B, C, D, E, NSITES };
#define U (-1.0) /* unknown load or rtt */

static const char *const site_names = "abcde";

static size_t name_index(const conf_t *c, const char *name)
{
    for (size_t i = 0; i < c->n_names; i++) {
        if (strcmp(c->names[i].name, name) == 0) {
            return i;
        }
    }
    tap_diag("no name %s in the test config", name);
    abort();
}

/* "a,b,c" for a list of site indices. */
static void order_str(const size_t *o, size_t n, char *out, size_t len)
{
    out[0] = '\0';
    for (size_t i = 0; i < n && i * 2 + 2 < len; i++) {
        out[i * 2] = site_names[o[i]];
        out[i * 2 + 1] = i + 1 < n ? ',' : '\0';
    }
}

/* ---- pol_order ---- */

typedef struct {
    const char *name;
    unsigned cls;
    const char *up; /* "11111": per site a..e */
    double load[3], rtt[3];
    const char *want;
    const char *what;
} order_case_t;

static const order_case_t order_cases[] = {
    {"static.example.com", 0, "11111", {U, U, U}, {U, U, U}, "a,b,c", "static: configured order"},
    {"cab.example.com",
     0,
     "11111",
     {U, U, U},
     {U, U, U},
     "c,a,b",
     "static: the name's site list, not the sites: section"},
    {"static.example.com", 0, "10111", {U, U, U}, {U, U, U}, "a,c", "static: down site left out"},
    {"static.example.com", 0, "00011", {U, U, U}, {U, U, U}, "", "static: all down: none"},
    {"static.example.com",
     0,
     "11111",
     {.9, .1, .5},
     {90, 5, 40},
     "a,b,c",
     "static: load and rtt ignored"},
    /* load, tolerance 10%: band = floor(load / 0.10) */
    {"load.example.com",
     0,
     "11111",
     {.33, .31, .36},
     {U, U, U},
     "a,b,c",
     "load 10%: .33 .31 .36 share band 3: configured order (b lowest, not first)"},
    {"load.example.com",
     0,
     "11111",
     {.42, .41, .40},
     {U, U, U},
     "a,b,c",
     "load 10%: near-equal .42 .41 .40 keep configured order"},
    {"load.example.com",
     0,
     "11111",
     {.55, .21, .38},
     {U, U, U},
     "b,c,a",
     "load 10%: clear differences reorder"},
    {"load.example.com",
     0,
     "11111",
     {.21, .19, .50},
     {U, U, U},
     "b,a,c",
     "load 10%: .21 vs .19 straddle a band edge (2 vs 1): b first"},
    {"load.example.com",
     0,
     "11111",
     {.30, .29, .50},
     {U, U, U},
     "b,a,c",
     "load 10%: .30 is band 3, .29 band 2 (band edge exactly on a multiple)"},
    {"load.example.com",
     0,
     "11111",
     {.70, .65, .90},
     {U, U, U},
     "b,a,c",
     "load 10%: .70 is band 7, .65 band 6"},
    {"load.example.com", 0, "11111", {U, .90, .50}, {U, U, U}, "c,b,a", "load: unknown last"},
    {"load.example.com",
     0,
     "11111",
     {U, .50, U},
     {U, U, U},
     "b,a,c",
     "load: unknowns after known, in configured order"},
    {"load.example.com", 0, "11111", {U, U, U}, {U, U, U}, "a,b,c", "load: all unknown: static"},
    {"load.example.com", 0, "10111", {.90, .10, .50}, {U, U, U}, "c,a", "load: down left out"},
    {"load.example.com", 0, "11111", {0, 0, 0}, {U, U, U}, "a,b,c", "load: all zero: static"},
    {"load.example.com",
     0,
     "11111",
     {1.0, .99, .95},
     {U, U, U},
     "b,c,a",
     "load 10%: full (1.0) after .99 and .95"},
    {"load0.example.com",
     0,
     "11111",
     {.3001, .3, .3002},
     {U, U, U},
     "b,a,c",
     "load 0%: any difference reorders"},
    {"load100.example.com",
     0,
     "11111",
     {.99, 0, .5},
     {U, U, U},
     "a,b,c",
     "load 100%: every load below 1 in band 0"},
    {"load100.example.com",
     0,
     "11111",
     {1.0, 0, .5},
     {U, U, U},
     "b,c,a",
     "load 100%: a full site (1.0) is band 1"},
    /* rtt, tolerance 20 ms: band = floor(rtt / 20) */
    {"rtt.example.com",
     0,
     "11111",
     {U, U, U},
     {35, 22, 39},
     "a,b,c",
     "rtt 20ms: 35 22 39 share band 1: configured order"},
    {"rtt.example.com", 0, "11111", {U, U, U}, {45, 12, 25}, "b,c,a", "rtt 20ms: clear reorder"},
    {"rtt.example.com", 0, "11111", {U, U, U}, {U, 50, 10}, "c,b,a", "rtt: unknown last"},
    {"rtt.example.com",
     0,
     "11111",
     {U, U, U},
     {40, 39.9, 60},
     "b,a,c",
     "rtt 20ms: 40 is band 2, 39.9 band 1"},
    {"rtt.example.com", 0, "11111", {.9, .1, .5}, {10, 10, 10}, "a,b,c", "rtt: load ignored"},
    {"rtt0.example.com",
     0,
     "11111",
     {U, U, U},
     {10.5, 10.4, 10.6},
     "b,a,c",
     "rtt 0ms: any difference reorders"},
    /* locality: class 0 none, 1 corp [c], 2 europe [a,b], 3 america [b,a], 4 asia [c,a],
     * 6..8 nearest a, b, c */
    {"loc.example.com", 0, "11111", {U, U, U}, {U, U, U}, "a,b,c", "locality: class 0: static"},
    {"loc.example.com",
     1,
     "11111",
     {U, U, U},
     {U, U, U},
     "c,a,b",
     "locality corp [c]: c, then unlisted in configured order"},
    {"loc.example.com", 2, "11111", {U, U, U}, {U, U, U}, "a,b,c", "locality europe [a,b]"},
    {"loc.example.com", 3, "11111", {U, U, U}, {U, U, U}, "b,a,c", "locality america [b,a]"},
    {"loc.example.com", 4, "11111", {U, U, U}, {U, U, U}, "c,a,b", "locality asia [c,a]"},
    {"loc.example.com",
     3,
     "10111",
     {U, U, U},
     {U, U, U},
     "a,c",
     "locality america, b down: left out"},
    {"loc.example.com",
     6,
     "11111",
     {U, U, U},
     {U, U, U},
     "a,b,c",
     "nearest a: a, then b (6,400 km from a), c (8,900 km)"},
    {"loc.example.com",
     7,
     "11111",
     {U, U, U},
     {U, U, U},
     "b,a,c",
     "nearest b: b, then a (6,400 km), c (10,800 km)"},
    {"loc.example.com",
     8,
     "11111",
     {U, U, U},
     {U, U, U},
     "c,a,b",
     "nearest c: c, then a (8,900 km), b (10,800 km)"},
    {"loc.example.com",
     8,
     "11011",
     {U, U, U},
     {U, U, U},
     "a,b",
     "nearest c, c down: the rest by distance from c"},
    {"loc4.example.com",
     8,
     "11111",
     {U, U, U},
     {U, U, U},
     "c,a,b,d",
     "nearest c: d has no location: after the sites at a known distance"},
    /* compositions */
    {"locload.example.com",
     3,
     "11111",
     {.1, .9, 0},
     {U, U, U},
     "b,a,c",
     "[locality, load] america: locality first, load does not override it"},
    {"locload.example.com",
     1,
     "11111",
     {.1, .9, .8},
     {U, U, U},
     "c,a,b",
     "[locality, load] corp: unlisted a and b ordered by load"},
    {"locload.example.com",
     1,
     "11111",
     {.9, .1, .8},
     {U, U, U},
     "c,b,a",
     "[locality, load] corp: unlisted b (.1) before a (.9)"},
    {"loadloc.example.com",
     3,
     "11111",
     {.1, .9, 0},
     {U, U, U},
     "c,a,b",
     "[load, locality] america: load first"},
    {"loadloc.example.com",
     3,
     "11111",
     {.33, .31, .9},
     {U, U, U},
     "b,a,c",
     "[load, locality] america: same load band, locality decides"},
    {"loadloc.example.com",
     0,
     "11111",
     {.33, .31, .9},
     {U, U, U},
     "a,b,c",
     "[load, locality] class 0: same band, configured order"},
    {"loadrtt.example.com",
     0,
     "11111",
     {.33, .31, .36},
     {80, 50, 10},
     "c,b,a",
     "[load, rtt]: same load band, rtt bands 4 2 0 decide"},
    {"loadrtt.example.com",
     0,
     "11111",
     {.33, .31, .36},
     {U, 50, U},
     "b,a,c",
     "[load, rtt]: same load band, unknown rtts last"},
    {"loadrtt.example.com",
     0,
     "11111",
     {.53, .31, .36},
     {1, 90, 90},
     "b,c,a",
     "[load, rtt]: load band first"},
};

static void test_order(const conf_t *c)
{
    for (size_t i = 0; i < MS_ARRAY_LEN(order_cases); i++) {
        const order_case_t *t = &order_cases[i];
        const conf_name_t *nm = &c->names[name_index(c, t->name)];
        pol_site_t st[NSITES];
        for (size_t s = 0; s < NSITES; s++) {
            st[s].up = t->up[s] == '1';
            st[s].load = s < 3 ? t->load[s] : -1;
            st[s].rtt_ms = s < 3 ? t->rtt[s] : -1;
        }
        size_t out[64];
        size_t n = pol_order(c, nm, st, t->cls, out);
        char got[64];
        order_str(out, n, got, sizeof(got));
        tap_ok(strcmp(got, t->want) == 0, "pol_order %s: %s", t->name, t->what);
        if (strcmp(got, t->want) != 0) {
            tap_diag("  got \"%s\", expected \"%s\"", got, t->want);
        }
    }
    /* No state at all: every site up, nothing known. */
    size_t out[64];
    char got[64];
    size_t n = pol_order(c, &c->names[name_index(c, "load.example.com")], NULL, 0, out);
    order_str(out, n, got, sizeof(got));
    tap_ok(strcmp(got, "a,b,c") == 0, "pol_order without state: configured order (%s)", got);
    TAP_EQ_INT(pol_class_count(c), 11, "class count: 1 + 5 regions + 5 sites");
    tap_ok(pol_uses_locality(&c->names[name_index(c, "locload.example.com")]) &&
               !pol_uses_locality(&c->names[name_index(c, "load.example.com")]),
           "pol_uses_locality");
    double km = pol_distance_km(52.5, 13.4, 40.7, -74.0);
    tap_ok(fabs(km - 6380) < 30, "distance Berlin-New York about 6,380 km (%.0f)", km);
    km = pol_distance_km(35.7, 139.7, 35.7, 139.7);
    tap_ok(km < 1e-6, "distance to itself 0 (%g)", km);
}

/* ---- pol_classify ---- */

typedef struct {
    const char *addr;
    unsigned src;
    unsigned cls;
    unsigned scope;
    const char *what;
} cls_case_t;

/* The scope is correct when every address inside scope/prefix gets the same class: when the
 * client's path leaves the trie after bit i of a node that has entries on its other side, the
 * scope is i + 1 (a /i would cover those entries); at a leaf it is the leaf's depth; when the
 * source prefix ends above deeper entries, the deepest of them.
 *
 * v4 trie: 10/8 corp(1), 10.1/16 europe(2), 192.168/16 europe (and dup, ignored),
 * 10.1.2/24 america(3), 10.1.2.128/25 asia(4). v6: 2001:db8::/32 corp, 2001:db8:1::/48
 * europe, 2001:db8:1:2::/64 america. */
static const cls_case_t cls_cases[] = {
    {"10.9.9.9", 32, 1, 13, "10.9.9.9: corp /8; leaves the trie after bit 12: scope 13"},
    {"10.1.5.5", 32, 2, 22, "10.1.5.5: europe /16; leaves the trie at bit 21: scope 22"},
    {"10.1.2.5", 32, 3, 25, "10.1.2.5: america /24, lower half: scope 25 (not 24: the /25 asia)"},
    {"10.1.2.200", 32, 4, 25, "10.1.2.200: asia /25 (longest prefix)"},
    {"10.1.2.128", 32, 4, 25, "10.1.2.128: asia /25"},
    {"10.1.0.0", 16, 2, 25, "ECS 10.1/16: europe, scope 25 (deepest entry below)"},
    {"10.1.2.0", 24, 3, 25, "ECS 10.1.2/24: america, scope 25 (the /25 below)"},
    {"10.1.2.128", 25, 4, 25, "ECS 10.1.2.128/25: asia, exact: scope 25"},
    {"10.1.3.0", 24, 2, 24, "ECS 10.1.3/24: europe, scope 24 (a /23 would hold 10.1.2/24)"},
    {"10.1.2.0", 23, 2, 25, "ECS 10.1.2/23: europe, scope 25"},
    {"10.0.0.0", 8, 1, 25, "ECS 10/8: corp, scope 25"},
    {"10.128.0.0", 9, 1, 9, "ECS 10.128/9: corp, nothing below: scope 9"},
    {"11.0.0.0", 8, 0, 8, "ECS 11/8: no region, scope 8 (a /7 would hold 10/8)"},
    {"172.16.0.1", 32, 0, 2, "172.16.0.1: no region, scope 2 (a /1 holds 192.168/16)"},
    {"192.168.1.1", 32, 2, 16, "192.168.1.1: the first region listing a prefix keeps it"},
    {"192.168.0.0", 16, 2, 16, "ECS 192.168/16: europe, exact"},
    {"32.1.13.184", 32, 0, 3, "v4 bytes of 2001:db8: not in the v6 trie"},
    {"2001:db8:1:2::1", 128, 3, 64, "2001:db8:1:2::1: america /64"},
    {"2001:db8:1:2::", 64, 3, 64, "ECS 2001:db8:1:2::/64: america, exact"},
    {"2001:db8:1:3::", 64, 2, 64, "ECS 2001:db8:1:3::/64: europe, scope 64"},
    {"2001:db8:1::", 48, 2, 64, "ECS 2001:db8:1::/48: europe, scope 64"},
    {"2001:db8:1::", 56, 2, 64, "ECS 2001:db8:1::/56: europe, scope 64"},
    {"2001:db8:ffff::", 48, 1, 33, "ECS 2001:db8:ffff::/48: corp, scope 33"},
    {"2001:db9::", 32, 0, 32, "ECS 2001:db9::/32: none, scope 32"},
    {"::ffff:10.1.2.3", 128, 0, 3, "v4-mapped v6 address: the v6 trie only"},
    {"fe80::1", 128, 0, 1, "fe80::1: none, scope 1"},
};

static int parse_ip(const char *s, uint8_t *addr)
{
    memset(addr, 0, 16);
    if (inet_pton(AF_INET, s, addr) == 1) {
        return AF_INET;
    }
    if (inet_pton(AF_INET6, s, addr) == 1) {
        return AF_INET6;
    }
    abort();
}

static void test_classify(const pol_classifier_t *p)
{
    for (size_t i = 0; i < MS_ARRAY_LEN(cls_cases); i++) {
        const cls_case_t *t = &cls_cases[i];
        uint8_t addr[16];
        int fam = parse_ip(t->addr, addr);
        unsigned scope = 999;
        unsigned cls = pol_classify(p, fam, addr, t->src, &scope);
        tap_ok(cls == t->cls && scope == t->scope, "pol_classify %s/%u: %s", t->addr, t->src,
               t->what);
        if (cls != t->cls || scope != t->scope) {
            tap_diag("  got class %u scope %u, expected class %u scope %u", cls, scope, t->cls,
                     t->scope);
        }
    }
    /* Source prefix 0: no bits to match; no /0 entry, so no region. */
    uint8_t zero[16] = {0};
    unsigned scope = 999;
    TAP_EQ_INT(pol_classify(p, AF_INET, zero, 0, &scope), 0, "pol_classify 0.0.0.0/0: class 0");
    TAP_EQ_INT(pol_classify(p, AF_INET6, zero, 0, &scope), 0, "pol_classify ::/0: class 0");
    /* A source prefix beyond the family's length is capped, not read past the address. */
    uint8_t a4[16];
    parse_ip("10.1.2.200", a4);
    TAP_EQ_INT(pol_classify(p, AF_INET, a4, 99, &scope), 4, "pol_classify v4 /99: capped to /32");
}

static void test_classify_other(void)
{
    /* A /0 entry catches everyone with scope 0; an empty v6 trie gives class 0, scope 0. */
    static const char text[] =
        "server:\n  listen: 127.0.0.1:1\n"
        "zones:\n  - origin: example.com\n    file: example.com.zone\n"
        "sites:\n  - name: a\n    addresses: [192.0.2.1]\n    web-servers: [127.0.0.1:1]\n"
        "  - name: b\n    addresses: [192.0.2.2]\n    web-servers: [127.0.0.1:1]\n"
        "regions:\n  - name: world\n    subnets: [0.0.0.0/0]\n    prefer: [b]\n"
        "  - name: lab\n    subnets: [10.0.0.0/8]\n    prefer: [a]\n"
        "names:\n  - name: x.example.com\n    sites: [a, b]\n    order: [locality]\n";
    char *path = write_file("other.yaml", text);
    conf_t *c = NULL;
    conf_err_t ce;
    int rc = conf_load(path, &c, &ce);
    free(path);
    tap_ok(rc == 0, "config with a /0 region loads (%s)", rc ? ce.msg : "");
    if (rc) {
        return;
    }
    pol_classifier_t *p = NULL;
    char err[256];
    if (pol_classifier_new(c, &p, err, sizeof(err)) != 0) {
        tap_ok(false, "classifier: %s", err);
        conf_free(c);
        return;
    }
    uint8_t addr[16];
    unsigned scope = 999, cls;
    parse_ip("198.51.100.1", addr);
    cls = pol_classify(p, AF_INET, addr, 32, &scope);
    tap_ok(cls == 1 && scope == 1, "/0 region: 198.51.100.1 world, scope 1 (got %u/%u)", cls,
           scope);
    parse_ip("10.2.3.4", addr);
    cls = pol_classify(p, AF_INET, addr, 32, &scope);
    tap_ok(cls == 2 && scope == 8, "10.2.3.4 lab (longer than /0), scope 8 (got %u/%u)", cls,
           scope);
    parse_ip("2001:db8::1", addr);
    cls = pol_classify(p, AF_INET6, addr, 128, &scope);
    tap_ok(cls == 0 && scope == 0, "no v6 subnets: class 0 scope 0 (got %u/%u)", cls, scope);
    pol_classifier_free(p);
    conf_free(c);
}

/* ---- snapshots: weighted slots, TTL ---- */

static snap_lb_t *lb_of(snap_t *s, const char *name)
{
    return &s->lb[name_index(s->conf, name)];
}

/* First-site counts over the 64 slots of class k: "a:48 b:16". */
static void slot_dist(const snap_class_t *cl, unsigned cnt[NSITES])
{
    memset(cnt, 0, NSITES * sizeof(unsigned));
    for (unsigned i = 0; i < SNAP_WEIGHT_SLOTS; i++) {
        unsigned v = cl->n_var > 1 ? cl->slot[i] : 0;
        cnt[cl->order[v]]++;
    }
}

static void dist_str(const unsigned cnt[NSITES], char *out, size_t len)
{
    out[0] = '\0';
    for (size_t s = 0; s < NSITES; s++) {
        size_t l = strlen(out);
        snprintf(out + l, len - l, "%s%c:%u", s ? " " : "", site_names[s], cnt[s]);
    }
}

/* The first A address of an RRset blob, as text. */
static void first_a(const uint8_t *blob, char *out, size_t len)
{
    if (!blob) {
        snprintf(out, len, "-");
        return;
    }
    zone_rrset_t rs = {blob};
    const uint8_t *rr = zone_rrset_first(rs);
    inet_ntop(rd_u16(rr) == 4 ? AF_INET : AF_INET6, rr + 2, out, (socklen_t)len);
}

typedef struct {
    const char *name;
    const char *up;
    unsigned cls;
    const char *want;
    const char *what;
} weight_case_t;

static const weight_case_t weight_cases[] = {
    {"w31.example.com", "11111", 0, "a:48 b:16 c:0 d:0 e:0", "weights 3:1 -> 48:16 slots"},
    {"w13.example.com", "11111", 0, "a:16 b:48 c:0 d:0 e:0", "weights 1:3 -> 16:48 slots"},
    {"w111.example.com", "11111", 0, "a:22 b:21 c:21 d:0 e:0",
     "weights 1:1:1 -> 22:21:21 (one leftover slot)"},
    {"w11111.example.com", "11111", 0, "a:13 b:13 c:13 d:13 e:12",
     "weights 1:1:1:1:1 -> 13:13:13:13:12 (four leftovers, one each, largest remainder)"},
    {"w011.example.com", "11111", 0, "a:0 b:32 c:32 d:0 e:0", "weight 0: a never first"},
    {"w211.example.com", "11111", 0, "a:32 b:16 c:16 d:0 e:0", "weights 2:1:1 -> 32:16:16"},
    {"w211.example.com", "01111", 0, "a:0 b:32 c:32 d:0 e:0", "a down: no slots, b:c 32:32"},
    {"w211.example.com", "10111", 0, "a:43 b:0 c:21 d:0 e:0", "b down: 2:1 -> 43:21"},
    {"w211.example.com", "11011", 0, "a:43 b:21 c:0 d:0 e:0", "c down: 2:1 -> 43:21"},
    {"w211.example.com", "10011", 0, "a:64 b:0 c:0 d:0 e:0", "only a up: all slots"},
    {"w00.example.com", "11111", 0, "a:64 b:0 c:0 d:0 e:0",
     "all weights 0: the first configured site (no draw)"},
    {"wbig.example.com", "11111", 0, "a:64 b:0 c:0 d:0 e:0",
     "weights 1000000:1:1: the tiny shares round to 0 slots"},
    {"locw.example.com", "11111", 0, "a:16 b:16 c:32 d:0 e:0", "[locality, weighted] class 0"},
    {"locw.example.com", "11111", 3, "a:16 b:16 c:32 d:0 e:0",
     "[locality, weighted] america: same shares (weights decide the first site)"},
    {"locw.example.com", "01111", 4, "a:0 b:21 c:43 d:0 e:0", "[locality, weighted] asia, a down"},
};

static void test_weighted(snap_t *base)
{
    for (size_t i = 0; i < MS_ARRAY_LEN(weight_cases); i++) {
        const weight_case_t *t = &weight_cases[i];
        bool up[NSITES];
        for (size_t s = 0; s < NSITES; s++) {
            up[s] = t->up[s] == '1';
        }
        snap_state_t st = {.site_up = up};
        snap_t *s = snap_derive(base, &st);
        snap_lb_t *lb = lb_of(s, t->name);
        const snap_class_t *cl = &lb->cls[t->cls < lb->n_cls ? t->cls : 0];
        unsigned cnt[NSITES];
        slot_dist(cl, cnt);
        char got[128];
        dist_str(cnt, got, sizeof(got));
        tap_ok(strcmp(got, t->want) == 0, "weighted %s up %s class %u: %s", t->name, t->up, t->cls,
               t->what);
        if (strcmp(got, t->want) != 0) {
            tap_diag("  got %s, expected %s", got, t->want);
        }
        /* Every variant starts with its own candidate; the rest follow in class order. */
        bool ok = true;
        for (unsigned v = 0; v < cl->n_var; v++) {
            char fa[64], want[64];
            first_a(cl->var[v].a, fa, sizeof(fa));
            inet_ntop(AF_INET, &s->conf->sites[cl->order[v]].addrs.v[0].sin.sin_addr, want,
                      sizeof(want));
            ok = ok && strcmp(fa, want) == 0;
            if (strcmp(fa, want) != 0) {
                tap_diag("  variant %u starts with %s, expected %s", v, fa, want);
            }
            /* ... and holds every available site (weight 0 too): one A record each. */
            if (!cl->var[v].a || zone_rrset_count((zone_rrset_t){cl->var[v].a}) != cl->n_order) {
                ok = false;
                tap_diag("  variant %u does not hold all %zu sites", v, cl->n_order);
            }
        }
        tap_ok(ok && cl->n_var >= 1,
               "weighted %s up %s: %u variants, each led by its site, all sites in each", t->name,
               t->up, cl->n_var);
        snap_free(s);
    }
}

static void test_ttl(snap_t *base)
{
    bool up[NSITES] = {true, true, true, true, true};
    struct {
        const char *name;
        int changing; /* site index, -1 none */
        uint32_t want;
        const char *what;
    } cases[] = {
        {"ttl.example.com", -1, 20, "nothing changing: ttl"},
        {"ttl.example.com", B, 5, "b (in the name) changing: ttl-min"},
        {"ttl.example.com", A, 5, "a (in the name) changing: ttl-min"},
        {"ttl.example.com", C, 20, "c (not in the name) changing: ttl"},
        {"ttlclamp.example.com", B, 20, "ttl-min above ttl is clamped to ttl"},
        {"loc.example.com", C, 5, "locality name, c changing: ttl-min in every class"},
        {"w31.example.com", B, 5, "weighted name, b changing: ttl-min in every variant"},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        bool ch[NSITES] = {false};
        if (cases[i].changing >= 0) {
            ch[cases[i].changing] = true;
        }
        snap_state_t st = {.site_up = up, .site_changing = ch};
        snap_t *s = snap_derive(base, &st);
        snap_lb_t *lb = lb_of(s, cases[i].name);
        bool ok = lb->ttl == cases[i].want;
        for (unsigned k = 0; k < lb->n_cls; k++) {
            for (unsigned v = 0; v < lb->cls[k].n_var; v++) {
                const uint8_t *blob = lb->cls[k].var[v].a;
                if (blob && zone_rrset_ttl((zone_rrset_t){blob}) != cases[i].want) {
                    ok = false;
                }
            }
        }
        tap_ok(ok, "TTL %s: %s (lb->ttl %u, want %u)", cases[i].name, cases[i].what, lb->ttl,
               cases[i].want);
        snap_free(s);
    }
    /* The built snapshot (no state): nothing changing. */
    TAP_EQ_INT(lb_of(base, "ttl.example.com")->ttl, 20, "TTL at build: ttl");
}

/* ---- dns_answer_client: ECS ---- */

typedef struct {
    uint8_t buf[600];
    size_t len;
} pkt_t;

static void q_start(pkt_t *q, const char *name, uint16_t qtype, bool edns)
{
    memset(q, 0, sizeof(*q));
    q->buf[0] = 0xAB;
    q->buf[1] = 0xCD;
    wr_u16(q->buf + 4, 1);
    wr_u16(q->buf + 10, edns ? 1 : 0);
    size_t n = dname_from_str(name, q->buf + 12, sizeof(q->buf) - 40);
    wr_u16(q->buf + 12 + n, qtype);
    wr_u16(q->buf + 14 + n, 1);
    q->len = 16 + n;
    if (edns) {
        uint8_t *o = q->buf + q->len;
        o[0] = 0;
        wr_u16(o + 1, 41);
        wr_u16(o + 3, 1232);
        /* ttl 0, rdlen 0 */
        q->len += 11;
    }
}

/* Append an EDNS option (the query must have been started with edns). */
static void q_opt(pkt_t *q, uint16_t code, const uint8_t *data, size_t len)
{
    size_t rdlen_at = q->len - 0; /* options go at the end of the OPT RDATA (last RR) */
    uint8_t *p = q->buf + rdlen_at;
    wr_u16(p, code);
    wr_u16(p + 2, (uint16_t)len);
    memcpy(p + 4, data, len);
    q->len += 4 + len;
    /* OPT is the last RR: its RDLEN sits 2 bytes before its RDATA; find it from the end. */
    size_t opt = 0;
    size_t o = 12;
    while (q->buf[o]) {
        o += q->buf[o] + 1u;
    }
    opt = o + 5; /* the OPT owner (root) */
    size_t rd = rd_u16(q->buf + opt + 9);
    wr_u16(q->buf + opt + 9, (uint16_t)(rd + 4 + len));
}

/* An ECS option: family, source, scope, then `alen` address bytes from addr. */
static void q_ecs(pkt_t *q, uint16_t family, uint8_t src, uint8_t scope, const uint8_t *addr,
                  size_t alen)
{
    uint8_t d[40];
    wr_u16(d, family);
    d[2] = src;
    d[3] = scope;
    memcpy(d + 4, addr, alen);
    q_opt(q, 8, d, 4 + alen);
}

typedef struct {
    unsigned rcode;
    unsigned ancount;
    char first[64]; /* first A/AAAA address, "-" if none */
    uint32_t ttl;
    bool has_ecs;
    uint16_t ecs_family;
    uint8_t ecs_src, ecs_scope;
    uint8_t ecs_addr[16];
    size_t ecs_alen;
    bool ok; /* parsed */
} resp_info_t;

static size_t skip_name(const uint8_t *p, size_t len, size_t o)
{
    while (o < len) {
        if ((p[o] & 0xC0) == 0xC0) {
            return o + 2;
        }
        if (p[o] == 0) {
            return o + 1;
        }
        o += p[o] + 1u;
    }
    return 0;
}

static resp_info_t parse_resp(const uint8_t *p, size_t len)
{
    resp_info_t r;
    memset(&r, 0, sizeof(r));
    snprintf(r.first, sizeof(r.first), "-");
    if (len < 12) {
        return r;
    }
    r.rcode = p[3] & 0xF;
    unsigned qd = rd_u16(p + 4), an = rd_u16(p + 6), ns = rd_u16(p + 8), ar = rd_u16(p + 10);
    r.ancount = an;
    size_t o = 12;
    for (unsigned i = 0; i < qd; i++) {
        o = skip_name(p, len, o);
        if (!o || o + 4 > len) {
            return r;
        }
        o += 4;
    }
    for (unsigned i = 0; i < an + ns + ar; i++) {
        o = skip_name(p, len, o);
        if (!o || o + 10 > len) {
            return r;
        }
        uint16_t type = rd_u16(p + o), rdlen = rd_u16(p + o + 8);
        uint32_t ttl = ((uint32_t)rd_u16(p + o + 4) << 16) | rd_u16(p + o + 6);
        size_t rd = o + 10;
        if (rd + rdlen > len) {
            return r;
        }
        if (i < an && r.first[0] == '-' && (type == RR_A || type == RR_AAAA)) {
            inet_ntop(type == RR_A ? AF_INET : AF_INET6, p + rd, r.first, sizeof(r.first));
            r.ttl = ttl;
        }
        if (type == RR_OPT) {
            for (size_t x = rd; x + 4 <= rd + rdlen;) {
                uint16_t code = rd_u16(p + x), olen = rd_u16(p + x + 2);
                if (code == 8 && olen >= 4 && olen <= 20) {
                    r.has_ecs = true;
                    r.ecs_family = rd_u16(p + x + 4);
                    r.ecs_src = p[x + 6];
                    r.ecs_scope = p[x + 7];
                    r.ecs_alen = olen - 4u;
                    memcpy(r.ecs_addr, p + x + 8, r.ecs_alen);
                }
                x += 4u + olen;
            }
        }
        o = rd + rdlen;
    }
    r.ok = o == len;
    return r;
}

static resp_info_t ask(const snap_t *s, const pkt_t *q, const char *client)
{
    uint8_t out[1500];
    net_addr_t ca, *cap = NULL;
    if (client) {
        if (net_parse_ip(client, &ca) != 0) {
            abort();
        }
        cap = &ca;
    }
    size_t n = dns_answer_client(s, q->buf, q->len, out, sizeof(out), false, cap, NULL);
    return parse_resp(out, n);
}

typedef struct {
    const char *name;
    const char *ecs; /* "10.1.2.0/24", or NULL for no ECS */
    const char *client;
    const char *first;
    int scope; /* -1: no ECS option expected in the reply */
    const char *what;
} ecs_case_t;

/* loc.example.com: [locality] a(192.0.2.1) b(.2) c(.3); static.example.com: static. */
static const ecs_case_t ecs_cases[] = {
    {"loc.example.com", "10.1.2.0/24", NULL, "192.0.2.2", 25, "ECS america /24: b first, scope 25"},
    {"loc.example.com", "10.1.2.128/25", NULL, "192.0.2.3", 25, "ECS asia /25: c first, scope 25"},
    {"loc.example.com", "10.1.3.0/24", NULL, "192.0.2.1", 24, "ECS europe /24: a first, scope 24"},
    {"loc.example.com", "10.1.0.0/16", NULL, "192.0.2.1", 25,
     "ECS europe /16 over deeper entries: scope 25"},
    {"loc.example.com", "10.9.0.0/16", NULL, "192.0.2.3", 13, "ECS corp: c first, scope 13"},
    {"loc.example.com", "172.16.0.0/12", NULL, "192.0.2.1", 2, "ECS no region: class 0, scope 2"},
    {"loc.example.com", "2001:db8:1:2::/64", NULL, "192.0.2.2", 64, "ECS v6 america: scope 64"},
    {"loc.example.com", "2001:db8:1::/48", NULL, "192.0.2.1", 64, "ECS v6 europe /48: scope 64"},
    {"loc.example.com", "0.0.0.0/0", "10.1.2.3", "192.0.2.1", 0,
     "ECS source 0: no locality even with a classifiable client, scope 0"},
    {"loc.example.com", "::/0", NULL, "192.0.2.1", 0, "ECS v6 source 0: scope 0"},
    {"loc.example.com", "192.168.0.0/16", "10.1.2.3", "192.0.2.1", 16,
     "ECS wins over the client address"},
    {"loc.example.com", NULL, "10.1.2.3", "192.0.2.2", -1, "no ECS: the client address (america)"},
    {"loc.example.com", NULL, "10.1.2.200", "192.0.2.3", -1, "no ECS: client in asia"},
    {"loc.example.com", NULL, "2001:db8:1:2::5", "192.0.2.2", -1, "no ECS: v6 client america"},
    {"loc.example.com", NULL, "127.0.0.1", "192.0.2.1", -1, "no ECS, unknown client: class 0"},
    {"loc.example.com", NULL, NULL, "192.0.2.1", -1, "no ECS, no client: class 0"},
    {"static.example.com", "10.1.2.0/24", NULL, "192.0.2.1", 0, "name without locality: scope 0"},
    {"w31.example.com", "10.1.2.0/24", NULL, NULL, 0, "weighted name without locality: scope 0"},
    {"nx.example.com", "10.1.2.0/24", NULL, "-", 0, "NXDOMAIN: ECS echoed with scope 0"},
    {"ns1.example.com", "10.1.2.0/24", NULL, "192.0.2.53", 0, "zone data: scope 0"},
    {"alias.example.com", "10.1.2.128/25", NULL, "192.0.2.3", 25,
     "CNAME to a locality name: the target's order and scope"},
};

static bool parse_prefix_str(const char *s, uint16_t *fam, uint8_t *src, uint8_t *addr)
{
    char buf[64];
    snprintf(buf, sizeof(buf), "%s", s);
    char *slash = strchr(buf, '/');
    *slash = '\0';
    *src = (uint8_t)atoi(slash + 1);
    int f = parse_ip(buf, addr);
    *fam = f == AF_INET ? 1 : 2;
    return true;
}

static void test_ecs(const snap_t *s)
{
    for (size_t i = 0; i < MS_ARRAY_LEN(ecs_cases); i++) {
        const ecs_case_t *t = &ecs_cases[i];
        pkt_t q;
        q_start(&q, t->name, RR_A, t->ecs != NULL);
        uint16_t fam = 0;
        uint8_t src = 0, addr[16] = {0};
        if (t->ecs) {
            parse_prefix_str(t->ecs, &fam, &src, addr);
            q_ecs(&q, fam, src, 0, addr, (src + 7u) / 8u);
        }
        resp_info_t r = ask(s, &q, t->client);
        bool ok = r.ok && (t->first == NULL || strcmp(r.first, t->first) == 0);
        if (t->scope < 0) {
            ok = ok && !r.has_ecs;
        } else {
            ok = ok && r.has_ecs && r.ecs_scope == t->scope && r.ecs_family == fam &&
                 r.ecs_src == src && r.ecs_alen == (src + 7u) / 8u &&
                 memcmp(r.ecs_addr, addr, r.ecs_alen) == 0;
        }
        tap_ok(ok, "ECS %s %s client %s: %s", t->name, t->ecs ? t->ecs : "-",
               t->client ? t->client : "-", t->what);
        if (!ok) {
            tap_diag("  got rcode %u first %s ecs %d scope %u (family %u src %u alen %zu)", r.rcode,
                     r.first, r.has_ecs, r.ecs_scope, r.ecs_family, r.ecs_src, r.ecs_alen);
        }
    }
    /* TXT at a locality name comes from the zone: it does not depend on the client. */
    pkt_t q;
    q_start(&q, "loc.example.com", RR_TXT, true);
    uint8_t a[4] = {10, 1, 2, 0};
    q_ecs(&q, 1, 24, 0, a, 3);
    resp_info_t r = ask(s, &q, NULL);
    tap_ok(r.ok && r.ancount == 1 && r.has_ecs && r.ecs_scope == 0,
           "TXT at a locality name: zone data, scope 0 (scope %u)", r.ecs_scope);
}

typedef struct {
    uint16_t family;
    uint8_t src, scope;
    uint8_t addr[20];
    size_t alen;
    const char *what;
} bad_ecs_t;

static const bad_ecs_t bad_ecs[] = {
    {0, 24, 0, {10, 1, 2}, 3, "family 0"},
    {3, 24, 0, {10, 1, 2}, 3, "family 3"},
    {1, 33, 0, {10, 1, 2, 3, 0}, 5, "v4 source 33"},
    {1, 33, 0, {10, 1, 2, 3}, 4, "v4 source 33, 4 address bytes"},
    {2, 129, 0, {0x20, 1, 0x0d, 0xb8}, 17, "v6 source 129"},
    {1, 24, 8, {10, 1, 2}, 3, "scope non-zero in a query"},
    {1, 24, 24, {10, 1, 2}, 3, "scope = source in a query"},
    {1, 24, 0, {10, 1, 2, 0}, 4, "v4 /24 with 4 address bytes (too long)"},
    {1, 24, 0, {10, 1}, 2, "v4 /24 with 2 address bytes (too short)"},
    {1, 0, 0, {0}, 1, "source 0 with an address byte"},
    {2, 48, 0, {0x20, 1, 0x0d, 0xb8, 0, 1, 0}, 7, "v6 /48 with 7 bytes"},
    {1, 23, 0, {10, 1, 3}, 3, "v4 /23 with bit 24 set (beyond the prefix)"},
    {1, 20, 0, {10, 1, 0x18}, 3, "v4 /20 with bits 21..24 set"},
    {1, 1, 0, {0xC0}, 1, "v4 /1 with bit 2 set"},
    {2, 63, 0, {0x20, 1, 0x0d, 0xb8, 0, 1, 0, 3}, 8, "v6 /63 with bit 64 set"},
};

static void test_bad_ecs(const snap_t *s)
{
    for (size_t i = 0; i < MS_ARRAY_LEN(bad_ecs); i++) {
        const bad_ecs_t *t = &bad_ecs[i];
        pkt_t q;
        q_start(&q, "loc.example.com", RR_A, true);
        q_ecs(&q, t->family, t->src, t->scope, t->addr, t->alen);
        resp_info_t r = ask(s, &q, NULL);
        tap_ok(r.ok && r.rcode == RCODE_FORMERR && r.ancount == 0, "bad ECS %s: FORMERR (rcode %u)",
               t->what, r.rcode);
    }
    /* A second ECS option; an ECS option shorter than its fixed part. */
    pkt_t q;
    uint8_t a[3] = {10, 1, 2};
    q_start(&q, "loc.example.com", RR_A, true);
    q_ecs(&q, 1, 24, 0, a, 3);
    q_ecs(&q, 1, 24, 0, a, 3);
    resp_info_t r = ask(s, &q, NULL);
    TAP_EQ_INT(r.rcode, RCODE_FORMERR, "two ECS options: FORMERR");
    q_start(&q, "loc.example.com", RR_A, true);
    uint8_t shortopt[3] = {0, 1, 24};
    q_opt(&q, 8, shortopt, 3);
    r = ask(s, &q, NULL);
    TAP_EQ_INT(r.rcode, RCODE_FORMERR, "ECS option of 3 bytes: FORMERR");
    /*ell-formed edge cases are accepted. */
    uint8_t full4[4] = {10, 1, 2, 200};
    q_start(&q, "loc.example.com", RR_A, true);
    q_ecs(&q, 1, 32, 0, full4, 4);
    r = ask(s, &q, NULL);
    tap_ok(r.rcode == 0 && strcmp(r.first, "192.0.2.3") == 0 && r.ecs_scope == 25,
           "ECS v4 /32: asia, scope 25 (first %s scope %u)", r.first, r.ecs_scope);
    uint8_t a6[16];
    parse_ip("2001:db8:1:2::1", a6);
    q_start(&q, "loc.example.com", RR_A, true);
    q_ecs(&q, 2, 128, 0, a6, 16);
    r = ask(s, &q, NULL);
    tap_ok(r.rcode == 0 && strcmp(r.first, "192.0.2.2") == 0 && r.ecs_scope == 64,
           "ECS v6 /128: america, scope 64 (first %s scope %u)", r.first, r.ecs_scope);
    uint8_t unk[2] = {1, 2};
    q_start(&q, "loc.example.com", RR_A, true);
    q_opt(&q, 65001, unk, 2);
    q_ecs(&q, 1, 24, 0, a, 3);
    r = ask(s, &q, NULL);
    tap_ok(r.rcode == 0 && strcmp(r.first, "192.0.2.2") == 0 && r.ecs_scope == 25,
           "ECS after an unknown option: used (first %s scope %u)", r.first, r.ecs_scope);
}

/* The weighted draw through dns_answer: first-site shares within 5 standard deviations. */
static void test_draw(const snap_t *s)
{
    struct {
        const char *name;
        double share[3]; /* of a, b, c */
    } cases[] = {
        {"w31.example.com", {0.75, 0.25, 0}},
        {"w211.example.com", {0.5, 0.25, 0.25}},
        {"w011.example.com", {0, 0.5, 0.5}},
    };
    const unsigned n = 6400;
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        unsigned cnt[NSITES] = {0};
        pkt_t q;
        q_start(&q, cases[i].name, RR_A, false);
        for (unsigned k = 0; k < n; k++) {
            resp_info_t r = ask(s, &q, NULL);
            unsigned last = (unsigned)atoi(strrchr(r.first, '.') + 1);
            if (last >= 1 && last <= NSITES) {
                cnt[last - 1]++;
            }
        }
        bool ok = true;
        char got[128];
        dist_str(cnt, got, sizeof(got));
        for (size_t sidx = 0; sidx < 3; sidx++) {
            double p = cases[i].share[sidx], mean = n * p, sd = sqrt(n * p * (1 - p));
            if (fabs(cnt[sidx] - mean) > 5 * sd + (p == 0 ? 0 : 1)) {
                ok = false;
            }
        }
        tap_ok(ok, "draw %s over %u queries: %s", cases[i].name, n, got);
    }
}

int main(void)
{
    log_init("test_policy", false, LOG_LVL_ERR);
    if (!mkdtemp(dir)) {
        return 1;
    }
    free(write_file("example.com.zone", zone_text));
    char *path = write_file("ms.yaml", conf_text);
    conf_t *c = NULL;
    conf_err_t ce;
    int rc = conf_load(path, &c, &ce);
    free(path);
    tap_ok(rc == 0, "test config loads (%s)", rc ? ce.msg : "");
    if (rc != 0) {
        return tap_done();
    }
    snap_t *s = NULL;
    char err[512] = "";
    rc = snap_build(c, &s, err, sizeof(err));
    tap_ok(rc == 0, "test snapshot builds (%s)", err);
    if (rc != 0) {
        return tap_done();
    }
    test_order(s->conf);
    test_classify(s->classifier);
    test_classify_other();
    test_weighted(s);
    test_ttl(s);
    test_ecs(s);
    test_bad_ecs(s);
    test_draw(s);
    snap_free(s);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) {
        tap_diag("could not remove %s", dir);
    }
    return tap_done();
}
