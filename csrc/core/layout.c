/*
 * layout.c - validation of the tensor table against the data section.
 *
 * Every tensor's byte size must follow from its dtype and shape, and the
 * tensors, sorted by offset, must tile the data section exactly: starting
 * at 0, no holes, no overlaps, nothing after the last one. Names must be
 * unique. Both sort orders are kept for the accessors.
 */
#include "internal.h"

static bool offset_less(const void *ctx, uint32_t a, uint32_t b) {
    const stc_tensor *t = ctx;
    if (t[a].begin != t[b].begin) return t[a].begin < t[b].begin;
    if (t[a].end != t[b].end) return t[a].end < t[b].end;
    return stc__compare_bytes(t[a].name, t[a].name_len, t[b].name, t[b].name_len) < 0;
}

static bool name_less(const void *ctx, uint32_t a, uint32_t b) {
    const stc_tensor *t = ctx;
    int c = stc__compare_bytes(t[a].name, t[a].name_len, t[b].name, t[b].name_len);
    return c < 0 || (c == 0 && t[a].header_offset < t[b].header_offset);
}

static stc_status tensor_error(stc_error *error, stc_status status, const char *message,
                               const stc_tensor *t) {
    return stc__fail(error, status, message, t->header_offset, t->name, t->name_len);
}

/* Records two sizes: of the data section (the file adds the header's length),
 * or for STC_ERR_SIZE_MISMATCH of one tensor's bytes. */
static stc_status sizes(stc_error *error, stc_status status, uint64_t expected, uint64_t found) {
    if (error) {
        error->size_expected = expected;
        error->size_found = found;
    }
    return status;
}

static stc_status check_sizes(const stc__header *h, stc_error *error) {
    for (size_t i = 0; i < h->count; i++) {
        stc_tensor *t = &h->tensors[i];
        uint64_t nbytes = 0;
        if (t->end < t->begin)
            return tensor_error(error, STC_ERR_INVALID_OFFSETS,
                                "data_offsets: begin is after end", t);
        stc_status st = stc__tensor_nbytes(t->dtype, t->shape, t->ndim, &nbytes);
        if (st == STC_ERR_SIZE_OVERFLOW)
            return tensor_error(error, st, "element count times dtype size overflows 64 bits", t);
        if (st == STC_ERR_MISALIGNED)
            return tensor_error(error, st,
                                "sub-byte dtype whose elements do not fill whole bytes", t);
        if (t->end - t->begin != nbytes) {
            /* The two byte counts compared go with the message: the span, and
             * what the dtype and shape need. */
            tensor_error(error, STC_ERR_SIZE_MISMATCH,
                         "data_offsets span a different number of bytes than "
                         "shape and dtype need",
                         t);
            return sizes(error, STC_ERR_SIZE_MISMATCH, nbytes, t->end - t->begin);
        }
        t->nbytes = nbytes;
    }
    return STC_OK;
}

static stc_status check_packing(const stc__header *h, const uint32_t *by_offset,
                                uint64_t data_len, stc_error *error) {
    uint64_t cursor = 0;
    for (size_t i = 0; i < h->count; i++) {
        const stc_tensor *t = &h->tensors[by_offset[i]];
        if (t->begin < cursor)
            return tensor_error(error, STC_ERR_INVALID_OFFSETS,
                                "tensor overlaps the data of another tensor", t);
        if (t->begin > cursor)
            return tensor_error(error, STC_ERR_INVALID_OFFSETS,
                                "hole in the data section before this tensor", t);
        cursor = t->end;
    }
    if (cursor > data_len) {
        const stc_tensor *last = &h->tensors[by_offset[h->count - 1]];
        tensor_error(error, STC_ERR_TRUNCATED_DATA,
                     "the file ends before this tensor's data does", last);
        return sizes(error, STC_ERR_TRUNCATED_DATA, cursor, data_len);
    }
    if (cursor < data_len) {
        stc__fail(error, STC_ERR_TRAILING_DATA,
                  "bytes follow the last tensor's data (the file may be a polyglot)",
                  STC_NO_OFFSET, NULL, 0);
        return sizes(error, STC_ERR_TRAILING_DATA, cursor, data_len);
    }
    return STC_OK;
}

static stc_status check_unique_names(const stc__header *h, const uint32_t *by_name,
                                     stc_error *error) {
    for (size_t i = 1; i < h->count; i++) {
        const stc_tensor *prev = &h->tensors[by_name[i - 1]], *cur = &h->tensors[by_name[i]];
        if (stc__compare_bytes(prev->name, prev->name_len, cur->name, cur->name_len) == 0)
            return tensor_error(error, STC_ERR_DUPLICATE_KEY,
                                "two tensors have the same name", cur);
    }
    return STC_OK;
}

stc_status stc__validate_layout(const stc__header *h, uint64_t data_len, const stc_allocator *a,
                                uint32_t **by_name_out, uint32_t **by_offset_out,
                                stc_error *error) {
    size_t n = h->count;
    if (n > UINT32_MAX)
        return stc__fail(error, STC_ERR_INVALID_HEADER, "too many tensors", STC_NO_OFFSET, NULL,
                         0);
    stc_status st = check_sizes(h, error);
    if (st != STC_OK) return st;

    uint32_t *by_name = stc__malloc(a, n * sizeof *by_name);
    uint32_t *by_offset = stc__malloc(a, n * sizeof *by_offset);
    uint32_t *scratch = stc__malloc(a, n * sizeof *scratch);
    if (!by_name || !by_offset || !scratch) {
        st = stc__fail(error, STC_ERR_NO_MEMORY, "out of memory while validating the header",
                       STC_NO_OFFSET, NULL, 0);
        goto done;
    }
    for (size_t i = 0; i < n; i++) by_name[i] = by_offset[i] = (uint32_t)i;
    stc__sort_indices(by_name, scratch, n, name_less, h->tensors);
    if ((st = check_unique_names(h, by_name, error)) != STC_OK) goto done;
    stc__sort_indices(by_offset, scratch, n, offset_less, h->tensors);
    if ((st = check_packing(h, by_offset, data_len, error)) != STC_OK) goto done;

    *by_name_out = by_name;
    *by_offset_out = by_offset;
    by_name = by_offset = NULL;
done:
    stc__free(a, by_name);
    stc__free(a, by_offset);
    stc__free(a, scratch);
    return st;
}
