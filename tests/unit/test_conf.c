/* test_conf.c: unit tests of the conf module: the YAML document tree, the schema engine and
 * the multisited configuration loader. Error cases are a table of config texts and the
 * message each must produce, including "file:line:". */
#include "tap.h"
#include "conf/conf.h"
#include "snap/snap.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/test_conf.XXXXXX";

static char *write_file(const char *name, const char *text)
{
    char *path = xasprintf("%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        tap_diag("cannot write %s", path);
        return path;
    }
    fputs(text, f);
    fclose(f);
    return path;
}

/* conf_load on a file holding `text`. Returns the rc; *out or err filled. */
static int load_text(const char *text, conf_t **out, conf_err_t *err, char **path_out)
{
    static int seq;
    char name[32];
    snprintf(name, sizeof(name), "c%d.yaml", seq++);
    char *path = write_file(name, text);
    *out = NULL;
    memset(err, 0, sizeof(*err));
    int rc = conf_load(path, out, err);
    if (path_out) {
        *path_out = path;
    } else {
        unlink(path);
        free(path);
    }
    return rc;
}

/* Each text must fail with "FILE:LINE: <msg>" where FILE is the file loaded. */
static const struct {
    const char *what;
    const char *text;
    int line;
    const char *msg;
} bad[] = {
    {"unknown option", "server:\n  udp-thread: 4\n", 2, "unknown option 'server.udp-thread'"},
    {"unknown option after good ones", "server:\n  udp-threads: 4\n  tcp-threads: 1\n  lsten: x\n",
     4, "unknown option 'server.lsten'"},
    {"unknown section", "serve:\n  listen: 127.0.0.1\n", 1, "unknown section 'serve'"},
    {"unknown section after a good one", "server:\n  udp-threads: 2\nzone:\n  - origin: a\n", 3,
     "unknown section 'zone'"},
    {"udp-threads 0", "server:\n  udp-threads: 0\n", 2,
     "server.udp-threads: 0 is out of range 1..64"},
    {"udp-threads 65", "server:\n  udp-threads: 65\n", 2,
     "server.udp-threads: 65 is out of range 1..64"},
    {"udp-threads huge", "server:\n  udp-threads: 99999999999999999999\n", 2,
     "server.udp-threads: '99999999999999999999' is not a non-negative integer"},
    {"udp-threads negative", "server:\n  udp-threads: -1\n", 2,
     "server.udp-threads: '-1' is not a non-negative integer"},
    {"udp-threads text", "server:\n  udp-threads: two\n", 2,
     "server.udp-threads: 'two' is not a non-negative integer"},
    {"udp-threads list", "server:\n  udp-threads: [1, 2]\n", 2,
     "server.udp-threads: expected a single integer"},
    {"udp-max-payload 511", "server:\n  udp-max-payload: 511\n", 2,
     "server.udp-max-payload: 511 is out of range 512..4096"},
    {"udp-max-payload 4097", "server:\n  udp-max-payload: 4097\n", 2,
     "server.udp-max-payload: 4097 is out of range 512..4096"},
    {"bad duration unit", "server:\n  tcp-idle-timeout: 10x\n", 2,
     "server.tcp-idle-timeout: '10x' is not a duration (e.g. 250ms, 2s, 1m)"},
    {"fractional duration", "server:\n  tcp-idle-timeout: 1.5s\n", 2,
     "server.tcp-idle-timeout: '1.5s' is not a duration"},
    {"duration without number", "server:\n  tcp-idle-timeout: ms\n", 2,
     "server.tcp-idle-timeout: 'ms' is not a duration"},
    {"negative duration", "server:\n  tcp-idle-timeout: -5s\n", 2,
     "server.tcp-idle-timeout: '-5s' is not a duration"},
    {"duration too short", "server:\n  tcp-idle-timeout: 99ms\n", 2,
     "server.tcp-idle-timeout: 99ms is out of range 100ms..3600000ms"},
    {"duration too long", "server:\n  tcp-idle-timeout: 2h\n", 2,
     "server.tcp-idle-timeout: 2h is out of range 100ms..3600000ms"},
    {"bad address", "server:\n  listen: 1.2.3.4:99999\n", 2,
     "server.listen: '1.2.3.4:99999' is not an IP address (with optional :port)"},
    {"host name as address", "server:\n  listen: localhost:53\n", 2,
     "server.listen: 'localhost:53' is not an IP address"},
    {"bad address in a list", "server:\n  listen:\n    - 127.0.0.1\n    - \"[::1\"\n", 4,
     "server.listen: '[::1' is not an IP address"},
    {"address list with a map", "server:\n  listen:\n    - {a: b}\n", 3,
     "listen: list items must be plain values"},
    {"address as a map", "server:\n  listen: {a: b}\n", 2,
     "server.listen: expected a value or a list of values"},
    {"bad enum", "server:\n  log-level: loud\n", 2,
     "server.log-level: 'loud' is not one of: error, warning, info, debug"},
    {"bad bool", "server:\n  syslog: maybe\n", 2,
     "server.syslog: 'maybe' is not a boolean (true/false)"},
    {"duplicate key", "server:\n  udp-threads: 2\n  tcp-threads: 1\n  udp-threads: 3\n", 4,
     "duplicate key 'udp-threads' (first on line 2)"},
    {"duplicate section", "server:\n  udp-threads: 2\nserver:\n  tcp-threads: 1\n", 3,
     "duplicate key 'server' (first on line 1)"},
    {"YAML syntax error: unclosed flow", "server:\n  listen: [127.0.0.1\nzones: []\n", 3,
     "YAML syntax error"},
    {"YAML syntax error: bad indentation", "server:\n  udp-threads: 2\n tcp-threads: 1\n", 3,
     "YAML syntax error"},
    {"YAML syntax error: tab", "server:\n\tudp-threads: 2\n", 2, "YAML syntax error"},
    {"alias refused", "x: &n 4\nserver:\n  udp-threads: *n\n", 3, "YAML aliases are not supported"},
    {"top level a list", "- server\n- zones\n", 1, "the top level must be a mapping"},
    {"top level a scalar", "hello\n", 1, "the top level must be a mapping"},
    {"two documents", "server: {}\n---\nzones: []\n", 2, "only one YAML document allowed"},
    {"complex key", "? [a, b]\n: c\n", 1, "mapping keys must be plain strings"},
    {"server not a map", "server: 5\n", 1, "server: expected a mapping of options"},
    {"zones not a list", "zones:\n  origin: example.com\n", 2,
     "zones: expected a list of {origin, file}"},
    {"zone item not a map", "zones:\n  - example.com\n", 2,
     "zones[]: expected a mapping of options"},
    {"zone missing origin", "zones:\n  - file: a.zone\n", 2, "zones[0]: 'origin' is required"},
    {"zone empty origin", "zones:\n  - origin: \"\"\n    file: a.zone\n", 2,
     "zones[0]: 'origin' is required"},
    {"zone missing file", "zones:\n  - origin: example.com\n", 2, "zones[0]: 'file' is required"},
    {"second zone missing file",
     "zones:\n  - origin: example.com\n    file: a.zone\n  - origin: example.net\n", 4,
     "zones[1]: 'file' is required"},
    {"zone file a list", "zones:\n  - origin: example.com\n    file: [a, b]\n", 2,
     "zones[0]: 'file' is required"},
    {"zone unknown option", "zones:\n  - origin: example.com\n    file: a.zone\n    ttl: 5\n", 4,
     "unknown option 'zones[].ttl'"},
    {"duplicate zone",
     "zones:\n  - origin: example.com\n    file: a.zone\n  - origin: example.com\n    file: "
     "b.zone\n",
     4, "zones[1]: zone 'example.com' defined twice (first on line 2)"},
    {"duplicate zone, other case",
     "zones:\n  - origin: example.net\n    file: a.zone\n  - origin: x.org\n    file: x\n  - "
     "origin: EXAMPLE.NET\n    file: b.zone\n",
     6, "zones[2]: zone 'EXAMPLE.NET' defined twice (first on line 2)"},
};

