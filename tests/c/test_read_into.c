/*
 * test_read_into.c - reading tensors into caller buffers: whole tensors and
 * ranges through a memory image and both file backends, every range that
 * leaves its tensor refused without a byte written, a tensor of another
 * file refused, ranges read by many threads at once, the O_DIRECT path
 * (with its fallbacks) and read-ahead advice.
 *
 * Built as its own binary (build/test_read_into, see the Makefile), with
 * the shared harness.
 */
#define _GNU_SOURCE 1 /* O_DIRECT */

#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* "pad" U8 [100] at [0, 100), "big" U8 [196608] at [100, 196708),
 * "tail" U8 [7] at [196708, 196715). */
enum { PAD_LEN = 100, BIG_LEN = 3 * 65536, TAIL_LEN = 7 };
enum { DATA_LEN = PAD_LEN + BIG_LEN + TAIL_LEN, CANARY = 0xA5, ALIGN = 4096 };

static const char k_json[] =
    "{\"pad\":{\"dtype\":\"U8\",\"shape\":[100],\"data_offsets\":[0,100]},"
    "\"big\":{\"dtype\":\"U8\",\"shape\":[196608],\"data_offsets\":[100,196708]},"
    "\"tail\":{\"dtype\":\"U8\",\"shape\":[7],\"data_offsets\":[196708,196715]}}";

static uint8_t g_data[DATA_LEN];

static const stc_tensor *find(const stc_file *f, const char *name) {
    return stc_find_tensor(f, name, strlen(name));
}

static int all_canary(const uint8_t *p, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (p[i] != CANARY) return 0;
    return 1;
}

/* MARK: - Ranges and bounds */

static void check_ranges(stc_file *f, const char *what) {
    printf("  ranges: %s\n", what);
    const stc_tensor *pad = find(f, "pad"), *big = find(f, "big"), *tail = find(f, "tail");
    CHECK(pad && big && tail);
    if (!pad || !big || !tail) return;
    uint8_t *buf = malloc(BIG_LEN + 64);
    stc_error err;

    /* Whole tensors. */
    CHECK_OK(stc_read_tensor_into(f, big, 0, BIG_LEN, buf, &err), &err);
    CHECK(memcmp(buf, g_data + PAD_LEN, BIG_LEN) == 0);
    CHECK_OK(stc_read_tensor_into(f, tail, 0, TAIL_LEN, buf, &err), &err);
    CHECK(memcmp(buf, g_data + PAD_LEN + BIG_LEN, TAIL_LEN) == 0);

    /* Ranges inside a tensor, including ones that end at its last byte. */
    static const struct { uint64_t off; size_t len; } ok[] = {
        {0, 1}, {1, 4095}, {4096, 65536}, {BIG_LEN - 1, 1}, {BIG_LEN - 5000, 5000}, {BIG_LEN, 0},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        memset(buf, CANARY, ok[i].len + 1);
        CHECK_OK(stc_read_tensor_into(f, big, ok[i].off, ok[i].len, buf, &err), &err);
        CHECK(memcmp(buf, g_data + PAD_LEN + ok[i].off, ok[i].len) == 0);
        CHECK(buf[ok[i].len] == CANARY);
    }

    /* Ranges that leave the tensor, by one byte or by far: refused, and the
     * destination keeps every byte (no partial copy of a neighbour). */
    static const struct { uint64_t off; size_t len; } bad[] = {
        {0, BIG_LEN + 1}, {1, BIG_LEN}, {BIG_LEN, 1}, {BIG_LEN + 1, 0},
        {UINT64_MAX, 1}, {UINT64_MAX - 2, 8}, {5, SIZE_MAX},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(buf, CANARY, 64);
        error_poison(&err);
        stc_status s = stc_read_tensor_into(f, big, bad[i].off, bad[i].len, buf, &err);
        CHECK_STATUS(s, STC_ERR_INVALID_ARGUMENT, &err);
        CHECK_ERROR_FILLED(&err, s);
        CHECK(strcmp(err.tensor, "big") == 0);
        CHECK(all_canary(buf, 64));
        CHECK_STATUS(stc_read_tensor_into(f, big, bad[i].off, bad[i].len, buf, NULL),
                     STC_ERR_INVALID_ARGUMENT, NULL);
    }
    /* The first tensor cannot reach into the second either. */
    memset(buf, CANARY, 200);
    CHECK_STATUS(stc_read_tensor_into(f, pad, 50, 51, buf, &err), STC_ERR_INVALID_ARGUMENT,
                 &err);
    CHECK(all_canary(buf, 200));
    /* No buffer: fine for nothing, an error for something. */
    CHECK_OK(stc_read_tensor_into(f, pad, 3, 0, NULL, &err), &err);
    CHECK_STATUS(stc_read_tensor_into(f, pad, 0, 1, NULL, &err), STC_ERR_INVALID_ARGUMENT, &err);
    /* Prefetch is bounded the same way. */
    CHECK_OK(stc_prefetch_tensor(f, big, 0, BIG_LEN, 1, &err), &err);
    CHECK_OK(stc_prefetch_tensor(f, big, 100, 1000, 0, &err), &err);
    CHECK_OK(stc_prefetch_tensor(f, tail, TAIL_LEN, 0, 1, &err), &err);
    CHECK_STATUS(stc_prefetch_tensor(f, tail, 1, TAIL_LEN, 1, &err), STC_ERR_INVALID_ARGUMENT,
                 &err);
    /* After prefetching, the bytes are still the file's. */
    CHECK_OK(stc_read_tensor_into(f, big, 0, BIG_LEN, buf, &err), &err);
    CHECK(memcmp(buf, g_data + PAD_LEN, BIG_LEN) == 0);
    free(buf);
}

