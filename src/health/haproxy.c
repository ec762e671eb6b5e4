/* haproxy.c: parser for HAProxy's runtime API `show stat` output (CSV), pure.
 *
 * The format (HAProxy management guide, "9.1 CSV format"): a header line "# pxname,svname,
 * qcur,...," naming the columns, then one line per frontend, backend, server (and listener),
 * each ending with "," and "\n", the whole ending with an empty line. Columns are found by
 * name, never by position: HAProxy appends columns between versions. Fields may be quoted
 * ("a,b" with "" for a quote). Nothing is copied or allocated: fields are spans into the
 * input, so a huge field or a huge output only costs the time to skip it. The input is
 * bounded by the caller (the probe reads at most HP_MAX_OUTPUT bytes). */
#include "internal.h"

#include <ctype.h>
#include <string.h>

/* HAProxy 2.6 prints ~100 columns; anything far beyond is not `show stat` output. */
#define HP_MAX_COLUMNS 1024

enum { C_PXNAME, C_SVNAME, C_STATUS, C_SCUR, C_SLIM, C_CHECK_STATUS, C_TYPE, C_N };
static const char *const col_names[C_N] = {"pxname", "svname",       "status", "scur",
                                           "slim",   "check_status", "type"};
static const bool col_required[C_N] = {true, true, true, false, false, false, false};

typedef struct {
    const char *p;
    size_t n;
} span_t;

static bool span_eq(span_t s, const char *str)
{
    size_t n = strlen(str);
    return s.n == n && memcmp(s.p, str, n) == 0;
}

static bool span_prefix(span_t s, const char *str)
{
    size_t n = strlen(str);
    return s.n >= n && memcmp(s.p, str, n) == 0;
}

/* Split one line (without its "\n") into the wanted columns. Returns the number of fields. */
static size_t split_line(const char *p, const char *end, const int *col_of, span_t *vals)
{
    size_t field = 0;
    for (;;) {
        span_t s = {p, 0};
        if (p < end && *p == '"') {
            /* Quoted: keep the span with its quotes' contents; "" stays doubled, which is
             * fine for the columns we read (names and states never contain quotes). */
            s.p = ++p;
            while (p < end && !(*p == '"' && (p + 1 >= end || p[1] != '"'))) {
                p += (*p == '"') ? 2 : 1;
            }
            s.n = (size_t)(p - s.p);
            if (p < end) {
                p++; /* closing quote */
            }
            while (p < end && *p != ',') {
                p++; /* junk after the quote: ignored */
            }
        } else {
            const char *c = memchr(p, ',', (size_t)(end - p));
            s.n = (size_t)((c ? c : end) - p);
            p += s.n;
        }
        if (field < HP_MAX_COLUMNS && col_of[field] >= 0) {
            vals[col_of[field]] = s;
        }
        field++;
        if (p >= end) {
            return field;
        }
        p++; /* the comma */
    }
}

static void printable(char *out, size_t size, const char *p, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < size; i++) {
        out[j++] = isprint((unsigned char)p[i]) ? p[i] : '?';
    }
    out[j] = '\0';
}

static bool parse_num(span_t s, uint64_t *out)
{
    uint64_t v = 0;
    if (s.n > 12) { /* sessions and limits; bounded so that sums cannot overflow */
        return false;
    }
    for (size_t i = 0; i < s.n; i++) {
        if (s.p[i] < '0' || s.p[i] > '9') {
            return false;
        }
        v = v * 10 + (uint64_t)(s.p[i] - '0');
    }
    *out = v; /* empty: 0 (no limit, no sessions) */
    return true;
}

static bool status_up(span_t st)
{
    /* "UP", "UP 1/3" (up, failing checks), "no check" (HAProxy sends it traffic). Not up:
     * DOWN, "DOWN 1/2" (recovering), NOLB, DRAIN and MAINT (no new traffic). */
    return (span_prefix(st, "UP") && (st.n == 2 || st.p[2] == ' ')) || span_eq(st, "no check");
}

/* "web1 DOWN L4CON" for a server that is not UP. The names come from the network: control
 * characters are replaced (they end up in logs), and each part is cut at 48 bytes. */
static void note_down(char *buf, size_t size, const span_t *v)
{
    span_t chk = v[C_CHECK_STATUS];
    if (span_prefix(chk, "* ")) { /* "* L7RSP": a check is in progress; the status is the last */
        chk.p += 2;
        chk.n -= 2;
    }
    char sv[49], st[49], ck[49];
    printable(sv, sizeof(sv), v[C_SVNAME].p, v[C_SVNAME].n);
    printable(st, sizeof(st), v[C_STATUS].p, v[C_STATUS].n);
    printable(ck, sizeof(ck), chk.p, chk.n);
    hs_appendf(buf, size, "%s%s %s%s%s", buf[0] ? ", " : "", sv, st, ck[0] ? " " : "", ck);
}

/* The parse in progress. */
typedef struct {
    const char *web_be, *db_be;
    int col_of[HP_MAX_COLUMNS]; /* column index -> C_*, or -1 */
    int have[C_N];              /* C_* -> column index, or -1 */
    size_t need;                /* fields a row must have */
    hp_stat_t *out;
    uint64_t scur_lim, slim, scur_all; /* load sums over UP web servers */
    bool any_limit;
    health_state_t db_backend_row;
    unsigned db_up, db_servers;
    char *err;
    size_t errlen;
} hp_ctx_t;

