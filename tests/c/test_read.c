/*
 * test_read.c - opening and validating files: valid images built in memory,
 * every rejection with its exact status and error location, and the same
 * through real files with both backends.
 */
#include "harness.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A tensor entry "t": U8 [4] at [0, 4]; needs 4 data bytes. */
#define T_U8_4 "\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}"

/* An entry for tensor NAME with the given fields text, e.g. ENTRY("t", ...). */
#define ENTRY(name, fields) "\"" name "\":{" fields "}"
#define U8_4_FIELDS "\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]"
/* Fields of an empty U8 tensor at [0, 0]. */
#define EMPTY_U8 "\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]"

/* MARK: - Helpers */

/* Opens json + data from memory. On success returns the file; the image,
 * which the file borrows, is returned in *img and must be freed after
 * stc_close. On failure reports the status and returns NULL. */
static stc_file *open_ok_at(const char *file, int line, const void *json,
                            size_t json_len, const void *data, size_t data_len,
                            image *img) {
    stc_error err;
    stc_file *f = NULL;
    *img = image_make(json, json_len, data, data_len);
    stc_status s = stc_open_memory(img->bytes, img->len, NULL, &f, &err);
    if (!check_status_at(file, line, s, STC_OK, &err, "stc_open_memory")) {
        image_free(img);
        return NULL;
    }
    return f;
}

#define OPEN_OK(json, data, data_len, img) \
    open_ok_at(__FILE__, __LINE__, (json), sizeof(json) - 1, (data), (data_len), (img))

/* Opens an image and expects failure with `want` (or `alt`, when alt is not
 * STC_OK). Checks the error is filled in, *out is untouched and a NULL
 * error pointer is accepted. Copies the error to *out_err if given. */
static void reject_image_at(const char *file, int line, const image *img,
                            const stc_open_options *options, stc_status want,
                            stc_status alt, stc_error *out_err) {
    stc_error err;
    error_poison(&err);
    stc_file *const sentinel = (stc_file *)(uintptr_t)0x1234;
    stc_file *f = sentinel;
    stc_status s = stc_open_memory(img->bytes, img->len, options, &f, &err);
    if (alt != STC_OK && s == alt) want = alt;
    check_status_at(file, line, s, want, &err, "stc_open_memory");
    if (s == STC_OK) {
        stc_close(f);
        return;
    }
    check_error_filled_at(file, line, &err, s);
    if (f != sentinel) check_failed(file, line, "*out left untouched on failure");
    g_checks++;
    stc_file *g = sentinel;
    stc_status s2 = stc_open_memory(img->bytes, img->len, options, &g, NULL);
    if (s2 != s) check_failed(file, line, "same status with a NULL stc_error");
    g_checks++;
    if (s2 == STC_OK) stc_close(g);
    if (out_err) *out_err = err;
}

static void reject_json_at(const char *file, int line, const void *json,
                           size_t json_len, size_t data_len, stc_status want,
                           stc_status alt, stc_error *out_err) {
    image img = image_make(json, json_len, NULL, data_len);
    reject_image_at(file, line, &img, NULL, want, alt, out_err);
    image_free(&img);
}

/* REJECT("json literal", data_len, STATUS): the header is the literal and
 * the data section data_len zero bytes. */
#define REJECT(json, data_len, want) \
    reject_json_at(__FILE__, __LINE__, (json), sizeof(json) - 1, (data_len), (want), STC_OK, NULL)
#define REJECT_EITHER(json, data_len, want, alt) \
    reject_json_at(__FILE__, __LINE__, (json), sizeof(json) - 1, (data_len), (want), (alt), NULL)
#define REJECT_SB(sb, data_len, want) \
    reject_json_at(__FILE__, __LINE__, (sb).data, (sb).len, (data_len), (want), STC_OK, NULL)

static int bytes_less(const char *a, size_t alen, const char *b, size_t blen) {
    size_t n = alen < blen ? alen : blen;
    int c = memcmp(a, b, n);
    return c < 0 || (c == 0 && alen < blen);
}

static int name_is(const stc_tensor *t, const char *name, size_t len) {
    return t != NULL && t->name_len == len && memcmp(t->name, name, len) == 0 &&
           t->name[len] == '\0';
}

/* header_offset is "where the entry's name starts": at its opening quote or
 * at its first byte. raw is the name as written in the JSON. */
static int header_offset_points_at(const image *img, const stc_tensor *t,
                                   const char *raw, size_t raw_len) {
    uint64_t ho = t->header_offset;
    if (ho == 0 || ho + raw_len + 1 > img->len) return 0;
    const uint8_t *p = img->bytes + ho;
    if (p[0] == '"' && memcmp(p + 1, raw, raw_len) == 0 && p[1 + raw_len] == '"')
        return 1;
    return p[-1] == '"' && memcmp(p, raw, raw_len) == 0 && p[raw_len] == '"';
}

static void check_error_near(const char *file, int line, const stc_error *err,
                             uint64_t expected, uint64_t before, uint64_t after) {
    g_checks++;
    if (err->offset == STC_NO_OFFSET || err->offset + before < expected ||
        err->offset > expected + after) {
        g_failures++;
        fprintf(stderr,
                "%s:%d: error offset %llu, expected near %llu (-%llu/+%llu)\n",
                file, line, (unsigned long long)err->offset,
                (unsigned long long)expected, (unsigned long long)before,
                (unsigned long long)after);
    }
}

/* MARK: - Valid files */

static void test_valid_zero_tensors(void) {
    image img;
    stc_file *f = OPEN_OK("{}      ", NULL, 0, &img);
    if (f) {
        CHECK(stc_tensor_count(f) == 0);
        CHECK(stc_has_metadata(f) == 0);
        CHECK(stc_metadata_count(f) == 0);
        CHECK(stc_file_size(f) == 16);
        CHECK(stc_data_start(f) == 16);
        CHECK(stc_find_tensor(f, "t", 1) == NULL);
        CHECK(stc_find_tensor(f, "", 0) == NULL);
        CHECK(stc_is_mapped(f) == 0);
        CHECK(stc_data(f) == img.bytes + 16);
        stc_error err;
        CHECK_OK(stc_check_unchanged(f, &err), &err);
        stc_close(f);
        image_free(&img);
    }
    /* N need not be a multiple of 8, and whitespace may sit inside. */
    f = OPEN_OK("{}", NULL, 0, &img);
    if (f) {
        CHECK(stc_tensor_count(f) == 0);
        CHECK(stc_data_start(f) == 10);
        stc_close(f);
        image_free(&img);
    }
    f = OPEN_OK("{ \n\t\r }", NULL, 0, &img);
    if (f) {
        CHECK(stc_tensor_count(f) == 0);
        stc_close(f);
        image_free(&img);
    }
    stc_close(NULL);
}

static void test_valid_one_tensor(void) {
    uint8_t data[24];
    fill_pattern(data, sizeof data, 1);
    image img;
    stc_file *f = OPEN_OK(
        "{\"t\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}",
        data, sizeof data, &img);
    if (f == NULL) return;
    CHECK(stc_tensor_count(f) == 1);
    CHECK(stc_has_metadata(f) == 0);
    CHECK(stc_file_size(f) == img.len);
    CHECK(stc_data_start(f) == img.len - 24);
    const stc_tensor *t = stc_tensor_by_name_order(f, 0);
    CHECK(t != NULL);
    if (t == NULL) goto done;
    CHECK(t == stc_tensor_by_offset_order(f, 0));
    CHECK(t == stc_find_tensor(f, "t", 1));
    CHECK(name_is(t, "t", 1));
    CHECK(t->dtype == STC_F32);
    CHECK(t->ndim == 2 && t->shape != NULL);
    if (t->ndim == 2 && t->shape) CHECK(t->shape[0] == 2 && t->shape[1] == 3);
    CHECK(t->begin == 0 && t->end == 24 && t->nbytes == 24);
    CHECK(header_offset_points_at(&img, t, "t", 1));
    CHECK(stc_data(f) != NULL && memcmp(stc_data(f) + t->begin, data, 24) == 0);

    uint8_t buf[24];
    stc_error err;
    CHECK_OK(stc_read(f, 0, 24, buf, &err), &err);
    CHECK(memcmp(buf, data, 24) == 0);
    memset(buf, 0, sizeof buf);
    CHECK_OK(stc_read(f, 5, 7, buf, &err), &err);
    CHECK(memcmp(buf, data + 5, 7) == 0);
    CHECK_OK(stc_read(f, 24, 0, buf, &err), &err);
    CHECK(stc_find_tensor(f, "T", 1) == NULL);
    CHECK(stc_find_tensor(f, "t\0", 2) == NULL);
    CHECK(stc_find_tensor(f, "", 0) == NULL);
done:
    stc_close(f);
    image_free(&img);
}

