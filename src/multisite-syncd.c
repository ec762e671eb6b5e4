/* multisite-syncd.c: entry point of the sync daemon: argument parsing and dispatch (thin).
 *
 *   multisite-syncd -c FILE [run]          run the agent
 *   multisite-syncd -c FILE init           install change capture for the configured tables
 *   multisite-syncd -c FILE join --from SRC make this (new) site a copy of a running site
 *                                          (SRC: its SQLite file or PostgreSQL conninfo)
 *   multisite-syncd -c FILE status [--json]
 *   multisite-syncd -c FILE remove-peer ID     forget a peer for good (no longer in sync.peers)
 *   multisite-syncd -c FILE readmit-peer ID    stop refusing a peer that re-joined
 *   multisite-syncd keygen                 print a new pre-shared key
 *   multisite-syncd --help-config          the `sync:` options */
#include "sync/sync.h"

#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: multisite-syncd -c FILE [run | init | status [--json] | join --from DB |\n"
               "                                 remove-peer ID | readmit-peer ID]\n"
               "       multisite-syncd keygen\n"
               "       multisite-syncd --help-config | --version\n");
}

int main(int argc, char **argv)
{
    const char *conf_path = NULL, *cmd = "run", *from = NULL, *arg = NULL;
    bool json = false, have_cmd = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            conf_path = argv[++i];
        } else if (strcmp(argv[i], "--from") == 0 && i + 1 < argc) {
            from = argv[++i];
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "--help-config") == 0) {
            sync_conf_print_schema(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("multisite-syncd %s\n", MS_VERSION);
            return 0;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (!have_cmd && argv[i][0] != '-') {
            cmd = argv[i];
            have_cmd = true;
        } else if (have_cmd && !arg && argv[i][0] != '-' &&
                   (strcmp(cmd, "remove-peer") == 0 || strcmp(cmd, "readmit-peer") == 0)) {
            arg = argv[i];
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (strcmp(cmd, "keygen") == 0) {
        return sync_cmd_keygen(stdout) == 0 ? 0 : 1;
    }
    if (strcmp(cmd, "run") != 0 && strcmp(cmd, "init") != 0 && strcmp(cmd, "status") != 0 &&
        strcmp(cmd, "join") != 0 && strcmp(cmd, "remove-peer") != 0 &&
        strcmp(cmd, "readmit-peer") != 0) {
        usage(stderr);
        return 2;
    }
    if (!conf_path) {
        fprintf(stderr, "multisite-syncd: -c FILE is required\n");
        return 2;
    }
    sync_conf_t *c = NULL;
    conf_err_t err;
    if (sync_conf_load(conf_path, &c, &err) != 0) {
        fprintf(stderr, "multisite-syncd: %s\n", err.msg);
        return 1;
    }
    log_init("multisite-syncd", false, (log_level_t)c->log_level);
    int rc;
    if (strcmp(cmd, "init") == 0) {
        rc = sync_cmd_init(c);
    } else if (strcmp(cmd, "join") == 0) {
        if (!from) {
            fprintf(stderr, "multisite-syncd join: --from SOURCE_DATABASE is required\n");
            rc = MS_EINVAL;
        } else {
            rc = sync_cmd_join(c, from);
        }
    } else if (strcmp(cmd, "remove-peer") == 0) {
        rc = sync_cmd_remove_peer(c, arg);
    } else if (strcmp(cmd, "readmit-peer") == 0) {
        rc = sync_cmd_readmit_peer(c, arg);
    } else if (strcmp(cmd, "status") == 0) {
        rc = sync_cmd_status(c, json, stdout);
    } else {
        rc = sync_cmd_run(c);
    }
    sync_conf_free(c);
    return rc == 0 ? 0 : 1;
}
