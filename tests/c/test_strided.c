/*
 * test_strided.c - stc_read_strided against a reference gather computed here
 * from the raw bytes, through a memory image and both file backends.
 */
#include "harness.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { MAX_DIMS = 6, CANARY = 64 };

/* The file: "pad" U8 [3] at [0, 3), "m" F32 [5, 7] at [3, 143),
 * "c" I16 [3, 4, 5] at [143, 263). The data section ends with "c". */
static const char k_json[] =
    "{\"pad\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]},"
    "\"m\":{\"dtype\":\"F32\",\"shape\":[5,7],\"data_offsets\":[3,143]},"
    "\"c\":{\"dtype\":\"I16\",\"shape\":[3,4,5],\"data_offsets\":[143,263]}}";
enum { DATA_LEN = 263, M_BEGIN = 3, C_BEGIN = 143 };

typedef struct view {
    const char *what;
    uint64_t offset;
    size_t ndim;
    uint64_t shape[MAX_DIMS];
    int64_t strides[MAX_DIMS];
    size_t itemsize;
} view;

/* MARK: - Reference */

static uint64_t view_elements(const view *v) {
    uint64_t n = 1;
    for (size_t d = 0; d < v->ndim; d++) n *= v->shape[d];
    return n;
}

/* C-order gather of the view from data, one element at a time. */
static void gather_reference(const uint8_t *data, const view *v, uint8_t *dst) {
    uint64_t idx[MAX_DIMS] = {0};
    uint64_t count = view_elements(v);
    for (uint64_t e = 0; e < count; e++) {
        int64_t pos = (int64_t)v->offset;
        for (size_t d = 0; d < v->ndim; d++) pos += (int64_t)idx[d] * v->strides[d];
        memcpy(dst + e * v->itemsize, data + pos, v->itemsize);
        for (size_t d = v->ndim; d-- > 0;) {
            if (++idx[d] < v->shape[d]) break;
            idx[d] = 0;
        }
    }
}

/* MARK: - Views */

/* Strides of "m" (rows of 7 floats) and "c" (3 x 4 x 5 int16). */
#define MR 28
#define MC 4
#define C0 40
#define C1 10
#define C2 2

static const view k_views[] = {
    {"m whole", M_BEGIN, 2, {5, 7}, {MR, MC}, 4},
    {"m rows 1:4", M_BEGIN + 1 * MR, 2, {3, 7}, {MR, MC}, 4},
    {"m cols 2:5", M_BEGIN + 2 * MC, 2, {5, 3}, {MR, MC}, 4},
    {"m row 4", M_BEGIN + 4 * MR, 1, {7}, {MC}, 4},
    {"m col 6", M_BEGIN + 6 * MC, 1, {5}, {MR}, 4},
    {"m rows reversed", M_BEGIN + 4 * MR, 2, {5, 7}, {-MR, MC}, 4},
    {"m cols reversed", M_BEGIN + 6 * MC, 2, {5, 7}, {MR, -MC}, 4},
    {"m both reversed", M_BEGIN + 4 * MR + 6 * MC, 2, {5, 7}, {-MR, -MC}, 4},
    {"m ::2, 1::3", M_BEGIN + 1 * MC, 2, {3, 2}, {2 * MR, 3 * MC}, 4},
    {"m 4:0:-2, ::-3", M_BEGIN + 4 * MR + 6 * MC, 2, {2, 3}, {-2 * MR, -3 * MC}, 4},
    {"m transposed", M_BEGIN, 2, {7, 5}, {MC, MR}, 4},
    {"m as bytes", M_BEGIN, 3, {5, 7, 4}, {MR, MC, 1}, 1},
    {"m one element", M_BEGIN + 2 * MR + 3 * MC, 0, {0}, {0}, 4},
    {"m broadcast row", M_BEGIN, 2, {3, 7}, {0, MC}, 4},
    {"m empty rows", M_BEGIN, 2, {0, 7}, {MR, MC}, 4},
    {"c whole", C_BEGIN, 3, {3, 4, 5}, {C0, C1, C2}, 2},
    {"c [::-1, 1:3, ::2]", C_BEGIN + 2 * C0 + 1 * C1, 3, {3, 2, 3}, {-C0, C1, 2 * C2}, 2},
    {"c [1, :, ::-1]", C_BEGIN + 1 * C0 + 4 * C2, 2, {4, 5}, {C1, -C2}, 2},
    {"c [:, 3, 1:4]", C_BEGIN + 3 * C1 + 1 * C2, 2, {3, 3}, {C0, C2}, 2},
    {"c transposed (2,0,1)", C_BEGIN, 3, {5, 3, 4}, {C2, C0, C1}, 2},
    {"c [2:, ::-2, 4:]", C_BEGIN + 2 * C0 + 3 * C1 + 4 * C2, 3, {1, 2, 1},
     {C0, -2 * C1, C2}, 2},
    {"c last element", C_BEGIN + 2 * C0 + 3 * C1 + 4 * C2, 1, {1}, {C2}, 2},
    {"whole data section", 0, 1, {DATA_LEN}, {1}, 1},
    {"data section as 2 x 131 + pad", 1, 2, {2, 131}, {131, 1}, 1},
    {"odd itemsize, mixed signs", 20, 2, {4, 5}, {13, -3}, 3},
};

