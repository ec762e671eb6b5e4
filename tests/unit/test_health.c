/* test_health.c: unit tests of the health module's pure parts: the verdict tracker on a fake
 * clock (rise/fall, flapping, re-probe on refusal), the site verdict combiner (k of n, db
 * and load balancer combinations, reason strings), the streaming keyword scanner (keywords
 * split across chunks, overlapping prefixes, huge bodies) and the HAProxy CSV parser (a
 * table of malformed outputs). The probes against real sockets are in test_health_live.c. */
#include "tap.h"
#include "health/internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- verdict tracker ---- */

/* Feed a script of results: 'o' ok, 'f' failure, 'r' refused. Returns the states after each
 * as a string of U/D/? and the re-probe hints as a string of '!' / '.'. */
static void run_script(hv_t *v, const char *script, char *states, char *reprobes)
{
    uint64_t now = 1000;
    size_t i = 0;
    for (; script[i]; i++, now += 1000) {
        bool rp = false;
        char c = script[i];
        hv_record(v, c == 'o', c == 'r', c == 'r' ? "connection refused" : "timeout", now, &rp);
        states[i] = v->state == HEALTH_UP ? 'U' : v->state == HEALTH_DOWN ? 'D' : '?';
        reprobes[i] = rp ? '!' : '.';
    }
    states[i] = reprobes[i] = '\0';
}

static void test_tracker(void)
{
    static const struct {
        const char *what;
        unsigned rise, fall;
        const char *script, *states, *reprobes;
    } cases[] = {
        {"first ok sets UP", 2, 2, "o", "U", "."},
        {"first failure sets DOWN", 2, 2, "f", "D", "."},
        {"first refusal sets DOWN, no re-probe", 2, 2, "r", "D", "."},
        {"fall 2", 2, 2, "offoo", "UUDDU", "....."},
        {"fall 3 needs three in a row", 2, 3, "offoffff", "UUUUUUDD", "........"},
        {"rise 3", 3, 1, "foofooo", "DDDDDDU", "......."},
        {"flapping never changes state (rise=fall=2)", 2, 2, "ofofofofo", "UUUUUUUUU", "........."},
        {"flapping from DOWN stays DOWN", 2, 2, "fofofofof", "DDDDDDDDD", "........."},
        {"refusal while UP asks for a re-probe", 2, 2, "orr", "UUD", ".!."},
        {"refusal while DOWN does not", 2, 2, "orrrr", "UUDDD", ".!..."},
        {"fall 3 re-probes twice", 2, 3, "orrro", "UUUDD", ".!!.."},
        {"refusal in a rise window", 2, 2, "forr", "DDDD", "...."},
        {"fall 1 refusal goes DOWN at once", 1, 1, "or", "UD", ".."},
        {"rise 1", 1, 2, "ffo", "DDU", "..."},
        {"timeout (not refused) waits for the interval", 2, 2, "off", "UUD", "..."},
        {"mixed timeout and refusal", 2, 2, "ofr", "UUD", "..."},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        hv_t v;
        hv_init(&v, cases[i].rise, cases[i].fall);
        char st[32], rp[32];
        run_script(&v, cases[i].script, st, rp);
        bool ok = strcmp(st, cases[i].states) == 0 && strcmp(rp, cases[i].reprobes) == 0;
        tap_ok(ok, "tracker: %s", cases[i].what);
        if (!ok) {
            tap_diag("  script %s: states %s reprobes %s, expected %s %s", cases[i].script, st, rp,
                     cases[i].states, cases[i].reprobes);
        }
    }

    /* changing, reason, clock */
    hv_t v;
    hv_init(&v, 2, 2);
    tap_ok(!hv_changing(&v), "tracker: UNKNOWN is not changing");
    tap_ok(hv_record(&v, true, false, NULL, 5000, NULL), "tracker: UNKNOWN->UP is a change");
    TAP_EQ_INT(v.changed_ms, 5000, "tracker: change time recorded");
    tap_ok(!hv_record(&v, false, false, "HTTP status 503, expected 200", 6000, NULL),
           "tracker: one failure is not a change");
    tap_ok(hv_changing(&v), "tracker: inside the fall window: changing");
    tap_ok(strcmp(v.reason, "HTTP status 503, expected 200") == 0, "tracker: reason kept");
    tap_ok(!hv_record(&v, true, false, NULL, 7000, NULL), "tracker: recovery inside window");
    tap_ok(!hv_changing(&v), "tracker: window closed after a success");
    TAP_EQ_INT(v.changed_ms, 5000, "tracker: change time unchanged");
    hv_record(&v, false, false, "x", 8000, NULL);
    tap_ok(hv_record(&v, false, false, "y", 9000, NULL), "tracker: second failure: DOWN");
    TAP_EQ_INT(v.changed_ms, 9000, "tracker: DOWN at 9000");
    tap_ok(strcmp(v.reason, "y") == 0, "tracker: latest reason");
    /* hv_set: authoritative */
    tap_ok(hv_set(&v, true, NULL, 10000), "hv_set: DOWN->UP at once");
    tap_ok(!hv_set(&v, true, NULL, 11000), "hv_set: UP->UP no change");
    tap_ok(hv_set(&v, false, "0/2 web servers UP", 12000), "hv_set: UP->DOWN at once");
    tap_ok(!hv_changing(&v), "hv_set: never inside a window");
    /* zero thresholds are treated as 1 */
    hv_init(&v, 0, 0);
    hv_record(&v, true, false, NULL, 1, NULL);
    tap_ok(hv_record(&v, false, false, "x", 2, NULL), "tracker: fall 0 acts as 1");
}

