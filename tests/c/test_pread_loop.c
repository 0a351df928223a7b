/*
 * test_pread_loop.c - the core's reads against the descriptors network and
 * FUSE file systems give: reads interrupted by signals (EINTR), reads that
 * return fewer bytes than asked, and a read that fails part way. A local
 * disk does none of these, so this binary is linked with
 * -Wl,--wrap=pread,--wrap=preadv: every pread of the one pread loop
 * (stc__pread_full) and every preadv of the batch's gathered reads goes
 * through a wrapper below, which misbehaves as the test asks and otherwise
 * reads for real. It has its own main, so that no other test runs under the
 * wrappers. (GNU ld and lld only: the Makefile skips it where the linker has
 * no --wrap.)
 */
#include "harness.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(_FILE_OFFSET_BITS) && _FILE_OFFSET_BITS == 64
/* glibc then renames pread to pread64, which the wrapper would miss. */
#error "test_pread_loop wraps pread and preadv: build it without _FILE_OFFSET_BITS=64"
#endif

ssize_t __real_pread(int fd, void *buf, size_t count, off_t offset);
ssize_t __wrap_pread(int fd, void *buf, size_t count, off_t offset);
ssize_t __real_preadv(int fd, const struct iovec *iov, int iovcnt, off_t offset);
ssize_t __wrap_preadv(int fd, const struct iovec *iov, int iovcnt, off_t offset);

/* MARK: - The misbehaving pread */

static struct {
    int interrupt_every;   /* calls 1, n + 1, 2n + 1, ... fail with EINTR; 0 = never */
    size_t max_bytes;      /* a call returns at most this many bytes; 0 = no cap */
    uint64_t fail_at;      /* a call reaching this file offset fails with EIO; 0 = never */
    unsigned long calls;
    unsigned long interrupts;
    unsigned long gathered; /* preadv calls */
} g_wrap;

static void wrap_reset(int interrupt_every, size_t max_bytes, uint64_t fail_at) {
    memset(&g_wrap, 0, sizeof g_wrap);
    g_wrap.interrupt_every = interrupt_every;
    g_wrap.max_bytes = max_bytes;
    g_wrap.fail_at = fail_at;
}

ssize_t __wrap_pread(int fd, void *buf, size_t count, off_t offset) {
    g_wrap.calls++;
    if (g_wrap.interrupt_every && (g_wrap.calls - 1) % (unsigned long)g_wrap.interrupt_every == 0) {
        g_wrap.interrupts++;
        errno = EINTR;
        return -1;
    }
    if (g_wrap.fail_at) {
        if ((uint64_t)offset >= g_wrap.fail_at) {
            errno = EIO;
            return -1;
        }
        if ((uint64_t)offset + count > g_wrap.fail_at)
            count = (size_t)(g_wrap.fail_at - (uint64_t)offset);
    }
    if (g_wrap.max_bytes && count > g_wrap.max_bytes) count = g_wrap.max_bytes;
    return __real_pread(fd, buf, count, offset);
}

/* The same misbehaviour for a gathered read: interrupted on the same
 * schedule, and short (only the first buffer, capped) whenever reads are
 * capped or a failure lies ahead. */
ssize_t __wrap_preadv(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    g_wrap.gathered++;
    if (g_wrap.max_bytes || g_wrap.fail_at || g_wrap.interrupt_every) {
        if (iovcnt < 1) return 0;
        return __wrap_pread(fd, iov[0].iov_base, iov[0].iov_len, offset);
    }
    return __real_preadv(fd, iov, iovcnt, offset);
}

/* MARK: - A file to read */

enum { FILE_LEN = 70001 };

static uint8_t g_bytes[FILE_LEN];

static void fill_bytes(void) {
    uint32_t x = 12345u;
    for (size_t i = 0; i < FILE_LEN; i++) {
        x = x * 1664525u + 1013904223u;
        g_bytes[i] = (uint8_t)(x >> 24);
    }
}

static int open_scratch(const char *name, const void *bytes, size_t len) {
    char dir[4096], path[4096];
    scratch_subdir(name, dir, sizeof dir);
    path_join(path, sizeof path, dir, "f.bin");
    CHECK(write_whole_file(path, bytes, len) == 0);
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    return fd;
}

/* MARK: - The loop itself */