/* A tensor descriptor from one file is refused by another, even when a
 * tensor of the same name exists there. */
static void check_foreign_tensor(stc_file *f, stc_file *other) {
    const stc_tensor *theirs = find(other, "big");
    uint8_t buf[16];
    memset(buf, CANARY, sizeof buf);
    stc_error err;
    CHECK(theirs != NULL);
    CHECK_STATUS(stc_read_tensor_into(f, theirs, 0, sizeof buf, buf, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    CHECK(all_canary(buf, sizeof buf));
    CHECK_STATUS(stc_read_tensor_direct(f, theirs, 0, sizeof buf, buf, -1, ALIGN, NULL, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    CHECK_STATUS(stc_prefetch_tensor(f, theirs, 0, 1, 1, &err), STC_ERR_INVALID_ARGUMENT, &err);
    CHECK_STATUS(stc_read_tensor_into(f, NULL, 0, 1, buf, &err), STC_ERR_INVALID_ARGUMENT, &err);
}

/* MARK: - Threads */

typedef struct chunk_job {
    stc_file *file;
    const stc_tensor *tensor;
    uint64_t offset;
    size_t len;
    uint8_t *dst;
    stc_status status;
} chunk_job;

static void *read_chunk(void *arg) {
    chunk_job *job = arg;
    job->status = stc_read_tensor_into(job->file, job->tensor, job->offset, job->len,
                                       job->dst + job->offset, NULL);
    return NULL;
}

/* Eight threads each read an uneven slice of one tensor into one buffer. */
static void check_threads(stc_file *f) {
    enum { THREADS = 8 };
    const stc_tensor *big = find(f, "big");
    uint8_t *buf = malloc(BIG_LEN);
    memset(buf, CANARY, BIG_LEN);
    pthread_t threads[THREADS];
    chunk_job jobs[THREADS];
    uint64_t step = BIG_LEN / THREADS + 13;
    for (int i = 0; i < THREADS; i++) {
        uint64_t begin = (uint64_t)i * step;
        uint64_t end = i == THREADS - 1 ? BIG_LEN : begin + step;
        jobs[i] = (chunk_job){f, big, begin, (size_t)(end - begin), buf, STC_ERR_IO};
        CHECK(pthread_create(&threads[i], NULL, read_chunk, &jobs[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        CHECK(jobs[i].status == STC_OK);
    }
    CHECK(memcmp(buf, g_data + PAD_LEN, BIG_LEN) == 0);
    free(buf);
}

/* MARK: - Direct reads */

/* A buffer whose address at `k` is congruent to `file_offset` modulo ALIGN
 * (or deliberately off by 8 when skew is set). */
static uint8_t *congruent_buffer(void **block, uint64_t file_offset, size_t len, int skew) {
    if (posix_memalign(block, ALIGN, len + 2 * ALIGN) != 0) return NULL;
    size_t shift = (size_t)(file_offset % ALIGN) + (skew ? 8u : 0u);
    return (uint8_t *)*block + shift;
}

static void check_direct(stc_file *pread_file, stc_file *mapped_file, const char *path) {
    const stc_tensor *big = find(pread_file, "big");
    stc_error err;
    int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0) {
        printf("  direct: O_DIRECT refused here (errno %d): only the fallback is checked\n",
               errno);
    }
    uint64_t file_at = stc_data_start(pread_file) + big->begin;
    void *block = NULL;

    /* Congruent buffer: the aligned middle comes through O_DIRECT. */
    uint8_t *dst = congruent_buffer(&block, file_at, BIG_LEN, 0);
    CHECK(dst != NULL);
    memset(dst, CANARY, BIG_LEN + 1);
    size_t direct = 12345;
    CHECK_OK(stc_read_tensor_direct(pread_file, big, 0, BIG_LEN, dst, fd, ALIGN, &direct, &err),
             &err);
    CHECK(memcmp(dst, g_data + PAD_LEN, BIG_LEN) == 0);
    CHECK(dst[BIG_LEN] == CANARY);
    if (fd >= 0) {
        printf("  direct: %zu of %d bytes read with O_DIRECT\n", direct, BIG_LEN);
        CHECK(direct % ALIGN == 0);
        CHECK(direct <= BIG_LEN);
    } else {
        CHECK(direct == 0);
    }
    /* A range that starts and ends off block boundaries. */
    memset(dst, CANARY, BIG_LEN);
    CHECK_OK(stc_read_tensor_direct(pread_file, big, 777, BIG_LEN - 1000, dst + 777, fd, ALIGN,
                                    &direct, &err),
             &err);
    CHECK(memcmp(dst + 777, g_data + PAD_LEN + 777, BIG_LEN - 1000) == 0);
    CHECK(dst[776] == CANARY && dst[777 + BIG_LEN - 1000] == CANARY);
    free(block);

    /* Not congruent: every byte through the page cache, still correct. */
    dst = congruent_buffer(&block, file_at, BIG_LEN, 1);
    CHECK_OK(stc_read_tensor_direct(pread_file, big, 0, BIG_LEN, dst, fd, ALIGN, &direct, &err),
             &err);
    CHECK(direct == 0);
    CHECK(memcmp(dst, g_data + PAD_LEN, BIG_LEN) == 0);
    /* Smaller than a block: no direct part. */
    CHECK_OK(stc_read_tensor_direct(pread_file, big, 5, 100, dst, fd, ALIGN, &direct, &err), &err);
    CHECK(direct == 0);
    CHECK(memcmp(dst, g_data + PAD_LEN + 5, 100) == 0);
    /* The mapped file ignores the descriptor. */
    const stc_tensor *mbig = find(mapped_file, "big");
    CHECK_OK(stc_read_tensor_direct(mapped_file, mbig, 0, BIG_LEN, dst, fd, ALIGN, &direct, &err),
             &err);
    CHECK(direct == 0);
    CHECK(memcmp(dst, g_data + PAD_LEN, BIG_LEN) == 0);
    /* Bad arguments. */
    CHECK_STATUS(stc_read_tensor_direct(pread_file, big, 0, 10, dst, fd, 1000, NULL, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    CHECK_STATUS(stc_read_tensor_direct(pread_file, big, 1, BIG_LEN, dst, fd, ALIGN, NULL, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    /* A descriptor of some other file (here: of another size) is refused. */
    int other = open(path, O_RDONLY | O_CLOEXEC);
    char other_path[700];
    snprintf(other_path, sizeof other_path, "%s.other", path);
    CHECK(write_whole_file(other_path, "tiny", 4) == 0);
    int tiny = open(other_path, O_RDONLY | O_CLOEXEC);
    CHECK(tiny >= 0);
    memset(dst, CANARY, 64);
    CHECK_STATUS(stc_read_tensor_direct(pread_file, big, 0, 64, dst, tiny, ALIGN, NULL, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    CHECK(all_canary(dst, 64));
    /* A buffered descriptor of the same file works as the "direct" one. */
    free(block);
    dst = congruent_buffer(&block, file_at, BIG_LEN, 0);
    CHECK_OK(stc_read_tensor_direct(pread_file, big, 0, BIG_LEN, dst, other, ALIGN, &direct,
                                    &err),
             &err);
    CHECK(direct > 0);
    CHECK(memcmp(dst, g_data + PAD_LEN, BIG_LEN) == 0);
    free(block);
    close(tiny);
    close(other);
    unlink(other_path);
    if (fd >= 0) close(fd);
}

/* A descriptor of a file of the same size and layout but another inode (a
 * twin with other values, then the twin renamed over the path after the
 * file was opened) is refused before a byte is written, for both backends;
 * the opened file still reads its own bytes. */
static void check_direct_identity(stc_file *pread_file, stc_file *mapped_file,
                                  const char *path) {
    printf("  direct: descriptors of another file of the same size\n");
    static uint8_t twin_data[DATA_LEN];
    fill_pattern(twin_data, DATA_LEN, 12);
    image twin = image_make(k_json, sizeof k_json - 1, twin_data, DATA_LEN);
    char twin_path[700];
    snprintf(twin_path, sizeof twin_path, "%s.twin", path);
    CHECK(write_whole_file(twin_path, twin.bytes, twin.len) == 0);
    CHECK((uint64_t)twin.len == stc_file_size(pread_file));
    const stc_tensor *big = find(pread_file, "big");
    const stc_tensor *mbig = find(mapped_file, "big");
    uint64_t file_at = stc_data_start(pread_file) + big->begin;
    void *block = NULL;
    uint8_t *dst = congruent_buffer(&block, file_at, BIG_LEN, 0);
    CHECK(dst != NULL);
    stc_error err;

    int fds[2];
    fds[0] = open(twin_path, O_RDONLY | O_CLOEXEC);
    /* Renamed over the path: opening the path now gives the twin. */
    CHECK(rename(twin_path, path) == 0);
    fds[1] = open(path, O_RDONLY | O_CLOEXEC);
    for (int i = 0; i < 2; i++) {
        CHECK(fds[i] >= 0);
        memset(dst, CANARY, BIG_LEN);
        error_poison(&err);
        CHECK_STATUS(stc_read_tensor_direct(pread_file, big, 0, BIG_LEN, dst, fds[i], ALIGN,
                                            NULL, &err),
                     STC_ERR_FILE_CHANGED, &err);
        CHECK(strstr(err.message, "another file") != NULL);
        CHECK(all_canary(dst, BIG_LEN));
        CHECK_STATUS(stc_read_tensor_direct(mapped_file, mbig, 0, BIG_LEN, dst, fds[i], ALIGN,
                                            NULL, &err),
                     STC_ERR_FILE_CHANGED, &err);
        CHECK(all_canary(dst, BIG_LEN));
        close(fds[i]);
    }
    /* The opened inode is still what both files read. */
    CHECK_OK(stc_read_tensor_direct(pread_file, big, 0, BIG_LEN, dst, -1, ALIGN, NULL, &err),
             &err);
    CHECK(memcmp(dst, g_data + PAD_LEN, BIG_LEN) == 0);
    CHECK_OK(stc_read_tensor_into(mapped_file, mbig, 0, BIG_LEN, dst, &err), &err);
    CHECK(memcmp(dst, g_data + PAD_LEN, BIG_LEN) == 0);
    free(block);
    image_free(&twin);
}

/* MARK: - Groups */

static void run_read_into_tests(void) {
    fill_pattern(g_data, DATA_LEN, 11);
    image img = image_make(k_json, sizeof k_json - 1, g_data, DATA_LEN);
    stc_error err;

    stc_file *mem = NULL;
    CHECK_OK(stc_open_memory(img.bytes, img.len, NULL, &mem, &err), &err);

    char dir[512], path[600];
    scratch_subdir("read_into", dir, sizeof dir);
    path_join(path, sizeof path, dir, "model.safetensors");
    CHECK(write_whole_file(path, img.bytes, img.len) == 0);
    stc_file *mapped = NULL, *preadf = NULL;
    stc_open_options mopt = {.backend = STC_BACKEND_MMAP};
    stc_open_options popt = {.backend = STC_BACKEND_PREAD};
    CHECK_OK(stc_open(path, &mopt, &mapped, &err), &err);
    CHECK_OK(stc_open(path, &popt, &preadf, &err), &err);
    if (!mem || !mapped || !preadf) {
        stc_close(mem);
        stc_close(mapped);
        stc_close(preadf);
        image_free(&img);
        return;
    }

    check_ranges(mem, "memory image");
    check_ranges(mapped, "mmap backend");
    check_ranges(preadf, "pread backend");
    check_foreign_tensor(mapped, preadf);
    check_foreign_tensor(preadf, mem);
    check_threads(mapped);
    check_threads(preadf);
    check_direct(preadf, mapped, path);
    check_direct_identity(preadf, mapped, path);

    stc_close(mem);
    stc_close(mapped);
    stc_close(preadf);
    unlink(path);
    image_free(&img);
}

int main(void) {
    run_read_into_tests();
    dir_remove_tree(scratch_root());
    printf("%s: read into: %lu checks, %lu failed\n", g_failures ? "FAIL" : "OK", g_checks,
           g_failures);
    return g_failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
