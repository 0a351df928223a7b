/*
 * alloc.c - the one place the core allocates memory.
 */
#include "internal.h"

#include <stdlib.h>

static void *libc_malloc(void *ctx, size_t size) {
    (void)ctx;
    return malloc(size);
}

static void *libc_realloc(void *ctx, void *ptr, size_t old_size, size_t new_size) {
    (void)ctx;
    (void)old_size;
    return realloc(ptr, new_size);
}

static void libc_free(void *ctx, void *ptr) {
    (void)ctx;
    free(ptr);
}

static const stc_allocator libc_allocator = {libc_malloc, libc_realloc, libc_free, NULL};

const stc_allocator *stc__allocator_or_default(const stc_allocator *allocator) {
    return allocator ? allocator : &libc_allocator;
}

/* A zero-byte request still returns a unique block, so that callers can
 * treat NULL as failure without special cases. */
void *stc__malloc(const stc_allocator *a, size_t size) {
    return a->malloc(a->ctx, size ? size : 1);
}

void *stc__realloc(const stc_allocator *a, void *ptr, size_t old_size, size_t new_size) {
    if (!ptr) return stc__malloc(a, new_size);
    return a->realloc(a->ctx, ptr, old_size, new_size ? new_size : 1);
}

void stc__free(const stc_allocator *a, void *ptr) {
    if (ptr) a->free(a->ctx, ptr);
}

bool stc__grow(const stc_allocator *a, void **items, size_t *capacity, size_t needed,
               size_t item_size) {
    if (needed <= *capacity) return true;
    size_t new_capacity = *capacity ? *capacity : 8;
    while (new_capacity < needed) {
        if (new_capacity > SIZE_MAX / 2) return false;
        new_capacity *= 2;
    }
    if (new_capacity > SIZE_MAX / item_size) return false;
    void *grown = stc__realloc(a, *items, *capacity * item_size, new_capacity * item_size);
    if (!grown) return false;
    *items = grown;
    *capacity = new_capacity;
    return true;
}