static void test_read_range_errors(void) {
    uint8_t data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    image img;
    stc_file *f = OPEN_OK(
        "{\"t\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}", data, 8,
        &img);
    if (f == NULL) return;
    uint8_t buf[16];
    const struct {
        uint64_t offset;
        size_t len;
    } bad[] = {{0, 9}, {1, 8}, {8, 1}, {9, 0}, {UINT64_MAX, 2}, {2, SIZE_MAX}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        stc_error err;
        error_poison(&err);
        memset(buf, 0xEE, sizeof buf);
        stc_status s = stc_read(f, bad[i].offset, bad[i].len, buf, &err);
        CHECK_STATUS(s, STC_ERR_INVALID_ARGUMENT, &err);
        if (s != STC_OK) CHECK_ERROR_FILLED(&err, s);
        CHECK(buf[0] == 0xEE && buf[15] == 0xEE); /* output untouched */
    }
    stc_close(f);
    image_free(&img);
}

static void test_valid_many_tensors(void) {
    enum { COUNT = 300 };
    static const stc_dtype dtypes[] = {STC_U8, STC_F16, STC_F32, STC_F64,
                                       STC_I32, STC_BF16, STC_C64};
    uint64_t rows[COUNT], nbytes[COUNT], begin[COUNT];
    stc_dtype dtype[COUNT];
    uint64_t cursor = 0;
    /* Data order: tensor (k * 11) % COUNT is the k-th in the data section. */
    for (size_t i = 0; i < COUNT; i++) {
        dtype[i] = dtypes[i % (sizeof dtypes / sizeof dtypes[0])];
        rows[i] = (i % 17 == 0) ? 0 : (uint64_t)(i % 5 + 1);
        nbytes[i] = rows[i] * 3 * stc_dtype_bits(dtype[i]) / 8;
    }
    for (size_t k = 0; k < COUNT; k++) {
        size_t i = (k * 11) % COUNT;
        begin[i] = cursor;
        cursor += nbytes[i];
    }
    uint8_t *data = malloc((size_t)cursor);
    if (data == NULL) exit(2);
    fill_pattern(data, (size_t)cursor, 7);

    strbuf sb = {0};
    sb_puts(&sb, "{");
    for (size_t k = 0; k < COUNT; k++) {
        size_t i = (k * 7) % COUNT; /* header order differs from both */
        sb_printf(&sb,
                  "%s\"t%03zu\":{\"dtype\":\"%s\",\"shape\":[%llu,3],"
                  "\"data_offsets\":[%llu,%llu]}",
                  k ? "," : "", i, stc_dtype_name(dtype[i]),
                  (unsigned long long)rows[i], (unsigned long long)begin[i],
                  (unsigned long long)(begin[i] + nbytes[i]));
    }
    sb_puts(&sb, "}");

    image img;
    stc_file *f = open_ok_at(__FILE__, __LINE__, sb.data, sb.len, data,
                             (size_t)cursor, &img);
    if (f == NULL) goto out;
    CHECK(stc_tensor_count(f) == COUNT);
    for (size_t i = 0; i < COUNT; i++) {
        const stc_tensor *t = stc_tensor_by_name_order(f, i);
        char name[16];
        snprintf(name, sizeof name, "t%03zu", i);
        CHECK(name_is(t, name, 4));
        CHECK(stc_find_tensor(f, name, 4) == t);
        if (t == NULL) continue;
        CHECK(t->dtype == dtype[i]);
        CHECK(t->ndim == 2 && t->shape[0] == rows[i] && t->shape[1] == 3);
        CHECK(t->begin == begin[i] && t->nbytes == nbytes[i]);
        CHECK(t->end == begin[i] + nbytes[i]);
        CHECK(memcmp(stc_data(f) + t->begin, data + begin[i], (size_t)nbytes[i]) == 0);
        CHECK(header_offset_points_at(&img, t, name, 4));
        uint8_t buf[256];
        stc_error err;
        CHECK_OK(stc_read(f, t->begin, (size_t)t->nbytes, buf, &err), &err);
        CHECK(memcmp(buf, data + begin[i], (size_t)nbytes[i]) == 0);
    }
    /* Data order: by begin, then end, then name; a permutation. */
    const stc_tensor *prev = NULL;
    for (size_t k = 0; k < COUNT; k++) {
        const stc_tensor *t = stc_tensor_by_offset_order(f, k);
        CHECK(t != NULL);
        if (t == NULL) break;
        CHECK(stc_find_tensor(f, t->name, t->name_len) == t);
        if (prev) {
            int ordered = prev->begin < t->begin ||
                          (prev->begin == t->begin && prev->end < t->end) ||
                          (prev->begin == t->begin && prev->end == t->end &&
                           bytes_less(prev->name, prev->name_len, t->name,
                                      t->name_len));
            CHECK(ordered);
        }
        prev = t;
    }
    CHECK(stc_find_tensor(f, "t300", 4) == NULL);
    CHECK(stc_find_tensor(f, "t00", 3) == NULL);
    CHECK(stc_find_tensor(f, "t0000", 5) == NULL);
    CHECK(stc_find_tensor(f, "s000", 4) == NULL);
    CHECK(stc_find_tensor(f, "u000", 4) == NULL);
    stc_close(f);
    image_free(&img);
out:
    sb_free(&sb);
    free(data);
}

static void test_valid_all_dtypes(void) {
    /* One tensor per dtype, shape [4], named after its code, in rank order. */
    strbuf sb = {0};
    uint64_t cursor = 0;
    sb_puts(&sb, "{");
    for (size_t d = 0; d < STC_DTYPE_COUNT; d++) {
        const char *code = stc_dtype_name((stc_dtype)d);
        if (code == NULL) {
            CHECK(code != NULL);
            sb_free(&sb);
            return;
        }
        uint64_t n = 4u * stc_dtype_bits((stc_dtype)d) / 8u;
        sb_printf(&sb, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[4],"
                       "\"data_offsets\":[%llu,%llu]}",
                  d ? "," : "", code, code, (unsigned long long)cursor,
                  (unsigned long long)(cursor + n));
        cursor += n;
    }
    sb_puts(&sb, "}");
    uint8_t data[512];
    fill_pattern(data, sizeof data, 3);
    CHECK(cursor <= sizeof data);
    image img;
    stc_file *f = open_ok_at(__FILE__, __LINE__, sb.data, sb.len, data,
                             (size_t)cursor, &img);
    sb_free(&sb);
    if (f == NULL) return;
    CHECK(stc_tensor_count(f) == STC_DTYPE_COUNT);
    uint64_t expect_begin = 0;
    for (size_t d = 0; d < STC_DTYPE_COUNT; d++) {
        const char *code = stc_dtype_name((stc_dtype)d);
        const stc_tensor *t = stc_find_tensor(f, code, strlen(code));
        CHECK(t != NULL);
        if (t == NULL) continue;
        CHECK(t->dtype == (stc_dtype)d);
        CHECK(t->nbytes == 4u * stc_dtype_bits((stc_dtype)d) / 8u);
        CHECK(t->begin == expect_begin);
        CHECK(stc_tensor_by_offset_order(f, d) == t);
        expect_begin += t->nbytes;
    }
    /* Spot checks of the packed sizes: F4 packs 2 per byte, F6 4 per 3. */
    const stc_tensor *t = stc_find_tensor(f, "F4", 2);
    CHECK(t && t->nbytes == 2);
    t = stc_find_tensor(f, "F6_E3M2", 7);
    CHECK(t && t->nbytes == 3);
    t = stc_find_tensor(f, "C64", 3);
    CHECK(t && t->nbytes == 32);
    stc_close(f);
    image_free(&img);
}

static void test_valid_packed_shapes(void) {
    image img;
    stc_file *f = OPEN_OK(
        "{\"a\":{\"dtype\":\"F4\",\"shape\":[2,3],\"data_offsets\":[0,3]},"
        "\"b\":{\"dtype\":\"F6_E2M3\",\"shape\":[2,2],\"data_offsets\":[3,6]},"
        "\"c\":{\"dtype\":\"F4\",\"shape\":[0,3],\"data_offsets\":[6,6]}}",
        NULL, 6, &img);
    if (f) {
        const stc_tensor *a = stc_find_tensor(f, "a", 1);
        CHECK(a && a->nbytes == 3 && a->dtype == STC_F4);
        const stc_tensor *b = stc_find_tensor(f, "b", 1);
        CHECK(b && b->nbytes == 3 && b->dtype == STC_F6_E2M3);
        stc_close(f);
        image_free(&img);
    }
}

static void test_valid_scalar(void) {
    uint8_t data[8] = {0, 0, 0, 0, 0, 0, 0xF0, 0x3F}; /* 1.0 */
    image img;
    stc_file *f = OPEN_OK(
        "{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]}}", data, 8,
        &img);
    if (f == NULL) return;
    const stc_tensor *t = stc_find_tensor(f, "s", 1);
    CHECK(t != NULL);
    if (t) {
        CHECK(t->ndim == 0);
        CHECK(t->shape == NULL);
        CHECK(t->nbytes == 8 && t->begin == 0 && t->end == 8);
        CHECK(memcmp(stc_data(f), data, 8) == 0);
    }
    stc_close(f);
    image_free(&img);
}

