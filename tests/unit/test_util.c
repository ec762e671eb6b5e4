/* test_util.c: unit tests of the util module: address and integer parsing, the arena, the
 * growable buffer, the big-endian helpers and the log rate limiter. */
#include "tap.h"
#include "util/util.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_net_parse_addr(void)
{
    static const struct {
        const char *in;
        int ok;
        int family;
        const char *ip; /* expected address text (inet_ntop form) */
        unsigned port;
    } cases[] = {
        {"1.2.3.4:53", 1, AF_INET, "1.2.3.4", 53},
        {"1.2.3.4", 1, AF_INET, "1.2.3.4", 5353},
        {"127.0.0.1:0", 1, AF_INET, "127.0.0.1", 0},
        {"0.0.0.0:65535", 1, AF_INET, "0.0.0.0", 65535},
        {"[::1]:53", 1, AF_INET6, "::1", 53},
        {"[2001:db8::1]:8053", 1, AF_INET6, "2001:db8::1", 8053},
        {"[::1]", 1, AF_INET6, "::1", 5353},
        {"::1", 1, AF_INET6, "::1", 5353},
        {"2001:db8::53", 1, AF_INET6, "2001:db8::53", 5353},
        {"::", 1, AF_INET6, "::", 5353},
        {"1.2.3.4:99999", 0, 0, NULL, 0},
        {"1.2.3.4:65536", 0, 0, NULL, 0},
        {"1.2.3.4:", 0, 0, NULL, 0},
        {"1.2.3.4:-1", 0, 0, NULL, 0},
        {"1.2.3.4:+53", 0, 0, NULL, 0},
        {"1.2.3.4:53x", 0, 0, NULL, 0},
        {"1.2.3.4: 53", 0, 0, NULL, 0},
        {"[::1", 0, 0, NULL, 0},
        {"[::1]53", 0, 0, NULL, 0},
        {"[::1]:", 0, 0, NULL, 0},
        {"[]:53", 0, 0, NULL, 0},
        {"", 0, 0, NULL, 0},
        {":53", 0, 0, NULL, 0},
        {"1.2.3:53", 0, 0, NULL, 0},
        {"256.1.1.1", 0, 0, NULL, 0},
        {"localhost:53", 0, 0, NULL, 0},
        {"::1::2", 0, 0, NULL, 0},
        {"[1:2:3:4:5:6:7:8:9]:53", 0, 0, NULL, 0},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        net_addr_t a;
        memset(&a, 0xA5, sizeof(a));
        int rc = net_parse_addr(cases[i].in, 5353, &a);
        if (!cases[i].ok) {
            TAP_EQ_INT(rc, MS_EINVAL, "net_parse_addr(\"%s\") rejected", cases[i].in);
            continue;
        }
        TAP_EQ_INT(rc, 0, "net_parse_addr(\"%s\") accepted", cases[i].in);
        if (rc != 0) {
            continue;
        }
        char ip[INET6_ADDRSTRLEN] = "";
        const void *src = a.sa.sa_family == AF_INET6 ? (const void *)&a.sin6.sin6_addr
                                                     : (const void *)&a.sin.sin_addr;
        inet_ntop(a.sa.sa_family, src, ip, sizeof(ip));
        tap_ok(a.sa.sa_family == cases[i].family && strcmp(ip, cases[i].ip) == 0 &&
                   net_addr_port(&a) == cases[i].port,
               "net_parse_addr(\"%s\") -> family %d %s port %u", cases[i].in, a.sa.sa_family, ip,
               net_addr_port(&a));
        TAP_EQ_INT(net_addr_len(&a),
                   cases[i].family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                               : sizeof(struct sockaddr_in),
                   "net_addr_len(\"%s\")", cases[i].in);
    }

    /* net_addr_str round-trips through net_parse_addr. */
    static const char *const round[] = {"192.0.2.1:53", "[2001:db8::1]:5353", "[::]:0"};
    for (size_t i = 0; i < MS_ARRAY_LEN(round); i++) {
        net_addr_t a;
        char buf[NET_ADDR_STRLEN];
        int rc = net_parse_addr(round[i], 1, &a);
        tap_ok(rc == 0 && strcmp(net_addr_str(&a, buf, sizeof(buf)), round[i]) == 0,
               "net_addr_str round trip of %s (got %s)", round[i], rc == 0 ? buf : "error");
    }

    net_addr_t a;
    TAP_EQ_INT(net_parse_ip("192.0.2.1", &a), 0, "net_parse_ip v4");
    TAP_EQ_INT(net_addr_port(&a), 0, "net_parse_ip leaves the port 0");
    TAP_EQ_INT(net_parse_ip("2001:db8::1", &a), 0, "net_parse_ip v6");
    TAP_EQ_INT(a.sa.sa_family, AF_INET6, "net_parse_ip v6 family");
    TAP_EQ_INT(net_parse_ip("192.0.2.1:53", &a), MS_EINVAL, "net_parse_ip refuses a port");
    TAP_EQ_INT(net_parse_ip("[::1]", &a), MS_EINVAL, "net_parse_ip refuses brackets");
}

