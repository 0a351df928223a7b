/*
 * test_write.c - the writer: plans whose header bytes are compared with
 * hand-written expectations, rejected specs, and atomic output files.
 */
#include "harness.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* MARK: - Helpers */

#define SPEC(name, dtype, ndim, shape) {name, sizeof(name) - 1, dtype, ndim, shape}
#define PAIR(k, v) {k, sizeof(k) - 1, v, sizeof(v) - 1}

static stc_plan *plan_ok_at(const char *file, int line, const stc_tensor_spec *specs,
                            size_t count, const stc_string_pair *md, size_t md_count,
                            int has_md) {
    stc_plan *plan = NULL;
    stc_error err;
    stc_status s = stc_plan_create(specs, count, md, md_count, has_md, NULL, &plan, &err);
    if (!check_status_at(file, line, s, STC_OK, &err, "stc_plan_create")) return NULL;
    return plan;
}

#define PLAN_OK(specs, count, md, md_count, has_md) \
    plan_ok_at(__FILE__, __LINE__, (specs), (count), (md), (md_count), (has_md))

static void print_bytes(const char *label, const uint8_t *bytes, size_t len) {
    fprintf(stderr, "    %s (%zu bytes): ", label, len);
    for (size_t i = 0; i < len; i++) {
        uint8_t c = bytes[i];
        if (c >= 0x20 && c < 0x7f) fputc(c, stderr);
        else fprintf(stderr, "\\x%02x", c);
    }
    fputc('\n', stderr);
}

static void expect_header_bytes_at(const char *file, int line, const stc_plan *plan,
                                   const uint8_t *want, size_t want_len) {
    size_t len = 0;
    const uint8_t *got = stc_plan_header(plan, &len);
    g_checks++;
    if (got == NULL || len != want_len || memcmp(got, want, len) != 0) {
        g_failures++;
        fprintf(stderr, "%s:%d: plan header differs\n", file, line);
        print_bytes("got", got ? got : (const uint8_t *)"", got ? len : 0);
        print_bytes("want", want, want_len);
    }
}

/* The header for json: N little-endian, json, spaces to a multiple of 8. */
static void expected_header(strbuf *out, const char *json, size_t json_len) {
    size_t padded = (json_len + 7) / 8 * 8;
    uint8_t prefix[8];
    put_u64_le(prefix, padded);
    sb_append(out, prefix, 8);
    sb_append(out, json, json_len);
    sb_repeat(out, ' ', padded - json_len);
}

static void expect_json_at(const char *file, int line, const stc_plan *plan,
                           const char *json, size_t json_len) {
    strbuf want = {0};
    expected_header(&want, json, json_len);
    expect_header_bytes_at(file, line, plan, (const uint8_t *)want.data, want.len);
    sb_free(&want);
}

#define EXPECT_JSON(plan, json) \
    expect_json_at(__FILE__, __LINE__, (plan), (json), sizeof(json) - 1)

static void reject_plan_at(const char *file, int line, const stc_tensor_spec *specs,
                           size_t count, const stc_string_pair *md, size_t md_count,
                           int has_md, stc_status want) {
    stc_plan *const sentinel = (stc_plan *)(uintptr_t)0x4321;
    stc_plan *plan = sentinel;
    stc_error err;
    error_poison(&err);
    stc_status s = stc_plan_create(specs, count, md, md_count, has_md, NULL, &plan, &err);
    check_status_at(file, line, s, want, &err, "stc_plan_create");
    if (s == STC_OK) {
        stc_plan_free(plan);
        return;
    }
    check_error_filled_at(file, line, &err, s);
    if (plan != sentinel) check_failed(file, line, "*out left untouched on failure");
    g_checks++;
    s = stc_plan_create(specs, count, md, md_count, has_md, NULL, &plan, NULL);
    if (s != want) check_failed(file, line, "same status with a NULL stc_error");
    g_checks++;
    if (s == STC_OK) stc_plan_free(plan);
}

