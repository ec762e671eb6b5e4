/* yaml.c: YAML text -> conf_node_t tree with file and line of every node (libyaml events).
 *
 * We keep only what a configuration needs: mappings, sequences and scalars. Aliases are
 * refused so that what the file says is what the daemon does; tags (!!str) are ignored:
 * every value is checked as text by the schema anyway. An empty value ("section:" with all
 * its lines commented out) reads as an empty scalar, which the loaders treat as absent. */
#include "conf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define CONF_MAX_DEPTH 32
#define CONF_MAX_FILE  (16u << 20)

struct conf_doc {
    arena_t *arena;
    conf_node_t *root;
    char *name;
};

void conf_errf(conf_err_t *err, const conf_node_t *at, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (at) {
        snprintf(err->msg, sizeof(err->msg), "%s:%d: %s", at->file, at->line, msg);
    } else {
        snprintf(err->msg, sizeof(err->msg), "%s", msg);
    }
}

typedef struct {
    yaml_parser_t parser;
    conf_doc_t *doc;
    conf_err_t *err;
} ystate_t;

static conf_node_t *node_new(ystate_t *st, conf_kind_t kind, const yaml_event_t *ev)
{
    conf_node_t *n = arena_alloc(st->doc->arena, sizeof(*n));
    memset(n, 0, sizeof(*n));
    n->kind = kind;
    n->file = st->doc->name;
    n->line = (int)ev->start_mark.line + 1;
    return n;
}

static int next_event(ystate_t *st, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&st->parser, ev)) {
        snprintf(st->err->msg, sizeof(st->err->msg), "%s:%zu: YAML syntax error: %s", st->doc->name,
                 st->parser.problem_mark.line + 1,
                 st->parser.problem ? st->parser.problem : "unknown");
        return MS_ECONF;
    }
    return 0;
}

static int parse_node(ystate_t *st, yaml_event_t *ev, int depth, conf_node_t **out);

/* Children are collected in a temporary heap array, then copied into the arena. */
static int parse_children(ystate_t *st, conf_node_t *n, int depth, bool is_map)
{
    size_t cap = 0, cnt = 0;
    conf_node_t **items = NULL;
    const char **keys = NULL;
    int *key_lines = NULL;
    int rc = 0;
    for (;;) {
        yaml_event_t ev;
        if ((rc = next_event(st, &ev)) != 0) {
            goto out;
        }
        if (ev.type == YAML_MAPPING_END_EVENT || ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (cnt == cap) {
            cap = cap ? cap * 2 : 8;
            items = xrealloc(items, cap * sizeof(*items));
            keys = xrealloc(keys, cap * sizeof(*keys));
            key_lines = xrealloc(key_lines, cap * sizeof(*key_lines));
        }
        if (is_map) {
            int line = (int)ev.start_mark.line + 1;
            if (ev.type != YAML_SCALAR_EVENT) {
                snprintf(st->err->msg, sizeof(st->err->msg),
                         "%s:%d: mapping keys must be plain "
                         "strings",
                         st->doc->name, line);
                yaml_event_delete(&ev);
                rc = MS_ECONF;
                goto out;
            }
            const char *k = (const char *)ev.data.scalar.value;
            for (size_t i = 0; i < cnt; i++) {
                if (strcmp(keys[i], k) == 0) {
                    snprintf(st->err->msg, sizeof(st->err->msg),
                             "%s:%d: duplicate key '%s' (first on line %d)", st->doc->name, line, k,
                             key_lines[i]);
                    yaml_event_delete(&ev);
                    rc = MS_ECONF;
                    goto out;
                }
            }
            keys[cnt] = arena_strdup(st->doc->arena, k);
            key_lines[cnt] = line;
            yaml_event_delete(&ev);
            if ((rc = next_event(st, &ev)) != 0) {
                goto out;
            }
        }
        rc = parse_node(st, &ev, depth + 1, &items[cnt]);
        yaml_event_delete(&ev);
        if (rc != 0) {
            goto out;
        }
        cnt++;
    }
    n->n = cnt;
    /* arena_memdup of 0 bytes still returns a valid pointer, so empty maps are fine. */
    n->items = arena_memdup(st->doc->arena, items, cnt * sizeof(*items));
    if (is_map) {
        n->keys = arena_memdup(st->doc->arena, keys, cnt * sizeof(*keys));
        n->key_lines = arena_memdup(st->doc->arena, key_lines, cnt * sizeof(*key_lines));
    }
out:
    free(items);
    free(keys);
    free(key_lines);
    return rc;
}

static int parse_node(ystate_t *st, yaml_event_t *ev, int depth, conf_node_t **out)
{
    if (depth > CONF_MAX_DEPTH) {
        snprintf(st->err->msg, sizeof(st->err->msg), "%s:%zu: nesting deeper than %d",
                 st->doc->name, ev->start_mark.line + 1, CONF_MAX_DEPTH);
        return MS_ECONF;
    }
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        conf_node_t *n = node_new(st, CONF_SCALAR, ev);
        n->value = arena_memdup(st->doc->arena, ev->data.scalar.value, ev->data.scalar.length + 1);
        *out = n;
        return 0;
    }
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT: {
        bool is_map = ev->type == YAML_MAPPING_START_EVENT;
        conf_node_t *n = node_new(st, is_map ? CONF_MAP : CONF_SEQ, ev);
        *out = n;
        return parse_children(st, n, depth, is_map);
    }
    case YAML_ALIAS_EVENT:
        snprintf(st->err->msg, sizeof(st->err->msg), "%s:%zu: YAML aliases are not supported",
                 st->doc->name, ev->start_mark.line + 1);
        return MS_ECONF;
    default:
        snprintf(st->err->msg, sizeof(st->err->msg), "%s:%zu: unexpected YAML event", st->doc->name,
                 ev->start_mark.line + 1);
        return MS_ECONF;
    }
}

