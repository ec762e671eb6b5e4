/* tap.h: a minimal TAP producer for the unit tests (one binary per module). */
#ifndef MS_TAP_H
#define MS_TAP_H

#include <stdbool.h>
#include <stdio.h>

void tap_ok(bool cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints the plan and returns the exit status: 0 when every test passed. */
int tap_done(void);

#define TAP_EQ_INT(a, b, ...)                                                                      \
    do {                                                                                           \
        long long tap_a_ = (long long)(a), tap_b_ = (long long)(b);                                \
        tap_ok(tap_a_ == tap_b_, __VA_ARGS__);                                                     \
        if (tap_a_ != tap_b_) {                                                                    \
            tap_diag("  got %lld, expected %lld", tap_a_, tap_b_);                                 \
        }                                                                                          \
    } while (0)

#endif
