/* test_zone.c: unit tests of the zone module: loading master files (errors with their line,
 * out-of-zone data, duplicates, empty non-terminals, flags), node and RRset access, the zone
 * set, and the wire-name helpers. */
#include "tap.h"
#include "zone/zone.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SOA_NS "@ SOA ns1 hostmaster 1 7200 3600 1209600 300\n@ NS ns1\nns1 A 192.0.2.53\n"

static zone_t *load(const char *origin, const char *text, char *err, size_t errlen)
{
    zone_t *z = NULL;
    err[0] = 0;
    if (zone_load_string(origin, text, strlen(text), &z, err, errlen) != 0) {
        return NULL;
    }
    return z;
}

static const zone_node_t *find(const zone_t *z, const char *name)
{
    uint8_t w[DNS_MAX_NAME];
    size_t l = dname_from_str(name, w, sizeof(w));
    return l ? zone_lookup(z, w, l) : NULL;
}

/* ---- name helpers ---- */

static void test_dname(void)
{
    static const uint8_t www[] = "\3www\7example\3com";
    uint8_t w[DNS_MAX_NAME + 10];
    size_t l = dname_from_str("WWW.Example.com", w, sizeof(w));
    tap_ok(l == sizeof(www) && memcmp(w, www, l) == 0, "dname_from_str lower-cases, adds root");
    l = dname_from_str("www.example.com.", w, sizeof(w));
    tap_ok(l == sizeof(www) && memcmp(w, www, l) == 0, "dname_from_str with trailing dot");
    TAP_EQ_INT(dname_from_str(".", w, sizeof(w)), 1, "dname_from_str root");
    TAP_EQ_INT(w[0], 0, "root is one zero byte");
    TAP_EQ_INT(dname_from_str("a..b", w, sizeof(w)), 0, "empty label refused");
    TAP_EQ_INT(dname_from_str(".a", w, sizeof(w)), 0, "leading dot refused");
    char l63[80], l64[80];
    memset(l63, 'x', 63);
    strcpy(l63 + 63, ".com");
    memset(l64, 'x', 64);
    strcpy(l64 + 64, ".com");
    TAP_EQ_INT(dname_from_str(l63, w, sizeof(w)), 1 + 63 + 4 + 1, "63-byte label accepted");
    TAP_EQ_INT(dname_from_str(l64, w, sizeof(w)), 0, "64-byte label refused");
    /* 127 one-letter labels: 254 bytes + root = 255, the maximum; one more is too long. */
    char longest[300] = "";
    for (int i = 0; i < 127; i++) {
        strcat(longest, "a.");
    }
    TAP_EQ_INT(dname_from_str(longest, w, sizeof(w)), 255, "255-byte name accepted");
    strcat(longest, "b");
    TAP_EQ_INT(dname_from_str(longest, w, sizeof(w)), 0, "256-byte name refused");
    TAP_EQ_INT(dname_from_str("www.example.com", w, 10), 0, "output capacity respected");

    /* dname_wire_len */
    static const struct {
        const char *what;
        const uint8_t *p;
        size_t n;
        size_t want;
    } wl[] = {
        {"plain name", www, sizeof(www), sizeof(www)},
        {"root", (const uint8_t *)"\0", 1, 1},
        {"trailing bytes ignored", (const uint8_t *)"\1a\0\xff\xff", 5, 3},
        {"truncated", www, sizeof(www) - 1, 0},
        {"label runs past end", (const uint8_t *)"\5ab", 3, 0},
        {"compression pointer", (const uint8_t *)"\3www\xc0\x0c", 6, 0},
        {"reserved label type 0x40", (const uint8_t *)"\x41x\0", 3, 0},
        {"empty input", www, 0, 0},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(wl); i++) {
        TAP_EQ_INT(dname_wire_len(wl[i].p, wl[i].p + wl[i].n), wl[i].want, "dname_wire_len: %s",
                   wl[i].what);
    }
    uint8_t big[300];
    size_t o = 0;
    for (int i = 0; i < 4; i++) {
        big[o++] = 63;
        memset(big + o, 'a', 63);
        o += 63;
    }
    big[o++] = 0; /* 4 * 64 + 1 = 257 bytes */
    TAP_EQ_INT(dname_wire_len(big, big + o), 0, "dname_wire_len: over 255 bytes refused");

    uint8_t low[sizeof(www)];
    dname_lower(low, (const uint8_t *)"\3WwW\7EXAMPLE\3cOm", sizeof(www));
    tap_ok(memcmp(low, www, sizeof(www)) == 0, "dname_lower");
    uint8_t odd[] = {2, 'A', 0xC1, 0};
    dname_lower(odd, odd, sizeof(odd));
    tap_ok(odd[1] == 'a' && odd[2] == 0xC1, "dname_lower: ASCII only, in place");

    char buf[DNS_MAX_NAME * 4 + 1];
    tap_ok(strcmp(dname_str(www, buf, sizeof(buf)), "www.example.com.") == 0, "dname_str");
    tap_ok(strcmp(dname_str((const uint8_t *)"", buf, sizeof(buf)), ".") == 0, "dname_str root");
    static const uint8_t esc[] = "\3a.b\2\\\x01\3com";
    tap_ok(strcmp(dname_str(esc, buf, sizeof(buf)), "a\\.b.\\\\\\001.com.") == 0,
           "dname_str escapes dot, backslash, binary: %s", buf);
    char tiny[8];
    dname_str(www, tiny, sizeof(tiny));
    tap_ok(strlen(tiny) < sizeof(tiny) && strncmp(tiny, "www", 3) == 0,
           "dname_str truncates within the buffer: %s", tiny);
    uint8_t w1[DNS_MAX_NAME], w2[DNS_MAX_NAME];
    size_t l1 = dname_from_str("a.example.com", w1, sizeof(w1));
    size_t l2 = dname_from_str("A.EXAMPLE.COM.", w2, sizeof(w2));
    tap_ok(l1 == l2 && zone_name_hash(w1, l1) == zone_name_hash(w2, l2),
           "zone_name_hash equal for names equal but for case");
}

