/* conf.h: the conf module's interface: a YAML document as a tree with line numbers, a
 * declarative schema engine that validates sections of it into structs, and the validated,
 * immutable configuration of multisited (conf_t).
 *
 * Other daemons (multisite-syncd) use the document and schema engine for their own
 * sections of the same file format. Nothing here is thread-safe; a conf_t once loaded is
 * never modified and may be read from any thread. */
#ifndef MS_CONF_H
#define MS_CONF_H

#include "util/util.h"

/* ---- document tree ---- */
typedef enum { CONF_SCALAR, CONF_MAP, CONF_SEQ } conf_kind_t;

typedef struct conf_node conf_node_t;
struct conf_node {
    conf_kind_t kind;
    const char *value; /* CONF_SCALAR: the text */
    const char *file;  /* where it was written, for errors */
    int line;
    size_t n;          /* CONF_MAP / CONF_SEQ: number of children */
    const char **keys; /* CONF_MAP: keys[i] names items[i] */
    int *key_lines;    /* CONF_MAP: line of keys[i] */
    conf_node_t **items;
};

typedef struct conf_doc conf_doc_t;

typedef struct {
    char msg[512]; /* "FILE:LINE: option: reason" */
} conf_err_t;

/* Load and parse a YAML file (max 16 MiB). Aliases, duplicate keys and documents other
 * than a single mapping are errors. Returns 0 or MS_ECONF with err filled in. */
int conf_doc_load(const char *path, conf_doc_t **out, conf_err_t *err) MS_WUR;
/* Same from a string; `name` stands in for the file name in errors. */
int conf_doc_parse(const char *name, const char *text, size_t len, conf_doc_t **out,
                   conf_err_t *err) MS_WUR;
const conf_node_t *conf_doc_root(const conf_doc_t *doc);
void conf_doc_free(conf_doc_t *doc);

/* Child of a map by key, or NULL. */
const conf_node_t *conf_map_get(const conf_node_t *map, const char *key);
void conf_errf(conf_err_t *err, const conf_node_t *at, const char *fmt, ...) MS_PRINTF(3, 4);

/* ---- schema engine ---- */
typedef enum {
    CONF_T_STR,      /* char *, heap copy */
    CONF_T_UINT,     /* unsigned, range [min, max] */
    CONF_T_BOOL,     /* bool: true/false/yes/no/on/off */
    CONF_T_DURATION, /* unsigned milliseconds; "250ms", "2s", "1m", "1h", plain number = s */
    CONF_T_ADDR,     /* net_addr_t, port default in min */
    CONF_T_ADDRS,    /* conf_addrs_t: one address or a list of them, port default in min */
    CONF_T_STRS,     /* conf_strs_t: one string or a list */
    CONF_T_ENUM,     /* unsigned index into a NULL-terminated `choices` */
    CONF_T_CUSTOM    /* handled by the caller: the engine only accepts the key */
} conf_type_t;

typedef struct {
    net_addr_t *v;
    size_t n;
} conf_addrs_t;

typedef struct {
    char **v;
    size_t n;
} conf_strs_t;

typedef struct {
    const char *name;
    conf_type_t type;
    size_t offset; /* into the target struct */
    uint64_t min, max;
    const char *def; /* default as text, parsed like a config value; NULL: none/empty */
    const char *const *choices;
    const char *help;
} conf_opt_t;

/* Validate map `node` (may be NULL: all defaults) against `schema` and store the values into
 * `out`. Unknown keys are errors. `section` prefixes option names in messages. */
int conf_apply(const conf_node_t *node, const conf_opt_t *schema, size_t n_schema,
               const char *section, void *out, conf_err_t *err) MS_WUR;
/* Free the heap values that conf_apply stored (strings, lists). */
void conf_release(const conf_opt_t *schema, size_t n_schema, void *out);

/* ---- multisited configuration ---- */
typedef struct {
    char *origin; /* as written, e.g. "example.com." */
    char *file;   /* resolved against the config file's directory */
    const char *src_file;
    int src_line;
} conf_zone_t;

