/* log.c: leveled logging to stderr or syslog, and a rate limiter for remotely triggered
 * messages. */
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

static log_level_t log_level = LOG_LVL_INFO;
static bool log_syslog;
static const char *log_ident = "multisite";

void log_init(const char *ident, bool use_syslog, log_level_t level)
{
    log_ident = ident;
    log_syslog = use_syslog;
    log_level = level;
    if (use_syslog) {
        openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
    }
}

void log_set_level(log_level_t level)
{
    log_level = level;
}

bool log_enabled(log_level_t level)
{
    return level <= log_level;
}

void log_vmsg(log_level_t level, const char *fmt, va_list ap)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    if (level > log_level) {
        return;
    }
    if (log_syslog) {
        vsyslog(prio[level], fmt, ap);
        return;
    }
    /* One fprintf per line so that lines from different threads do not interleave. */
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%s]: %s\n", tm.tm_year + 1900,
            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
            log_ident, names[level], msg);
}

void log_msg(log_level_t level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, fmt, ap);
    va_end(ap);
}

void log_rl(log_ratelimit_t *rl, log_level_t level, const char *fmt, ...)
{
    if (level > log_level) {
        return;
    }
    uint64_t now = time_mono_ms();
    uint64_t start =
        atomic_load_explicit((_Atomic uint64_t *)&rl->window_start_ms, memory_order_relaxed);
    if (now - start >= rl->period_ms) {
        /* New window; whoever wins the exchange resets the counters. */
        if (atomic_compare_exchange_strong((_Atomic uint64_t *)&rl->window_start_ms, &start, now)) {
            uint32_t sup = atomic_exchange((_Atomic uint32_t *)&rl->suppressed, 0);
            atomic_store((_Atomic uint32_t *)&rl->count, 0);
            if (sup > 0) {
                log_msg(level, "(%u similar messages suppressed)", sup);
            }
        }
    }
    uint32_t n = atomic_fetch_add((_Atomic uint32_t *)&rl->count, 1);
    if (n >= rl->burst) {
        atomic_fetch_add((_Atomic uint32_t *)&rl->suppressed, 1);
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, fmt, ap);
    va_end(ap);
}
