/* verdict.c: the verdict tracker (rise/fall hysteresis per probe target) and the site
 * verdict combiner with its reason text. Pure: no I/O, time passed in (see internal.h for
 * the state diagram). */
#include "internal.h"

#include <stdarg.h>
#include <string.h>

const char *health_state_str(health_state_t s)
{
    switch (s) {
    case HEALTH_UP: return "UP";
    case HEALTH_DOWN: return "DOWN";
    default: return "UNKNOWN";
    }
}

void hs_appendf(char *buf, size_t size, const char *fmt, ...)
{
    size_t used = strnlen(buf, size);
    if (size < 4 || used + 1 >= size) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + used, size - used, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n >= size - used) {
        memcpy(buf + size - 4, "...", 4); /* truncated: say so */
    }
}

void hv_init(hv_t *v, unsigned rise, unsigned fall)
{
    memset(v, 0, sizeof(*v));
    v->state = HEALTH_UNKNOWN;
    v->rise = rise ? rise : 1;
    v->fall = fall ? fall : 1;
}

static bool set_state(hv_t *v, health_state_t st, uint64_t now_ms)
{
    v->run = 0;
    if (v->state == st) {
        return false;
    }
    v->state = st;
    v->changed_ms = now_ms;
    return true;
}

bool hv_record(hv_t *v, bool ok, bool refused, const char *reason, uint64_t now_ms, bool *reprobe)
{
    bool changed = false;
    if (reprobe) {
        *reprobe = false;
    }
    v->results++;
    if (!ok) {
        snprintf(v->reason, sizeof(v->reason), "%s", reason ? reason : "failed");
    }
    switch (v->state) {
    case HEALTH_UNKNOWN:
        /* No history to protect: the first result is the best knowledge there is. */
        changed = set_state(v, ok ? HEALTH_UP : HEALTH_DOWN, now_ms);
        break;
    case HEALTH_UP:
        if (ok) {
            v->run = 0;
        } else if (++v->run >= v->fall) {
            changed = set_state(v, HEALTH_DOWN, now_ms);
        } else if (refused && reprobe) {
            *reprobe = true; /* confirm at once: a refusal is a definite answer */
        }
        break;
    case HEALTH_DOWN:
        if (!ok) {
            v->run = 0;
        } else if (++v->run >= v->rise) {
            changed = set_state(v, HEALTH_UP, now_ms);
        }
        break;
    }
    return changed;
}

bool hv_set(hv_t *v, bool ok, const char *reason, uint64_t now_ms)
{
    v->results++;
    if (!ok) {
        snprintf(v->reason, sizeof(v->reason), "%s", reason ? reason : "failed");
    }
    return set_state(v, ok ? HEALTH_UP : HEALTH_DOWN, now_ms);
}

bool hv_changing(const hv_t *v)
{
    return v->state != HEALTH_UNKNOWN && v->run > 0;
}

/* "connection refused", plus where the target stands in its window when it is changing. */
static void target_reason(const hv_t *v, char *buf, size_t size)
{
    if (v->state == HEALTH_UNKNOWN) {
        snprintf(buf, size, "not checked yet");
    } else if (v->state == HEALTH_DOWN) {
        snprintf(buf, size, "%s", v->reason);
        if (v->run > 0) {
            hs_appendf(buf, size, " (recovering %u/%u)", v->run, v->rise);
        }
    } else {
        snprintf(buf, size, "%s (failing %u/%u)", v->reason, v->run, v->fall);
    }
}