#define REJECT_PLAN(specs, md, md_count, want)                                  \
    reject_plan_at(__FILE__, __LINE__, (specs), sizeof(specs) / sizeof((specs)[0]), \
                   (md), (md_count), (md_count) > 0, (want))

static int tensor_matches(const stc_tensor *t, const stc_tensor_spec *s) {
    if (t == NULL || t->name_len != s->name_len ||
        memcmp(t->name, s->name, s->name_len) != 0 || t->dtype != s->dtype ||
        t->ndim != s->ndim)
        return 0;
    for (size_t d = 0; d < s->ndim; d++)
        if (t->shape[d] != s->shape[d]) return 0;
    return 1;
}

/* MARK: - Plan: exact header bytes */

static void test_plan_empty(void) {
    static const uint8_t want[] = "\x08\0\0\0\0\0\0\0{}      ";
    stc_plan *plan = PLAN_OK(NULL, 0, NULL, 0, 0);
    if (plan == NULL) return;
    expect_header_bytes_at(__FILE__, __LINE__, plan, want, sizeof want - 1);
    CHECK(stc_plan_file_size(plan) == 16);
    stc_plan_free(plan);
    stc_plan_free(NULL);
}

static void test_plan_one_i32(void) {
    static const uint8_t want[] =
        "\x40\0\0\0\0\0\0\0"
        "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}    ";
    static const uint64_t shape[] = {2, 2};
    const stc_tensor_spec specs[] = {SPEC("test", STC_I32, 2, shape)};
    stc_plan *plan = PLAN_OK(specs, 1, NULL, 0, 0);
    if (plan == NULL) return;
    CHECK(sizeof want - 1 == 72);
    expect_header_bytes_at(__FILE__, __LINE__, plan, want, sizeof want - 1);
    CHECK(stc_plan_file_size(plan) == 88);
    CHECK(stc_plan_order(plan, 0) == 0);
    CHECK(stc_plan_nbytes(plan, 0) == 16);
    stc_plan_free(plan);
}

static void test_plan_order_by_rank_then_name(void) {
    static const uint64_t one[] = {1}, two[] = {2}, three[] = {3}, sq[] = {2, 2},
                          e[] = {0, 3};
    const stc_tensor_spec specs[] = {
        SPEC("b", STC_U8, 1, one),        /* 0 */
        SPEC("a", STC_F32, 1, one),       /* 1 */
        SPEC("c", STC_F32, 1, two),       /* 2 */
        SPEC("a2", STC_U64, 1, one),      /* 3 */
        SPEC("B", STC_U8, 1, one),        /* 4 */
        SPEC("\xc3\xa9", STC_U8, 1, one), /* 5 */
        SPEC("z", STC_BOOL, 1, three),    /* 6 */
        SPEC("f4", STC_F4, 2, sq),        /* 7 */
        SPEC("s", STC_I64, 0, NULL),      /* 8 */
        SPEC("e", STC_F16, 2, e),         /* 9 */
    };
    static const size_t order[] = {3, 8, 1, 2, 9, 4, 0, 5, 7, 6};
    static const uint64_t nbytes[] = {1, 4, 8, 8, 1, 1, 3, 2, 8, 0};
    stc_plan *plan = PLAN_OK(specs, 10, NULL, 0, 0);
    if (plan == NULL) return;
    EXPECT_JSON(plan,
                "{\"a2\":{\"dtype\":\"U64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[8,16]},"
                "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[16,20]},"
                "\"c\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[20,28]},"
                "\"e\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[28,28]},"
                "\"B\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[28,29]},"
                "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[29,30]},"
                "\"\xc3\xa9\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[30,31]},"
                "\"f4\":{\"dtype\":\"F4\",\"shape\":[2,2],\"data_offsets\":[31,33]},"
                "\"z\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[33,36]}}");
    for (size_t i = 0; i < 10; i++) {
        CHECK(stc_plan_order(plan, i) == order[i]);
        CHECK(stc_plan_nbytes(plan, i) == nbytes[i]);
    }
    size_t hlen = 0;
    stc_plan_header(plan, &hlen);
    CHECK(stc_plan_file_size(plan) == hlen + 36);
    stc_plan_free(plan);
}

