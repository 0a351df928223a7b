/*
 * sort.c - a stable merge sort of index arrays.
 *
 * The C library's qsort may allocate behind our allocator's back and is not
 * stable; tensor tables can hold hundreds of thousands of entries, so an
 * O(n log n) sort with caller-provided scratch is used everywhere instead.
 */
#include "internal.h"

#include <string.h>

int stc__compare_bytes(const char *a, size_t a_len, const char *b, size_t b_len) {
    size_t n = a_len < b_len ? a_len : b_len;
    int c = n ? memcmp(a, b, n) : 0;
    if (c != 0) return c;
    return (a_len > b_len) - (a_len < b_len);
}

static bool is_sorted(const uint32_t *items, size_t n, stc__less_fn less, const void *ctx) {
    for (size_t i = 1; i < n; i++) {
        if (less(ctx, items[i], items[i - 1])) return false;
    }
    return true;
}

void stc__sort_indices(uint32_t *items, uint32_t *scratch, size_t n, stc__less_fn less,
                       const void *ctx) {
    /* Files written in order are common: detect them in one linear pass. */
    if (is_sorted(items, n, less, ctx)) return;
    uint32_t *src = items, *dst = scratch;
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n;
            size_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                dst[k++] = less(ctx, src[j], src[i]) ? src[j++] : src[i++];
            }
            while (i < mid) dst[k++] = src[i++];
            while (j < hi) dst[k++] = src[j++];
        }
        uint32_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != items) memcpy(items, src, n * sizeof *items);
}
