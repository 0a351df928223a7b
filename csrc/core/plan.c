/*
 * plan.c - the writer's layout: tensor order, offsets and the header bytes,
 * byte-identical to the reference writer's output.
 *
 * Order: dtype rank descending (the enum order of stc_dtype), then name
 * bytes ascending. JSON: compact; "__metadata__" first; each entry as
 * {"dtype":..,"shape":[..],"data_offsets":[b,e]}; strings escaped as JSON
 * requires and nothing more (no \u escapes above 0x1F, no escaped '/').
 * The JSON is padded with spaces to a multiple of 8 bytes.
 */
#include "internal.h"

#include <assert.h>
#include <string.h>

struct stc_plan {
    const stc_allocator *a;
    size_t count;
    uint32_t *order;  /* file order -> spec index */
    uint64_t *nbytes; /* by spec index */
    uint8_t *header;
    size_t header_len;
    uint64_t file_size;
};

/* MARK: - A growable byte buffer */

typedef struct buffer {
    const stc_allocator *a;
    uint8_t *data;
    size_t len, capacity;
    bool failed;
} buffer;

static void put(buffer *b, const void *bytes, size_t n) {
    if (b->failed) return;
    if (n > b->capacity - b->len) { /* len <= capacity always */
        if (n > SIZE_MAX - b->len ||
            !stc__grow(b->a, (void **)&b->data, &b->capacity, b->len + n, 1)) {
            b->failed = true;
            return;
        }
    }
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
}

static void put_str(buffer *b, const char *s) { put(b, s, strlen(s)); }

/* A string literal, its length known at compile time. */
#define PUT_LITERAL(b, s) put((b), (s), sizeof(s) - 1)

/* Decimal digits, written back to front: a header holds three numbers per
 * tensor, and snprintf's format parsing was a tenth of a many-tensor save. */
static void put_u64(buffer *b, uint64_t v) {
    char digits[20];
    size_t i = sizeof digits;
    do {
        digits[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(b, digits + i, sizeof digits - i);
}

static void put_json_string(buffer *b, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    put(b, "\"", 1);
    size_t plain = 0; /* start of the current run of bytes needing no escape */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[6];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\t': esc = "\\t"; break;
        case '\n': esc = "\\n"; break;
        case '\f': esc = "\\f"; break;
        case '\r': esc = "\\r"; break;
        default:
            if (c >= 0x20) continue;
            memcpy(u, "\\u00", 4);
            u[4] = hex[c >> 4];
            u[5] = hex[c & 15];
        }
        put(b, s + plain, i - plain);
        if (esc)
            put_str(b, esc);
        else
            put(b, u, 6);
        plain = i + 1;
    }
    put(b, s + plain, len - plain);
    put(b, "\"", 1);
}

/* MARK: - Ordering */

typedef struct sort_ctx {
    const stc_tensor_spec *specs;
} sort_ctx;

static bool name_less(const void *ctx, uint32_t a, uint32_t b) {
    const stc_tensor_spec *s = ((const sort_ctx *)ctx)->specs;
    return stc__compare_bytes(s[a].name, s[a].name_len, s[b].name, s[b].name_len) < 0;
}

static bool file_order_less(const void *ctx, uint32_t a, uint32_t b) {
    const stc_tensor_spec *s = ((const sort_ctx *)ctx)->specs;
    if (s[a].dtype != s[b].dtype) return s[a].dtype > s[b].dtype;
    return name_less(ctx, a, b);
}

static bool key_less(const void *ctx, uint32_t a, uint32_t b) {
    const stc_string_pair *m = ctx;
    return stc__compare_bytes(m[a].key, m[a].key_len, m[b].key, m[b].key_len) < 0;
}

/* MARK: - Validation */

static stc_status spec_error(stc_error *error, stc_status status, const char *message,
                             const stc_tensor_spec *spec) {
    return stc__fail(error, status, message, STC_NO_OFFSET, spec->name, spec->name_len);
}

static stc_status check_spec(const stc_tensor_spec *spec, uint64_t *nbytes, stc_error *error) {
    if ((unsigned)spec->dtype >= STC_DTYPE_COUNT)
        return spec_error(error, STC_ERR_INVALID_ARGUMENT, "unknown dtype", spec);
    if (spec->name_len == 12 && memcmp(spec->name, "__metadata__", 12) == 0)
        return spec_error(error, STC_ERR_INVALID_ARGUMENT,
                          "\"__metadata__\" is reserved and cannot name a tensor", spec);
    if (stc__utf8_valid_prefix((const uint8_t *)spec->name, spec->name_len) != spec->name_len)
        return spec_error(error, STC_ERR_INVALID_ARGUMENT, "tensor name is not valid UTF-8",
                          spec);
    if (spec->ndim && !spec->shape)
        return spec_error(error, STC_ERR_INVALID_ARGUMENT, "shape is NULL", spec);
    stc_status st = stc__tensor_nbytes(spec->dtype, spec->shape, spec->ndim, nbytes);
    if (st == STC_ERR_SIZE_OVERFLOW)
        return spec_error(error, st, "tensor size overflows 64 bits", spec);
    if (st == STC_ERR_MISALIGNED)
        return spec_error(error, st,
                          "sub-byte dtype whose element count does not fill whole bytes", spec);
    return STC_OK;
}