static void test_plan_large_numbers(void) {
    /* Numbers print in full decimal, never in exponent form. */
    static const uint64_t big[] = {1000000, 3, 0};
    static const uint64_t scalar_like[] = {1};
    const stc_tensor_spec specs[] = {
        SPEC("w", STC_U8, 3, big),
        SPEC("x", STC_F64, 1, scalar_like),
    };
    stc_plan *plan = PLAN_OK(specs, 2, NULL, 0, 0);
    if (plan == NULL) return;
    EXPECT_JSON(plan, "{\"x\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                      "\"w\":{\"dtype\":\"U8\",\"shape\":[1000000,3,0],"
                      "\"data_offsets\":[8,8]}}");
    stc_plan_free(plan);
    static const uint64_t huge[] = {1ull << 40, 1000};
    const stc_tensor_spec h[] = {SPEC("h", STC_U8, 2, huge)};
    plan = PLAN_OK(h, 1, NULL, 0, 0);
    if (plan == NULL) return;
    EXPECT_JSON(plan, "{\"h\":{\"dtype\":\"U8\",\"shape\":[1099511627776,1000],"
                      "\"data_offsets\":[0,1099511627776000]}}");
    CHECK(stc_plan_nbytes(plan, 0) == 1099511627776000ull);
    stc_plan_free(plan);
}

static void test_plan_metadata(void) {
    static const uint64_t one[] = {1};
    const stc_tensor_spec specs[] = {SPEC("t", STC_U8, 1, one)};
    const stc_string_pair kv[] = {PAIR("k", "v")};
    stc_plan *plan = PLAN_OK(specs, 1, kv, 1, 1);
    if (plan) {
        EXPECT_JSON(plan, "{\"__metadata__\":{\"k\":\"v\"},"
                          "\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}");
        stc_plan_free(plan);
    }
    /* Empty metadata is written when asked for. */
    plan = PLAN_OK(NULL, 0, NULL, 0, 1);
    if (plan) {
        static const uint8_t want[] = "\x18\0\0\0\0\0\0\0{\"__metadata__\":{}}     ";
        expect_header_bytes_at(__FILE__, __LINE__, plan, want, sizeof want - 1);
        stc_plan_free(plan);
    }
    plan = PLAN_OK(specs, 1, kv, 0, 1);
    if (plan) {
        EXPECT_JSON(plan, "{\"__metadata__\":{},"
                          "\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}");
        stc_plan_free(plan);
    }
    /* has_metadata 0: none, with a NULL pointer. */
    plan = PLAN_OK(specs, 1, NULL, 0, 0);
    if (plan) {
        EXPECT_JSON(plan, "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}");
        stc_plan_free(plan);
    }
    /* Several pairs are written sorted by key bytes. */
    const stc_string_pair many[] = {
        PAIR("\xc3\xa9", "3"), PAIR("b", "2"), PAIR("Z", "0"), PAIR("a", "1"),
        PAIR("", "e"),         PAIR("ab", ""),
    };
    plan = PLAN_OK(NULL, 0, many, 6, 1);
    if (plan) {
        EXPECT_JSON(plan, "{\"__metadata__\":{\"\":\"e\",\"Z\":\"0\",\"a\":\"1\","
                          "\"ab\":\"\",\"b\":\"2\",\"\xc3\xa9\":\"3\"}}");
        stc_plan_free(plan);
    }
}

