/* schema.c: validate a YAML map against a declarative table of options (name, type, range,
 * default, help), in the spirit of Knot's schema.c and Redis's static_configs[]. */
#include "conf.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const type_names[] = {"string",    "integer", "boolean", "duration", "address",
                                         "addresses", "strings", "choice",  "section"};

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < MS_ARRAY_LEN(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return MS_EINVAL;
}

/* "250ms", "2s", "1.5s" not allowed (keep it exact), "3m", "1h", "7d"; a bare number is
 * seconds. */
static int parse_duration(const char *s, uint64_t *ms)
{
    char num[32];
    size_t i = 0;
    while (s[i] >= '0' && s[i] <= '9' && i < sizeof(num) - 1) {
        num[i] = s[i];
        i++;
    }
    num[i] = '\0';
    uint64_t v;
    if (i == 0 || !parse_u64(num, &v) || v > 100000000u) {
        return MS_EINVAL;
    }
    const char *unit = s + i;
    uint64_t mult;
    if (*unit == '\0' || strcmp(unit, "s") == 0) {
        mult = 1000;
    } else if (strcmp(unit, "ms") == 0) {
        mult = 1;
    } else if (strcmp(unit, "m") == 0) {
        mult = 60000;
    } else if (strcmp(unit, "h") == 0) {
        mult = 3600000;
    } else if (strcmp(unit, "d") == 0) {
        mult = 86400000;
    } else {
        return MS_EINVAL;
    }
    *ms = v * mult;
    return 0;
}

static int one_scalar(const conf_opt_t *o, const char *section, const conf_node_t *n,
                      const char *text, void *field, conf_err_t *err)
{
    const char *sep = section && *section ? "." : "";
    const char *sec = section ? section : "";
    switch (o->type) {
    case CONF_T_STR: *(char **)field = xstrdup(text); return 0;
    case CONF_T_UINT: {
        uint64_t v;
        if (!parse_u64(text, &v)) {
            conf_errf(err, n, "%s%s%s: '%s' is not a non-negative integer", sec, sep, o->name,
                      text);
            return MS_ECONF;
        }
        if (v < o->min || v > o->max) {
            conf_errf(err, n, "%s%s%s: %s is out of range %llu..%llu", sec, sep, o->name, text,
                      (unsigned long long)o->min, (unsigned long long)o->max);
            return MS_ECONF;
        }
        *(unsigned *)field = (unsigned)v;
        return 0;
    }
    case CONF_T_BOOL:
        if (parse_bool(text, (bool *)field) != 0) {
            conf_errf(err, n, "%s%s%s: '%s' is not a boolean (true/false)", sec, sep, o->name,
                      text);
            return MS_ECONF;
        }
        return 0;
    case CONF_T_DURATION: {
        uint64_t v;
        if (parse_duration(text, &v) != 0) {
            conf_errf(err, n, "%s%s%s: '%s' is not a duration (e.g. 250ms, 2s, 1m)", sec, sep,
                      o->name, text);
            return MS_ECONF;
        }
        if (v < o->min || v > o->max) {
            conf_errf(err, n, "%s%s%s: %s is out of range %llums..%llums", sec, sep, o->name, text,
                      (unsigned long long)o->min, (unsigned long long)o->max);
            return MS_ECONF;
        }
        *(unsigned *)field = (unsigned)v;
        return 0;
    }
    case CONF_T_ADDR:
        if (net_parse_addr(text, (uint16_t)o->min, (net_addr_t *)field) != 0) {
            conf_errf(err, n, "%s%s%s: '%s' is not an IP address (with optional :port)", sec, sep,
                      o->name, text);
            return MS_ECONF;
        }
        return 0;
    case CONF_T_ENUM:
        for (unsigned i = 0; o->choices[i]; i++) {
            if (strcmp(o->choices[i], text) == 0) {
                *(unsigned *)field = i;
                return 0;
            }
        }
        {
            char allowed[256] = "";
            for (unsigned i = 0; o->choices[i]; i++) {
                strncat(allowed, i ? ", " : "", sizeof(allowed) - strlen(allowed) - 1);
                strncat(allowed, o->choices[i], sizeof(allowed) - strlen(allowed) - 1);
            }
            conf_errf(err, n, "%s%s%s: '%s' is not one of: %s", sec, sep, o->name, text, allowed);
        }
        return MS_ECONF;
    default: return MS_EINVAL;
    }
}