static stc_status check_metadata(const stc_string_pair *m, size_t n, stc_error *error) {
    for (size_t i = 0; i < n; i++) {
        if (stc__utf8_valid_prefix((const uint8_t *)m[i].key, m[i].key_len) != m[i].key_len ||
            stc__utf8_valid_prefix((const uint8_t *)m[i].value, m[i].value_len) !=
                m[i].value_len)
            return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                             "metadata keys and values must be valid UTF-8", STC_NO_OFFSET,
                             m[i].key, m[i].key_len);
    }
    return STC_OK;
}

/* MARK: - Planning */

static stc_status no_memory(stc_error *error) {
    return stc__fail(error, STC_ERR_NO_MEMORY, "out of memory while planning the file",
                     STC_NO_OFFSET, NULL, 0);
}

static void emit_header(buffer *b, const stc_plan *p, const stc_tensor_spec *specs,
                        const stc_string_pair *metadata, const uint32_t *meta_order,
                        size_t metadata_count, int has_metadata) {
    put(b, "\0\0\0\0\0\0\0\0", 8); /* the length, filled in at the end */
    put(b, "{", 1);
    bool first = true;
    if (has_metadata) {
        PUT_LITERAL(b, "\"__metadata__\":{");
        for (size_t i = 0; i < metadata_count; i++) {
            const stc_string_pair *m = &metadata[meta_order[i]];
            if (i) put(b, ",", 1);
            put_json_string(b, m->key, m->key_len);
            put(b, ":", 1);
            put_json_string(b, m->value, m->value_len);
        }
        put(b, "}", 1);
        first = false;
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < p->count; i++) {
        const stc_tensor_spec *s = &specs[p->order[i]];
        if (!first) put(b, ",", 1);
        first = false;
        put_json_string(b, s->name, s->name_len);
        PUT_LITERAL(b, ":{\"dtype\":\"");
        put_str(b, stc_dtype_name(s->dtype));
        PUT_LITERAL(b, "\",\"shape\":[");
        for (size_t d = 0; d < s->ndim; d++) {
            if (d) put(b, ",", 1);
            put_u64(b, s->shape[d]);
        }
        PUT_LITERAL(b, "],\"data_offsets\":[");
        put_u64(b, offset);
        put(b, ",", 1);
        offset += p->nbytes[p->order[i]];
        put_u64(b, offset);
        PUT_LITERAL(b, "]}");
    }
    put(b, "}", 1);
    while (!b->failed && (b->len - 8) % 8 != 0) put(b, " ", 1);
    if (!b->failed) {
        uint64_t n = b->len - 8;
        for (int i = 0; i < 8; i++) b->data[i] = (uint8_t)(n >> (8 * i));
    }
}

