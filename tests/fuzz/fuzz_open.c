/*
 * fuzz_open.c - libFuzzer target: stc_open_memory on arbitrary bytes.
 *
 * On success, walks every tensor in both orders, looks each name up,
 * reads every tensor's bytes with stc_read and touches them through
 * stc_data, and reads the metadata. The checks are the contract's: both
 * orders hold the same tensors, offsets tile the data section, lookups
 * find the tensor they were given. Any mismatch aborts.
 */
#include "stc.h"
#include "fuzz_common.h"

/* Sums bytes so that the compiler cannot drop the reads. */
static volatile uint8_t sink;

static void touch(const uint8_t *p, uint64_t n) {
    uint8_t acc = 0;
    for (uint64_t i = 0; i < n; i++) acc = (uint8_t)(acc ^ p[i]);
    sink = acc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* A private copy of exactly `size` bytes: ASan then catches any read past
     * the end of the image. */
    uint8_t *image = malloc(size ? size : 1);
    if (!image) return 0;
    if (size) memcpy(image, data, size);

    stc_file *f = NULL;
    stc_error err;
    memset(&err, 0, sizeof err);
    stc_status st = stc_open_memory(image, size, NULL, &f, &err);
    if (st != STC_OK) {
        CHECK(f == NULL);
        CHECK(err.status == st);
        CHECK(st > STC_OK && st < STC_STATUS_COUNT);
        CHECK(err.message != NULL);
        CHECK(err.tensor_len <= STC_ERROR_TENSOR_CAPACITY);
        CHECK(err.tensor[err.tensor_len] == '\0');
        CHECK(strcmp(stc_status_name(st), "STC_UNKNOWN") != 0);
        free(image);
        return 0;
    }
    CHECK(f != NULL);

    size_t n = stc_tensor_count(f);
    uint64_t file_size = stc_file_size(f), data_start = stc_data_start(f);
    CHECK(file_size == size);
    CHECK(data_start >= 8 && data_start <= file_size);
    uint64_t data_len = file_size - data_start;
    uint8_t *base = stc_data(f);
    CHECK(base == image + data_start);

    /* Name order: strictly increasing names, each found by lookup. */
    for (size_t i = 0; i < n; i++) {
        const stc_tensor *t = stc_tensor_by_name_order(f, i);
        CHECK(t != NULL);
        CHECK(t->name != NULL && t->name[t->name_len] == '\0');
        CHECK(stc_dtype_name(t->dtype) != NULL);
        CHECK(t->ndim == 0 ? t->shape == NULL : t->shape != NULL);
        CHECK(t->end >= t->begin && t->nbytes == t->end - t->begin);
        CHECK(t->end <= data_len);
        CHECK(stc_find_tensor(f, t->name, t->name_len) == t);
        if (i > 0) {
            const stc_tensor *p = stc_tensor_by_name_order(f, i - 1);
            size_t m = p->name_len < t->name_len ? p->name_len : t->name_len;
            int c = m ? memcmp(p->name, t->name, m) : 0;
            CHECK(c < 0 || (c == 0 && p->name_len < t->name_len));
        }
        /* Size from shape and dtype (no overflow: validated). */
        uint64_t elements = 1, bits;
        for (size_t d = 0; d < t->ndim; d++)
            CHECK(!__builtin_mul_overflow(elements, t->shape[d], &elements));
        CHECK(!__builtin_mul_overflow(elements, (uint64_t)stc_dtype_bits(t->dtype), &bits));
        CHECK(bits % 8 == 0 && bits / 8 == t->nbytes);

        uint8_t *buf = malloc(t->nbytes ? (size_t)t->nbytes : 1);
        CHECK(buf != NULL);
        CHECK(stc_read(f, t->begin, (size_t)t->nbytes, buf, &err) == STC_OK);
        CHECK(t->nbytes == 0 || memcmp(buf, base + t->begin, (size_t)t->nbytes) == 0);
        touch(base + t->begin, t->nbytes);
        free(buf);
        /* A lookup of the name plus one byte must not find this tensor. */
        char probe[8];
        size_t plen = t->name_len < sizeof probe - 1 ? t->name_len : sizeof probe - 1;
        memcpy(probe, t->name, plen);
        probe[plen] = '\x01';
        const stc_tensor *q = stc_find_tensor(f, probe, plen + 1);
        CHECK(q == NULL || (q->name_len == plen + 1 && memcmp(q->name, probe, plen + 1) == 0));
    }

    /* Offset order: the tensors tile [0, data_len) exactly. */
    uint64_t cursor = 0;
    for (size_t i = 0; i < n; i++) {
        const stc_tensor *t = stc_tensor_by_offset_order(f, i);
        CHECK(t->begin == cursor);
        cursor = t->end;
        CHECK(stc_find_tensor(f, t->name, t->name_len) == t);
    }
    CHECK(cursor == data_len);

    /* Reads past the end are refused, not performed. */
    uint8_t one;
    CHECK(stc_read(f, data_len, 1, &one, &err) == STC_ERR_INVALID_ARGUMENT);
    CHECK(stc_read(f, UINT64_MAX, 1, &one, &err) == STC_ERR_INVALID_ARGUMENT);
    CHECK(stc_read(f, data_len, 0, &one, &err) == STC_OK);

    /* Metadata. */
    size_t mc = stc_metadata_count(f);
    CHECK(mc == 0 || stc_has_metadata(f));
    for (size_t i = 0; i < mc; i++) {
        const stc_string_pair *m = stc_metadata_at(f, i);
        CHECK(m->key[m->key_len] == '\0' && m->value[m->value_len] == '\0');
        touch((const uint8_t *)m->key, m->key_len);
        touch((const uint8_t *)m->value, m->value_len);
    }
    CHECK(stc_check_unchanged(f, &err) == STC_OK);
    CHECK(stc_is_mapped(f) == 0);

    stc_close(f);
    free(image);
    return 0;
}
