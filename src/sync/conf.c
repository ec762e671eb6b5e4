/* conf.c: the `sync:` section of the multisite config file, validated by the shared schema
 * engine (conf/conf.h). multisited ignores this section; multisite-syncd ignores the rest. */
#include "sync/internal.h"

#include <stddef.h>
#include <string.h>

static const char *const backends[] = {"sqlite", "postgresql", NULL};
static const char *const resolutions[] = {"lww", "priority", NULL};

#define O(f) offsetof(sync_conf_t, f)
static const conf_opt_t sync_schema[] = {
    {"site", CONF_T_STR, O(site), 0, 0, NULL, NULL, "this site's name (required)"},
    {"site_id", CONF_T_UINT, O(site_id), 1, 65535, NULL, NULL,
     "this site's id, unique in the cluster; breaks timestamp ties (required)"},
    {"backend", CONF_T_ENUM, O(backend), 0, 0, "sqlite", backends, "database kind"},
    {"database", CONF_T_STR, O(database), 0, 0, NULL, NULL,
     "SQLite file path, or PostgreSQL conninfo (required)"},
    {"tables", CONF_T_STRS, O(tables), 0, 0, NULL, NULL, "tables to replicate (required)"},
    {"listen", CONF_T_ADDR, O(listen), 7800, 0, NULL, NULL,
     "address peers connect to (required), default port 7800"},
    {"key_file", CONF_T_STR, O(key_file), 0, 0, NULL, NULL,
     "pre-shared key file, 64 hex digits from `multisite-syncd keygen` (required)"},
    {"status_socket", CONF_T_STR, O(status_socket), 0, 0, NULL, NULL,
     "local unix socket for status (default: DATABASE.sock for SQLite, "
     "/tmp/multisite-syncd-SITE.sock for PostgreSQL)"},
    {"max_clock_skew", CONF_T_DURATION, O(max_clock_skew_ms), 0, 3600000, "60s", NULL,
     "changes stamped further in the future are held back"},
    {"batch_rows", CONF_T_UINT, O(batch_rows), 1, 50000, "2000", NULL,
     "rows per batch and per apply transaction"},
    {"poll_interval", CONF_T_DURATION, O(poll_ms), 1, 10000, "10ms", NULL,
     "how often to look for new local changes"},
    {"resolution", CONF_T_ENUM, O(resolution), 0, 0, "lww", resolutions,
     "conflict rule: lww (later timestamp wins, then higher site id) or priority"},
    {"priority", CONF_T_UINT, O(priority), 0, 1000, "0", NULL,
     "this site's priority (resolution: priority)"},
    {"log_level", CONF_T_ENUM, O(log_level), 0, 0, "info", conf_log_levels, "log verbosity"},
    /* 30 days is the most an unsigned millisecond field holds with a margin (49 days). */
    {"max_peer_offline", CONF_T_DURATION, O(max_peer_offline_ms), 0, 30 * 86400000u, "7d", NULL,
     "a peer whose oldest unacknowledged change is older than this must re-join (its backlog "
     "is no longer kept); 0 = keep backlog forever"},
    {"tombstone_retention", CONF_T_DURATION, O(tombstone_retention_ms), 0, 30 * 86400000u, "7d",
     NULL,
     "a deleted row's tombstone is purged once every peer acknowledged it and it is older than "
     "this; at least max_peer_offline; 0 = keep tombstones forever"},
    {"quarantine_retention", CONF_T_DURATION, O(quarantine_retention_ms), 0, 30 * 86400000u, "30d",
     NULL,
     "a quarantined change that still fails to apply this long after it was quarantined is "
     "deleted (it is lost at this site); 0 = keep quarantined changes forever"},
    {"peers", CONF_T_CUSTOM, 0, 0, 0, NULL, NULL, "list of {name, id, address, priority}"},
};
#undef O

#define P(f) offsetof(sync_peer_conf_t, f)
static const conf_opt_t peer_schema[] = {
    {"name", CONF_T_STR, P(name), 0, 0, NULL, NULL, "peer site name (required)"},
    {"id", CONF_T_UINT, P(id), 1, 65535, NULL, NULL, "peer site id (required)"},
    {"address", CONF_T_ADDR, P(addr), 7800, 0, NULL, NULL, "peer's listen address (required)"},
    {"priority", CONF_T_UINT, P(priority), 0, 1000, "0", NULL, "peer's priority"},
};
#undef P

bool sync_ident_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_')) {
            return false;
        }
    }
    return true;
}

static bool ident_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

unsigned sync_split_names(const char *s, char **out, unsigned max)
{
    unsigned n = 0;
    while (*s && n < max) {
        while (*s && !ident_char(*s)) {
            s++;
        }
        size_t len = 0;
        while (ident_char(s[len])) {
            len++;
        }
        if (len == 0) {
            break;
        }
        out[n++] = xstrndup(s, len);
        s += len;
    }
    return n;
}

/* A replicated table's name: also not starting with a digit nor with our own prefix. */
static bool ident_ok(const char *s)
{
    return sync_ident_ok(s, SYNC_MAX_NAME) && !(s[0] >= '0' && s[0] <= '9') &&
           strncmp(s, "rep_", 4) != 0;
}