static int apply_list(const conf_opt_t *o, const char *section, const conf_node_t *n, void *field,
                      conf_err_t *err)
{
    const conf_node_t *const *items = (const conf_node_t *const *)&n;
    size_t cnt = 1;
    if (n->kind == CONF_SEQ) {
        items = (const conf_node_t *const *)n->items;
        cnt = n->n;
    } else if (n->kind != CONF_SCALAR) {
        conf_errf(err, n, "%s%s%s: expected a value or a list of values", section ? section : "",
                  section && *section ? "." : "", o->name);
        return MS_ECONF;
    }
    conf_opt_t one = *o;
    one.type = o->type == CONF_T_ADDRS ? CONF_T_ADDR : CONF_T_STR;
    if (o->type == CONF_T_ADDRS) {
        conf_addrs_t *l = field;
        free(l->v);
        l->v = xcalloc(cnt, sizeof(*l->v));
        l->n = 0;
        for (size_t i = 0; i < cnt; i++) {
            if (items[i]->kind != CONF_SCALAR) {
                conf_errf(err, items[i], "%s: list items must be plain values", o->name);
                return MS_ECONF;
            }
            if (one_scalar(&one, section, items[i], items[i]->value, &l->v[l->n], err) != 0) {
                return MS_ECONF;
            }
            l->n++;
        }
    } else {
        conf_strs_t *l = field;
        for (size_t i = 0; i < l->n; i++) {
            free(l->v[i]);
        }
        free(l->v);
        l->v = xcalloc(cnt, sizeof(*l->v));
        l->n = 0;
        for (size_t i = 0; i < cnt; i++) {
            if (items[i]->kind != CONF_SCALAR) {
                conf_errf(err, items[i], "%s: list items must be plain values", o->name);
                return MS_ECONF;
            }
            l->v[l->n++] = xstrdup(items[i]->value);
        }
    }
    return 0;
}

static int apply_one(const conf_opt_t *o, const char *section, const conf_node_t *n, void *out,
                     conf_err_t *err)
{
    void *field = (char *)out + o->offset;
    if (o->type == CONF_T_CUSTOM) {
        return 0;
    }
    if (o->type == CONF_T_ADDRS || o->type == CONF_T_STRS) {
        return apply_list(o, section, n, field, err);
    }
    if (n->kind != CONF_SCALAR) {
        conf_errf(err, n, "%s%s%s: expected a single %s", section ? section : "",
                  section && *section ? "." : "", o->name, type_names[o->type]);
        return MS_ECONF;
    }
    if (o->type == CONF_T_STR) {
        free(*(char **)field);
        *(char **)field = NULL;
    }
    return one_scalar(o, section, n, n->value, field, err);
}

int conf_apply(const conf_node_t *node, const conf_opt_t *schema, size_t n_schema,
               const char *section, void *out, conf_err_t *err)
{
    if (node && node->kind == CONF_SCALAR && node->value[0] == '\0') {
        node = NULL; /* "section:" with every option commented out: all defaults */
    }
    if (node && node->kind != CONF_MAP) {
        conf_errf(err, node, "%s: expected a mapping of options", section ? section : "(top)");
        return MS_ECONF;
    }
    /* Unknown keys first: a typo must not silently leave an option at its default. */
    for (size_t i = 0; node && i < node->n; i++) {
        bool known = false;
        for (size_t j = 0; j < n_schema && !known; j++) {
            known = strcmp(node->keys[i], schema[j].name) == 0;
        }
        if (!known) {
            conf_node_t at = *node->items[i];
            at.line = node->key_lines[i];
            conf_errf(err, &at, "unknown option '%s%s%s'", section ? section : "",
                      section && *section ? "." : "", node->keys[i]);
            return MS_ECONF;
        }
    }
    for (size_t j = 0; j < n_schema; j++) {
        const conf_opt_t *o = &schema[j];
        const conf_node_t *v = conf_map_get(node, o->name);
        if (v) {
            if (apply_one(o, section, v, out, err) != 0) {
                return MS_ECONF;
            }
        } else if (o->def && o->type != CONF_T_CUSTOM) {
            conf_node_t d = {.kind = CONF_SCALAR, .value = o->def, .file = "(default)"};
            if (apply_one(o, section, &d, out, err) != 0) {
                return MS_ECONF;
            }
        }
    }
    return 0;
}

void conf_release(const conf_opt_t *schema, size_t n_schema, void *out)
{
    for (size_t j = 0; j < n_schema; j++) {
        void *field = (char *)out + schema[j].offset;
        switch (schema[j].type) {
        case CONF_T_STR:
            free(*(char **)field);
            *(char **)field = NULL;
            break;
        case CONF_T_ADDRS: {
            conf_addrs_t *l = field;
            free(l->v);
            l->v = NULL;
            l->n = 0;
            break;
        }
        case CONF_T_STRS: {
            conf_strs_t *l = field;
            for (size_t i = 0; i < l->n; i++) {
                free(l->v[i]);
            }
            free(l->v);
            l->v = NULL;
            l->n = 0;
            break;
        }
        default: break;
        }
    }
}

void conf_print_schema_table(FILE *f, const char *section, const conf_opt_t *schema, size_t n);
void conf_print_schema_table(FILE *f, const char *section, const conf_opt_t *schema, size_t n)
{
    for (size_t j = 0; j < n; j++) {
        const conf_opt_t *o = &schema[j];
        fprintf(f, "%s.%s (%s", section, o->name, type_names[o->type]);
        if (o->type == CONF_T_UINT) {
            fprintf(f, " %llu..%llu", (unsigned long long)o->min, (unsigned long long)o->max);
        }
        if (o->def) {
            fprintf(f, ", default \"%s\"", o->def);
        }
        fprintf(f, "): %s\n", o->help ? o->help : "");
    }
}
