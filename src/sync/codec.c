/* codec.c: the sync wire messages <-> bytes. Explicit big-endian, never struct casts; the
 * byte diagram is in docs/sync.md. The decoder sees bytes from the network (after the channel
 * authenticated them, but a peer can still be buggy or hostile): every count is checked
 * against the bytes left before anything is allocated, and a message is either valid as a
 * whole or rejected, so a malformed batch can never be half applied. */
#include "sync/internal.h"

#include <math.h>
#include <string.h>

static_assert(SYNC_HDR_LEN == 12, "header is magic(4) version(1) type(1) flags(2) length(4)");
static_assert(SYNC_MAX_TABLES <= 255 && SYNC_MAX_PK <= 255, "counts are one byte on the wire");

/* ---- encoding ---- */

static void put_u8(buf_t *b, uint8_t v)
{
    buf_append(b, &v, 1);
}
static void put_u16(buf_t *b, uint16_t v)
{
    uint8_t t[2];
    wr_u16(t, v);
    buf_append(b, t, 2);
}
static void put_u32(buf_t *b, uint32_t v)
{
    uint8_t t[4];
    wr_u32(t, v);
    buf_append(b, t, 4);
}
static void put_u64(buf_t *b, uint64_t v)
{
    uint8_t t[8];
    wr_u64(t, v);
    buf_append(b, t, 8);
}
static void put_name(buf_t *b, const char *s)
{
    size_t n = strlen(s);
    assert(n <= SYNC_MAX_NAME);
    put_u8(b, (uint8_t)n);
    buf_append(b, s, n);
}
static void put_ver(buf_t *b, sync_ver_t v)
{
    put_u64(b, v.hlc);
    put_u32(b, v.site);
}

void sync_enc_val(buf_t *out, const sync_val_t *v)
{
    put_u8(out, v->type);
    switch (v->type) {
    case SYNC_V_INT: put_u64(out, (uint64_t)v->i); break;
    case SYNC_V_REAL: {
        uint64_t bits;
        memcpy(&bits, &v->r, 8);
        put_u64(out, bits);
        break;
    }
    case SYNC_V_TEXT:
    case SYNC_V_BLOB:
        put_u32(out, v->len);
        buf_append(out, v->p, v->len);
        break;
    default: break;
    }
}

/* Reserve the header, return its offset; finish_msg fills in the body length. */
static size_t begin_msg(buf_t *out, uint8_t type)
{
    size_t at = out->len;
    put_u32(out, SYNC_MAGIC);
    put_u8(out, SYNC_PROTO);
    put_u8(out, type);
    put_u16(out, 0);
    put_u32(out, 0);
    return at;
}
static void finish_msg(buf_t *out, size_t at)
{
    wr_u32(out->data + at + 8, (uint32_t)(out->len - at - SYNC_HDR_LEN));
}

void sync_enc_hello(buf_t *out, const sync_hello_t *h)
{
    size_t at = begin_msg(out, SYNC_MSG_HELLO);
    put_u32(out, h->site_id);
    put_name(out, h->name);
    put_u64(out, h->hlc);
    put_u64(out, h->cursor);
    put_u8(out, (uint8_t)h->ntables);
    for (unsigned i = 0; i < h->ntables; i++) {
        put_name(out, h->tables[i].name);
        buf_append(out, h->tables[i].fp, 16);
    }
    finish_msg(out, at);
}

