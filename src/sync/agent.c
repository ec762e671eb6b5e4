/* agent.c: the multisite-syncd agent: one poll loop that ships this site's changes to every
 * peer and applies theirs.
 *
 * Each ordered pair of sites has its own TCP connection: a site DIALS every peer to push its
 * own changes and ACCEPTS connections on which peers push theirs. So one connection carries
 * one stream (BATCH one way, ACK the other) and there is no relaying: full mesh, every site
 * sends only the changes it originated, and loops cannot happen.
 *
 * Stream state machine (both ends):
 *
 *   dialer:   CONNECTING --tcp up--> HS (send our handshake, wait for theirs)
 *             HS --keys derived--> HELLO (send HELLO, wait for the peer's HELLO + cursor)
 *             HELLO --cursor--> READY: send BATCH(seq > sent) while < WINDOW unacked;
 *                                       ACK(seq) -> acked = seq, persisted
 *   acceptor: HS (wait for the dialer's handshake, check the site id, answer with ours)
 *             HELLO (wait for HELLO, answer HELLO with the applied cursor from the database)
 *             READY: BATCH -> apply in one transaction with the cursor -> ACK(cursor)
 *   any error, bad record or 5 s of silence: close; the dialer redials with backoff and
 *   resumes from the cursor the acceptor reports, so nothing is lost or applied twice.
 *
 * The database calls block the loop for at most one batch (batch_rows rows); the agent has
 * no other latency-critical work, so a separate database thread would only add a queue.
 * Everything else is non-blocking. */
#include "sync/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define WINDOW            2 /* batches in flight: more only queues changes behind each other */
#define IDLE_HEARTBEAT_MS 1000
#define DEAD_MS           30000  /* an apply of a big window may take seconds */
#define LAG_SAMPLES       131072 /* over 2 min at 1,000 changes/s */
#define MAX_CONNS         256
#define ERR_REJOIN        2 /* ERROR code: the receiver must re-join (docs/sync.md §9) */

/* ST_LINGER: refused (must re-join): our ERROR is sent and our side shut down; what the peer
 * still sends is read and dropped until it closes, so the ERROR is not lost to a reset. */
enum { ST_CONNECTING, ST_HS, ST_HELLO, ST_READY, ST_LINGER };
static const char *const st_names[] = {"connecting", "handshake", "hello", "ready", "refused"};

typedef struct peer peer_t;

typedef struct conn {
    int fd;
    int role; /* 0 dialer, 1 acceptor */
    int state;
    sync_chan_t *ch;
    buf_t in, out, plain, msg;
    size_t out_off;
    peer_t *peer;
    uint64_t last_rx_ms, last_tx_ms, linger_until_ms;
    bool dead;
} conn_t;

struct peer {
    const sync_peer_conf_t *conf;
    conn_t *out, *in;
    uint64_t next_dial_ms, backoff_ms;
    uint64_t sent, acked;
    unsigned inflight;
    bool more;
    uint64_t rows_sent, batches_sent, rows_applied, batches_applied, conflicts, quarantined;
    uint64_t bad_msgs;
    uint64_t apply_ns; /* time spent inside apply transactions */
    bool schema_differs;
    uint32_t lag[LAG_SAMPLES];
    size_t nlag, lag_pos;
    uint64_t last_lag_ms;
    uint64_t last_ok_ms;  /* monotonic: last seen taking our changes (or our start) */
    uint64_t rejoin_ms;   /* we marked it must-rejoin then (wall ms; persisted), 0 = not */
    char rejoin_why[200]; /* why we marked it */
    char refused[256];    /* it refuses us: its ERROR text (we must re-join), "" = no */
};

typedef struct {
    const sync_conf_t *c;
    sync_db_t *db;
    uint8_t *key;
    int lfd, sfd;
    peer_t *peers;
    conn_t *conns[MAX_CONNS];
    size_t nconns;
    uint64_t next_retry_ms, next_life_ms, next_purge_ms, next_qpurge_ms;
    uint64_t bad_msgs;
    uint64_t q_purged; /* quarantined changes deleted past quarantine_retention, since start */
    uint32_t prio[65536];
} agent_t;

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

/* ---- fault seams ---- */

void sync_fault(const char *point)
{
    static bool loaded;
    static char want[64];
    static long after, count;
    if (!loaded) {
        loaded = true;
        const char *e = getenv("MS_SYNC_FAULT");
        if (e) {
            const char *colon = strchr(e, ':');
            size_t n = colon ? (size_t)(colon - e) : strlen(e);
            if (n < sizeof(want)) {
                memcpy(want, e, n);
                want[n] = '\0';
                after = colon ? strtol(colon + 1, NULL, 10) : 1;
            }
        }
    }
    if (want[0] && strcmp(point, want) == 0 && ++count >= after) {
        log_warn("fault injection: killing the agent at %s (call %ld)", point, count);
        kill(getpid(), SIGKILL);
    }
}

bool sync_audit_on(void)
{
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("MS_SYNC_AUDIT");
        on = e && strcmp(e, "1") == 0;
    }
    return on;
}

/* ---- connections ---- */

/* Detach a connection from its peer and mark it dead; it is freed by conn_sweep() at the end
 * of the loop iteration, because the iteration may still hold pointers to it (a new incoming
 * stream replaces an old one while both are being served). */
static void conn_close(agent_t *a, conn_t *k, const char *why)
{
    (void)a;
    if (k->dead) {
        return;
    }
    k->dead = true;
    if (k->peer) {
        if (why) {
            static log_ratelimit_t rl = LOG_RATELIMIT_INIT(20, 10000);
            log_rl(&rl, LOG_LVL_INFO, "%s stream with site %s closed: %s",
                   k->role == 0 ? "outgoing" : "incoming", k->peer->conf->name, why);
        }
        if (k->peer->out == k) {
            k->peer->out = NULL;
            k->peer->inflight = 0;
            k->peer->next_dial_ms = time_mono_ms() + k->peer->backoff_ms;
            k->peer->backoff_ms = k->peer->backoff_ms * 2 > 2000 ? 2000 : k->peer->backoff_ms * 2;
        }
        if (k->peer->in == k) {
            k->peer->in = NULL;
        }
    }
}