static void test_bad(void)
{
    for (size_t i = 0; i < MS_ARRAY_LEN(bad); i++) {
        conf_t *c;
        conf_err_t err;
        char *path;
        int rc = load_text(bad[i].text, &c, &err, &path);
        char *want = xasprintf("%s:%d: %s", path, bad[i].line, bad[i].msg);
        tap_ok(rc == MS_ECONF && c == NULL && strncmp(err.msg, want, strlen(want)) == 0,
               "conf_load: %s", bad[i].what);
        if (rc != MS_ECONF || strncmp(err.msg, want, strlen(want)) != 0) {
            tap_diag("  rc %d, message: %s", rc, err.msg);
            tap_diag("  expected:       %s", want);
        }
        conf_free(c);
        unlink(path);
        free(path);
        free(want);
    }
}

static void test_missing_file(void)
{
    conf_t *c = NULL;
    conf_err_t err;
    char *path = xasprintf("%s/does-not-exist.yaml", tmpdir);
    int rc = conf_load(path, &c, &err);
    char *want = xasprintf("%s: cannot read: ", path);
    tap_ok(rc == MS_ECONF && c == NULL && strncmp(err.msg, want, strlen(want)) == 0 &&
               strstr(err.msg, "No such file"),
           "conf_load of a missing file: %s", err.msg);
    free(path);
    free(want);
}