/* ---- site combiner ---- */

typedef struct {
    hv_t web[4];
    hv_web_t win[4];
    hv_t db, lb;
    hv_site_in_t in;
} site_fx_t;

/* web: one char per server: U up, D down (refused), T down (timeout), ? unknown,
 * u up but failing 1/2, d down but recovering 1/2. db/lb: same letters or 0 for none. */
static void set_target(hv_t *v, char c, const char *down_reason)
{
    hv_init(v, 2, 2);
    switch (c) {
    case 'U': hv_record(v, true, false, NULL, 1, NULL); break;
    case 'D': hv_record(v, false, true, down_reason, 1, NULL); break;
    case 'T': hv_record(v, false, false, "no response within 500 ms", 1, NULL); break;
    case 'u':
        hv_record(v, true, false, NULL, 1, NULL);
        hv_record(v, false, false, down_reason, 2, NULL);
        break;
    case 'd':
        hv_record(v, false, true, down_reason, 1, NULL);
        hv_record(v, true, false, NULL, 2, NULL);
        break;
    default: break;
    }
}

static void site_fx(site_fx_t *f, const char *web, unsigned k, char db, char lb)
{
    static const char *names[] = {"web1", "web2", "web3", "web4"};
    memset(f, 0, sizeof(*f));
    size_t n = strlen(web);
    for (size_t i = 0; i < n; i++) {
        set_target(&f->web[i], web[i], "connection refused");
        f->win[i].name = names[i];
        f->win[i].v = &f->web[i];
        f->win[i].drained = false;
    }
    f->in.min_web = k;
    f->in.n_web = n;
    f->in.web = f->win;
    if (db) {
        set_target(&f->db, db, "lacks \"db-eu-1\"");
        f->in.db = &f->db;
    }
    if (lb) {
        set_target(&f->lb, lb, "0/2 web servers UP (web1 DOWN L4CON, web2 DOWN L4CON)");
        f->in.lb = &f->lb;
        f->in.lb_report = lb == 'U' || lb == 'D';
        f->in.lb_web_up = lb == 'U' ? 2 : 0;
        f->in.lb_web_total = 2;
        f->in.load = 0.25;
    }
}