int conf_doc_parse(const char *name, const char *text, size_t len, conf_doc_t **out,
                   conf_err_t *err)
{
    ystate_t st;
    memset(&st, 0, sizeof(st));
    st.err = err;
    st.doc = xcalloc(1, sizeof(*st.doc));
    st.doc->arena = arena_new(16384);
    st.doc->name = xstrdup(name);
    yaml_parser_initialize(&st.parser);
    yaml_parser_set_input_string(&st.parser, (const unsigned char *)text, len);
    int rc = 0;
    conf_node_t *root = NULL;
    bool seen_doc = false;
    for (;;) {
        yaml_event_t ev;
        if ((rc = next_event(&st, &ev)) != 0) {
            goto fail;
        }
        yaml_event_type_t t = ev.type;
        if (t == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (t == YAML_DOCUMENT_START_EVENT) {
            if (seen_doc) {
                snprintf(err->msg, sizeof(err->msg), "%s:%zu: only one YAML document allowed", name,
                         ev.start_mark.line + 1);
                yaml_event_delete(&ev);
                rc = MS_ECONF;
                goto fail;
            }
            seen_doc = true;
        } else if (t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT ||
                   t == YAML_SCALAR_EVENT || t == YAML_ALIAS_EVENT) {
            if (t != YAML_MAPPING_START_EVENT) {
                snprintf(err->msg, sizeof(err->msg), "%s:%zu: the top level must be a mapping",
                         name, ev.start_mark.line + 1);
                yaml_event_delete(&ev);
                rc = MS_ECONF;
                goto fail;
            }
            rc = parse_node(&st, &ev, 0, &root);
            yaml_event_delete(&ev);
            if (rc != 0) {
                goto fail;
            }
            continue;
        }
        yaml_event_delete(&ev);
    }
    if (!root) {
        /* An empty file is an empty mapping: every option takes its default. */
        yaml_event_t fake;
        memset(&fake, 0, sizeof(fake));
        root = node_new(&st, CONF_MAP, &fake);
    }
    yaml_parser_delete(&st.parser);
    st.doc->root = root;
    *out = st.doc;
    return 0;
fail:
    yaml_parser_delete(&st.parser);
    conf_doc_free(st.doc);
    return rc ? rc : MS_ECONF;
}

int conf_doc_load(const char *path, conf_doc_t **out, conf_err_t *err)
{
    char *text;
    size_t len;
    int rc = file_read_all(path, CONF_MAX_FILE, &text, &len);
    if (rc != 0) {
        snprintf(err->msg, sizeof(err->msg), "%s: cannot read: %s", path,
                 rc == MS_ERANGE ? "file larger than 16 MiB" : strerror(errno));
        return MS_ECONF;
    }
    rc = conf_doc_parse(path, text, len, out, err);
    free(text);
    return rc;
}

const conf_node_t *conf_doc_root(const conf_doc_t *doc)
{
    return doc->root;
}

void conf_doc_free(conf_doc_t *doc)
{
    if (!doc) {
        return;
    }
    arena_free(doc->arena);
    free(doc->name);
    free(doc);
}

const conf_node_t *conf_map_get(const conf_node_t *map, const char *key)
{
    if (!map || map->kind != CONF_MAP) {
        return NULL;
    }
    for (size_t i = 0; i < map->n; i++) {
        if (strcmp(map->keys[i], key) == 0) {
            return map->items[i];
        }
    }
    return NULL;
}
