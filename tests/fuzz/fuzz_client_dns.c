/* fuzz_client_dns.c: fuzz target for the client library's DNS reply parser (src/client/dns.c)
 * and, on the same inputs, its HTTP response parser: both read bytes from the network.
 *
 * The first input byte picks the mode:
 *   bit 0: the question is AAAA (else A);
 *   bit 1: the rest is an HTTP response for msc_http_parse instead.
 * The reply's own ID is used as the expected one, so inputs get past the ID check; the
 * question is always "svc.test" (the seed corpus uses it). Checked on every accepted reply:
 * at most MSC_MAX_ADDRS addresses, all of the asked family, a well-formed target name. */
#include "client/internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_reply(const msc_reply_t *r, uint16_t qtype)
{
    if (r->n > MSC_MAX_ADDRS || r->target_len == 0 || r->target_len > MSC_DNS_NAME_MAX) {
        __builtin_trap();
    }
    for (size_t i = 0; i < r->n; i++) {
        if (r->addr[i].sa.sa_family != (qtype == 28 ? AF_INET6 : AF_INET)) {
            __builtin_trap();
        }
    }
    size_t o = 0;
    while (o < r->target_len && r->target[o] != 0) {
        o += 1 + r->target[o];
    }
    if (o + 1 != r->target_len) {
        __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    uint8_t mode = data[0];
    data++;
    size--;
    /* An exactly-sized copy: a read past the end is an ASan error, also in the replay. */
    uint8_t *pkt = malloc(size ? size : 1);
    memcpy(pkt, data, size);
    if (mode & 2) {
        msc_http_result_t r = {0};
        if (msc_http_parse(pkt, size, &r) == 0) {
            if (!r.body || r.body_len > MSC_HTTP_MAX_BODY || r.body[r.body_len] != 0) {
                __builtin_trap();
            }
        }
        msc_http_result_free(&r);
    } else {
        static const uint8_t qname[] = "\3svc\4test";
        uint16_t qtype = (mode & 1) ? 28 : 1;
        uint16_t id = size >= 2 ? rd_u16(pkt) : 0;
        msc_reply_t *r = malloc(sizeof(*r));
        if (msc_dns_parse(pkt, size, id, qname, sizeof(qname), qtype, 80, r) == 0) {
            check_reply(r, qtype);
        }
        free(r);
    }
    free(pkt);
    return 0;
}
