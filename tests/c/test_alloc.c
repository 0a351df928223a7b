/*
 * test_alloc.c - every allocating entry point under a counting allocator
 * that fails its k-th allocation, for k = 1, 2, ... until the call succeeds:
 * each failure must be STC_ERR_NO_MEMORY and leave nothing allocated.
 */
#include "harness.h"

#include <stdlib.h>
#include <string.h>

/* MARK: - The loop */

/* One run of an entry point with the given allocator. On success the op
 * releases whatever it created, so that the caller can count leaks. */
typedef stc_status (*alloc_op)(void *ctx, const stc_allocator *alloc,
                               stc_error *err);

enum { MAX_K = 20000 };

/* Runs op with the k-th allocation failing, k = 1, 2, ..., until a run
 * completes without an injected failure; that run must return `final`.
 * after_run, if given, checks the world after every run (e.g. no files). */
static void alloc_loop_at(const char *file, int line, const char *what, alloc_op op,
                          void *ctx, stc_status final,
                          void (*after_run)(void *ctx, stc_status s)) {
    size_t k;
    for (k = 1; k <= MAX_K; k++) {
        test_alloc a;
        test_alloc_init(&a, k);
        stc_error err;
        error_poison(&err);
        stc_status s = op(ctx, &a.base, &err);
        int leak = a.live_blocks != 0 || a.live_bytes != 0;
        if (leak || a.bad_calls) {
            g_failures++;
            fprintf(stderr,
                    "%s:%d: %s with allocation %zu failing: %zu blocks (%zu bytes) "
                    "leaked, %zu bad allocator calls\n",
                    file, line, what, k, a.live_blocks, a.live_bytes, a.bad_calls);
        }
        g_checks++;
        if (after_run) after_run(ctx, s);
        if (!a.injected) {
            if (!check_status_at(file, line, s, final, &err, what))
                fprintf(stderr, "    (run without an injected failure, k = %zu)\n", k);
            if (a.calls == 0) {
                g_failures++;
                fprintf(stderr, "%s:%d: %s never used the allocator it was given\n",
                        file, line, what);
            }
            g_checks++;
            return;
        }
        if (!check_status_at(file, line, s, STC_ERR_NO_MEMORY, &err, what)) {
            fprintf(stderr, "    (allocation %zu of %s failed)\n", k, what);
            if (s == STC_OK) return; /* it would never stop failing this way */
        } else {
            CHECK(err.status == STC_ERR_NO_MEMORY && err.message != NULL);
        }
    }
    g_failures++;
    fprintf(stderr, "%s:%d: %s still failing after %d allocations\n", file, line, what,
            MAX_K);
}

#define ALLOC_LOOP(what, op, ctx, final, after) \
    alloc_loop_at(__FILE__, __LINE__, (what), (op), (ctx), (final), (after))

/* MARK: - Reading */

/* Several tensors, metadata, and an unknown field with nested containers. */
static const char k_rich_json[] =
    "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"caf\\u00e9 \\ud83d\\ude00\"},"
    "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24],"
    "\"extra\":{\"a\":[1,[2,{\"b\":[null,true,\"s\"]}]],\"c\":{\"d\":{}}}},"
    "\"b\\n\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[24,32]},"
    "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[32,32]},"
    "\"e\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[32,40]},"
    "\"long_name_for_a_tensor_that_needs_room\":{\"dtype\":\"F4\",\"shape\":[2],"
    "\"data_offsets\":[40,41]}}";
enum { RICH_DATA = 41 };

typedef struct read_ctx {
    image img;
    char path[768];
    stc_backend backend;
} read_ctx;

static stc_status op_open_memory(void *ctx, const stc_allocator *alloc,
                                 stc_error *err) {
    read_ctx *c = ctx;
    stc_open_options opt = {.backend = STC_BACKEND_MMAP, .allocator = alloc};
    stc_file *f = NULL;
    stc_status s = stc_open_memory(c->img.bytes, c->img.len, &opt, &f, err);
    if (s == STC_OK) {
        CHECK(stc_tensor_count(f) >= 1);
        stc_close(f);
    }
    return s;
}