/* ---- loading: errors ---- */

static void test_errors(void)
{
    static const struct {
        const char *what;
        const char *text;
        const char *msg; /* expected prefix of the error */
    } cases[] = {
        {"no SOA", "@ NS ns1\nns1 A 192.0.2.1\n",
         "(string): no SOA record at the zone apex example.com"},
        {"SOA below the apex only", "x SOA ns1 hm 1 2 3 4 5\n@ NS ns1\n",
         "(string): no SOA record at the zone apex example.com"},
        {"two SOA", SOA_NS "@ SOA ns1 hostmaster 2 7200 3600 1209600 300\n",
         "(string): more than one SOA record at the zone apex"},
        {"no apex NS", "@ SOA ns1 hm 1 2 3 4 5\nns1 A 192.0.2.1\nsub NS ns1\n",
         "(string): no NS records at the zone apex example.com"},
        {"CNAME and other data", SOA_NS "www A 192.0.2.1\nwww CNAME web\n",
         "(string):4: www.example.com. has a CNAME and other data"},
        {"CNAME and other data, other order", SOA_NS "www CNAME web\nwww TXT \"x\"\n",
         "(string):4: www.example.com. has a CNAME and other data"},
        {"two CNAMEs", SOA_NS "www CNAME a\nx A 192.0.2.9\nwww CNAME b\n",
         "(string):6: www.example.com. has more than one CNAME"},
        {"CNAME at the apex", SOA_NS "@ CNAME x\n",
         "(string):2: example.com. has a CNAME and other data"},
        /* libzscanner itself knows only class IN ("unsupported record type"); the loader
         * has its own check too. Either way the zone is refused with the line. */
        {"class CH record", SOA_NS "x CH TXT \"a\"\n", "(string):4: "},
        {"class HS record", SOA_NS "\n\nx HS A 1.2.3.4\n", "(string):6: "},
        {"syntax error: bad address", SOA_NS "\nx A 192.0.2.300\n", "(string):5: "},
        {"syntax error: unknown type", SOA_NS "x BOGUS 1\n", "(string):4: "},
        {"syntax error: unterminated parenthesis", "@ SOA ns1 hm ( 1 2 3 4 5\n@ NS ns1\n",
         "(string):"},
        {"OPT in a zone", SOA_NS "x TYPE41 \\# 0\n", "(string):4: record type 41 not allowed"},
        {"empty zone", "", "(string): no SOA record at the zone apex example.com"},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        char err[512];
        zone_t *z = NULL;
        int rc = zone_load_string("example.com", cases[i].text, strlen(cases[i].text), &z, err,
                                  sizeof(err));
        bool ok = rc == MS_EPARSE && z == NULL &&
                  strncmp(err, cases[i].msg, strlen(cases[i].msg)) == 0 &&
                  strlen(err) > strlen("(string):1: ");
        tap_ok(ok, "zone error: %s", cases[i].what);
        if (!ok) {
            tap_diag("  rc %d, err \"%s\", expected prefix \"%s\"", rc, err, cases[i].msg);
        }
        zone_free(z);
    }

    char err[512];
    zone_t *z = NULL;
    int rc = zone_load_string("exa..mple", SOA_NS, strlen(SOA_NS), &z, err, sizeof(err));
    tap_ok(rc != 0 && z == NULL && strstr(err, "invalid zone origin 'exa..mple'"), "bad origin: %s",
           err);
    rc = zone_load("example.com", "/nonexistent/zone/file", &z, err, sizeof(err));
    tap_ok(rc == MS_EIO && z == NULL &&
               strncmp(err, "/nonexistent/zone/file: cannot read", 35) == 0,
           "missing file: %s", err);
}