/* A probe's settings (web servers share one per site). */
enum { CONF_PROBE_TCP = 0, CONF_PROBE_HTTP = 1, CONF_PROBE_HTTPS = 2 };
extern const char *const conf_probe_types[]; /* "tcp", "http", "https" */

typedef struct {
    unsigned type;          /* CONF_PROBE_* */
    char *path;             /* HTTP(S) request path */
    char *host;             /* Host header and TLS SNI; NULL: the address */
    unsigned expect_status; /* required HTTP status */
    conf_strs_t expect;     /* keywords that must all appear in the body */
    bool tls_verify;        /* verify the server certificate (HTTPS) */
    unsigned interval_ms, timeout_ms, rise, fall;
} conf_check_t;

typedef struct {
    char *name;
    net_addr_t addr; /* where the probe connects */
} conf_web_t;

typedef struct {
    char *name;         /* the database server's name; the default keyword */
    char *url;          /* the page a web server executes against the database */
    net_addr_t connect; /* connect here instead of resolving the URL's host */
    bool has_connect;
    conf_check_t check; /* expect defaults to [name]; type/path come from url */
} conf_db_t;

typedef struct {
    char *stats;       /* HAProxy runtime API: "unix:/path" or "ADDR:PORT" */
    char *web_backend; /* backend whose servers are the web tier */
    char *db_backend;  /* backend that checks the database page; NULL: none */
    unsigned interval_ms, timeout_ms;
} conf_lb_t;

enum {
    CONF_MONITOR_AUTO = 0,
    CONF_MONITOR_PROBE = 1,
    CONF_MONITOR_HEARTBEAT = 2,
    CONF_MONITOR_BOTH = 3
};
extern const char *const conf_monitors[]; /* "auto", "probe", "heartbeat", "both" */

typedef struct {
    char *name;
    conf_addrs_t addrs;    /* answer addresses (v4 and/or v6; ports ignored) */
    conf_addrs_t hb_peers; /* heartbeat addresses of this site's multisited instances */
    unsigned monitor;      /* CONF_MONITOR_*; AUTO resolved at load (see sites.c) */
    bool has_location;     /* for geographic distance ordering */
    double lat, lon;
    unsigned min_web; /* k of n web servers must be up */
    conf_web_t *web;
    size_t n_web;
    conf_check_t web_check;
    bool has_db;
    conf_db_t db;
    bool has_lb;
    conf_lb_t lb;
    const char *src_file;
    int src_line;
} conf_site_t;

enum { CONF_FALLBACK_ALL = 0, CONF_FALLBACK_LAST = 1, CONF_FALLBACK_SERVFAIL = 2 };
enum { CONF_PARTITION_AVAILABILITY = 0, CONF_PARTITION_SAFETY = 1 };
extern const char *const conf_partitions[]; /* "availability", "safety" */
extern const char *const conf_fallbacks[];  /* "all", "last", "servfail" */

/* Ordering policies, applied in the order listed (e.g. locality, then load); the configured
 * site order breaks the remaining ties. weighted draws the first site per query. */
enum {
    CONF_ORDER_STATIC = 0,
    CONF_ORDER_LOCALITY,
    CONF_ORDER_LOAD,
    CONF_ORDER_RTT,
    CONF_ORDER_WEIGHTED,
    CONF_ORDER_MAX
};
extern const char *const conf_orders[]; /* "static", "locality", "load", "rtt", "weighted" */

typedef struct {
    char *name;    /* as written */
    size_t *sites; /* indices into conf_t.sites, in the configured order */
    size_t n_sites;
    unsigned order[CONF_ORDER_MAX]; /* CONF_ORDER_* */
    size_t n_order;
    unsigned load_tolerance; /* percent: loads closer than this keep their order */
    unsigned rtt_tolerance_ms;
    unsigned *weights; /* per entry of sites[] */
    unsigned ttl;
    unsigned ttl_min;   /* B1: TTL while a site's state may change soon */
    unsigned fallback;  /* CONF_FALLBACK_* when no site is available */
    unsigned partition; /* CONF_PARTITION_*: heartbeat and probe of a remote site disagree */
    const char *src_file;
    int src_line;
} conf_name_t;