static void test_parse_u64(void)
{
    static const struct {
        const char *in;
        bool ok;
        uint64_t v;
    } cases[] = {
        {"0", true, 0},
        {"1", true, 1},
        {"007", true, 7},
        {"65535", true, 65535},
        {"18446744073709551615", true, UINT64_MAX},
        {"18446744073709551616", false, 0},
        {"99999999999999999999999", false, 0},
        {"", false, 0},
        {"-1", false, 0},
        {"+1", false, 0},
        {" 1", false, 0},
        {" -1", false, 0},
        {"\t5", false, 0},
        {"1 ", false, 0},
        {"1x", false, 0},
        {"0x10", false, 0},
        {"1.5", false, 0},
        {"abc", false, 0},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        uint64_t v = 12345;
        bool ok = parse_u64(cases[i].in, &v);
        if (cases[i].ok) {
            tap_ok(ok && v == cases[i].v, "parse_u64(\"%s\") = %llu", cases[i].in,
                   (unsigned long long)v);
        } else {
            tap_ok(!ok, "parse_u64(\"%s\") rejected", cases[i].in);
        }
    }
    uint64_t v;
    tap_ok(!parse_u64(NULL, &v), "parse_u64(NULL) rejected");
}

static void test_arena(void)
{
    arena_t *a = arena_new(100); /* raised to the 4096-byte minimum */
    TAP_EQ_INT(arena_bytes(a), 0, "new arena reserves nothing");
    bool aligned = true, distinct = true;
    uint8_t *prev = NULL;
    size_t prev_n = 0;
    for (size_t n = 1; n < 200; n++) {
        uint8_t *p = arena_alloc(a, n);
        aligned = aligned && ((uintptr_t)p % 8) == 0;
        memset(p, (int)n, n);
        /* Same chunk: the new block starts after the previous one. */
        if (prev && p > prev && p < prev + prev_n) {
            distinct = false;
        }
        prev = p;
        prev_n = n;
    }
    tap_ok(aligned, "arena_alloc returns 8-byte aligned blocks");
    tap_ok(distinct, "arena blocks do not overlap");
    size_t before = arena_bytes(a);
    tap_ok(before >= 199 * 200 / 2, "arena_bytes %zu covers what was allocated", before);

    /* A big block (over a quarter of the chunk) gets a chunk of its own, and the current
     * chunk's free space stays in use. */
    arena_t *a2 = arena_new(4096);
    uint8_t *small1 = arena_alloc(a2, 8);
    size_t one_chunk = arena_bytes(a2);
    uint8_t *big = arena_alloc(a2, 100000);
    memset(big, 0x5A, 100000);
    uint8_t *small2 = arena_alloc(a2, 8);
    tap_ok(small2 == small1 + 8, "small allocation after a big one continues the chunk");
    tap_ok(arena_bytes(a2) >= one_chunk + 100000, "big block accounted in arena_bytes");
    tap_ok(big[0] == 0x5A && big[99999] == 0x5A, "big block usable");
    arena_free(a2);

    const char *s = "hello arena";
    char *d = arena_strdup(a, s);
    tap_ok(d != s && strcmp(d, s) == 0, "arena_strdup copies");
    uint8_t raw[5] = {1, 2, 0, 4, 5};
    uint8_t *m = arena_memdup(a, raw, sizeof(raw));
    tap_ok(memcmp(m, raw, sizeof(raw)) == 0, "arena_memdup copies bytes including NUL");
    arena_free(a);
    arena_free(NULL);
    tap_ok(true, "arena_free(NULL) is a no-op");
}

