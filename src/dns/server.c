/* server.c: UDP and TCP listener threads.
 *
 * UDP: udp_threads threads per listen address, each with its own SO_REUSEPORT socket so the
 * kernel spreads packets without a shared queue. A thread blocks in recvmmsg() for up to
 * BATCH packets, answers them all inside one RCU read-side section, and sends the replies
 * with one sendmmsg(). Buffers are per thread and allocated once: nothing on this path
 * allocates, locks or logs (gdnsd dnsio_udp.c and Knot udp-handler.c work the same way).
 *
 * TCP: tcp_threads threads, each with its own SO_REUSEPORT listening socket per address and
 * an epoll loop. Messages are processed in arrival order as soon as they are complete
 * (pipelining, RFC 7766 6.2.1), replies are queued per connection, idle connections are
 * closed after tcp-idle-timeout, and connections past tcp-max-clients are closed at once. */
#include "dns.h"

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define BATCH         32
#define UDP_QUERY_MAX 4096 /* larger datagrams are cut by the kernel (MSG_TRUNC) and dropped */
#define UDP_RESP_MAX  4096 /* conf udp-max-payload is at most this */
#define TCP_WBUF_HIGH (256 * 1024) /* stop reading a connection whose replies are not read */

typedef struct tcp_conn tcp_conn_t;

typedef struct {
    dns_server_t *srv;
    pthread_t tid;
    bool started;
    bool is_tcp;
    bool pktinfo; /* bound to a wildcard address: reply from the address asked */
    int fd;       /* UDP socket */
    int *lfds;    /* TCP listening sockets */
    size_t n_lfds;
    dns_stats_t stats;
} worker_t;

struct dns_server {
    worker_t *workers;
    size_t n_workers;
    atomic_bool stop;
    unsigned tcp_idle_ms;
    unsigned tcp_max;
};

static int open_socket(const net_addr_t *a, int type)
{
    int fd = socket(a->sa.sa_family, type | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (a->sa.sa_family == AF_INET6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    }
    if (type == SOCK_DGRAM) {
        /* No receive timeout: a timed sleep costs a timer per wait on the hot path. Stop
         * wakes the threads with shutdown() instead (dns_server_stop). */
        int bufsz = 4 << 20;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz));
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof(bufsz));
    }
    if (bind(fd, &a->sa, net_addr_len(a)) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (type == SOCK_STREAM) {
        if (listen(fd, 1024) != 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
    return fd;
}

/* ---- UDP ---- */

#define CMSG_SPACE_MAX 128

typedef struct {
    struct mmsghdr in[BATCH];
    uint8_t in_ctl[BATCH][CMSG_SPACE_MAX];
    uint8_t out_ctl[BATCH][CMSG_SPACE_MAX];
    struct mmsghdr out[BATCH];
    struct iovec in_iov[BATCH];
    struct iovec out_iov[BATCH];
    net_addr_t addr[BATCH];
    uint8_t qbuf[BATCH][UDP_QUERY_MAX];
    uint8_t rbuf[BATCH][UDP_RESP_MAX];
} udp_bufs_t;

/* On a wildcard socket the reply must leave from the address the query was sent to (a
 * multi-homed host would otherwise answer from its primary address and the client would
 * drop it). Copy the destination from IP_PKTINFO / IPV6_PKTINFO into the reply's source. */
static void set_reply_source(const struct msghdr *in, struct msghdr *out, uint8_t *ctl)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(in); c; c = CMSG_NXTHDR((struct msghdr *)in, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
            struct in_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof(pi));
            pi.ipi_spec_dst = pi.ipi_addr;
            pi.ipi_ifindex = 0;
            out->msg_control = ctl;
            out->msg_controllen = CMSG_SPACE(sizeof(pi));
            struct cmsghdr *o = CMSG_FIRSTHDR(out);
            o->cmsg_level = IPPROTO_IP;
            o->cmsg_type = IP_PKTINFO;
            o->cmsg_len = CMSG_LEN(sizeof(pi));
            memcpy(CMSG_DATA(o), &pi, sizeof(pi));
            return;
        }
        if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
            struct in6_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof(pi));
            /* Keep the interface only for link-local destinations, where it is needed. */
            if (!IN6_IS_ADDR_LINKLOCAL(&pi.ipi6_addr)) {
                pi.ipi6_ifindex = 0;
            }
            out->msg_control = ctl;
            out->msg_controllen = CMSG_SPACE(sizeof(pi));
            struct cmsghdr *o = CMSG_FIRSTHDR(out);
            o->cmsg_level = IPPROTO_IPV6;
            o->cmsg_type = IPV6_PKTINFO;
            o->cmsg_len = CMSG_LEN(sizeof(pi));
            memcpy(CMSG_DATA(o), &pi, sizeof(pi));
            return;
        }
    }
}

