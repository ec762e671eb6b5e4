/* dnsflood.c: a small DNS load generator for the benchmarks, for what dnsperf cannot do:
 * a different EDNS Client Subnet per query. Reads "NAME TYPE [ECS-PREFIX]" lines, keeps
 * -q queries outstanding on one UDP socket for -l seconds, and prints sent, completed, lost
 * and QPS. Bounded in time and count; loopback targets only (the benchmarks start their own
 * servers).
 *
 *   dnsflood -s 127.0.0.1 -p PORT -d FILE [-q 100] [-l 10]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    uint8_t wire[512];
    size_t len;
} query_t;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int type_num(const char *t)
{
    static const struct { const char *n; int v; } map[] = {
        {"A", 1}, {"NS", 2}, {"CNAME", 5}, {"SOA", 6}, {"MX", 15}, {"TXT", 16}, {"AAAA", 28}};
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        if (strcasecmp(map[i].n, t) == 0) {
            return map[i].v;
        }
    }
    return atoi(t);
}

static int build(const char *name, const char *type, const char *ecs, query_t *q)
{
    uint8_t *p = q->wire;
    memset(p, 0, 12);
    p[5] = 1; /* qdcount */
    size_t o = 12;
    const char *s = name;
    while (*s) {
        const char *dot = strchr(s, '.');
        size_t l = dot ? (size_t)(dot - s) : strlen(s);
        if (l == 0 || l > 63 || o + l + 2 > 300) {
            return -1;
        }
        p[o++] = (uint8_t)l;
        memcpy(p + o, s, l);
        o += l;
        s += l + (dot ? 1 : 0);
    }
    p[o++] = 0;
    int t = type_num(type);
    p[o++] = (uint8_t)(t >> 8);
    p[o++] = (uint8_t)t;
    p[o++] = 0;
    p[o++] = 1;
    /* OPT with ECS when asked */
    p[11] = 1;
    p[o++] = 0;
    p[o++] = 0;
    p[o++] = 41;
    p[o++] = 0x04;
    p[o++] = 0xd0; /* 1232 */
    p[o++] = 0;
    p[o++] = 0;
    p[o++] = 0;
    p[o++] = 0;
    size_t rdlen_at = o;
    o += 2;
    size_t rdlen = 0;
    if (ecs) {
        char addr[64];
        const char *slash = strchr(ecs, '/');
        if (!slash || (size_t)(slash - ecs) >= sizeof(addr)) {
            return -1;
        }
        memcpy(addr, ecs, (size_t)(slash - ecs));
        addr[slash - ecs] = 0;
        int src = atoi(slash + 1);
        uint8_t a[16];
        int fam = strchr(addr, ':') ? 2 : 1;
        if (inet_pton(fam == 1 ? AF_INET : AF_INET6, addr, a) != 1) {
            return -1;
        }
        size_t alen = (size_t)(src + 7) / 8;
        p[o++] = 0;
        p[o++] = 8;
        p[o++] = 0;
        p[o++] = (uint8_t)(4 + alen);
        p[o++] = 0;
        p[o++] = (uint8_t)fam;
        p[o++] = (uint8_t)src;
        p[o++] = 0;
        memcpy(p + o, a, alen);
        o += alen;
        rdlen = 8 + alen;
    }
    p[rdlen_at] = (uint8_t)(rdlen >> 8);
    p[rdlen_at + 1] = (uint8_t)rdlen;
    q->len = o;
    return 0;
}

int main(int argc, char **argv)
{
    const char *server = "127.0.0.1", *file = NULL;
    int port = 53, outstanding = 100;
    double duration = 10;
    int c;
    while ((c = getopt(argc, argv, "s:p:d:q:l:")) != -1) {
        switch (c) {
        case 's': server = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'd': file = optarg; break;
        case 'q': outstanding = atoi(optarg); break;
        case 'l': duration = atof(optarg); break;
        default: fprintf(stderr, "usage: dnsflood -s ADDR -p PORT -d FILE [-q N] [-l S]\n"); return 2;
        }
    }
    if (!file || outstanding < 1 || outstanding > 60000 || duration <= 0 || duration > 600) {
        fprintf(stderr, "dnsflood: need -d FILE; -q 1..60000; -l 0..600\n");
        return 2;
    }
    FILE *f = fopen(file, "r");
    if (!f) {
        perror(file);
        return 2;
    }
    size_t nq = 0, cap = 1024;
    query_t *qs = malloc(cap * sizeof(*qs));
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        char name[300], type[32], ecs[80];
        int k = sscanf(line, "%299s %31s %79s", name, type, ecs);
        if (k < 2 || name[0] == '#') {
            continue;
        }
        if (nq == cap) {
            cap *= 2;
            qs = realloc(qs, cap * sizeof(*qs));
        }
        if (build(name, type, k == 3 ? ecs : NULL, &qs[nq]) == 0) {
            nq++;
        }
    }
    fclose(f);
    if (nq == 0) {
        fprintf(stderr, "dnsflood: no queries in %s\n", file);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, server, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("connect");
        return 2;
    }
    int bufsz = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz));
    /* Each outstanding slot has an ID; a slot is reused when its answer arrives or after
     * a 1 s timeout (counted lost). */
    double *sent_at = calloc(65536, sizeof(double));
    uint16_t next_id = 1;
    int inflight = 0;
    uint64_t sent = 0, done = 0, lost = 0;
    size_t qi = 0;
    double start = now(), end = start + duration, last_sweep = start;
    uint8_t buf[4096];
    while (now() < end) {
        while (inflight < outstanding) {
            query_t *q = &qs[qi++ % nq];
            uint16_t id = next_id++;
            if (next_id == 0) {
                next_id = 1;
            }
            q->wire[0] = (uint8_t)(id >> 8);
            q->wire[1] = (uint8_t)id;
            if (send(fd, q->wire, q->len, 0) < 0) {
                break;
            }
            sent_at[id] = now();
            sent++;
            inflight++;
        }
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 10) > 0) {
            for (;;) {
                ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (n < 12) {
                    break;
                }
                uint16_t id = (uint16_t)((buf[0] << 8) | buf[1]);
                if (sent_at[id] > 0) {
                    sent_at[id] = 0;
                    done++;
                    inflight--;
                }
            }
        }
        double t = now();
        if (t - last_sweep > 0.1) {
            last_sweep = t;
            for (int id = 1; id < 65536; id++) {
                if (sent_at[id] > 0 && t - sent_at[id] > 1.0) {
                    sent_at[id] = 0;
                    lost++;
                    inflight--;
                }
            }
        }
    }
    double el = now() - start;
    printf("sent %llu completed %llu lost %llu qps %.0f\n", (unsigned long long)sent,
           (unsigned long long)done, (unsigned long long)lost, done / el);
    free(sent_at);
    free(qs);
    close(fd);
    return 0;
}
