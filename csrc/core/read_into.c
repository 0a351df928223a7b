/*
 * read_into.c - copying one tensor's bytes (or a range of them) straight
 * into memory the caller owns, and asking the system to bring a tensor's
 * pages in ahead of use.
 *
 * Everything here is bounded by one tensor: a range that leaves the tensor
 * is refused, so no caller can reach a neighbour's bytes through these
 * functions, whatever offset it passes.
 */
#if !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1 /* O_DIRECT and the MADV_* advice live behind it */
#endif

#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* MARK: - Bounds */

/* Checks that tensor belongs to file and that [byte_offset, byte_offset +
 * len) lies inside it. */
static stc_status check_range(const stc_file *file, const stc_tensor *tensor,
                              uint64_t byte_offset, size_t len, stc_error *error) {
    if (!file || !tensor || stc_find_tensor(file, tensor->name, tensor->name_len) != tensor)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "the tensor is not one of this file's",
                         STC_NO_OFFSET, NULL, 0);
    if (byte_offset > tensor->nbytes || (uint64_t)len > tensor->nbytes - byte_offset)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                         "the byte range leaves the tensor", STC_NO_OFFSET, tensor->name,
                         tensor->name_len);
    return STC_OK;
}

/* MARK: - Buffered and mapped reads */

stc_status stc_read_tensor_into(const stc_file *file, const stc_tensor *tensor,
                                uint64_t byte_offset, size_t len, void *dst,
                                stc_error *error) {
    stc_status st = check_range(file, tensor, byte_offset, len, error);
    if (st != STC_OK) return st;
    if (len == 0) return STC_OK;
    if (!dst)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "no destination buffer",
                         STC_NO_OFFSET, tensor->name, tensor->name_len);
    return stc_read(file, tensor->begin + byte_offset, len, dst, error);
}

/* MARK: - Direct reads */

/* pread that retries EINTR and short reads. Returns 0, or the errno of the
 * failure; *got counts the bytes read before the file ended or it failed. */
static int pread_all(int fd, uint8_t *dst, size_t len, uint64_t offset, size_t *got) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, dst + done, len - done, (off_t)(offset + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            *got = done;
            return errno;
        }
        if (n == 0) break;
        done += (size_t)n;
    }
    *got = done;
    return 0;
}

/* A descriptor of some other file would read foreign bytes: the caller's
 * descriptor must be the very file that was opened (same device and inode),
 * not merely one of the same size, e.g. the file another process renamed
 * over the path after it was opened. A memory image has no descriptor to
 * compare with and never reads through direct_fd: the size check only. */
static stc_status check_same_file(const stc_file *file, int direct_fd, stc_error *error) {
    struct stat sb;
    if (fstat(direct_fd, &sb) != 0)
        return stc__fail_errno(error, "cannot stat the direct descriptor", errno);
    if (!S_ISREG(sb.st_mode) || (uint64_t)sb.st_size != stc_file_size(file))
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                         "the direct descriptor is not a file of the opened file's size",
                         STC_NO_OFFSET, NULL, 0);
    int own_fd = stc__file_fd(file);
    if (own_fd < 0) return STC_OK;
    struct stat own;
    if (fstat(own_fd, &own) != 0) return stc__fail_errno(error, "cannot stat the file", errno);
    if (sb.st_dev != own.st_dev || sb.st_ino != own.st_ino)
        return stc__fail(error, STC_ERR_FILE_CHANGED,
                         "the direct descriptor is of another file than the one opened (was "
                         "the file replaced on disk?); reopen both",
                         STC_NO_OFFSET, NULL, 0);
    return STC_OK;
}

stc_status stc_read_tensor_direct(const stc_file *file, const stc_tensor *tensor,
                                  uint64_t byte_offset, size_t len, void *dst, int direct_fd,
                                  size_t align, size_t *direct_bytes, stc_error *error) {
    if (direct_bytes) *direct_bytes = 0;
    stc_status st = check_range(file, tensor, byte_offset, len, error);
    if (st != STC_OK) return st;
    if (len == 0) return STC_OK;
    if (!dst)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "no destination buffer",
                         STC_NO_OFFSET, tensor->name, tensor->name_len);
    if (align == 0 || (align & (align - 1)) != 0)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                         "the alignment must be a power of two", STC_NO_OFFSET, NULL, 0);
    if (direct_fd >= 0 && (st = check_same_file(file, direct_fd, error)) != STC_OK) return st;
    uint8_t *out = dst;
    uint64_t at = tensor->begin + byte_offset; /* relative to the data section */
    uint64_t file_at = stc_data_start(file) + at;
    /* O_DIRECT moves whole aligned blocks from the device into the caller's
     * memory: the file offset, the address and the length must all be
     * multiples of `align`. That holds for the middle of the range exactly
     * when the address and the file offset agree modulo align; otherwise
     * (or when the middle is empty) every byte goes through the page cache. */
    size_t head = (size_t)((align - (file_at & (align - 1))) & (align - 1));
    size_t middle = len > head ? ((len - head) / align) * align : 0;
    if (direct_fd < 0 || stc_data(file) != NULL || middle == 0 ||
        (((uintptr_t)out + head) & (align - 1)) != 0)
        return stc_read(file, at, len, dst, error);

    if (head && (st = stc_read(file, at, head, out, error)) != STC_OK) return st;
    size_t got = 0;
    int err = pread_all(direct_fd, out + head, middle, file_at + head, &got);
    /* Some file systems accept O_DIRECT at open and refuse the read (EINVAL):
     * the rest of the range, and anything a short read left, is read through
     * the page cache instead. Only whole blocks are kept from a short read. */
    if (err != 0 && err != EINVAL)
        return stc__fail_errno(error, "cannot read tensor data", err);
    got -= got % align;
    if (direct_bytes) *direct_bytes = got;
    size_t rest = head + got;
    if (rest < len) return stc_read(file, at + rest, len - rest, out + rest, error);
    return STC_OK;
}

/* MARK: - Read-ahead */

stc_status stc_prefetch_tensor(const stc_file *file, const stc_tensor *tensor,
                               uint64_t byte_offset, size_t len, int populate,
                               stc_error *error) {
    stc_status st = check_range(file, tensor, byte_offset, len, error);
    if (st != STC_OK) return st;
    uint8_t *data = stc_data(file);
    if (len == 0 || !data || !stc_is_mapped(file)) return STC_OK;
    long page_size = sysconf(_SC_PAGESIZE);
    uintptr_t page = page_size > 0 ? (uintptr_t)page_size : 4096u;
    uintptr_t begin = (uintptr_t)(data + tensor->begin + byte_offset);
    uintptr_t end = begin + len;
    begin &= ~(page - 1);
    void *addr = (void *)begin;
    size_t span = (size_t)(end - begin);
    /* Advice is a hint: a kernel that does not know it, or refuses it, leaves
     * the pages to be faulted in on first touch, which is still correct. */
#ifdef MADV_POPULATE_READ
    if (populate && madvise(addr, span, MADV_POPULATE_READ) == 0) return STC_OK;
#else
    (void)populate;
#endif
#ifdef MADV_WILLNEED
    (void)madvise(addr, span, MADV_WILLNEED);
#endif
    return STC_OK;
}