static void test_valid_zero_sized_share_offsets(void) {
    uint8_t data[4] = {9, 8, 7, 6};
    image img;
    /* z0 and a0 are empty at 0, "c" spans [0, 4), "d" is empty at 4. */
    stc_file *f = OPEN_OK(
        "{\"z0\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
        "\"c\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
        "\"a0\":{\"dtype\":\"F32\",\"shape\":[2,0],\"data_offsets\":[0,0]},"
        "\"d\":{\"dtype\":\"I8\",\"shape\":[0,5],\"data_offsets\":[4,4]}}",
        data, 4, &img);
    if (f == NULL) return;
    CHECK(stc_tensor_count(f) == 4);
    CHECK(name_is(stc_tensor_by_offset_order(f, 0), "a0", 2));
    CHECK(name_is(stc_tensor_by_offset_order(f, 1), "z0", 2));
    CHECK(name_is(stc_tensor_by_offset_order(f, 2), "c", 1));
    CHECK(name_is(stc_tensor_by_offset_order(f, 3), "d", 1));
    CHECK(name_is(stc_tensor_by_name_order(f, 0), "a0", 2));
    CHECK(name_is(stc_tensor_by_name_order(f, 1), "c", 1));
    CHECK(name_is(stc_tensor_by_name_order(f, 2), "d", 1));
    CHECK(name_is(stc_tensor_by_name_order(f, 3), "z0", 2));
    const stc_tensor *a0 = stc_find_tensor(f, "a0", 2);
    CHECK(a0 && a0->nbytes == 0 && a0->ndim == 2 && a0->shape[0] == 2 &&
          a0->shape[1] == 0);
    const stc_tensor *d = stc_find_tensor(f, "d", 1);
    CHECK(d && d->begin == 4 && d->end == 4 && d->nbytes == 0);
    stc_close(f);
    image_free(&img);
}

static void test_valid_metadata(void) {
    image img;
    stc_file *f = OPEN_OK("{\"__metadata__\":{\"format\":\"pt\",\"k2\":\"v\\u00e9\\n\","
                          "\"\":\"\"}," T_U8_4 "}",
                          NULL, 4, &img);
    if (f) {
        CHECK(stc_has_metadata(f) == 1);
        CHECK(stc_tensor_count(f) == 1);
        CHECK(stc_find_tensor(f, "__metadata__", 12) == NULL);
        CHECK(stc_metadata_count(f) == 3);
        if (stc_metadata_count(f) == 3) {
            const stc_string_pair *p = stc_metadata_at(f, 0);
            CHECK(p->key_len == 6 && memcmp(p->key, "format", 6) == 0);
            CHECK(p->value_len == 2 && memcmp(p->value, "pt", 2) == 0);
            p = stc_metadata_at(f, 1);
            CHECK(p->key_len == 2 && memcmp(p->key, "k2", 2) == 0);
            CHECK(p->value_len == 4 && memcmp(p->value, "v\xc3\xa9\n", 4) == 0);
            p = stc_metadata_at(f, 2);
            CHECK(p->key_len == 0 && p->value_len == 0);
        }
        stc_close(f);
        image_free(&img);
    }
    /* null: no metadata. */
    f = OPEN_OK("{\"__metadata__\":null," T_U8_4 "}", NULL, 4, &img);
    if (f) {
        CHECK(stc_has_metadata(f) == 0);
        CHECK(stc_metadata_count(f) == 0);
        CHECK(stc_tensor_count(f) == 1);
        stc_close(f);
        image_free(&img);
    }
    /* absent */
    f = OPEN_OK("{" T_U8_4 "}", NULL, 4, &img);
    if (f) {
        CHECK(stc_has_metadata(f) == 0);
        CHECK(stc_metadata_count(f) == 0);
        stc_close(f);
        image_free(&img);
    }
    /* empty object: present, zero pairs. */
    f = OPEN_OK("{\"__metadata__\":{}}", NULL, 0, &img);
    if (f) {
        CHECK(stc_has_metadata(f) == 1);
        CHECK(stc_metadata_count(f) == 0);
        CHECK(stc_tensor_count(f) == 0);
        stc_close(f);
        image_free(&img);
    }
    /* after the tensors, and spelled with an escape */
    f = OPEN_OK("{" T_U8_4 ",\"__metadata\\u005f_\":{\"a\":\"b\"}}", NULL, 4, &img);
    if (f) {
        CHECK(stc_has_metadata(f) == 1);
        CHECK(stc_metadata_count(f) == 1);
        CHECK(stc_tensor_count(f) == 1);
        stc_close(f);
        image_free(&img);
    }
}

static void test_valid_escaped_names(void) {
    image img;
    stc_file *f = OPEN_OK(
        "{" ENTRY("a\\\"b", EMPTY_U8) ","
        ENTRY("c\\\\d", EMPTY_U8) ","
        ENTRY("e\\nf", EMPTY_U8) ","
        ENTRY("\\u00e9", EMPTY_U8) ","
        ENTRY("\\ud83d\\ude00", EMPTY_U8) ","
        ENTRY("x\\/y\\t\\b\\f\\r", EMPTY_U8) ","
        ENTRY("n\\u0000ul", EMPTY_U8) ","
        ENTRY("\\u00C9\\u20AC", EMPTY_U8) ","
        ENTRY("raw \xc3\xbc \xe2\x82\xac \xf0\x9f\x98\x81", EMPTY_U8)
        "}",
        NULL, 0, &img);
    if (f == NULL) return;
    CHECK(stc_tensor_count(f) == 9);
    static const struct {
        const char *name;
        size_t len;
    } names[] = {
        {"a\"b", 3},
        {"c\\d", 3},
        {"e\nf", 3},
        {"\xc3\xa9", 2},
        {"\xf0\x9f\x98\x80", 4},
        {"x/y\t\b\f\r", 7},
        {"n\0ul", 4},
        {"\xc3\x89\xe2\x82\xac", 5},
        {"raw \xc3\xbc \xe2\x82\xac \xf0\x9f\x98\x81", 15},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const stc_tensor *t = stc_find_tensor(f, names[i].name, names[i].len);
        if (t == NULL) fprintf(stderr, "    escaped name #%zu not found\n", i);
        CHECK(name_is(t, names[i].name, names[i].len));
    }
    CHECK(stc_find_tensor(f, "n", 1) == NULL); /* NUL does not end the name */
    stc_close(f);
    image_free(&img);
}

static void test_valid_name_order_is_bytewise(void) {
    image img;
    stc_file *f = OPEN_OK(
        "{" ENTRY("b", EMPTY_U8) ","
        ENTRY("\xc3\xa9", EMPTY_U8) ","
        ENTRY("ab", EMPTY_U8) ","
        ENTRY("a\\u0000b", EMPTY_U8) ","
        ENTRY("z", EMPTY_U8) ","
        ENTRY("a", EMPTY_U8) ","
        ENTRY("\x7f", EMPTY_U8) ","
        ENTRY("\\ud83d\\ude00", EMPTY_U8) ","
        ENTRY("\xef\xbf\xbd", EMPTY_U8) ","
        ENTRY("", EMPTY_U8) ","
        ENTRY("B", EMPTY_U8) "}",
        NULL, 0, &img);
    if (f == NULL) return;
    static const struct {
        const char *name;
        size_t len;
    } order[] = {
        {"", 0},           {"B", 1},          {"a", 1},
        {"a\0b", 3},       {"ab", 2},         {"b", 1},
        {"z", 1},          {"\x7f", 1},       {"\xc3\xa9", 2},
        {"\xef\xbf\xbd", 3}, {"\xf0\x9f\x98\x80", 4},
    };
    size_t n = sizeof order / sizeof order[0];
    CHECK(stc_tensor_count(f) == n);
    for (size_t i = 0; i < n && i < stc_tensor_count(f); i++) {
        const stc_tensor *t = stc_tensor_by_name_order(f, i);
        if (!name_is(t, order[i].name, order[i].len))
            fprintf(stderr, "    name order position %zu is wrong\n", i);
        CHECK(name_is(t, order[i].name, order[i].len));
        CHECK(stc_find_tensor(f, order[i].name, order[i].len) == t);
        /* Data order ties (all at [0,0]) break by name as well. */
        CHECK(stc_tensor_by_offset_order(f, i) == t);
    }
    CHECK(stc_find_tensor(f, "a\0", 2) == NULL);
    CHECK(stc_find_tensor(f, "aa", 2) == NULL);
    CHECK(stc_find_tensor(f, "\xc3", 1) == NULL);
    stc_close(f);
    image_free(&img);
}

static void test_valid_whitespace_around_object(void) {
    image img;
    stc_file *f = OPEN_OK(" \t\r\n{ \"t\" :\n{ \"dtype\" : \"U8\" , \"shape\" : [ 4 ] ,"
                          " \"data_offsets\" : [ 0 , 4 ] } }\r\n\t   ",
                          NULL, 4, &img);
    if (f) {
        const stc_tensor *t = stc_find_tensor(f, "t", 1);
        CHECK(t && t->nbytes == 4 && t->shape[0] == 4);
        stc_close(f);
        image_free(&img);
    }
}

