/* life.c: the site lifecycle commands of multisite-syncd (docs/sync.md §9):
 *
 *   remove-peer ID    a peer gone for good: its positions go, and what was kept only for it
 *                     (held-back change masks, PostgreSQL ticks, tombstones) is released
 *   readmit-peer ID   a peer that had to re-join did so: stop refusing it
 *
 * The rules they rely on (backlog limit, must-rejoin, tombstone horizon) are in merge.c and
 * the agent; the database side in sqlite_life.c and pg_life.c. */
#include "sync/internal.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int parse_id(const char *cmd, const char *s, uint32_t *id)
{
    char *end;
    unsigned long v = strtoul(s ? s : "", &end, 10);
    if (!s || !*s || *end || v < 1 || v > 65535) {
        fprintf(stderr, "multisite-syncd %s: expected a site id (1..65535), got '%s'\n", cmd,
                s ? s : "");
        return MS_EINVAL;
    }
    *id = (uint32_t)v;
    return 0;
}

static const sync_peer_conf_t *listed(const sync_conf_t *c, uint32_t id)
{
    for (size_t i = 0; i < c->npeers; i++) {
        if (c->peers[i].id == id) {
            return &c->peers[i];
        }
    }
    return NULL;
}

/* Is an agent answering on the status socket? */
static bool agent_running(const sync_conf_t *c)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", c->status_socket);
    bool up = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (fd >= 0) {
        close(fd);
    }
    return up;
}

static int forget(const sync_conf_t *c, const char *cmd, uint32_t id, bool readmit)
{
    sync_db_t *db = NULL;
    char why[512] = "";
    int rc = sync_db_open(c, &db, why, sizeof(why));
    if (rc == 0) {
        rc = db->ops->attach(db, why, sizeof(why));
    }
    if (rc == 0) {
        rc = db->ops->peer_forget(db, id, readmit);
        if (rc != 0) {
            snprintf(why, sizeof(why), "cannot update the database %s", c->database);
        }
    }
    if (rc != 0) {
        fprintf(stderr, "multisite-syncd %s: %s\n", cmd, why[0] ? why : err_str(rc));
    }
    if (db) {
        db->ops->close(db);
    }
    return rc;
}

int sync_cmd_remove_peer(const sync_conf_t *c, const char *arg)
{
    uint32_t id;
    if (parse_id("remove-peer", arg, &id) != 0) {
        return MS_EINVAL;
    }
    const sync_peer_conf_t *p = listed(c, id);
    if (p) {
        fprintf(stderr,
                "multisite-syncd remove-peer: site %s (id %u) is still listed in sync.peers of "
                "%s: delete it there (and at every other site) first\n",
                p->name, id, c->path);
        return MS_EINVAL;
    }
    if (agent_running(c)) {
        fprintf(stderr,
                "multisite-syncd remove-peer: the agent is running (%s answers): stop it, run "
                "remove-peer, then start it with the new config\n",
                c->status_socket);
        return MS_EAGAIN;
    }
    int rc = forget(c, "remove-peer", id, false);
    if (rc == 0) {
        printf("site id %u removed: its positions are gone and nothing is kept for it any more "
               "(tombstones it held back are purged by the agent)\n",
               id);
    }
    return rc;
}

int sync_cmd_readmit_peer(const sync_conf_t *c, const char *arg)
{
    uint32_t id;
    if (parse_id("readmit-peer", arg, &id) != 0) {
        return MS_EINVAL;
    }
    const sync_peer_conf_t *p = listed(c, id);
    if (!p) {
        fprintf(stderr,
                "multisite-syncd readmit-peer: site id %u is not listed in sync.peers of %s\n", id,
                c->path);
        return MS_EINVAL;
    }
    int rc = forget(c, "readmit-peer", id, true);
    if (rc == 0) {
        printf(
            "site %s (id %u) readmitted: it is no longer refused (a running agent notices within "
            "10 s); it must have been re-created with join --from a running site\n",
            p->name, id);
    }
    return rc;
}
