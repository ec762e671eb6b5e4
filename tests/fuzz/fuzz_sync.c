/* fuzz_sync.c: fuzz target for the sync wire decoder (src/sync/codec.c). A decoded batch is
 * re-encoded and decoded again: what the decoder accepts must be self-consistent. */
#include "sync/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    arena_t *a = arena_new(16384);
    sync_msg_t *m = xmalloc(sizeof(*m));
    const char *why = NULL;
    if (sync_decode(data, size, a, m, &why) == 0) {
        if (m->type == SYNC_MSG_BATCH) {
            buf_t o;
            buf_init(&o);
            sync_enc_batch(&o, &m->u.batch);
            if (o.len != size || memcmp(o.data, data, size) != 0) {
                __builtin_trap(); /* the codec must be canonical */
            }
            sync_msg_t *m2 = xmalloc(sizeof(*m2));
            if (sync_decode(o.data, o.len, a, m2, &why) != 0) {
                __builtin_trap();
            }
            free(m2);
            buf_t pk;
            buf_init(&pk);
            for (size_t i = 0; i < m->u.batch.nentries; i++) {
                const sync_entry_t *e = &m->u.batch.entries[i];
                sync_val_text(&pk, e->pk, m->u.batch.tables[e->table].npk);
            }
            buf_deinit(&pk);
            buf_deinit(&o);
        }
    } else if (!why) {
        __builtin_trap(); /* every rejection has a reason */
    }
    free(m);
    arena_free(a);
    return 0;
}