static void test_valid_unknown_fields_ignored(void) {
    image img;
    stc_file *f = OPEN_OK(
        "{\"t\":{\"extra\":{\"a\":[1,-2,3.5e-7,{\"b\":null}],\"c\":true,\"d\":false},"
        "\"dtype\":\"U8\",\"note\":\"\\u00e9\\n\",\"shape\":[4],\"z\":-1.5E+3,"
        "\"data_offsets\":[0,4],\"e\":[],\"f\":{},\"g\":0,\"h\":-0.0,"
        "\"i\":123456789012345678901234567890}}",
        NULL, 4, &img);
    if (f) {
        CHECK(stc_tensor_count(f) == 1);
        const stc_tensor *t = stc_find_tensor(f, "t", 1);
        CHECK(t && t->dtype == STC_U8 && t->nbytes == 4);
        stc_close(f);
        image_free(&img);
    }
    /* Field order inside an entry does not matter. */
    f = OPEN_OK("{\"t\":{\"data_offsets\":[0,4],\"shape\":[2,2],\"dtype\":\"I8\"}}",
                NULL, 4, &img);
    if (f) {
        const stc_tensor *t = stc_find_tensor(f, "t", 1);
        CHECK(t && t->dtype == STC_I8 && t->ndim == 2);
        stc_close(f);
        image_free(&img);
    }
}

static void test_valid_max_u64_values(void) {
    /* 2^64 - 1 parses as a number; the file then fails on sizes, not on
     * number syntax. */
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[18446744073709551615],"
           "\"data_offsets\":[0,0]}}",
           0, STC_ERR_SIZE_OVERFLOW);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],"
           "\"data_offsets\":[0,18446744073709551615]}}",
           4, STC_ERR_SIZE_MISMATCH);
}

static void test_valid_custom_header_cap(void) {
    static const char json[] = "{" T_U8_4 "}";
    image img = image_make(json, sizeof json - 1, NULL, 4);
    stc_open_options opt = {.backend = STC_BACKEND_MMAP, .max_header_size = sizeof json - 1};
    stc_file *f = NULL;
    stc_error err;
    CHECK_OK(stc_open_memory(img.bytes, img.len, &opt, &f, &err), &err);
    stc_close(f);
    opt.max_header_size = 0; /* default */
    f = NULL;
    CHECK_OK(stc_open_memory(img.bytes, img.len, &opt, &f, &err), &err);
    stc_close(f);
    opt.backend = STC_BACKEND_PREAD; /* ignored for memory images */
    f = NULL;
    CHECK_OK(stc_open_memory(img.bytes, img.len, &opt, &f, &err), &err);
    if (f) CHECK(stc_data(f) == img.bytes + 8 + sizeof json - 1);
    stc_close(f);
    opt.max_header_size = sizeof json - 2;
    reject_image_at(__FILE__, __LINE__, &img, &opt, STC_ERR_HEADER_TOO_LARGE,
                    STC_OK, NULL);
    image_free(&img);
}

static void test_valid_memory_writable_flag(void) {
    static const char json[] = "{" T_U8_4 "}";
    image img = image_make(json, sizeof json - 1, "abcd", 4);
    stc_file *f = NULL;
    stc_error err;
    /* Borrowed bytes are read-only unless the caller allows writes. */
    if (CHECK_OK(stc_open_memory(img.bytes, img.len, NULL, &f, &err), &err)) {
        CHECK(stc_data_writable(f) == 0);
        stc_close(f);
    }
    stc_open_options opt = {.writable_image = 1};
    f = NULL;
    if (CHECK_OK(stc_open_memory(img.bytes, img.len, &opt, &f, &err), &err)) {
        CHECK(stc_data_writable(f) == 1);
        CHECK(stc_data(f) == img.bytes + 8 + sizeof json - 1);
        stc_data(f)[1] = 'X';
        CHECK(img.bytes[8 + sizeof json - 1 + 1] == 'X'); /* the caller's bytes */
        stc_close(f);
    }
    image_free(&img);
}

void run_read_valid_tests(void) {
    test_valid_zero_tensors();
    test_valid_one_tensor();
    test_read_range_errors();
    test_valid_many_tensors();
    test_valid_all_dtypes();
    test_valid_packed_shapes();
    test_valid_scalar();
    test_valid_zero_sized_share_offsets();
    test_valid_metadata();
    test_valid_escaped_names();
    test_valid_name_order_is_bytewise();
    test_valid_whitespace_around_object();
    test_valid_unknown_fields_ignored();
    test_valid_max_u64_values();
    test_valid_custom_header_cap();
    test_valid_memory_writable_flag();
}

/* MARK: - Rejections: length prefix */

static void test_reject_too_small(void) {
    uint8_t zeros[8] = {0};
    for (size_t n = 1; n < 8; n++) {
        image img = image_raw(zeros, n);
        reject_image_at(__FILE__, __LINE__, &img, NULL, STC_ERR_HEADER_TOO_SMALL,
                        STC_OK, NULL);
        image_free(&img);
    }
    /* A tiny JSON text may also be recognised as another format. */
    image img = image_raw("{}", 2);
    reject_image_at(__FILE__, __LINE__, &img, NULL, STC_ERR_HEADER_TOO_SMALL,
                    STC_ERR_NOT_SAFETENSORS, NULL);
    image_free(&img);
    img = image_raw("", 0);
    reject_image_at(__FILE__, __LINE__, &img, NULL, STC_ERR_HEADER_TOO_SMALL,
                    STC_ERR_NOT_SAFETENSORS, NULL);
    image_free(&img);
}

static void test_reject_too_large(void) {
    static const char json[] = "{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data";
    const uint64_t ns[] = {STC_DEFAULT_MAX_HEADER_SIZE + 1ull, 1ull << 40,
                           UINT64_MAX};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        image img = image_make_n(ns[i], json, sizeof json - 1);
        reject_image_at(__FILE__, __LINE__, &img, NULL, STC_ERR_HEADER_TOO_LARGE,
                        STC_OK, NULL);
        image_free(&img);
    }
    /* Exactly the cap is allowed; then the file is simply too short. */
    image img = image_make_n(STC_DEFAULT_MAX_HEADER_SIZE, json, sizeof json - 1);
    reject_image_at(__FILE__, __LINE__, &img, NULL, STC_ERR_HEADER_LENGTH, STC_OK,
                    NULL);
    image_free(&img);
    /* A custom cap. */
    static const char small[] = "{}      ";
    img = image_make(small, 8, NULL, 0);
    stc_open_options opt = {.backend = STC_BACKEND_MMAP, .max_header_size = 7};
    reject_image_at(__FILE__, __LINE__, &img, &opt, STC_ERR_HEADER_TOO_LARGE,
                    STC_OK, NULL);
    opt.max_header_size = 8;
    stc_file *f = NULL;
    stc_error err;
    CHECK_OK(stc_open_memory(img.bytes, img.len, &opt, &f, &err), &err);
    stc_close(f);
    image_free(&img);
}

static void test_reject_header_length(void) {
    static const char json[] = "{}      ";
    image img = image_make_n(9, json, 8);
    reject_image_at(__FILE__, __LINE__, &img, NULL, STC_ERR_HEADER_LENGTH, STC_OK,
                    NULL);
    image_free(&img);
    img = image_make_n(2, "{", 1);
    reject_image_at(__FILE__, __LINE__, &img, NULL, STC_ERR_HEADER_LENGTH, STC_OK,
                    NULL);
    image_free(&img);
    img = image_make_n(1000, json, 8);
    reject_image_at(__FILE__, __LINE__, &img, NULL, STC_ERR_HEADER_LENGTH, STC_OK,
                    NULL);
    image_free(&img);
    img = image_make_n(1, NULL, 0);
    reject_image_at(__FILE__, __LINE__, &img, NULL, STC_ERR_HEADER_LENGTH, STC_OK,
                    NULL);
    image_free(&img);
}

/* MARK: - Rejections: UTF-8 and JSON syntax */