/* ---- loading: data ---- */

static void test_load_file(void)
{
    char path[] = "/tmp/test_zone_XXXXXX";
    int fd = mkstemp(path);
    const char text[] = SOA_NS "www A 192.0.2.80\n\nbad A 300.1.1.1\n";
    if (fd < 0 || write(fd, text, sizeof(text) - 1) != (ssize_t)(sizeof(text) - 1)) {
        tap_ok(false, "temp zone file");
        return;
    }
    close(fd);
    char err[512];
    zone_t *z = NULL;
    int rc = zone_load("example.com.", path, &z, err, sizeof(err));
    char *want = xasprintf("%s:6: ", path);
    tap_ok(rc == MS_EPARSE && strncmp(err, want, strlen(want)) == 0,
           "zone_load reports FILE:LINE of a syntax error: %s", err);
    free(want);
    unlink(path);
}

static void test_load(void)
{
    const char text[] = "$ORIGIN example.com.\n"
                        "$TTL 3600\n" SOA_NS "WWW 300 A 192.0.2.80\n"
                        "www 600 A 192.0.2.81\n"
                        "www A 192.0.2.80\n" /* duplicate of the first: dropped */
                        "www AAAA 2001:db8::80\n"
                        "www TXT \"hello\"\n"
                        "mail MX 10 mail\n"
                        "a.b.c TXT \"deep\"\n" /* b.c and c are empty non-terminals */
                        "sub NS ns.sub\n"      /* a delegation */
                        "sub NS ns.example.net.\n"
                        "ns.sub A 192.0.2.200\n" /* glue */
                        "x.y.sub A 192.0.2.201\n"
                        "sub2 NS ns.example.net.\n"
                        "in.sub2 NS ns.example.net.\n" /* a cut below a cut */
                        "*.wild A 192.0.2.99\n"
                        "alias CNAME www\n"
                        "unk TYPE65400 \\# 4 deadbeef\n"
                        "www.example.org. A 192.0.2.1\n" /* out of zone: ignored */
                        "notexample.com. A 192.0.2.2\n"  /* suffix, not a subdomain */
                        "com. A 192.0.2.3\n";
    char err[512];
    zone_t *z = load("example.com", text, err, sizeof(err));
    tap_ok(z != NULL, "example zone loads (%s)", err);
    if (!z) {
        return;
    }
    uint8_t apex[DNS_MAX_NAME];
    size_t al = dname_from_str("example.com", apex, sizeof(apex));
    tap_ok(zone_apex_len(z) == al && memcmp(zone_apex(z), apex, al) == 0, "zone_apex");
    const zone_node_t *an = zone_apex_node(z);
    tap_ok(an && an == find(z, "example.com"), "apex node");
    tap_ok(an && (an->flags & ZN_APEX) && !(an->flags & ZN_DELEG), "apex: ZN_APEX, not ZN_DELEG");

    /* Records: SOA NS A(ns1) + www 2xA AAAA TXT + MX + TXT + 2 NS + A + A + NS + NS + A +
     * CNAME + unk = 18; the duplicate and the three out-of-zone records are not counted. */
    TAP_EQ_INT(zone_rr_count(z), 18, "record count: duplicate and out-of-zone RRs dropped");
    /* Names: apex ns1 www mail a.b.c b.c c sub ns.sub x.y.sub y.sub sub2 in.sub2 *.wild wild
     * alias unk = 17. */
    TAP_EQ_INT(zone_node_count(z), 17, "node count includes empty non-terminals");
    tap_ok(zone_mem_bytes(z) > 0, "zone_mem_bytes");

    tap_ok(find(z, "www.example.org") == NULL && find(z, "notexample.com") == NULL &&
               find(z, "com") == NULL,
           "out-of-zone names not stored");

    const zone_node_t *www = find(z, "www.example.com");
    tap_ok(www != NULL, "owner written upper-case found by lower-case name");
    if (www) {
        TAP_EQ_INT(www->n_rrsets, 3, "www has 3 RRsets");
        zone_rrset_t rs;
        tap_ok(zone_node_find(www, RR_A, &rs), "www A found");
        TAP_EQ_INT(zone_rrset_count(rs), 2, "www A: duplicate RR deduplicated");
        TAP_EQ_INT(zone_rrset_ttl(rs), 300, "www A: first record's TTL wins");
        const uint8_t *rr = zone_rrset_first(rs);
        static const uint8_t a80[] = {192, 0, 2, 80}, a81[] = {192, 0, 2, 81};
        tap_ok(rd_u16(rr) == 4 && memcmp(rr + 2, a80, 4) == 0, "first A rdata 192.0.2.80");
        rr = zone_rr_next(rr);
        tap_ok(rd_u16(rr) == 4 && memcmp(rr + 2, a81, 4) == 0, "second A rdata 192.0.2.81");
        tap_ok(!zone_node_find(www, RR_MX, &rs), "www has no MX");
        uint16_t prev = 0;
        bool asc = true;
        for (unsigned i = 0; i < www->n_rrsets; i++) {
            uint16_t t = zone_rrset_type(zone_node_rrset(www, i));
            asc = asc && t > prev;
            prev = t;
        }
        tap_ok(asc && zone_rrset_type(zone_node_rrset(www, 2)) == RR_AAAA,
               "RRsets in ascending type order (A TXT AAAA)");
        TAP_EQ_INT(zone_rrset_ttl(zone_node_rrset(www, 2)), 3600, "$TTL applies");
        tap_ok(!(www->flags & (ZN_DELEG | ZN_BELOW_CUT | ZN_WILD_CHILD | ZN_CNAME | ZN_APEX)),
               "plain name has no flags");
    }

    const zone_node_t *mail = find(z, "mail.example.com");
    zone_rrset_t mx;
    if (mail && zone_node_find(mail, RR_MX, &mx)) {
        const uint8_t *rr = zone_rrset_first(mx);
        static const uint8_t want[] = "\0\x0a\4mail\7example\3com";
        tap_ok(rd_u16(rr) == sizeof(want) && memcmp(rr + 2, want, sizeof(want)) == 0,
               "MX rdata in wire form, relative name completed");
    } else {
        tap_ok(false, "mail MX found");
    }

    const zone_node_t *unk = find(z, "unk.example.com");
    zone_rrset_t u;
    tap_ok(unk && zone_node_find(unk, 65400, &u) && zone_rrset_count(u) == 1 &&
               rd_u16(zone_rrset_first(u)) == 4 &&
               memcmp(zone_rrset_first(u) + 2, "\xde\xad\xbe\xef", 4) == 0,
           "RFC 3597 unknown type stored as given");

    /* Empty non-terminals. */
    const zone_node_t *bc = find(z, "b.c.example.com"), *c = find(z, "c.example.com");
    tap_ok(bc && bc->n_rrsets == 0 && c && c->n_rrsets == 0,
           "empty non-terminals b.c and c exist with 0 RRsets");
    tap_ok(find(z, "a.b.c.example.com") && find(z, "a.b.c.example.com")->n_rrsets == 1,
           "the terminal a.b.c has its RRset");
    tap_ok(find(z, "x.c.example.com") == NULL, "no node for a missing name");

    /* Delegations and glue. */
    const zone_node_t *sub = find(z, "sub.example.com");
    tap_ok(sub && (sub->flags & ZN_DELEG) && !(sub->flags & ZN_BELOW_CUT),
           "sub: ZN_DELEG, not below a cut");
    const zone_node_t *g = find(z, "ns.sub.example.com");
    tap_ok(g && (g->flags & ZN_BELOW_CUT) && !(g->flags & ZN_DELEG), "ns.sub glue: ZN_BELOW_CUT");
    const zone_node_t *ent = find(z, "y.sub.example.com"), *deep = find(z, "x.y.sub.example.com");
    tap_ok(ent && (ent->flags & ZN_BELOW_CUT) && deep && (deep->flags & ZN_BELOW_CUT),
           "names (and ENTs) deeper below the cut: ZN_BELOW_CUT");
    const zone_node_t *in2 = find(z, "in.sub2.example.com");
    tap_ok(in2 && (in2->flags & ZN_DELEG) && (in2->flags & ZN_BELOW_CUT),
           "cut below a cut: ZN_DELEG and ZN_BELOW_CUT");
    const zone_node_t *ns1 = find(z, "ns1.example.com");
    tap_ok(ns1 && !(ns1->flags & ZN_BELOW_CUT), "in-zone name server not below a cut");

    /* Wildcards. */
    const zone_node_t *wild = find(z, "wild.example.com"), *star = find(z, "*.wild.example.com");
    tap_ok(wild && (wild->flags & ZN_WILD_CHILD) && wild->n_rrsets == 0,
           "wild (an ENT): ZN_WILD_CHILD");
    tap_ok(star && star->n_rrsets == 1 && !(star->flags & ZN_WILD_CHILD), "*.wild holds the data");
    tap_ok(an && !(an->flags & ZN_WILD_CHILD), "apex has no wildcard child");

    const zone_node_t *alias = find(z, "alias.example.com");
    tap_ok(alias && (alias->flags & ZN_CNAME), "alias: ZN_CNAME");

    /* zone_lookup_hashed agrees with zone_lookup. */
    uint8_t w[DNS_MAX_NAME];
    size_t l = dname_from_str("ns.sub.example.com", w, sizeof(w));
    tap_ok(zone_lookup_hashed(z, w, l, zone_name_hash(w, l)) == g, "zone_lookup_hashed");
    tap_ok(zone_lookup(z, w, l - 1) == NULL, "lookup with a wrong length misses");
    zone_free(z);
    zone_free(NULL);
}