static void test_plan_escaping(void) {
    static const uint64_t one[] = {1};
    const stc_tensor_spec specs[] = {
        SPEC("q\"\\\b\t\n\f\r\x01\x1f\x7f/\xc3\xa9\xf0\x9f\x98\x80\0z", STC_U8, 1, one),
    };
    const stc_string_pair md[] = {PAIR("k\n\x02", "v/\"\xc3\xa9\x0b")};
    stc_plan *plan = PLAN_OK(specs, 1, md, 1, 1);
    if (plan == NULL) return;
    EXPECT_JSON(plan, "{\"__metadata__\":{\"k\\n\\u0002\":\"v/\\\"\xc3\xa9\\u000b\"},"
                      "\"q\\\"\\\\\\b\\t\\n\\f\\r\\u0001\\u001f\x7f/\xc3\xa9"
                      "\xf0\x9f\x98\x80\\u0000z\":{\"dtype\":\"U8\",\"shape\":[1],"
                      "\"data_offsets\":[0,1]}}");
    stc_plan_free(plan);
    /* Every control character: \uXXXX with lowercase hex unless it has a
     * short escape. */
    char name[32];
    for (unsigned c = 0; c < 0x20; c++) {
        name[0] = 'x';
        name[1] = (char)c;
        const stc_tensor_spec s1[] = {{name, 2, STC_U8, 1, one}};
        plan = PLAN_OK(s1, 1, NULL, 0, 0);
        if (plan == NULL) continue;
        char esc[8];
        switch (c) {
        case '\b': strcpy(esc, "\\b"); break;
        case '\t': strcpy(esc, "\\t"); break;
        case '\n': strcpy(esc, "\\n"); break;
        case '\f': strcpy(esc, "\\f"); break;
        case '\r': strcpy(esc, "\\r"); break;
        default: snprintf(esc, sizeof esc, "\\u%04x", c); break;
        }
        strbuf json = {0};
        sb_printf(&json, "{\"x%s\":{\"dtype\":\"U8\",\"shape\":[1],"
                         "\"data_offsets\":[0,1]}}",
                  esc);
        expect_json_at(__FILE__, __LINE__, plan, json.data, json.len);
        sb_free(&json);
        stc_plan_free(plan);
    }
}

static void test_plan_padding(void) {
    static const uint64_t one[] = {1};
    char name[32];
    for (size_t len = 1; len <= 16; len++) {
        memset(name, 'n', len);
        const stc_tensor_spec specs[] = {{name, len, STC_U8, 1, one}};
        stc_plan *plan = PLAN_OK(specs, 1, NULL, 0, 0);
        if (plan == NULL) continue;
        strbuf json = {0};
        sb_printf(&json, "{\"%.*s\":{\"dtype\":\"U8\",\"shape\":[1],"
                         "\"data_offsets\":[0,1]}}",
                  (int)len, name);
        expect_json_at(__FILE__, __LINE__, plan, json.data, json.len);
        size_t hlen = 0;
        const uint8_t *h = stc_plan_header(plan, &hlen);
        CHECK(hlen % 8 == 0 && get_u64_le(h) == hlen - 8);
        CHECK(stc_plan_file_size(plan) == hlen + 1);
        sb_free(&json);
        stc_plan_free(plan);
    }
}

static void test_plan_copies_specs(void) {
    /* The specs' strings and shapes need not outlive the call. */
    char name[8] = "temp";
    uint64_t shape[2] = {2, 3};
    char key[4] = "k", value[4] = "v";
    stc_tensor_spec specs[1] = {{name, 4, STC_U16, 2, shape}};
    stc_string_pair md[1] = {{key, 1, value, 1}};
    stc_plan *plan = PLAN_OK(specs, 1, md, 1, 1);
    if (plan == NULL) return;
    memset(name, 'X', sizeof name);
    shape[0] = shape[1] = 99;
    key[0] = value[0] = 'Y';
    specs[0].name = NULL;
    EXPECT_JSON(plan, "{\"__metadata__\":{\"k\":\"v\"},"
                      "\"temp\":{\"dtype\":\"U16\",\"shape\":[2,3],"
                      "\"data_offsets\":[0,12]}}");
    CHECK(stc_plan_nbytes(plan, 0) == 12);
    stc_plan_free(plan);
}

/* MARK: - Plan: rejections */