static bool is_wildcard(const net_addr_t *a)
{
    if (a->sa.sa_family == AF_INET) {
        return a->sin.sin_addr.s_addr == htonl(INADDR_ANY);
    }
    return IN6_IS_ADDR_UNSPECIFIED(&a->sin6.sin6_addr);
}

static void *udp_main(void *arg)
{
    worker_t *w = arg;
    udp_bufs_t *b = xcalloc(1, sizeof(*b));
    snap_reader_register();
    for (int i = 0; i < BATCH; i++) {
        b->in_iov[i] = (struct iovec){b->qbuf[i], UDP_QUERY_MAX};
        b->in[i].msg_hdr.msg_iov = &b->in_iov[i];
        b->in[i].msg_hdr.msg_iovlen = 1;
    }
    while (!atomic_load_explicit(&w->srv->stop, memory_order_relaxed)) {
        for (int i = 0; i < BATCH; i++) {
            b->in[i].msg_hdr.msg_name = &b->addr[i];
            b->in[i].msg_hdr.msg_namelen = sizeof(b->addr[i]);
            b->in[i].msg_hdr.msg_flags = 0;
            if (w->pktinfo) {
                b->in[i].msg_hdr.msg_control = b->in_ctl[i];
                b->in[i].msg_hdr.msg_controllen = CMSG_SPACE_MAX;
            }
        }
        int n = recvmmsg(w->fd, b->in, BATCH, MSG_WAITFORONE, NULL);
        if (n <= 0) {
            continue; /* timeout (stop check), EINTR, or a transient error */
        }
        int k = 0;
        snap_read_lock();
        const snap_t *s = snap_current();
        for (int i = 0; i < n; i++) {
            size_t rl = 0;
            if (s && !(b->in[i].msg_hdr.msg_flags & MSG_TRUNC)) {
                rl = dns_answer_client(s, b->qbuf[i], b->in[i].msg_len, b->rbuf[k], UDP_RESP_MAX,
                                       false, &b->addr[i], &w->stats);
            } else {
                DNS_STAT_INC(&w->stats, dropped);
            }
            if (rl == 0) {
                continue;
            }
            b->out_iov[k] = (struct iovec){b->rbuf[k], rl};
            memset(&b->out[k].msg_hdr, 0, sizeof(b->out[k].msg_hdr));
            b->out[k].msg_hdr.msg_name = &b->addr[i];
            b->out[k].msg_hdr.msg_namelen = b->in[i].msg_hdr.msg_namelen;
            b->out[k].msg_hdr.msg_iov = &b->out_iov[k];
            b->out[k].msg_hdr.msg_iovlen = 1;
            if (w->pktinfo) {
                set_reply_source(&b->in[i].msg_hdr, &b->out[k].msg_hdr, b->out_ctl[k]);
            }
            k++;
        }
        snap_read_unlock();
        __atomic_store_n(&w->stats.udp, w->stats.udp + (uint64_t)n, __ATOMIC_RELAXED);
        int sent = 0;
        while (sent < k) {
            int m = sendmmsg(w->fd, b->out + sent, (unsigned)(k - sent), 0);
            if (m < 0) {
                if (errno == EINTR) {
                    continue;
                }
                /* This reply is lost (e.g. an unreachable client); count it and go on. */
                DNS_STAT_INC(&w->stats, dropped);
                sent++;
                continue;
            }
            sent += m;
        }
    }
    snap_reader_unregister();
    free(b);
    return NULL;
}