void sync_enc_batch(buf_t *out, const sync_batch_t *b)
{
    size_t at = begin_msg(out, SYNC_MSG_BATCH);
    put_u32(out, b->origin);
    put_u64(out, b->seq_lo);
    put_u64(out, b->seq_hi);
    put_u8(out, (uint8_t)b->ntables);
    for (size_t i = 0; i < b->ntables; i++) {
        const sync_wtable_t *t = &b->tables[i];
        put_name(out, t->name);
        put_u8(out, (uint8_t)t->npk);
        put_u8(out, (uint8_t)t->ncols);
        for (unsigned c = 0; c < t->npk + t->ncols; c++) {
            put_name(out, t->cols[c]);
        }
    }
    put_u32(out, (uint32_t)b->nentries);
    for (size_t i = 0; i < b->nentries; i++) {
        const sync_entry_t *e = &b->entries[i];
        const sync_wtable_t *t = &b->tables[e->table];
        put_u8(out, (uint8_t)e->table);
        put_u64(out, e->seq);
        put_u32(out, e->cl);
        put_ver(out, e->clv);
        put_u64(out, e->mask);
        for (unsigned k = 0; k < t->npk; k++) {
            sync_enc_val(out, &e->pk[k]);
        }
        if (e->cl % 2 == 1) {
            for (unsigned c = 0; c < t->ncols; c++) {
                put_ver(out, e->ver[c]);
                put_ver(out, e->base[c]);
                sync_enc_val(out, &e->val[c]);
            }
        }
    }
    finish_msg(out, at);
}

void sync_enc_ack(buf_t *out, uint32_t origin, uint64_t seq)
{
    size_t at = begin_msg(out, SYNC_MSG_ACK);
    put_u32(out, origin);
    put_u64(out, seq);
    finish_msg(out, at);
}

void sync_enc_heartbeat(buf_t *out, uint64_t hlc)
{
    size_t at = begin_msg(out, SYNC_MSG_HEARTBEAT);
    put_u64(out, hlc);
    finish_msg(out, at);
}

void sync_enc_error(buf_t *out, uint16_t code, const char *text)
{
    size_t at = begin_msg(out, SYNC_MSG_ERROR);
    size_t n = strlen(text);
    if (n > 255) {
        n = 255;
    }
    put_u16(out, code);
    put_u16(out, (uint16_t)n);
    buf_append(out, text, n);
    finish_msg(out, at);
}

const char *sync_msg_name(unsigned type)
{
    static const char *const names[] = {"?", "HELLO", "BATCH", "ACK", "HEARTBEAT", "ERROR"};
    return type < MS_ARRAY_LEN(names) ? names[type] : "?";
}

/* ---- decoding ---- */

typedef struct {
    const uint8_t *p;
    size_t left;
    const char *why;
} rd_t;

#define NEED(r, n, what)                                                                           \
    do {                                                                                           \
        if ((r)->left < (n)) {                                                                     \
            (r)->why = "truncated " what;                                                          \
            return MS_ETRUNC;                                                                      \
        }                                                                                          \
    } while (0)
#define FAIL(r, what)                                                                              \
    do {                                                                                           \
        (r)->why = what;                                                                           \
        return MS_EPARSE;                                                                          \
    } while (0)

static int get_u8(rd_t *r, uint8_t *v)
{
    NEED(r, 1, "field");
    *v = r->p[0];
    r->p++;
    r->left--;
    return 0;
}
static int get_u16(rd_t *r, uint16_t *v)
{
    NEED(r, 2, "field");
    *v = rd_u16(r->p);
    r->p += 2;
    r->left -= 2;
    return 0;
}
static int get_u32(rd_t *r, uint32_t *v)
{
    NEED(r, 4, "field");
    *v = rd_u32(r->p);
    r->p += 4;
    r->left -= 4;
    return 0;
}
static int get_u64(rd_t *r, uint64_t *v)
{
    NEED(r, 8, "field");
    *v = rd_u64(r->p);
    r->p += 8;
    r->left -= 8;
    return 0;
}
static int get_ver(rd_t *r, sync_ver_t *v)
{
    if (get_u64(r, &v->hlc) != 0 || get_u32(r, &v->site) != 0) {
        return MS_ETRUNC;
    }
    if ((v->hlc == 0) != (v->site == 0)) {
        FAIL(r, "half-empty version");
    }
    return 0;
}

/* Names become parts of log lines and are compared with local table and column names; only
 * identifier characters are allowed so nothing odd ever reaches a log or a query. */