static void test_interrupts_and_short_reads_still_read_everything(int fd) {
    static const struct {
        int interrupt_every;
        size_t max_bytes;
    } cases[] = {{2, 1}, {2, 7}, {3, 4093}, {1000, 1}, {2, 0}, {0, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        static uint8_t out[FILE_LEN];
        memset(out, 0xA5, sizeof out);
        wrap_reset(cases[c].interrupt_every, cases[c].max_bytes, 0);
        size_t got = 0;
        int e = stc__pread_full(fd, out + 1, FILE_LEN - 1, 1, &got);
        CHECK(e == 0);
        CHECK(got == FILE_LEN - 1);
        CHECK(memcmp(out + 1, g_bytes + 1, FILE_LEN - 1) == 0);
        CHECK(out[0] == 0xA5); /* nothing written before dst */
        if (cases[c].interrupt_every) CHECK(g_wrap.interrupts > 0);
    }
}

static void test_a_failure_part_way_reports_what_arrived(int fd) {
    static uint8_t out[FILE_LEN];
    wrap_reset(2, 1000, 5000);
    size_t got = 12345;
    int e = stc__pread_full(fd, out, FILE_LEN, 0, &got);
    CHECK(e == EIO);
    CHECK(got == 5000);
    CHECK(memcmp(out, g_bytes, 5000) == 0);
}

static void test_end_of_file_is_a_short_count_not_an_error(int fd) {
    static uint8_t out[FILE_LEN];
    wrap_reset(2, 999, 0);
    size_t got = 0;
    int e = stc__pread_full(fd, out, 5000, FILE_LEN - 100, &got);
    CHECK(e == 0);
    CHECK(got == 100);
    CHECK(memcmp(out, g_bytes + FILE_LEN - 100, 100) == 0);
}

/* MARK: - Through the public API */

/* A safetensors file of one U8 tensor holding g_bytes. */
static size_t build_file(uint8_t *out, size_t cap) {
    char header[256];
    int n = snprintf(header, sizeof header,
                     "{\"t\":{\"dtype\":\"U8\",\"shape\":[%d],\"data_offsets\":[0,%d]},"
                     "\"__metadata__\":{\"note\":\"read one byte at a time\"}}",
                     FILE_LEN, FILE_LEN);
    CHECK(n > 0 && (size_t)n < sizeof header);
    size_t len = 8 + (size_t)n + FILE_LEN;
    CHECK(len <= cap);
    uint64_t hl = (uint64_t)n;
    for (int i = 0; i < 8; i++) out[i] = (uint8_t)(hl >> (8 * i));
    memcpy(out + 8, header, (size_t)n);
    memcpy(out + 8 + n, g_bytes, FILE_LEN);
    return len;
}

static void test_open_and_read_one_byte_at_a_time_between_signals(void) {
    static uint8_t file_bytes[FILE_LEN + 512];
    size_t len = build_file(file_bytes, sizeof file_bytes);
    int fd = open_scratch("pread_api", file_bytes, len);
    stc_open_options options = {0};
    options.backend = STC_BACKEND_PREAD;
    wrap_reset(2, 1, 0);
    stc_file *f = NULL;
    stc_error err;
    CHECK_OK(stc_open_fd(fd, &options, &f, &err), &err);
    if (f) {
        const stc_tensor *t = stc_find_tensor(f, "t", 1);
        CHECK(t != NULL);
        static uint8_t out[FILE_LEN];
        if (t) {
            CHECK_OK(stc_read(f, t->begin, (size_t)t->nbytes, out, &err), &err);
            CHECK(memcmp(out, g_bytes, FILE_LEN) == 0);
        }
        CHECK(g_wrap.interrupts > 0);
        /* A failure part way through a tensor is an I/O error naming errno. */
        wrap_reset(0, 0, stc_data_start(f) + 1000);
        if (t) {
            stc_status s = stc_read(f, t->begin, (size_t)t->nbytes, out, &err);
            CHECK_STATUS(s, STC_ERR_IO, &err);
            CHECK(err.sys_errno == EIO);
        }
        stc_close(f);
    }
    close(fd);
}

/* MARK: - The batch's gathered reads */

enum { SMALL = 8, SMALL_LEN = 100 };

/* SMALL U8 tensors of SMALL_LEN bytes each, one after the other: a batch of
 * them is read with one gathered preadv when nothing goes wrong. */
static size_t build_small_tensors(uint8_t *out, size_t cap) {
    char header[1024];
    size_t n = 0;
    n += (size_t)snprintf(header + n, sizeof header - n, "{");
    for (int i = 0; i < SMALL; i++)
        n += (size_t)snprintf(header + n, sizeof header - n,
                              "%s\"t%d\":{\"dtype\":\"U8\",\"shape\":[%d],"
                              "\"data_offsets\":[%d,%d]}",
                              i ? "," : "", i, SMALL_LEN, i * SMALL_LEN, (i + 1) * SMALL_LEN);
    n += (size_t)snprintf(header + n, sizeof header - n, "}");
    CHECK(n < sizeof header);
    size_t len = 8 + n + SMALL * SMALL_LEN;
    CHECK(len <= cap);
    for (int i = 0; i < 8; i++) out[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(out + 8, header, n);
    memcpy(out + 8 + n, g_bytes, SMALL * SMALL_LEN);
    return len;
}

static stc_status read_small_batch(stc_file *f, uint8_t *out, stc_error *err) {
    stc_copy copies[SMALL];
    for (int i = 0; i < SMALL; i++) {
        char name[8];
        snprintf(name, sizeof name, "t%d", i);
        copies[i] = (stc_copy){stc_find_tensor(f, name, strlen(name)), 0, SMALL_LEN,
                               out + i * SMALL_LEN, 0};
    }
    stc_batch_options options = {0};
    options.direct_fd = -1;
    return stc_read_batch(f, copies, SMALL, &options, NULL, err);
}

static void test_a_gathered_read_gone_wrong_falls_back_to_the_loop(void) {
    static uint8_t file_bytes[SMALL * SMALL_LEN + 1024];
    size_t len = build_small_tensors(file_bytes, sizeof file_bytes);
    int fd = open_scratch("pread_batch", file_bytes, len);
    stc_open_options options = {0};
    options.backend = STC_BACKEND_PREAD;
    stc_file *f = NULL;
    stc_error err;
    wrap_reset(0, 0, 0);
    CHECK_OK(stc_open_fd(fd, &options, &f, &err), &err);
    if (f == NULL) {
        close(fd);
        return;
    }
    static uint8_t out[SMALL * SMALL_LEN];
    /* As it goes: one gathered read. */
    wrap_reset(0, 0, 0);
    memset(out, 0, sizeof out);
    CHECK_OK(read_small_batch(f, out, &err), &err);
    CHECK(memcmp(out, g_bytes, sizeof out) == 0);
    CHECK(g_wrap.gathered == 1);
    /* Interrupted, or short: the copies are read again one by one. */
    static const struct {
        int interrupt_every;
        size_t max_bytes;
    } cases[] = {{1000, 0}, {0, 7}, {2, 3}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        wrap_reset(cases[c].interrupt_every, cases[c].max_bytes, 0);
        memset(out, 0, sizeof out);
        CHECK_OK(read_small_batch(f, out, &err), &err);
        CHECK(memcmp(out, g_bytes, sizeof out) == 0);
        CHECK(g_wrap.gathered >= 1);
    }
    /* A failure part way: STC_ERR_IO naming errno, from the loop. */
    wrap_reset(0, 0, stc_data_start(f) + 3 * SMALL_LEN + 10);
    CHECK_STATUS(read_small_batch(f, out, &err), STC_ERR_IO, &err);
    CHECK(err.sys_errno == EIO);
    CHECK(memcmp(out, g_bytes, 3 * SMALL_LEN) == 0); /* what came before is in place */
    stc_close(f);
    close(fd);
}

int main(void) {
    fill_bytes();
    int fd = open_scratch("pread_loop", g_bytes, FILE_LEN);
    test_interrupts_and_short_reads_still_read_everything(fd);
    test_a_failure_part_way_reports_what_arrived(fd);
    test_end_of_file_is_a_short_count_not_an_error(fd);
    close(fd);
    test_open_and_read_one_byte_at_a_time_between_signals();
    test_a_gathered_read_gone_wrong_falls_back_to_the_loop();
    dir_remove_tree(scratch_root());
    printf("%s: pread loop: %lu checks, %lu failed\n", g_failures ? "FAIL" : "OK", g_checks,
           g_failures);
    return g_failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
