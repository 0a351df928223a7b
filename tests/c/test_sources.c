/*
 * test_sources.c - the entry points for sources other than a path:
 * stc_open_fd, stc_header_length + stc_open_header; non-regular files
 * refused without blocking; strided reads confined to one tensor.
 */
#include "harness.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char k_header[] =
    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
    "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[16,20]}}";

static image two_tensors(void) {
    uint8_t data[20];
    fill_pattern(data, sizeof data, 7);
    return image_make(k_header, sizeof k_header - 1, data, sizeof data);
}

static void test_open_fd_reads_through_a_duplicate(void) {
    char dir[512], path[600];
    scratch_subdir("open_fd", dir, sizeof dir);
    path_join(path, sizeof path, dir, "m.safetensors");
    image img = two_tensors();
    CHECK(write_whole_file(path, img.bytes, img.len) == 0);
    for (int backend = 0; backend < 2; backend++) {
        int fd = open(path, O_RDONLY);
        CHECK(fd >= 0);
        CHECK(lseek(fd, 3, SEEK_SET) == 3);
        stc_open_options options = {.backend = (stc_backend)backend};
        stc_file *f = NULL;
        stc_error err;
        if (CHECK_OK(stc_open_fd(fd, &options, &f, &err), &err)) {
            CHECK(stc_tensor_count(f) == 2);
            uint8_t got[4];
            const stc_tensor *b = stc_find_tensor(f, "b", 1);
            CHECK(b && CHECK_OK(stc_read(f, b->begin, 4, got, &err), &err));
            CHECK(memcmp(got, img.bytes + img.len - 4, 4) == 0);
            stc_close(f);
        }
        /* Our descriptor is still open and its position untouched. */
        CHECK(lseek(fd, 0, SEEK_CUR) == 3);
        CHECK(close(fd) == 0);
    }
    stc_file *f = NULL;
    stc_error err;
    CHECK_STATUS(stc_open_fd(-1, NULL, &f, &err), STC_ERR_IO, &err);
    CHECK(f == NULL);
    image_free(&img);
    dir_remove_tree(dir);
}

static void test_non_regular_files_are_refused(void) {
    char dir[512], fifo[600];
    scratch_subdir("fifo", dir, sizeof dir);
    path_join(fifo, sizeof fifo, dir, "pipe");
    CHECK(mkfifo(fifo, 0600) == 0);
    stc_file *f = NULL;
    stc_error err;
    /* Would block forever in open(2) without O_NONBLOCK (the harness's
     * alarm ends a hung run). */
    CHECK_STATUS(stc_open(fifo, NULL, &f, &err), STC_ERR_NOT_REGULAR_FILE, &err);
    CHECK(strstr(err.message, "FIFO") != NULL);
    CHECK_STATUS(stc_open("/dev/zero", NULL, &f, &err), STC_ERR_NOT_REGULAR_FILE, &err);
    CHECK(strstr(err.message, "device") != NULL);
    CHECK_STATUS(stc_open(dir, NULL, &f, &err), STC_ERR_IO, &err);
    CHECK(f == NULL);
    unlink(fifo);
    dir_remove_tree(dir);
}

