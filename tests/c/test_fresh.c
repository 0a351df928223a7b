/*
 * test_fresh.c - reading a mapped file afresh (stc_read_file, stc_map_range,
 * stc_tensor_index) and noticing a file written in place after it was opened
 * (stc_check_unchanged: size and mtime).
 */
#include "harness.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Three tensors; 'b' starts at an offset that is no multiple of a page, and
 * the header length makes the data section itself unaligned. */
static const char k_json[] =
    "{\"c\":{\"dtype\":\"U8\",\"shape\":[5000],\"data_offsets\":[0,5000]},"
    "\"b\":{\"dtype\":\"U8\",\"shape\":[9000],\"data_offsets\":[5000,14000]},"
    "\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[14000,14000]}}";
#define DATA_LEN 14000

static image make_model(uint8_t *data, unsigned seed) {
    fill_pattern(data, DATA_LEN, seed);
    return image_make(k_json, sizeof k_json - 1, data, DATA_LEN);
}

static stc_file *open_path(const char *path, stc_backend backend) {
    stc_open_options opt = {.backend = backend};
    stc_file *f = NULL;
    stc_error err;
    if (!CHECK_OK(stc_open(path, &opt, &f, &err), &err)) return NULL;
    return f;
}

static void set_mtime(const char *path, long long seconds) {
    struct timespec times[2] = {{.tv_sec = (time_t)seconds, .tv_nsec = 0},
                                {.tv_sec = (time_t)seconds, .tv_nsec = 0}};
    CHECK(utimensat(AT_FDCWD, path, times, 0) == 0);
}

/* Overwrites the file's bytes through its inode, keeping its size. */
static void rewrite_in_place(const char *path, const image *img) {
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0);
    if (fd < 0) return;
    CHECK(pwrite(fd, img->bytes, img->len, 0) == (ssize_t)img->len);
    close(fd);
}

/* MARK: - Tensor index */

static void test_tensor_index(void) {
    uint8_t data[DATA_LEN];
    image img = make_model(data, 1);
    stc_file *f = NULL;
    stc_error err;
    if (!CHECK_OK(stc_open_memory(img.bytes, img.len, NULL, &f, &err), &err)) {
        image_free(&img);
        return;
    }
    /* Header order: c, b, a. */
    CHECK(stc_tensor_index(f, stc_find_tensor(f, "c", 1)) == 0);
    CHECK(stc_tensor_index(f, stc_find_tensor(f, "b", 1)) == 1);
    CHECK(stc_tensor_index(f, stc_find_tensor(f, "a", 1)) == 2);
    unsigned seen = 0;
    for (size_t i = 0; i < stc_tensor_count(f); i++) {
        size_t k = stc_tensor_index(f, stc_tensor_by_name_order(f, i));
        CHECK(k < 3);
        seen |= 1u << k;
    }
    CHECK(seen == 7u);
    stc_close(f);
    image_free(&img);
}

/* MARK: - stc_read_file */

