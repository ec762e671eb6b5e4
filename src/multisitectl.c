/* multisitectl.c: the control CLI: sends a command to multisited's control socket and prints
 * the reply (docs/ctl.md). Exit status: 0 ok, 1 the command failed, 2 usage, 3 no such site
 * or name, 4 protocol error, 5 the daemon is unreachable. */
#include "conf/conf.h"
#include "ctl/ctl.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: multisitectl [-s SOCKET | -c CONFIG] [-t TIMEOUT_MS] COMMAND [ARGS]\n"
            "commands:\n"
            "  status [--json]                      sites, verdicts with reasons, answers\n"
            "  drain SITE [--hard]                  put SITE last in every answer (--hard: out)\n"
            "  drain SITE/WEB | undrain SITE[/WEB]  one web server counts as down\n"
            "  force SITE up|down|clear [--for D]   override the verdict (D: 30s, 10m, 2h)\n"
            "  explain NAME CLIENT_IP [--ecs NET]   the order that client gets, and why\n"
            "  reload                               reload config and zones (all or nothing)\n"
            "The socket defaults to the config's server.control-socket, else "
            "/run/multisited.sock.\n");
}

int main(int argc, char **argv)
{
    const char *sock = NULL, *conf_path = NULL;
    unsigned timeout = 10000;
    int o;
    static const struct option opts[] = {{"socket", required_argument, NULL, 's'},
                                         {"config", required_argument, NULL, 'c'},
                                         {"timeout", required_argument, NULL, 't'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    while ((o = getopt_long(argc, argv, "+s:c:t:h", opts, NULL)) != -1) {
        uint64_t v;
        switch (o) {
        case 's': sock = optarg; break;
        case 'c': conf_path = optarg; break;
        case 't':
            if (!parse_u64(optarg, &v) || v < 1 || v > 600000) {
                fprintf(stderr, "multisitectl: -t: 1..600000 ms\n");
                return CTL_EUSAGE;
            }
            timeout = (unsigned)v;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return CTL_EUSAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return CTL_EUSAGE;
    }
    log_init("multisitectl", false, LOG_LVL_WARN);
    conf_t *c = NULL;
    if (!sock && conf_path) {
        conf_err_t err;
        if (conf_load(conf_path, &c, &err) != 0) {
            fprintf(stderr, "multisitectl: %s\n", err.msg);
            return CTL_EUSAGE;
        }
        sock = c->control_socket;
    }
    if (!sock || !*sock) {
        sock = "/run/multisited.sock";
    }
    buf_t out;
    buf_init(&out);
    int st =
        ctl_call(sock, (size_t)(argc - optind), (const char *const *)argv + optind, &out, timeout);
    if (st < 0) {
        fprintf(stderr, "multisitectl: %s\n", out.data ? (char *)out.data : "error");
        st = 5;
    } else if (out.len) {
        fwrite(out.data, 1, out.len, st == CTL_OK ? stdout : stderr);
    }
    buf_deinit(&out);
    conf_free(c);
    return st;
}