static int get_name(rd_t *r, char *dst, arena_t *a, char **out)
{
    uint8_t n;
    if (get_u8(r, &n) != 0) {
        return MS_ETRUNC;
    }
    if (n == 0 || n > SYNC_MAX_NAME) {
        FAIL(r, "bad name length");
    }
    NEED(r, n, "name");
    for (unsigned i = 0; i < n; i++) {
        uint8_t c = r->p[i];
        bool ok =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
        if (!ok) {
            FAIL(r, "name with a non-identifier character");
        }
    }
    char *s = dst ? dst : arena_alloc(a, (size_t)n + 1);
    memcpy(s, r->p, n);
    s[n] = '\0';
    r->p += n;
    r->left -= n;
    if (out) {
        *out = s;
    }
    return 0;
}

static int get_val(rd_t *r, sync_val_t *v)
{
    uint8_t t;
    if (get_u8(r, &t) != 0) {
        return MS_ETRUNC;
    }
    memset(v, 0, sizeof(*v));
    v->type = t;
    switch (t) {
    case SYNC_V_NULL: return 0;
    case SYNC_V_INT: {
        uint64_t u;
        if (get_u64(r, &u) != 0) {
            return MS_ETRUNC;
        }
        v->i = (int64_t)u;
        return 0;
    }
    case SYNC_V_REAL: {
        uint64_t u;
        if (get_u64(r, &u) != 0) {
            return MS_ETRUNC;
        }
        memcpy(&v->r, &u, 8);
        if (isnan(v->r)) {
            FAIL(r, "NaN value"); /* SQLite stores NaN as NULL: it could never converge */
        }
        return 0;
    }
    case SYNC_V_TEXT:
    case SYNC_V_BLOB:
        if (get_u32(r, &v->len) != 0) {
            return MS_ETRUNC;
        }
        NEED(r, v->len, "value");
        v->p = r->p;
        r->p += v->len;
        r->left -= v->len;
        return 0;
    default: FAIL(r, "unknown value type");
    }
}

static int dec_hello(rd_t *r, sync_hello_t *h)
{
    uint8_t nt;
    memset(h, 0, sizeof(*h));
    if (get_u32(r, &h->site_id) != 0 || get_name(r, h->name, NULL, NULL) != 0 ||
        get_u64(r, &h->hlc) != 0 || get_u64(r, &h->cursor) != 0 || get_u8(r, &nt) != 0) {
        return r->why ? MS_EPARSE : MS_ETRUNC;
    }
    if (h->site_id == 0 || h->site_id > 65535) {
        FAIL(r, "site id out of range 1..65535");
    }
    if (nt > SYNC_MAX_TABLES) {
        FAIL(r, "too many tables");
    }
    h->ntables = nt;
    for (unsigned i = 0; i < nt; i++) {
        if (get_name(r, h->tables[i].name, NULL, NULL) != 0) {
            return MS_EPARSE;
        }
        NEED(r, 16, "fingerprint");
        memcpy(h->tables[i].fp, r->p, 16);
        r->p += 16;
        r->left -= 16;
    }
    return 0;
}

static int dec_table(rd_t *r, arena_t *a, sync_wtable_t *t)
{
    uint8_t npk, ncols;
    if (get_name(r, NULL, a, &t->name) != 0 || get_u8(r, &npk) != 0 || get_u8(r, &ncols) != 0) {
        return MS_EPARSE;
    }
    if (npk == 0 || npk > SYNC_MAX_PK) {
        FAIL(r, "primary key column count out of range 1..8");
    }
    if (ncols > SYNC_MAX_COLS) {
        FAIL(r, "more than 64 value columns");
    }
    t->npk = npk;
    t->ncols = ncols;
    t->cols = arena_alloc(a, sizeof(char *) * ((size_t)npk + ncols));
    for (unsigned c = 0; c < (unsigned)npk + ncols; c++) {
        if (get_name(r, NULL, a, &t->cols[c]) != 0) {
            return MS_EPARSE;
        }
        for (unsigned d = 0; d < c; d++) {
            if (strcmp(t->cols[d], t->cols[c]) == 0) {
                FAIL(r, "duplicate column name");
            }
        }
    }
    return 0;
}