static void conn_sweep(agent_t *a)
{
    for (size_t i = 0; i < a->nconns;) {
        conn_t *k = a->conns[i];
        if (!k->dead) {
            i++;
            continue;
        }
        close(k->fd);
        sync_chan_free(k->ch);
        buf_deinit(&k->in);
        buf_deinit(&k->out);
        buf_deinit(&k->plain);
        buf_deinit(&k->msg);
        a->conns[i] = a->conns[--a->nconns];
        free(k);
    }
}

static conn_t *conn_new(agent_t *a, int fd, int role)
{
    if (a->nconns == MAX_CONNS) {
        close(fd);
        return NULL;
    }
    conn_t *k = xcalloc(1, sizeof(*k));
    k->fd = fd;
    k->role = role;
    k->ch = sync_chan_new(role, a->c->site_id, a->key);
    buf_init(&k->in);
    buf_init(&k->out);
    buf_init(&k->plain);
    buf_init(&k->msg);
    k->last_rx_ms = k->last_tx_ms = time_mono_ms();
    a->conns[a->nconns++] = k;
    return k;
}

static void send_msg(conn_t *k)
{
    sync_chan_seal(k->ch, k->msg.data, k->msg.len, &k->out);
    buf_reset(&k->msg);
    k->last_tx_ms = time_mono_ms();
}

static void make_hello(agent_t *a, sync_hello_t *h, uint64_t cursor)
{
    sync_db_status_t *st = xcalloc(1, sizeof(*st));
    memset(h, 0, sizeof(*h));
    h->site_id = a->c->site_id;
    snprintf(h->name, sizeof(h->name), "%s", a->c->site);
    h->cursor = cursor;
    if (a->db->ops->status(a->db, st) == 0) {
        h->hlc = st->hlc;
        h->ntables = st->ntables;
        memcpy(h->tables, st->tables, sizeof(sync_fp_t) * st->ntables);
    }
    free(st);
}

static peer_t *peer_by_id(agent_t *a, uint32_t id)
{
    for (size_t i = 0; i < a->c->npeers; i++) {
        if (a->peers[i].conf->id == id) {
            return &a->peers[i];
        }
    }
    return NULL;
}

static void check_schema(agent_t *a, peer_t *p, const sync_hello_t *h)
{
    sync_hello_t mine;
    make_hello(a, &mine, 0);
    p->schema_differs = false;
    for (unsigned i = 0; i < mine.ntables; i++) {
        for (unsigned j = 0; j < h->ntables; j++) {
            if (strcmp(mine.tables[i].name, h->tables[j].name) == 0 &&
                memcmp(mine.tables[i].fp, h->tables[j].fp, 16) != 0) {
                p->schema_differs = true;
                log_warn("table %s has different columns at site %s: changes to columns only "
                         "one side has are quarantined until both sides have them",
                         mine.tables[i].name, p->conf->name);
            }
        }
    }
}

/* ---- site lifecycle (docs/sync.md §9) ---- */

static int conn_write(conn_t *k);

/* Copy text for a JSON string and a log line: no quotes, backslashes or control bytes. */
static void json_safe(char *out, size_t n, const char *in)
{
    size_t i = 0;
    for (; in[i] && i + 1 < n; i++) {
        unsigned char ch = (unsigned char)in[i];
        out[i] = ch == '"' || ch == '\\' || ch < 0x20 || ch == 0x7f ? '\'' : (char)ch;
    }
    out[i] = '\0';
}

/* Tell a peer marked must-rejoin why it is refused, and close. Never a partial stream. */
static void refuse(agent_t *a, conn_t *k)
{
    peer_t *p = k->peer;
    char when[32], text[512]; /* the wire carries the first 255 bytes */
    time_t t = (time_t)(p->rejoin_ms / 1000);
    struct tm tm;
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    snprintf(text, sizeof(text),
             "re-join required: site %s keeps no changes for site %s since %s (%s); join it again "
             "from a running site, then run readmit-peer %u at %s",
             a->c->site, p->conf->name, when, p->rejoin_why, p->conf->id, a->c->site);
    static log_ratelimit_t rl = LOG_RATELIMIT_INIT(5, 60000);
    log_rl(&rl, LOG_LVL_ERR, "refusing site %s: %s", p->conf->name, text);
    if (k->state == ST_CONNECTING) {
        conn_close(a, k, NULL);
        return;
    }
    buf_reset(&k->msg);
    sync_enc_error(&k->msg, ERR_REJOIN, text);
    send_msg(k);
    (void)conn_write(k); /* a few hundred bytes into an idle socket */
    shutdown(k->fd, SHUT_WR);
    if (p->out == k) {
        p->out = NULL;
        p->inflight = 0;
    }
    if (p->in == k) {
        p->in = NULL;
    }
    k->state = ST_LINGER;
    k->linger_until_ms = time_mono_ms() + 2000;
}

/* A peer whose oldest unacknowledged change is older than max_peer_offline, and that has not
 * taken our changes for that long while this agent was up, is marked must-rejoin (persisted):
 * from then on it holds nothing back here and is refused. Time this agent was down does not
 * count against the peers, and a peer that refuses us is not marked: we are the one to
 * re-join. */
