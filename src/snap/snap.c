/* snap.c: building and publishing snapshots with liburcu (memb flavour: readers pay a
 * counter increment, the writer a membarrier). */
#include "snap.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <urcu.h>

typedef struct {
    snap_t pub;
    struct rcu_head rcu;
} snap_box_t;

static snap_t *current;
static uint64_t generation;

static int parse_nsid(const char *s, uint8_t *out, size_t cap, size_t *len)
{
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        size_t n = strlen(s + 2);
        if (n == 0 || n % 2 || n / 2 > cap) {
            return MS_EINVAL;
        }
        for (size_t i = 0; i < n / 2; i++) {
            char hex[3] = {s[2 + 2 * i], s[3 + 2 * i], 0};
            if (!isxdigit((unsigned char)hex[0]) || !isxdigit((unsigned char)hex[1])) {
                return MS_EINVAL;
            }
            out[i] = (uint8_t)strtoul(hex, NULL, 16);
        }
        *len = n / 2;
        return 0;
    }
    size_t n = strlen(s);
    if (n > cap) {
        return MS_EINVAL;
    }
    memcpy(out, s, n);
    *len = n;
    return 0;
}

int snap_build(conf_t *conf, snap_t **out, char *err, size_t errlen)
{
    snap_box_t *box = xcalloc(1, sizeof(*box));
    snap_t *s = &box->pub;
    s->conf = conf;
    s->zones = zone_db_new();
    s->udp_max = (uint16_t)conf->udp_max_payload;
    size_t nl = 0;
    if (parse_nsid(conf->nsid ? conf->nsid : "", s->nsid, sizeof(s->nsid), &nl) != 0) {
        snprintf(err, errlen, "%s: server.nsid: not text of at most %zu bytes or 0x + hex",
                 conf->path ? conf->path : "(command line)", sizeof(s->nsid));
        snap_free(s);
        return MS_ECONF;
    }
    s->nsid_len = (uint16_t)nl;
    for (size_t i = 0; i < conf->n_zones; i++) {
        zone_t *z = NULL;
        int rc = zone_load(conf->zones[i].origin, conf->zones[i].file, &z, err, errlen);
        if (rc != 0) {
            snap_free(s);
            return rc;
        }
        if (zone_db_add(s->zones, z) != 0) {
            snprintf(err, errlen, "%s:%d: zone %s is defined twice", conf->zones[i].src_file,
                     conf->zones[i].src_line, conf->zones[i].origin);
            zone_free(z);
            snap_free(s);
            return MS_ECONF;
        }
        log_info("zone %s loaded from %s: %zu records, %zu names, %zu KiB", conf->zones[i].origin,
                 conf->zones[i].file, zone_rr_count(z), zone_node_count(z),
                 zone_mem_bytes(z) / 1024);
    }
    s->generation = ++generation;
    *out = s;
    return 0;
}

void snap_free(snap_t *s)
{
    if (!s) {
        return;
    }
    zone_db_free(s->zones);
    conf_free(s->conf);
    free((snap_box_t *)s);
}

static void snap_free_rcu(struct rcu_head *h)
{
    snap_box_t *box = caa_container_of(h, snap_box_t, rcu);
    snap_free(&box->pub);
}

void snap_publish(snap_t *s)
{
    snap_t *old = rcu_xchg_pointer(&current, s);
    if (old) {
        call_rcu(&((snap_box_t *)old)->rcu, snap_free_rcu);
    }
}

void snap_shutdown(void)
{
    snap_t *old = rcu_xchg_pointer(&current, NULL);
    synchronize_rcu();
    snap_free(old);
}

void snap_reader_register(void)
{
    rcu_register_thread();
}

void snap_reader_unregister(void)
{
    rcu_unregister_thread();
}

void snap_read_lock(void)
{
    rcu_read_lock();
}

void snap_read_unlock(void)
{
    rcu_read_unlock();
}

const snap_t *snap_current(void)
{
    return rcu_dereference(current);
}
