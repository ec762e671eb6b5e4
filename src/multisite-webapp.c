/* multisite-webapp.c: the demo web app's entry: arguments, then serve until SIGTERM/SIGINT.
 * Everything else is in src/webapp/ (webapp.h describes the pages). */
#include "webapp/webapp.h"

#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: multisite-webapp --listen ADDR:PORT --db SPEC --name WEB --site SITE\n"
            "                        [--db-identity NAME] [--init] [--log-level LEVEL]\n"
            "  --db sqlite:PATH | postgresql://USER@HOST:PORT/DB | 'host=... dbname=...'\n"
            "  --db-identity   the database's name, printed by GET /db (health checks look\n"
            "                  for it); set at init, default: keep the stored one, else db-SITE\n"
            "  --init          create the tables and the identity row, then exit\n"
            "  --log-level     error, warning, info (default) or debug\n"
            "  -V              print the program version\n");
}

int main(int argc, char **argv)
{
    enum { OPT_LISTEN = 256, OPT_DB, OPT_NAME, OPT_SITE, OPT_IDENT, OPT_INIT, OPT_LOG };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"db", required_argument, NULL, OPT_DB},
        {"name", required_argument, NULL, OPT_NAME},
        {"site", required_argument, NULL, OPT_SITE},
        {"db-identity", required_argument, NULL, OPT_IDENT},
        {"init", no_argument, NULL, OPT_INIT},
        {"log-level", required_argument, NULL, OPT_LOG},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static const char *const levels[] = {"error", "warning", "info", "debug"};
    webapp_conf_t c = {0};
    bool init_only = false;
    log_level_t level = LOG_LVL_INFO;
    int o;
    while ((o = getopt_long(argc, argv, "hV", opts, NULL)) != -1) {
        switch (o) {
        case OPT_LISTEN: c.listen = optarg; break;
        case OPT_DB: c.db = optarg; break;
        case OPT_NAME: c.name = optarg; break;
        case OPT_SITE: c.site = optarg; break;
        case OPT_IDENT: c.db_identity = optarg; break;
        case OPT_INIT: init_only = true; break;
        case OPT_LOG: {
            size_t i;
            for (i = 0; i < MS_ARRAY_LEN(levels) && strcmp(levels[i], optarg) != 0; i++) {
            }
            if (i == MS_ARRAY_LEN(levels)) {
                fprintf(stderr,
                        "multisite-webapp: --log-level %s: expected error, warning, "
                        "info or debug\n",
                        optarg);
                return 2;
            }
            level = (log_level_t)i;
            break;
        }
        case 'V': printf("multisite-webapp %s\n", MS_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || !c.db || !c.site || (!init_only && (!c.listen || !c.name))) {
        usage(stderr);
        return 2;
    }
    if (c.db_identity && (!*c.db_identity || strlen(c.db_identity) > 100)) {
        fprintf(stderr, "multisite-webapp: --db-identity: expected 1..100 characters\n");
        return 2;
    }
    log_init("multisite-webapp", false, level);

    char err[512];
    if (init_only) {
        if (webapp_init_db(&c, err, sizeof(err)) != 0) {
            log_err("init: %s", err);
            return 1;
        }
        log_info("init: tables ready");
        return 0;
    }

    /* Block the stop signals before any thread starts, so libmicrohttpd's threads inherit the
     * mask and only sigwait below sees them. libpq and our sockets never want SIGPIPE. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    webapp_t *w;
    if (webapp_start(&c, &w, err, sizeof(err)) != 0) {
        log_err("%s", err);
        return 1;
    }
    log_info("%s/%s listening on %s, port %u, database %s", c.site, c.name, c.listen,
             webapp_port(w), strncmp(c.db, "sqlite:", 7) == 0 ? c.db : "(postgresql)");
    int sig = 0;
    sigwait(&stop, &sig);
    log_info("signal %d: stopping", sig);
    webapp_stop(w);
    return 0;
}
