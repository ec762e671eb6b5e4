/* probe_http.c: HTTP(S) probes through libcurl's multi interface, driven by the libuv loop.
 *
 * The classic multi-socket pattern: libcurl tells us which sockets to watch (socket
 * callback: a uv_poll_t per socket, remembered with curl_multi_assign) and when to call it
 * back (timer callback: one uv_timer_t); we feed readiness back through
 * curl_multi_socket_action and collect finished transfers with curl_multi_info_read. No
 * thread, nothing blocks the loop (name resolution for a URL host uses libcurl's threaded
 * resolver; a `connect` address avoids it altogether).
 *
 * Each probe is a fresh connection (CURLOPT_FRESH_CONNECT, FORBID_REUSE): a reused
 * keep-alive connection would say nothing about whether the server accepts new ones. The
 * body goes through the keyword scanner as it arrives and is never stored; the transfer is
 * stopped as soon as the verdict is known (all keywords seen, wrong status, or over
 * HT_MAX_BODY). The probe's own timer (health.c) bounds the whole request; CURLOPT_TIMEOUT_MS
 * is a backstop a little later. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct ht_sock {
    uv_poll_t poll;
    curl_socket_t fd;
    health_t *h;
    ht_sock_t *prev, *next;
};

typedef struct {
    ht_target_t *t;
    CURL *easy;
    hs_scan_t scan;
    bool status_seen;
    bool decided; /* the write callback settled the verdict (in res) and stopped the transfer */
    ht_result_t res;
    struct curl_slist *hdrs, *connect_to; /* libcurl does not copy these lists */
    char errbuf[CURL_ERROR_SIZE];
} http_attempt_t;

static void drain(health_t *h);

static void sock_closed(uv_handle_t *hd)
{
    ht_sock_t *cs = hd->data;
    health_t *h = cs->h;
    free(cs);
    h->handles--;
    ht_maybe_free(h);
}

static void sock_release(health_t *h, ht_sock_t *cs)
{
    if (cs->prev) {
        cs->prev->next = cs->next;
    } else {
        h->socks = cs->next;
    }
    if (cs->next) {
        cs->next->prev = cs->prev;
    }
    uv_poll_stop(&cs->poll);
    uv_close((uv_handle_t *)&cs->poll, sock_closed);
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
    ht_sock_t *cs = p->data;
    health_t *h = cs->h;
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        flags |= (events & UV_READABLE) ? CURL_CSELECT_IN : 0;
        flags |= (events & UV_WRITABLE) ? CURL_CSELECT_OUT : 0;
    }
    int running;
    curl_multi_socket_action(h->multi, cs->fd, flags, &running);
    drain(h);
}

static int socket_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    health_t *h = userp;
    ht_sock_t *cs = socketp;
    (void)e;
    if (what == CURL_POLL_REMOVE) {
        if (cs) {
            curl_multi_assign(h->multi, s, NULL);
            sock_release(h, cs);
        }
        return 0;
    }
    if (!cs) {
        cs = xcalloc(1, sizeof(*cs));
        cs->fd = s;
        cs->h = h;
        int rc = uv_poll_init_socket(h->loop, &cs->poll, s);
        if (rc < 0) {
            static log_ratelimit_t rl = LOG_RATELIMIT_INIT(5, 60000);
            log_rl(&rl, LOG_LVL_WARN, "health: cannot watch socket %d: %s", (int)s,
                   uv_strerror(rc));
            free(cs);
            return -1; /* libcurl fails the transfer */
        }
        cs->poll.data = cs;
        h->handles++;
        cs->next = h->socks;
        if (h->socks) {
            h->socks->prev = cs;
        }
        h->socks = cs;
        curl_multi_assign(h->multi, s, cs);
    }
    int ev = ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
    uv_poll_start(&cs->poll, ev, poll_cb);
    return 0;
}

static void curl_timer_cb(uv_timer_t *tm)
{
    health_t *h = tm->data;
    int running;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain(h);
}

