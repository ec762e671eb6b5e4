/* sync.h: the sync module's interface: multi-master replication of a site's database
 * (SQLite or PostgreSQL) with the other sites, run by multisite-syncd.
 *
 * Design and guarantees: docs/sync.md. In short: AFTER triggers capture every change into a
 * per-table change table (one consolidated entry per row), the agent ships the rows changed
 * locally to every peer over an authenticated, encrypted TCP channel, and each peer merges
 * them column by column under a hybrid logical clock, recording the applied position in the
 * same transaction as the data. Not thread-safe: one agent per process, on one thread. */
#ifndef MS_SYNC_H
#define MS_SYNC_H

#include "conf/conf.h"
#include "util/util.h"

enum { SYNC_BACKEND_SQLITE = 0, SYNC_BACKEND_PG = 1 };
enum { SYNC_RESOLVE_LWW = 0, SYNC_RESOLVE_PRIORITY = 1 };

typedef struct {
    char *name;
    unsigned id;
    net_addr_t addr;
    unsigned priority;
} sync_peer_conf_t;

typedef struct sync_conf {
    char *path;
    char *site;          /* this site's name */
    unsigned site_id;    /* 1..65535, unique in the cluster */
    unsigned backend;    /* SYNC_BACKEND_* */
    char *database;      /* SQLite file path or PostgreSQL conninfo */
    conf_strs_t tables;  /* replicated tables */
    net_addr_t listen;   /* where peers connect to push their changes */
    char *key_file;      /* pre-shared key, 64 hex digits (multisite-syncd keygen) */
    char *status_socket; /* local status socket (unix) */
    unsigned max_clock_skew_ms;
    unsigned batch_rows;
    unsigned poll_ms;
    unsigned resolution; /* SYNC_RESOLVE_* */
    unsigned priority;   /* this site's priority (resolution: priority) */
    unsigned log_level;
    unsigned max_peer_offline_ms;     /* backlog age past which a peer must re-join; 0 = none */
    unsigned tombstone_retention_ms;  /* tombstones older than this may go; 0 = keep forever */
    unsigned quarantine_retention_ms; /* quarantined this long ago: deleted; 0 = keep forever */
    sync_peer_conf_t *peers;
    size_t npeers;
} sync_conf_t;

/* Load the `sync:` section of a multisite config file. Returns 0 or MS_ECONF with err filled
 * in as "FILE:LINE: sync.option: reason". */
int sync_conf_load(const char *path, sync_conf_t **out, conf_err_t *err) MS_WUR;
void sync_conf_free(sync_conf_t *c);
void sync_conf_print_schema(FILE *f);

/* multisite-syncd init: install change capture for the configured tables. Refuses a table
 * without a primary key. Returns 0 or an error code with the reason printed to stderr. */
int sync_cmd_init(const sync_conf_t *c) MS_WUR;
/* multisite-syncd join --from SOURCE: create this site's database as a copy of a running
 * site's (SQLite: its file, online backup; PostgreSQL: its conninfo, pg_dump/pg_restore) and
 * make it a new site that catches up from there. The SQLite file must not exist yet; the
 * PostgreSQL database must exist and be empty. */
int sync_cmd_join(const sync_conf_t *c, const char *from) MS_WUR;
/* multisite-syncd remove-peer ID: forget a peer for good (it must no longer be in sync.peers;
 * the agent must be stopped): its rep_peer and rep_inbound state go and the backlog kept only
 * for it is released. */
int sync_cmd_remove_peer(const sync_conf_t *c, const char *id) MS_WUR;
/* multisite-syncd readmit-peer ID: after a peer that had to re-join did so, clear its
 * must-rejoin mark and its old stream positions here. */
int sync_cmd_readmit_peer(const sync_conf_t *c, const char *id) MS_WUR;
/* Run the agent until SIGINT/SIGTERM. */
int sync_cmd_run(const sync_conf_t *c) MS_WUR;
/* Print status from the running agent's socket, or from the database when it is down. */
int sync_cmd_status(const sync_conf_t *c, bool json, FILE *out) MS_WUR;
/* Print a fresh random key (64 hex digits and a newline). */
int sync_cmd_keygen(FILE *out) MS_WUR;

#endif
