/* fuzz_ctl.c: arbitrary bytes as a control request (header + payload), as the daemon's
 * control socket decodes them. */
#include "ctl/ctl.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ctl_request_t *req;
    if (!req) {
        req = xmalloc(sizeof(*req));
    }
    ctl_header_t h;
    if (ctl_decode_header(data, size, &h) == 0 && h.type == CTL_T_REQUEST &&
        size >= CTL_HDR_LEN + (size_t)h.length) {
        if (ctl_decode_request(data + CTL_HDR_LEN, h.length, req) == 0) {
            if (req->argc == 0 || req->argc > CTL_MAX_ARGS || req->argv[req->argc] != NULL) {
                abort();
            }
            for (size_t i = 0; i < req->argc; i++) {
                (void)strlen(req->argv[i]);
            }
        }
    }
    /* The payload decoder on its own, too. */
    if (ctl_decode_request(data, size, req) == 0 && req->argv[req->argc] != NULL) {
        abort();
    }
    return 0;
}