static void test_apex_wildcard_and_ttl(void)
{
    char err[512];
    const char text[] = "$TTL 100\n" SOA_NS "* TXT \"any\"\n"
                        "x 50 TXT \"a\"\n"
                        "x 70 TXT \"b\"\n"
                        "x 70 TXT \"a\"\n";
    zone_t *z = load("example.com.", text, err, sizeof(err));
    tap_ok(z != NULL, "zone with an apex wildcard loads (%s)", err);
    if (!z) {
        return;
    }
    tap_ok(zone_apex_node(z)->flags & ZN_WILD_CHILD, "apex: ZN_WILD_CHILD for *.example.com");
    const zone_node_t *x = find(z, "x.example.com");
    zone_rrset_t rs;
    tap_ok(x && zone_node_find(x, RR_TXT, &rs) && zone_rrset_count(rs) == 2 &&
               zone_rrset_ttl(rs) == 50,
           "TXT: same RDATA with another TTL is a duplicate; first TTL kept");
    zone_free(z);
}

static void test_db(void)
{
    char err[512];
    zone_t *com = load("example.com", SOA_NS, err, sizeof(err));
    zone_t *sub = load("sub.example.com", SOA_NS, err, sizeof(err));
    zone_t *dup = load("EXAMPLE.COM.", SOA_NS, err, sizeof(err));
    if (!com || !sub || !dup) {
        tap_ok(false, "zones for zone_db load");
        return;
    }
    zone_db_t *db = zone_db_new();
    TAP_EQ_INT(zone_db_add(db, com), 0, "zone_db_add example.com");
    TAP_EQ_INT(zone_db_add(db, sub), 0, "zone_db_add sub.example.com");
    TAP_EQ_INT(zone_db_add(db, dup), MS_EEXIST, "zone_db_add of the same apex: MS_EEXIST");
    zone_free(dup);
    TAP_EQ_INT(zone_db_count(db), 2, "zone_db_count");
    tap_ok(zone_db_get(db, 0) == com && zone_db_get(db, 1) == sub, "zone_db_get");

    static const struct {
        const char *name;
        int zone; /* 0 example.com, 1 sub, -1 none */
        int apex_label;
    } cases[] = {
        {"example.com", 0, 0},
        {"www.example.com", 0, 1},
        {"a.b.example.com", 0, 2},
        {"sub.example.com", 1, 0},
        {"x.sub.example.com", 1, 1},
        {"xsub.example.com", 0, 1},
        {"example.org", -1, 0},
        {"com", -1, 0},
        {".", -1, 0},
        {"example.com.example.org", -1, 0},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        uint8_t w[DNS_MAX_NAME], labels[DNS_MAX_LABELS];
        size_t l = dname_from_str(cases[i].name, w, sizeof(w));
        int n = 0;
        for (size_t o = 0;; o += (size_t)w[o] + 1) {
            labels[n++] = (uint8_t)o;
            if (w[o] == 0) {
                break;
            }
        }
        (void)l;
        int apex_label = -1;
        const zone_t *z = zone_db_find(db, w, labels, n, &apex_label);
        const zone_t *want = cases[i].zone < 0 ? NULL : zone_db_get(db, (size_t)cases[i].zone);
        tap_ok(z == want && (!z || apex_label == cases[i].apex_label),
               "zone_db_find(%s) -> zone %d, apex label %d", cases[i].name, cases[i].zone,
               cases[i].apex_label);
    }
    zone_db_free(db);
    zone_db_free(NULL);
}

