/*
 * output.c - atomic file output: write a temporary file beside the target,
 * fsync it, rename it over the target, fsync the directory.
 *
 * Readers of the target therefore see the complete old file or the complete
 * new one, never a mixture, whatever happens to this process; and a file
 * that is mapped by someone (even by the arrays being saved) keeps its old
 * inode and contents until they let go of it.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* sync_file_range */
#endif
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct stc_output {
    const stc_allocator *a;
    int fd;
    uint64_t written;  /* bytes written so far */
    uint64_t flushed;  /* bytes whose write-back has been started */
    uint8_t *pending;  /* small writes gathered here, GATHER_SIZE bytes */
    size_t pending_len;
    char *target;    /* as given */
    char *temporary; /* in the same directory */
    char *directory; /* "." when the target has no slash */
};

/* Data is written in steps of this size, and write-back of each step is
 * started at once, so that the disk works while later tensors are still
 * being copied and the final fsync has little left to do: a durable save
 * costs about max(copy, disk), not their sum. */
#define WRITEBACK_STEP ((uint64_t)32 << 20)

/* Writes smaller than SMALL_WRITE are gathered into one buffer of
 * GATHER_SIZE bytes and handed to the kernel together: a file of 100,000
 * small tensors costs a few hundred write() calls, not 100,000. Larger
 * writes go straight from the caller's memory, after what was gathered
 * before them, so no large tensor is ever copied twice. The buffer stays
 * under malloc's usual mmap threshold (128 KiB): a larger one would be
 * mapped and unmapped by every save, and glibc would raise its threshold. */
#define GATHER_SIZE ((size_t)96 << 10)
#define SMALL_WRITE ((size_t)24 << 10)

static char *copy_string(const stc_allocator *a, const char *s, size_t n) {
    char *c = stc__malloc(a, n + 1);
    if (!c) return NULL;
    memcpy(c, s, n);
    c[n] = '\0';
    return c;
}

static void release(stc_output *o) {
    const stc_allocator *a = o->a;
    stc__free(a, o->target);
    stc__free(a, o->temporary);
    stc__free(a, o->directory);
    stc__free(a, o->pending);
    stc__free(a, o);
}

/* Creates "<dir>/.<name>.<random>.tmp" with O_EXCL, retrying on collision. */
static int create_temporary(stc_output *o, const char *name, size_t name_len, size_t dir_len) {
    size_t cap = dir_len + 1 + 1 + name_len + 1 + 16 + 5 + 1;
    o->temporary = stc__malloc(o->a, cap);
    if (!o->temporary) return ENOMEM;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
                    ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)o;
    for (int attempt = 0; attempt < 100; attempt++) {
        /* splitmix64: a different, well-mixed suffix per attempt */
        seed += UINT64_C(0x9E3779B97F4A7C15);
        uint64_t z = seed;
        z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
        z ^= z >> 31;
        snprintf(o->temporary, cap, "%.*s/.%.*s.%016llx.tmp", (int)dir_len, o->directory,
                 (int)name_len, name, (unsigned long long)z);
        o->fd = open(o->temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (o->fd >= 0) return 0;
        if (errno != EEXIST) return errno;
    }
    return EEXIST;
}

stc_status stc_output_open(const char *path, const stc_allocator *allocator, stc_output **out,
                           stc_error *error) {
    const stc_allocator *a = stc__allocator_or_default(allocator);
    stc_output *o = stc__malloc(a, sizeof *o);
    if (!o)
        return stc__fail(error, STC_ERR_NO_MEMORY, "out of memory", STC_NO_OFFSET, NULL, 0);
    memset(o, 0, sizeof *o);
    o->a = a;
    o->fd = -1;
    size_t len = strlen(path);
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    size_t dir_len = slash ? (size_t)(slash - path) : 1;
    o->target = copy_string(a, path, len);
    o->directory = slash ? copy_string(a, path, dir_len ? dir_len : 1) : copy_string(a, ".", 1);
    if (slash && dir_len == 0) dir_len = 1; /* the root directory "/" */
    o->pending = stc__malloc(a, GATHER_SIZE);
    if (!o->target || !o->directory || !o->pending) {
        release(o);
        return stc__fail(error, STC_ERR_NO_MEMORY, "out of memory", STC_NO_OFFSET, NULL, 0);
    }
    if (*name == '\0') {
        release(o);
        return stc__fail_errno(error, "the target path names a directory", EISDIR);
    }
    int err = create_temporary(o, name, strlen(name), dir_len);
    if (err) {
        release(o);
        if (err == ENOMEM)
            return stc__fail(error, STC_ERR_NO_MEMORY, "out of memory", STC_NO_OFFSET, NULL, 0);
        return stc__fail_errno(error, "cannot create a temporary file beside the target", err);
    }
    /* Saving over an existing file keeps its permission bits. */
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) (void)fchmod(o->fd, sb.st_mode & 07777);
    *out = o;
    return STC_OK;
}