/* The header line (without "# " and "\n"): which column is which. */
static int parse_header(hp_ctx_t *x, const char *p, const char *nl)
{
    size_t ncol = 0;
    for (int k = 0; k < C_N; k++) {
        x->have[k] = -1;
    }
    for (size_t i = 0; i < HP_MAX_COLUMNS; i++) {
        x->col_of[i] = -1;
    }
    for (;; ncol++) {
        const char *c = memchr(p, ',', (size_t)(nl - p));
        span_t name = {p, (size_t)((c ? c : nl) - p)};
        if (ncol >= HP_MAX_COLUMNS) {
            snprintf(x->err, x->errlen, "header has more than %d columns", HP_MAX_COLUMNS);
            return MS_EPARSE;
        }
        for (int k = 0; k < C_N; k++) {
            if (x->have[k] < 0 && span_eq(name, col_names[k])) {
                x->have[k] = (int)ncol;
                x->col_of[ncol] = k;
            }
        }
        if (!c) {
            break;
        }
        p = c + 1;
    }
    for (int k = 0; k < C_N; k++) {
        if (x->have[k] < 0 && col_required[k]) {
            snprintf(x->err, x->errlen, "header lacks column '%s'", col_names[k]);
            return MS_EPARSE;
        }
        if (x->have[k] >= 0 && (size_t)x->have[k] + 1 > x->need) {
            x->need = (size_t)x->have[k] + 1;
        }
    }
    return 0;
}

/* A server of the web backend: counts, load sums, the detail of one that is not UP. */
static int web_server(hp_ctx_t *x, const span_t *v, bool up, unsigned line)
{
    uint64_t scur = 0, slim = 0;
    for (int k = C_SCUR; k <= C_SLIM; k++) {
        if (!parse_num(v[k], k == C_SCUR ? &scur : &slim)) {
            char snip[32];
            printable(snip, sizeof(snip), v[k].p, v[k].n);
            snprintf(x->err, x->errlen, "line %u: bad %s '%s'", line, col_names[k], snip);
            return MS_EPARSE;
        }
    }
    x->out->web_total++;
    if (!up) {
        note_down(x->out->web_down, sizeof(x->out->web_down), v);
        return 0;
    }
    x->out->web_up++;
    x->scur_all += scur;
    if (slim > 0) {
        x->any_limit = true;
        x->scur_lim += scur;
        x->slim += slim;
    }
    return 0;
}

/* One row (line number `line`, for errors). */
static int parse_row(hp_ctx_t *x, const char *ls, const char *e, unsigned line)
{
    span_t v[C_N];
    memset(v, 0, sizeof(v));
    size_t nf = split_line(ls, e, x->col_of, v);
    if (nf < x->need) {
        snprintf(x->err, x->errlen, "line %u: truncated (%zu fields, need %zu)", line, nf, x->need);
        return MS_EPARSE;
    }
    x->out->rows++;
    /* type: 0 frontend, 1 backend, 2 server, 3 listener; without it, go by svname */
    bool typed = x->have[C_TYPE] >= 0;
    bool is_server = typed ? span_eq(v[C_TYPE], "2")
                           : !span_eq(v[C_SVNAME], "FRONTEND") && !span_eq(v[C_SVNAME], "BACKEND");
    bool is_backend = typed ? span_eq(v[C_TYPE], "1") : span_eq(v[C_SVNAME], "BACKEND");
    bool up = status_up(v[C_STATUS]);
    if (x->db_be && span_eq(v[C_PXNAME], x->db_be)) {
        x->out->db_found = true;
        if (is_backend) {
            x->db_backend_row = up ? HEALTH_UP : HEALTH_DOWN;
        } else if (is_server) {
            x->db_servers++;
            x->db_up += up;
            if (!up) {
                note_down(x->out->db_detail, sizeof(x->out->db_detail), v);
            }
        }
    }
    if (!span_eq(v[C_PXNAME], x->web_be)) {
        return 0;
    }
    x->out->web_found = true;
    return is_server ? web_server(x, v, up, line) : 0;
}

int hp_parse_stat(const char *data, size_t len, const char *web_be, const char *db_be,
                  hp_stat_t *out, char *err, size_t errlen)
{
    hp_ctx_t x = {.web_be = web_be, .db_be = db_be, .out = out, .err = err, .errlen = errlen};
    memset(out, 0, sizeof(*out));
    out->db = HEALTH_UNKNOWN;
    out->load = -1.0;
    x.db_backend_row = HEALTH_UNKNOWN;
    err[0] = '\0';
    const char *end = data + len;
    const char *nl = memchr(data, '\n', len);
    if (len < 2 || data[0] != '#' || data[1] != ' ' || !nl) {
        char snip[48];
        printable(snip, sizeof(snip), data, nl ? (size_t)(nl - data) : len);
        snprintf(err, errlen, "no CSV header line (got '%s')", snip);
        return MS_EPARSE;
    }
    if (parse_header(&x, data + 2, nl) != 0) {
        return MS_EPARSE;
    }
    unsigned line = 2;
    for (const char *p = nl + 1; p < end; line++) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        if (!e) {
            snprintf(err, errlen, "truncated output: line %u has no end", line);
            return MS_EPARSE;
        }
        const char *ls = p;
        p = e + 1;
        if (e == ls || *ls == '#') {
            continue; /* the final empty line; comments */
        }
        if (parse_row(&x, ls, e, line) != 0) {
            return MS_EPARSE;
        }
    }
    if (x.have[C_SCUR] >= 0 && out->web_up > 0) {
        out->load = x.any_limit ? (double)x.scur_lim / (double)x.slim : (double)x.scur_all;
    }
    if (out->db_found) {
        out->db = x.db_servers ? (x.db_up ? HEALTH_UP : HEALTH_DOWN) : x.db_backend_row;
    }
    return 0;
}
