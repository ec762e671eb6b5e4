/* keys.c: the heartbeat key file: parse, load (refusing a file others can read), keygen.
 *
 * Format, one key per line, '#' starts a comment:
 *     ID HEX [verify-only]
 * ID is a decimal key id 1..4294967295, HEX 64 hex digits (32 bytes). Senders sign with the
 * highest id not marked verify-only; receivers accept every key in the file. Rotation without
 * a gap (docs/heartbeat.md): (1) `multisited keygen --add FILE` appends the new key as
 * verify-only; copy that line to every site and reload; (2) drop "verify-only" everywhere
 * and reload: sites sign with the new key, which every receiver already knows; (3) remove the
 * old line. The key bytes live in sodium_malloc memory (guard pages,
 * never swapped, wiped on free) and are read-only while in use; the text buffer that held
 * them is wiped before it is freed. */
#include "heartbeat/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_KEYS      64
#define MAX_FILE_SIZE 65536

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

int hb_keys_parse(const char *text, size_t len, hb_keys_t *k, char *why, size_t whylen)
{
    memset(k, 0, sizeof(*k));
    k->ids = xcalloc(MAX_KEYS, sizeof(*k->ids));
    k->bytes = sodium_malloc(MAX_KEYS * HB_KEY_LEN);
    if (!k->bytes) {
        snprintf(why, whylen, "cannot allocate secure memory for keys");
        free(k->ids);
        k->ids = NULL;
        return MS_ENOMEM;
    }
    size_t pos = 0;
    int line = 0;
    bool signer = false;
    while (pos < len) {
        line++;
        size_t end = pos;
        while (end < len && text[end] != '\n') {
            end++;
        }
        const char *p = text + pos, *e = text + end;
        pos = end + 1;
        while (p < e && is_space(*p)) {
            p++;
        }
        if (p == e || *p == '#') {
            continue;
        }
        uint64_t id = 0;
        const char *d = p;
        while (p < e && *p >= '0' && *p <= '9' && id <= UINT32_MAX) {
            id = id * 10 + (uint64_t)(*p++ - '0');
        }
        if (p == d || id == 0 || id > UINT32_MAX || p == e || !is_space(*p)) {
            snprintf(why, whylen, "line %d: expected 'ID HEX' with ID 1..4294967295", line);
            goto fail;
        }
        while (p < e && is_space(*p)) {
            p++;
        }
        const char *h = p;
        while (p < e && !is_space(*p) && *p != '#') {
            p++;
        }
        size_t hl = (size_t)(p - h);
        while (p < e && is_space(*p)) {
            p++;
        }
        bool verify_only = false;
        static const char vo[] = "verify-only";
        if ((size_t)(e - p) >= sizeof(vo) - 1 && memcmp(p, vo, sizeof(vo) - 1) == 0 &&
            (e - p == sizeof(vo) - 1 || is_space(p[sizeof(vo) - 1]) || p[sizeof(vo) - 1] == '#')) {
            verify_only = true;
            p += sizeof(vo) - 1;
            while (p < e && is_space(*p)) {
                p++;
            }
        }
        if (p != e && *p != '#') {
            snprintf(why, whylen, "line %d: unexpected text after the key", line);
            goto fail;
        }
        if (k->n == MAX_KEYS) {
            snprintf(why, whylen, "line %d: more than %d keys", line, MAX_KEYS);
            goto fail;
        }
        size_t bl = 0;
        if (hl != 2 * HB_KEY_LEN ||
            sodium_hex2bin(k->bytes + k->n * HB_KEY_LEN, HB_KEY_LEN, h, hl, NULL, &bl, NULL) != 0 ||
            bl != HB_KEY_LEN) {
            snprintf(why, whylen, "line %d: key %llu: expected %d hex digits", line,
                     (unsigned long long)id, 2 * HB_KEY_LEN);
            goto fail;
        }
        for (size_t i = 0; i < k->n; i++) {
            if (k->ids[i] == id) {
                snprintf(why, whylen, "line %d: key id %llu given twice", line,
                         (unsigned long long)id);
                goto fail;
            }
        }
        k->ids[k->n] = (uint32_t)id;
        if (!verify_only && (!signer || id > k->ids[k->newest])) {
            k->newest = k->n;
            signer = true;
        }
        k->n++;
    }
    if (k->n == 0) {
        snprintf(why, whylen, "no keys (generate one with: multisited keygen FILE)");
        goto fail;
    }
    if (!signer) {
        snprintf(why, whylen, "every key is verify-only: nothing to sign with");
        goto fail;
    }
    sodium_mprotect_readonly(k->bytes);
    return 0;
fail:
    hb_keys_deinit(k);
    return MS_EPARSE;
}

