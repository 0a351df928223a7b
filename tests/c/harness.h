/*
 * harness.h - a tiny test harness and the helpers the core's C tests share.
 *
 * CHECK(expr) counts a failure and prints file:line and the expression; the
 * run goes on, and main returns non-zero if anything failed. The helpers build
 * .safetensors images in memory, manage a scratch directory, and provide a
 * counting allocator that can fail its k-th allocation.
 */
#ifndef STC_TEST_HARNESS_H
#define STC_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "stc.h"

#if defined(__GNUC__) || defined(__clang__)
#define TEST_PRINTF(fmt_index, first_arg) \
    __attribute__((format(printf, fmt_index, first_arg)))
#else
#define TEST_PRINTF(fmt_index, first_arg)
#endif

/* MARK: - Checks */

extern unsigned long g_checks;
extern unsigned long g_failures;

void check_failed(const char *file, int line, const char *expr);

#define CHECK(expr)                                        \
    do {                                                   \
        g_checks++;                                        \
        if (!(expr)) check_failed(__FILE__, __LINE__, #expr); \
    } while (0)

/* Checks got == want; on mismatch prints both status names and, when err is
 * not NULL, its message, offset and tensor. Returns 1 when they match. */
int check_status_at(const char *file, int line, stc_status got, stc_status want,
                    const stc_error *err, const char *expr);

#define CHECK_STATUS(got, want, err) \
    check_status_at(__FILE__, __LINE__, (got), (want), (err), #got)
#define CHECK_OK(got, err) CHECK_STATUS((got), STC_OK, (err))

/* Fills an stc_error with junk, so that tests notice fields left unset. */
void error_poison(stc_error *err);

/* Checks the invariants every filled-in stc_error must satisfy after a call
 * returned `status`: same status, a message, a NUL-terminated tensor field. */
void check_error_filled_at(const char *file, int line, const stc_error *err,
                           stc_status status);
#define CHECK_ERROR_FILLED(err, status) \
    check_error_filled_at(__FILE__, __LINE__, (err), (status))

/* MARK: - Byte buffers and file images */

typedef struct strbuf {
    char *data;
    size_t len;
    size_t cap;
} strbuf;

void sb_append(strbuf *sb, const void *bytes, size_t len);
void sb_puts(strbuf *sb, const char *text);
void sb_printf(strbuf *sb, const char *fmt, ...) TEST_PRINTF(2, 3);
void sb_repeat(strbuf *sb, char c, size_t count);
void sb_free(strbuf *sb);

/* A whole .safetensors image: 8-byte N, header bytes, data bytes. */
typedef struct image {
    uint8_t *bytes;
    size_t len;
} image;

/* N = header_len; data may be NULL (then data_len zero bytes are used). */
image image_make(const void *header, size_t header_len, const void *data,
                 size_t data_len);
/* An arbitrary N followed by arbitrary bytes. */
image image_make_n(uint64_t n, const void *rest, size_t rest_len);
/* Raw bytes, no prefix added. */
image image_raw(const void *bytes, size_t len);
void image_free(image *img);

void put_u64_le(uint8_t *dst, uint64_t value);
uint64_t get_u64_le(const uint8_t *src);

/* First occurrence of needle in haystack, or SIZE_MAX. */
size_t find_bytes(const void *haystack, size_t hay_len, const void *needle,
                  size_t needle_len);

/* Fills bytes with a deterministic pattern that depends on seed. */
void fill_pattern(uint8_t *bytes, size_t len, unsigned seed);

/* MARK: - Scratch directory */

/* Creates a fresh directory under $TMPDIR (or /tmp); returns a static path. */
const char *scratch_root(void);
/* Creates a new empty subdirectory of the scratch root into out. */
void scratch_subdir(const char *name, char *out, size_t out_size);
void path_join(char *out, size_t out_size, const char *dir, const char *name);
/* Number of entries in dir, "." and ".." excluded; SIZE_MAX on error. */
size_t dir_entry_count(const char *dir);
/* Removes every regular file in dir and then dir itself. */
void dir_remove_tree(const char *dir);
int write_whole_file(const char *path, const void *bytes, size_t len);
/* Reads a whole file into a malloc'd buffer; returns 0 on success. */
int read_whole_file(const char *path, uint8_t **bytes, size_t *len);
int file_exists(const char *path);

/* MARK: - Counting allocator */

typedef struct test_alloc {
    stc_allocator base; /* base.ctx points at this struct */
    size_t fail_at;     /* fail the fail_at-th malloc/realloc call; 0 = never */
    size_t calls;       /* malloc + realloc calls so far */
    int injected;       /* a failure was injected */
    size_t live_blocks;
    size_t live_bytes;
    size_t peak_bytes;
    size_t max_request; /* largest single size requested */
    size_t bad_calls;   /* frees of unknown pointers, wrong realloc old_size */
} test_alloc;

void test_alloc_init(test_alloc *a, size_t fail_at);

/* MARK: - Test groups */

void run_status_tests(void);
void run_dtype_tests(void);
void run_read_valid_tests(void);
void run_read_reject_tests(void);
void run_file_tests(void);
void run_strided_tests(void);
void run_writer_tests(void);
void run_alloc_tests(void);
void run_source_tests(void);
void run_fresh_tests(void);
void run_backend_tests(void);

#endif /* STC_TEST_HARNESS_H */