static char *addr_str(const net_addr_t *a)
{
    static char buf[NET_ADDR_STRLEN];
    return (char *)net_addr_str(a, buf, sizeof(buf));
}

static void test_defaults(void)
{
    conf_t *c;
    conf_err_t err;
    int rc = load_text("", &c, &err, NULL);
    TAP_EQ_INT(rc, 0, "empty file loads");
    if (rc != 0) {
        tap_diag("  %s", err.msg);
        return;
    }
    TAP_EQ_INT(c->udp_max_payload, 1232, "default udp-max-payload 1232");
    TAP_EQ_INT(c->tcp_idle_timeout_ms, 10000, "default tcp-idle-timeout 10 s");
    TAP_EQ_INT(c->udp_threads, 2, "default udp-threads");
    TAP_EQ_INT(c->tcp_threads, 1, "default tcp-threads");
    TAP_EQ_INT(c->tcp_max_clients, 1000, "default tcp-max-clients");
    tap_ok(strcmp(conf_log_levels[c->log_level], "info") == 0, "default log-level info");
    tap_ok(!c->log_syslog, "default syslog off");
    tap_ok(c->listen.n == 1 && strcmp(addr_str(&c->listen.v[0]), "127.0.0.1:53") == 0,
           "default listen 127.0.0.1:53");
    tap_ok(c->version && strcmp(c->version, "multisite " MS_VERSION) == 0, "default version %s",
           c->version ? c->version : "(null)");
    tap_ok(c->nsid && strcmp(c->nsid, "") == 0, "default nsid empty (off)");
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    tap_ok(c->identity && strcmp(c->identity, host) == 0, "default identity is the host name");
    TAP_EQ_INT(c->n_zones, 0, "no zones");
    tap_ok(c->path && strstr(c->path, tmpdir) == c->path, "path recorded");
    conf_free(c);

    /* Quick mode starts from the same defaults, without listen addresses. */
    c = conf_new_default();
    TAP_EQ_INT(c->udp_max_payload, 1232, "conf_new_default: udp-max-payload 1232");
    TAP_EQ_INT(c->tcp_idle_timeout_ms, 10000, "conf_new_default: tcp-idle-timeout 10 s");
    TAP_EQ_INT(c->listen.n, 0, "conf_new_default: no listen address");
    tap_ok(c->path == NULL, "conf_new_default: no path");
    net_addr_t a;
    if (net_parse_addr("[::1]:5353", 53, &a) == 0) {
        conf_add_listen(c, &a);
    }
    conf_add_zone(c, "example.com", "/tmp/x.zone");
    tap_ok(c->listen.n == 1 && strcmp(addr_str(&c->listen.v[0]), "[::1]:5353") == 0,
           "conf_add_listen");
    tap_ok(c->n_zones == 1 && strcmp(c->zones[0].origin, "example.com") == 0 &&
               strcmp(c->zones[0].file, "/tmp/x.zone") == 0,
           "conf_add_zone");
    conf_free(c);
    conf_free(NULL);
}

