/*
 * test_backend.c - STC_BACKEND_AUTO: the verdict per file system magic, the
 * resolution at opening on the file systems this machine has, and the one
 * pread loop (stc__pread_full) under it.
 */
#include "harness.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/vfs.h>
#include <unistd.h>

/* MARK: - The pure verdict */

static void test_remote_magics_read_with_pread(void) {
    static const uint64_t remote[] = {
        0x6969,     /* NFS */
        0x517B,     /* SMB */
        0xFF534D42, /* CIFS */
        0xFE534D42, /* SMB2 */
        0x65735546, /* FUSE */
        0x01021997, /* 9p */
        0x00C36400, /* Ceph */
        0x0BD00BD0, /* Lustre */
        0x47504653, /* GPFS */
        0x19830326, /* BeeGFS */
        0x20030528, /* OrangeFS */
        0xAAD7AAEA, /* PanFS */
        0x5346414F, /* AFS */
        0x6B414653, /* kAFS */
        0x73757245, /* Coda */
        0x564C,     /* NCP */
    };
    for (size_t i = 0; i < sizeof remote / sizeof remote[0]; i++)
        CHECK(stc_backend_for_filesystem(remote[i]) == STC_BACKEND_PREAD);
    /* A 32-bit long holds CIFS's magic as a negative number. */
    CHECK(stc_backend_for_filesystem(0xFFFFFFFFFF534D42u) == STC_BACKEND_PREAD);
    CHECK(stc_backend_for_filesystem(0xFFFFFFFFFE534D42u) == STC_BACKEND_PREAD);
}

static void test_local_and_unknown_magics_map(void) {
    static const uint64_t local[] = {
        0xEF53,     /* ext2/3/4 */
        0x01021994, /* tmpfs */
        0x58465342, /* XFS */
        0x9123683E, /* Btrfs */
        0x794C7630, /* overlayfs */
        0x2FC12FC1, /* ZFS */
        0x858458F6, /* ramfs */
        0x65735543, /* fusectl: FUSE's control file system, not a FUSE mount */
        0,
        0x6968,     /* one off NFS */
        0x65735547, /* one off FUSE */
        UINT64_MAX,
    };
    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++)
        CHECK(stc_backend_for_filesystem(local[i]) == STC_BACKEND_MMAP);
}

/* MARK: - Resolution at opening */

static image small_file(void) {
    static const char header[] = "{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}";
    return image_make(header, sizeof header - 1, "abcd", 4);
}

/* Opens path with `backend` through both stc_open and stc_open_fd and checks
 * the backend each got, and that the data reads back either way. */
