/* test_ctl.c: the control protocol codec: round trips and a table of malformed input. */
#include "ctl/ctl.h"
#include "tap.h"

#include <stdlib.h>
#include <string.h>

static ctl_request_t req;

static int decode_all(const uint8_t *p, size_t len)
{
    ctl_header_t h;
    int rc = ctl_decode_header(p, len, &h);
    if (rc != 0) {
        return rc;
    }
    if (h.type != CTL_T_REQUEST || len != CTL_HDR_LEN + (size_t)h.length) {
        return MS_EPARSE;
    }
    return ctl_decode_request(p + CTL_HDR_LEN, h.length, &req);
}

int main(void)
{
    buf_t b;
    buf_init(&b);
    const char *argv[] = {"explain", "www.example.com", "192.0.2.1", "--ecs", "10.0.0.0/8"};
    tap_ok(ctl_encode_request(&b, 5, argv) == 0, "encode a request");
    tap_ok(decode_all(b.data, b.len) == 0 && req.argc == 5 && strcmp(req.argv[0], "explain") == 0 &&
               strcmp(req.argv[4], "10.0.0.0/8") == 0 && req.argv[5] == NULL,
           "round trip keeps every argument and NULL-terminates argv");
    const char *empty[] = {"status", ""};
    buf_reset(&b);
    tap_ok(ctl_encode_request(&b, 2, empty) == 0 && decode_all(b.data, b.len) == 0 &&
               req.argc == 2 && req.argv[1][0] == '\0',
           "empty arguments survive");

    /* malformed */
    uint8_t good[64];
    buf_reset(&b);
    const char *one[] = {"status"};
    if (ctl_encode_request(&b, 1, one) != 0) {
        return 1;
    }
    memcpy(good, b.data, b.len);
    size_t glen = b.len;
    struct {
        const char *what;
        size_t at;
        uint8_t val;
        size_t len;
        int want;
    } cases[] = {
        {"short header", 0, 0, 5, MS_ETRUNC},
        {"bad magic", 0, 'X', 0, MS_EPARSE},
        {"bad version", 4, 9, 0, MS_EPARSE},
        {"unknown type", 5, 7, 0, MS_EPARSE},
        {"length too large", 8, 0x7F, 0, MS_EPARSE},
        {"argc 0", 13, 0, 0, MS_EPARSE},
        {"argc beyond data", 13, 5, 0, MS_ETRUNC},
        {"arg length beyond data", 15, 200, 0, MS_ETRUNC},
        {"payload cut", 0, 0, 16, MS_EPARSE},
    };
    for (size_t i = 0; i < MS_ARRAY_LEN(cases); i++) {
        uint8_t m[64];
        memcpy(m, good, glen);
        size_t len = cases[i].len ? cases[i].len : glen;
        if (!cases[i].len) {
            m[cases[i].at] = cases[i].val;
        }
        int rc = decode_all(m, len);
        tap_ok(rc != 0, "%s is refused (rc %d)", cases[i].what, rc);
    }
    /* NUL inside an argument, trailing bytes, too many args */
    uint8_t nul[] = {0, 1, 0, 3, 'a', 0, 'b'};
    tap_ok(ctl_decode_request(nul, sizeof(nul), &req) == MS_EPARSE, "NUL inside an argument");
    uint8_t trail[] = {0, 1, 0, 1, 'a', 'x'};
    tap_ok(ctl_decode_request(trail, sizeof(trail), &req) == MS_EPARSE, "trailing bytes");
    uint8_t many[] = {0, 65};
    tap_ok(ctl_decode_request(many, sizeof(many), &req) == MS_EPARSE, "more than 64 arguments");
    const char *big[CTL_MAX_ARGS + 1];
    for (size_t i = 0; i <= CTL_MAX_ARGS; i++) {
        big[i] = "x";
    }
    buf_reset(&b);
    tap_ok(ctl_encode_request(&b, CTL_MAX_ARGS + 1, big) == MS_ERANGE,
           "the encoder refuses too many arguments");
    buf_reset(&b);
    ctl_encode_reply(&b, CTL_ENOENT, "no site\n", 8);
    ctl_header_t h;
    tap_ok(ctl_decode_header(b.data, b.len, &h) == 0 && h.type == CTL_T_REPLY &&
               h.status == CTL_ENOENT && h.length == 8,
           "reply header round trip");
    buf_deinit(&b);
    return tap_done();
}