static void test_site(void)
{
    static const struct {
        const char *web;
        unsigned k;
        char db, lb;
        health_state_t state;
        bool changing;
        const char *reason;
    } cases[] = {
        {"UU", 1, 0, 0, HEALTH_UP, false, "2/2 web servers answer"},
        {"UD", 1, 0, 0, HEALTH_UP, false, "1/2 web servers answer (web2: connection refused)"},
        {"UD", 2, 0, 0, HEALTH_DOWN, false, "1/2 web servers answer (web2: connection refused)"},
        {"DD", 1, 'D', 0, HEALTH_DOWN, false,
         "0/2 web servers answer (web1: connection refused; web2: connection refused); "
         "db page lacks \"db-eu-1\""},
        {"UU", 1, 'D', 0, HEALTH_DOWN, false, "2/2 web servers answer; db page lacks \"db-eu-1\""},
        {"UU", 1, 'U', 0, HEALTH_UP, false, "2/2 web servers answer; db page ok"},
        {"UU", 1, 'T', 0, HEALTH_DOWN, false,
         "2/2 web servers answer; db page: no response within 500 ms"},
        {"U?", 1, 0, 0, HEALTH_UP, false, "1/2 web servers answer (web2: not checked yet)"},
        {"U?", 2, 0, 0, HEALTH_UNKNOWN, false, "1/2 web servers answer (web2: not checked yet)"},
        {"D?", 2, 0, 0, HEALTH_DOWN, false,
         "0/2 web servers answer (web1: connection refused; web2: not checked yet)"},
        {"UU", 1, '?', 0, HEALTH_UNKNOWN, false,
         "2/2 web servers answer; db page: not checked yet"},
        {"?U", 1, 'D', 0, HEALTH_DOWN, false,
         "1/2 web servers answer (web1: not checked yet); db page lacks \"db-eu-1\""},
        {"uU", 2, 0, 0, HEALTH_UP, true,
         "2/2 web servers answer (web1: connection refused (failing 1/2))"},
        {"dU", 2, 0, 0, HEALTH_DOWN, true,
         "1/2 web servers answer (web1: connection refused (recovering 1/2))"},
        {"UUUD", 3, 0, 0, HEALTH_UP, false, "3/4 web servers answer (web4: connection refused)"},
        {"UUDD", 3, 0, 0, HEALTH_DOWN, false,
         "2/4 web servers answer (web3: connection refused; web4: connection refused)"},
        {"DD", 0, 0, 0, HEALTH_UP, false,
         "0/2 web servers answer (web1: connection refused; web2: connection refused)"},
        {"UU", 1, 'U', 'U', HEALTH_UP, false,
         "2/2 web servers answer; db page ok; load balancer: 2/2 web servers UP"},
        {"UU", 1, 0, 'D', HEALTH_DOWN, false,
         "2/2 web servers answer; load balancer: 0/2 web servers UP (web1 DOWN L4CON, web2 DOWN "
         "L4CON)"},
        {"", 0, 0, 'U', HEALTH_UP, false, "load balancer: 2/2 web servers UP"},
        {"", 0, 0, '?', HEALTH_UNKNOWN, false, "load balancer: not checked yet"},
        {"", 0, 'U', 'D', HEALTH_DOWN, false,
         "db page ok; load balancer: 0/2 web servers UP (web1 DOWN L4CON, web2 DOWN L4CON)"},
        {"", 0, 0, 0, HEALTH_UP, false, "nothing to check"},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        site_fx_t f;
        site_fx(&f, cases[i].web, cases[i].k, cases[i].db, cases[i].lb);
        health_site_t out;
        memset(&out, 0, sizeof(out));
        hv_site_eval(&f.in, &out);
        bool ok = out.state == cases[i].state && out.changing == cases[i].changing &&
                  strcmp(out.reason, cases[i].reason) == 0;
        tap_ok(ok, "site: web %s k=%u db %c lb %c -> %s", cases[i].web, cases[i].k,
               cases[i].db ? cases[i].db : '-', cases[i].lb ? cases[i].lb : '-',
               health_state_str(cases[i].state));
        if (!ok) {
            tap_diag("  got %s changing=%d '%s'", health_state_str(out.state), out.changing,
                     out.reason);
            tap_diag("  exp %s changing=%d '%s'", health_state_str(cases[i].state),
                     cases[i].changing, cases[i].reason);
        }
    }
    /* counts, db/lb fields, load */
    site_fx_t f;
    site_fx(&f, "UD", 1, 'D', 'U');
    health_site_t out;
    memset(&out, 0, sizeof(out));
    hv_site_eval(&f.in, &out);
    TAP_EQ_INT(out.web_up, 1, "site: web_up");
    TAP_EQ_INT(out.web_total, 2, "site: web_total");
    TAP_EQ_INT(out.db, HEALTH_DOWN, "site: db state");
    TAP_EQ_INT(out.lb, HEALTH_UP, "site: lb state");
    tap_ok(out.load > 0.24 && out.load < 0.26, "site: load from the lb report");
    site_fx(&f, "", 0, 0, 'U');
    hv_site_eval(&f.in, &out);
    TAP_EQ_INT(out.web_up, 2, "site: lb-only web_up from the lb");
    site_fx(&f, "UU", 1, 0, 0);
    hv_site_eval(&f.in, &out);
    tap_ok(out.load < 0, "site: no lb: load unknown");
    TAP_EQ_INT(out.db, HEALTH_UNKNOWN, "site: no db: UNKNOWN");

    /* an operator-drained web server counts as not up, and the reason says so */
    {
        hv_t up[2];
        hv_web_t dw[2];
        for (int i = 0; i < 2; i++) {
            hv_init(&up[i], 1, 1);
            hv_record(&up[i], true, false, NULL, 1, NULL);
            dw[i].name = i ? "w2" : "w1";
            dw[i].v = &up[i];
            dw[i].drained = i == 1;
        }
        hv_site_in_t din = {.min_web = 2, .n_web = 2, .web = dw};
        health_site_t dout;
        memset(&dout, 0, sizeof(dout));
        hv_site_eval(&din, &dout);
        tap_ok(dout.state == HEALTH_DOWN && dout.web_up == 1 && strstr(dout.reason, "w2 drained"),
               "drained web server: 1/2 up, site DOWN with k=2 (%s)", dout.reason);
    }

    /* the reason never overflows, and says it was cut */
    hv_t many[4];
    hv_web_t w[4];
    char longr[200];
    memset(longr, 'x', sizeof(longr) - 1);
    longr[sizeof(longr) - 1] = '\0';
    for (int i = 0; i < 4; i++) {
        hv_init(&many[i], 1, 1);
        hv_record(&many[i], false, false, longr, 1, NULL);
        w[i].name = "a-web-server-with-a-long-name";
        w[i].v = &many[i];
        w[i].drained = false;
    }
    hv_site_in_t in = {.min_web = 1, .n_web = 4, .web = w};
    hv_site_eval(&in, &out);
    size_t len = strlen(out.reason);
    tap_ok(len == sizeof(out.reason) - 1 && strcmp(out.reason + len - 3, "...") == 0,
           "site: long reason truncated with ... (%zu)", len);
}