static void test_buf(void)
{
    buf_t b;
    buf_init(&b);
    TAP_EQ_INT(b.len, 0, "buf_init: empty");
    buf_printf(&b, "%s=%d", "x", 42);
    tap_ok(b.len == 4 && strcmp((char *)b.data, "x=42") == 0, "buf_printf formats");
    buf_printf(&b, ",%05u", 7u);
    tap_ok(b.len == 10 && strcmp((char *)b.data, "x=42,00007") == 0, "buf_printf appends: %s",
           (char *)b.data);
    /* Growth across many reallocations keeps content and the NUL terminator. */
    for (int i = 0; i < 1000; i++) {
        buf_printf(&b, "%03d", i % 1000);
    }
    bool ok = b.len == 10 + 3000 && b.cap > b.len && b.data[b.len] == 0;
    for (int i = 0; i < 1000 && ok; i++) {
        char want[16];
        snprintf(want, sizeof(want), "%03d", i);
        ok = memcmp(b.data + 10 + 3 * i, want, 3) == 0;
    }
    tap_ok(ok, "buf_printf grows and keeps content (len %zu)", b.len);
    buf_reset(&b);
    tap_ok(b.len == 0 && b.data[0] == 0, "buf_reset empties");
    uint8_t bytes[3] = {0, 0xFF, 0};
    buf_append(&b, bytes, 3);
    tap_ok(b.len == 3 && memcmp(b.data, bytes, 3) == 0 && b.data[3] == 0,
           "buf_append binary data, NUL after");
    buf_reserve(&b, 5000);
    tap_ok(b.cap - b.len >= 5001, "buf_reserve leaves room for the bytes and a NUL");
    /* A long formatted string in one go. */
    buf_reset(&b);
    char big[3000];
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    buf_printf(&b, "<%s>", big);
    tap_ok(b.len == sizeof(big) + 1 && b.data[0] == '<' && b.data[b.len - 1] == '>' &&
               b.data[b.len] == 0,
           "buf_printf with a 3000-byte argument");
    buf_deinit(&b);
    tap_ok(b.data == NULL && b.len == 0 && b.cap == 0, "buf_deinit resets");
}

static void test_rd_wr(void)
{
    uint8_t p[8];
    wr_u16(p, 0x1234);
    tap_ok(p[0] == 0x12 && p[1] == 0x34, "wr_u16 big-endian");
    TAP_EQ_INT(rd_u16(p), 0x1234, "rd_u16");
    wr_u16(p, 0xFFFE);
    TAP_EQ_INT(rd_u16(p), 0xFFFE, "rd_u16 high bit");
    wr_u32(p, 0x89ABCDEFu);
    tap_ok(p[0] == 0x89 && p[1] == 0xAB && p[2] == 0xCD && p[3] == 0xEF, "wr_u32 big-endian");
    TAP_EQ_INT(rd_u32(p), 0x89ABCDEFu, "rd_u32 high bit");
    wr_u64(p, 0x0102030405060708ull);
    bool ok = true;
    for (int i = 0; i < 8; i++) {
        ok = ok && p[i] == i + 1;
    }
    tap_ok(ok, "wr_u64 big-endian");
    tap_ok(rd_u64(p) == 0x0102030405060708ull, "rd_u64");
    wr_u64(p, UINT64_MAX - 1);
    tap_ok(rd_u64(p) == UINT64_MAX - 1, "rd_u64 all high bits");
}