static void check_opened_as(const char *path, stc_backend backend, stc_backend want) {
    stc_open_options opt = {0};
    opt.backend = backend;
    stc_error err;
    stc_file *f = NULL;
    if (CHECK_OK(stc_open(path, &opt, &f, &err), &err)) {
        CHECK(stc_file_backend(f) == want);
        CHECK(stc_is_mapped(f) == (want == STC_BACKEND_MMAP));
        CHECK((stc_data(f) != NULL) == (want == STC_BACKEND_MMAP));
        char got[4] = {0};
        CHECK_OK(stc_read(f, 0, 4, got, &err), &err);
        CHECK(memcmp(got, "abcd", 4) == 0);
        stc_close(f);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    if (fd < 0) return;
    if (CHECK_OK(stc_open_fd(fd, &opt, &f, &err), &err)) {
        CHECK(stc_file_backend(f) == want);
        stc_close(f);
    }
    close(fd);
}

static void test_auto_follows_the_file_system(void) {
    char dir[512], path[600];
    scratch_subdir("backend_auto", dir, sizeof dir);
    path_join(path, sizeof path, dir, "x.safetensors");
    image img = small_file();
    CHECK(write_whole_file(path, img.bytes, img.len) == 0);
    struct statfs sfs;
    CHECK(statfs(path, &sfs) == 0);
    stc_backend expected = stc_backend_for_filesystem((uint64_t)sfs.f_type);
    check_opened_as(path, STC_BACKEND_AUTO, expected);
    /* An explicit choice is kept, whatever the file system. */
    check_opened_as(path, STC_BACKEND_MMAP, STC_BACKEND_MMAP);
    check_opened_as(path, STC_BACKEND_PREAD, STC_BACKEND_PREAD);
    unlink(path);

    /* tmpfs, where this machine has one: mapped. */
    char shm[128];
    snprintf(shm, sizeof shm, "/dev/shm/stc_backend_%ld.safetensors", (long)getpid());
    if (statfs("/dev/shm", &sfs) == 0 && (uint64_t)sfs.f_type == 0x01021994 &&
        write_whole_file(shm, img.bytes, img.len) == 0) {
        check_opened_as(shm, STC_BACKEND_AUTO, STC_BACKEND_MMAP);
        unlink(shm);
    }
    image_free(&img);
}

static void test_backend_of_images_and_bad_values(void) {
    image img = small_file();
    stc_open_options opt = {0};
    opt.backend = STC_BACKEND_AUTO;
    stc_error err;
    stc_file *f = NULL;
    if (CHECK_OK(stc_open_memory(img.bytes, img.len, &opt, &f, &err), &err)) {
        CHECK(stc_file_backend(f) == STC_BACKEND_MMAP);
        stc_close(f);
    }
    if (CHECK_OK(stc_open_header(img.bytes, img.len, img.len, &opt, &f, &err), &err)) {
        CHECK(stc_file_backend(f) == STC_BACKEND_PREAD);
        stc_close(f);
    }
    char dir[512], path[600];
    scratch_subdir("backend_bad", dir, sizeof dir);
    path_join(path, sizeof path, dir, "x.safetensors");
    CHECK(write_whole_file(path, img.bytes, img.len) == 0);
    opt.backend = (stc_backend)3;
    f = NULL;
    error_poison(&err);
    CHECK_STATUS(stc_open(path, &opt, &f, &err), STC_ERR_INVALID_ARGUMENT, &err);
    CHECK(f == NULL);
    CHECK(strstr(err.message, "unknown backend") != NULL);
    unlink(path);
    image_free(&img);
}

/* MARK: - The pread loop */

static void test_pread_full(void) {
    char dir[512], path[600];
    scratch_subdir("pread_full", dir, sizeof dir);
    path_join(path, sizeof path, dir, "bytes");
    uint8_t bytes[10000];
    fill_pattern(bytes, sizeof bytes, 7);
    CHECK(write_whole_file(path, bytes, sizeof bytes) == 0);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    if (fd < 0) return;
    uint8_t out[10000];
    size_t got = 1;
    CHECK(stc__pread_full(fd, out, sizeof out, 0, &got) == 0);
    CHECK(got == sizeof out && memcmp(out, bytes, sizeof out) == 0);
    /* The file ends first: no error, the count says how far it got. */
    memset(out, 0, sizeof out);
    CHECK(stc__pread_full(fd, out, 5000, 7000, &got) == 0);
    CHECK(got == 3000 && memcmp(out, bytes + 7000, 3000) == 0);
    CHECK(stc__pread_full(fd, out, 100, 20000, &got) == 0);
    CHECK(got == 0);
    got = 1;
    CHECK(stc__pread_full(fd, out, 0, 0, &got) == 0);
    CHECK(got == 0);
    close(fd);
    /* A failed pread returns its errno, and *got is still set. */
    got = 1;
    CHECK(stc__pread_full(fd, out, 10, 0, &got) == EBADF);
    CHECK(got == 0);
    int dfd = open(dir, O_RDONLY | O_CLOEXEC);
    CHECK(dfd >= 0);
    if (dfd >= 0) {
        got = 1;
        CHECK(stc__pread_full(dfd, out, 10, 0, &got) == EISDIR);
        CHECK(got == 0);
        close(dfd);
    }
    unlink(path);
}

void run_backend_tests(void) {
    test_remote_magics_read_with_pread();
    test_local_and_unknown_magics_map();
    test_auto_follows_the_file_system();
    test_backend_of_images_and_bad_values();
    test_pread_full();
}
