/* pg.c: the PostgreSQL backend (libpq). */
#include "sync/internal.h"

int sync_pg_open(const sync_conf_t *c, sync_db_t **out, char *why, size_t whylen)
{
    (void)c;
    *out = NULL;
    snprintf(why, whylen, "the postgresql backend is not built yet");
    return MS_EINVAL;
}
