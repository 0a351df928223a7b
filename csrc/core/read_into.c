/*
 * read_into.c - copying one tensor's bytes (or a range of them) straight
 * into memory the caller owns, and asking the system to bring a tensor's
 * pages in ahead of use.
 *
 * Everything here is bounded by one tensor: a range that leaves the tensor
 * is refused, so no caller can reach a neighbour's bytes through these
 * functions, whatever offset it passes. A batch (stc_read_batch) is many
 * such copies, all checked first, then run on the core's own threads.
 */
#if !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1 /* O_DIRECT and the MADV_* advice live behind it */
#endif

#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
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

/* check_range, and a destination for a range that is not empty. */
static stc_status check_copy(const stc_file *file, const stc_tensor *tensor,
                             uint64_t byte_offset, size_t len, const void *dst,
                             stc_error *error) {
    stc_status st = check_range(file, tensor, byte_offset, len, error);
    if (st != STC_OK || len == 0 || dst) return st;
    return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "no destination buffer", STC_NO_OFFSET,
                     tensor->name, tensor->name_len);
}

/* MARK: - Buffered and mapped reads */

stc_status stc_read_tensor_into(const stc_file *file, const stc_tensor *tensor,
                                uint64_t byte_offset, size_t len, void *dst,
                                stc_error *error) {
    stc_status st = check_copy(file, tensor, byte_offset, len, dst, error);
    if (st != STC_OK || len == 0) return st;
    return stc_read(file, tensor->begin + byte_offset, len, dst, error);
}

/* MARK: - Direct reads */

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

/* The direct read of a range already checked (check_range, and
 * check_same_file when direct_fd >= 0). */
static stc_status read_direct(const stc_file *file, const stc_tensor *tensor,
                              uint64_t byte_offset, size_t len, void *dst, int direct_fd,
                              size_t align, size_t *direct_bytes, stc_error *error) {
    stc_status st;
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
    int err = stc__pread_full(direct_fd, out + head, middle, file_at + head, &got);
    /* Some file systems accept O_DIRECT at open and refuse the read (EINVAL):
     * the rest of the range, and anything a short read left, is read through
     * the page cache instead. Only whole blocks are kept from a short read. */
    if (err != 0 && err != EINVAL)
        return stc__fail_errno(error, "cannot read tensor data", err);
    got -= got % align;
    if (direct_bytes) *direct_bytes += got;
    size_t rest = head + got;
    if (rest < len) return stc_read(file, at + rest, len - rest, out + rest, error);
    return STC_OK;
}

static int is_power_of_two(size_t n) { return n != 0 && (n & (n - 1)) == 0; }

stc_status stc_read_tensor_direct(const stc_file *file, const stc_tensor *tensor,
                                  uint64_t byte_offset, size_t len, void *dst, int direct_fd,
                                  size_t align, size_t *direct_bytes, stc_error *error) {
    if (direct_bytes) *direct_bytes = 0;
    stc_status st = check_copy(file, tensor, byte_offset, len, dst, error);
    if (st != STC_OK || len == 0) return st;
    if (!is_power_of_two(align))
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                         "the alignment must be a power of two", STC_NO_OFFSET, NULL, 0);
    if (direct_fd >= 0 && (st = check_same_file(file, direct_fd, error)) != STC_OK) return st;
    return read_direct(file, tensor, byte_offset, len, dst, direct_fd, align, direct_bytes,
                       error);
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

/* MARK: - Batches */

/* Each claim hands a worker at most `chunk` bytes: a run of whole (rest of)
 * copies, or one slice of a copy larger than that. Workers share one cursor
 * under a mutex; with many small copies a claim takes many of them, so the
 * lock is taken about total / chunk times, not once per copy. */
typedef struct {
    const stc_file *file;
    const stc_copy *copies;
    size_t count;
    const stc_batch_options *options;
    size_t chunk;
    size_t page;
    int fd; /* for posix_fadvise; -1 for memory images */
    pthread_mutex_t lock;
    size_t next;          /* cursor: the copy ... */
    uint64_t next_offset; /* ... and the byte in it where the next claim starts */
    int failed;
    stc_status status;
    stc_error error;
} batch;