static void test_plan_rejects(void) {
    static const uint64_t one[] = {1}, three[] = {3}, of2[] = {1ull << 32, 1ull << 32},
                          of61[] = {1ull << 61}, of60[] = {1ull << 60};
    const stc_tensor_spec dup[] = {SPEC("a", STC_U8, 1, one), SPEC("b", STC_U8, 1, one),
                                   SPEC("a", STC_F32, 1, one)};
    REJECT_PLAN(dup, NULL, 0, STC_ERR_INVALID_ARGUMENT);
    const stc_tensor_spec meta_name[] = {SPEC("__metadata__", STC_U8, 1, one)};
    REJECT_PLAN(meta_name, NULL, 0, STC_ERR_INVALID_ARGUMENT);
    const stc_tensor_spec bad_utf8[] = {SPEC("t\xff", STC_U8, 1, one)};
    REJECT_PLAN(bad_utf8, NULL, 0, STC_ERR_INVALID_ARGUMENT);
    const stc_tensor_spec surrogate[] = {SPEC("\xed\xa0\x80", STC_U8, 1, one)};
    REJECT_PLAN(surrogate, NULL, 0, STC_ERR_INVALID_ARGUMENT);
    const stc_tensor_spec overlong[] = {SPEC("\xc0\xaf", STC_U8, 1, one)};
    REJECT_PLAN(overlong, NULL, 0, STC_ERR_INVALID_ARGUMENT);
    const stc_tensor_spec truncated[] = {SPEC("ab\xe2\x82", STC_U8, 1, one)};
    REJECT_PLAN(truncated, NULL, 0, STC_ERR_INVALID_ARGUMENT);
    const stc_tensor_spec bad_dtype[] = {SPEC("t", STC_DTYPE_COUNT, 1, one)};
    REJECT_PLAN(bad_dtype, NULL, 0, STC_ERR_INVALID_ARGUMENT);
    const stc_tensor_spec elements[] = {SPEC("t", STC_U8, 2, of2)};
    REJECT_PLAN(elements, NULL, 0, STC_ERR_SIZE_OVERFLOW);
    const stc_tensor_spec bits[] = {SPEC("t", STC_F64, 1, of61)};
    REJECT_PLAN(bits, NULL, 0, STC_ERR_SIZE_OVERFLOW);
    /* Each is 2^63 bytes; together they do not fit. */
    const stc_tensor_spec total[] = {SPEC("a", STC_F64, 1, of60),
                                     SPEC("b", STC_F64, 1, of60)};
    REJECT_PLAN(total, NULL, 0, STC_ERR_SIZE_OVERFLOW);
    const stc_tensor_spec f4[] = {SPEC("t", STC_F4, 1, three)};
    REJECT_PLAN(f4, NULL, 0, STC_ERR_MISALIGNED);
    const stc_tensor_spec f4_scalar[] = {SPEC("t", STC_F4, 0, NULL)};
    REJECT_PLAN(f4_scalar, NULL, 0, STC_ERR_MISALIGNED);
    const stc_tensor_spec f6[] = {SPEC("t", STC_F6_E3M2, 1, three)};
    REJECT_PLAN(f6, NULL, 0, STC_ERR_MISALIGNED);

    const stc_tensor_spec ok[] = {SPEC("t", STC_U8, 1, one)};
    const stc_string_pair dup_md[] = {PAIR("k", "a"), PAIR("j", "b"), PAIR("k", "c")};
    REJECT_PLAN(ok, dup_md, 3, STC_ERR_INVALID_ARGUMENT);
    const stc_string_pair bad_key[] = {PAIR("k\xff", "a")};
    REJECT_PLAN(ok, bad_key, 1, STC_ERR_INVALID_ARGUMENT);
    const stc_string_pair bad_value[] = {PAIR("k", "a\xc3")};
    REJECT_PLAN(ok, bad_value, 1, STC_ERR_INVALID_ARGUMENT);

    /* Names that only look alike are fine. */
    const stc_tensor_spec alike[] = {SPEC("a", STC_U8, 1, one),
                                     SPEC("a\0", STC_U8, 1, one),
                                     SPEC("__metadata", STC_U8, 1, one),
                                     SPEC("__metadata__\0", STC_U8, 1, one)};
    stc_plan *plan = PLAN_OK(alike, 4, NULL, 0, 0);
    stc_plan_free(plan);
}