/* ---- TCP ---- */

struct tcp_conn {
    int fd;
    net_addr_t peer;
    uint64_t last_ms;
    size_t rlen;
    bool eof; /* the client shut down its sending side */
    uint8_t *wbuf;
    size_t wlen, woff, wcap;
    bool reading;
    tcp_conn_t *prev, *next;
    uint8_t rbuf[2 + DNS_MAX_MSG];
};

typedef struct {
    worker_t *w;
    int ep;
    tcp_conn_t *conns;
    size_t n_conns;
    uint8_t resp[DNS_MAX_MSG];
} tcp_state_t;

static void conn_close(tcp_state_t *t, tcp_conn_t *c)
{
    epoll_ctl(t->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        t->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    t->n_conns--;
    free(c->wbuf);
    free(c);
}

static void conn_update_events(tcp_state_t *t, tcp_conn_t *c)
{
    struct epoll_event ev = {0};
    ev.data.ptr = c;
    /* Read only while replies are drained: a client that sends but never reads must not
     * make us queue without bound. After the client's EOF, only writes remain. */
    c->reading = !c->eof && c->wlen - c->woff < TCP_WBUF_HIGH && c->rlen < sizeof(c->rbuf);
    ev.events = (c->reading ? EPOLLIN | EPOLLRDHUP : 0) | (c->wlen > c->woff ? EPOLLOUT : 0);
    epoll_ctl(t->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Returns false if the connection was closed. */
static bool conn_flush(tcp_state_t *t, tcp_conn_t *c)
{
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            if (errno == EINTR) {
                continue;
            }
            conn_close(t, c);
            return false;
        }
        c->woff += (size_t)n;
    }
    if (c->woff == c->wlen) {
        c->woff = c->wlen = 0;
    }
    return true;
}

static void conn_queue(tcp_conn_t *c, const uint8_t *msg, size_t len)
{
    if (c->wcap - c->wlen < len + 2) {
        if (c->woff > 0) {
            memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
            c->wlen -= c->woff;
            c->woff = 0;
        }
        while (c->wcap - c->wlen < len + 2) {
            c->wcap = c->wcap ? c->wcap * 2 : 4096;
        }
        c->wbuf = xrealloc(c->wbuf, c->wcap);
    }
    wr_u16(c->wbuf + c->wlen, (uint16_t)len);
    memcpy(c->wbuf + c->wlen + 2, msg, len);
    c->wlen += len + 2;
}

/* Answer the complete messages in rbuf, in order, while the reply queue is below its high
 * mark; the rest wait in rbuf until the client reads. */
static void conn_answer(tcp_state_t *t, tcp_conn_t *c)
{
    size_t off = 0;
    snap_read_lock();
    const snap_t *s = snap_current();
    while (c->rlen - off >= 2 && c->wlen - c->woff < TCP_WBUF_HIGH) {
        size_t ml = rd_u16(c->rbuf + off);
        if (c->rlen - off < 2 + ml) {
            break;
        }
        size_t rl = s ? dns_answer_client(s, c->rbuf + off + 2, ml, t->resp, sizeof(t->resp), true,
                                          &c->peer, &t->w->stats)
                      : 0;
        DNS_STAT_INC(&t->w->stats, tcp);
        if (rl) {
            conn_queue(c, t->resp, rl);
        }
        off += 2 + ml;
    }
    snap_read_unlock();
    if (off) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
}

static bool has_complete_msg(const tcp_conn_t *c)
{
    return c->rlen >= 2 && c->rlen >= 2u + rd_u16(c->rbuf);
}

/* Everything a connection can do now: send queued replies, answer queued queries, read more.
 * After the client's EOF (a half-close is allowed, RFC 7766 6.2.4) every query already
 * received is still answered and sent before the connection closes. */
static void conn_service(tcp_state_t *t, tcp_conn_t *c)
{
    for (;;) {
        if (!conn_flush(t, c)) {
            return;
        }
        if (c->wlen - c->woff >= TCP_WBUF_HIGH) {
            break; /* wait until the client reads (EPOLLOUT) */
        }
        if (has_complete_msg(c)) {
            conn_answer(t, c);
            continue;
        }
        if (c->eof || c->rlen == sizeof(c->rbuf)) {
            break;
        }
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, sizeof(c->rbuf) - c->rlen, 0);
        if (n == 0) {
            c->eof = true;
            break;
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                conn_close(t, c);
                return;
            }
            break;
        }
        c->rlen += (size_t)n;
        c->last_ms = time_mono_ms();
    }
    if (c->eof && c->wlen == c->woff && !has_complete_msg(c)) {
        conn_close(t, c); /* all answered and sent; an incomplete tail is dropped */
        return;
    }
    conn_update_events(t, c);
}

