/* codec.c: the control protocol's wire format (docs/ctl.md). */
#include "ctl.h"

#include <string.h>

_Static_assert(CTL_HDR_LEN == 4 + 1 + 1 + 2 + 4, "header layout");

void ctl_encode_header(uint8_t *p, uint8_t type, uint16_t status, uint32_t length)
{
    wr_u32(p, CTL_MAGIC);
    p[4] = CTL_VERSION;
    p[5] = type;
    wr_u16(p + 6, status);
    wr_u32(p + 8, length);
}

int ctl_decode_header(const uint8_t *p, size_t len, ctl_header_t *out)
{
    if (len < CTL_HDR_LEN) {
        return MS_ETRUNC;
    }
    if (rd_u32(p) != CTL_MAGIC || p[4] != CTL_VERSION) {
        return MS_EPARSE;
    }
    out->type = p[5];
    out->status = rd_u16(p + 6);
    out->length = rd_u32(p + 8);
    if (out->type == CTL_T_REQUEST && out->length > CTL_MAX_REQUEST) {
        return MS_EPARSE;
    }
    if (out->type == CTL_T_REPLY && out->length > CTL_MAX_REPLY) {
        return MS_EPARSE;
    }
    if (out->type != CTL_T_REQUEST && out->type != CTL_T_REPLY) {
        return MS_EPARSE;
    }
    return 0;
}

int ctl_encode_request(buf_t *out, size_t argc, const char *const *argv)
{
    if (argc > CTL_MAX_ARGS) {
        return MS_ERANGE;
    }
    size_t plen = 2;
    for (size_t i = 0; i < argc; i++) {
        size_t l = strlen(argv[i]);
        if (l > 0xFFFF) {
            return MS_ERANGE;
        }
        plen += 2 + l;
    }
    if (plen > CTL_MAX_REQUEST) {
        return MS_ERANGE;
    }
    uint8_t hdr[CTL_HDR_LEN];
    ctl_encode_header(hdr, CTL_T_REQUEST, 0, (uint32_t)plen);
    buf_append(out, hdr, sizeof(hdr));
    uint8_t n[2];
    wr_u16(n, (uint16_t)argc);
    buf_append(out, n, 2);
    for (size_t i = 0; i < argc; i++) {
        size_t l = strlen(argv[i]);
        wr_u16(n, (uint16_t)l);
        buf_append(out, n, 2);
        buf_append(out, argv[i], l);
    }
    return 0;
}

int ctl_decode_request(const uint8_t *p, size_t len, ctl_request_t *req)
{
    req->argc = 0;
    if (len < 2 || len > CTL_MAX_REQUEST) {
        return MS_ETRUNC;
    }
    size_t argc = rd_u16(p);
    if (argc == 0 || argc > CTL_MAX_ARGS) {
        return MS_EPARSE;
    }
    size_t off = 2, m = 0;
    for (size_t i = 0; i < argc; i++) {
        if (off + 2 > len) {
            return MS_ETRUNC;
        }
        size_t l = rd_u16(p + off);
        off += 2;
        if (off + l > len || m + l + 1 > sizeof(req->mem)) {
            return MS_ETRUNC;
        }
        if (memchr(p + off, '\0', l)) {
            return MS_EPARSE;
        }
        memcpy(req->mem + m, p + off, l);
        req->mem[m + l] = '\0';
        req->argv[i] = req->mem + m;
        m += l + 1;
        off += l;
    }
    if (off != len) {
        return MS_EPARSE; /* trailing bytes */
    }
    req->argc = argc;
    req->argv[argc] = NULL;
    return 0;
}

void ctl_encode_reply(buf_t *out, uint16_t status, const char *text, size_t len)
{
    uint8_t hdr[CTL_HDR_LEN];
    if (len > CTL_MAX_REPLY) {
        len = CTL_MAX_REPLY;
    }
    ctl_encode_header(hdr, CTL_T_REPLY, status, (uint32_t)len);
    buf_append(out, hdr, sizeof(hdr));
    buf_append(out, text, len);
}