static void check_backlog(agent_t *a, peer_t *p, uint64_t now, uint64_t wall)
{
    uint64_t since = 0, oldest = 0;
    char why[sizeof(p->rejoin_why)];
    if (a->db->ops->peer_get(a->db, p->conf->id, &since, why, sizeof(why)) != 0) {
        return;
    }
    if (!since && p->rejoin_ms) {
        log_info("site %s was re-admitted (readmit-peer): it is no longer refused", p->conf->name);
        p->last_ok_ms = now; /* the limit counts from the readmission */
    }
    p->rejoin_ms = since;
    json_safe(p->rejoin_why, sizeof(p->rejoin_why), why);
    if (p->out && p->out->state == ST_READY) {
        p->last_ok_ms = now;
    }
    if (since || p->refused[0] || !a->c->max_peer_offline_ms ||
        now - p->last_ok_ms <= a->c->max_peer_offline_ms ||
        a->db->ops->oldest(a->db, p->conf->id, &oldest) != 0 ||
        !sync_backlog_exceeded(oldest, wall, a->c->max_peer_offline_ms)) {
        return;
    }
    snprintf(why, sizeof(why), "oldest unacknowledged change %llu s old > max_peer_offline %u s",
             (unsigned long long)((wall - oldest) / 1000), a->c->max_peer_offline_ms / 1000);
    if (a->db->ops->peer_mark(a->db, p->conf->id, why) != 0) {
        log_warn("cannot mark site %s must-rejoin", p->conf->name);
        return;
    }
    p->rejoin_ms = wall;
    json_safe(p->rejoin_why, sizeof(p->rejoin_why), why);
    static log_ratelimit_t rl = LOG_RATELIMIT_INIT(5, 60000);
    log_rl(&rl, LOG_LVL_ERR,
           "site %s must re-join: %s; its backlog is no longer kept and it will be refused",
           p->conf->name, why);
    if (p->out) {
        refuse(a, p->out);
    }
    if (p->in) {
        refuse(a, p->in);
    }
}

/* How often to look for rows past a retention: a tenth of it, within 1 s..60 s. */
static uint64_t purge_every(unsigned retention_ms)
{
    unsigned every = retention_ms / 10;
    return every < 1000 ? 1000 : every > 60000 ? 60000 : every;
}

/* Quarantined changes that still fail quarantine_retention after they were first quarantined
 * are deleted: they are lost at this site, so it is logged as a warning. By their first
 * quarantine, not their last attempt: the retry tries them every second. */
static void quarantine_tick(agent_t *a, uint64_t now, uint64_t wall)
{
    const sync_conf_t *c = a->c;
    if (!c->quarantine_retention_ms || now < a->next_qpurge_ms) {
        return;
    }
    a->next_qpurge_ms = now + purge_every(c->quarantine_retention_ms);
    uint64_t n = 0;
    if (a->db->ops->purge_quarantine(a->db, wall - c->quarantine_retention_ms, &n) != 0) {
        log_warn("deleting expired quarantined changes failed");
    } else if (n) {
        a->q_purged += n;
        log_warn("deleted %llu quarantined change(s) that still failed to apply %u s after they "
                 "were quarantined (quarantine_retention); they are lost at this site",
                 (unsigned long long)n, c->quarantine_retention_ms / 1000);
    }
}

/* Every few seconds: the backlog limit (also picks up a readmit-peer done while running) and
 * tombstone clean-up, whose horizon keeps max_clock_skew in hand so that every site counts a
 * tombstone as expired before any site purges it. */
static void life_tick(agent_t *a, uint64_t now)
{
    const sync_conf_t *c = a->c;
    uint64_t wall = time_wall_ms();
    if (now >= a->next_life_ms) {
        a->next_life_ms =
            now + (c->max_peer_offline_ms && c->max_peer_offline_ms < 60000 ? 1000 : 10000);
        for (size_t i = 0; i < c->npeers; i++) {
            check_backlog(a, &a->peers[i], now, wall);
        }
    }
    if (c->tombstone_retention_ms && now >= a->next_purge_ms) {
        a->next_purge_ms = now + purge_every(c->tombstone_retention_ms);
        uint64_t n = 0;
        uint64_t h = sync_gc_horizon(wall - c->max_clock_skew_ms, c->tombstone_retention_ms);
        if (a->db->ops->purge(a->db, h, &n) != 0) {
            log_warn("purging tombstones failed");
        } else if (n) {
            log_info("purged %llu tombstone(s) of deletes older than tombstone_retention (%u s)",
                     (unsigned long long)n, c->tombstone_retention_ms / 1000);
        }
    }
    quarantine_tick(a, now, wall);
}

static int on_hs(agent_t *a, conn_t *k)
{
    uint32_t site;
    int rc = sync_chan_accept_hs(k->ch, k->in.data, &site);
    if (rc != 0) {
        return rc;
    }
    if (k->role == 1) {
        peer_t *p = peer_by_id(a, site);
        if (!p) {
            static log_ratelimit_t rl = LOG_RATELIMIT_INIT(5, 10000);
            log_rl(&rl, LOG_LVL_WARN, "connection from unknown site id %u refused", site);
            return MS_EAUTH;
        }
        k->peer = p;
        buf_append(&k->out, sync_chan_hs(k->ch), SYNC_HS_LEN);
        if (p->rejoin_ms) {
            refuse(a, k);
            return 0;
        }
    } else if (site != k->peer->conf->id) {
        log_warn("site %s answered with site id %u, expected %u", k->peer->conf->name, site,
                 k->peer->conf->id);
        return MS_EAUTH;
    } else {
        sync_hello_t h;
        make_hello(a, &h, 0);
        sync_enc_hello(&k->msg, &h);
        send_msg(k);
    }
    k->state = ST_HELLO;
    return 0;
}