static void tcp_accept(tcp_state_t *t, int lfd)
{
    for (;;) {
        net_addr_t peer;
        socklen_t plen = sizeof(peer);
        int fd = accept4(lfd, &peer.sa, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return;
        }
        if (t->n_conns >= t->w->srv->tcp_max) {
            DNS_STAT_INC(&t->w->stats, tcp_refused);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        tcp_conn_t *c = xmalloc(sizeof(*c));
        memset(c, 0, offsetof(tcp_conn_t, rbuf));
        c->fd = fd;
        c->peer = peer;
        c->last_ms = time_mono_ms();
        c->reading = true;
        c->next = t->conns;
        if (t->conns) {
            t->conns->prev = c;
        }
        t->conns = c;
        t->n_conns++;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
        epoll_ctl(t->ep, EPOLL_CTL_ADD, fd, &ev);
    }
}

static void *tcp_main(void *arg)
{
    worker_t *w = arg;
    tcp_state_t *t = xcalloc(1, sizeof(*t));
    t->w = w;
    t->ep = epoll_create1(EPOLL_CLOEXEC);
    snap_reader_register();
    for (size_t i = 0; i < w->n_lfds; i++) {
        /* Listening sockets are told apart from connections by a tagged pointer value. */
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1 + (uint64_t)i * 2};
        epoll_ctl(t->ep, EPOLL_CTL_ADD, w->lfds[i], &ev);
    }
    uint64_t last_sweep = time_mono_ms();
    struct epoll_event evs[64];
    while (!atomic_load_explicit(&w->srv->stop, memory_order_relaxed)) {
        int n = epoll_wait(t->ep, evs, 64, 250);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 & 1) {
                tcp_accept(t, w->lfds[evs[i].data.u64 / 2]);
                continue;
            }
            tcp_conn_t *c = evs[i].data.ptr;
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                conn_close(t, c);
                continue;
            }
            if (evs[i].events & EPOLLOUT) {
                c->last_ms = time_mono_ms(); /* the client is reading: not idle */
            }
            conn_service(t, c);
        }
        uint64_t now = time_mono_ms();
        if (now - last_sweep >= 250) {
            last_sweep = now;
            for (tcp_conn_t *c = t->conns, *next; c; c = next) {
                next = c->next;
                if (now - c->last_ms >= w->srv->tcp_idle_ms) {
                    conn_close(t, c);
                }
            }
        }
    }
    while (t->conns) {
        conn_close(t, t->conns);
    }
    close(t->ep);
    snap_reader_unregister();
    free(t);
    return NULL;
}