/* Counts that do not fit the node format must be refused, not wrapped: an RRset has a 16-bit
 * record count and a node an 8-bit RRset count. */
static void test_limits(void)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "%s", SOA_NS);
    /* 65536 distinct TXT RRs of 64 different lengths (so the loader's duplicate check,
     * which compares lengths first, stays cheap), then a type after TXT at the same name. */
    for (int i = 0; i < 65536; i++) {
        buf_printf(&b, "many TXT \"%04x%.*s\"\n", i, i % 64,
                   "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    }
    buf_printf(&b, "many AAAA 2001:db8::1\n");
    char err[512] = "";
    zone_t *z = NULL;
    int rc = zone_load_string("example.com", (char *)b.data, b.len, &z, err, sizeof(err));
    if (rc == 0) {
        /* Only the first RRset is safe to look at: the walk past it is what goes wrong. */
        const zone_node_t *n = find(z, "many.example.com");
        tap_diag("  loaded: TXT count %u (of 65536)",
                 n ? zone_rrset_count(zone_node_rrset(n, 0)) : 0);
    }
    tap_ok(rc == MS_EPARSE && z == NULL && strncmp(err, "(string):", 9) == 0,
           "RRset of 65536 records refused: %s", err);
    zone_free(z);
    z = NULL;

    buf_reset(&b);
    buf_printf(&b, "%s", SOA_NS);
    for (int i = 0; i < 256; i++) {
        buf_printf(&b, "types TYPE%d \\# 0\n", 1000 + i);
    }
    rc = zone_load_string("example.com", (char *)b.data, b.len, &z, err, sizeof(err));
    tap_ok(rc == MS_EPARSE && strstr(err, "types.example.com. has more than 255 record types"),
           "node with 256 RR types refused: %s", err);
    zone_free(z);
    buf_deinit(&b);
}

int main(void)
{
    log_init("test_zone", false, LOG_LVL_ERR);
    test_dname();
    test_errors();
    test_load_file();
    test_load();
    test_apex_wildcard_and_ttl();
    test_db();
    test_limits();
    return tap_done();
}
