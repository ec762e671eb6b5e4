/* ctl.h: the ctl module's interface: the control protocol between multisitectl and the
 * daemon (codec shared by both; docs/ctl.md has the byte diagram), and the daemon's control
 * socket server on the libuv loop.
 *
 * One request per connection: the client sends a request (the command line as a list of
 * strings), the server answers with a status and a text (human table or JSON), then closes.
 * Every byte from the socket is treated as hostile: bounded sizes, explicit big-endian
 * decoding, a clear error reply, never a crash (tests/fuzz/fuzz_ctl.c). */
#ifndef MS_CTL_H
#define MS_CTL_H

#include "util/util.h"

#include <uv.h>

#define CTL_MAGIC       0x4D534354u /* "MSCT" */
#define CTL_VERSION     1
#define CTL_HDR_LEN     12
#define CTL_MAX_REQUEST (64u * 1024) /* a command line is small */
#define CTL_MAX_REPLY   (16u * 1024 * 1024)
#define CTL_MAX_ARGS    64

enum { CTL_T_REQUEST = 1, CTL_T_REPLY = 2 };

/* Reply status codes (also multisitectl's exit status). */
enum {
    CTL_OK = 0,
    CTL_EFAIL = 1,  /* the command ran and failed (e.g. reload refused the config) */
    CTL_EUSAGE = 2, /* unknown command or bad arguments */
    CTL_ENOENT = 3, /* no such site or name */
    CTL_EPROTO = 4  /* malformed request */
};

typedef struct {
    char *argv[CTL_MAX_ARGS + 1]; /* NUL-terminated strings in `mem`; argv[argc] = NULL */
    size_t argc;
    char mem[CTL_MAX_REQUEST];
} ctl_request_t;

typedef struct {
    uint8_t type;
    uint16_t status;
    uint32_t length; /* payload bytes after the header */
} ctl_header_t;

/* Header: magic u32 | version u8 | type u8 | status u16 | length u32. Returns 0,
 * MS_ETRUNC (fewer than CTL_HDR_LEN bytes) or MS_EPARSE (bad magic/version/type/length). */
int ctl_decode_header(const uint8_t *p, size_t len, ctl_header_t *out) MS_WUR;
void ctl_encode_header(uint8_t *p, uint8_t type, uint16_t status, uint32_t length);

/* Request payload: argc u16 | argc x (len u16 | bytes). Arguments may not contain NUL. */
int ctl_encode_request(buf_t *out, size_t argc, const char *const *argv) MS_WUR;
int ctl_decode_request(const uint8_t *payload, size_t len, ctl_request_t *req) MS_WUR;
void ctl_encode_reply(buf_t *out, uint16_t status, const char *text, size_t len);

/* ---- server (daemon side; loop thread) ---- */
typedef struct ctl_server ctl_server_t;
/* Run a request; write the reply text into out and return a CTL_* status. */
typedef uint16_t (*ctl_handler_t)(void *ud, const ctl_request_t *req, buf_t *out);

/* Listen on a unix socket at path (a stale socket file is replaced), mode 0600. */
int ctl_server_new(uv_loop_t *loop, const char *path, ctl_handler_t h, void *ud,
                   ctl_server_t **out) MS_WUR;
void ctl_server_free(ctl_server_t *s); /* closes asynchronously; accepts NULL */

/* ---- client (multisitectl; blocking) ---- */
/* Send argv to the socket at path and read the reply (text into out, NUL-terminated).
 * Returns the reply status, or -1 with a reason in out when the daemon is unreachable. */
int ctl_call(const char *path, size_t argc, const char *const *argv, buf_t *out,
             unsigned timeout_ms);

#endif
