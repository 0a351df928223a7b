/*
 * fuzz_slice.c - libFuzzer target: stc_read_strided against a naive gather.
 *
 * The file is either the input's own prefix (when it opens) or one built
 * from the input with the writer (1-4 tensors of random dtypes and small
 * shapes, random data). A tensor is picked and a strided view made up:
 * usually inside that tensor, sometimes anywhere, sometimes with extreme
 * strides and offsets. An independent bounds model (128-bit arithmetic)
 * says whether the view lies inside the data section:
 *  - inside: stc_read_strided must succeed and equal a per-element gather;
 *  - outside: it must fail with STC_ERR_INVALID_ARGUMENT and leave dst alone.
 */
#include "stc.h"
#include "fuzz_common.h"

#define MAX_NDIM 6
#define MAX_OUT (1u << 16)

typedef unsigned __int128 u128;
typedef __int128 i128;

/* Builds a valid file image from the input with the writer; NULL if the
 * drawn table does not make a plan (the case is then skipped). */
static uint8_t *build_file(fuzz_input *in, size_t *size) {
    static char names[4][2];
    static uint64_t shapes[4][3];
    stc_tensor_spec specs[4];
    size_t count = 1 + take_below(in, 4);
    for (size_t i = 0; i < count; i++) {
        names[i][0] = (char)('a' + i);
        names[i][1] = '\0';
        size_t ndim = take_below(in, 4);
        for (size_t d = 0; d < ndim; d++) shapes[i][d] = take_below(in, 7);
        specs[i] = (stc_tensor_spec){names[i], 1, (stc_dtype)take_below(in, STC_DTYPE_COUNT),
                                     ndim, ndim ? shapes[i] : NULL};
    }
    stc_plan *plan = NULL;
    if (stc_plan_create(specs, count, NULL, 0, 0, NULL, &plan, NULL) != STC_OK) return NULL;
    size_t header_len;
    const uint8_t *header = stc_plan_header(plan, &header_len);
    size_t total = (size_t)stc_plan_file_size(plan);
    uint8_t *image = malloc(total);
    CHECK(image != NULL);
    memcpy(image, header, header_len);
    uint64_t seed = take_u64(in);
    for (size_t i = header_len; i < total; i++) image[i] = next_filler(&seed);
    stc_plan_free(plan);
    *size = total;
    return image;
}

static int64_t take_stride(fuzz_input *in, int64_t itemsize, int64_t span) {
    uint8_t sel = take_u8(in);
    switch (sel) {
    case 0xF0: return INT64_MIN;
    case 0xF1: return INT64_MAX;
    case 0xF2: return INT64_MIN + 1;
    case 0xF3: return (int64_t)1 << 62;
    case 0xF4: return -((int64_t)1 << 62);
    case 0xF5: return (int64_t)take_u64(in);
    default: break;
    }
    int64_t k = (int64_t)(sel % 9) - 4; /* -4..4 */
    if (sel & 0x80) return k * itemsize; /* element-aligned, the common case */
    return span ? (int64_t)(take_u8(in) % (2 * span + 1)) - span : k;
}