static int timer_fn(CURLM *m, long timeout_ms, void *userp)
{
    health_t *h = userp;
    (void)m;
    if (timeout_ms < 0) {
        uv_timer_stop(&h->curl_timer);
    } else {
        /* 0 means "now"; a 0 ms uv timer runs on the next loop iteration, outside this
         * callback, which is what libcurl asks for. */
        uv_timer_start(&h->curl_timer, curl_timer_cb, (uint64_t)timeout_ms, 0);
    }
    return 0;
}

int ht_http_init(health_t *h)
{
    static bool global_done;
    if (!global_done) {
        /* Not thread-safe in libcurl < 7.84; health_new runs on the main thread. */
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            return MS_EIO;
        }
        global_done = true;
    }
    h->multi = curl_multi_init();
    if (!h->multi) {
        return MS_ENOMEM;
    }
    uv_timer_init(h->loop, &h->curl_timer);
    h->curl_timer.data = h;
    h->handles++;
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    return 0;
}

void ht_http_deinit(health_t *h)
{
    if (!h->multi) {
        return;
    }
    curl_multi_cleanup(h->multi); /* every easy handle was removed by the caller */
    h->multi = NULL;
    while (h->socks) {
        sock_release(h, h->socks);
    }
    uv_timer_stop(&h->curl_timer);
    uv_close((uv_handle_t *)&h->curl_timer, ht_handle_closed);
}

static void attempt_free(health_t *h, http_attempt_t *a)
{
    curl_multi_remove_handle(h->multi, a->easy);
    curl_easy_cleanup(a->easy);
    curl_slist_free_all(a->hdrs);
    curl_slist_free_all(a->connect_to);
    hs_scan_deinit(&a->scan);
    free(a);
}

static void fail(http_attempt_t *a, const char *reason)
{
    a->res.ok = false;
    snprintf(a->res.reason, sizeof(a->res.reason), "%.150s", reason);
}

static void lacks(http_attempt_t *a, const char *suffix)
{
    char miss[128];
    hs_scan_missing(&a->scan, miss, sizeof(miss));
    a->res.ok = false;
    snprintf(a->res.reason, sizeof(a->res.reason), "lacks %.100s%s", miss, suffix);
}

/* First body bytes: headers are complete, so the status is known. */
static bool status_ok(http_attempt_t *a)
{
    long code = 0;
    curl_easy_getinfo(a->easy, CURLINFO_RESPONSE_CODE, &code);
    a->status_seen = true;
    if (code == (long)a->t->expect_status) {
        return true;
    }
    snprintf(a->res.reason, sizeof(a->res.reason), "HTTP status %ld, expected %u", code,
             a->t->expect_status);
    a->res.ok = false;
    return false;
}

static size_t write_cb(char *p, size_t size, size_t nmemb, void *ud)
{
    http_attempt_t *a = ud;
    size_t n = size * nmemb;
    if (a->decided) {
        return 0;
    }
    if (!a->status_seen && !status_ok(a)) {
        a->decided = true;
        return 0; /* stop: a wrong status decides, whatever the body */
    }
    switch (hs_scan_feed(&a->scan, p, n)) {
    case HS_DONE:
        a->res.ok = true;
        a->decided = true;
        return 0; /* every keyword seen: no need for the rest */
    case HS_OVER:
        lacks(a, " in the first 1 MiB of the body");
        a->decided = true;
        return 0;
    default: return n;
    }
}

static void curl_failure(http_attempt_t *a, CURLcode rc)
{
    long os_err = 0;
    curl_easy_getinfo(a->easy, CURLINFO_OS_ERRNO, &os_err);
    const char *detail = a->errbuf[0] ? a->errbuf : curl_easy_strerror(rc);
    char buf[160];
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
        if (os_err == ECONNREFUSED) {
            fail(a, "connection refused");
            a->res.refused = true;
            return;
        }
        snprintf(buf, sizeof(buf), "cannot connect: %.120s", detail);
        break;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
        if (os_err == ECONNRESET || os_err == EPIPE) {
            fail(a, "connection reset");
            a->res.refused = true;
            return;
        }
        snprintf(buf, sizeof(buf), "%.150s", detail);
        break;
    case CURLE_GOT_NOTHING:
        /* Closed without a byte of response: a server going away, as good as a reset. */
        fail(a, "connection closed without a response");
        a->res.refused = true;
        return;
    case CURLE_OPERATION_TIMEDOUT:
        snprintf(buf, sizeof(buf), "timeout after %u ms", a->t->timeout_ms);
        break;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE: snprintf(buf, sizeof(buf), "TLS: %.150s", detail); break;
    default: snprintf(buf, sizeof(buf), "%.150s", detail); break;
    }
    fail(a, buf);
}