typedef struct {
    size_t first, last;           /* copies first..last (inclusive) */
    uint64_t first_offset;        /* where in copies[first] the claim starts */
    uint64_t last_end;            /* where in copies[last] it ends */
} claim;

/* Where a copy's byte `offset` lies in the file. */
static uint64_t file_offset(const batch *b, const stc_copy *c, uint64_t offset) {
    return stc_data_start(b->file) + c->tensor->begin + c->byte_offset + offset;
}

/* The end of a slice of at most b->chunk bytes from `offset` of copy c, cut
 * where the file offset is a multiple of 4096 (pages, the usual O_DIRECT
 * block) when that leaves the slice non-empty. */
static uint64_t slice_end(const batch *b, const stc_copy *c, uint64_t offset) {
    uint64_t end = offset + b->chunk;
    if (end >= c->len) return c->len;
    uint64_t misalign = file_offset(b, c, end) % 4096u;
    if (end - offset > misalign) end -= misalign;
    return end;
}

/* Takes the next claim; 0 when nothing is left or a copy failed. */
static int take_claim(batch *b, claim *out) {
    int got = 0;
    pthread_mutex_lock(&b->lock);
    while (!b->failed && b->next < b->count && b->copies[b->next].len == 0) b->next++;
    if (!b->failed && b->next < b->count) {
        const stc_copy *c = &b->copies[b->next];
        out->first = out->last = b->next;
        out->first_offset = b->next_offset;
        if (c->len - b->next_offset > b->chunk) { /* a slice of a large copy */
            out->last_end = slice_end(b, c, b->next_offset);
            b->next_offset = out->last_end;
        } else { /* whole copies while they fit */
            uint64_t taken = c->len - b->next_offset;
            out->last_end = c->len;
            b->next++;
            b->next_offset = 0;
            while (b->next < b->count && taken + b->copies[b->next].len <= b->chunk) {
                taken += b->copies[b->next].len;
                out->last = b->next;
                out->last_end = b->copies[b->next].len;
                b->next++;
            }
        }
        got = 1;
    }
    pthread_mutex_unlock(&b->lock);
    return got;
}

static void record_failure(batch *b, stc_status status, const stc_error *error) {
    pthread_mutex_lock(&b->lock);
    if (!b->failed) {
        b->failed = 1;
        b->status = status;
        b->error = *error;
    }
    pthread_mutex_unlock(&b->lock);
}

/* Drops the whole pages of file bytes [begin, end) from the page cache.
 * Pages that straddle the ends may hold bytes another claim has not read
 * yet: they are dropped too (that claim reads them from storage again; the
 * bytes are the same), so no page of the batch stays behind. A hint: the
 * result is not checked. */
static void drop_pages(const batch *b, uint64_t begin, uint64_t end) {
    if (b->fd < 0 || end <= begin) return;
    begin -= begin % b->page;
    end += (b->page - end % b->page) % b->page;
#if defined(POSIX_FADV_DONTNEED)
    (void)posix_fadvise(b->fd, (off_t)begin, (off_t)(end - begin), POSIX_FADV_DONTNEED);
#endif
}

/* Copies bytes [offset, end) of copy c. */
static stc_status copy_range(batch *b, const stc_copy *c, uint64_t offset, uint64_t end,
                             size_t *direct_bytes, stc_error *error) {
    const stc_batch_options *o = b->options;
    uint8_t *dst = (uint8_t *)c->dst + offset;
    uint64_t at = c->tensor->begin + c->byte_offset + offset;
    size_t len = (size_t)(end - offset);
    /* Read the file, not the mapping, where the mapping may hold a caller's
     * writes (from_file), and where reading through it would map the pages
     * into this process, which keeps them cached whatever fadvise says. */
    if ((c->from_file || o->drop_cache) && b->fd >= 0)
        return stc_read_file(b->file, at, len, dst, error);
    if (o->direct_fd >= 0)
        return read_direct(b->file, c->tensor, c->byte_offset + offset, len, dst, o->direct_fd,
                           o->align ? o->align : 4096u, direct_bytes, error);
    return stc_read(b->file, at, len, dst, error);
}

/* Small copies that lie next to each other in the file are read with one
 * preadv, straight into their destinations: one system call for up to
 * GATHER_MAX of them instead of one each. A gap of at most GAP_MAX bytes
 * between two (alignment padding) is read into a scratch buffer. */