/* Read the file, refusing one that is not a regular file or that group/other can access. */
static int read_key_file(const char *path, bool check_mode, char **out, size_t *out_len, char *why,
                         size_t whylen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        snprintf(why, whylen, "cannot open key file %s: %s", path, strerror(errno));
        return MS_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_FILE_SIZE) {
        snprintf(why, whylen, "key file %s: not a regular file of at most %d bytes", path,
                 MAX_FILE_SIZE);
        close(fd);
        return MS_EIO;
    }
    if (check_mode && (st.st_mode & 077)) {
        snprintf(why, whylen,
                 "key file %s: mode %04o lets others read it; chmod 600 (as keygen writes it)",
                 path, (unsigned)(st.st_mode & 07777));
        close(fd);
        return MS_EIO;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *buf = xmalloc(cap);
    ssize_t r;
    while (n < cap - 1 && (r = read(fd, buf + n, cap - 1 - n)) != 0) {
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            snprintf(why, whylen, "cannot read key file %s: %s", path, strerror(errno));
            sodium_memzero(buf, cap);
            free(buf);
            close(fd);
            return MS_EIO;
        }
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return 0;
}

int hb_keys_load(const char *path, bool check_mode, hb_keys_t *k, char *why, size_t whylen)
{
    char *text;
    size_t len;
    memset(k, 0, sizeof(*k));
    int rc = read_key_file(path, check_mode, &text, &len, why, whylen);
    if (rc != 0) {
        return rc;
    }
    char sub[200];
    rc = hb_keys_parse(text, len, k, sub, sizeof(sub));
    if (rc != 0) {
        snprintf(why, whylen, "key file %s: %s", path, sub);
    }
    sodium_memzero(text, len);
    free(text);
    return rc;
}

const uint8_t *hb_keys_find(const hb_keys_t *k, uint32_t id)
{
    for (size_t i = 0; i < k->n; i++) {
        if (k->ids[i] == id) {
            return k->bytes + i * HB_KEY_LEN;
        }
    }
    return NULL;
}

void hb_keys_deinit(hb_keys_t *k)
{
    if (k->bytes) {
        sodium_free(k->bytes); /* wipes */
    }
    free(k->ids);
    memset(k, 0, sizeof(*k));
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return MS_EIO;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int hb_keygen(const char *path, bool add)
{
    if (sodium_init() < 0) {
        return MS_EIO;
    }
    uint32_t id = 1;
    if (add) {
        hb_keys_t k;
        char why[300];
        if (hb_keys_load(path, true, &k, why, sizeof(why)) != 0) {
            log_err("keygen: %s", why);
            return MS_EINVAL;
        }
        uint32_t max = 0;
        for (size_t i = 0; i < k.n; i++) {
            max = k.ids[i] > max ? k.ids[i] : max;
        }
        id = max + 1; /* 0 when exhausted: refused below */
        hb_keys_deinit(&k);
        if (id == 0) {
            log_err("keygen: %s: key ids exhausted", path);
            return MS_ERANGE;
        }
    }
    int fd = add ? open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW)
                 : open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        log_err("keygen: %s: %s%s", path, strerror(errno),
                errno == EEXIST ? " (refusing to overwrite; --add appends a new key)" : "");
        return errno == EEXIST ? MS_EEXIST : MS_EIO;
    }
    /* Key and its text in secure memory; the header is public. */
    uint8_t *key = sodium_malloc(HB_KEY_LEN + 2 * HB_KEY_LEN + 1 + 48);
    if (!key) {
        close(fd);
        return MS_ENOMEM;
    }
    char *line = (char *)key + HB_KEY_LEN;
    randombytes_buf(key, HB_KEY_LEN);
    int n = snprintf(line, 16, "%u ", id);
    sodium_bin2hex(line + n, 2 * HB_KEY_LEN + 1, key, HB_KEY_LEN);
    size_t ll = strlen(line);
    if (add) {
        memcpy(line + ll, " verify-only", 12);
        ll += 12;
    }
    line[ll++] = '\n';
    static const char header[] = "# multisite heartbeat keys: ID HEX [verify-only], one per line;\n"
                                 "# the highest ID not verify-only signs, every ID verifies.\n";
    int rc = (add ? 0 : write_all(fd, header, sizeof(header) - 1));
    if (rc == 0) {
        rc = write_all(fd, line, ll);
    }
    sodium_free(key);
    if (rc == 0 && fsync(fd) != 0) {
        rc = MS_EIO;
    }
    if (close(fd) != 0) {
        rc = MS_EIO;
    }
    if (rc != 0) {
        log_err("keygen: cannot write %s: %s", path, strerror(errno));
        return rc;
    }
    log_info("keygen: %s: key %u written", path, id);
    return 0;
}