static void test_header_only_files(void) {
    image img = two_tensors();
    stc_error err;
    uint64_t n = 0;
    CHECK_OK(stc_header_length(img.bytes, 8, img.len, NULL, &n, &err), &err);
    CHECK(n == sizeof k_header - 1);
    stc_file *f = NULL;
    if (CHECK_OK(stc_open_header(img.bytes, (size_t)(8 + n), img.len, NULL, &f, &err), &err)) {
        CHECK(stc_tensor_count(f) == 2);
        CHECK(stc_data(f) == NULL);
        CHECK(stc_data_start(f) == 8 + n && stc_file_size(f) == img.len);
        uint8_t got[4];
        CHECK_STATUS(stc_read(f, 0, 4, got, &err), STC_ERR_INVALID_ARGUMENT, &err);
        stc_close(f);
    }
    /* Fewer bytes than the header: refused, nothing read past them. */
    CHECK_STATUS(stc_open_header(img.bytes, (size_t)(8 + n - 1), img.len, NULL, &f, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    /* The size decides truncation, exactly as for files. */
    CHECK_STATUS(stc_open_header(img.bytes, (size_t)(8 + n), img.len - 1, NULL, &f, &err),
                 STC_ERR_TRUNCATED_DATA, &err);
    CHECK_STATUS(stc_open_header(img.bytes, (size_t)(8 + n), img.len + 1, NULL, &f, &err),
                 STC_ERR_TRAILING_DATA, &err);
    /* A header length past the end, or above the cap. */
    CHECK_STATUS(stc_header_length(img.bytes, 8, 8 + n - 1, NULL, &n, &err),
                 STC_ERR_HEADER_LENGTH, &err);
    stc_open_options small = {.max_header_size = 16};
    CHECK_STATUS(stc_header_length(img.bytes, 8, img.len, &small, &n, &err),
                 STC_ERR_HEADER_TOO_LARGE, &err);
    /* Fewer than 8 bytes of a longer file is a caller error, not a read past them. */
    CHECK_STATUS(stc_header_length(img.bytes, 4, img.len, NULL, &n, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    CHECK_STATUS(stc_header_length(img.bytes, 4, 4, NULL, &n, &err), STC_ERR_HEADER_TOO_SMALL,
                 &err);
    static const uint8_t zip[16] = {'P', 'K', 3, 4};
    CHECK_STATUS(stc_header_length(zip, sizeof zip, 1000, NULL, &n, &err),
                 STC_ERR_NOT_SAFETENSORS, &err);
    image_free(&img);
}

static void test_header_only_allocation_failures(void) {
    image img = two_tensors();
    uint64_t n = 0;
    stc_error err;
    CHECK_OK(stc_header_length(img.bytes, 8, img.len, NULL, &n, &err), &err);
    for (size_t k = 1; k < 64; k++) {
        test_alloc a;
        test_alloc_init(&a, k);
        stc_open_options options = {.allocator = &a.base};
        stc_file *f = NULL;
        stc_status st = stc_open_header(img.bytes, (size_t)(8 + n), img.len, &options, &f, &err);
        if (st == STC_OK) {
            stc_close(f);
            CHECK(a.live_blocks == 0);
            break;
        }
        CHECK_STATUS(st, STC_ERR_NO_MEMORY, &err);
        CHECK(a.live_blocks == 0 && a.bad_calls == 0);
    }
    image_free(&img);
}

static void test_strided_reads_stay_inside_their_tensor(void) {
    image img = two_tensors();
    stc_file *f = NULL;
    stc_error err;
    if (!CHECK_OK(stc_open_memory(img.bytes, img.len, NULL, &f, &err), &err)) return;
    const stc_tensor *a = stc_find_tensor(f, "a", 1);
    const stc_tensor *b = stc_find_tensor(f, "b", 1);
    uint64_t shape[1] = {4};
    int64_t strides[1] = {4};
    float out[4];
    /* All of a: fine. */
    CHECK_OK(stc_read_tensor_strided(f, a, 0, 1, shape, strides, 4, out, &err), &err);
    CHECK(memcmp(out, img.bytes + img.len - 20, 16) == 0);
    /* One element more would reach b's bytes: refused for the tensor, while
     * the whole-section read still allows it. */
    uint64_t five[1] = {5};
    float wide[5];
    CHECK_STATUS(stc_read_tensor_strided(f, a, 0, 1, five, strides, 4, wide, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    CHECK_OK(stc_read_strided(f, 0, 1, five, strides, 4, wide, &err), &err);
    uint8_t byte;
    uint64_t one[1] = {1};
    int64_t step[1] = {1};
    CHECK_STATUS(stc_read_tensor_strided(f, b, 4, 1, one, step, 1, &byte, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    CHECK_OK(stc_read_tensor_strided(f, b, 3, 1, one, step, 1, &byte, &err), &err);
    CHECK(byte == img.bytes[img.len - 1]);
    stc_close(f);
    image_free(&img);
}

void run_source_tests(void) {
    test_open_fd_reads_through_a_duplicate();
    test_non_regular_files_are_refused();
    test_header_only_files();
    test_header_only_allocation_failures();
    test_strided_reads_stay_inside_their_tensor();
}