static void test_good(void)
{
    conf_t *c;
    conf_err_t err;
    int rc;

    /* Sections with every option commented out are empty (YAML null): defaults. */
    rc =
        load_text("server:\n  # udp-threads: 4\nzones:\n# - origin: example.com\n", &c, &err, NULL);
    tap_ok(rc == 0 && c->udp_threads == 2 && c->udp_max_payload == 1232 && c->n_zones == 0,
           "empty server and zones sections: defaults (%s)", rc == 0 ? "ok" : err.msg);
    conf_free(c);

    rc = load_text("server:\n  listen: 192.0.2.1\n", &c, &err, NULL);
    tap_ok(rc == 0 && c->listen.n == 1 && strcmp(addr_str(&c->listen.v[0]), "192.0.2.1:53") == 0,
           "listen as a scalar, default port 53");
    conf_free(c);

    rc = load_text("server:\n  listen:\n    - \"[2001:db8::1]:5300\"\n    - 127.0.0.1:5353\n    - "
                   "::1\n",
                   &c, &err, NULL);
    tap_ok(rc == 0 && c->listen.n == 3 &&
               strcmp(addr_str(&c->listen.v[0]), "[2001:db8::1]:5300") == 0 &&
               strcmp(addr_str(&c->listen.v[1]), "127.0.0.1:5353") == 0 &&
               strcmp(addr_str(&c->listen.v[2]), "[::1]:53") == 0,
           "listen as a list with [v6]:port, v4:port and bare v6");
    conf_free(c);

    rc = load_text("server:\n  listen: [\"[::1]:8053\", 10.0.0.1:1]\n", &c, &err, NULL);
    tap_ok(rc == 0 && c->listen.n == 2 && strcmp(addr_str(&c->listen.v[0]), "[::1]:8053") == 0 &&
               strcmp(addr_str(&c->listen.v[1]), "10.0.0.1:1") == 0,
           "listen as a flow list");
    conf_free(c);

    static const struct {
        const char *text;
        unsigned ms;
    } durs[] = {{"250ms", 250},  {"2s", 2000},   {"7", 7000},     {"1m", 60000},
                {"1h", 3600000}, {"100ms", 100}, {"60m", 3600000}};
    for (size_t i = 0; i < MS_ARRAY_LEN(durs); i++) {
        char *text = xasprintf("server:\n  tcp-idle-timeout: %s\n", durs[i].text);
        rc = load_text(text, &c, &err, NULL);
        tap_ok(rc == 0 && c->tcp_idle_timeout_ms == durs[i].ms, "duration %s = %u ms", durs[i].text,
               rc == 0 ? c->tcp_idle_timeout_ms : 0);
        if (rc != 0) {
            tap_diag("  %s", err.msg);
        }
        conf_free(c);
        free(text);
    }

    rc = load_text("server:\n  identity: \"\"\n  version: \"\"\n  nsid: 0xdeadbeef\n"
                   "  udp-threads: 64\n  tcp-threads: 16\n  udp-max-payload: 4096\n"
                   "  tcp-max-clients: 1\n  log-level: debug\n  syslog: yes\n",
                   &c, &err, NULL);
    tap_ok(rc == 0, "every server option at an edge value");
    if (rc == 0) {
        tap_ok(strcmp(c->identity, "") == 0 && strcmp(c->version, "") == 0, "identity hidden");
        tap_ok(strcmp(c->nsid, "0xdeadbeef") == 0, "nsid kept as text");
        tap_ok(c->udp_threads == 64 && c->tcp_threads == 16 && c->udp_max_payload == 4096 &&
                   c->tcp_max_clients == 1,
               "integers stored");
        tap_ok(strcmp(conf_log_levels[c->log_level], "debug") == 0 && c->log_syslog,
               "enum and bool stored");
    } else {
        tap_diag("  %s", err.msg);
    }
    conf_free(c);

    static const struct {
        const char *text;
        bool v;
    } bools[] = {{"true", true}, {"no", false}, {"On", true}, {"OFF", false}, {"yes", true}};
    for (size_t i = 0; i < MS_ARRAY_LEN(bools); i++) {
        char *text = xasprintf("server:\n  syslog: %s\n", bools[i].text);
        rc = load_text(text, &c, &err, NULL);
        tap_ok(rc == 0 && c->log_syslog == bools[i].v, "bool %s", bools[i].text);
        conf_free(c);
        free(text);
    }

    /* Zone files: relative paths are resolved against the config file's directory. */
    char *path;
    rc = load_text("zones:\n  - origin: example.com\n    file: zones/example.com.zone\n"
                   "  - origin: example.net.\n    file: /abs/example.net.zone\n"
                   "sync:\n  anything: goes\n",
                   &c, &err, &path);
    TAP_EQ_INT(rc, 0, "zones and a sync section load");
    if (rc == 0) {
        char *want = xasprintf("%s/zones/example.com.zone", tmpdir);
        tap_ok(c->n_zones == 2 && strcmp(c->zones[0].origin, "example.com") == 0 &&
                   strcmp(c->zones[0].file, want) == 0,
               "relative zone file resolved: %s", c->zones[0].file);
        tap_ok(strcmp(c->zones[1].origin, "example.net.") == 0 &&
                   strcmp(c->zones[1].file, "/abs/example.net.zone") == 0,
               "absolute zone file kept");
        tap_ok(c->zones[0].src_line == 2 && c->zones[1].src_line == 4 &&
                   strcmp(c->zones[1].src_file, path) == 0,
               "zone source lines recorded (%d, %d)", c->zones[0].src_line, c->zones[1].src_line);
        free(want);
    } else {
        tap_diag("  %s", err.msg);
    }
    conf_free(c);
    unlink(path);
    free(path);
}