static const view k_bad_views[] = {
    {"c one row too many", C_BEGIN, 3, {4, 4, 5}, {C0, C1, C2}, 2},
    {"c last element, wider item", C_BEGIN + 2 * C0 + 3 * C1 + 4 * C2, 1, {1}, {C2}, 3},
    {"before the start", M_BEGIN, 1, {2}, {-4}, 4},
    {"negative stride below 0", 0, 1, {2}, {-1}, 1},
    {"start past the end", DATA_LEN, 1, {1}, {1}, 1},
    {"start far past the end", UINT64_MAX - 1, 1, {1}, {1}, 1},
    {"shape that overflows", 0, 1, {UINT64_MAX}, {1}, 1},
    {"stride that overflows", 0, 2, {2, 1}, {INT64_MAX, 1}, 1},
    {"negative stride that overflows", DATA_LEN - 1, 2, {2, 1}, {INT64_MIN, 1}, 1},
    {"element count overflows (stride 0)", 0, 2, {UINT64_MAX / 2, 4}, {0, 1}, 1},
    {"rows reversed from row 0", M_BEGIN, 2, {5, 7}, {-MR, MC}, 4},
};

/* MARK: - Tests */

/* A bad view must be refused before anything is written. A wrong
 * implementation may write far past dst, so the call runs in a child
 * process, which reports its verdict through a pipe; a crash there is a
 * failure here. (The verdict, not the exit status, counts: under valgrind
 * the child's exit status reflects the memory the parent still holds.) */
static void check_bad_view(stc_file *f, const view *v, const char *mode) {
    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        CHECK(0);
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        CHECK(pid >= 0);
        close(fds[0]);
        close(fds[1]);
        return;
    }
    if (pid == 0) {
        close(fds[0]);
        uint8_t got[1200];
        memset(got, 0xA5, sizeof got);
        stc_error err;
        error_poison(&err);
        stc_status s = stc_read_strided(f, v->offset, v->ndim, v->shape, v->strides,
                                        v->itemsize, got, &err);
        unsigned long failures = g_failures;
        if (CHECK_STATUS(s, STC_ERR_INVALID_ARGUMENT, &err))
            CHECK_ERROR_FILLED(&err, s);
        CHECK(got[0] == 0xA5); /* nothing written */
        fflush(stderr);
        uint8_t verdict = g_failures == failures ? 'P' : 'F';
        ssize_t ignored = write(fds[1], &verdict, 1);
        (void)ignored;
        _exit(0);
    }
    close(fds[1]);
    uint8_t verdict = 0;
    ssize_t n;
    do {
        n = read(fds[0], &verdict, 1);
    } while (n < 0 && errno == EINTR);
    close(fds[0]);
    int wstatus = 0;
    while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
    }
    g_checks++;
    if (n == 1 && verdict == 'P') return;
    g_failures++;
    if (n == 1)
        fprintf(stderr, "%s:%d: %s, bad view '%s' was not refused cleanly\n", __FILE__,
                __LINE__, mode, v->what);
    else if (WIFSIGNALED(wstatus))
        fprintf(stderr, "%s:%d: %s, bad view '%s': crashed with signal %d\n", __FILE__,
                __LINE__, mode, v->what, WTERMSIG(wstatus));
    else
        fprintf(stderr, "%s:%d: %s, bad view '%s': the child died without a verdict\n",
                __FILE__, __LINE__, mode, v->what);
}