static void record_lag(peer_t *p, const sync_batch_t *b)
{
    uint64_t now = time_wall_ms();
    for (size_t i = 0; i < b->nentries; i++) {
        /* The origin's change time: the newest version it wrote in the entry. */
        const sync_entry_t *e = &b->entries[i];
        uint64_t h = e->clv.site == b->origin ? e->clv.hlc : 0;
        for (unsigned c = 0; e->ver && c < b->tables[e->table].ncols; c++) {
            h = e->ver[c].site == b->origin && e->ver[c].hlc > h ? e->ver[c].hlc : h;
        }
        if (!h) {
            continue;
        }
        uint64_t w = SYNC_HLC_WALL(h);
        uint64_t lag = now > w ? now - w : 0;
        p->lag[p->lag_pos] = lag > UINT32_MAX ? UINT32_MAX : (uint32_t)lag;
        p->lag_pos = (p->lag_pos + 1) % LAG_SAMPLES;
        p->nlag = p->nlag < LAG_SAMPLES ? p->nlag + 1 : LAG_SAMPLES;
        p->last_lag_ms = lag;
    }
}

static int on_msg(agent_t *a, conn_t *k, const uint8_t *data, size_t len)
{
    arena_t *ar = arena_new(64 * 1024);
    sync_msg_t *m = xmalloc(sizeof(*m));
    const char *why;
    int rc = sync_decode(data, len, ar, m, &why);
    peer_t *p = k->peer;
    if (rc != 0) {
        p->bad_msgs++;
        a->bad_msgs++;
        static log_ratelimit_t rl = LOG_RATELIMIT_INIT(10, 10000);
        log_rl(&rl, LOG_LVL_WARN, "bad message from site %s: %s; closing", p->conf->name, why);
        buf_reset(&k->msg);
        sync_enc_error(&k->msg, 1, why);
        send_msg(k);
        goto out;
    }
    rc = MS_EPARSE;
    if (m->type == SYNC_MSG_ERROR && m->u.error.code == ERR_REJOIN) {
        static log_ratelimit_t rl = LOG_RATELIMIT_INIT(5, 60000);
        json_safe(p->refused, sizeof(p->refused), m->u.error.text);
        log_rl(&rl, LOG_LVL_ERR, "site %s refuses this site: %s", p->conf->name, p->refused);
        conn_close(a, k, NULL); /* said above; redialled with backoff, refused until re-joined */
        rc = 0;
        goto out;
    }
    if (m->type == SYNC_MSG_ERROR) {
        log_warn("site %s reports an error: %s", p->conf->name, m->u.error.text);
        goto out;
    }
    if (m->type == SYNC_MSG_HEARTBEAT) {
        rc = 0;
        goto out;
    }
    if (k->state == ST_HELLO) {
        if (m->type != SYNC_MSG_HELLO || m->u.hello.site_id != p->conf->id) {
            log_warn("site %s: expected HELLO from site id %u", p->conf->name, p->conf->id);
            goto out;
        }
        check_schema(a, p, &m->u.hello);
        if (k->role == 1) {
            uint64_t cur = 0;
            if (a->db->ops->cursor(a->db, p->conf->id, &cur) != 0) {
                rc = MS_EDB;
                goto out;
            }
            sync_hello_t h;
            make_hello(a, &h, cur);
            sync_enc_hello(&k->msg, &h);
            send_msg(k);
            if (p->in && p->in != k) {
                conn_close(a, p->in, "replaced by a new connection");
            }
            p->in = k;
            log_info("site %s (id %u) connected to push its changes; applied up to %llu",
                     p->conf->name, p->conf->id, (unsigned long long)cur);
        } else {
            p->sent = p->acked = m->u.hello.cursor;
            /* The peer's cursor is authoritative: an ACK lost in a crash is recovered here. */
            if (a->db->ops->set_acked(a->db, p->conf->id, p->acked) != 0) {
                log_warn("cannot record the position of site %s", p->conf->name);
            }
            p->inflight = 0;
            p->more = true;
            p->backoff_ms = 100;
            p->refused[0] = '\0';
            log_info("pushing changes to site %s from position %llu", p->conf->name,
                     (unsigned long long)p->sent);
        }
        k->state = ST_READY;
        rc = 0;
        goto out;
    }
    if (k->role == 1 && m->type == SYNC_MSG_BATCH) {
        const sync_batch_t *b = &m->u.batch;
        if (b->origin != p->conf->id) {
            log_warn("site %s sent a batch for origin %u; closing", p->conf->name, b->origin);
            goto out;
        }
        sync_apply_res_t res;
        uint64_t t0 = time_mono_ns();
        if (a->db->ops->apply(a->db, b, &res) != 0) {
            rc = MS_EDB;
            goto out;
        }
        uint64_t cur = 0;
        if (a->db->ops->cursor(a->db, b->origin, &cur) != 0) {
            rc = MS_EDB;
            goto out;
        }
        uint64_t dt = time_mono_ns() - t0;
        p->apply_ns += dt;
        log_debug("applied %zu entries from site %s in %llu us", b->nentries, p->conf->name,
                  (unsigned long long)(dt / 1000));
        record_lag(p, b);
        p->batches_applied++;
        p->rows_applied += res.entries_applied;
        p->conflicts += res.conflicts;
        p->quarantined += res.quarantined + res.held;
        sync_enc_ack(&k->msg, b->origin, cur);
        send_msg(k);
        rc = 0;
        goto out;
    }
    if (k->role == 0 && m->type == SYNC_MSG_ACK) {
        if (m->u.ack.seq > p->sent || m->u.ack.origin != a->c->site_id) {
            log_warn("site %s acknowledged position %llu, beyond what was sent", p->conf->name,
                     (unsigned long long)m->u.ack.seq);
            goto out;
        }
        p->acked = m->u.ack.seq > p->acked ? m->u.ack.seq : p->acked;
        p->inflight = p->inflight ? p->inflight - 1 : 0;
        if (a->db->ops->set_acked(a->db, p->conf->id, p->acked) != 0) {
            log_warn("cannot record the acknowledgement of site %s", p->conf->name);
        }
        rc = 0;
        goto out;
    }
    log_warn("site %s: unexpected %s message", p->conf->name, sync_msg_name(m->type));
out:
    free(m);
    arena_free(ar);
    return rc;
}