static int load_peers(sync_conf_t *c, const conf_node_t *n, conf_err_t *err)
{
    if (!n || (n->kind == CONF_SCALAR &&
               (!n->value || !*n->value || !strcmp(n->value, "~") || !strcmp(n->value, "null")))) {
        return 0; /* a single site: nothing to sync with yet */
    }
    if (n->kind != CONF_SEQ) {
        conf_errf(err, n, "sync.peers: expected a list");
        return MS_ECONF;
    }
    c->peers = xcalloc(n->n ? n->n : 1, sizeof(*c->peers));
    for (size_t i = 0; i < n->n; i++) {
        const conf_node_t *p = n->items[i];
        sync_peer_conf_t *pc = &c->peers[c->npeers];
        if (conf_apply(p, peer_schema, MS_ARRAY_LEN(peer_schema), "sync.peers[]", pc, err) != 0) {
            return MS_ECONF;
        }
        c->npeers++;
        if (!pc->name || !conf_map_get(p, "id") || !conf_map_get(p, "address")) {
            conf_errf(err, p, "sync.peers[]: name, id and address are required");
            return MS_ECONF;
        }
        if (pc->id == c->site_id) {
            conf_errf(err, p, "sync.peers[]: id %u is this site's own id", pc->id);
            return MS_ECONF;
        }
        for (size_t j = 0; j + 1 < c->npeers; j++) {
            if (c->peers[j].id == pc->id) {
                conf_errf(err, p, "sync.peers[]: id %u listed twice", pc->id);
                return MS_ECONF;
            }
        }
    }
    return 0;
}

/* Purging a tombstone is safe only if a peer that has not seen the delete by then must re-join
 * (docs/sync.md §9): the retention may not be shorter than the backlog limit. */
static int check_retention(const sync_conf_t *c, const conf_node_t *s, conf_err_t *err)
{
    if (c->tombstone_retention_ms == 0) {
        return 0;
    }
    const conf_node_t *n = conf_map_get(s, "tombstone_retention");
    if (c->max_peer_offline_ms == 0) {
        conf_errf(err, n ? n : s,
                  "sync.tombstone_retention: needs a max_peer_offline limit (0 = unlimited keeps "
                  "backlog forever, so tombstones must be kept forever too: set 0)");
        return MS_ECONF;
    }
    if (c->tombstone_retention_ms < c->max_peer_offline_ms) {
        conf_errf(err, n ? n : s,
                  "sync.tombstone_retention: %ums is shorter than max_peer_offline (%ums): a peer "
                  "offline in between could bring a purged row back",
                  c->tombstone_retention_ms, c->max_peer_offline_ms);
        return MS_ECONF;
    }
    return 0;
}

int sync_conf_load(const char *path, sync_conf_t **out, conf_err_t *err)
{
    conf_doc_t *doc = NULL;
    if (conf_doc_load(path, &doc, err) != 0) {
        return MS_ECONF;
    }
    const conf_node_t *root = conf_doc_root(doc);
    const conf_node_t *s = conf_map_get(root, "sync");
    sync_conf_t *c = xcalloc(1, sizeof(*c));
    c->path = xstrdup(path);
    int rc = MS_ECONF;
    if (!s) {
        conf_errf(err, root, "sync: section missing");
        goto fail;
    }
    if (conf_apply(s, sync_schema, MS_ARRAY_LEN(sync_schema), "sync", c, err) != 0) {
        goto fail;
    }
    static const char *const required[] = {"site",   "site_id", "database",
                                           "tables", "listen",  "key_file"};
    for (size_t i = 0; i < MS_ARRAY_LEN(required); i++) {
        if (!conf_map_get(s, required[i])) {
            conf_errf(err, s, "sync.%s: required", required[i]);
            goto fail;
        }
    }
    if (c->tables.n == 0 || c->tables.n > SYNC_MAX_TABLES) {
        conf_errf(err, conf_map_get(s, "tables"), "sync.tables: 1 to %d tables", SYNC_MAX_TABLES);
        goto fail;
    }
    for (size_t i = 0; i < c->tables.n; i++) {
        if (!ident_ok(c->tables.v[i])) {
            conf_errf(err, conf_map_get(s, "tables"),
                      "sync.tables: '%s' is not a plain identifier (letters, digits, _; not "
                      "starting with rep_; at most 63)",
                      c->tables.v[i]);
            goto fail;
        }
    }
    if (load_peers(c, conf_map_get(s, "peers"), err) != 0) {
        goto fail;
    }
    if (check_retention(c, s, err) != 0) {
        goto fail;
    }
    if (!c->status_socket) {
        c->status_socket = c->backend == SYNC_BACKEND_SQLITE
                               ? xasprintf("%s.sock", c->database)
                               : xasprintf("/tmp/multisite-syncd-%s.sock", c->site);
    }
    if (strlen(c->status_socket) >= 100) {
        conf_errf(err, s, "sync.status_socket: path longer than 99 bytes");
        goto fail;
    }
    conf_doc_free(doc);
    *out = c;
    return 0;
fail:
    conf_doc_free(doc);
    sync_conf_free(c);
    return rc;
}

void sync_conf_free(sync_conf_t *c)
{
    if (!c) {
        return;
    }
    for (size_t i = 0; i < c->npeers; i++) {
        conf_release(peer_schema, MS_ARRAY_LEN(peer_schema), &c->peers[i]);
    }
    free(c->peers);
    conf_release(sync_schema, MS_ARRAY_LEN(sync_schema), c);
    free(c->path);
    free(c);
}

void sync_conf_print_schema(FILE *f)
{
    fprintf(f, "sync:\n");
    for (size_t i = 0; i < MS_ARRAY_LEN(sync_schema); i++) {
        const conf_opt_t *o = &sync_schema[i];
        fprintf(f, "  %-16s %s%s%s\n", o->name, o->help, o->def ? "; default " : "",
                o->def ? o->def : "");
    }
    fprintf(f, "sync.peers[]:\n");
    for (size_t i = 0; i < MS_ARRAY_LEN(peer_schema); i++) {
        fprintf(f, "  %-16s %s\n", peer_schema[i].name, peer_schema[i].help);
    }
}