/* The document tree on its own: lines of keys and values. */
static void test_doc(void)
{
    const char text[] = "# comment\n"
                        "a: 1\n"
                        "b:\n"
                        "  - x\n"
                        "  - y: 2\n"
                        "c: {d: \"e f\"}\n";
    conf_doc_t *doc = NULL;
    conf_err_t err;
    int rc = conf_doc_parse("t.yaml", text, sizeof(text) - 1, &doc, &err);
    TAP_EQ_INT(rc, 0, "conf_doc_parse ok");
    if (rc != 0) {
        return;
    }
    const conf_node_t *root = conf_doc_root(doc);
    tap_ok(root->kind == CONF_MAP && root->n == 3, "root is a map of 3");
    const conf_node_t *a = conf_map_get(root, "a");
    tap_ok(a && a->kind == CONF_SCALAR && strcmp(a->value, "1") == 0 && a->line == 2 &&
               strcmp(a->file, "t.yaml") == 0,
           "scalar with value, file and line");
    TAP_EQ_INT(root->key_lines[1], 3, "key line of b");
    const conf_node_t *b = conf_map_get(root, "b");
    tap_ok(b && b->kind == CONF_SEQ && b->n == 2 && b->items[0]->kind == CONF_SCALAR &&
               b->items[1]->kind == CONF_MAP && b->items[1]->line == 5,
           "sequence with a scalar and a map");
    const conf_node_t *d = conf_map_get(conf_map_get(root, "c"), "d");
    tap_ok(d && strcmp(d->value, "e f") == 0 && d->line == 6, "flow map, quoted scalar");
    tap_ok(conf_map_get(root, "zz") == NULL, "missing key -> NULL");
    tap_ok(conf_map_get(a, "x") == NULL && conf_map_get(NULL, "x") == NULL,
           "conf_map_get on a scalar or NULL -> NULL");
    conf_doc_free(doc);
    conf_doc_free(NULL);

    /* Errors straight from the parser carry the name given. */
    static const struct {
        const char *text;
        const char *msg;
    } errs[] = {
        {"a: 1\na: 2\n", "t.yaml:2: duplicate key 'a' (first on line 1)"},
        {"a: [1, 2\n", "t.yaml:2: YAML syntax error"},
        {"a: &x 1\nb: *x\n", "t.yaml:2: YAML aliases are not supported"},
        {"a: \"unterminated\n", "t.yaml:2: YAML syntax error"},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(errs); i++) {
        doc = NULL;
        rc = conf_doc_parse("t.yaml", errs[i].text, strlen(errs[i].text), &doc, &err);
        tap_ok(rc == MS_ECONF && doc == NULL &&
                   strncmp(err.msg, errs[i].msg, strlen(errs[i].msg)) == 0,
               "conf_doc_parse error: %s", errs[i].msg);
        if (rc != MS_ECONF || strncmp(err.msg, errs[i].msg, strlen(errs[i].msg)) != 0) {
            tap_diag("  got rc %d: %s", rc, err.msg);
        }
        conf_doc_free(doc);
    }

    /* Nesting is bounded. */
    buf_t deep;
    buf_init(&deep);
    buf_printf(&deep, "a: ");
    for (int i = 0; i < 40; i++) {
        buf_printf(&deep, "[");
    }
    for (int i = 0; i < 40; i++) {
        buf_printf(&deep, "]");
    }
    buf_printf(&deep, "\n");
    doc = NULL;
    rc = conf_doc_parse("deep.yaml", (char *)deep.data, deep.len, &doc, &err);
    tap_ok(rc == MS_ECONF && strstr(err.msg, "deep.yaml:1: nesting deeper than 32"),
           "deep nesting refused: %s", err.msg);
    conf_doc_free(doc);
    buf_deinit(&deep);
}