/* MARK: - Output files */

typedef struct sample {
    stc_tensor_spec specs[5];
    const void *data[5];
    uint8_t bytes[5][64];
} sample;

static const uint64_t k_s_shape0[] = {2, 3};
static const uint64_t k_s_shape2[] = {4};
static const uint64_t k_s_shape3[] = {0, 5};
static const uint64_t k_s_shape4[] = {2, 3};

static void sample_init(sample *s, unsigned seed) {
    const stc_tensor_spec specs[5] = {
        SPEC("weight", STC_F32, 2, k_s_shape0),
        SPEC("scalar", STC_I64, 0, NULL),
        SPEC("bias\xc3\xa9", STC_BF16, 1, k_s_shape2),
        SPEC("empty", STC_U8, 2, k_s_shape3),
        SPEC("packed", STC_F4, 2, k_s_shape4),
    };
    memcpy(s->specs, specs, sizeof specs);
    for (size_t i = 0; i < 5; i++) {
        fill_pattern(s->bytes[i], sizeof s->bytes[i], seed + (unsigned)i);
        s->data[i] = s->bytes[i];
    }
}

static const stc_string_pair k_sample_md[] = {PAIR("format", "np")};

/* Expected file bytes: plan header, then each tensor's data in file order. */
static void sample_expected(const sample *s, strbuf *out) {
    stc_plan *plan = PLAN_OK(s->specs, 5, k_sample_md, 1, 1);
    if (plan == NULL) return;
    size_t hlen = 0;
    const uint8_t *h = stc_plan_header(plan, &hlen);
    sb_append(out, h, hlen);
    for (size_t i = 0; i < 5; i++) {
        size_t k = stc_plan_order(plan, i);
        sb_append(out, s->bytes[k], (size_t)stc_plan_nbytes(plan, k));
    }
    CHECK(out->len == stc_plan_file_size(plan));
    stc_plan_free(plan);
}

static void check_sample_file(const char *path, const sample *s) {
    strbuf want = {0};
    sample_expected(s, &want);
    uint8_t *disk = NULL;
    size_t disk_len = 0;
    CHECK(read_whole_file(path, &disk, &disk_len) == 0);
    CHECK(disk != NULL && disk_len == want.len && memcmp(disk, want.data, want.len) == 0);
    free(disk);
    sb_free(&want);

    const stc_backend backends[2] = {STC_BACKEND_MMAP, STC_BACKEND_PREAD};
    for (size_t b = 0; b < 2; b++) {
        stc_open_options opt = {.backend = backends[b]};
        stc_file *f = NULL;
        stc_error err;
        if (!CHECK_OK(stc_open(path, &opt, &f, &err), &err)) continue;
        CHECK(stc_tensor_count(f) == 5);
        CHECK(stc_has_metadata(f) == 1 && stc_metadata_count(f) == 1);
        for (size_t i = 0; i < 5; i++) {
            const stc_tensor_spec *spec = &s->specs[i];
            const stc_tensor *t = stc_find_tensor(f, spec->name, spec->name_len);
            CHECK(tensor_matches(t, spec));
            if (t == NULL) continue;
            uint8_t buf[64];
            CHECK(t->nbytes <= sizeof buf);
            CHECK_OK(stc_read(f, t->begin, (size_t)t->nbytes, buf, &err), &err);
            CHECK(memcmp(buf, s->bytes[i], (size_t)t->nbytes) == 0);
        }
        stc_close(f);
    }
}