static int dec_entry(rd_t *r, arena_t *a, const sync_batch_t *b, sync_entry_t *e)
{
    uint8_t ti;
    if (get_u8(r, &ti) != 0) {
        return MS_ETRUNC;
    }
    if (ti >= b->ntables) {
        FAIL(r, "entry names a table not in the batch");
    }
    const sync_wtable_t *t = &b->tables[ti];
    e->table = ti;
    if (get_u64(r, &e->seq) != 0 || get_u32(r, &e->cl) != 0 || get_ver(r, &e->clv) != 0 ||
        get_u64(r, &e->mask) != 0) {
        return r->why && strncmp(r->why, "trunc", 5) != 0 ? MS_EPARSE : MS_ETRUNC;
    }
    if (e->seq <= b->seq_lo || e->seq > b->seq_hi) {
        FAIL(r, "entry position outside the batch range");
    }
    if (e->cl == 0 || sync_ver_none(e->clv)) {
        FAIL(r, "entry without an existence version");
    }
    if (t->ncols < 64 && (e->mask >> t->ncols) != 0) {
        FAIL(r, "change mask names a column the table does not have");
    }
    e->pk = arena_alloc(a, sizeof(sync_val_t) * t->npk);
    for (unsigned k = 0; k < t->npk; k++) {
        if (get_val(r, &e->pk[k]) != 0) {
            return MS_EPARSE;
        }
        if (e->pk[k].type == SYNC_V_NULL) {
            FAIL(r, "NULL primary key value");
        }
    }
    e->val = NULL;
    e->ver = e->base = NULL;
    if (e->cl % 2 == 1 && t->ncols > 0) {
        /* 25 bytes is the smallest encoded column: bound before allocating. */
        NEED(r, (size_t)t->ncols * 25, "row");
        e->val = arena_alloc(a, sizeof(sync_val_t) * t->ncols);
        e->ver = arena_alloc(a, sizeof(sync_ver_t) * t->ncols);
        e->base = arena_alloc(a, sizeof(sync_ver_t) * t->ncols);
        for (unsigned c = 0; c < t->ncols; c++) {
            if (get_ver(r, &e->ver[c]) != 0 || get_ver(r, &e->base[c]) != 0 ||
                get_val(r, &e->val[c]) != 0) {
                return MS_EPARSE;
            }
        }
    }
    return 0;
}

static int dec_batch(rd_t *r, arena_t *a, sync_batch_t *b)
{
    uint8_t nt;
    uint32_t ne;
    memset(b, 0, sizeof(*b));
    if (get_u32(r, &b->origin) != 0 || get_u64(r, &b->seq_lo) != 0 || get_u64(r, &b->seq_hi) != 0 ||
        get_u8(r, &nt) != 0) {
        return MS_ETRUNC;
    }
    if (b->origin == 0 || b->origin > 65535) {
        FAIL(r, "origin site id out of range 1..65535");
    }
    if (b->seq_hi < b->seq_lo) {
        FAIL(r, "batch range ends before it starts");
    }
    if (nt > SYNC_MAX_TABLES) {
        FAIL(r, "too many tables");
    }
    b->ntables = nt;
    b->tables = arena_alloc(a, sizeof(sync_wtable_t) * (nt ? nt : 1));
    for (unsigned i = 0; i < nt; i++) {
        if (dec_table(r, a, &b->tables[i]) != 0) {
            return MS_EPARSE;
        }
        for (unsigned j = 0; j < i; j++) {
            if (strcmp(b->tables[j].name, b->tables[i].name) == 0) {
                FAIL(r, "table listed twice");
            }
        }
    }
    if (get_u32(r, &ne) != 0) {
        return MS_ETRUNC;
    }
    /* An entry takes at least 35 bytes: bound the count by the bytes that are left. */
    if ((uint64_t)ne * 35 > r->left) {
        FAIL(r, "entry count larger than the message");
    }
    b->nentries = ne;
    b->entries = arena_alloc(a, sizeof(sync_entry_t) * (ne ? ne : 1));
    uint64_t prev = b->seq_lo + 1;
    for (uint32_t i = 0; i < ne; i++) {
        int rc = dec_entry(r, a, b, &b->entries[i]);
        if (rc != 0) {
            return rc;
        }
        /* Equal positions are allowed: a PostgreSQL window is one position (docs/sync.md). */
        if (b->entries[i].seq < prev) {
            FAIL(r, "entries not in increasing position order");
        }
        prev = b->entries[i].seq;
    }
    return 0;
}