/* The schema engine with a table of our own: every type, defaults, lists. */
typedef struct {
    char *s;
    unsigned u;
    bool b;
    unsigned ms;
    net_addr_t addr;
    conf_addrs_t addrs;
    conf_strs_t strs;
    unsigned e;
} demo_t;

static const char *const demo_choices[] = {"red", "green", "blue", NULL};
static const conf_opt_t demo_schema[] = {
    {"s", CONF_T_STR, offsetof(demo_t, s), 0, 0, "dflt", NULL, "a string"},
    {"u", CONF_T_UINT, offsetof(demo_t, u), 5, 10, "7", NULL, "an integer"},
    {"b", CONF_T_BOOL, offsetof(demo_t, b), 0, 0, "on", NULL, "a bool"},
    {"ms", CONF_T_DURATION, offsetof(demo_t, ms), 0, 60000, "1s", NULL, "a duration"},
    {"addr", CONF_T_ADDR, offsetof(demo_t, addr), 8080, 0, NULL, NULL, "an address"},
    {"addrs", CONF_T_ADDRS, offsetof(demo_t, addrs), 99, 0, NULL, NULL, "addresses"},
    {"strs", CONF_T_STRS, offsetof(demo_t, strs), 0, 0, "one", NULL, "strings"},
    {"e", CONF_T_ENUM, offsetof(demo_t, e), 0, 0, "green", demo_choices, "a choice"},
};

static int apply_demo(const char *text, demo_t *d, conf_err_t *err)
{
    conf_doc_t *doc = NULL;
    memset(d, 0, sizeof(*d));
    int rc = conf_doc_parse("demo.yaml", text, strlen(text), &doc, err);
    if (rc == 0) {
        rc = conf_apply(conf_map_get(conf_doc_root(doc), "demo"), demo_schema,
                        MS_ARRAY_LEN(demo_schema), "demo", d, err);
    }
    conf_doc_free(doc);
    return rc;
}