static void check_views(stc_file *f, const uint8_t *data, const char *mode) {
    uint8_t expect[1200], got[1200 + CANARY];
    for (size_t i = 0; i < sizeof k_views / sizeof k_views[0]; i++) {
        const view *v = &k_views[i];
        size_t len = (size_t)view_elements(v) * v->itemsize;
        if (len > sizeof expect) {
            CHECK(len <= sizeof expect);
            continue;
        }
        gather_reference(data, v, expect);
        memset(got, 0xA5, sizeof got);
        stc_error err;
        stc_status s = stc_read_strided(f, v->offset, v->ndim, v->shape, v->strides,
                                        v->itemsize, got, &err);
        int ok = CHECK_OK(s, &err);
        if (ok && memcmp(got, expect, len) != 0) {
            fprintf(stderr, "    %s: view '%s' gathered the wrong bytes\n", mode,
                    v->what);
            CHECK(memcmp(got, expect, len) == 0);
        }
        for (size_t k = len; k < len + CANARY; k++) {
            if (got[k] != 0xA5) {
                fprintf(stderr, "    %s: view '%s' wrote past its end\n", mode, v->what);
                CHECK(got[k] == 0xA5);
                break;
            }
        }
        if (!ok) fprintf(stderr, "    (%s, view '%s')\n", mode, v->what);
    }
    for (size_t i = 0; i < sizeof k_bad_views / sizeof k_bad_views[0]; i++)
        check_bad_view(f, &k_bad_views[i], mode);
}

static void test_strided_memory(const uint8_t *data) {
    image img = image_make(k_json, sizeof k_json - 1, data, DATA_LEN);
    stc_file *f = NULL;
    stc_error err;
    if (CHECK_OK(stc_open_memory(img.bytes, img.len, NULL, &f, &err), &err)) {
        const stc_tensor *m = stc_find_tensor(f, "m", 1);
        const stc_tensor *c = stc_find_tensor(f, "c", 1);
        CHECK(m && m->begin == M_BEGIN && c && c->begin == C_BEGIN &&
              c->end == DATA_LEN);
        check_views(f, data, "memory");
        stc_close(f);
    }
    image_free(&img);
}

static void test_strided_files(const uint8_t *data) {
    char dir[512], path[768];
    scratch_subdir("strided", dir, sizeof dir);
    path_join(path, sizeof path, dir, "strided.safetensors");
    image img = image_make(k_json, sizeof k_json - 1, data, DATA_LEN);
    CHECK(write_whole_file(path, img.bytes, img.len) == 0);
    const stc_backend backends[2] = {STC_BACKEND_MMAP, STC_BACKEND_PREAD};
    const char *names[2] = {"mmap", "pread"};
    for (size_t b = 0; b < 2; b++) {
        stc_open_options opt = {.backend = backends[b]};
        stc_file *f = NULL;
        stc_error err;
        if (!CHECK_OK(stc_open(path, &opt, &f, &err), &err)) continue;
        check_views(f, data, names[b]);
        stc_close(f);
    }
    image_free(&img);
    dir_remove_tree(dir);
}

/* Dimensions of size 1 do not count against STC_MAX_STRIDED_DIMS: a view of
 * "m" with 100 of them around its 5 x 7 gathers like the plain 5 x 7 view;
 * 65 dimensions larger than 1 are refused. */
static void test_many_dimensions(const uint8_t *data) {
    image img = image_make(k_json, sizeof k_json - 1, data, DATA_LEN);
    stc_file *f = NULL;
    stc_error err;
    enum { MANY = 100 };
    uint64_t shape[MANY + 2];
    int64_t strides[MANY + 2];
    for (size_t d = 0; d < MANY + 2; d++) {
        shape[d] = 1;
        strides[d] = 1000; /* never applied: the index stays 0 */
    }
    shape[MANY / 2] = 5;
    strides[MANY / 2] = 28;
    shape[MANY + 1] = 7;
    strides[MANY + 1] = 4;
    float got[35], want[35];
    if (CHECK_OK(stc_open_memory(img.bytes, img.len, NULL, &f, &err), &err)) {
        CHECK_OK(stc_read_strided(f, M_BEGIN, MANY + 2, shape, strides, 4, got, &err), &err);
        memcpy(want, data + M_BEGIN, sizeof want);
        CHECK(memcmp(got, want, sizeof want) == 0);
        uint64_t twos[STC_MAX_STRIDED_DIMS + 1];
        int64_t zeros[STC_MAX_STRIDED_DIMS + 1];
        for (size_t d = 0; d <= STC_MAX_STRIDED_DIMS; d++) {
            twos[d] = 2;
            zeros[d] = 0;
        }
        /* 2^65 one-byte elements: refused before anything is read. */
        CHECK_STATUS(stc_read_strided(f, 0, STC_MAX_STRIDED_DIMS + 1, twos, zeros, 1, got, &err),
                     STC_ERR_INVALID_ARGUMENT, &err);
        stc_close(f);
    }
    image_free(&img);
}

void run_strided_tests(void) {
    uint8_t data[DATA_LEN];
    fill_pattern(data, sizeof data, 42);
    test_strided_memory(data);
    test_strided_files(data);
    test_many_dimensions(data);
}