static void test_err_str(void)
{
    tap_ok(strcmp(err_str(MS_OK), "success") == 0, "err_str(MS_OK)");
    tap_ok(strcmp(err_str(MS_ECONF), "invalid configuration") == 0, "err_str(MS_ECONF)");
    tap_ok(strcmp(err_str(12345), "unknown error") == 0, "err_str(unknown)");
    /* Every code has a distinct message. */
    bool distinct = true;
    for (int i = 0; i >= MS_ECLOSED; i--) {
        for (int j = i - 1; j >= MS_ECLOSED; j--) {
            distinct = distinct && strcmp(err_str(i), err_str(j)) != 0;
        }
        distinct = distinct && strcmp(err_str(i), "unknown error") != 0;
    }
    tap_ok(distinct, "err_str: every code has its own message");
}

/* log_rl: capture stderr into a temporary file and count what came out. */
static char *read_fd_all(int fd)
{
    off_t end = lseek(fd, 0, SEEK_END);
    char *s = calloc(1, (size_t)end + 1);
    if (pread(fd, s, (size_t)end, 0) != end) {
        s[0] = 0;
    }
    return s;
}

static int count_substr(const char *s, const char *sub)
{
    int n = 0;
    for (const char *p = strstr(s, sub); p; p = strstr(p + 1, sub)) {
        n++;
    }
    return n;
}

static void test_log_rl(void)
{
    char path[] = "/tmp/test_util_logXXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        tap_ok(false, "mkstemp");
        return;
    }
    unlink(path);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);

    log_init("test_util", false, LOG_LVL_INFO);
    log_ratelimit_t rl = LOG_RATELIMIT_INIT(3, 200);
    for (int i = 0; i < 10; i++) {
        log_rl(&rl, LOG_LVL_WARN, "rl message %d", i);
    }
    uint32_t suppressed = rl.suppressed;
    /* Below the level: not even counted. */
    log_rl(&rl, LOG_LVL_DEBUG, "rl debug message");
    uint32_t suppressed_after_debug = rl.suppressed;
    /* Next window: the summary comes out first, then the message. */
    uint64_t deadline = time_mono_ms() + 5000;
    while (time_mono_ms() - rl.window_start_ms < 200 && time_mono_ms() < deadline) {
        usleep(10000);
    }
    log_rl(&rl, LOG_LVL_WARN, "rl next window");
    uint32_t suppressed_new = rl.suppressed;

    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    char *out = read_fd_all(fd);
    close(fd);

    TAP_EQ_INT(count_substr(out, "rl message "), 3, "log_rl: burst of 3 let through");
    tap_ok(strstr(out, "rl message 0") && strstr(out, "rl message 2") &&
               !strstr(out, "rl message 3"),
           "log_rl: the first three, not the fourth");
    TAP_EQ_INT(suppressed, 7, "log_rl: 7 suppressed in the first window");
    TAP_EQ_INT(suppressed_after_debug, 7, "log_rl: a message below the level is not counted");
    tap_ok(!strstr(out, "rl debug message"), "log_rl: debug message not printed at info");
    TAP_EQ_INT(count_substr(out, "(7 similar messages suppressed)"), 1,
               "log_rl: suppression count reported once in the next window");
    tap_ok(strstr(out, "rl next window") != NULL, "log_rl: new window lets messages through");
    const char *sum = strstr(out, "suppressed)"), *after = strstr(out, "rl next window");
    tap_ok(sum && after && sum < after, "log_rl: summary comes before the new message");
    TAP_EQ_INT(suppressed_new, 0, "log_rl: counter reset in the new window");
    tap_ok(strstr(out, "test_util[warning]: rl message 0") != NULL,
           "log line carries ident and level");
    free(out);
}

int main(void)
{
    test_net_parse_addr();
    test_parse_u64();
    test_arena();
    test_buf();
    test_rd_wr();
    test_err_str();
    test_log_rl();
    return tap_done();
}
