/* multisited.c: the multisite DNS daemon's entry: arguments, config check, snapshot, DNS
 * threads, and the control-plane event loop (signals now; probes and heartbeats later). */
#include "dns/dns.h"
#include "cluster/cluster.h"
#include "ctl/ctl.h"
#include "heartbeat/heartbeat.h"
#include "status/status.h"

#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

typedef struct {
    const char *conf_path;
    bool check_only;
    /* quick mode */
    char **zone_args;
    size_t n_zone_args;
    char **listen_args;
    size_t n_listen_args;
    int udp_threads, tcp_threads;
    const char *identity, *nsid, *chaos_version;
    const char *log_level;
    const char *control_socket;
} args_t;

static args_t args;
static uv_loop_t *loop;
static dns_server_t *server;
static cluster_t *cluster;
static ctl_server_t *ctl;
static status_server_t *status;

static void usage(FILE *f)
{
    fprintf(f, "usage: multisited -c FILE [-t]         serve (or with -t: check) a config file\n"
               "       multisited --zone ORIGIN=FILE [--zone ...] --listen ADDR:PORT [...]\n"
               "                  [--udp-threads N] [--tcp-threads N] [--identity S]\n"
               "                  [--nsid S] [--version S] [--log-level L]\n"
               "                  [--control-socket PATH]\n"
               "       multisited keygen [--add] FILE   write a heartbeat key file (0600)\n"
               "       multisited --help-config         list every config option\n"
               "       multisited -V                    print the program version\n");
}

/* Build the configuration from the config file or the quick-mode arguments. */
static int make_conf(conf_t **out, char *err, size_t errlen)
{
    if (args.conf_path) {
        conf_err_t ce;
        if (conf_load(args.conf_path, out, &ce) != 0) {
            snprintf(err, errlen, "%s", ce.msg);
            return MS_ECONF;
        }
        return 0;
    }
    conf_t *c = conf_new_default();
    for (size_t i = 0; i < args.n_zone_args; i++) {
        char *eq = strchr(args.zone_args[i], '=');
        if (!eq || eq == args.zone_args[i] || !eq[1]) {
            snprintf(err, errlen, "--zone %s: expected ORIGIN=FILE", args.zone_args[i]);
            conf_free(c);
            return MS_ECONF;
        }
        *eq = '\0';
        conf_add_zone(c, args.zone_args[i], eq + 1);
        *eq = '=';
    }
    for (size_t i = 0; i < args.n_listen_args; i++) {
        net_addr_t a;
        if (net_parse_addr(args.listen_args[i], 53, &a) != 0) {
            snprintf(err, errlen, "--listen %s: not an address (ADDR:PORT or [V6]:PORT)",
                     args.listen_args[i]);
            conf_free(c);
            return MS_ECONF;
        }
        conf_add_listen(c, &a);
    }
    if (c->listen.n == 0) {
        net_addr_t a;
        if (net_parse_addr("127.0.0.1:53", 53, &a) == 0) {
            conf_add_listen(c, &a);
        }
    }
    if (args.udp_threads > 0) {
        c->udp_threads = (unsigned)args.udp_threads;
    }
    if (args.tcp_threads > 0) {
        c->tcp_threads = (unsigned)args.tcp_threads;
    }
    if (args.identity) {
        free(c->identity);
        c->identity = xstrdup(args.identity);
    }
    if (args.nsid) {
        free(c->nsid);
        c->nsid = xstrdup(args.nsid);
    }
    if (args.chaos_version) {
        free(c->version);
        c->version = xstrdup(args.chaos_version);
    }
    if (args.control_socket) {
        free(c->control_socket);
        c->control_socket = xstrdup(args.control_socket);
    }
    if (args.log_level) {
        bool found = false;
        for (unsigned i = 0; conf_log_levels[i]; i++) {
            if (strcmp(conf_log_levels[i], args.log_level) == 0) {
                c->log_level = i;
                found = true;
            }
        }
        if (!found) {
            snprintf(err, errlen, "--log-level %s: expected error, warning, info or debug",
                     args.log_level);
            conf_free(c);
            return MS_ECONF;
        }
    }
    *out = c;
    return 0;
}

static int build_snapshot(snap_t **out, char *err, size_t errlen)
{
    conf_t *c = NULL;
    if (make_conf(&c, err, errlen) != 0) {
        log_err("%s", err);
        return MS_ECONF;
    }
    if (c->n_zones == 0) {
        log_warn("no zones configured: every query will be REFUSED");
    }
    int rc = snap_build(c, out, err, errlen);
    if (rc != 0) {
        log_err("%s", err);
    }
    return rc;
}

