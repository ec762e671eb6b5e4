/* util.h: the util module's interface: logging, allocation, error codes, time, small helpers.
 *
 * Everything here is thread-safe unless noted. Allocation failures abort (as gdnsd and Redis
 * do): a server that cannot allocate a few bytes cannot do anything useful, and checking
 * every small allocation hides the checks that matter, which are the bounds on sizes that
 * come from the network. Those are checked before allocating. */
#ifndef MS_UTIL_H
#define MS_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define MS_WUR          __attribute__((warn_unused_result))
#define MS_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define MS_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MS_LIKELY(x)    __builtin_expect(!!(x), 1)
#define MS_UNLIKELY(x)  __builtin_expect(!!(x), 0)

/* ---- error codes: runtime functions return 0 or one of these (negative) ---- */
enum {
    MS_OK = 0,
    MS_ENOMEM = -1,
    MS_EINVAL = -2,  /* bad argument or bad input */
    MS_EIO = -3,     /* I/O error, errno-level detail logged by the caller */
    MS_ENOENT = -4,  /* no such thing */
    MS_EEXIST = -5,  /* already exists */
    MS_ERANGE = -6,  /* value out of range */
    MS_EPARSE = -7,  /* syntax error in a file or message */
    MS_ETRUNC = -8,  /* message truncated */
    MS_EAUTH = -9,   /* authentication failed */
    MS_EAGAIN = -10, /* try again later */
    MS_ESPACE = -11, /* output buffer too small */
    MS_ECONF = -12,  /* invalid configuration */
    MS_EDB = -13,    /* database error */
    MS_ECLOSED = -14 /* peer closed the connection */
};
const char *err_str(int err);

/* ---- logging ---- */
typedef enum { LOG_LVL_ERR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG } log_level_t;

/* Configure once at startup, before threads start. ident names the program in syslog. */
void log_init(const char *ident, bool use_syslog, log_level_t level);
void log_set_level(log_level_t level);
bool log_enabled(log_level_t level);
void log_msg(log_level_t level, const char *fmt, ...) MS_PRINTF(2, 3);
void log_vmsg(log_level_t level, const char *fmt, va_list ap) MS_PRINTF(2, 0);
#define log_err(...)  log_msg(LOG_LVL_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_enabled(LOG_LVL_DEBUG)) {                                                          \
            log_msg(LOG_LVL_DEBUG, __VA_ARGS__);                                                   \
        }                                                                                          \
    } while (0)

/* Rate limiter for messages a remote party can trigger: at most `burst` messages per
 * `period_ms`; the rest are counted and summarised in the next message let through.
 * Thread-safe (atomics); embed one static per call site. */
typedef struct {
    uint64_t window_start_ms; /* atomic */
    uint32_t count;           /* atomic */
    uint32_t suppressed;      /* atomic */
    uint32_t burst;
    uint32_t period_ms;
} log_ratelimit_t;
#define LOG_RATELIMIT_INIT(burst_, period_ms_)                                                     \
    {                                                                                              \
        0, 0, 0, (burst_), (period_ms_)                                                            \
    }
void log_rl(log_ratelimit_t *rl, log_level_t level, const char *fmt, ...) MS_PRINTF(3, 4);

/* ---- allocation (abort on OOM) ---- */
void *xmalloc(size_t n) __attribute__((malloc));
void *xcalloc(size_t nmemb, size_t size) __attribute__((malloc));
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s) __attribute__((malloc));
char *xstrndup(const char *s, size_t n) __attribute__((malloc));
char *xasprintf(const char *fmt, ...) MS_PRINTF(1, 2) __attribute__((malloc));

/* Arena: many small allocations freed together (zone data, config trees). Not thread-safe. */
typedef struct arena arena_t;
arena_t *arena_new(size_t chunk_size);
void *arena_alloc(arena_t *a, size_t n); /* 8-byte aligned */
void *arena_memdup(arena_t *a, const void *p, size_t n);
char *arena_strdup(arena_t *a, const char *s);
size_t arena_bytes(const arena_t *a); /* bytes reserved from the system */
void arena_free(arena_t *a);          /* accepts NULL */

/* ---- growable byte buffer ---- */
typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
} buf_t;
void buf_init(buf_t *b);
void buf_deinit(buf_t *b);
void buf_reserve(buf_t *b, size_t extra);
void buf_append(buf_t *b, const void *p, size_t n);
void buf_printf(buf_t *b, const char *fmt, ...) MS_PRINTF(2, 3);
void buf_reset(buf_t *b);

/* ---- big-endian encode/decode (never struct casts on wire data) ---- */
static inline void wr_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void wr_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline void wr_u64(uint8_t *p, uint64_t v)
{
    wr_u32(p, (uint32_t)(v >> 32));
    wr_u32(p + 4, (uint32_t)v);
}
static inline uint16_t rd_u16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t rd_u32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t rd_u64(const uint8_t *p)
{
    return ((uint64_t)rd_u32(p) << 32) | rd_u32(p + 4);
}

/* ---- time ---- */
uint64_t time_mono_ms(void);
uint64_t time_mono_ns(void);
uint64_t time_wall_ms(void);

/* ---- network addresses ---- */
#include <sys/socket.h>
#include <netinet/in.h>
typedef union {
    struct sockaddr sa;
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
    struct sockaddr_storage ss;
} net_addr_t;
/* Parse "1.2.3.4:53", "[::1]:53", "::1" or "1.2.3.4" (default_port used when absent).
 * Returns 0 or MS_EINVAL. */
int net_parse_addr(const char *s, uint16_t default_port, net_addr_t *out) MS_WUR;
/* Parse an address without a port ("192.0.2.1", "2001:db8::1"). */
int net_parse_ip(const char *s, net_addr_t *out) MS_WUR;
socklen_t net_addr_len(const net_addr_t *a);
uint16_t net_addr_port(const net_addr_t *a);
/* "1.2.3.4:53" or "[::1]:53"; buf of at least NET_ADDR_STRLEN. */
#define NET_ADDR_STRLEN 64
const char *net_addr_str(const net_addr_t *a, char *buf, size_t len);

/* ---- service manager ---- */
/* Send a state string ("READY=1", "RELOADING=1", "STOPPING=1", "STATUS=...") to the socket
 * named by $NOTIFY_SOCKET (systemd's sd_notify protocol, without libsystemd). No-op when
 * the variable is unset. Returns 0 or MS_EIO. */
int notify_service(const char *state);

/* ---- misc ---- */
/* Read a whole file into a NUL-terminated heap buffer, at most max bytes. */
int file_read_all(const char *path, size_t max, char **out, size_t *out_len) MS_WUR;
/* Parse an unsigned decimal integer; whole string must be consumed. */
bool parse_u64(const char *s, uint64_t *out);

#endif