static stc_status op_open_file(void *ctx, const stc_allocator *alloc, stc_error *err) {
    read_ctx *c = ctx;
    stc_open_options opt = {.backend = c->backend, .allocator = alloc};
    stc_file *f = NULL;
    stc_status s = stc_open(c->path, &opt, &f, err);
    if (s == STC_OK) {
        CHECK(stc_tensor_count(f) == 5);
        stc_close(f);
    }
    return s;
}

static void test_alloc_open_memory(void) {
    read_ctx c;
    memset(&c, 0, sizeof c);
    c.img = image_make(k_rich_json, sizeof k_rich_json - 1, NULL, RICH_DATA);
    ALLOC_LOOP("stc_open_memory", op_open_memory, &c, STC_OK, NULL);
    image_free(&c.img);

    /* Failures after parsing must release everything as well. */
    static const char mismatch[] =
        "{\"__metadata__\":{\"a\":\"b\"},\"x\":{\"dtype\":\"U8\",\"shape\":[4],"
        "\"data_offsets\":[0,4],\"u\":[[{}]]},\"y\":{\"dtype\":\"F32\",\"shape\":[2],"
        "\"data_offsets\":[4,8]}}";
    c.img = image_make(mismatch, sizeof mismatch - 1, NULL, 8);
    ALLOC_LOOP("stc_open_memory (size mismatch)", op_open_memory, &c,
               STC_ERR_SIZE_MISMATCH, NULL);
    image_free(&c.img);
    static const char dup[] = "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],"
                              "\"data_offsets\":[0,0]},\"a\":{\"dtype\":\"U8\","
                              "\"shape\":[0],\"data_offsets\":[0,0]}}";
    c.img = image_make(dup, sizeof dup - 1, NULL, 0);
    ALLOC_LOOP("stc_open_memory (duplicate)", op_open_memory, &c,
               STC_ERR_DUPLICATE_KEY, NULL);
    image_free(&c.img);
}

static void test_alloc_open_file(void) {
    char dir[512];
    read_ctx c;
    memset(&c, 0, sizeof c);
    scratch_subdir("alloc_open", dir, sizeof dir);
    path_join(c.path, sizeof c.path, dir, "rich.safetensors");
    c.img = image_make(k_rich_json, sizeof k_rich_json - 1, NULL, RICH_DATA);
    CHECK(write_whole_file(c.path, c.img.bytes, c.img.len) == 0);
    c.backend = STC_BACKEND_MMAP;
    ALLOC_LOOP("stc_open (mmap)", op_open_file, &c, STC_OK, NULL);
    c.backend = STC_BACKEND_PREAD;
    ALLOC_LOOP("stc_open (pread)", op_open_file, &c, STC_OK, NULL);
    image_free(&c.img);
    dir_remove_tree(dir);
}