stc_status stc_plan_create(const stc_tensor_spec *specs, size_t count,
                           const stc_string_pair *metadata, size_t metadata_count,
                           int has_metadata, const stc_allocator *allocator, stc_plan **out,
                           stc_error *error) {
    const stc_allocator *a = stc__allocator_or_default(allocator);
    stc_status st = STC_OK;
    uint32_t *scratch = NULL, *by_name = NULL, *meta_order = NULL;
    buffer b = {.a = a};
    if (!has_metadata) metadata_count = 0;
    if (count > UINT32_MAX || metadata_count > UINT32_MAX)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "too many tensors", STC_NO_OFFSET,
                         NULL, 0);
    stc_plan *p = stc__malloc(a, sizeof *p);
    if (!p) return no_memory(error);
    memset(p, 0, sizeof *p);
    p->a = a;
    p->count = count;
    size_t scratch_len = count > metadata_count ? count : metadata_count;
    p->order = stc__malloc(a, count * sizeof *p->order);
    p->nbytes = stc__malloc(a, count * sizeof *p->nbytes);
    by_name = stc__malloc(a, count * sizeof *by_name);
    meta_order = stc__malloc(a, metadata_count * sizeof *meta_order);
    scratch = stc__malloc(a, scratch_len * sizeof *scratch);
    if (!p->order || !p->nbytes || !by_name || !meta_order || !scratch) {
        st = no_memory(error);
        goto fail;
    }

    uint64_t data_size = 0;
    for (size_t i = 0; i < count; i++) {
        if ((st = check_spec(&specs[i], &p->nbytes[i], error)) != STC_OK) goto fail;
        if (!stc__add_u64(data_size, p->nbytes[i], &data_size)) {
            st = spec_error(error, STC_ERR_SIZE_OVERFLOW, "total data size overflows 64 bits",
                            &specs[i]);
            goto fail;
        }
        p->order[i] = by_name[i] = (uint32_t)i;
    }
    if ((st = check_metadata(metadata, metadata_count, error)) != STC_OK) goto fail;

    sort_ctx ctx = {specs};
    stc__sort_indices(p->order, scratch, count, file_order_less, &ctx);
    /* Equal names are neighbours in file order when every tensor has the
     * same dtype (the usual case); otherwise they are found in name order. */
    const uint32_t *named = p->order;
    for (size_t i = 1; i < count && named == p->order; i++) {
        if (specs[i].dtype != specs[0].dtype) {
            stc__sort_indices(by_name, scratch, count, name_less, &ctx);
            named = by_name;
        }
    }
    for (size_t i = 1; i < count; i++) {
        const stc_tensor_spec *s = &specs[named[i]], *prev = &specs[named[i - 1]];
        if (stc__compare_bytes(s->name, s->name_len, prev->name, prev->name_len) == 0) {
            st = spec_error(error, STC_ERR_INVALID_ARGUMENT, "two tensors have the same name", s);
            goto fail;
        }
    }

    for (size_t i = 0; i < metadata_count; i++) meta_order[i] = (uint32_t)i;
    stc__sort_indices(meta_order, scratch, metadata_count, key_less, metadata);
    for (size_t i = 1; i < metadata_count; i++) {
        const stc_string_pair *m = &metadata[meta_order[i]], *prev = &metadata[meta_order[i - 1]];
        if (stc__compare_bytes(m->key, m->key_len, prev->key, prev->key_len) == 0) {
            st = stc__fail(error, STC_ERR_INVALID_ARGUMENT, "a metadata key appears twice",
                           STC_NO_OFFSET, m->key, m->key_len);
            goto fail;
        }
    }

    /* One allocation for the usual header: each entry's fixed text and
     * numbers take well under 96 bytes beside its name (escapes may need
     * more: the buffer still grows). */
    size_t estimate = 64;
    for (size_t i = 0; i < count && estimate < SIZE_MAX / 4; i++)
        estimate += specs[i].name_len + 96 + 21 * specs[i].ndim;
    for (size_t i = 0; i < metadata_count && estimate < SIZE_MAX / 4; i++)
        estimate += metadata[i].key_len + metadata[i].value_len + 8;
    if (!stc__grow(a, (void **)&b.data, &b.capacity, estimate, 1)) {
        st = no_memory(error);
        goto fail;
    }
    emit_header(&b, p, specs, metadata, meta_order, metadata_count, has_metadata);
    if (b.failed) {
        st = no_memory(error);
        goto fail;
    }
    p->header = b.data;
    p->header_len = b.len;
    b.data = NULL;
    if (!stc__add_u64(p->header_len, data_size, &p->file_size)) {
        st = stc__fail(error, STC_ERR_SIZE_OVERFLOW, "total file size overflows 64 bits",
                       STC_NO_OFFSET, NULL, 0);
        goto fail;
    }
#ifndef NDEBUG
    /* Debug builds re-check the plan: file order is by rank, then name, and
     * the header is a padded multiple of 8 whose prefix states its length. */
    for (size_t i = 1; i < count; i++)
        assert(file_order_less(&ctx, p->order[i - 1], p->order[i]));
    assert((p->header_len - 8) % 8 == 0 && p->header[8] == '{');
#endif
    stc__free(a, scratch);
    stc__free(a, by_name);
    stc__free(a, meta_order);
    *out = p;
    return STC_OK;
fail:
    stc__free(a, b.data);
    stc__free(a, scratch);
    stc__free(a, by_name);
    stc__free(a, meta_order);
    stc_plan_free(p);
    return st;
}

void stc_plan_free(stc_plan *p) {
    if (!p) return;
    const stc_allocator *a = p->a;
    stc__free(a, p->order);
    stc__free(a, p->nbytes);
    stc__free(a, p->header);
    stc__free(a, p);
}

const uint8_t *stc_plan_header(const stc_plan *p, size_t *len) {
    *len = p->header_len;
    return p->header;
}

uint64_t stc_plan_file_size(const stc_plan *p) { return p->file_size; }

size_t stc_plan_order(const stc_plan *p, size_t i) { return p->order[i]; }

uint64_t stc_plan_nbytes(const stc_plan *p, size_t spec_index) { return p->nbytes[spec_index]; }