/* Reload config and zones; all or nothing. Returns 0, or MS_ECONF with the reason in err. */
static int do_reload(char *err, size_t errlen)
{
    log_info("reloading %s", args.conf_path ? args.conf_path : "zones");
    (void)notify_service("RELOADING=1");
    snap_t *s = NULL;
    if (build_snapshot(&s, err, errlen) != 0) {
        log_err("reload failed; still serving the previous configuration and zones");
        (void)notify_service("READY=1\nSTATUS=reload failed; serving the previous "
                             "configuration");
        return MS_ECONF;
    }
    const conf_t *old = snap_current()->conf;
    if (old->listen.n != s->conf->listen.n ||
        memcmp(old->listen.v, s->conf->listen.v, old->listen.n * sizeof(net_addr_t)) != 0 ||
        old->udp_threads != s->conf->udp_threads || old->tcp_threads != s->conf->tcp_threads ||
        strcmp(old->control_socket, s->conf->control_socket) != 0 ||
        strcmp(old->status_listen, s->conf->status_listen) != 0) {
        log_warn("reload: listen addresses, thread counts, the control socket and the status "
                 "endpoint change only on restart");
    }
    log_set_level((log_level_t)s->conf->log_level);
    snap_publish(s);
    if (cluster_reload(cluster) != 0) {
        log_err("reload: cannot start the probes or heartbeats of the new configuration");
    }
    log_info("reload done: generation %llu", (unsigned long long)s->generation);
    (void)notify_service("READY=1\nSTATUS=reloaded");
    return 0;
}

static void on_reload(uv_signal_t *h, int signum)
{
    (void)h;
    (void)signum;
    char err[1024];
    log_info("SIGHUP");
    (void)do_reload(err, sizeof(err));
}

static uint16_t on_ctl(void *ud, const ctl_request_t *req, buf_t *out)
{
    (void)ud;
    if (strcmp(req->argv[0], "reload") == 0) {
        char err[1024] = "";
        if (do_reload(err, sizeof(err)) != 0) {
            buf_printf(out, "reload failed, still serving the previous configuration:\n%s\n", err);
            return CTL_EFAIL;
        }
        buf_printf(out, "reloaded: generation %llu\n",
                   (unsigned long long)snap_current()->generation);
        return CTL_OK;
    }
    uint16_t st = (uint16_t)cluster_ctl(cluster, req->argc, req->argv, out);
    const uint8_t *doc;
    size_t dl;
    if (st == CTL_OK && strcmp(req->argv[0], "status") == 0 && status_sync_doc(status, &doc, &dl)) {
        /* Replication lag, backlog and conflicts, from multisite-syncd's status socket. */
        while (dl && (doc[dl - 1] == '\n' || doc[dl - 1] == ' ')) {
            dl--;
        }
        if (req->argc > 1 && strcmp(req->argv[1], "--json") == 0 && out->len >= 2 &&
            memcmp(out->data + out->len - 2, "}\n", 2) == 0) {
            out->len -= 2;
            buf_printf(out, ",\"sync\":%.*s}\n", (int)dl, (const char *)doc);
        } else {
            buf_printf(out, "\nREPLICATION (multisite-syncd status --json)\n%.*s\n", (int)dl,
                       (const char *)doc);
        }
    }
    return st;
}

static void on_stop(uv_signal_t *h, int signum)
{
    (void)h;
    log_info("signal %d: stopping", signum);
    uv_stop(loop);
}

static int parse_args(int argc, char **argv)
{
    enum {
        OPT_ZONE = 256,
        OPT_LISTEN,
        OPT_UDP,
        OPT_TCP,
        OPT_ID,
        OPT_NSID,
        OPT_VER,
        OPT_HELPC,
        OPT_LOG,
        OPT_CTL
    };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 't'},
        {"zone", required_argument, NULL, OPT_ZONE},
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"udp-threads", required_argument, NULL, OPT_UDP},
        {"tcp-threads", required_argument, NULL, OPT_TCP},
        {"identity", required_argument, NULL, OPT_ID},
        {"nsid", required_argument, NULL, OPT_NSID},
        {"version", required_argument, NULL, OPT_VER},
        {"log-level", required_argument, NULL, OPT_LOG},
        {"control-socket", required_argument, NULL, OPT_CTL},
        {"help-config", no_argument, NULL, OPT_HELPC},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "c:thV", opts, NULL)) != -1) {
        uint64_t v;
        switch (o) {
        case 'c': args.conf_path = optarg; break;
        case 't': args.check_only = true; break;
        case OPT_ZONE:
            args.zone_args = xrealloc(args.zone_args, (args.n_zone_args + 1) * sizeof(char *));
            args.zone_args[args.n_zone_args++] = optarg;
            break;
        case OPT_LISTEN:
            args.listen_args =
                xrealloc(args.listen_args, (args.n_listen_args + 1) * sizeof(char *));
            args.listen_args[args.n_listen_args++] = optarg;
            break;
        case OPT_UDP:
        case OPT_TCP:
            if (!parse_u64(optarg, &v) || v < 1 || v > 64) {
                fprintf(stderr, "multisited: --%s: expected 1..64\n",
                        o == OPT_UDP ? "udp-threads" : "tcp-threads");
                return 2;
            }
            *(o == OPT_UDP ? &args.udp_threads : &args.tcp_threads) = (int)v;
            break;
        case OPT_ID: args.identity = optarg; break;
        case OPT_NSID: args.nsid = optarg; break;
        case OPT_VER: args.chaos_version = optarg; break;
        case OPT_LOG: args.log_level = optarg; break;
        case OPT_CTL: args.control_socket = optarg; break;
        case OPT_HELPC: conf_print_schema(stdout); exit(0);
        case 'V': printf("multisited %s\n", MS_VERSION); exit(0);
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "multisited: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (args.conf_path && (args.n_zone_args || args.n_listen_args)) {
        fprintf(stderr, "multisited: -c and --zone/--listen are exclusive\n");
        return 2;
    }
    if (!args.conf_path && !args.n_zone_args) {
        usage(stderr);
        return 2;
    }
    return 0;
}

