/*
 * fuzz_write.c - libFuzzer target: the writer's plan round-trips through
 * the reader.
 *
 * The input describes a tensor table and metadata (names from an alphabet
 * rich in JSON escapes and multi-byte UTF-8, every dtype, small shapes with
 * the occasional huge dimension). An independent model predicts whether
 * stc_plan_create must succeed; on success the file image is assembled in
 * memory (header + filler data in plan order), opened with stc_open_memory,
 * and every name, dtype, shape, offset, data byte and metadata pair must
 * come back exactly. Any disagreement aborts.
 */
#include "stc.h"
#include "fuzz_common.h"

#define MAX_TENSORS 12
#define MAX_META 5
#define MAX_NAME 16
#define MAX_NDIM 5
#define MAX_IMAGE (1u << 20)

/* Pieces names are built from: escapes, controls, multi-byte UTF-8, and
 * bytes that are not UTF-8 at all. */
static const char *const pieces[] = {
    "a", "b", "z", "0", ".", "_", "/", " ", "\"", "\\", "\b", "\t", "\n", "\f", "\r",
    "\x01", "\x1f", "\x7f", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
    "\xef\xbb\xbf", "\xed\x9f\xbf", "\xf4\x8f\xbf\xbf", "__metadata__", "dtype", "shape",
    "data_offsets", "{", "}", "[", "]", ",", ":",
    /* invalid UTF-8 */
    "\xff", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82",
};
#define PIECE_COUNT (sizeof pieces / sizeof pieces[0])

typedef struct text {
    char bytes[MAX_NAME * 12 + 1];
    size_t len;
} text;

static void take_text(fuzz_input *in, text *t) {
    unsigned n = take_below(in, 5);
    t->len = 0;
    for (unsigned i = 0; i < n; i++) {
        uint8_t sel = take_u8(in);
        if (sel == 0xFF) { /* the NUL character, as data */
            t->bytes[t->len++] = '\0';
            continue;
        }
        const char *piece = pieces[sel % PIECE_COUNT];
        size_t len = strlen(piece);
        memcpy(t->bytes + t->len, piece, len);
        t->len += len;
    }
    t->bytes[t->len] = '\0';
}

