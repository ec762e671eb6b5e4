/* tap.c: a minimal TAP producer. */
#include "tap.h"

#include <stdarg.h>

static int tap_n, tap_failed;

void tap_ok(bool cond, const char *fmt, ...)
{
    va_list ap;
    tap_n++;
    if (!cond) {
        tap_failed++;
    }
    printf("%sok %d - ", cond ? "" : "not ", tap_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

void tap_diag(const char *fmt, ...)
{
    va_list ap;
    printf("# ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

int tap_done(void)
{
    printf("1..%d\n", tap_n);
    if (tap_failed) {
        printf("# %d of %d tests failed\n", tap_failed, tap_n);
    }
    return tap_failed ? 1 : 0;
}
