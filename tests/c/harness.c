/*
 * harness.c - the check counters and the helpers declared in harness.h.
 */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

unsigned long g_checks;
unsigned long g_failures;

/* MARK: - Checks */

void check_failed(const char *file, int line, const char *expr) {
    g_failures++;
    fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, expr);
}

int check_status_at(const char *file, int line, stc_status got, stc_status want,
                    const stc_error *err, const char *expr) {
    g_checks++;
    if (got == want) return 1;
    g_failures++;
    fprintf(stderr, "%s:%d: %s returned %s, expected %s\n", file, line, expr,
            stc_status_name(got), stc_status_name(want));
    if (err != NULL && got != STC_OK) {
        fprintf(stderr, "    message: %s; offset: %llu; tensor: '%.*s'\n",
                err->message ? err->message : "(null)",
                (unsigned long long)err->offset,
                (int)(err->tensor_len <= STC_ERROR_TENSOR_CAPACITY
                          ? err->tensor_len
                          : 0),
                err->tensor);
    }
    return 0;
}

void error_poison(stc_error *err) {
    memset(err, 0xAB, sizeof *err);
}

void check_error_filled_at(const char *file, int line, const stc_error *err,
                           stc_status status) {
    int ok = err->status == status && err->message != NULL &&
             err->message[0] != '\0' &&
             err->tensor_len <= STC_ERROR_TENSOR_CAPACITY &&
             err->tensor[err->tensor_len] == '\0' &&
             (err->tensor_truncated == 0 || err->tensor_truncated == 1) &&
             (status == STC_ERR_IO || err->sys_errno == 0);
    g_checks++;
    if (!ok) {
        check_failed(file, line, "stc_error fully filled in (status, message, "
                                 "tensor_len, NUL, tensor_truncated, "
                                 "sys_errno 0 unless IO)");
    }
}

/* MARK: - Byte buffers and file images */

void sb_append(strbuf *sb, const void *bytes, size_t len) {
    if (sb->len + len + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 64;
        while (cap < sb->len + len + 1) cap *= 2;
        char *grown = realloc(sb->data, cap);
        if (grown == NULL) {
            fprintf(stderr, "out of memory in test harness\n");
            exit(2);
        }
        sb->data = grown;
        sb->cap = cap;
    }
    if (len) memcpy(sb->data + sb->len, bytes, len);
    sb->len += len;
    sb->data[sb->len] = '\0';
}

void sb_puts(strbuf *sb, const char *text) {
    sb_append(sb, text, strlen(text));
}

void sb_printf(strbuf *sb, const char *fmt, ...) {
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) {
        sb_append(sb, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (big == NULL) exit(2);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_append(sb, big, (size_t)n);
    free(big);
}

void sb_repeat(strbuf *sb, char c, size_t count) {
    for (size_t i = 0; i < count; i++) sb_append(sb, &c, 1);
}

void sb_free(strbuf *sb) {
    free(sb->data);
    sb->data = NULL;
    sb->len = sb->cap = 0;
}

void put_u64_le(uint8_t *dst, uint64_t value) {
    for (size_t i = 0; i < 8; i++) dst[i] = (uint8_t)(value >> (8 * i));
}

uint64_t get_u64_le(const uint8_t *src) {
    uint64_t v = 0;
    for (size_t i = 0; i < 8; i++) v |= (uint64_t)src[i] << (8 * i);
    return v;
}

image image_make_n(uint64_t n, const void *rest, size_t rest_len) {
    image img;
    img.len = 8 + rest_len;
    img.bytes = malloc(img.len);
    if (img.bytes == NULL) exit(2);
    put_u64_le(img.bytes, n);
    if (rest_len) memcpy(img.bytes + 8, rest, rest_len);
    return img;
}

image image_make(const void *header, size_t header_len, const void *data,
                 size_t data_len) {
    image img;
    img.len = 8 + header_len + data_len;
    img.bytes = malloc(img.len ? img.len : 1);
    if (img.bytes == NULL) exit(2);
    put_u64_le(img.bytes, header_len);
    if (header_len) memcpy(img.bytes + 8, header, header_len);
    if (data != NULL && data_len) {
        memcpy(img.bytes + 8 + header_len, data, data_len);
    } else if (data_len) {
        memset(img.bytes + 8 + header_len, 0, data_len);
    }
    return img;
}

image image_raw(const void *bytes, size_t len) {
    image img;
    img.len = len;
    /* Never a NULL pointer, even for the empty image. */
    img.bytes = malloc(len ? len : 1);
    if (img.bytes == NULL) exit(2);
    if (len) memcpy(img.bytes, bytes, len);
    return img;
}

void image_free(image *img) {
    free(img->bytes);
    img->bytes = NULL;
    img->len = 0;
}

size_t find_bytes(const void *haystack, size_t hay_len, const void *needle,
                  size_t needle_len) {
    const uint8_t *h = haystack;
    if (needle_len == 0 || needle_len > hay_len) return SIZE_MAX;
    for (size_t i = 0; i + needle_len <= hay_len; i++) {
        if (memcmp(h + i, needle, needle_len) == 0) return i;
    }
    return SIZE_MAX;
}

void fill_pattern(uint8_t *bytes, size_t len, unsigned seed) {
    uint32_t x = 2463534242u ^ (seed * 2654435761u);
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes[i] = (uint8_t)(x >> 24);
    }
}