/* ---- keyword scanner ---- */

/* Feed body in chunks of the given sizes (cycled); returns the final hs_scan_feed result. */
static int scan_chunks(const char *const *kw, size_t nkw, const char *body, size_t len,
                       const size_t *chunks, size_t nchunks, size_t cap, hs_scan_t *keep)
{
    hs_kw_t k;
    hs_kw_init(&k, kw, nkw);
    hs_scan_t s;
    hs_scan_init(&s, &k, cap);
    int r = HS_MORE;
    for (size_t off = 0, c = 0; off < len && r == HS_MORE; c++) {
        size_t n = chunks[c % nchunks];
        n = n > len - off ? len - off : n;
        r = hs_scan_feed(&s, body + off, n);
        off += n;
    }
    if (len == 0) {
        r = hs_scan_feed(&s, "", 0);
    }
    if (keep) {
        char miss[128];
        hs_scan_missing(&s, miss, sizeof(miss));
        tap_diag("  missing: %s", miss);
    }
    hs_scan_deinit(&s);
    hs_kw_deinit(&k);
    return r;
}

static void test_scan(void)
{
    static const size_t one[] = {1}, two[] = {2}, three[] = {3}, big[] = {4096},
                        odd[] = {1, 7, 2, 13, 5};
    static const struct {
        const char *what;
        const char *kw[3];
        size_t nkw;
        const char *body;
        int expect;
    } cases[] = {
        {"plain hit", {"db-eu-1"}, 1, "<p>server db-eu-1 ok</p>", HS_DONE},
        {"miss", {"db-eu-1"}, 1, "<p>server db-eu-2 ok</p>", HS_MORE},
        {"at start", {"abc"}, 1, "abcdef", HS_DONE},
        {"at end", {"def"}, 1, "abcdef", HS_DONE},
        {"whole body", {"abcdef"}, 1, "abcdef", HS_DONE},
        {"longer than body", {"abcdefg"}, 1, "abcdef", HS_MORE},
        {"overlapping prefix aab in aaab", {"aab"}, 1, "aaab", HS_DONE},
        {"overlapping prefix abab in abaabab", {"abab"}, 1, "abaabab", HS_DONE},
        {"self-overlap aaaa in aaa.aaaa", {"aaaa"}, 1, "aaa.aaaa", HS_DONE},
        {"near miss ababac", {"ababac"}, 1, "abababab", HS_MORE},
        {"KMP restart abcabd", {"abcabd"}, 1, "abcabcabd", HS_DONE},
        {"two keywords both", {"alpha", "omega"}, 2, "omega ... alpha", HS_DONE},
        {"two keywords one", {"alpha", "omega"}, 2, "alpha only", HS_MORE},
        {"keyword repeated", {"x", "x"}, 2, "..x..", HS_DONE},
        {"empty keyword", {""}, 1, "anything", HS_DONE},
        {"empty body", {"a"}, 1, "", HS_MORE},
        {"case-sensitive", {"DB-EU-1"}, 1, "db-eu-1", HS_MORE},
        {"no keywords", {NULL}, 0, "whatever", HS_DONE},
    };
    const size_t *chunkings[] = {one, two, three, big, odd};
    const size_t nchunkings[] = {1, 1, 1, 1, 5};
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        for (size_t c = 0; c < MS_ARRAY_LEN(chunkings); c++) {
            int r = scan_chunks(cases[i].kw, cases[i].nkw, cases[i].body, strlen(cases[i].body),
                                chunkings[c], nchunkings[c], 1 << 20, NULL);
            tap_ok(r == cases[i].expect, "scan: %s (chunking %zu)", cases[i].what, c);
        }
    }
    /* every split point of a keyword across two chunks */
    const char *kw[] = {"keyword"};
    const char *body = "...keyword...";
    bool all = true;
    for (size_t cut = 0; cut <= strlen(body); cut++) {
        size_t ch[] = {cut ? cut : 1, 1000};
        all &= scan_chunks(kw, 1, body, strlen(body), ch, 2, 1 << 20, NULL) == HS_DONE;
    }
    tap_ok(all, "scan: keyword found at every split point");

    /* huge body: keyword past the cap is not seen; before the cap it is */
    size_t n = 3u << 20;
    char *huge = xmalloc(n);
    memset(huge, 'a', n);
    memcpy(huge + (2u << 20), "needle", 6);
    const char *nk[] = {"needle"};
    int r = scan_chunks(nk, 1, huge, n, big, 1, 1u << 20, NULL);
    TAP_EQ_INT(r, HS_OVER, "scan: keyword beyond the 1 MiB cap: over");
    r = scan_chunks(nk, 1, huge, n, big, 1, 4u << 20, NULL);
    TAP_EQ_INT(r, HS_DONE, "scan: keyword within a 4 MiB cap: found");
    /* the cap lands in the middle of a keyword: not found */
    memset(huge, 'a', n);
    memcpy(huge + (1u << 20) - 3, "needle", 6);
    r = scan_chunks(nk, 1, huge, n, big, 1, 1u << 20, NULL);
    TAP_EQ_INT(r, HS_OVER, "scan: keyword straddling the cap: over");
    memcpy(huge + (1u << 20) - 6, "needle", 6);
    r = scan_chunks(nk, 1, huge, n, big, 1, 1u << 20, NULL);
    TAP_EQ_INT(r, HS_DONE, "scan: keyword ending exactly at the cap: found");
    free(huge);

    /* missing list */
    hs_kw_t k;
    const char *two_kw[] = {"alpha", "omega"};
    hs_kw_init(&k, two_kw, 2);
    hs_scan_t s;
    hs_scan_init(&s, &k, 100);
    hs_scan_feed(&s, "omega", 5);
    char miss[64];
    hs_scan_missing(&s, miss, sizeof(miss));
    tap_ok(strcmp(miss, "\"alpha\"") == 0, "scan: missing lists the keyword (%s)", miss);
    hs_scan_deinit(&s);
    hs_scan_init(&s, &k, 100);
    hs_scan_missing(&s, miss, sizeof(miss));
    tap_ok(strcmp(miss, "\"alpha\", \"omega\"") == 0, "scan: missing lists both (%s)", miss);
    hs_scan_deinit(&s);
    hs_kw_deinit(&k);
}