/* Read what is there; process handshake and whole records. Returns 0 or an error (close). */
static int conn_read(agent_t *a, conn_t *k)
{
    if (k->state == ST_LINGER) {
        uint8_t drop[4096];
        ssize_t n;
        while ((n = read(k->fd, drop, sizeof(drop))) > 0) {
        }
        return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) ? MS_ECLOSED
                                                                                     : 0;
    }
    uint8_t tmp[65536];
    bool eof = false; /* what came before the FIN is still processed (a refusal's ERROR) */
    for (;;) {
        ssize_t n = read(k->fd, tmp, sizeof(tmp));
        if (n > 0) {
            buf_append(&k->in, tmp, (size_t)n);
            k->last_rx_ms = time_mono_ms();
            if (k->in.len > 2 * SYNC_MAX_MSG) {
                break;
            }
            continue;
        }
        if (n == 0) {
            eof = true;
            break;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
        }
        return MS_EIO;
    }
    size_t off = 0;
    int rc = 0;
    if (k->state == ST_HS) {
        if (k->in.len < SYNC_HS_LEN) {
            return eof ? MS_ECLOSED : 0;
        }
        rc = on_hs(a, k);
        if (rc != 0) {
            return rc;
        }
        off = SYNC_HS_LEN;
    }
    while (rc == 0 && !k->dead && k->state != ST_LINGER && off < k->in.len) {
        size_t used = 0;
        int r = sync_chan_open(k->ch, k->in.data + off, k->in.len - off, &k->plain, &used);
        if (r == 0) {
            break;
        }
        if (r < 0) {
            if (k->peer) {
                k->peer->bad_msgs++;
            }
            a->bad_msgs++;
            return r;
        }
        off += used;
        rc = on_msg(a, k, k->plain.data, k->plain.len);
    }
    memmove(k->in.data, k->in.data + off, k->in.len - off);
    k->in.len -= off;
    return rc ? rc : eof ? MS_ECLOSED : 0;
}

static int conn_write(conn_t *k)
{
    while (k->out_off < k->out.len) {
        ssize_t n = send(k->fd, k->out.data + k->out_off, k->out.len - k->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            k->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        }
        return MS_EIO;
    }
    buf_reset(&k->out);
    k->out_off = 0;
    return 0;
}

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void dial(agent_t *a, peer_t *p)
{
    int fd = socket(p->conf->addr.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return;
    }
    set_nonblock(fd);
    int r = connect(fd, &p->conf->addr.sa, net_addr_len(&p->conf->addr));
    if (r != 0 && errno != EINPROGRESS) {
        close(fd);
        p->next_dial_ms = time_mono_ms() + p->backoff_ms;
        p->backoff_ms = p->backoff_ms * 2 > 2000 ? 2000 : p->backoff_ms * 2;
        return;
    }
    conn_t *k = conn_new(a, fd, 0);
    if (!k) {
        return;
    }
    k->peer = p;
    k->state = ST_CONNECTING;
    p->out = k;
    buf_append(&k->out, sync_chan_hs(k->ch), SYNC_HS_LEN);
}

/* Send the next batches to a READY peer while the window allows. */
static void pump(agent_t *a, peer_t *p)
{
    conn_t *k = p->out;
    while (k && k->state == ST_READY && p->more && p->inflight < WINDOW) {
        size_t n = 0;
        uint64_t hi = p->sent;
        buf_reset(&k->msg);
        uint64_t t0 = time_mono_ns();
        if (a->db->ops->read(a->db, p->sent, a->c->batch_rows, &k->msg, &n, &hi) != 0) {
            log_warn("reading changes for site %s failed", p->conf->name);
            return;
        }
        if (n == 0 && hi == p->sent) {
            p->more = false;
            return;
        }
        send_msg(k);
        log_debug("read %zu entries for site %s in %llu us", n, p->conf->name,
                  (unsigned long long)((time_mono_ns() - t0) / 1000));
        p->sent = hi;
        p->inflight++;
        p->batches_sent++;
        p->rows_sent += n;
        p->more = n > 0; /* cut by rows or bytes: look again at once */
        if (n < a->c->batch_rows) {
            /* A short batch holds all that was pending: a second read now would find only
             * what committed in the last few ms, and hold up the batches our peers sent us
             * (this loop applies them). Read again on the next pass. */
            break;
        }
    }
}

/* ---- status ---- */

static int cmp_u32(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return a < b ? -1 : a > b;
}

static void lag_pct(const peer_t *p, uint32_t *p50, uint32_t *p99)
{
    *p50 = *p99 = 0;
    if (!p->nlag) {
        return;
    }
    uint32_t *v = xmalloc(sizeof(uint32_t) * p->nlag);
    memcpy(v, p->lag, sizeof(uint32_t) * p->nlag);
    qsort(v, p->nlag, sizeof(uint32_t), cmp_u32);
    *p50 = v[p->nlag / 2];
    *p99 = v[(p->nlag * 99) / 100 >= p->nlag ? p->nlag - 1 : (p->nlag * 99) / 100];
    free(v);
}