static void test_reject_invalid_utf8_in_strings(void) {
    /* In a tensor name: a stray byte, a lone continuation, an overlong
     * encoding, a UTF-16 surrogate, a code point above U+10FFFF, a truncated
     * sequence. */
    REJECT("{" ENTRY("t\xff", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_UTF8);
    REJECT("{" ENTRY("t\x80", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_UTF8);
    REJECT("{" ENTRY("\xc0\xaf", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_UTF8);
    REJECT("{" ENTRY("\xe0\x80\xaf", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_UTF8);
    REJECT("{" ENTRY("\xed\xa0\x80", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_UTF8);
    REJECT("{" ENTRY("\xf4\x90\x80\x80", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_UTF8);
    REJECT("{" ENTRY("\xf8\x88\x80\x80\x80", U8_4_FIELDS) "}", 4,
           STC_ERR_INVALID_UTF8);
    REJECT("{" ENTRY("t\xc3", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_UTF8);
    REJECT("{" ENTRY("t\xe2\x82", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_UTF8);
    /* In a dtype, a metadata key and value, an unknown field. */
    REJECT("{\"t\":{\"dtype\":\"U8\xff\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_UTF8);
    REJECT("{\"__metadata__\":{\"k\xfe\":\"v\"}," T_U8_4 "}", 4, STC_ERR_INVALID_UTF8);
    REJECT("{\"__metadata__\":{\"k\":\"v\xc3(\"}," T_U8_4 "}", 4,
           STC_ERR_INVALID_UTF8);
    REJECT("{\"t\":{\"x\":\"\xed\xbf\xbf\",\"dtype\":\"U8\",\"shape\":[4],"
           "\"data_offsets\":[0,4]}}",
           4, STC_ERR_INVALID_UTF8);
}

static void test_reject_invalid_utf8_outside_strings(void) {
    REJECT_EITHER("{" T_U8_4 "}\xff", 4, STC_ERR_INVALID_UTF8, STC_ERR_INVALID_JSON);
    REJECT_EITHER("{\xff" T_U8_4 "}", 4, STC_ERR_INVALID_UTF8, STC_ERR_INVALID_JSON);
    /* Valid UTF-8 outside strings is still bad JSON; a BOM is not whitespace. */
    REJECT("{\xc3\xa9" T_U8_4 "}", 4, STC_ERR_INVALID_JSON);
    REJECT("\xef\xbb\xbf{" T_U8_4 "}", 4, STC_ERR_INVALID_JSON);
    REJECT_EITHER("{" T_U8_4 "}  \x80", 4, STC_ERR_INVALID_UTF8,
                  STC_ERR_INVALID_JSON);
}

static void test_reject_json_syntax(void) {
    /* trailing commas */
    REJECT("{" T_U8_4 ",}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4,],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4],}}", 4,
           STC_ERR_INVALID_JSON);
    /* comments */
    REJECT("/* c */{" T_U8_4 "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" T_U8_4 "} // c", 4, STC_ERR_INVALID_JSON);
    REJECT("{" T_U8_4 "}#", 4, STC_ERR_INVALID_JSON);
    /* single quotes, unquoted keys */
    REJECT("{'t':{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"dtype\":'U8',\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_JSON);
    REJECT("{t:{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_JSON);
    /* non-JSON numbers and literals, in an unknown field */
    REJECT("{\"t\":{\"x\":NaN," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":Infinity," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":-Infinity," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":+1," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":.5," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":1.," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":1e," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":1e+," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":-," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":0x10," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":-01," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":00," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":True," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":nul," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":nulll," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"x\":undefined," U8_4_FIELDS "}}", 4, STC_ERR_INVALID_JSON);
    /* leading zeros in the fields that matter */
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[04],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[00,4]}}", 4,
           STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,01]}}", 1,
           STC_ERR_INVALID_JSON);
    /* raw control characters inside strings */
    REJECT("{" ENTRY("a\tb", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("a\nb", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("a\x01" "b", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("a\x1f" "b", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("a\0b", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{\"__metadata__\":{\"k\":\"v\rw\"}," T_U8_4 "}", 4, STC_ERR_INVALID_JSON);
    /* surrogates */
    REJECT("{" ENTRY("\\ud800", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("\\udc00", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("\\ud83dx", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("\\ud83d\\u0041", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("\\ud83d\\ud83d", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("\\ude00\\ud83d", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    /* bad escapes */
    REJECT("{" ENTRY("\\x41", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("\\'", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("\\u12", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("\\uZZZZ", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("\\U00e9", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" ENTRY("\\0", U8_4_FIELDS) "}", 4, STC_ERR_INVALID_JSON);
    /* structure */
    REJECT("{" T_U8_4 "} x", 4, STC_ERR_INVALID_JSON);
    REJECT("{" T_U8_4 "}{}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" T_U8_4 "}}", 4, STC_ERR_INVALID_JSON);
    REJECT("{" T_U8_4 "}\0", 4, STC_ERR_INVALID_JSON);
    REJECT("{" T_U8_4, 4, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}", 4,
           STC_ERR_INVALID_JSON);
    REJECT("{\"t\" {\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"dtype\":\"U8\" \"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4 4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_JSON);
    REJECT("{\"t\":{\"dtype\":\"U8,\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_JSON);
    REJECT("{,}", 0, STC_ERR_INVALID_JSON);
    REJECT("{\"t\"}", 0, STC_ERR_INVALID_JSON);
    REJECT("{\"t\":}", 0, STC_ERR_INVALID_JSON);
    REJECT("        ", 0, STC_ERR_INVALID_JSON);
    REJECT("", 0, STC_ERR_INVALID_JSON);
    REJECT("{\x0b}", 0, STC_ERR_INVALID_JSON); /* vertical tab is not whitespace */
    REJECT("{\x0c}", 0, STC_ERR_INVALID_JSON); /* nor is form feed */
    /* the top-level value must be an object */
    REJECT_EITHER("[]", 0, STC_ERR_INVALID_JSON, STC_ERR_INVALID_HEADER);
    REJECT_EITHER("[{" T_U8_4 "}]", 4, STC_ERR_INVALID_JSON, STC_ERR_INVALID_HEADER);
}

static void test_reject_error_offsets(void) {
    static const struct {
        const char *json;
        size_t json_len;
        const char *marker; /* the bad byte(s) */
        size_t marker_len;
        stc_status status;
        uint64_t before, after; /* allowed distance from the marker */
    } cases[] = {
#define CASE(json, marker, status, before, after) \
    {json, sizeof(json) - 1, marker, sizeof(marker) - 1, status, before, after}
        CASE("{\"t\":{\"dtype\":\"U8\",\"shape\":[4,],\"data_offsets\":[0,4]}}",
             ",]", STC_ERR_INVALID_JSON, 1, 1),
        CASE("{" ENTRY("ab\x01" "c", U8_4_FIELDS) "}", "\x01", STC_ERR_INVALID_JSON,
             1, 1),
        CASE("{" ENTRY("ab\\xc", U8_4_FIELDS) "}", "\\x", STC_ERR_INVALID_JSON, 1, 2),
        CASE("{" ENTRY("ab\\ud800", U8_4_FIELDS) "}", "\\ud800",
             STC_ERR_INVALID_JSON, 1, 7),
        CASE("{" T_U8_4 "}   garbage", "garbage", STC_ERR_INVALID_JSON, 3, 1),
        CASE("{" ENTRY("ab\xff" "c", U8_4_FIELDS) "}", "\xff", STC_ERR_INVALID_UTF8,
             1, 1),
        CASE("{\"t\":{\"dtype\":\"U8\",\"shape\":[01],\"data_offsets\":[0,1]}}", "01",
             STC_ERR_INVALID_JSON, 1, 2),
        CASE("{\"t\":{\"x\":NaN," U8_4_FIELDS "}}", "NaN", STC_ERR_INVALID_JSON, 1, 3),
        CASE("{\"t\":{\"x\":[1,2,]," U8_4_FIELDS "}}", ",]", STC_ERR_INVALID_JSON, 1,
             1),
#undef CASE
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        stc_error err;
        error_poison(&err);
        reject_json_at(__FILE__, __LINE__, cases[i].json, cases[i].json_len, 4,
                       cases[i].status, STC_OK, &err);
        size_t pos = find_bytes(cases[i].json, cases[i].json_len, cases[i].marker,
                                cases[i].marker_len);
        CHECK(pos != SIZE_MAX);
        if (err.status != cases[i].status) continue;
        if (cases[i].marker_len == 2 && memcmp(cases[i].marker, ",]", 2) == 0) pos++;
        check_error_near(__FILE__, __LINE__, &err, 8 + (uint64_t)pos,
                         cases[i].before, cases[i].after);
    }
}

/* MARK: - Rejections: nesting */

/* A tensor entry with an unknown field nested `levels` containers deep; the
 * whole header then nests levels + 2 deep. */
static void build_nested(strbuf *sb, size_t levels, int objects) {
    sb_puts(sb, "{\"t\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0],\"x\":");
    for (size_t i = 0; i < levels; i++) sb_puts(sb, objects ? "{\"k\":" : "[");
    sb_puts(sb, "1");
    for (size_t i = 0; i < levels; i++) sb_puts(sb, objects ? "}" : "]");
    sb_puts(sb, "}}");
}

static void test_reject_nesting(void) {
    for (int objects = 0; objects <= 1; objects++) {
        strbuf sb = {0};
        build_nested(&sb, STC_MAX_NESTING_DEPTH - 2, objects);
        image img;
        stc_file *f = open_ok_at(__FILE__, __LINE__, sb.data, sb.len, NULL, 0, &img);
        if (f) {
            CHECK(stc_tensor_count(f) == 1);
            stc_close(f);
            image_free(&img);
        }
        sb_free(&sb);
        build_nested(&sb, STC_MAX_NESTING_DEPTH - 1, objects);
        REJECT_SB(sb, 0, STC_ERR_NESTING_TOO_DEEP);
        sb_free(&sb);
    }
    /* Very deep: must fail cleanly, not overflow the stack. */
    strbuf sb = {0};
    build_nested(&sb, 200000, 0);
    REJECT_SB(sb, 0, STC_ERR_NESTING_TOO_DEEP);
    sb_free(&sb);
    /* Unterminated deep nesting still reports depth or bad JSON. */
    sb_puts(&sb, "{\"t\":{\"x\":");
    sb_repeat(&sb, '[', 5000);
    reject_json_at(__FILE__, __LINE__, sb.data, sb.len, 0, STC_ERR_NESTING_TOO_DEEP,
                   STC_ERR_INVALID_JSON, NULL);
    sb_free(&sb);
}

/* MARK: - Rejections: duplicate keys */

static void test_reject_duplicates(void) {
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
           8, STC_ERR_DUPLICATE_KEY);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"\\u0074\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
           8, STC_ERR_DUPLICATE_KEY);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[4],"
           "\"data_offsets\":[0,4]}}",
           4, STC_ERR_DUPLICATE_KEY);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"shape\":[4],"
           "\"data_offsets\":[0,4]}}",
           4, STC_ERR_DUPLICATE_KEY);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4],"
           "\"data_offsets\":[0,4]}}",
           4, STC_ERR_DUPLICATE_KEY);
    REJECT("{\"__metadata__\":{},\"__metadata__\":{}," T_U8_4 "}", 4,
           STC_ERR_DUPLICATE_KEY);
    REJECT("{\"__metadata__\":null," T_U8_4 ",\"__metadata__\":{\"a\":\"b\"}}", 4,
           STC_ERR_DUPLICATE_KEY);
    REJECT("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}," T_U8_4 "}", 4,
           STC_ERR_DUPLICATE_KEY);
    REJECT("{\"__metadata__\":{\"k\":\"a\",\"\\u006b\":\"a\"}," T_U8_4 "}", 4,
           STC_ERR_DUPLICATE_KEY);
    REJECT("{\"t\":{\"x\":1,\"x\":2," U8_4_FIELDS "}}", 4, STC_ERR_DUPLICATE_KEY);
    REJECT("{\"t\":{\"x\":{\"q\":1,\"q\":2}," U8_4_FIELDS "}}", 4,
           STC_ERR_DUPLICATE_KEY);
    REJECT("{\"t\":{\"x\":[{\"a\":1},{\"b\":1,\"b\":null}]," U8_4_FIELDS "}}", 4,
           STC_ERR_DUPLICATE_KEY);
    /* Different keys that share a prefix are not duplicates. */
    image img;
    stc_file *f = OPEN_OK("{\"__metadata__\":{\"k\":\"a\",\"k2\":\"b\",\"k\\u0000\":"
                          "\"c\"},\"t\":{\"x\":1,\"xx\":2," U8_4_FIELDS "}}",
                          NULL, 4, &img);
    if (f) {
        CHECK(stc_metadata_count(f) == 3);
        stc_close(f);
        image_free(&img);
    }
}

/* MARK: - Rejections: schema */

static void test_reject_schema(void) {
    /* missing fields */
    REJECT("{\"t\":{\"shape\":[4],\"data_offsets\":[0,4]}}", 4, STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4]}}", 4, STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{}}", 0, STC_ERR_INVALID_HEADER);
    /* dtype */
    REJECT("{\"t\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"u8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8 \",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\\u0000\",\"shape\":[4],\"data_offsets\":[0,4]}}",
           4, STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":8,\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":null,\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":[\"U8\"],\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    /* shape */
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":4,\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":null,\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[\"4\"],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[[4]],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[true],\"data_offsets\":[0,1]}}", 1,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[-4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4.0],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4e0],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[18446744073709551616],"
           "\"data_offsets\":[0,4]}}",
           4, STC_ERR_INVALID_HEADER);
    /* data_offsets */
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[]}}", 0,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0]}}", 0,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":{\"0\":4}}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":null}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[-1,3]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4.0]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0.0,4]}}", 4,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[100],\"data_offsets\":[0,1e2]}}", 100,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[100],\"data_offsets\":[0,1E2]}}", 100,
           STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],"
           "\"data_offsets\":[0,18446744073709551616]}}",
           4, STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],"
           "\"data_offsets\":[0,99999999999999999999999999]}}",
           4, STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[\"0\",\"4\"]}}",
           4, STC_ERR_INVALID_HEADER);
    /* metadata */
    REJECT("{\"__metadata__\":{\"k\":1}," T_U8_4 "}", 4, STC_ERR_INVALID_HEADER);
    REJECT("{\"__metadata__\":{\"k\":null}," T_U8_4 "}", 4, STC_ERR_INVALID_HEADER);
    REJECT("{\"__metadata__\":{\"k\":{}}," T_U8_4 "}", 4, STC_ERR_INVALID_HEADER);
    REJECT("{\"__metadata__\":{\"k\":[\"v\"]}," T_U8_4 "}", 4, STC_ERR_INVALID_HEADER);
    REJECT("{\"__metadata__\":{\"k\":true}," T_U8_4 "}", 4, STC_ERR_INVALID_HEADER);
    REJECT("{\"__metadata__\":\"x\"," T_U8_4 "}", 4, STC_ERR_INVALID_HEADER);
    REJECT("{\"__metadata__\":[]," T_U8_4 "}", 4, STC_ERR_INVALID_HEADER);
    REJECT("{\"__metadata__\":1," T_U8_4 "}", 4, STC_ERR_INVALID_HEADER);
    /* a tensor entry must be an object */
    REJECT("{\"t\":[\"U8\",[4],[0,4]]}", 4, STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":null}", 0, STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":\"x\"}", 0, STC_ERR_INVALID_HEADER);
    REJECT("{\"t\":4}", 0, STC_ERR_INVALID_HEADER);
    /* top-level values other than an object: valid JSON, not a header */
    REJECT_EITHER("\"x\"", 0, STC_ERR_INVALID_HEADER, STC_ERR_INVALID_JSON);
    REJECT_EITHER("12345678", 0, STC_ERR_INVALID_HEADER, STC_ERR_INVALID_JSON);
    REJECT_EITHER("null    ", 0, STC_ERR_INVALID_HEADER, STC_ERR_INVALID_JSON);
    REJECT_EITHER("true    ", 0, STC_ERR_INVALID_HEADER, STC_ERR_INVALID_JSON);
}

/* MARK: - Rejections: layout and sizes */

static void test_reject_offsets(void) {
    /* a hole at the start */
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}", 8,
           STC_ERR_INVALID_OFFSETS);
    /* a hole between tensors */
    REJECT("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[6,10]}}",
           10, STC_ERR_INVALID_OFFSETS);
    /* overlap */
    REJECT("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
           6, STC_ERR_INVALID_OFFSETS);
    /* the same range twice */
    REJECT("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
           4, STC_ERR_INVALID_OFFSETS);
    /* an empty tensor inside another one */
    REJECT("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]}}",
           4, STC_ERR_INVALID_OFFSETS);
    /* begin > end */
    REJECT("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,0]}}",
           4, STC_ERR_INVALID_OFFSETS);
    REJECT("{\"b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
           STC_ERR_INVALID_OFFSETS);
}

static void test_reject_sizes(void) {
    /* element count overflows */
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
           "\"data_offsets\":[0,0]}}",
           0, STC_ERR_SIZE_OVERFLOW);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[2,3,4294967296,4294967296],"
           "\"data_offsets\":[0,0]}}",
           0, STC_ERR_SIZE_OVERFLOW);
    /* bit count overflows: 2^61 elements of 64 bits */
    REJECT("{\"t\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],"
           "\"data_offsets\":[0,0]}}",
           0, STC_ERR_SIZE_OVERFLOW);
    /* 2^62 F4 values = 2^64 bits */
    REJECT("{\"t\":{\"dtype\":\"F4\",\"shape\":[4611686018427387904],"
           "\"data_offsets\":[0,0]}}",
           0, STC_ERR_SIZE_OVERFLOW);
    /* bit counts that are not whole bytes */
    REJECT("{\"t\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2,
           STC_ERR_MISALIGNED);
    REJECT("{\"t\":{\"dtype\":\"F4\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
           STC_ERR_MISALIGNED);
    REJECT("{\"t\":{\"dtype\":\"F4\",\"shape\":[],\"data_offsets\":[0,1]}}", 1,
           STC_ERR_MISALIGNED);
    REJECT("{\"t\":{\"dtype\":\"F6_E2M3\",\"shape\":[3],\"data_offsets\":[0,3]}}", 3,
           STC_ERR_MISALIGNED);
    REJECT("{\"t\":{\"dtype\":\"F6_E3M2\",\"shape\":[5,1],\"data_offsets\":[0,4]}}",
           4, STC_ERR_MISALIGNED);
    /* end - begin differs from the size */
    REJECT("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_SIZE_MISMATCH);
    REJECT("{\"t\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_SIZE_MISMATCH);
    REJECT("{\"t\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,8]}}", 8,
           STC_ERR_SIZE_MISMATCH);
    REJECT("{\"t\":{\"dtype\":\"I32\",\"shape\":[0],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_SIZE_MISMATCH);
    REJECT("{\"t\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
           STC_ERR_SIZE_MISMATCH);
    /* the data section is too short / too long */
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}", 4,
           STC_ERR_TRUNCATED_DATA);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}", 0,
           STC_ERR_TRUNCATED_DATA);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[1099511627776],"
           "\"data_offsets\":[0,1099511627776]}}",
           16, STC_ERR_TRUNCATED_DATA);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}", 9,
           STC_ERR_TRAILING_DATA);
    REJECT("{}      ", 1, STC_ERR_TRAILING_DATA);
    REJECT("{\"t\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 3,
           STC_ERR_TRAILING_DATA);
}