int sync_decode(const uint8_t *data, size_t len, arena_t *a, sync_msg_t *out, const char **why)
{
    rd_t r = {data, len, NULL};
    *why = NULL;
    if (len < SYNC_HDR_LEN) {
        *why = "shorter than a header";
        return MS_ETRUNC;
    }
    if (rd_u32(data) != SYNC_MAGIC) {
        *why = "bad magic";
        return MS_EPARSE;
    }
    if (data[4] != SYNC_PROTO) {
        *why = "unsupported protocol version";
        return MS_EPARSE;
    }
    if (rd_u16(data + 6) != 0) {
        *why = "reserved flags set";
        return MS_EPARSE;
    }
    uint32_t blen = rd_u32(data + 8);
    if (blen != len - SYNC_HDR_LEN || blen > SYNC_MAX_MSG) {
        *why = "length field does not match the message";
        return MS_EPARSE;
    }
    memset(out, 0, sizeof(*out));
    out->type = data[5];
    r.p += SYNC_HDR_LEN;
    r.left -= SYNC_HDR_LEN;
    int rc;
    switch (out->type) {
    case SYNC_MSG_HELLO: rc = dec_hello(&r, &out->u.hello); break;
    case SYNC_MSG_BATCH: rc = dec_batch(&r, a, &out->u.batch); break;
    case SYNC_MSG_ACK:
        rc = get_u32(&r, &out->u.ack.origin);
        if (rc == 0) {
            rc = get_u64(&r, &out->u.ack.seq);
        }
        break;
    case SYNC_MSG_HEARTBEAT: rc = get_u64(&r, &out->u.heartbeat_hlc); break;
    case SYNC_MSG_ERROR: {
        uint16_t n;
        rc = get_u16(&r, &out->u.error.code);
        if (rc == 0) {
            rc = get_u16(&r, &n);
        }
        if (rc == 0 && (n > 255 || r.left < n)) {
            r.why = "bad error text length";
            rc = MS_EPARSE;
        }
        if (rc == 0) {
            memcpy(out->u.error.text, r.p, n);
            out->u.error.text[n] = '\0';
            r.p += n;
            r.left -= n;
        }
        break;
    }
    default: r.why = "unknown message type"; rc = MS_EPARSE;
    }
    if (rc == 0 && r.left != 0) {
        r.why = "trailing bytes after the message";
        rc = MS_EPARSE;
    }
    if (rc != 0) {
        *why = r.why ? r.why : "malformed";
    }
    return rc;
}

void sync_val_text(buf_t *out, const sync_val_t *v, size_t nv)
{
    for (size_t i = 0; i < nv; i++) {
        if (i) {
            buf_append(out, ",", 1);
        }
        switch (v[i].type) {
        case SYNC_V_NULL: buf_printf(out, "NULL"); break;
        case SYNC_V_INT: buf_printf(out, "%lld", (long long)v[i].i); break;
        case SYNC_V_REAL: buf_printf(out, "%.17g", v[i].r); break;
        case SYNC_V_TEXT: {
            buf_append(out, "'", 1);
            for (uint32_t k = 0; k < v[i].len && k < 64; k++) {
                char c = (char)v[i].p[k];
                buf_append(out, (c >= 32 && c < 127 && c != '\'') ? &c : "?", 1);
            }
            buf_append(out, "'", 1);
            break;
        }
        default:
            buf_printf(out, "x'");
            for (uint32_t k = 0; k < v[i].len && k < 32; k++) {
                buf_printf(out, "%02x", v[i].p[k]);
            }
            buf_printf(out, "'");
        }
    }
}

void sync_fingerprint(const sync_wtable_t *t, uint8_t fp[16])
{
    buf_t b;
    buf_init(&b);
    for (unsigned c = 0; c < t->npk + t->ncols; c++) {
        buf_printf(&b, "%s%s", c == 0 ? "" : (c == t->npk ? "|" : ","), t->cols[c]);
    }
    sync_hash16(b.data, b.len, fp);
    buf_deinit(&b);
}