static void test_schema(void)
{
    demo_t d;
    conf_err_t err;
    int rc = apply_demo("other: 1\n", &d, &err);
    tap_ok(rc == 0 && strcmp(d.s, "dflt") == 0 && d.u == 7 && d.b && d.ms == 1000 &&
               d.addr.sa.sa_family == 0 && d.addrs.n == 0 && d.strs.n == 1 &&
               strcmp(d.strs.v[0], "one") == 0 && d.e == 1,
           "conf_apply(NULL): every default applied");
    conf_release(demo_schema, MS_ARRAY_LEN(demo_schema), &d);
    tap_ok(d.s == NULL && d.strs.v == NULL && d.strs.n == 0, "conf_release frees and clears");

    rc = apply_demo("demo:\n  s: x\n  u: 10\n  b: off\n  ms: 250ms\n  addr: 10.1.1.1\n"
                    "  addrs: [\"[::1]\", 10.0.0.1:7]\n  strs: [p, q, r]\n  e: blue\n",
                    &d, &err);
    tap_ok(rc == 0, "conf_apply with every type set");
    if (rc == 0) {
        tap_ok(strcmp(d.s, "x") == 0 && d.u == 10 && !d.b && d.ms == 250 && d.e == 2,
               "scalar types stored");
        tap_ok(strcmp(addr_str(&d.addr), "10.1.1.1:8080") == 0, "address default port from min");
        tap_ok(d.addrs.n == 2 && strcmp(addr_str(&d.addrs.v[0]), "[::1]:99") == 0 &&
                   strcmp(addr_str(&d.addrs.v[1]), "10.0.0.1:7") == 0,
               "address list default port from min");
        tap_ok(d.strs.n == 3 && strcmp(d.strs.v[2], "r") == 0, "string list");
    } else {
        tap_diag("  %s", err.msg);
    }
    conf_release(demo_schema, MS_ARRAY_LEN(demo_schema), &d);

    rc = apply_demo("demo:\n  strs: single\n", &d, &err);
    tap_ok(rc == 0 && d.strs.n == 1 && strcmp(d.strs.v[0], "single") == 0,
           "string list given as a scalar");
    conf_release(demo_schema, MS_ARRAY_LEN(demo_schema), &d);

    rc = apply_demo("demo:\n  u: 4\n", &d, &err);
    tap_ok(rc == MS_ECONF && strcmp(err.msg, "demo.yaml:2: demo.u: 4 is out of range 5..10") == 0,
           "range from the schema: %s", err.msg);
    conf_release(demo_schema, MS_ARRAY_LEN(demo_schema), &d);

    rc = apply_demo("demo:\n  ms: 61s\n", &d, &err);
    tap_ok(rc == MS_ECONF &&
               strcmp(err.msg, "demo.yaml:2: demo.ms: 61s is out of range 0ms..60000ms") == 0,
           "duration range from the schema: %s", err.msg);
    conf_release(demo_schema, MS_ARRAY_LEN(demo_schema), &d);

    rc = apply_demo("demo:\n  strs: [a, [b]]\n", &d, &err);
    tap_ok(rc == MS_ECONF && strstr(err.msg, "demo.yaml:2: strs: list items must be plain values"),
           "nested list item refused: %s", err.msg);
    conf_release(demo_schema, MS_ARRAY_LEN(demo_schema), &d);

    rc = apply_demo("demo:\n  e: Blue\n", &d, &err);
    tap_ok(rc == MS_ECONF &&
               strstr(err.msg, "demo.yaml:2: demo.e: 'Blue' is not one of: red, green, blue"),
           "enum is case-sensitive: %s", err.msg);
    conf_release(demo_schema, MS_ARRAY_LEN(demo_schema), &d);

    char *sp = NULL;
    size_t sl = 0;
    FILE *f = open_memstream(&sp, &sl);
    conf_print_schema(f);
    fclose(f);
    tap_ok(strstr(sp, "server.udp-threads (integer 1..64, default \"2\"): ") &&
               strstr(sp, "zones[].origin (section): "),
           "conf_print_schema lists options with type, range and default");
    free(sp);
}

/* A duplicate zone spelled differently ("example.com" vs "Example.COM.") passes the config
 * check but is caught when the snapshot is built, naming the config line. */
static void test_snap_duplicate_zone(void)
{
    char *zf = write_file("dup.zone", "$TTL 300\n@ SOA ns hm 1 2 3 4 5\n@ NS ns\nns A 192.0.2.1\n");
    char *text = xasprintf("zones:\n  - origin: example.com\n    file: %s\n"
                           "  - origin: Example.COM.\n    file: %s\n",
                           zf, zf);
    conf_t *c;
    conf_err_t err;
    char *path;
    int rc = load_text(text, &c, &err, &path);
    TAP_EQ_INT(rc, 0, "same zone spelled differently passes conf_load");
    if (rc == 0) {
        snap_t *s = NULL;
        char serr[512] = "";
        rc = snap_build(c, &s, serr, sizeof(serr));
        char *want = xasprintf("%s:4: zone Example.COM. is defined twice", path);
        tap_ok(rc == MS_ECONF && s == NULL && strcmp(serr, want) == 0,
               "snap_build refuses the duplicate: %s", serr);
        free(want);
        snap_free(s);
    }
    unlink(path);
    unlink(zf);
    free(path);
    free(zf);
    free(text);
}

int main(void)
{
    log_init("test_conf", false, LOG_LVL_ERR);
    if (!mkdtemp(tmpdir)) {
        tap_ok(false, "mkdtemp");
        return tap_done();
    }
    test_bad();
    test_missing_file();
    test_defaults();
    test_good();
    test_doc();
    test_schema();
    test_snap_duplicate_zone();
    rmdir(tmpdir);
    return tap_done();
}