/* ---- lifecycle ---- */

int dns_server_start(const conf_t *conf, dns_server_t **out)
{
    dns_server_t *srv = xcalloc(1, sizeof(*srv));
    atomic_init(&srv->stop, false);
    srv->tcp_idle_ms = conf->tcp_idle_timeout_ms;
    srv->tcp_max = conf->tcp_max_clients;
    size_t n_udp = conf->listen.n * conf->udp_threads;
    srv->n_workers = n_udp + conf->tcp_threads;
    srv->workers = xcalloc(srv->n_workers, sizeof(*srv->workers));
    char ab[NET_ADDR_STRLEN];
    for (size_t i = 0; i < srv->n_workers; i++) {
        worker_t *w = &srv->workers[i];
        w->srv = srv;
        w->fd = -1;
        if (i < n_udp) {
            const net_addr_t *a = &conf->listen.v[i / conf->udp_threads];
            w->fd = open_socket(a, SOCK_DGRAM);
            if (w->fd < 0) {
                log_err("cannot listen on UDP %s: %s", net_addr_str(a, ab, sizeof(ab)),
                        strerror(errno));
                goto fail;
            }
            if (is_wildcard(a)) {
                int one = 1;
                w->pktinfo = true;
                if (a->sa.sa_family == AF_INET) {
                    setsockopt(w->fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
                } else {
                    setsockopt(w->fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one));
                }
            }
        } else {
            w->is_tcp = true;
            w->lfds = xcalloc(conf->listen.n, sizeof(int));
            for (size_t k = 0; k < conf->listen.n; k++) {
                w->lfds[k] = open_socket(&conf->listen.v[k], SOCK_STREAM);
                if (w->lfds[k] < 0) {
                    log_err("cannot listen on TCP %s: %s",
                            net_addr_str(&conf->listen.v[k], ab, sizeof(ab)), strerror(errno));
                    goto fail;
                }
                w->n_lfds++;
            }
        }
    }
    for (size_t i = 0; i < srv->n_workers; i++) {
        worker_t *w = &srv->workers[i];
        if (pthread_create(&w->tid, NULL, w->is_tcp ? tcp_main : udp_main, w) != 0) {
            log_err("cannot start a DNS thread");
            goto fail;
        }
        w->started = true;
    }
    *out = srv;
    return 0;
fail:
    dns_server_stop(srv);
    return MS_EIO;
}

void dns_server_stop(dns_server_t *srv)
{
    if (!srv) {
        return;
    }
    atomic_store(&srv->stop, true);
    /* shutdown() wakes a thread blocked in recvmmsg() even on an unconnected UDP socket
     * (Linux inet_shutdown wakes the socket's waiters); it then sees the stop flag. */
    for (size_t i = 0; i < srv->n_workers; i++) {
        if (srv->workers[i].fd >= 0) {
            shutdown(srv->workers[i].fd, SHUT_RDWR);
        }
    }
    for (size_t i = 0; i < srv->n_workers; i++) {
        worker_t *w = &srv->workers[i];
        if (w->started) {
            pthread_join(w->tid, NULL);
        }
        if (w->fd >= 0) {
            close(w->fd);
        }
        for (size_t k = 0; k < w->n_lfds; k++) {
            close(w->lfds[k]);
        }
        free(w->lfds);
    }
    free(srv->workers);
    free(srv);
}

void dns_server_stats(const dns_server_t *srv, dns_stats_t *sum)
{
    memset(sum, 0, sizeof(*sum));
    for (size_t i = 0; i < srv->n_workers; i++) {
        const uint64_t *src = (const uint64_t *)&srv->workers[i].stats;
        uint64_t *dst = (uint64_t *)sum;
        for (size_t k = 0; k < sizeof(*sum) / sizeof(uint64_t); k++) {
            dst[k] += __atomic_load_n(&src[k], __ATOMIC_RELAXED);
        }
    }
}