/* ---- HAProxy CSV ---- */

#define HDR                                                                                        \
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"     \
    "wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,"   \
    "lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,\n"
#define ROW(px, sv, scur, slim, status, type, chk)                                                 \
    px "," sv ",0,0," scur ",0," slim ",0,0,0,0,0,0,0,0,0,0," status                               \
       ",1,1,0,0,0,0,0,,1,2,1,,0,," type ",0,,0," chk ",,0,\n"

static const char good[] = HDR ROW("fe", "FRONTEND", "3", "100", "OPEN", "0", "")
    ROW("web", "web1", "3", "10", "UP", "2", "L7OK")
        ROW("web", "web2", "1", "10", "UP", "2", "L7OK")
            ROW("web", "BACKEND", "4", "20", "UP", "1", "")
                ROW("dbcheck", "web1", "0", "", "UP", "2", "L7OK")
                    ROW("dbcheck", "BACKEND", "0", "", "UP", "1", "") "\n";

static void test_csv(void)
{
    hp_stat_t st;
    char err[128];
    int rc = hp_parse_stat(good, strlen(good), "web", "dbcheck", &st, err, sizeof(err));
    TAP_EQ_INT(rc, 0, "csv: good output parses (%s)", err);
    tap_ok(st.web_found && st.web_up == 2 && st.web_total == 2, "csv: 2/2 web servers UP");
    TAP_EQ_INT(st.db, HEALTH_UP, "csv: db backend UP");
    tap_ok(st.load > 0.199 && st.load < 0.201, "csv: load = 4/20 (%f)", st.load);

    static const struct {
        const char *what;
        const char *text;
        int rc;
        const char *err; /* substring of the error */
        int up, total;   /* web servers */
        health_state_t db;
        const char *down; /* substring of web_down */
    } cases[] = {
        {"empty", "", MS_EPARSE, "no CSV header", 0, 0, HEALTH_UNKNOWN, ""},
        {"garbage", "Unknown command. Please enter one of the following commands only:\n",
         MS_EPARSE, "no CSV header line (got 'Unknown command", 0, 0, HEALTH_UNKNOWN, ""},
        {"binary", "\x01\x02\xff\n", MS_EPARSE, "no CSV header line (got '?\?\?')", 0, 0,
         HEALTH_UNKNOWN, ""},
        {"header without newline", "# pxname,svname,status", MS_EPARSE, "no CSV header", 0, 0,
         HEALTH_UNKNOWN, ""},
        {"header lacks status", "# pxname,svname,scur\nweb,web1,1\n\n", MS_EPARSE,
         "lacks column 'status'", 0, 0, HEALTH_UNKNOWN, ""},
        {"header lacks svname", "# pxname,status\nweb,UP\n", MS_EPARSE, "lacks column 'svname'", 0,
         0, HEALTH_UNKNOWN, ""},
        {"truncated last line", HDR ROW("web", "web1", "0", "", "UP", "2", "L7OK") "web,web2,0",
         MS_EPARSE, "truncated output", 0, 0, HEALTH_UNKNOWN, ""},
        {"short row", HDR "web,web1,0,0,1\n", MS_EPARSE, "line 2: truncated (5 fields", 0, 0,
         HEALTH_UNKNOWN, ""},
        {"bad scur", HDR ROW("web", "web1", "x1", "", "UP", "2", "L7OK"), MS_EPARSE,
         "line 2: bad scur 'x1'", 0, 0, HEALTH_UNKNOWN, ""},
        {"bad slim", HDR ROW("web", "web1", "1", "zz", "UP", "2", "L7OK"), MS_EPARSE,
         "line 2: bad slim 'zz'", 0, 0, HEALTH_UNKNOWN, ""},
        {"huge scur", HDR ROW("web", "web1", "99999999999999999999999", "", "UP", "2", ""),
         MS_EPARSE, "bad scur", 0, 0, HEALTH_UNKNOWN, ""},
        {"header only", HDR "\n", 0, "", 0, 0, HEALTH_UNKNOWN, ""},
        {"minimal columns, reordered", "# status,svname,pxname\nUP,web1,web\nDOWN,web2,web\n\n", 0,
         "", 1, 2, HEALTH_UNKNOWN, "web2 DOWN"},
        {"all down with check status",
         HDR ROW("web", "web1", "0", "", "DOWN", "2", "L4CON")
             ROW("web", "web2", "0", "", "DOWN 1/2", "2", "L4TOUT"),
         0, "", 0, 2, HEALTH_UNKNOWN, "web1 DOWN L4CON, web2 DOWN 1/2 L4TOUT"},
        {"going down counts as up; MAINT, DRAIN, NOLB do not",
         HDR ROW("web", "a", "0", "", "UP 1/3", "2", "L7STS") ROW(
             "web", "b", "0", "", "MAINT", "2", "") ROW("web", "c", "0", "", "DRAIN", "2", "")
             ROW("web", "d", "0", "", "NOLB", "2", "") ROW("web", "e", "0", "", "no check", "2", "")
                 ROW("web", "f", "0", "", "UPPER", "2", ""),
         0, "", 2, 6, HEALTH_UNKNOWN, "b MAINT, c DRAIN, d NOLB, f UPPER"},
        {"db backend down",
         HDR ROW("web", "web1", "0", "", "UP", "2", "")
             ROW("dbcheck", "web1", "0", "", "DOWN", "2", "L7STS"),
         0, "", 1, 1, HEALTH_DOWN, ""},
        {"db backend without servers uses its BACKEND row",
         HDR ROW("web", "web1", "0", "", "UP", "2", "")
             ROW("dbcheck", "BACKEND", "0", "", "UP", "1", ""),
         0, "", 1, 1, HEALTH_UP, ""},
        {"quoted fields with commas",
         "# pxname,svname,status,last_chk\n\"web\",\"web1\",\"UP\",\"a, \"\"b\"\"\"\n\n", 0, "", 1,
         1, HEALTH_UNKNOWN, ""},
        {"unterminated quote", "# pxname,svname,status\nweb,web1,\"UP\n\n", 0, "", 1, 1,
         HEALTH_UNKNOWN, ""},
        {"other backends only", HDR ROW("api", "a1", "0", "", "UP", "2", ""), 0, "", 0, 0,
         HEALTH_UNKNOWN, ""},
        {"comment lines and blank lines skipped", "# pxname,svname,status\n\n# hi\nweb,web1,UP\n\n",
         0, "", 1, 1, HEALTH_UNKNOWN, ""},
        {"control characters in names are replaced",
         "# pxname,svname,status\nweb,w\x1b[31m\r,DOWN\x07\n\n", 0, "", 0, 1, HEALTH_UNKNOWN,
         "w?[31m? DOWN?"},
        {"no type column: FRONTEND/BACKEND by name",
         "# pxname,svname,status\nweb,FRONTEND,OPEN\nweb,web1,UP\nweb,BACKEND,UP\n\n", 0, "", 1, 1,
         HEALTH_UNKNOWN, ""},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        memset(&st, 0xaa, sizeof(st));
        rc = hp_parse_stat(cases[i].text, strlen(cases[i].text), "web", "dbcheck", &st, err,
                           sizeof(err));
        bool ok = rc == cases[i].rc && strstr(err, cases[i].err) != NULL;
        if (rc == 0) {
            ok = ok && (int)st.web_up == cases[i].up && (int)st.web_total == cases[i].total &&
                 st.db == cases[i].db && strstr(st.web_down, cases[i].down) != NULL;
        }
        tap_ok(ok, "csv: %s", cases[i].what);
        if (!ok) {
            tap_diag("  rc %d err '%s' up %u/%u db %s down '%s'", rc, err, st.web_up, st.web_total,
                     health_state_str(st.db), st.web_down);
        }
    }

    /* load without limits: the session count */
    const char *nolim = HDR ROW("web", "web1", "3", "", "UP", "2", "")
        ROW("web", "web2", "4", "", "UP", "2", "") ROW("web", "web3", "9", "", "DOWN", "2", "");
    rc = hp_parse_stat(nolim, strlen(nolim), "web", NULL, &st, err, sizeof(err));
    tap_ok(rc == 0 && st.load > 6.99 && st.load < 7.01,
           "csv: no limits: load = sessions of UP servers (%f)", st.load);
    const char *mixed =
        HDR ROW("web", "web1", "5", "10", "UP", "2", "") ROW("web", "web2", "4", "", "UP", "2", "");
    rc = hp_parse_stat(mixed, strlen(mixed), "web", NULL, &st, err, sizeof(err));
    tap_ok(rc == 0 && st.load > 0.49 && st.load < 0.51, "csv: only servers with a limit count (%f)",
           st.load);

    /* huge field, many columns, many rows */
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "# pxname,svname,status,check_status\nweb,web1,DOWN,");
    for (int i = 0; i < 100000; i++) {
        buf_append(&b, "Z", 1);
    }
    buf_printf(&b, "\n\n");
    rc = hp_parse_stat((char *)b.data, b.len, "web", NULL, &st, err, sizeof(err));
    tap_ok(rc == 0 && st.web_total == 1 && strlen(st.web_down) < sizeof(st.web_down),
           "csv: 100 KB field is parsed and its detail truncated");
    buf_reset(&b);
    buf_printf(&b, "# pxname,svname,status");
    for (int i = 0; i < 2000; i++) {
        buf_printf(&b, ",c%d", i);
    }
    buf_printf(&b, "\n\n");
    rc = hp_parse_stat((char *)b.data, b.len, "web", NULL, &st, err, sizeof(err));
    tap_ok(rc == MS_EPARSE && strstr(err, "more than"), "csv: too many columns rejected (%s)", err);
    buf_reset(&b);
    buf_printf(&b, "# pxname,svname,status\n");
    for (int i = 0; i < 20000; i++) {
        buf_printf(&b, "web,w%d,%s\n", i, i % 3 ? "UP" : "DOWN");
    }
    buf_printf(&b, "\n");
    rc = hp_parse_stat((char *)b.data, b.len, "web", NULL, &st, err, sizeof(err));
    tap_ok(rc == 0 && st.web_total == 20000 && st.web_up == 13333, "csv: 20000 servers (%u/%u)",
           st.web_up, st.web_total);
    buf_deinit(&b);
}

int main(void)
{
    log_init("test_health", false, LOG_LVL_ERR);
    test_tracker();
    test_site();
    test_scan();
    test_csv();
    return tap_done();
}
