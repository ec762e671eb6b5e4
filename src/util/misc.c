/* misc.c: error strings, clocks, address parsing, file reading. */
#include "util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *err_str(int err)
{
    switch (err) {
    case MS_OK: return "success";
    case MS_ENOMEM: return "out of memory";
    case MS_EINVAL: return "invalid argument";
    case MS_EIO: return "I/O error";
    case MS_ENOENT: return "not found";
    case MS_EEXIST: return "already exists";
    case MS_ERANGE: return "out of range";
    case MS_EPARSE: return "parse error";
    case MS_ETRUNC: return "truncated";
    case MS_EAUTH: return "authentication failed";
    case MS_EAGAIN: return "try again";
    case MS_ESPACE: return "no space";
    case MS_ECONF: return "invalid configuration";
    case MS_EDB: return "database error";
    case MS_ECLOSED: return "connection closed";
    default: return "unknown error";
    }
}

uint64_t time_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t time_mono_ms(void)
{
    return time_mono_ns() / 1000000u;
}

uint64_t time_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

bool parse_u64(const char *s, uint64_t *out)
{
    /* strtoull would skip leading space and negate a '-': only plain digits are numbers. */
    if (!s || !isdigit((unsigned char)*s)) {
        return false;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) {
        return false;
    }
    *out = v;
    return true;
}

int net_parse_ip(const char *s, net_addr_t *out)
{
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, s, &out->sin.sin_addr) == 1) {
        out->sin.sin_family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, s, &out->sin6.sin6_addr) == 1) {
        out->sin6.sin6_family = AF_INET6;
        return 0;
    }
    return MS_EINVAL;
}

int net_parse_addr(const char *s, uint16_t default_port, net_addr_t *out)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *port = NULL;
    size_t hl;
    if (s[0] == '[') {
        const char *e = strchr(s, ']');
        if (!e) {
            return MS_EINVAL;
        }
        hl = (size_t)(e - s - 1);
        if (e[1] == ':') {
            port = e + 2;
        } else if (e[1] != '\0') {
            return MS_EINVAL;
        }
        s++;
    } else {
        const char *c = strchr(s, ':');
        if (c && strchr(c + 1, ':')) {
            hl = strlen(s); /* bare IPv6, no port */
        } else if (c) {
            hl = (size_t)(c - s);
            port = c + 1;
        } else {
            hl = strlen(s);
        }
    }
    if (hl == 0 || hl >= sizeof(host)) {
        return MS_EINVAL;
    }
    memcpy(host, s, hl);
    host[hl] = '\0';
    if (net_parse_ip(host, out) != 0) {
        return MS_EINVAL;
    }
    uint64_t p = default_port;
    if (port && (!parse_u64(port, &p) || p > 65535)) {
        return MS_EINVAL;
    }
    if (out->sa.sa_family == AF_INET) {
        out->sin.sin_port = htons((uint16_t)p);
    } else {
        out->sin6.sin6_port = htons((uint16_t)p);
    }
    return 0;
}

socklen_t net_addr_len(const net_addr_t *a)
{
    return a->sa.sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

uint16_t net_addr_port(const net_addr_t *a)
{
    return ntohs(a->sa.sa_family == AF_INET6 ? a->sin6.sin6_port : a->sin.sin_port);
}

const char *net_addr_str(const net_addr_t *a, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];
    if (a->sa.sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &a->sin6.sin6_addr, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, ntohs(a->sin6.sin6_port));
    } else if (a->sa.sa_family == AF_INET) {
        inet_ntop(AF_INET, &a->sin.sin_addr, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, ntohs(a->sin.sin_port));
    } else {
        snprintf(buf, len, "(unknown family)");
    }
    return buf;
}

int file_read_all(const char *path, size_t max, char **out, size_t *out_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return MS_EIO;
    }
    buf_t b;
    buf_init(&b);
    for (;;) {
        buf_reserve(&b, 65536);
        ssize_t n = read(fd, b.data + b.len, b.cap - b.len - 1);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            close(fd);
            buf_deinit(&b);
            return MS_EIO;
        }
        if (n == 0) {
            break;
        }
        b.len += (size_t)n;
        if (b.len > max) {
            close(fd);
            buf_deinit(&b);
            return MS_ERANGE;
        }
    }
    close(fd);
    buf_reserve(&b, 0);
    b.data[b.len] = 0;
    *out = (char *)b.data;
    *out_len = b.len;
    return 0;
}