static void test_write_file_roundtrip(void) {
    char dir[512], path[768];
    scratch_subdir("write_roundtrip", dir, sizeof dir);
    path_join(path, sizeof path, dir, "out.safetensors");
    sample s;
    sample_init(&s, 100);
    stc_error err;
    CHECK_OK(stc_write_file(path, s.specs, 5, s.data, k_sample_md, 1, 1, NULL, &err),
             &err);
    check_sample_file(path, &s);
    CHECK(dir_entry_count(dir) == 1);
    dir_remove_tree(dir);
}

static void test_write_file_replaces_atomically(void) {
    char dir[512], path[768];
    scratch_subdir("write_replace", dir, sizeof dir);
    path_join(path, sizeof path, dir, "model.safetensors");
    sample v1, v2;
    sample_init(&v1, 1);
    sample_init(&v2, 2);
    stc_error err;
    CHECK_OK(stc_write_file(path, v1.specs, 5, v1.data, k_sample_md, 1, 1, NULL, &err),
             &err);
    /* Keep the old version mapped while it is replaced. */
    stc_open_options opt = {.backend = STC_BACKEND_MMAP};
    stc_file *old = NULL;
    CHECK_OK(stc_open(path, &opt, &old, &err), &err);
    CHECK_OK(stc_write_file(path, v2.specs, 5, v2.data, k_sample_md, 1, 1, NULL, &err),
             &err);
    check_sample_file(path, &v2);
    CHECK(dir_entry_count(dir) == 1); /* no temporary file left behind */
    if (old) {
        /* The old file was replaced by a rename, not rewritten in place: its
         * mapping still holds the old bytes in full. */
        CHECK_OK(stc_check_unchanged(old, &err), &err);
        const stc_tensor *t = stc_find_tensor(old, "weight", 6);
        CHECK(t != NULL && memcmp(stc_data(old) + t->begin, v1.bytes[0], 24) == 0);
        stc_close(old);
    }
    /* A different, smaller file replaces it entirely. */
    static const uint64_t one[] = {1};
    const stc_tensor_spec small[] = {SPEC("only", STC_U8, 1, one)};
    const void *small_data[] = {"z"};
    CHECK_OK(stc_write_file(path, small, 1, small_data, NULL, 0, 0, NULL, &err), &err);
    uint8_t *disk = NULL;
    size_t disk_len = 0;
    CHECK(read_whole_file(path, &disk, &disk_len) == 0);
    static const char want[] =
        "\x38\0\0\0\0\0\0\0"
        "{\"only\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}z";
    CHECK(disk && disk_len == sizeof want - 1 && memcmp(disk, want, disk_len) == 0);
    free(disk);
    CHECK(dir_entry_count(dir) == 1);
    dir_remove_tree(dir);
}

static void test_output_abort(void) {
    char dir[512], path[768];
    scratch_subdir("write_abort", dir, sizeof dir);
    path_join(path, sizeof path, dir, "keep.safetensors");
    static const char original[] = "original content";
    CHECK(write_whole_file(path, original, sizeof original - 1) == 0);
    stc_output *out = NULL;
    stc_error err;
    if (CHECK_OK(stc_output_open(path, NULL, &out, &err), &err)) {
        CHECK_OK(stc_output_write(out, "new bytes", 9, &err), &err);
        stc_output_abort(out);
    }
    uint8_t *disk = NULL;
    size_t disk_len = 0;
    CHECK(read_whole_file(path, &disk, &disk_len) == 0);
    CHECK(disk && disk_len == sizeof original - 1 &&
          memcmp(disk, original, disk_len) == 0);
    free(disk);
    CHECK(dir_entry_count(dir) == 1);

    /* Aborting when the target does not exist leaves nothing at all. */
    char fresh[768];
    path_join(fresh, sizeof fresh, dir, "fresh.safetensors");
    out = NULL;
    if (CHECK_OK(stc_output_open(fresh, NULL, &out, &err), &err)) {
        CHECK(!file_exists(fresh)); /* nothing at the target before commit */
        stc_output_abort(out);
    }
    CHECK(!file_exists(fresh));
    CHECK(dir_entry_count(dir) == 1);
    stc_output_abort(NULL);
    dir_remove_tree(dir);
}