static int same_bytes(const char *a, size_t an, const char *b, size_t bn) {
    return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

static uint64_t take_dim(fuzz_input *in) {
    uint8_t sel = take_u8(in);
    switch (sel) {
    case 0xF0: return UINT64_MAX;
    case 0xF1: return UINT64_MAX / 2 + 1;
    case 0xF2: return UINT64_C(1) << 32;
    case 0xF3: return UINT64_MAX / 3;
    case 0xF4: return UINT64_C(1) << 61;
    case 0xF5: return UINT64_C(1) << 40;
    default: return sel % 6;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_input in = {data, size, 0};
    static text names[MAX_TENSORS], keys[MAX_META], values[MAX_META];
    static uint64_t shapes[MAX_TENSORS][MAX_NDIM];
    stc_tensor_spec specs[MAX_TENSORS];
    stc_string_pair meta[MAX_META];

    size_t count = take_below(&in, MAX_TENSORS + 1);
    int has_metadata = take_u8(&in) & 1;
    size_t meta_count = take_below(&in, MAX_META + 1);
    uint64_t seed = take_u64(&in);

    /* The model's verdict, built alongside the input. */
    int expect_ok = 1;
    uint64_t total = 0;
    for (size_t i = 0; i < count; i++) {
        take_text(&in, &names[i]);
        uint8_t dt = take_u8(&in);
        stc_dtype dtype = (stc_dtype)(dt == 0xFF ? STC_DTYPE_COUNT : dt % STC_DTYPE_COUNT);
        size_t ndim = take_below(&in, MAX_NDIM + 1);
        for (size_t d = 0; d < ndim; d++) shapes[i][d] = take_dim(&in);
        specs[i] = (stc_tensor_spec){names[i].bytes, names[i].len, dtype, ndim,
                                     ndim ? shapes[i] : NULL};

        if ((unsigned)dtype >= STC_DTYPE_COUNT) {
            expect_ok = 0;
            continue;
        }
        if (same_bytes(names[i].bytes, names[i].len, "__metadata__", 12) ||
            !fuzz_utf8_valid((const uint8_t *)names[i].bytes, names[i].len))
            expect_ok = 0;
        for (size_t j = 0; j < i; j++)
            if (same_bytes(names[i].bytes, names[i].len, names[j].bytes, names[j].len))
                expect_ok = 0;
        uint64_t elements = 1, bits;
        int overflow = 0;
        for (size_t d = 0; d < ndim; d++)
            overflow |= __builtin_mul_overflow(elements, shapes[i][d], &elements);
        overflow |= __builtin_mul_overflow(elements, (uint64_t)stc_dtype_bits(dtype), &bits);
        if (overflow || bits % 8 != 0 || __builtin_add_overflow(total, bits / 8, &total))
            expect_ok = 0;
    }
    size_t used_meta = has_metadata ? meta_count : 0;
    for (size_t i = 0; i < meta_count; i++) {
        take_text(&in, &keys[i]);
        take_text(&in, &values[i]);
        meta[i] = (stc_string_pair){keys[i].bytes, keys[i].len, values[i].bytes, values[i].len};
        if (i >= used_meta) continue;
        if (!fuzz_utf8_valid((const uint8_t *)keys[i].bytes, keys[i].len) ||
            !fuzz_utf8_valid((const uint8_t *)values[i].bytes, values[i].len))
            expect_ok = 0;
        for (size_t j = 0; j < i; j++)
            if (same_bytes(keys[i].bytes, keys[i].len, keys[j].bytes, keys[j].len))
                expect_ok = 0;
    }

    stc_plan *plan = NULL;
    stc_error err;
    memset(&err, 0, sizeof err);
    stc_status st = stc_plan_create(specs, count, meta, meta_count, has_metadata, NULL, &plan,
                                    &err);
    if (st != STC_OK) {
        if (expect_ok) {
            fprintf(stderr, "plan failed unexpectedly: %s: %s\n", stc_status_name(st),
                    err.message);
            abort();
        }
        CHECK(plan == NULL && err.status == st);
        CHECK(st == STC_ERR_INVALID_ARGUMENT || st == STC_ERR_SIZE_OVERFLOW ||
              st == STC_ERR_MISALIGNED);
        return 0;
    }
    if (!expect_ok) {
        fprintf(stderr, "plan succeeded although the model rejects the input\n");
        abort();
    }

    /* The header: 8-byte length, JSON, space padding to a multiple of 8. */
    size_t header_len = 0;
    const uint8_t *header = stc_plan_header(plan, &header_len);
    CHECK(header_len >= 16 && header_len % 8 == 0);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | header[i];
    CHECK(n == header_len - 8);
    CHECK(header[8] == '{');
    size_t close = header_len;
    while (header[close - 1] == ' ') close--;
    CHECK(header[close - 1] == '}' && header_len - close < 8);
    uint64_t file_size = stc_plan_file_size(plan);
    CHECK(file_size == header_len + total);

    /* Plan order: dtype rank descending, then names ascending by bytes. */
    uint64_t sum = 0;
    for (size_t i = 0; i < count; i++) {
        size_t s = stc_plan_order(plan, i);
        CHECK(s < count);
        sum += stc_plan_nbytes(plan, s);
        if (i > 0) {
            const stc_tensor_spec *a = &specs[stc_plan_order(plan, i - 1)], *b = &specs[s];
            CHECK(a->dtype >= b->dtype);
            if (a->dtype == b->dtype) {
                size_t m = a->name_len < b->name_len ? a->name_len : b->name_len;
                int c = m ? memcmp(a->name, b->name, m) : 0;
                CHECK(c < 0 || (c == 0 && a->name_len < b->name_len));
            }
        }
    }
    CHECK(sum == total);
    if (file_size > MAX_IMAGE) {
        stc_plan_free(plan);
        return 0;
    }

    /* Assemble the image and read it back. */
    uint8_t *image = malloc((size_t)file_size);
    CHECK(image != NULL);
    memcpy(image, header, header_len);
    for (size_t i = (size_t)header_len; i < file_size; i++) image[i] = next_filler(&seed);

    stc_file *f = NULL;
    st = stc_open_memory(image, (size_t)file_size, NULL, &f, &err);
    if (st != STC_OK) {
        fprintf(stderr, "the reader rejects the writer's file: %s: %s (offset %llu)\n",
                stc_status_name(st), err.message, (unsigned long long)err.offset);
        abort();
    }
    CHECK(stc_tensor_count(f) == count);
    CHECK(stc_data_start(f) == header_len);
    const uint8_t *base = stc_data(f);
    uint64_t cursor = 0;
    for (size_t i = 0; i < count; i++) {
        size_t s = stc_plan_order(plan, i);
        const stc_tensor_spec *spec = &specs[s];
        const stc_tensor *t = stc_find_tensor(f, spec->name, spec->name_len);
        CHECK(t != NULL);
        /* The reader orders ties (zero-size tensors at one offset) by name,
         * the writer by dtype rank: only the offsets must agree. */
        CHECK(stc_tensor_by_offset_order(f, i)->begin == t->begin);
        CHECK(same_bytes(t->name, t->name_len, spec->name, spec->name_len));
        CHECK(t->dtype == spec->dtype);
        CHECK(t->ndim == spec->ndim);
        for (size_t d = 0; d < t->ndim; d++) CHECK(t->shape[d] == spec->shape[d]);
        CHECK(t->begin == cursor && t->nbytes == stc_plan_nbytes(plan, s));
        CHECK(t->nbytes == 0 ||
              memcmp(base + t->begin, image + header_len + cursor, (size_t)t->nbytes) == 0);
        cursor = t->end;
    }
    CHECK(cursor == total);

    CHECK(stc_has_metadata(f) == has_metadata);
    CHECK(stc_metadata_count(f) == used_meta);
    for (size_t i = 0; i < used_meta; i++) {
        const stc_string_pair *m = stc_metadata_at(f, i);
        if (i > 0) { /* written sorted by key */
            const stc_string_pair *p = stc_metadata_at(f, i - 1);
            size_t k = p->key_len < m->key_len ? p->key_len : m->key_len;
            int c = k ? memcmp(p->key, m->key, k) : 0;
            CHECK(c < 0 || (c == 0 && p->key_len < m->key_len));
        }
        int found = 0;
        for (size_t j = 0; j < used_meta; j++)
            if (same_bytes(m->key, m->key_len, meta[j].key, meta[j].key_len)) {
                CHECK(same_bytes(m->value, m->value_len, meta[j].value, meta[j].value_len));
                found = 1;
            }
        CHECK(found);
    }

    stc_close(f);
    free(image);
    stc_plan_free(plan);
    return 0;
}