/* The status document (JSON). a == NULL: the agent is not running; from the database. */
static void status_json(const sync_conf_t *c, agent_t *a, sync_db_t *db, buf_t *o)
{
    sync_db_status_t *st = xcalloc(1, sizeof(*st));
    int rc = db->ops->status(db, st);
    uint64_t now = time_wall_ms();
    buf_printf(o,
               "{\"site\":\"%s\",\"site_id\":%u,\"backend\":\"%s\",\"agent\":\"%s\","
               "\"database_ok\":%s,\"hlc\":%llu,\"conflicts\":%llu,\"quarantined\":%llu,"
               "\"held_future\":%llu,\"quarantine_purged\":%llu,\"bad_messages\":%llu,"
               "\"peers\":[",
               c->site, c->site_id, db->ops->name, a ? "running" : "down",
               rc == 0 ? "true" : "false", (unsigned long long)st->hlc,
               (unsigned long long)st->conflicts, (unsigned long long)st->quarantined,
               (unsigned long long)st->held, (unsigned long long)(a ? a->q_purged : 0),
               (unsigned long long)(a ? a->bad_msgs : 0));
    for (size_t i = 0; i < c->npeers; i++) {
        const sync_peer_conf_t *pc = &c->peers[i];
        const sync_peer_db_t *pd = NULL;
        const sync_inbound_t *in = NULL;
        for (size_t j = 0; j < st->npeers; j++) {
            pd = st->peers[j].peer == pc->id ? &st->peers[j] : pd;
        }
        for (size_t j = 0; j < st->ninbound; j++) {
            in = st->inbound[j].origin == pc->id ? &st->inbound[j] : in;
        }
        peer_t *p = a ? &a->peers[i] : NULL;
        uint32_t p50 = 0, p99 = 0;
        if (p) {
            lag_pct(p, &p50, &p99);
        }
        uint64_t lag = pd && pd->oldest_ms && now > pd->oldest_ms ? now - pd->oldest_ms : 0;
        uint64_t since = p ? p->rejoin_ms : 0;
        char why[200] = "";
        if (p) {
            snprintf(why, sizeof(why), "%s", p->rejoin_why);
        } else if (db->ops->peer_get(db, pc->id, &since, why, sizeof(why)) == 0) {
            json_safe(why, sizeof(why), why);
        }
        buf_printf(o,
                   "%s{\"name\":\"%s\",\"id\":%u,\"out\":\"%s\",\"in\":\"%s\","
                   "\"acked\":%llu,\"backlog\":%llu,\"lag_ms\":%llu,\"applied_seq\":%llu,"
                   "\"applied\":%llu,\"recv_lag_p50_ms\":%u,\"recv_lag_p99_ms\":%u,"
                   "\"rows_sent\":%llu,\"rows_applied\":%llu,\"apply_ms\":%llu,\"schema\":\"%s\","
                   "\"must_rejoin\":%s,\"rejoin_since_ms\":%llu,\"rejoin_reason\":\"%s\","
                   "\"refuses_us\":\"%s\"}",
                   i ? "," : "", pc->name, pc->id, p && p->out ? st_names[p->out->state] : "down",
                   p && p->in ? st_names[p->in->state] : "down",
                   (unsigned long long)(pd ? pd->acked : 0),
                   (unsigned long long)(pd ? pd->backlog : 0), (unsigned long long)lag,
                   (unsigned long long)(in ? in->applied_seq : 0),
                   (unsigned long long)(in ? in->applied : 0), p50, p99,
                   (unsigned long long)(p ? p->rows_sent : 0),
                   (unsigned long long)(p ? p->rows_applied : 0),
                   (unsigned long long)(p ? p->apply_ns / 1000000 : 0),
                   p && p->schema_differs ? "differs" : "same", since ? "true" : "false",
                   (unsigned long long)since, since ? why : "", p ? p->refused : "");
    }
    buf_printf(o, "]}\n");
    free(st);
}