static void test_read_file_bypasses_the_mapping(void) {
    char dir[512], path[768];
    scratch_subdir("fresh_read", dir, sizeof dir);
    path_join(path, sizeof path, dir, "m.safetensors");
    uint8_t data[DATA_LEN], buf[DATA_LEN];
    image img = make_model(data, 2);
    CHECK(write_whole_file(path, img.bytes, img.len) == 0);
    stc_error err;

    stc_file *f = open_path(path, STC_BACKEND_MMAP);
    if (f && stc_data_writable(f)) {
        memset(stc_data(f) + 100, 0xAB, 6000); /* the caller writes a view */
        CHECK_OK(stc_read(f, 0, DATA_LEN, buf, &err), &err);
        CHECK(buf[100] == 0xAB && buf[6099] == 0xAB);
        memset(buf, 0, sizeof buf);
        CHECK_OK(stc_read_file(f, 0, DATA_LEN, buf, &err), &err);
        CHECK(memcmp(buf, data, DATA_LEN) == 0);
        CHECK_OK(stc_read_file(f, 5001, 3, buf, &err), &err);
        CHECK(memcmp(buf, data + 5001, 3) == 0);
        CHECK_OK(stc_read_file(f, DATA_LEN, 0, NULL, &err), &err);
        error_poison(&err);
        CHECK_STATUS(stc_read_file(f, DATA_LEN - 2, 3, buf, &err), STC_ERR_INVALID_ARGUMENT,
                     &err);
        CHECK_ERROR_FILLED(&err, STC_ERR_INVALID_ARGUMENT);
        CHECK(truncate(path, (off_t)(img.len - 10)) == 0);
        error_poison(&err);
        CHECK_STATUS(stc_read_file(f, DATA_LEN - 20, 20, buf, &err), STC_ERR_FILE_CHANGED,
                     &err);
        CHECK(write_whole_file(path, img.bytes, img.len) == 0);
    }
    stc_close(f);

    f = open_path(path, STC_BACKEND_PREAD);
    if (f) {
        CHECK_OK(stc_read_file(f, 0, DATA_LEN, buf, &err), &err);
        CHECK(memcmp(buf, data, DATA_LEN) == 0);
    }
    stc_close(f);

    /* Images have no file to read again; header-only files neither. */
    if (CHECK_OK(stc_open_memory(img.bytes, img.len, NULL, &f, &err), &err)) {
        error_poison(&err);
        CHECK_STATUS(stc_read_file(f, 0, 4, buf, &err), STC_ERR_INVALID_ARGUMENT, &err);
        CHECK_ERROR_FILLED(&err, STC_ERR_INVALID_ARGUMENT);
        stc_close(f);
    }
    if (CHECK_OK(stc_open_header(img.bytes, img.len, img.len, NULL, &f, &err), &err)) {
        CHECK_STATUS(stc_read_file(f, 0, 4, buf, &err), STC_ERR_INVALID_ARGUMENT, &err);
        stc_close(f);
    }
    image_free(&img);
    dir_remove_tree(dir);
}

/* MARK: - stc_map_range */