/* MARK: - Scratch directory */

static char g_scratch[512];

const char *scratch_root(void) {
    if (g_scratch[0] == '\0') {
        const char *tmp = getenv("TMPDIR");
        if (tmp == NULL || tmp[0] == '\0') tmp = "/tmp";
        snprintf(g_scratch, sizeof g_scratch, "%s/stc_test_XXXXXX", tmp);
        if (mkdtemp(g_scratch) == NULL) {
            perror("mkdtemp");
            exit(2);
        }
    }
    return g_scratch;
}

void path_join(char *out, size_t out_size, const char *dir, const char *name) {
    int n = snprintf(out, out_size, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= out_size) {
        fprintf(stderr, "path too long: %s/%s\n", dir, name);
        exit(2);
    }
}

void scratch_subdir(const char *name, char *out, size_t out_size) {
    path_join(out, out_size, scratch_root(), name);
    if (mkdir(out, 0700) != 0 && errno != EEXIST) {
        perror(out);
        exit(2);
    }
}

size_t dir_entry_count(const char *dir) {
    DIR *d = opendir(dir);
    if (d == NULL) return SIZE_MAX;
    size_t count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        count++;
    }
    closedir(d);
    return count;
}

void dir_remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (d == NULL) return;
    struct dirent *e;
    char path[1024];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        path_join(path, sizeof path, dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            dir_remove_tree(path);
        } else {
            unlink(path);
        }
    }
    closedir(d);
    rmdir(dir);
}

int write_whole_file(const char *path, const void *bytes, size_t len) {
    FILE *fp = fopen(path, "wb");
    if (fp == NULL) return -1;
    size_t wrote = len ? fwrite(bytes, 1, len, fp) : 0;
    int rc = fclose(fp);
    return (wrote == len && rc == 0) ? 0 : -1;
}

int read_whole_file(const char *path, uint8_t **bytes, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) return -1;
    strbuf sb = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0) sb_append(&sb, chunk, n);
    fclose(fp);
    if (sb.data == NULL) sb_append(&sb, "", 0);
    *bytes = (uint8_t *)sb.data;
    *len = sb.len;
    return 0;
}

int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* MARK: - Counting allocator */

#define BLOCK_MAGIC ((size_t)0x5AFE7E45u)

typedef union block_header {
    max_align_t align;
    struct {
        size_t size;
        size_t magic;
    } h;
} block_header;

static void *alloc_block(test_alloc *a, size_t size) {
    block_header *b = malloc(sizeof(block_header) + size);
    if (b == NULL) return NULL;
    b->h.size = size;
    b->h.magic = BLOCK_MAGIC;
    a->live_blocks++;
    a->live_bytes += size;
    if (a->live_bytes > a->peak_bytes) a->peak_bytes = a->live_bytes;
    return b + 1;
}

static int take_call(test_alloc *a, size_t size) {
    a->calls++;
    if (size > a->max_request) a->max_request = size;
    if (a->fail_at != 0 && a->calls == a->fail_at) {
        a->injected = 1;
        return 0;
    }
    return 1;
}

static void *counting_malloc(void *ctx, size_t size) {
    test_alloc *a = ctx;
    if (!take_call(a, size)) return NULL;
    return alloc_block(a, size);
}

static void *counting_realloc(void *ctx, void *ptr, size_t old_size,
                              size_t new_size) {
    test_alloc *a = ctx;
    if (ptr == NULL) return counting_malloc(ctx, new_size);
    block_header *b = (block_header *)ptr - 1;
    if (b->h.magic != BLOCK_MAGIC) {
        a->bad_calls++;
        return NULL;
    }
    if (b->h.size != old_size) a->bad_calls++;
    if (!take_call(a, new_size)) return NULL;
    size_t was = b->h.size;
    block_header *grown = realloc(b, sizeof(block_header) + new_size);
    if (grown == NULL) return NULL;
    grown->h.size = new_size;
    a->live_bytes = a->live_bytes - was + new_size;
    if (a->live_bytes > a->peak_bytes) a->peak_bytes = a->live_bytes;
    return grown + 1;
}

static void counting_free(void *ctx, void *ptr) {
    test_alloc *a = ctx;
    if (ptr == NULL) return;
    block_header *b = (block_header *)ptr - 1;
    if (b->h.magic != BLOCK_MAGIC) {
        a->bad_calls++;
        return;
    }
    b->h.magic = 0;
    a->live_blocks--;
    a->live_bytes -= b->h.size;
    free(b);
}

void test_alloc_init(test_alloc *a, size_t fail_at) {
    memset(a, 0, sizeof *a);
    a->base.malloc = counting_malloc;
    a->base.realloc = counting_realloc;
    a->base.free = counting_free;
    a->base.ctx = a;
    a->fail_at = fail_at;
}