static int status_listen(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    unlink(path);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 16) != 0) {
        log_err("status socket %s: %s", path, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    chmod(path, 0660);
    set_nonblock(fd);
    return fd;
}

static void status_serve(agent_t *a)
{
    int fd = accept4(a->sfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        return;
    }
    buf_t o;
    buf_init(&o);
    status_json(a->c, a, a->db, &o);
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    size_t off = 0;
    while (off < o.len) {
        ssize_t n = send(fd, o.data + off, o.len - off, MSG_NOSIGNAL);
        if (n <= 0) {
            break;
        }
        off += (size_t)n;
    }
    close(fd);
    buf_deinit(&o);
}

/* ---- main loop ---- */

static int listen_on(const net_addr_t *addr)
{
    int fd = socket(addr->sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    char s[NET_ADDR_STRLEN];
    if (fd < 0) {
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, &addr->sa, net_addr_len(addr)) != 0 || listen(fd, 64) != 0) {
        log_err("cannot listen on %s: %s", net_addr_str(addr, s, sizeof(s)), strerror(errno));
        close(fd);
        return -1;
    }
    set_nonblock(fd);
    return fd;
}

static void loop_once(agent_t *a)
{
    struct pollfd pf[MAX_CONNS + 2];
    conn_t *pk[MAX_CONNS];
    size_t n = 0;
    pf[n++] = (struct pollfd){.fd = a->lfd, .events = POLLIN};
    pf[n++] = (struct pollfd){.fd = a->sfd, .events = POLLIN};
    size_t nk = a->nconns;
    for (size_t i = 0; i < nk; i++) {
        conn_t *k = a->conns[i];
        pk[i] = k;
        short ev = POLLIN;
        if (k->state == ST_CONNECTING || k->out.len > k->out_off) {
            ev |= POLLOUT;
        }
        pf[n++] = (struct pollfd){.fd = k->fd, .events = ev};
    }
    int r = poll(pf, n, (int)a->c->poll_ms);
    if (r < 0 && errno != EINTR) {
        log_err("poll: %s", strerror(errno));
        return;
    }
    uint64_t now = time_mono_ms();
    if (r > 0 && (pf[0].revents & POLLIN)) {
        for (int i = 0; i < 16; i++) {
            int fd = accept4(a->lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0) {
                break;
            }
            set_nonblock(fd);
            conn_t *k = conn_new(a, fd, 1);
            if (k) {
                k->state = ST_HS;
            }
        }
    }
    if (r > 0 && a->sfd >= 0 && (pf[1].revents & POLLIN)) {
        status_serve(a);
    }
    for (size_t i = 0; i < nk; i++) {
        conn_t *k = pk[i];
        short re = pf[i + 2].revents;
        if (k->dead) {
            continue;
        }
        int rc = 0;
        const char *why = NULL;
        if (k->state == ST_CONNECTING && (re & (POLLOUT | POLLERR | POLLHUP))) {
            int err = 0;
            socklen_t el = sizeof(err);
            getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err) {
                conn_close(a, k, NULL); /* the peer is not up: retry quietly with backoff */
                continue;
            }
            k->state = ST_HS;
            k->last_rx_ms = now;
        }
        if (re & (POLLIN | POLLHUP | POLLERR)) {
            rc = conn_read(a, k);
            why = rc ? err_str(rc) : NULL;
        }
        if (rc == 0 && (k->out.len > k->out_off)) {
            rc = conn_write(k);
            why = rc ? "write failed" : NULL;
        }
        if (rc == 0 && k->state != ST_CONNECTING && now > k->last_rx_ms + DEAD_MS) {
            rc = MS_ECLOSED;
            why = "no traffic for 30 s";
        }
        if (rc == 0 && k->state == ST_LINGER && now > k->linger_until_ms) {
            rc = MS_ECLOSED;
        }
        if (rc == 0 && k->state == ST_READY && now > k->last_tx_ms + IDLE_HEARTBEAT_MS) {
            sync_enc_heartbeat(&k->msg, 0);
            send_msg(k);
        }
        if (rc != 0) {
            conn_close(a, k, why);
        }
    }
    bool dirty = a->db->ops->changed(a->db);
    for (size_t i = 0; i < a->c->npeers; i++) {
        peer_t *p = &a->peers[i];
        if (!p->out && !p->rejoin_ms && now >= p->next_dial_ms) {
            dial(a, p);
        }
        if (dirty) {
            p->more = true;
        }
        pump(a, p);
        if (p->out && p->out->out.len > p->out->out_off && conn_write(p->out) != 0) {
            conn_close(a, p->out, p->out->state == ST_CONNECTING ? NULL : "write failed");
        }
    }
    if (now >= a->next_retry_ms) {
        sync_apply_res_t res;
        if (a->db->ops->retry(a->db, &res) == 0 && res.entries_applied) {
            log_info("%llu quarantined or held-back changes applied on retry",
                     (unsigned long long)res.entries_applied);
        }
        a->next_retry_ms = now + 1000;
    }
    life_tick(a, now);
    conn_sweep(a);
}

static int db_open(const sync_conf_t *c, bool ro, sync_db_t **out, char *why, size_t whylen)
{
    int rc;
    if (c->backend == SYNC_BACKEND_PG) {
        rc = ro ? sync_pg_open_ro(c, out, why, whylen) : sync_pg_open(c, out, why, whylen);
    } else {
        rc = ro ? sync_sqlite_open_ro(c, out, why, whylen) : sync_sqlite_open(c, out, why, whylen);
    }
    if (rc == 0) {
        (*out)->rules.mode = (int)c->resolution;
    }
    return rc;
}

int sync_db_open(const sync_conf_t *c, sync_db_t **out, char *why, size_t whylen)
{
    return db_open(c, false, out, why, whylen);
}

int sync_db_open_ro(const sync_conf_t *c, sync_db_t **out, char *why, size_t whylen)
{
    return db_open(c, true, out, why, whylen);
}

int sync_cmd_init(const sync_conf_t *c)
{
    sync_db_t *db = NULL;
    char why[512] = "";
    int rc = sync_db_open(c, &db, why, sizeof(why));
    if (rc == 0) {
        rc = db->ops->init(db, why, sizeof(why));
    }
    if (rc != 0) {
        fprintf(stderr, "multisite-syncd init: %s\n", why[0] ? why : err_str(rc));
    } else {
        printf("change capture installed for %zu table(s) in %s\n", c->tables.n, c->database);
    }
    if (db) {
        db->ops->close(db);
    }
    return rc;
}

int sync_cmd_join(const sync_conf_t *c, const char *from)
{
    char why[512] = "";
    int rc = c->backend == SYNC_BACKEND_PG ? sync_pg_join(c, from, why, sizeof(why))
                                           : sync_sqlite_join(c, from, why, sizeof(why));
    if (rc != 0) {
        fprintf(stderr, "multisite-syncd join: %s\n", why);
        return rc;
    }
    rc = sync_cmd_init(c);
    if (rc == 0) {
        printf("site %s (id %u) created from %s; start the agent to catch up\n", c->site,
               c->site_id, from);
    }
    return rc;
}

/* Attach, waiting out a database that is busy (an application holding the write lock, a
 * stalled disk) for longer than the busy handler does: at start that is no reason to exit,
 * and a supervisor restarting us would only wait the same way. why is 512 bytes. */