static void test_map_range(void) {
    char dir[512], path[768];
    scratch_subdir("fresh_map", dir, sizeof dir);
    path_join(path, sizeof path, dir, "m.safetensors");
    uint8_t data[DATA_LEN];
    image img = make_model(data, 3);
    CHECK(write_whole_file(path, img.bytes, img.len) == 0);
    stc_error err;

    for (int b = 0; b < 2; b++) {
        stc_file *f = open_path(path, b ? STC_BACKEND_PREAD : STC_BACKEND_MMAP);
        if (!f) continue;
        const stc_tensor *t = stc_find_tensor(f, "b", 1);
        if (!t) {
            stc_close(f);
            continue;
        }
        if (stc_data_writable(f)) memset(stc_data(f) + t->begin, 0, (size_t)t->nbytes);
        stc_region one = {0}, two = {0};
        if (CHECK_OK(stc_map_range(f, t->begin, t->nbytes, &one, &err), &err) &&
            CHECK_OK(stc_map_range(f, t->begin, t->nbytes, &two, &err), &err)) {
            CHECK(one.addr != NULL && one.len >= t->nbytes);
            CHECK(one.data >= (uint8_t *)one.addr &&
                  one.data + t->nbytes <= (uint8_t *)one.addr + one.len);
            /* The file's bytes, not the main mapping's written ones. */
            CHECK(memcmp(one.data, data + t->begin, (size_t)t->nbytes) == 0);
            one.data[0] ^= 0xFF;
            one.data[t->nbytes - 1] ^= 0xFF;
            CHECK(memcmp(two.data, data + t->begin, (size_t)t->nbytes) == 0);
            /* Regions outlive the file. */
            uint64_t begin = t->begin;
            stc_close(f);
            f = NULL;
            CHECK(two.data[5] == data[begin + 5]);
            uint8_t *disk = NULL;
            size_t disk_len = 0;
            CHECK(read_whole_file(path, &disk, &disk_len) == 0);
            CHECK(disk_len == img.len && memcmp(disk, img.bytes, img.len) == 0);
            free(disk);
        }
        stc_unmap_range(&one);
        CHECK(one.addr == NULL && one.len == 0 && one.data == NULL);
        stc_unmap_range(&one); /* twice is harmless */
        stc_unmap_range(&two);
        stc_close(f);
    }
    stc_unmap_range(NULL);

    stc_file *f = open_path(path, STC_BACKEND_MMAP);
    if (f) {
        stc_region r = {0};
        error_poison(&err);
        CHECK_STATUS(stc_map_range(f, 10, 0, &r, &err), STC_ERR_INVALID_ARGUMENT, &err);
        CHECK_ERROR_FILLED(&err, STC_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(stc_map_range(f, DATA_LEN - 1, 2, &r, &err), STC_ERR_INVALID_ARGUMENT,
                     &err);
        CHECK_STATUS(stc_map_range(f, UINT64_MAX, 2, &r, &err), STC_ERR_INVALID_ARGUMENT,
                     &err);
        CHECK(r.addr == NULL); /* untouched on failure */
        if (CHECK_OK(stc_map_range(f, DATA_LEN - 1, 1, &r, &err), &err))
            CHECK(r.data[0] == data[DATA_LEN - 1]);
        stc_unmap_range(&r);
        stc_close(f);
    }
    if (CHECK_OK(stc_open_memory(img.bytes, img.len, NULL, &f, &err), &err)) {
        stc_region r = {0};
        CHECK_STATUS(stc_map_range(f, 0, 4, &r, &err), STC_ERR_INVALID_ARGUMENT, &err);
        stc_close(f);
    }
    image_free(&img);
    dir_remove_tree(dir);
}

/* MARK: - Changes in place */

static void test_changes_in_place(void) {
    char dir[512], path[768], other[768];
    scratch_subdir("fresh_changes", dir, sizeof dir);
    path_join(path, sizeof path, dir, "m.safetensors");
    path_join(other, sizeof other, dir, "other.safetensors");
    uint8_t data[DATA_LEN], data2[DATA_LEN];
    image img = make_model(data, 4);
    image img2 = make_model(data2, 5); /* same size, other bytes */
    stc_error err;

    for (int b = 0; b < 2; b++) {
        stc_backend backend = b ? STC_BACKEND_PREAD : STC_BACKEND_MMAP;
        CHECK(write_whole_file(path, img.bytes, img.len) == 0);
        /* An mtime far in the past: any later write moves it, whatever the
         * granularity of the file system's clock. */
        set_mtime(path, 1000000);
        stc_file *f = open_path(path, backend);
        if (!f) continue;
        CHECK_OK(stc_check_unchanged(f, &err), &err);
        /* Metadata changes that are not writes: harmless (ctime moves). */
        CHECK(chmod(path, 0600) == 0);
        CHECK_OK(stc_check_unchanged(f, &err), &err);
        rewrite_in_place(path, &img2);
        if (backend == STC_BACKEND_MMAP) {
            error_poison(&err);
            CHECK_STATUS(stc_check_unchanged(f, &err), STC_ERR_FILE_CHANGED, &err);
            CHECK_ERROR_FILLED(&err, STC_ERR_FILE_CHANGED);
            CHECK(strstr(err.message, "modified on disk after it was opened") != NULL);
            /* The documented limit: a writer that puts the mtime back is
             * not seen. */
            set_mtime(path, 1000000);
            CHECK_OK(stc_check_unchanged(f, &err), &err);
        } else {
            CHECK_OK(stc_check_unchanged(f, &err), &err); /* only mapped files */
        }
        stc_close(f);

        /* A rename over the path (an atomic save) leaves the open file as it
         * was: its inode is unlinked, nothing else changes. */
        CHECK(write_whole_file(path, img.bytes, img.len) == 0);
        f = open_path(path, backend);
        if (!f) continue;
        CHECK(write_whole_file(other, img2.bytes, img2.len) == 0);
        CHECK(rename(other, path) == 0);
        CHECK_OK(stc_check_unchanged(f, &err), &err);
        uint8_t buf[16];
        CHECK_OK(stc_read_file(f, 0, sizeof buf, buf, &err), &err);
        CHECK(memcmp(buf, data, sizeof buf) == 0);
        CHECK(unlink(path) == 0); /* the last link gone: still harmless */
        CHECK_OK(stc_check_unchanged(f, &err), &err);
        stc_close(f);
    }
    image_free(&img);
    image_free(&img2);
    dir_remove_tree(dir);
}

void run_fresh_tests(void) {
    test_tensor_index();
    test_read_file_bypasses_the_mapping();
    test_map_range();
    test_changes_in_place();
}