typedef struct {
    uint8_t family; /* AF_INET or AF_INET6 */
    uint8_t len;    /* prefix length */
    uint8_t addr[16];
} conf_prefix_t;

typedef struct {
    char *name;
    conf_prefix_t *subnets;
    size_t n_subnets;
    size_t *prefer; /* site indices, nearest first; sites not listed follow */
    size_t n_prefer;
    const char *src_file;
    int src_line;
} conf_region_t;

typedef struct {
    char code[8];   /* ISO country code ("DE") or continent code ("EU"), upper case */
    bool continent; /* code is a continent code (AF AN AS EU NA OC SA) */
    size_t region;  /* index into conf_t.regions */
} conf_geomap_t;

/* heartbeat: this multisited's identity among the sites, and the heartbeat protocol. */
typedef struct {
    bool enabled;         /* the section is present */
    char *self;           /* the site this multisited belongs to */
    size_t self_site;     /* its index in conf_t.sites */
    char *id;             /* sender id, unique per multisited (default: host name) */
    conf_addrs_t listen;  /* UDP addresses heartbeats are received on */
    char *key_file;       /* pre-shared keys (multisited keygen), mode 0600 */
    unsigned interval_ms; /* time between heartbeats to each peer */
    unsigned period_ms;   /* a remote site needs a valid heartbeat in each period... */
    unsigned periods;     /* ...of the last N periods */
    unsigned max_skew_ms; /* heartbeats whose timestamp is further off are rejected */
} conf_hb_t;

typedef struct conf {
    char *path; /* the config file, NULL in quick mode */
    /* server: */
    char *identity; /* CHAOS id.server / hostname.bind; "" hides */
    char *version;  /* CHAOS version.bind; "" hides */
    char *nsid;     /* NSID payload (text or 0xHEX); "" disables NSID */
    conf_addrs_t listen;
    unsigned udp_threads;
    unsigned tcp_threads;
    unsigned tcp_idle_timeout_ms;
    unsigned tcp_max_clients;
    unsigned udp_max_payload;
    unsigned log_level; /* index into conf_log_levels */
    bool log_syslog;
    char *control_socket;     /* multisitectl's unix socket; "" = none */
    char *state_file;         /* operator state (drain, force) kept across restarts; "" = none */
    char *status_listen;      /* status HTTP endpoint ADDR:PORT (/status, /metrics, /); "" = none */
    char *sync_status_socket; /* multisite-syncd's status socket, shown on it; "" = none */
    /* zones: */
    conf_zone_t *zones;
    size_t n_zones;
    /* sites: and names: (load-balanced names) */
    conf_site_t *sites;
    size_t n_sites;
    conf_name_t *names;
    size_t n_names;
    conf_hb_t hb;
    /* regions: client subnets -> a preferred site order (locality) */
    conf_region_t *regions;
    size_t n_regions;
    /* geoip: */
    char *geoip_db;        /* MaxMind GeoIP2/GeoLite2 database file */
    conf_geomap_t *geomap; /* country or continent code -> region */
    size_t n_geomap;
} conf_t;

extern const char *const conf_log_levels[]; /* "error", "warning", "info", "debug" */

/* Load and validate a multisited config file. Returns 0 or MS_ECONF with err filled in. */
int conf_load(const char *path, conf_t **out, conf_err_t *err) MS_WUR;
/* Defaults for quick mode (no file); the caller adds listen addresses and zones. */
conf_t *conf_new_default(void);
void conf_add_zone(conf_t *c, const char *origin, const char *file);
void conf_add_listen(conf_t *c, const net_addr_t *a);
void conf_free(conf_t *c);
/* A path from the config file: absolute as given, else relative to the config file's
 * directory (or as given when there is no config file). Heap copy. */
char *conf_resolve_path(const char *conf_path, const char *p);
/* Parse "192.0.2.0/24" or "2001:db8::/32" (host bits must be zero). */
int conf_parse_prefix(const char *s, conf_prefix_t *out) MS_WUR;
/* Print the schema (option, type, default, range, help): `multisited --help-config`. */
void conf_print_schema(FILE *f);

#endif