static int attach_wait(sync_db_t *db, char *why)
{
    int rc;
    unsigned tries = 0;
    while ((rc = db->ops->attach(db, why, 512)) == MS_EAGAIN) {
        if (tries++ % 10 == 0) {
            log_warn("%s; waiting for the database", why);
        }
        struct timespec ts = {0, 200 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return rc;
}

int sync_cmd_run(const sync_conf_t *c)
{
    agent_t *a = xcalloc(1, sizeof(*a));
    char why[512] = "";
    int rc = MS_EIO;
    a->c = c;
    a->lfd = a->sfd = -1;
    if (sync_key_load(c->key_file, &a->key, why, sizeof(why)) != 0 ||
        sync_db_open(c, &a->db, why, sizeof(why)) != 0 || attach_wait(a->db, why) != 0) {
        log_err("%s", why);
        goto out;
    }
    for (size_t i = 0; i < c->npeers; i++) {
        a->prio[c->peers[i].id] = c->peers[i].priority;
    }
    a->prio[c->site_id] = c->priority;
    a->db->rules.prio_of = a->prio;
    a->db->rules.nprio = 65536;
    a->lfd = listen_on(&c->listen);
    if (a->lfd < 0) {
        goto out;
    }
    a->sfd = status_listen(c->status_socket);
    a->peers = xcalloc(c->npeers ? c->npeers : 1, sizeof(peer_t));
    for (size_t i = 0; i < c->npeers; i++) {
        a->peers[i].conf = &c->peers[i];
        a->peers[i].backoff_ms = 100;
        a->peers[i].last_ok_ms = time_mono_ms();
    }
    life_tick(a, time_mono_ms()); /* the must-rejoin marks, before any peer is served */
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    char s[NET_ADDR_STRLEN];
    log_info("multisite-syncd %s: site %s (id %u), %s %s, %zu table(s), %zu peer(s), listening "
             "on %s",
             MS_VERSION, c->site, c->site_id, a->db->ops->name, c->database, c->tables.n, c->npeers,
             net_addr_str(&c->listen, s, sizeof(s)));
    while (!stop_flag) {
        loop_once(a);
    }
    log_info("stopping");
    rc = 0;
out:
    for (size_t i = 0; i < a->nconns; i++) {
        conn_close(a, a->conns[i], NULL);
    }
    conn_sweep(a);
    if (a->lfd >= 0) {
        close(a->lfd);
    }
    if (a->sfd >= 0) {
        close(a->sfd);
        unlink(c->status_socket);
    }
    if (a->db) {
        a->db->ops->close(a->db);
    }
    sync_key_free(a->key);
    free(a->peers);
    free(a);
    return rc;
}

/* ---- status command ---- */

static int read_socket(const char *path, buf_t *o)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        if (fd >= 0) {
            close(fd);
        }
        return MS_ENOENT;
    }
    struct timeval tv = {3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char tmp[4096];
    ssize_t n;
    while ((n = read(fd, tmp, sizeof(tmp))) > 0) {
        buf_append(o, tmp, (size_t)n);
    }
    close(fd);
    return o->len ? 0 : MS_EIO;
}

/* Minimal extraction from our own JSON for the human-readable view. */
static const char *jget(const char *s, const char *key, char *out, size_t n)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(s, pat);
    out[0] = '\0';
    if (!p) {
        return "";
    }
    p += strlen(pat);
    size_t i = 0;
    if (*p == '"') {
        p++;
        while (*p && *p != '"' && i + 1 < n) {
            out[i++] = *p++;
        }
    } else {
        while (*p && *p != ',' && *p != '}' && i + 1 < n) {
            out[i++] = *p++;
        }
    }
    out[i] = '\0';
    return out;
}

/* The lifecycle lines under the peer table: who must re-join, and why. */
static void print_rejoin(const char *s, FILE *f)
{
    const char *p = strstr(s, "\"peers\":[");
    while (p && (p = strstr(p, "{\"name\":")) != NULL) {
        char name[64], v[8], why[300];
        jget(p, "name", name, sizeof(name));
        if (strcmp(jget(p, "must_rejoin", v, sizeof(v)), "true") == 0) {
            fprintf(f, "peer %s must re-join (refused here, its backlog is not kept): %s\n", name,
                    jget(p, "rejoin_reason", why, sizeof(why)));
        }
        if (*jget(p, "refuses_us", why, sizeof(why))) {
            fprintf(f, "peer %s refuses this site, which must re-join: %s\n", name, why);
        }
        p++;
    }
}

int sync_cmd_status(const sync_conf_t *c, bool json, FILE *f)
{
    buf_t o;
    buf_init(&o);
    int rc = read_socket(c->status_socket, &o);
    if (rc != 0) {
        sync_db_t *db = NULL;
        char why[512] = "";
        buf_reset(&o);
        /* Read-only: a status must not change the database it reports on. */
        if (sync_db_open_ro(c, &db, why, sizeof(why)) != 0) {
            fprintf(stderr, "multisite-syncd status: the agent is not running (%s), and %s\n",
                    c->status_socket, why);
            buf_deinit(&o);
            return MS_EIO;
        }
        status_json(c, NULL, db, &o);
        db->ops->close(db);
    }
    buf_append(&o, "", 1);
    const char *s = (const char *)o.data;
    if (json) {
        fputs(s, f);
    } else {
        char v[8][64];
        fprintf(f,
                "site %s (id %s), %s, agent %s: %s conflicts, %s quarantined, %s held back, %s "
                "expired from the quarantine\n",
                jget(s, "site", v[0], 64), jget(s, "site_id", v[1], 64),
                jget(s, "backend", v[2], 64), jget(s, "agent", v[3], 64),
                jget(s, "conflicts", v[4], 64), jget(s, "quarantined", v[5], 64),
                jget(s, "held_future", v[6], 64), jget(s, "quarantine_purged", v[7], 64));
        fprintf(f, "%-12s %-5s %-10s %-10s %10s %10s %12s %12s\n", "peer", "id", "out", "in",
                "backlog", "lag_ms", "applied", "recv_p99_ms");
        const char *p = strstr(s, "\"peers\":[");
        while (p && (p = strstr(p, "{\"name\":")) != NULL) {
            char w[8][64];
            fprintf(f, "%-12s %-5s %-10s %-10s %10s %10s %12s %12s\n", jget(p, "name", w[0], 64),
                    jget(p, "id", w[1], 64), jget(p, "out", w[2], 64), jget(p, "in", w[3], 64),
                    jget(p, "backlog", w[4], 64), jget(p, "lag_ms", w[5], 64),
                    jget(p, "applied", w[6], 64), jget(p, "recv_lag_p99_ms", w[7], 64));
            p++;
        }
        print_rejoin(s, f);
    }
    buf_deinit(&o);
    return 0;
}
