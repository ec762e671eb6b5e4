/* fuzz_haproxy_csv.c: arbitrary bytes as HAProxy `show stat` output through the CSV parser.
 * The first byte picks which backend names are looked for (so the seeds' "web"/"dbcheck" and
 * names the fuzzer invents are both reached); the parser must not crash or read out of
 * bounds, and its counts must stay consistent. */
#include "health/internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[][2] = {
        {"web", "dbcheck"}, {"web", NULL}, {"", ""}, {"a", "a"}, {"BACKEND", "FRONTEND"}};
    size_t pick = size ? data[0] % MS_ARRAY_LEN(names) : 0;
    const char *in = size ? (const char *)data + 1 : (const char *)data;
    size_t len = size ? size - 1 : 0;
    hp_stat_t st;
    char err[128];
    int rc = hp_parse_stat(in, len, names[pick][0], names[pick][1], &st, err, sizeof(err));
    if (rc == 0) {
        if (st.web_up > st.web_total || strlen(st.web_down) >= sizeof(st.web_down) ||
            strlen(st.db_detail) >= sizeof(st.db_detail) || (st.web_total && !st.web_found)) {
            abort();
        }
    } else if (rc != MS_EPARSE || err[0] == '\0' || strlen(err) >= sizeof(err)) {
        abort();
    }
    return 0;
}