static void test_alloc_bounded_by_header(void) {
    /* A small header that claims a 1 TiB tensor: nothing may be allocated
     * in proportion to the numbers written in it. */
    static const char json[] =
        "{\"t\":{\"dtype\":\"U8\",\"shape\":[1099511627776],"
        "\"data_offsets\":[0,1099511627776]},"
        "\"u\":{\"dtype\":\"F64\",\"shape\":[4096,4096,4096],"
        "\"data_offsets\":[1099511627776,1649267441664]}}";
    image img = image_make(json, sizeof json - 1, NULL, 64);
    test_alloc a;
    test_alloc_init(&a, 0);
    stc_open_options opt = {.backend = STC_BACKEND_MMAP, .allocator = &a.base};
    stc_file *f = NULL;
    stc_error err;
    stc_status s = stc_open_memory(img.bytes, img.len, &opt, &f, &err);
    CHECK(s != STC_OK);
    if (s == STC_OK) stc_close(f);
    CHECK(a.max_request < 64 * 1024);
    CHECK(a.live_blocks == 0);
    image_free(&img);

    /* The pread backend reads the header, not the data. */
    char dir[512], path[768];
    scratch_subdir("alloc_bounded", dir, sizeof dir);
    path_join(path, sizeof path, dir, "big.safetensors");
    static const char big[] =
        "{\"t\":{\"dtype\":\"U8\",\"shape\":[1048576],\"data_offsets\":[0,1048576]}}";
    img = image_make(big, sizeof big - 1, NULL, 1048576);
    CHECK(write_whole_file(path, img.bytes, img.len) == 0);
    image_free(&img);
    test_alloc_init(&a, 0);
    opt.backend = STC_BACKEND_PREAD;
    f = NULL;
    if (CHECK_OK(stc_open(path, &opt, &f, &err), &err)) {
        CHECK(a.peak_bytes < 256 * 1024);
        /* Reading needs no allocation. */
        size_t calls = a.calls;
        uint8_t buf[256];
        const uint64_t shape[2] = {4, 8};
        const int64_t strides[2] = {-1024, 3};
        CHECK_OK(stc_read(f, 1000, sizeof buf, buf, &err), &err);
        CHECK_OK(stc_read_strided(f, 500000, 2, shape, strides, 4, buf, &err), &err);
        CHECK_OK(stc_check_unchanged(f, &err), &err);
        CHECK(stc_find_tensor(f, "t", 1) != NULL);
        CHECK(a.calls == calls);
        stc_close(f);
    }
    CHECK(a.live_blocks == 0 && a.live_bytes == 0);
    dir_remove_tree(dir);
}

/* MARK: - Writing */

static const uint64_t k_w_shape[] = {2, 3};
static const uint64_t k_w_shape2[] = {5};
static const stc_tensor_spec k_specs[] = {
    {"weight", 6, STC_F32, 2, k_w_shape},
    {"bias", 4, STC_F16, 1, k_w_shape2},
    {"step\n\"quoted\"", 13, STC_I64, 0, NULL},
    {"mask", 4, STC_BOOL, 1, k_w_shape2},
};
static const stc_string_pair k_md[] = {
    {"format", 6, "pt", 2},
    {"b", 1, "with \"quotes\" and \x01", 19},
    {"a", 1, "", 0},
};
static uint8_t k_bytes[4][32];
static const void *const k_data[4] = {k_bytes[0], k_bytes[1], k_bytes[2], k_bytes[3]};

typedef struct write_ctx {
    char dir[512];
    char path[768];
} write_ctx;

static stc_status op_plan(void *ctx, const stc_allocator *alloc, stc_error *err) {
    (void)ctx;
    stc_plan *plan = NULL;
    stc_status s = stc_plan_create(k_specs, 4, k_md, 3, 1, alloc, &plan, err);
    if (s == STC_OK) {
        size_t len = 0;
        CHECK(stc_plan_header(plan, &len) != NULL && len % 8 == 0);
        stc_plan_free(plan);
    }
    return s;
}

static stc_status op_plan_rejected(void *ctx, const stc_allocator *alloc,
                                   stc_error *err) {
    (void)ctx;
    const stc_tensor_spec dup[3] = {k_specs[0], k_specs[1], k_specs[0]};
    stc_plan *plan = NULL;
    stc_status s = stc_plan_create(dup, 3, k_md, 3, 1, alloc, &plan, err);
    if (s == STC_OK) stc_plan_free(plan);
    return s;
}

static stc_status op_output_open(void *ctx, const stc_allocator *alloc,
                                 stc_error *err) {
    write_ctx *c = ctx;
    stc_output *out = NULL;
    stc_status s = stc_output_open(c->path, alloc, &out, err);
    if (s == STC_OK) {
        stc_error werr;
        CHECK_OK(stc_output_write(out, "abc", 3, &werr), &werr);
        stc_output_abort(out);
    }
    return s;
}

static stc_status op_write_file(void *ctx, const stc_allocator *alloc,
                                stc_error *err) {
    write_ctx *c = ctx;
    return stc_write_file(c->path, k_specs, 4, k_data, k_md, 3, 1, alloc, err);
}

