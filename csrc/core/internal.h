/*
 * internal.h - declarations shared by the core's implementation files.
 * Not installed, not part of the contract: see stc.h for that.
 */
#ifndef STC_INTERNAL_H
#define STC_INTERNAL_H

#include "stc.h"

#include <stdbool.h>

/* MARK: - Allocation (alloc.c) */

/* The allocator a NULL pointer stands for. */
const stc_allocator *stc__allocator_or_default(const stc_allocator *allocator);

void *stc__malloc(const stc_allocator *a, size_t size);
void *stc__realloc(const stc_allocator *a, void *ptr, size_t old_size, size_t new_size);
void stc__free(const stc_allocator *a, void *ptr);

/* Grows *items (of item_size bytes each) so that it holds at least `needed`
 * items, doubling the capacity. Returns false on overflow or failure, in
 * which case *items and *capacity are unchanged. */
bool stc__grow(const stc_allocator *a, void **items, size_t *capacity,
               size_t needed, size_t item_size);

/* MARK: - Checked arithmetic (all sizes go through these) */

static inline bool stc__add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    if (a > UINT64_MAX - b) return false;
    *out = a + b;
    return true;
}

static inline bool stc__mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    if (a != 0 && b > UINT64_MAX / a) return false;
    *out = a * b;
    return true;
}

/* Element count of a shape; false on overflow. The empty shape has 1. */
bool stc__element_count(const uint64_t *shape, size_t ndim, uint64_t *out);

/* MARK: - Errors (status.c) */

/* Fills *error (when non-NULL) and returns status. tensor may be NULL. */
stc_status stc__fail(stc_error *error, stc_status status, const char *message,
                     uint64_t offset, const char *tensor, size_t tensor_len);

/* The same, naming a JSON key that is not a tensor name. */
stc_status stc__fail_key(stc_error *error, stc_status status, const char *message,
                         uint64_t offset, const char *key, size_t key_len);

/* The same for a failed system call: STC_ERR_IO with errno `err`. */
stc_status stc__fail_errno(stc_error *error, const char *message, int err);

/* MARK: - Dtypes (dtype.c) */

/* Size in bytes of a tensor; checks overflow and whole bytes. On failure
 * returns STC_ERR_SIZE_OVERFLOW or STC_ERR_MISALIGNED with no error filled. */
stc_status stc__tensor_nbytes(stc_dtype dtype, const uint64_t *shape, size_t ndim,
                              uint64_t *out);

/* The code (its 4 or 6 bits) of value `index` of packed data of dtype F4,
 * F6_E2M3 or F6_E3M2: the one statement of the packed bit order (dtype.c).
 * F4 packs two values a byte, the first in the low nibble; F6 packs four
 * values in three bytes, value i of a group in bits 6i..6i+5 of the
 * group's little-endian 24-bit word. */
unsigned stc__packed_code(stc_dtype dtype, const uint8_t *data, uint64_t index);

/* MARK: - Sorting (sort.c) */

typedef bool (*stc__less_fn)(const void *ctx, uint32_t a, uint32_t b);

/* Stable merge sort of n indices; scratch must hold n entries. */
void stc__sort_indices(uint32_t *items, uint32_t *scratch, size_t n,
                       stc__less_fn less, const void *ctx);

/* Bytewise comparison of two strings with lengths, like memcmp then length. */
int stc__compare_bytes(const char *a, size_t a_len, const char *b, size_t b_len);

/* MARK: - UTF-8 (utf8.c) */

/* Length of the valid UTF-8 sequence starting at p (1..4), or 0 if the bytes
 * there are not valid UTF-8 (overlong, surrogate, above U+10FFFF, cut). */
size_t stc__utf8_sequence_length(const uint8_t *p, const uint8_t *end);

/* Length of the longest valid UTF-8 prefix of text (len if all valid). */
size_t stc__utf8_valid_prefix(const uint8_t *text, size_t len);

/* MARK: - JSON lexing (json.c) */

/* A decoded string: points into the header text, which strings are decoded
 * into in place (a decoded string is never longer than its JSON form). */
typedef struct stc__string {
    const char *ptr;
    size_t len;
    uint64_t offset; /* file offset of the opening quote */
} stc__string;

/* The lexer's cursor over the header text, plus the key stack used to find
 * duplicate keys in every object, however deeply it is nested. */
typedef struct stc__json {
    char *text;
    size_t len;
    size_t pos;
    uint64_t base_offset; /* file offset of text[0] */
    const stc_allocator *a;
    stc_error *error;
    stc__string *keys;
    size_t keys_len;
    size_t keys_capacity;
} stc__json;