#define GATHER_MAX 256
#define GAP_MAX 4096

/* Whether copy c is read from the file with pread rather than copied from
 * memory or read through the direct descriptor. */
static int reads_file(const batch *b, const stc_copy *c) {
    if (b->fd < 0 || b->options->direct_fd >= 0) return 0;
    return stc_data(b->file) == NULL || c->from_file || b->options->drop_cache;
}

/* Reads whole copies first, first + 1, ... (at most up to last) that follow
 * each other in the file with one preadv. Returns how many it read; 0 when
 * fewer than two could be gathered or the read came up short (the caller
 * then copies them one by one, which reports any error properly and
 * rewrites whatever the short read left). */
static size_t read_gathered(const batch *b, size_t first, size_t last, uint8_t *scratch) {
    struct iovec iov[2 * GATHER_MAX];
    int n_iov = 0;
    size_t count = 0;
    uint64_t start = file_offset(b, &b->copies[first], 0), end = start;
    for (size_t i = first; i <= last && count < GATHER_MAX; i++, count++) {
        const stc_copy *c = &b->copies[i];
        if (c->len == 0) continue;
        uint64_t at = file_offset(b, c, 0);
        if (!reads_file(b, c) || at < end || at - end > GAP_MAX) break;
        if (at > end) iov[n_iov++] = (struct iovec){scratch, (size_t)(at - end)};
        iov[n_iov++] = (struct iovec){c->dst, c->len};
        end = at + c->len;
    }
    if (count < 2 || end == start) return 0;
    ssize_t got = preadv(b->fd, iov, n_iov, (off_t)start);
    if (got < 0 || (uint64_t)got != end - start) return 0;
    return count;
}

/* File bytes already copied, gathered into runs for drop_pages. */
typedef struct {
    int open;
    uint64_t begin, end;
} span_run;

static void note_copied(const batch *b, span_run *run, uint64_t begin, uint64_t end) {
    if (!b->options->drop_cache || end <= begin) return;
    if (run->open && begin >= run->begin && begin <= run->end + b->page) {
        if (end > run->end) run->end = end;
        return;
    }
    if (run->open) drop_pages(b, run->begin, run->end);
    *run = (span_run){1, begin, end};
}

static stc_status run_claim(batch *b, const claim *k, size_t *direct_bytes, stc_error *error) {
    uint8_t scratch[GAP_MAX];
    span_run run = {0, 0, 0};
    size_t i = k->first;
    while (i <= k->last) {
        const stc_copy *c = &b->copies[i];
        uint64_t from = i == k->first ? k->first_offset : 0;
        uint64_t to = i == k->last ? k->last_end : c->len;
        if (from == 0 && i < k->last) { /* whole copies follow: try one read for many */
            size_t n = read_gathered(b, i, k->last, scratch);
            if (n) {
                const stc_copy *last = &b->copies[i + n - 1];
                note_copied(b, &run, file_offset(b, c, 0), file_offset(b, last, last->len));
                i += n;
                continue;
            }
        }
        if (to > from) {
            stc_status st = copy_range(b, c, from, to, direct_bytes, error);
            if (st != STC_OK) return st;
            note_copied(b, &run, file_offset(b, c, from), file_offset(b, c, to));
        }
        i++;
    }
    if (run.open) drop_pages(b, run.begin, run.end);
    return STC_OK;
}

typedef struct {
    batch *b;
    size_t direct_bytes;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    claim k;
    stc_error error;
    while (take_claim(w->b, &k)) {
        stc_status st = run_claim(w->b, &k, &w->direct_bytes, &error);
        if (st != STC_OK) {
            record_failure(w->b, st, &error);
            break;
        }
    }
    return NULL;
}

/* Once every thread has stopped: the pages of every copy once more, for
 * those read back in after a thread had dropped them (a page two
 * neighbouring claims share, or read-ahead for another thread's reads).
 * One call per run of neighbouring copies.
 * A run that starts on the first page of the data section takes the header
 * with it (parsed long ago): the kernel drops a large folio only whole, and
 * one often spans the end of the header and the first tensors. */