static uint64_t take_extent(fuzz_input *in) {
    uint8_t sel = take_u8(in);
    switch (sel) {
    case 0xF0: return UINT64_MAX;
    case 0xF1: return UINT64_C(1) << 63;
    case 0xF2: return (UINT64_C(1) << 32) + 1;
    default: return sel % 6;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_input in = {data, size, 0};
    uint8_t *image = NULL;
    size_t image_len = 0;
    stc_file *f = NULL;
    stc_error err;

    /* Mode 0: the first (2-byte length) bytes of the input are the file. */
    if (take_u8(&in) & 1) {
        size_t want = (size_t)take_u8(&in) | ((size_t)take_u8(&in) << 8);
        if (want > size - in.pos) want = size - in.pos;
        image = malloc(want ? want : 1);
        CHECK(image != NULL);
        if (want) memcpy(image, data + in.pos, want);
        in.pos += want;
        image_len = want;
        if (stc_open_memory(image, image_len, NULL, &f, NULL) != STC_OK) {
            free(image);
            image = NULL;
        }
    }
    if (!image) {
        image = build_file(&in, &image_len);
        if (!image) return 0;
        if (stc_open_memory(image, image_len, NULL, &f, &err) != STC_OK) {
            fprintf(stderr, "the writer's file does not open: %s\n", err.message);
            abort();
        }
    }
    const uint8_t *base = stc_data(f);
    uint64_t data_len = stc_file_size(f) - stc_data_start(f);

    /* The region the view is aimed at: a tensor, or the whole section. */
    uint64_t region_begin = 0, region_len = data_len;
    size_t count = stc_tensor_count(f);
    uint8_t aim = take_u8(&in);
    if (count && aim % 4 != 0) {
        const stc_tensor *t = stc_tensor_by_name_order(f, take_below(&in, 255) % count);
        region_begin = t->begin;
        region_len = t->nbytes;
    }

    static const size_t itemsizes[] = {1, 2, 4, 8, 3, 16};
    size_t itemsize = itemsizes[take_below(&in, 6)];
    size_t ndim = take_below(&in, MAX_NDIM + 1);
    uint64_t shape[MAX_NDIM];
    int64_t strides[MAX_NDIM];
    for (size_t d = 0; d < ndim; d++) {
        shape[d] = take_extent(&in);
        strides[d] = take_stride(&in, (int64_t)itemsize, (int64_t)region_len);
    }
    uint8_t osel = take_u8(&in);
    uint64_t offset;
    if (osel == 0xF0)
        offset = UINT64_MAX - take_u8(&in);
    else if (osel == 0xF1)
        offset = data_len + take_u8(&in) % 4;
    else
        offset = region_begin + (region_len ? take_u64(&in) % (region_len + 1) : 0);

    /* The model: element count and the range of bytes touched, exactly. */
    int empty = 0;
    u128 elements = 1;
    for (size_t d = 0; d < ndim; d++) {
        if (shape[d] == 0) empty = 1;
        if (elements <= MAX_OUT) elements *= shape[d];
    }
    int inside = 1;
    if (!empty) {
        i128 lo = (i128)offset, hi = (i128)offset + (i128)itemsize; /* [lo, hi) */
        for (size_t d = 0; d < ndim; d++) {
            /* (shape - 1) * |stride| < 2^127; clamp before summing. */
            u128 reach = (u128)(shape[d] - 1) *
                         (u128)(strides[d] < 0 ? -(i128)strides[d] : (i128)strides[d]);
            if (reach > ((u128)1 << 100)) reach = (u128)1 << 100;
            if (strides[d] < 0)
                lo -= (i128)reach;
            else
                hi += (i128)reach;
        }
        inside = lo >= 0 && hi <= (i128)data_len;
    }

    if (!empty && inside && elements * itemsize > MAX_OUT) {
        /* A legal view too large to gather here (zero strides). */
        stc_close(f);
        free(image);
        return 0;
    }
    size_t out_len = empty ? 0 : inside ? (size_t)(elements * itemsize) : 64;
    uint8_t *out = malloc(out_len + 1);
    CHECK(out != NULL);
    memset(out, 0xA5, out_len + 1);
    memset(&err, 0, sizeof err);
    stc_status st = stc_read_strided(f, offset, ndim, shape, strides, itemsize, out, &err);

    if (empty) {
        /* Nothing is touched; the contract does not say more. */
        CHECK(st == STC_OK || st == STC_ERR_INVALID_ARGUMENT);
    } else if (!inside) {
        if (st != STC_ERR_INVALID_ARGUMENT) {
            fprintf(stderr, "out-of-bounds view not rejected: status %s\n", stc_status_name(st));
            abort();
        }
        CHECK(err.status == STC_ERR_INVALID_ARGUMENT);
        for (size_t i = 0; i <= out_len; i++) CHECK(out[i] == 0xA5);
    } else {
        if (st != STC_OK) {
            fprintf(stderr, "in-bounds view refused: %s: %s\n", stc_status_name(st),
                    err.message);
            abort();
        }
        CHECK(out[out_len] == 0xA5);
        /* Naive gather, element by element, in C order. */
        uint64_t index[MAX_NDIM] = {0};
        size_t produced = 0;
        for (;;) {
            i128 at = (i128)offset;
            for (size_t d = 0; d < ndim; d++) at += (i128)index[d] * strides[d];
            CHECK(at >= 0 && at + (i128)itemsize <= (i128)data_len);
            if (memcmp(out + produced, base + (size_t)at, itemsize) != 0) {
                fprintf(stderr, "element %zu differs from the naive gather\n",
                        produced / itemsize);
                abort();
            }
            produced += itemsize;
            size_t d = ndim;
            while (d > 0 && ++index[d - 1] == shape[d - 1]) index[--d] = 0;
            if (d == 0) break;
        }
        CHECK(produced == out_len);
    }

    free(out);
    stc_close(f);
    free(image);
    return 0;
}