/* File offset of the cursor, for error messages. */
uint64_t stc__json_offset(const stc__json *j);

/* Skips JSON whitespace; returns the next byte, or -1 at the end. */
int stc__json_peek(stc__json *j);

/* Fails with STC_ERR_INVALID_JSON at the cursor. */
stc_status stc__json_syntax_error(stc__json *j, const char *message);

/* Consumes the byte c (after whitespace) or fails with `message`. */
stc_status stc__json_expect(stc__json *j, char c, const char *message);

/* Parses the string at the cursor (which must be at its opening quote). */
stc_status stc__json_string(stc__json *j, stc__string *out);

/* Parses a non-negative integer below 2^64 at the cursor, an element of an
 * array at `depth`. Valid JSON values that are not such an integer fail with
 * STC_ERR_INVALID_HEADER; malformed JSON with STC_ERR_INVALID_JSON. */
stc_status stc__json_u64(stc__json *j, uint64_t *out, unsigned depth, const char *tensor,
                         size_t tensor_len);

/* Validates and skips any JSON value at the cursor. `depth` is the nesting
 * depth of the container that holds it. Nested objects are checked for
 * duplicate keys too. */
stc_status stc__json_skip_value(stc__json *j, unsigned depth);

/* Records a key of the innermost open object; stc__json_check_keys then
 * checks the keys recorded since `start` for duplicates and pops them. */
stc_status stc__json_push_key(stc__json *j, const stc__string *key);
stc_status stc__json_check_keys(stc__json *j, size_t start);

void stc__json_release(stc__json *j);

/* Checks that text[0, len) is one JSON value with only whitespace around it
 * (decoding strings in place, like the parser). */
stc_status stc__json_check_syntax(char *text, size_t len, uint64_t base_offset,
                                  const stc_allocator *a, stc_error *error);

/* MARK: - Header parsing (header.c) */

/* The result of parsing a header: tensors in header order, their shapes in
 * one pool, metadata pairs. Strings point into the header buffer, decoded in
 * place. Owned by the caller; free with stc__header_free. */
typedef struct stc__header {
    stc_tensor *tensors;
    size_t count;
    size_t tensor_capacity;
    uint64_t *dims;
    size_t dims_len;
    size_t dims_capacity;
    stc_string_pair *metadata;
    size_t metadata_count;
    size_t metadata_capacity;
    bool has_metadata;
} stc__header;

/* Parses text[0, len) (decoding strings in place, so text must be writable
 * and stay alive). base_offset is the file offset of text[0], for errors. */
stc_status stc__parse_header(char *text, size_t len, uint64_t base_offset,
                             const stc_allocator *a, stc__header *out,
                             stc_error *error);

void stc__header_free(const stc_allocator *a, stc__header *header);

/* MARK: - Layout validation (layout.c) */

/* Checks every tensor's size and the packing of the data section, which is
 * data_len bytes long, and that tensor names are unique. On success fills
 * by_name and by_offset (count entries each, allocated from a). */
stc_status stc__validate_layout(const stc__header *header, uint64_t data_len,
                                const stc_allocator *a, uint32_t **by_name,
                                uint32_t **by_offset, stc_error *error);

/* MARK: - Format sniffing (sniff.c) */

/* If the first bytes of a file identify another format (pickle, zip, Git
 * LFS pointer, HTML, ...), a message that names it; otherwise NULL. */
const char *stc__sniff_foreign_format(const uint8_t *head, size_t len);

/* MARK: - Reading a descriptor (io.c) */

/* preads len bytes of fd at offset into dst, retrying after EINTR and after
 * short reads, until all are read or the file ends. *got is always set to the
 * bytes read (fewer than len when the file ended first, or before an error).
 * Returns 0, or the errno of the failed pread. */
int stc__pread_full(int fd, void *dst, size_t len, uint64_t offset, size_t *got);

/* The backend STC_BACKEND_AUTO resolves to for the file fd is open on: the
 * verdict of stc_backend_for_filesystem on its fstatfs f_type, or
 * STC_BACKEND_MMAP when fstatfs fails or the system has no f_type. */
stc_backend stc__backend_of_fd(int fd);

/* MARK: - The open descriptor (file.c) */

/* The descriptor the file was opened and is read through, or -1 for
 * memory images. Still owned by the file: for fstat, never for close. */
int stc__file_fd(const stc_file *f);

#endif /* STC_INTERNAL_H */