static void drop_all(batch *b) {
    span_run run = {0, 0, 0};
    uint64_t data_start = stc_data_start(b->file);
    for (size_t i = 0; i < b->count; i++) {
        const stc_copy *c = &b->copies[i];
        uint64_t begin = file_offset(b, c, 0);
        if (begin - data_start < b->page) begin = 0;
        note_copied(b, &run, begin, file_offset(b, c, c->len));
    }
    if (run.open) drop_pages(b, run.begin, run.end);
}

/* Everything a copy can be refused for, before any byte is written. */
static stc_status check_batch(const stc_file *file, const stc_copy *copies, size_t count,
                              const stc_batch_options *o, uint64_t *total, stc_error *error) {
    stc_status st;
    *total = 0;
    if (count && !copies)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "no copies", STC_NO_OFFSET, NULL, 0);
    if (o->direct_fd >= 0) {
        if (o->align && !is_power_of_two(o->align))
            return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                             "the alignment must be a power of two", STC_NO_OFFSET, NULL, 0);
        if ((st = check_same_file(file, o->direct_fd, error)) != STC_OK) return st;
    }
    for (size_t i = 0; i < count; i++) {
        const stc_copy *c = &copies[i];
        if ((st = check_copy(file, c->tensor, c->byte_offset, c->len, c->dst, error)) != STC_OK)
            return st;
        *total += c->len; /* each len fits its tensor, and tensors fit the file */
    }
    return STC_OK;
}

stc_status stc_read_batch(const stc_file *file, const stc_copy *copies, size_t count,
                          const stc_batch_options *options, size_t *direct_bytes,
                          stc_error *error) {
    static const stc_batch_options defaults = {.direct_fd = -1};
    const stc_batch_options *o = options ? options : &defaults;
    if (direct_bytes) *direct_bytes = 0;
    uint64_t total;
    stc_status st = check_batch(file, copies, count, o, &total, error);
    if (st != STC_OK || total == 0) return st;

    unsigned threads = o->threads ? o->threads : 1;
    if (threads > STC_BATCH_MAX_THREADS) threads = STC_BATCH_MAX_THREADS;
    uint64_t chunk = o->chunk_size;
    if (chunk == 0) { /* about four claims per thread, so uneven copies balance out */
        chunk = total / (4u * (uint64_t)threads);
        if (chunk < STC_BATCH_MIN_CHUNK) chunk = STC_BATCH_MIN_CHUNK;
        if (chunk > STC_BATCH_MAX_CHUNK) chunk = STC_BATCH_MAX_CHUNK;
    }
    chunk -= chunk % 4096u;
    if (chunk == 0) chunk = 4096u;
    uint64_t claims = total / chunk + 1; /* an upper bound of the useful threads */
    if (threads > claims) threads = (unsigned)claims;

    long page_size = sysconf(_SC_PAGESIZE);
    batch b = {
        .file = file,
        .copies = copies,
        .count = count,
        .options = o,
        .chunk = (size_t)chunk,
        .page = page_size > 0 ? (size_t)page_size : 4096u,
        .fd = stc__file_fd(file),
    };
    if (pthread_mutex_init(&b.lock, NULL) != 0)
        return stc__fail(error, STC_ERR_IO, "cannot create a lock", STC_NO_OFFSET, NULL, 0);
    worker workers[STC_BATCH_MAX_THREADS];
    pthread_t ids[STC_BATCH_MAX_THREADS];
    unsigned started = 0;
    for (unsigned t = 0; t < threads; t++) workers[t] = (worker){.b = &b};
    /* A thread the system refuses to start leaves its share to the others;
     * the calling thread is always one of the workers. */
    for (unsigned t = 1; t < threads; t++) {
        if (pthread_create(&ids[started], NULL, work, &workers[started + 1]) != 0) break;
        started++;
    }
    work(&workers[0]);
    for (unsigned t = 0; t < started; t++) pthread_join(ids[t], NULL);
    pthread_mutex_destroy(&b.lock);
    /* Kernel read-ahead for one thread's reads may have brought back pages
     * another thread had already copied and dropped: sweep once more. */
    if (o->drop_cache) drop_all(&b);
    if (direct_bytes)
        for (unsigned t = 0; t <= started; t++) *direct_bytes += workers[t].direct_bytes;
    if (b.failed) {
        if (error) *error = b.error;
        return b.status;
    }
    return STC_OK;
}