/* multisited keygen [--add] FILE: a pre-shared heartbeat key file (mode 0600). */
static int keygen_main(int argc, char **argv)
{
    bool add = argc == 4 && strcmp(argv[2], "--add") == 0;
    if (argc != 3 && !add) {
        fprintf(stderr, "usage: multisited keygen [--add] FILE\n");
        return 2;
    }
    log_init("multisited", false, LOG_LVL_INFO);
    const char *path = argv[argc - 1];
    if (hb_keygen(path, add) != 0) {
        return 1;
    }
    printf("%s: %s\n", path,
           add ? "new key added as verify-only (rotation: docs/heartbeat.md)" : "key written");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "keygen") == 0) {
        return keygen_main(argc, argv);
    }
    int rc = parse_args(argc, argv);
    if (rc != 0) {
        return rc;
    }
    log_init("multisited", false, LOG_LVL_INFO);
    signal(SIGPIPE, SIG_IGN);
    snap_reader_register(); /* the main thread publishes and frees snapshots */
    snap_t *s = NULL;
    char err[1024];
    if (build_snapshot(&s, err, sizeof(err)) != 0) {
        return 1;
    }
    if (args.check_only) {
        printf("%s: OK (%zu zones)\n", args.conf_path ? args.conf_path : "command line",
               zone_db_count(s->zones));
        snap_free(s);
        return 0;
    }
    if (s->conf->log_syslog) {
        log_init("multisited", true, (log_level_t)s->conf->log_level);
    } else {
        log_set_level((log_level_t)s->conf->log_level);
    }
    snap_publish(s);
    if (dns_server_start(s->conf, &server) != 0) {
        snap_shutdown();
        return 1;
    }
    loop = uv_default_loop();
    /* From here on `s` may be replaced (and freed after a grace period) by the snapshots
     * the cluster publishes; the config and zones it points to are shared and stay. */
    const conf_t *conf = s->conf;
    const zone_db_t *zones = s->zones;
    s = NULL;
    if (cluster_new(loop, &cluster) != 0) {
        dns_server_stop(server);
        snap_shutdown();
        return 1;
    }
    if (conf->control_socket && *conf->control_socket &&
        ctl_server_new(loop, conf->control_socket, on_ctl, NULL, &ctl) != 0) {
        log_warn("running without a control socket (multisitectl will not reach this daemon)");
    }
    if (*conf->status_listen && status_server_new(loop, conf, cluster, server, &status) != 0) {
        log_warn("running without the status endpoint (/status, /metrics, dashboard)");
    }
    uv_signal_t sig_hup, sig_term, sig_int;
    uv_signal_init(loop, &sig_hup);
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_start(&sig_hup, on_reload, SIGHUP);
    uv_signal_start(&sig_term, on_stop, SIGTERM);
    uv_signal_start(&sig_int, on_stop, SIGINT);
    {
        char ab[NET_ADDR_STRLEN];
        for (size_t i = 0; i < conf->listen.n; i++) {
            log_info("listening on %s (UDP x%u, TCP)",
                     net_addr_str(&conf->listen.v[i], ab, sizeof(ab)), conf->udp_threads);
        }
        log_info("ready: %zu zones, generation %llu", zone_db_count(zones),
                 (unsigned long long)snap_current()->generation);
        char st[128];
        snprintf(st, sizeof(st), "READY=1\nSTATUS=serving %zu zones\nMAINPID=%ld",
                 zone_db_count(zones), (long)getpid());
        (void)notify_service(st);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    (void)notify_service("STOPPING=1");
    status_server_free(status); /* before the cluster it renders */
    status = NULL;
    cluster_free(cluster);
    cluster = NULL;
    ctl_server_free(ctl);
    ctl = NULL;
    dns_server_stop(server);
    uv_close((uv_handle_t *)&sig_hup, NULL);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_run(loop, UV_RUN_DEFAULT); /* let every closing handle finish */
    snap_shutdown();
    snap_reader_unregister();
    free(args.zone_args);
    free(args.listen_args);
    log_info("stopped");
    return 0;
}
