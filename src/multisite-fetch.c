/* multisite-fetch.c: fetch a URL through libmultisite's client failover and show, request by
 * request, which address answered and which site/web server served it (X-Served-By), so a
 * person sees the client stick to one site and move when it fails.
 *
 *   multisite-fetch [--server ADDR:PORT]... [--count N] [--interval MS] [--timeout MS] URL
 *
 * One line per request on stdout:
 *   #3 +2.004s 127.0.0.3:8080 200 served-by=b/web1 attempts=2 5ms
 *   #4 +3.005s FAILED example.test:8080: 2 of 2 addresses failed: ...
 * and, indented, what the library did in between (resolutions, failures, moves). */
#include "client/client.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: multisite-fetch [options] http://NAME[:PORT]/path\n"
               "  --server ADDR[:PORT]  ask this DNS server directly (repeat: in order); normally\n"
               "                        the sites' multisited. Default: /etc/resolv.conf's\n"
               "  --resolv-conf FILE    nameservers from FILE instead of /etc/resolv.conf\n"
               "  --count N             requests to make (default 1)\n"
               "  --interval MS         pause between requests (default 1000)\n"
               "  --timeout MS          connect and I/O timeout (default 1000)\n"
               "  --connect-timeout MS  connect timeout only\n"
               "  --io-timeout MS       I/O timeout only\n"
               "  --max-ttl S           cap on the DNS TTL (default 300)\n"
               "  -4, -6                IPv4 or IPv6 addresses only (default: both, v6 first)\n"
               "  -q, --quiet           no event lines\n"
               "  --body                print each response body\n");
}

static uint64_t t_start;

static void on_event(void *arg, const char *msg)
{
    (void)arg;
    printf("    %s\n", msg);
    fflush(stdout);
}

static bool parse_ms(const char *s, uint32_t *out)
{
    uint64_t v;
    if (!parse_u64(s, &v) || v > 3600000) {
        return false;
    }
    *out = (uint32_t)v;
    return true;
}

static void sleep_ms(uint32_t ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

int main(int argc, char **argv)
{
    enum {
        O_SERVER = 256,
        O_RESOLV,
        O_COUNT,
        O_INTERVAL,
        O_TIMEOUT,
        O_CTO,
        O_IOTO,
        O_TTL,
        O_BODY,
        O_SESSION
    };
    static const struct option longopts[] = {{"server", required_argument, NULL, O_SERVER},
                                             {"resolv-conf", required_argument, NULL, O_RESOLV},
                                             {"count", required_argument, NULL, O_COUNT},
                                             {"interval", required_argument, NULL, O_INTERVAL},
                                             {"timeout", required_argument, NULL, O_TIMEOUT},
                                             {"connect-timeout", required_argument, NULL, O_CTO},
                                             {"io-timeout", required_argument, NULL, O_IOTO},
                                             {"max-ttl", required_argument, NULL, O_TTL},
                                             {"body", no_argument, NULL, O_BODY},
                                             {"session", no_argument, NULL, O_SESSION},
                                             {"header", required_argument, NULL, 'H'},
                                             {"quiet", no_argument, NULL, 'q'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *servers[MSC_MAX_SERVERS];
    msc_opts_t o = {0};
    o.servers = servers;
    o.connect_timeout_ms = o.io_timeout_ms = 1000;
    uint32_t count = 1, interval = 1000, v;
    bool quiet = false, body = false, session = false;
    enum { MAX_HDR = 15 }; /* plus the session cookie: the library's limit of 16 */
    const char *headers[MAX_HDR + 1];
    size_t n_headers = 0;
    char cookie[300] = "";
    int c;
    while ((c = getopt_long(argc, argv, "46qhH:", longopts, NULL)) != -1) {
        switch (c) {
        case O_SERVER:
            if (o.n_servers == MSC_MAX_SERVERS) {
                fprintf(stderr, "multisite-fetch: at most %d --server\n", MSC_MAX_SERVERS);
                return 2;
            }
            servers[o.n_servers++] = optarg;
            break;
        case O_RESOLV: o.resolv_conf = optarg; break;
        case O_COUNT:
        case O_INTERVAL:
        case O_TIMEOUT:
        case O_CTO:
        case O_IOTO:
        case O_TTL:
            if (!parse_ms(optarg, &v) || (c != O_INTERVAL && v == 0)) {
                fprintf(stderr, "multisite-fetch: bad value '%s' for --%s\n", optarg,
                        longopts[c - O_SERVER].name);
                return 2;
            }
            if (c == O_COUNT) {
                count = v;
            } else if (c == O_INTERVAL) {
                interval = v;
            } else if (c == O_TIMEOUT) {
                o.connect_timeout_ms = o.io_timeout_ms = v;
            } else if (c == O_CTO) {
                o.connect_timeout_ms = v;
            } else if (c == O_IOTO) {
                o.io_timeout_ms = v;
            } else {
                o.max_ttl_s = v;
            }
            break;
        case '4': o.family = AF_INET; break;
        case '6': o.family = AF_INET6; break;
        case 'q': quiet = true; break;
        case O_BODY: body = true; break;
        case O_SESSION: session = true; break;
        case 'H':
            if (n_headers == MAX_HDR || !strchr(optarg, ':')) {
                fprintf(stderr, "multisite-fetch: --header wants 'Name: value', at most %d\n",
                        MAX_HDR);
                return 2;
            }
            headers[n_headers++] = optarg;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    const char *url = argv[optind];
    if (!quiet) {
        o.on_event = on_event;
    }
    char err[256];
    msc_t *m = msc_new(&o, err, sizeof(err));
    if (!m) {
        fprintf(stderr, "multisite-fetch: %s\n", err);
        return 2;
    }
    t_start = time_mono_ms();
    int failed = 0;
    for (uint32_t i = 1; i <= count; i++) {
        msc_http_result_t r;
        double t = (double)(time_mono_ms() - t_start) / 1000.0;
        size_t nh = n_headers;
        if (session && cookie[0]) {
            headers[nh++] = cookie;
        }
        int rc = msc_http_get_with(m, url, headers, nh, &r);
        if (rc == MS_EINVAL) {
            fprintf(stderr,
                    "multisite-fetch: bad URL '%s' (expected http://NAME[:PORT]/path) or "
                    "header\n",
                    url);
            msc_free(m);
            return 2;
        }
        if (rc) {
            failed++;
            printf("#%u +%.3fs FAILED %s\n", i, t,
                   msc_last_error(m)[0] ? msc_last_error(m) : err_str(rc));
        } else {
            char a[NET_ADDR_STRLEN];
            printf("#%u +%.3fs %s %d served-by=%s attempts=%u %ums\n", i, t,
                   net_addr_str(&r.addr, a, sizeof(a)), r.status,
                   r.served_by[0] ? r.served_by : "-", r.attempts, r.elapsed_ms);
            if (session && r.cookie[0]) {
                snprintf(cookie, sizeof(cookie), "Cookie: %s", r.cookie);
            }
            if (body) {
                fwrite(r.body, 1, r.body_len, stdout);
                printf("\n");
            }
            msc_http_result_free(&r);
        }
        fflush(stdout);
        if (i < count && interval) {
            sleep_ms(interval);
        }
    }
    msc_free(m);
    return failed ? 1 : 0;
}