/* MARK: - Rejections: error details */

static void check_tensor_named(const char *file, int line, const void *json,
                               size_t json_len, size_t data_len, stc_status want,
                               const char *name, size_t name_len) {
    stc_error err;
    error_poison(&err);
    reject_json_at(file, line, json, json_len, data_len, want, STC_OK, &err);
    if (err.status != want) return;
    int ok = err.tensor_len == name_len && memcmp(err.tensor, name, name_len) == 0 &&
             err.tensor[name_len] == '\0' && err.tensor_truncated == 0;
    g_checks++;
    if (!ok) {
        g_failures++;
        fprintf(stderr, "%s:%d: stc_error.tensor is '%.*s' (len %zu), expected '%.*s'\n",
                file, line, (int)(err.tensor_len <= STC_ERROR_TENSOR_CAPACITY
                                      ? err.tensor_len : 0),
                err.tensor, err.tensor_len, (int)name_len, name);
    }
}

#define CHECK_TENSOR_NAMED(json, data_len, want, name) \
    check_tensor_named(__FILE__, __LINE__, (json), sizeof(json) - 1, (data_len), \
                       (want), (name), sizeof(name) - 1)

static void test_reject_error_names_tensor(void) {
    CHECK_TENSOR_NAMED("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                       "\"weight\":{\"dtype\":\"F32\",\"shape\":[2],"
                       "\"data_offsets\":[4,8]}}",
                       8, STC_ERR_SIZE_MISMATCH, "weight");
    CHECK_TENSOR_NAMED("{\"w\\u00e9\":{\"dtype\":\"F32\",\"shape\":[2],"
                       "\"data_offsets\":[0,4]}}",
                       4, STC_ERR_SIZE_MISMATCH, "w\xc3\xa9");
    CHECK_TENSOR_NAMED("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                       "\"packed\":{\"dtype\":\"F4\",\"shape\":[3],"
                       "\"data_offsets\":[4,6]}}",
                       6, STC_ERR_MISALIGNED, "packed");
    CHECK_TENSOR_NAMED("{\"huge\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
                       "\"data_offsets\":[0,0]}}",
                       0, STC_ERR_SIZE_OVERFLOW, "huge");
    CHECK_TENSOR_NAMED("{\"bad\":{\"dtype\":\"f32\",\"shape\":[1],"
                       "\"data_offsets\":[0,4]}}",
                       4, STC_ERR_INVALID_HEADER, "bad");
    CHECK_TENSOR_NAMED("{\"nodtype\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                       STC_ERR_INVALID_HEADER, "nodtype");
    CHECK_TENSOR_NAMED("{\"gap\":{\"dtype\":\"U8\",\"shape\":[4],"
                       "\"data_offsets\":[4,8]}}",
                       8, STC_ERR_INVALID_OFFSETS, "gap");

    /* A long name is cut to the capacity and flagged. */
    strbuf sb = {0};
    sb_puts(&sb, "{\"");
    sb_repeat(&sb, 'n', 200);
    sb_puts(&sb, "\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}");
    stc_error err;
    error_poison(&err);
    reject_json_at(__FILE__, __LINE__, sb.data, sb.len, 4, STC_ERR_SIZE_MISMATCH,
                   STC_OK, &err);
    if (err.status == STC_ERR_SIZE_MISMATCH) {
        CHECK(err.tensor_len == STC_ERROR_TENSOR_CAPACITY);
        CHECK(err.tensor_truncated == 1);
        CHECK(err.tensor[STC_ERROR_TENSOR_CAPACITY] == '\0');
        CHECK(err.tensor[0] == 'n' && err.tensor[STC_ERROR_TENSOR_CAPACITY - 1] == 'n');
    }
    sb_free(&sb);

    /* Errors about no tensor leave the name empty and may lack an offset. */
    error_poison(&err);
    image img = image_raw("\0\0\0", 3);
    reject_image_at(__FILE__, __LINE__, &img, NULL, STC_ERR_HEADER_TOO_SMALL, STC_OK,
                    &err);
    CHECK(err.tensor_len == 0 && err.tensor[0] == '\0' && err.tensor_truncated == 0);
    image_free(&img);
}

/* MARK: - Rejections: other formats */

typedef struct foreign_case {
    const char *what;
    const char *bytes;
    size_t len;
    const char *hint1, *hint2; /* the message names the format */
} foreign_case;

#define FOREIGN(what, bytes, h1, h2) {what, bytes, sizeof(bytes) - 1, h1, h2}

static const foreign_case k_foreign[] = {
    FOREIGN("pickle protocol 4",
            "\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01"
            "a\x94K\x01s.",
            "pickle", "torch"),
    FOREIGN("pickle protocol 2", "\x80\x02}q\x00X\x01\x00\x00\x00" "aq\x01K\x01s.",
            "pickle", "torch"),
    FOREIGN("legacy torch.save",
            "\x80\x02\x8a\nl\xfc\x9c" "F\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.",
            "pickle", "torch"),
    FOREIGN("zip",
            "PK\x03\x04\x14\x00\x00\x00\x08\x00\x00\x00!\x00\x00\x00\x00\x00"
            "\x00\x00\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00" "archive/data.pkl",
            "zip", "torch"),
    FOREIGN("git lfs pointer",
            "version https://git-lfs.github.com/spec/v1\n"
            "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
            "size 12345\n",
            "lfs", "git-lfs"),
    FOREIGN("html doctype",
            "<!DOCTYPE html>\n<html lang=\"en\"><head><title>404</title></head>"
            "<body>Not Found</body></html>\n",
            "html", "html"),
    FOREIGN("html", "<html><head></head><body>Sign in</body></html>", "html", "html"),
};

static int contains_ci(const char *haystack, const char *needle) {
    size_t n = strlen(needle);
    for (const char *p = haystack; *p; p++) {
        size_t i = 0;
        while (i < n && p[i] &&
               (p[i] | 0x20) == (needle[i] | 0x20))
            i++;
        if (i == n) return 1;
    }
    return 0;
}

static void check_foreign_error(const char *file, int line, const foreign_case *c,
                                const stc_error *err) {
    if (err->status != STC_ERR_NOT_SAFETENSORS || err->message == NULL) return;
    g_checks++;
    if (!contains_ci(err->message, c->hint1) && !contains_ci(err->message, c->hint2)) {
        g_failures++;
        fprintf(stderr, "%s:%d: %s: message '%s' does not name the format\n", file,
                line, c->what, err->message);
    }
}

static void test_reject_other_formats(void) {
    for (size_t i = 0; i < sizeof k_foreign / sizeof k_foreign[0]; i++) {
        image img = image_raw(k_foreign[i].bytes, k_foreign[i].len);
        stc_error err;
        error_poison(&err);
        reject_image_at(__FILE__, __LINE__, &img, NULL, STC_ERR_NOT_SAFETENSORS,
                        STC_OK, &err);
        if (err.status != STC_ERR_NOT_SAFETENSORS)
            fprintf(stderr, "    (case: %s)\n", k_foreign[i].what);
        check_foreign_error(__FILE__, __LINE__, &k_foreign[i], &err);
        image_free(&img);
    }
}

void run_read_reject_tests(void) {
    test_reject_too_small();
    test_reject_too_large();
    test_reject_header_length();
    test_reject_invalid_utf8_in_strings();
    test_reject_invalid_utf8_outside_strings();
    test_reject_json_syntax();
    test_reject_error_offsets();
    test_reject_nesting();
    test_reject_duplicates();
    test_reject_schema();
    test_reject_offsets();
    test_reject_sizes();
    test_reject_error_names_tensor();
    test_reject_other_formats();
}

/* MARK: - Real files */

static const stc_backend k_backends[2] = {STC_BACKEND_MMAP, STC_BACKEND_PREAD};

static void test_file_open_both_backends(void) {
    char dir[512], path[768];
    scratch_subdir("read_files", dir, sizeof dir);
    path_join(path, sizeof path, dir, "model.safetensors");
    static const char json[] =
        "{\"__metadata__\":{\"format\":\"np\"},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
        "\"a\":{\"dtype\":\"I64\",\"shape\":[3],\"data_offsets\":[16,40]}}  ";
    uint8_t data[40];
    fill_pattern(data, sizeof data, 11);
    image img = image_make(json, sizeof json - 1, data, sizeof data);
    CHECK(write_whole_file(path, img.bytes, img.len) == 0);

    for (size_t b = 0; b < 3; b++) {
        stc_open_options opt = {.backend = b < 2 ? k_backends[b] : STC_BACKEND_MMAP};
        stc_file *f = NULL;
        stc_error err;
        if (!CHECK_OK(stc_open(path, b < 2 ? &opt : NULL, &f, &err), &err)) continue;
        int mapped = b != 1;
        CHECK(stc_tensor_count(f) == 2);
        CHECK(stc_file_size(f) == img.len);
        CHECK(stc_data_start(f) == 8 + sizeof json - 1);
        CHECK(stc_has_metadata(f) == 1 && stc_metadata_count(f) == 1);
        CHECK(stc_is_mapped(f) == mapped);
        CHECK((stc_data(f) != NULL) == mapped);
        CHECK(name_is(stc_tensor_by_name_order(f, 0), "a", 1));
        CHECK(name_is(stc_tensor_by_offset_order(f, 0), "b", 1));
        const stc_tensor *a = stc_find_tensor(f, "a", 1);
        CHECK(a && a->dtype == STC_I64 && a->begin == 16 && a->nbytes == 24);
        CHECK(a && header_offset_points_at(&img, a, "a", 1));
        uint8_t buf[40];
        CHECK_OK(stc_read(f, 0, 40, buf, &err), &err);
        CHECK(memcmp(buf, data, 40) == 0);
        CHECK_OK(stc_read(f, 17, 3, buf, &err), &err);
        CHECK(memcmp(buf, data + 17, 3) == 0);
        CHECK_STATUS(stc_read(f, 38, 3, buf, &err), STC_ERR_INVALID_ARGUMENT, &err);
        CHECK_OK(stc_check_unchanged(f, &err), &err);
        if (mapped) {
            CHECK(memcmp(stc_data(f), data, 40) == 0);
            if (stc_data_writable(f)) {
                /* Private pages: the file never sees the write. */
                stc_data(f)[0] ^= 0xFF;
                uint8_t *disk = NULL;
                size_t disk_len = 0;
                CHECK(read_whole_file(path, &disk, &disk_len) == 0);
                CHECK(disk_len == img.len && memcmp(disk, img.bytes, img.len) == 0);
                free(disk);
            }
        }
        stc_close(f);
    }
    image_free(&img);
    dir_remove_tree(dir);
}

static void test_file_rejections_both_backends(void) {
    char dir[512], path[768];
    scratch_subdir("read_rejects", dir, sizeof dir);
    path_join(path, sizeof path, dir, "bad.safetensors");
    static const struct {
        const char *bytes;
        size_t len;
        stc_status want, alt;
    } cases[] = {
#define RAW(b, want, alt) {b, sizeof(b) - 1, want, alt}
        RAW("", STC_ERR_HEADER_TOO_SMALL, STC_ERR_NOT_SAFETENSORS),
        RAW("\x02\0\0\0\0\0\0", STC_ERR_HEADER_TOO_SMALL, STC_OK),
        RAW("\x09\0\0\0\0\0\0\0{}      ", STC_ERR_HEADER_LENGTH, STC_OK),
        RAW("\x03\0\0\0\0\0\0\0{,}", STC_ERR_INVALID_JSON, STC_OK),
        RAW("\x02\0\0\0\0\0\0\0{}\0", STC_ERR_TRAILING_DATA, STC_OK),
        RAW("\x01\xe1\xf5\x05\0\0\0\0{}", STC_ERR_HEADER_TOO_LARGE, STC_OK),
        RAW("\x35\0\0\0\0\0\0\0{\"t\":{\"dtype\":\"U8\",\"shape\":[8],"
            "\"data_offsets\":[0,8]}}\0\0\0",
            STC_ERR_TRUNCATED_DATA, STC_OK),
        RAW("\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01"
            "a\x94K\x01s.",
            STC_ERR_NOT_SAFETENSORS, STC_OK),
        RAW("PK\x03\x04\x14\x00\x00\x00\x08\x00\x00\x00!\x00\x00\x00",
            STC_ERR_NOT_SAFETENSORS, STC_OK),
        RAW("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n",
            STC_ERR_NOT_SAFETENSORS, STC_OK),
#undef RAW
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(write_whole_file(path, cases[i].bytes, cases[i].len) == 0);
        for (size_t b = 0; b < 2; b++) {
            stc_open_options opt = {.backend = k_backends[b]};
            stc_file *const sentinel = (stc_file *)(uintptr_t)0x5678;
            stc_file *f = sentinel;
            stc_error err;
            error_poison(&err);
            stc_status s = stc_open(path, &opt, &f, &err);
            stc_status want = cases[i].want;
            if (cases[i].alt != STC_OK && s == cases[i].alt) want = cases[i].alt;
            if (!CHECK_STATUS(s, want, &err))
                fprintf(stderr, "    (file case %zu, backend %zu)\n", i, b);
            if (s == STC_OK) {
                stc_close(f);
                continue;
            }
            CHECK_ERROR_FILLED(&err, s);
            CHECK(f == sentinel);
        }
    }
    dir_remove_tree(dir);
}

static void test_file_io_errors(void) {
    char dir[512], path[768];
    scratch_subdir("read_io", dir, sizeof dir);
    path_join(path, sizeof path, dir, "missing.safetensors");
    for (size_t b = 0; b < 2; b++) {
        stc_open_options opt = {.backend = k_backends[b]};
        stc_file *const sentinel = (stc_file *)(uintptr_t)0x9abc;
        stc_file *f = sentinel;
        stc_error err;
        error_poison(&err);
        stc_status s = stc_open(path, &opt, &f, &err);
        CHECK_STATUS(s, STC_ERR_IO, &err);
        if (s == STC_ERR_IO) {
            CHECK_ERROR_FILLED(&err, s);
            CHECK(err.sys_errno == ENOENT);
        }
        CHECK(f == sentinel);
        /* A directory cannot be opened as a file. */
        error_poison(&err);
        s = stc_open(dir, &opt, &f, &err);
        CHECK_STATUS(s, STC_ERR_IO, &err);
        if (s == STC_ERR_IO) CHECK(err.sys_errno != 0);
        if (s == STC_OK) stc_close(f);
    }
    dir_remove_tree(dir);
}

static void test_file_shrinks_after_open(void) {
    char dir[512], path[768];
    scratch_subdir("read_shrink", dir, sizeof dir);
    path_join(path, sizeof path, dir, "shrink.safetensors");
    static const char json[] =
        "{\"t\":{\"dtype\":\"U8\",\"shape\":[8192],\"data_offsets\":[0,8192]}}";
    uint8_t data[8192];
    fill_pattern(data, sizeof data, 5);
    image img = image_make(json, sizeof json - 1, data, sizeof data);
    for (size_t b = 0; b < 2; b++) {
        CHECK(write_whole_file(path, img.bytes, img.len) == 0);
        stc_open_options opt = {.backend = k_backends[b]};
        stc_file *f = NULL;
        stc_error err;
        if (!CHECK_OK(stc_open(path, &opt, &f, &err), &err)) continue;
        /* Growing endangers no mapped page, but it is a change in place:
         * the mapped backend reports it (the pread backend reads on). */
        FILE *fp = fopen(path, "ab");
        CHECK(fp != NULL);
        if (fp) {
            fputs("more", fp);
            fclose(fp);
        }
        if (k_backends[b] == STC_BACKEND_MMAP) {
            error_poison(&err);
            CHECK_STATUS(stc_check_unchanged(f, &err), STC_ERR_FILE_CHANGED, &err);
            CHECK(strstr(err.message, "modified on disk") != NULL);
        } else {
            CHECK_OK(stc_check_unchanged(f, &err), &err);
        }
        CHECK(truncate(path, 100) == 0);
        if (k_backends[b] == STC_BACKEND_MMAP) {
            error_poison(&err);
            CHECK_STATUS(stc_check_unchanged(f, &err), STC_ERR_FILE_CHANGED, &err);
            CHECK(strstr(err.message, "truncated on disk") != NULL);
        } else {
            CHECK_OK(stc_check_unchanged(f, &err), &err);
            uint8_t buf[16];
            error_poison(&err);
            CHECK_STATUS(stc_read(f, 8000, 16, buf, &err), STC_ERR_FILE_CHANGED, &err);
            CHECK_OK(stc_read(f, 0, 16, buf, &err), &err); /* still there */
            CHECK(memcmp(buf, data, 16) == 0);
        }
        stc_close(f);
    }
    image_free(&img);
    dir_remove_tree(dir);
}

static void test_file_large_header(void) {
    /* A header much larger than any read buffer, through both backends. */
    char dir[512], path[768];
    scratch_subdir("read_large", dir, sizeof dir);
    path_join(path, sizeof path, dir, "large.safetensors");
    strbuf sb = {0};
    sb_puts(&sb, "{\"__metadata__\":{");
    for (size_t i = 0; i < 3000; i++)
        sb_printf(&sb, "%s\"key%04zu\":\"%0100zu\"", i ? "," : "", i, i);
    sb_puts(&sb, "}," T_U8_4 "}");
    image img = image_make(sb.data, sb.len, "abcd", 4);
    CHECK(write_whole_file(path, img.bytes, img.len) == 0);
    for (size_t b = 0; b < 2; b++) {
        stc_open_options opt = {.backend = k_backends[b]};
        stc_file *f = NULL;
        stc_error err;
        if (!CHECK_OK(stc_open(path, &opt, &f, &err), &err)) continue;
        CHECK(stc_metadata_count(f) == 3000);
        if (stc_metadata_count(f) == 3000) {
            const stc_string_pair *p = stc_metadata_at(f, 2999);
            CHECK(p->key_len == 7 && memcmp(p->key, "key2999", 7) == 0);
            CHECK(p->value_len == 100 && p->value[99] == '9');
        }
        uint8_t buf[4];
        CHECK_OK(stc_read(f, 0, 4, buf, &err), &err);
        CHECK(memcmp(buf, "abcd", 4) == 0);
        stc_close(f);
    }
    sb_free(&sb);
    image_free(&img);
    dir_remove_tree(dir);
}

void run_file_tests(void) {
    test_file_open_both_backends();
    test_file_rejections_both_backends();
    test_file_io_errors();
    test_file_shrinks_after_open();
    test_file_large_header();
}