/* Starts write-back of what was written since the last call, in steps. A
 * hint only: failures are ignored, the final fsync reports real errors. */
static void start_writeback(stc_output *o) {
#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
    while (o->written - o->flushed >= WRITEBACK_STEP) {
        (void)sync_file_range(o->fd, (off_t)o->flushed, (off_t)WRITEBACK_STEP,
                              SYNC_FILE_RANGE_WRITE);
        o->flushed += WRITEBACK_STEP;
    }
#else
    (void)o;
#endif
}

/* Hands len bytes to the kernel, retrying short writes and EINTR. */
static stc_status write_all(stc_output *o, const void *data, size_t len, stc_error *error) {
    const char *p = data;
    while (len > 0) {
        size_t chunk = len < WRITEBACK_STEP ? len : (size_t)WRITEBACK_STEP;
        ssize_t n = write(o->fd, p, chunk);
        if (n < 0) {
            if (errno == EINTR) continue;
            return stc__fail_errno(error, "cannot write the file", errno);
        }
        p += n;
        len -= (size_t)n;
        o->written += (uint64_t)n;
        start_writeback(o);
    }
    return STC_OK;
}

static stc_status flush_pending(stc_output *o, stc_error *error) {
    size_t n = o->pending_len;
    o->pending_len = 0; /* after a failure the output is only good for abort */
    return n ? write_all(o, o->pending, n, error) : STC_OK;
}

stc_status stc_output_write(stc_output *o, const void *data, size_t len, stc_error *error) {
    if (len >= SMALL_WRITE) {
        stc_status st = flush_pending(o, error);
        return st != STC_OK ? st : write_all(o, data, len, error);
    }
    if (len > GATHER_SIZE - o->pending_len) {
        stc_status st = flush_pending(o, error);
        if (st != STC_OK) return st;
    }
    memcpy(o->pending + o->pending_len, data, len);
    o->pending_len += len;
    return STC_OK;
}

static stc_status sync_directory(const stc_output *o, stc_error *error) {
    int fd = open(o->directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return stc__fail_errno(error, "cannot open the target's directory", errno);
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    /* Some file systems cannot sync directories; the rename still stands. */
    if (rc != 0 && err != EINVAL && err != ENOTSUP)
        return stc__fail_errno(error, "cannot sync the target's directory", err);
    return STC_OK;
}

stc_status stc_output_commit(stc_output *o, stc_error *error) {
    stc_status st = flush_pending(o, error);
    if (st != STC_OK) goto fail;
    if (fsync(o->fd) != 0) {
        st = stc__fail_errno(error, "cannot flush the file to disk", errno);
        goto fail;
    }
    int rc = close(o->fd);
    o->fd = -1;
    if (rc != 0) {
        st = stc__fail_errno(error, "cannot close the file", errno);
        goto fail;
    }
    if (rename(o->temporary, o->target) != 0) {
        st = stc__fail_errno(error, "cannot move the new file into place", errno);
        goto fail;
    }
    st = sync_directory(o, error);
    release(o);
    return st;
fail:
    stc_output_abort(o);
    return st;
}

void stc_output_abort(stc_output *o) {
    if (!o) return;
    if (o->fd >= 0) close(o->fd);
    if (o->temporary) unlink(o->temporary);
    release(o);
}

stc_status stc_write_file(const char *path, const stc_tensor_spec *specs, size_t count,
                          const void *const *data, const stc_string_pair *metadata,
                          size_t metadata_count, int has_metadata,
                          const stc_allocator *allocator, stc_error *error) {
    stc_plan *plan = NULL;
    stc_output *o = NULL;
    stc_status st = stc_plan_create(specs, count, metadata, metadata_count, has_metadata,
                                    allocator, &plan, error);
    if (st != STC_OK) return st;
    if ((st = stc_output_open(path, allocator, &o, error)) != STC_OK) goto done;
    size_t header_len;
    const uint8_t *header = stc_plan_header(plan, &header_len);
    if ((st = stc_output_write(o, header, header_len, error)) != STC_OK) goto done;
    for (size_t i = 0; i < count; i++) {
        size_t k = stc_plan_order(plan, i);
        uint64_t n = stc_plan_nbytes(plan, k);
        if (n > SIZE_MAX) {
            st = stc__fail(error, STC_ERR_INVALID_ARGUMENT, "tensor too large for memory",
                           STC_NO_OFFSET, specs[k].name, specs[k].name_len);
            goto done;
        }
        if ((st = stc_output_write(o, data[k], (size_t)n, error)) != STC_OK) goto done;
    }
    st = stc_output_commit(o, error);
    o = NULL; /* commit releases the output, on success and on failure */
done:
    stc_output_abort(o);
    stc_plan_free(plan);
    return st;
}