static stc_status op_write_sequence(void *ctx, const stc_allocator *alloc,
                                    stc_error *err) {
    write_ctx *c = ctx;
    stc_plan *plan = NULL;
    stc_output *out = NULL;
    stc_status s = stc_plan_create(k_specs, 4, k_md, 3, 1, alloc, &plan, err);
    if (s != STC_OK) return s;
    s = stc_output_open(c->path, alloc, &out, err);
    if (s != STC_OK) goto done;
    size_t len = 0;
    const uint8_t *header = stc_plan_header(plan, &len);
    s = stc_output_write(out, header, len, err);
    for (size_t i = 0; i < 4 && s == STC_OK; i++) {
        size_t k = stc_plan_order(plan, i);
        s = stc_output_write(out, k_bytes[k], (size_t)stc_plan_nbytes(plan, k), err);
    }
    if (s != STC_OK) {
        stc_output_abort(out);
        goto done;
    }
    s = stc_output_commit(out, err);
done:
    stc_plan_free(plan);
    return s;
}

/* After every run: a failed run leaves an empty directory; a successful one
 * exactly the target, which is then removed for the next loop. */
static void after_write(void *ctx, stc_status s) {
    write_ctx *c = ctx;
    size_t entries = dir_entry_count(c->dir);
    if (s == STC_OK) {
        CHECK(entries == 1 && file_exists(c->path));
        remove(c->path);
    } else {
        if (entries != 0)
            fprintf(stderr, "    %zu files left after a failed write (%s)\n", entries,
                    stc_status_name(s));
        CHECK(entries == 0);
    }
}

/* stc_output_open's op always aborts: nothing must ever remain. */
static void after_output_open(void *ctx, stc_status s) {
    write_ctx *c = ctx;
    (void)s;
    CHECK(dir_entry_count(c->dir) == 0);
}

static void test_alloc_writer(void) {
    for (size_t i = 0; i < 4; i++) fill_pattern(k_bytes[i], sizeof k_bytes[i], 50u + (unsigned)i);
    write_ctx c;
    memset(&c, 0, sizeof c);
    scratch_subdir("alloc_write", c.dir, sizeof c.dir);
    path_join(c.path, sizeof c.path, c.dir, "out.safetensors");
    ALLOC_LOOP("stc_plan_create", op_plan, &c, STC_OK, NULL);
    ALLOC_LOOP("stc_plan_create (duplicate)", op_plan_rejected, &c,
               STC_ERR_INVALID_ARGUMENT, NULL);
    ALLOC_LOOP("stc_output_open", op_output_open, &c, STC_OK, after_output_open);
    ALLOC_LOOP("stc_write_file", op_write_file, &c, STC_OK, after_write);
    ALLOC_LOOP("plan + output + commit", op_write_sequence, &c, STC_OK, after_write);

    /* The written file reads back the same through the counting allocator. */
    stc_error err;
    test_alloc a;
    test_alloc_init(&a, 0);
    if (CHECK_OK(stc_write_file(c.path, k_specs, 4, k_data, k_md, 3, 1, &a.base, &err),
                 &err)) {
        stc_open_options opt = {.backend = STC_BACKEND_MMAP, .allocator = &a.base};
        stc_file *f = NULL;
        if (CHECK_OK(stc_open(c.path, &opt, &f, &err), &err)) {
            const stc_tensor *t = stc_find_tensor(f, "step\n\"quoted\"", 13);
            CHECK(t && t->dtype == STC_I64 && t->ndim == 0 && t->nbytes == 8);
            CHECK(t && memcmp(stc_data(f) + t->begin, k_bytes[2], 8) == 0);
            CHECK(stc_metadata_count(f) == 3);
            stc_close(f);
        }
    }
    CHECK(a.live_blocks == 0 && a.bad_calls == 0);
    dir_remove_tree(c.dir);
}

void run_alloc_tests(void) {
    test_alloc_open_memory();
    test_alloc_open_file();
    test_alloc_bounded_by_header();
    test_alloc_writer();
}