static void eval_web(const hv_site_in_t *in, health_site_t *out, bool *can_pass, bool *passes)
{
    unsigned up = 0, unknown = 0;
    for (size_t i = 0; i < in->n_web; i++) {
        if (in->web[i].drained) {
            continue;
        }
        up += in->web[i].v->state == HEALTH_UP;
        unknown += in->web[i].v->state == HEALTH_UNKNOWN;
    }
    out->web_up = up;
    out->web_total = (unsigned)in->n_web;
    if (in->n_web == 0) {
        return; /* no probes of its own: the load balancer speaks for the web tier */
    }
    *passes = up >= in->min_web;
    *can_pass = up + unknown >= in->min_web;
    hs_appendf(out->reason, sizeof(out->reason), "%u/%zu web servers answer", up, in->n_web);
    for (size_t i = 0; i < in->n_web; i++) {
        if (in->web[i].drained) {
            hs_appendf(out->reason, sizeof(out->reason), " [%s drained]", in->web[i].name);
        }
    }
    const char *sep = " (";
    for (size_t i = 0; i < in->n_web; i++) {
        const hv_t *v = in->web[i].v;
        if (v->state == HEALTH_UP && v->run == 0) {
            continue;
        }
        char r[200];
        target_reason(v, r, sizeof(r));
        hs_appendf(out->reason, sizeof(out->reason), "%s%s: %s", sep, in->web[i].name, r);
        sep = "; ";
    }
    if (sep[0] == ';') {
        hs_appendf(out->reason, sizeof(out->reason), ")");
    }
}

static void eval_db(const hv_t *db, health_site_t *out, bool *can_pass, bool *passes)
{
    const char *sep = out->reason[0] ? "; " : "";
    out->db = db->state;
    *passes = db->state == HEALTH_UP;
    *can_pass = db->state != HEALTH_DOWN;
    if (db->state == HEALTH_UP && db->run == 0) {
        hs_appendf(out->reason, sizeof(out->reason), "%sdb page ok", sep);
        return;
    }
    char r[200];
    target_reason(db, r, sizeof(r));
    /* `lacks "db-eu-1"` reads as a sentence after "db page"; other reasons get a colon. */
    bool sentence = strncmp(r, "lacks ", 6) == 0;
    hs_appendf(out->reason, sizeof(out->reason), "%sdb page%s%s", sep, sentence ? " " : ": ", r);
}

static void eval_lb(const hv_site_in_t *in, health_site_t *out, bool *can_pass, bool *passes)
{
    const char *sep = out->reason[0] ? "; " : "";
    const hv_t *lb = in->lb;
    out->lb = lb->state;
    *passes = lb->state == HEALTH_UP;
    *can_pass = lb->state != HEALTH_DOWN;
    if (in->n_web == 0 && in->lb_report) {
        out->web_up = in->lb_web_up;
        out->web_total = in->lb_web_total;
    }
    if (lb->state == HEALTH_UP && lb->run == 0) {
        hs_appendf(out->reason, sizeof(out->reason), "%sload balancer: %u/%u web servers UP", sep,
                   in->lb_web_up, in->lb_web_total);
        return;
    }
    char r[200];
    target_reason(lb, r, sizeof(r));
    hs_appendf(out->reason, sizeof(out->reason), "%sload balancer: %s", sep, r);
}

void hv_site_eval(const hv_site_in_t *in, health_site_t *out)
{
    out->reason[0] = '\0';
    out->db = HEALTH_UNKNOWN;
    out->lb = HEALTH_UNKNOWN;
    out->load = in->lb && in->lb_report ? in->load : -1.0;
    bool can_pass = true, passes = true, cp, p;

    cp = p = true;
    eval_web(in, out, &cp, &p);
    can_pass &= cp;
    passes &= p;
    if (in->db) {
        eval_db(in->db, out, &cp, &p);
        can_pass &= cp;
        passes &= p;
    }
    if (in->lb) {
        eval_lb(in, out, &cp, &p);
        can_pass &= cp;
        passes &= p;
    }
    out->changing = false;
    for (size_t i = 0; i < in->n_web; i++) {
        out->changing |= hv_changing(in->web[i].v);
    }
    out->changing |= in->db && hv_changing(in->db);
    out->changing |= in->lb && hv_changing(in->lb);
    out->state = !can_pass ? HEALTH_DOWN : passes ? HEALTH_UP : HEALTH_UNKNOWN;
    if (!out->reason[0]) {
        snprintf(out->reason, sizeof(out->reason), "nothing to check");
    }
}