/* A transfer libcurl finished (rc) or that we stopped (a->decided). */
static void finished(health_t *h, http_attempt_t *a, CURLcode rc)
{
    ht_target_t *t = a->t;
    if (!a->decided) {
        if (rc != CURLE_OK) {
            curl_failure(a, rc);
        } else if (!a->status_seen && !status_ok(a)) {
            /* empty body with a wrong status: reason set */
        } else if (a->scan.n_found == a->scan.k->n) {
            a->res.ok = true;
        } else {
            lacks(a, "");
        }
    }
    ht_result_t r = a->res;
    t->attempt = NULL;
    attempt_free(h, a);
    ht_done(t, &r);
}

static void drain(health_t *h)
{
    CURLMsg *m;
    int left;
    while (h->multi && (m = curl_multi_info_read(h->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) {
            continue;
        }
        http_attempt_t *a = NULL;
        CURLcode rc = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&a);
        if (a) {
            finished(h, a, rc);
        }
    }
}

void ht_http_start(ht_target_t *t)
{
    health_t *h = t->h;
    http_attempt_t *a = xcalloc(1, sizeof(*a));
    a->t = t;
    hs_scan_init(&a->scan, &t->kw, HT_MAX_BODY);
    a->easy = curl_easy_init();
    if (!a->easy) {
        hs_scan_deinit(&a->scan);
        free(a);
        ht_result_t r = {.ok = false};
        snprintf(r.reason, sizeof(r.reason), "cannot start probe: curl_easy_init failed");
        ht_done(t, &r);
        return;
    }
    CURL *e = a->easy;
    curl_easy_setopt(e, CURLOPT_URL, t->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, a);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, a->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "multisite-health/" MS_VERSION);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, a);
    /* Backstop only: health.c's timer ends the probe at timeout_ms. */
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)t->timeout_ms + 1000);
    /* The CA bundle only, no CA directory (Debian's libcurl defaults to both): libcurl then
     * keeps the parsed store in the multi handle. Parsing the ~140-certificate bundle costs
     * tens of ms of loop time, and without the cache it happened on every HTTPS probe. */
    curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
    curl_easy_setopt(e, CURLOPT_CA_CACHE_TIMEOUT, 3600L); /* pick up CA updates hourly */
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, t->tls_verify ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, t->tls_verify ? 2L : 0L);
    if (t->connect_to) {
        a->connect_to = curl_slist_append(NULL, t->connect_to);
        curl_easy_setopt(e, CURLOPT_CONNECT_TO, a->connect_to);
    }
    if (t->host_header) {
        a->hdrs = curl_slist_append(NULL, t->host_header);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, a->hdrs);
    }
    t->attempt = a;
    CURLMcode mc = curl_multi_add_handle(h->multi, e);
    if (mc != CURLM_OK) {
        t->attempt = NULL;
        ht_result_t r = {.ok = false};
        snprintf(r.reason, sizeof(r.reason), "cannot start probe: %s", curl_multi_strerror(mc));
        attempt_free(h, a);
        ht_done(t, &r);
    }
}

void ht_http_abort(ht_target_t *t, bool report)
{
    http_attempt_t *a = t->attempt;
    if (!a) {
        return;
    }
    t->attempt = NULL;
    ht_result_t r = a->res;
    r.ok = false;
    r.refused = false;
    long code = 0;
    curl_easy_getinfo(a->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code == 0) {
        snprintf(r.reason, sizeof(r.reason), "no response within %u ms", t->timeout_ms);
    } else {
        snprintf(r.reason, sizeof(r.reason), "body incomplete after %u ms (%zu bytes)",
                 t->timeout_ms, a->scan.total);
    }
    attempt_free(t->h, a);
    if (report) {
        ht_done(t, &r);
    }
}