static void test_output_manual_commit(void) {
    char dir[512], path[768];
    scratch_subdir("write_manual", dir, sizeof dir);
    path_join(path, sizeof path, dir, "manual.safetensors");
    sample s;
    sample_init(&s, 7);
    stc_plan *plan = PLAN_OK(s.specs, 5, k_sample_md, 1, 1);
    if (plan == NULL) return;
    stc_output *out = NULL;
    stc_error err;
    if (CHECK_OK(stc_output_open(path, NULL, &out, &err), &err)) {
        size_t hlen = 0;
        const uint8_t *h = stc_plan_header(plan, &hlen);
        /* The header in two pieces, then the data. */
        CHECK_OK(stc_output_write(out, h, 5, &err), &err);
        CHECK_OK(stc_output_write(out, h + 5, hlen - 5, &err), &err);
        CHECK_OK(stc_output_write(out, h, 0, &err), &err);
        for (size_t i = 0; i < 5; i++) {
            size_t k = stc_plan_order(plan, i);
            CHECK_OK(stc_output_write(out, s.bytes[k], (size_t)stc_plan_nbytes(plan, k),
                                      &err),
                     &err);
        }
        CHECK(!file_exists(path));
        CHECK_OK(stc_output_commit(out, &err), &err);
        check_sample_file(path, &s);
        CHECK(dir_entry_count(dir) == 1);
    }
    stc_plan_free(plan);
    dir_remove_tree(dir);
}

static void test_write_missing_directory(void) {
    char dir[512], path[768];
    scratch_subdir("write_missing", dir, sizeof dir);
    path_join(path, sizeof path, dir, "no/such/dir/out.safetensors");
    sample s;
    sample_init(&s, 3);
    stc_error err;
    error_poison(&err);
    stc_status st = stc_write_file(path, s.specs, 5, s.data, NULL, 0, 0, NULL, &err);
    CHECK_STATUS(st, STC_ERR_IO, &err);
    if (st == STC_ERR_IO) {
        CHECK_ERROR_FILLED(&err, st);
        CHECK(err.sys_errno == ENOENT);
    }
    stc_output *const sentinel = (stc_output *)(uintptr_t)0x2468;
    stc_output *out = sentinel;
    error_poison(&err);
    st = stc_output_open(path, NULL, &out, &err);
    CHECK_STATUS(st, STC_ERR_IO, &err);
    if (st == STC_ERR_IO) CHECK(err.sys_errno == ENOENT);
    CHECK(out == sentinel);
    if (st == STC_OK) stc_output_abort(out);
    CHECK(dir_entry_count(dir) == 0);
    dir_remove_tree(dir);
}

static void test_write_file_rejects_bad_specs(void) {
    char dir[512], path[768];
    scratch_subdir("write_bad", dir, sizeof dir);
    path_join(path, sizeof path, dir, "bad.safetensors");
    static const uint64_t one[] = {1};
    const stc_tensor_spec dup[] = {SPEC("a", STC_U8, 1, one), SPEC("a", STC_U8, 1, one)};
    const void *data[] = {"x", "y"};
    stc_error err;
    error_poison(&err);
    CHECK_STATUS(stc_write_file(path, dup, 2, data, NULL, 0, 0, NULL, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    CHECK(!file_exists(path));
    CHECK(dir_entry_count(dir) == 0);
    dir_remove_tree(dir);
}

void run_writer_tests(void) {
    test_plan_empty();
    test_plan_one_i32();
    test_plan_order_by_rank_then_name();
    test_plan_large_numbers();
    test_plan_metadata();
    test_plan_escaping();
    test_plan_padding();
    test_plan_copies_specs();
    test_plan_rejects();
    test_write_file_roundtrip();
    test_write_file_replaces_atomically();
    test_output_abort();
    test_output_manual_commit();
    test_write_missing_directory();
    test_write_file_rejects_bad_specs();
}
