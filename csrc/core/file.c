/*
 * file.c - opening files and images, the accessors, and reading bytes.
 *
 * Opening reads only the 8-byte prefix and the header with pread, validates
 * everything, and only then maps the file: an invalid file is never mapped,
 * and the cost of opening is proportional to the header, not the data.
 */
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct stc_file {
    const stc_allocator *a;
    stc_backend backend;
    int fd;              /* -1 for memory images */
    uint8_t *base;       /* the whole file in memory (mapping or image), or NULL */
    size_t mapped_len;   /* non-zero when base is our mapping */
    bool writable;
    uint64_t file_size;
    struct timespec mtime; /* st_mtim at opening, for stc_check_unchanged */
    uint64_t data_start; /* 8 + N */
    char *header_text;   /* owned copy of the header; strings decoded in place */
    stc__header header;
    uint32_t *by_name;
    uint32_t *by_offset;
};

/* MARK: - Small helpers */

static uint64_t read_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* MARK: - Prefix checks */

/* Checks the 8-byte prefix against the file size. `head` holds the first
 * head_len bytes of the file, for recognising other formats. */
static stc_status check_prefix(const uint8_t *head, size_t head_len, uint64_t file_size,
                               uint64_t max_header, uint64_t *header_len, stc_error *error) {
    /* A plausible length followed by the start of a JSON object is a
     * safetensors file (perhaps a truncated one), whatever its first bytes
     * happen to look like: only other files are worth naming. */
    bool plausible = head_len >= 8 && read_le64(head) <= max_header &&
                     (head_len == 8 || head[8] == '{' || head[8] == ' ' || head[8] == '\t' ||
                      head[8] == '\n' || head[8] == '\r');
    const char *foreign = plausible ? NULL : stc__sniff_foreign_format(head, head_len);
    if (file_size < 8) {
        if (foreign && file_size > 0)
            return stc__fail(error, STC_ERR_NOT_SAFETENSORS, foreign, 0, NULL, 0);
        return stc__fail(error, STC_ERR_HEADER_TOO_SMALL,
                         file_size == 0 ? "the file is empty"
                                        : "the file is shorter than its 8-byte header length",
                         0, NULL, 0);
    }
    uint64_t n = read_le64(head);
    if (n > max_header) {
        if (foreign) return stc__fail(error, STC_ERR_NOT_SAFETENSORS, foreign, 0, NULL, 0);
        return stc__fail(error, STC_ERR_HEADER_TOO_LARGE,
                         "the header length is above the limit (max_header_size)", 0, NULL, 0);
    }
    if (n > file_size - 8) {
        if (foreign) return stc__fail(error, STC_ERR_NOT_SAFETENSORS, foreign, 0, NULL, 0);
        stc__fail(error, STC_ERR_HEADER_LENGTH,
                  "the header length points past the end of the file (truncated download?)",
                  0, NULL, 0);
        if (error) {
            error->size_expected = 8 + n; /* n <= max_header: cannot overflow */
            error->size_found = file_size;
        }
        return STC_ERR_HEADER_LENGTH;
    }
    *header_len = n;
    return STC_OK;
}

/* MARK: - Opening */

static stc_file *new_file(const stc_allocator *a) {
    stc_file *f = stc__malloc(a, sizeof *f);
    if (!f) return NULL;
    memset(f, 0, sizeof *f);
    f->a = a;
    f->fd = -1;
    return f;
}

/* Copies the header text from the file or image into f->header_text. */
static stc_status load_header_text(stc_file *f, uint64_t header_len, stc_error *error) {
    if (f->fd < 0) {
        memcpy(f->header_text, f->base + 8, (size_t)header_len);
    } else {
        size_t got = 0;
        int err = stc__pread_full(f->fd, f->header_text, (size_t)header_len, 8, &got);
        if (err) return stc__fail_errno(error, "cannot read the header", err);
        if (got != header_len)
            return stc__fail(error, STC_ERR_FILE_CHANGED, "the file shrank while being opened",
                             STC_NO_OFFSET, NULL, 0);
    }
    f->header_text[header_len] = '\0';
    return STC_OK;
}

/* Parses f->header_text (header_len bytes) and validates the layout. */
static stc_status parse_and_validate(stc_file *f, uint64_t header_len, stc_error *error) {
    stc_status st = stc__parse_header(f->header_text, (size_t)header_len, 8, f->a, &f->header,
                                      error);
    if (st == STC_ERR_INVALID_HEADER || st == STC_ERR_DUPLICATE_KEY) {
        /* The parser stops at the first problem. A schema problem is only the
         * right verdict for text that is JSON all the way through: check the
         * whole (fresh, as parsing decodes in place) text for syntax errors
         * further on. This costs nothing for valid files. */
        stc_error syntax;
        if (load_header_text(f, header_len, &syntax) != STC_OK) return st;
        stc_status syn = stc__json_check_syntax(f->header_text, (size_t)header_len, 8, f->a,
                                                &syntax);
        if (syn == STC_ERR_INVALID_JSON || syn == STC_ERR_NESTING_TOO_DEEP ||
            syn == STC_ERR_NO_MEMORY) {
            if (error) *error = syntax;
            return syn;
        }
    }
    if (st != STC_OK) return st;
    st = stc__validate_layout(&f->header, f->file_size - f->data_start, f->a, &f->by_name,
                              &f->by_offset, error);
    if (error && (st == STC_ERR_TRUNCATED_DATA || st == STC_ERR_TRAILING_DATA)) {
        /* Whole-file sizes: the layout saw only the data section. A tensor
         * end near 2^64 plus the header can overflow: saturate. */
        uint64_t expected;
        error->size_expected = stc__add_u64(error->size_expected, f->data_start, &expected)
                                   ? expected
                                   : UINT64_MAX;
        error->size_found = f->file_size;
    }
    return st;
}

/* Debug builds re-check, after every successful open, what validation
 * promised: both orders are permutations in order, and the tensors tile the
 * data section exactly. Compiled out with NDEBUG (release builds). */
static void assert_consistent(const stc_file *f) {
#ifndef NDEBUG
    uint64_t cursor = 0;
    for (size_t i = 0; i < f->header.count; i++) {
        const stc_tensor *t = stc_tensor_by_offset_order(f, i);
        assert(t->begin == cursor && t->end >= t->begin && t->nbytes == t->end - t->begin);
        cursor = t->end;
        if (i > 0) {
            const stc_tensor *a = stc_tensor_by_name_order(f, i - 1);
            const stc_tensor *b = stc_tensor_by_name_order(f, i);
            assert(stc__compare_bytes(a->name, a->name_len, b->name, b->name_len) < 0);
        }
    }
    assert(cursor == f->file_size - f->data_start);
    assert(f->data_start <= f->file_size);
#else
    (void)f;
#endif
}

static uint64_t max_header_of(const stc_open_options *options) {
    if (options && options->max_header_size) return options->max_header_size;
    return STC_DEFAULT_MAX_HEADER_SIZE;
}

static stc_status out_of_memory(stc_error *error) {
    return stc__fail(error, STC_ERR_NO_MEMORY, "out of memory while opening the file",
                     STC_NO_OFFSET, NULL, 0);
}

/* The steps shared by files and images: check the length prefix (head holds
 * the first head_len bytes, size_seen is the size to check against), read
 * the header, parse it and validate the layout. */
static stc_status open_header(stc_file *f, const uint8_t *head, size_t head_len,
                              uint64_t size_seen, const stc_open_options *options,
                              stc_error *error) {
    uint64_t header_len = 0;
    stc_status st = check_prefix(head, head_len, size_seen, max_header_of(options), &header_len,
                                 error);
    if (st != STC_OK) return st;
    if (header_len > SIZE_MAX - 1) return out_of_memory(error);
    f->data_start = 8 + header_len;
    f->header_text = stc__malloc(f->a, (size_t)header_len + 1);
    if (!f->header_text) return out_of_memory(error);
    if ((st = load_header_text(f, header_len, error)) != STC_OK) return st;
    return parse_and_validate(f, header_len, error);
}

/* Maps the whole file privately. Tries a writable copy-on-write mapping and
 * falls back to read-only where the kernel refuses to commit that much. */
static stc_status map_file(stc_file *f, stc_error *error) {
    size_t len = (size_t)f->file_size;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, f->fd, 0);
    f->writable = true;
    if (p == MAP_FAILED && errno == ENOMEM) {
        p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, f->fd, 0);
        f->writable = false;
    }
    if (p == MAP_FAILED) return stc__fail_errno(error, "cannot map the file into memory", errno);
    f->base = p;
    f->mapped_len = len;
    return STC_OK;
}

/* Names what a non-regular file is, for the error message. */
static const char *kind_of(mode_t mode) {
    if (S_ISFIFO(mode)) return "this is a FIFO (named pipe), not a regular file; refusing to wait on it";
    if (S_ISCHR(mode)) return "this is a character device, not a regular file";
    if (S_ISBLK(mode)) return "this is a block device, not a regular file";
    if (S_ISSOCK(mode)) return "this is a socket, not a regular file";
    return "this is not a regular file";
}

/* Everything after the descriptor exists: check that it is a regular file
 * (what was checked is what is read: the same descriptor), read and validate
 * the header, then map. */
static stc_status open_descriptor(stc_file *f, const stc_open_options *options,
                                  stc_error *error) {
    struct stat sb;
    if (fstat(f->fd, &sb) != 0) return stc__fail_errno(error, "cannot stat the file", errno);
    if (S_ISDIR(sb.st_mode)) return stc__fail_errno(error, "is a directory", EISDIR);
    if (!S_ISREG(sb.st_mode))
        return stc__fail(error, STC_ERR_NOT_REGULAR_FILE, kind_of(sb.st_mode), STC_NO_OFFSET,
                         NULL, 0);
    f->file_size = (uint64_t)sb.st_size;
    f->mtime = sb.st_mtim;
    /* Asked of the descriptor read, not of a path that may have moved. */
    if (f->backend == STC_BACKEND_AUTO) f->backend = stc__backend_of_fd(f->fd);

    uint8_t head[64];
    size_t head_len = 0;
    int err = stc__pread_full(f->fd, head, sizeof head, 0, &head_len);
    if (err) return stc__fail_errno(error, "cannot read the file", err);
    uint64_t size_seen = head_len < sizeof head ? head_len : f->file_size;
    stc_status st = open_header(f, head, head_len, size_seen, options, error);
    if (st != STC_OK) return st;
    if (f->backend == STC_BACKEND_MMAP && (st = map_file(f, error)) != STC_OK) return st;
    assert_consistent(f);
    return STC_OK;
}

static stc_status new_file_for(const stc_open_options *options, stc_file **out,
                               stc_error *error) {
    const stc_allocator *a = stc__allocator_or_default(options ? options->allocator : NULL);
    stc_file *f = new_file(a);
    if (!f) return out_of_memory(error);
    f->backend = options ? options->backend : STC_BACKEND_MMAP;
    if (f->backend != STC_BACKEND_MMAP && f->backend != STC_BACKEND_PREAD &&
        f->backend != STC_BACKEND_AUTO) {
        stc_close(f);
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "unknown backend", STC_NO_OFFSET,
                         NULL, 0);
    }
    *out = f;
    return STC_OK;
}

stc_status stc_open(const char *path, const stc_open_options *options, stc_file **out,
                    stc_error *error) {
    stc_file *f = NULL;
    stc_status st = new_file_for(options, &f, error);
    if (st != STC_OK) return st;
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
     * writer forever. It changes nothing for regular files. */
    f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (f->fd < 0) {
        st = stc__fail_errno(error, "cannot open the file", errno);
        goto fail;
    }
    if ((st = open_descriptor(f, options, error)) != STC_OK) goto fail;
    *out = f;
    return STC_OK;
fail:
    stc_close(f);
    return st;
}

stc_status stc_open_fd(int fd, const stc_open_options *options, stc_file **out,
                       stc_error *error) {
    stc_file *f = NULL;
    stc_status st = new_file_for(options, &f, error);
    if (st != STC_OK) return st;
    f->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (f->fd < 0) {
        st = stc__fail_errno(error, "cannot use the file descriptor", errno);
        goto fail;
    }
    if ((st = open_descriptor(f, options, error)) != STC_OK) goto fail;
    *out = f;
    return STC_OK;
fail:
    stc_close(f);
    return st;
}

stc_status stc_header_length(const void *head, size_t head_len, uint64_t file_size,
                             const stc_open_options *options, uint64_t *header_len,
                             stc_error *error) {
    if (head_len > file_size || (head_len < 8 && head_len < file_size))
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                         "give the first 8 bytes of the file (all of it if shorter)",
                         STC_NO_OFFSET, NULL, 0);
    size_t seen = head_len < 64 ? head_len : 64;
    return check_prefix(head, seen, file_size, max_header_of(options), header_len, error);
}

stc_status stc_open_header(const void *head, size_t head_len, uint64_t file_size,
                           const stc_open_options *options, stc_file **out,
                           stc_error *error) {
    uint64_t header_len = 0;
    stc_status st = stc_header_length(head, head_len, file_size, options, &header_len, error);
    if (st != STC_OK) return st;
    if (head_len - 8 < header_len)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                         "the bytes given end before the header does", STC_NO_OFFSET, NULL, 0);
    const stc_allocator *a = stc__allocator_or_default(options ? options->allocator : NULL);
    stc_file *f = new_file(a);
    if (!f) return out_of_memory(error);
    f->backend = STC_BACKEND_PREAD;
    f->file_size = file_size;
    f->data_start = 8 + header_len;
    if (header_len > SIZE_MAX - 1) {
        st = out_of_memory(error);
        goto fail;
    }
    f->header_text = stc__malloc(a, (size_t)header_len + 1);
    if (!f->header_text) {
        st = out_of_memory(error);
        goto fail;
    }
    /* A header-only file has neither a descriptor nor a base: point base at
     * the caller's bytes only while loading the text. */
    f->base = (uint8_t *)(uintptr_t)head;
    st = load_header_text(f, header_len, error);
    if (st == STC_OK) st = parse_and_validate(f, header_len, error);
    f->base = NULL;
    if (st != STC_OK) goto fail;
    assert_consistent(f);
    *out = f;
    return STC_OK;
fail:
    stc_close(f);
    return st;
}

stc_status stc_open_memory(const void *data, size_t size, const stc_open_options *options,
                           stc_file **out, stc_error *error) {
    const stc_allocator *a = stc__allocator_or_default(options ? options->allocator : NULL);
    stc_status st;
    stc_file *f = new_file(a);
    if (!f) return out_of_memory(error);
    /* The image is borrowed. Callers that declare it writable get writable
     * views through stc_data, which is why the const is dropped here, once. */
    f->base = (uint8_t *)(uintptr_t)data;
    f->writable = options && options->writable_image;
    f->file_size = size;
    f->backend = STC_BACKEND_MMAP;
    if ((st = open_header(f, f->base, size < 64 ? size : 64, size, options, error)) != STC_OK)
        goto fail;
    assert_consistent(f);
    *out = f;
    return STC_OK;
fail:
    stc_close(f);
    return st;
}

void stc_close(stc_file *f) {
    if (!f) return;
    const stc_allocator *a = f->a;
    if (f->mapped_len) munmap(f->base, f->mapped_len);
    if (f->fd >= 0) close(f->fd);
    stc__header_free(a, &f->header);
    stc__free(a, f->by_name);
    stc__free(a, f->by_offset);
    stc__free(a, f->header_text);
    stc__free(a, f);
}

/* MARK: - Accessors */

size_t stc_tensor_count(const stc_file *f) { return f->header.count; }

const stc_tensor *stc_tensor_by_name_order(const stc_file *f, size_t i) {
    return &f->header.tensors[f->by_name[i]];
}

const stc_tensor *stc_tensor_by_offset_order(const stc_file *f, size_t i) {
    return &f->header.tensors[f->by_offset[i]];
}

const stc_tensor *stc_find_tensor(const stc_file *f, const char *name, size_t name_len) {
    size_t lo = 0, hi = f->header.count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const stc_tensor *t = &f->header.tensors[f->by_name[mid]];
        int c = stc__compare_bytes(t->name, t->name_len, name, name_len);
        if (c == 0) return t;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int stc_has_metadata(const stc_file *f) { return f->header.has_metadata; }

size_t stc_metadata_count(const stc_file *f) { return f->header.metadata_count; }

const stc_string_pair *stc_metadata_at(const stc_file *f, size_t i) {
    return &f->header.metadata[i];
}

uint64_t stc_file_size(const stc_file *f) { return f->file_size; }

uint64_t stc_data_start(const stc_file *f) { return f->data_start; }

uint8_t *stc_data(const stc_file *f) { return f->base ? f->base + f->data_start : NULL; }

int stc_data_writable(const stc_file *f) { return f->base != NULL && f->writable; }

int stc_is_mapped(const stc_file *f) { return f->mapped_len != 0; }

stc_backend stc_file_backend(const stc_file *f) { return f->backend; }

int stc__file_fd(const stc_file *f) { return f->fd; }

size_t stc_tensor_index(const stc_file *f, const stc_tensor *t) {
    return (size_t)(t - f->header.tensors);
}

/* Size and mtime only: ctime also moves when the path is renamed over
 * (which unlinks our inode and is harmless), and so would the link count. */
stc_status stc_check_unchanged(const stc_file *f, stc_error *error) {
    if (!f->mapped_len) return STC_OK;
    struct stat sb;
    if (fstat(f->fd, &sb) != 0) return stc__fail_errno(error, "cannot stat the file", errno);
    if ((uint64_t)sb.st_size < f->file_size)
        return stc__fail(error, STC_ERR_FILE_CHANGED,
                         "the file was truncated on disk after it was opened; reopen it",
                         STC_NO_OFFSET, NULL, 0);
    if ((uint64_t)sb.st_size != f->file_size || sb.st_mtim.tv_sec != f->mtime.tv_sec ||
        sb.st_mtim.tv_nsec != f->mtime.tv_nsec)
        return stc__fail(error, STC_ERR_FILE_CHANGED,
                         "the file was modified on disk after it was opened; reopen it",
                         STC_NO_OFFSET, NULL, 0);
    return STC_OK;
}

/* MARK: - Reading */

static uint64_t data_len(const stc_file *f) { return f->file_size - f->data_start; }

static stc_status no_data(stc_error *error) {
    return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                     "this file was opened from its header alone and holds no tensor data",
                     STC_NO_OFFSET, NULL, 0);
}

static bool in_data(const stc_file *f, uint64_t offset, uint64_t len) {
    return offset <= data_len(f) && len <= data_len(f) - offset;
}

static stc_status outside_data(stc_error *error) {
    return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "read range is outside the data section",
                     STC_NO_OFFSET, NULL, 0);
}

/* pread of a range already checked to lie inside the data section. */
static stc_status pread_data(const stc_file *f, uint64_t offset, size_t len, void *dst,
                             stc_error *error) {
    size_t got = 0;
    int err = stc__pread_full(f->fd, dst, len, f->data_start + offset, &got);
    if (err) return stc__fail_errno(error, "cannot read tensor data", err);
    if (got != len)
        return stc__fail(error, STC_ERR_FILE_CHANGED,
                         "the file is shorter than when it was opened", STC_NO_OFFSET, NULL, 0);
    return STC_OK;
}

stc_status stc_read(const stc_file *f, uint64_t offset, size_t len, void *dst,
                    stc_error *error) {
    if (!f->base && f->fd < 0) return no_data(error);
    if (!in_data(f, offset, len)) return outside_data(error);
    if (len == 0) return STC_OK;
    if (f->base) {
        memcpy(dst, f->base + f->data_start + offset, len);
        return STC_OK;
    }
    return pread_data(f, offset, len, dst, error);
}

static stc_status not_a_file(stc_error *error) {
    return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                     "only a file opened from a path or descriptor can be read again",
                     STC_NO_OFFSET, NULL, 0);
}

stc_status stc_read_file(const stc_file *f, uint64_t offset, size_t len, void *dst,
                         stc_error *error) {
    if (f->fd < 0) return not_a_file(error);
    if (!in_data(f, offset, len)) return outside_data(error);
    if (len == 0) return STC_OK;
    return pread_data(f, offset, len, dst, error);
}

/* MARK: - Fresh mappings of a range */

stc_status stc_map_range(const stc_file *f, uint64_t offset, uint64_t len, stc_region *out,
                         stc_error *error) {
    if (f->fd < 0) return not_a_file(error);
    if (len == 0 || !in_data(f, offset, len))
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                         "map range is empty or outside the data section", STC_NO_OFFSET, NULL,
                         0);
    long page_size = sysconf(_SC_PAGESIZE);
    uint64_t page = page_size > 0 ? (uint64_t)page_size : 4096;
    /* start + len <= file_size: validated at opening, so nothing overflows. */
    uint64_t start = f->data_start + offset;
    uint64_t aligned = start - start % page;
    uint64_t span = start + len - aligned;
    if (span > SIZE_MAX || aligned > (uint64_t)INT64_MAX)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "map range is too large",
                         STC_NO_OFFSET, NULL, 0);
    void *p = mmap(NULL, (size_t)span, PROT_READ | PROT_WRITE, MAP_PRIVATE, f->fd,
                   (off_t)aligned);
    if (p == MAP_FAILED) return stc__fail_errno(error, "cannot map the tensor's pages", errno);
    out->addr = p;
    out->len = (size_t)span;
    out->data = (uint8_t *)p + (start - aligned);
    return STC_OK;
}

void stc_unmap_range(stc_region *region) {
    if (!region || !region->addr) return;
    munmap(region->addr, region->len);
    region->addr = NULL;
    region->len = 0;
    region->data = NULL;
}

/* Checks that a strided view stays inside [0, limit) and finds how many
 * trailing dimensions form one contiguous run. */
static bool view_bounds(uint64_t offset, size_t ndim, const uint64_t *shape,
                        const int64_t *strides, size_t itemsize, uint64_t limit,
                        size_t *first_contiguous_dim, uint64_t *run_bytes) {
    uint64_t below = 0, above = 0; /* reach before and after `offset` */
    for (size_t d = 0; d < ndim; d++) {
        uint64_t steps = shape[d] - 1, reach;
        uint64_t magnitude = strides[d] < 0 ? (uint64_t)0 - (uint64_t)strides[d]
                                            : (uint64_t)strides[d];
        if (!stc__mul_u64(steps, magnitude, &reach)) return false;
        if (!stc__add_u64(strides[d] < 0 ? below : above, reach,
                          strides[d] < 0 ? &below : &above))
            return false;
    }
    uint64_t last;
    if (below > offset || !stc__add_u64(offset, above, &last) ||
        !stc__add_u64(last, itemsize, &last) || last > limit)
        return false;
    uint64_t run = itemsize;
    size_t k = ndim;
    while (k > 0 && (shape[k - 1] == 1 || (strides[k - 1] > 0 && (uint64_t)strides[k - 1] == run))) {
        run *= shape[k - 1]; /* cannot overflow: the run lies inside the data */
        k--;
    }
    *first_contiguous_dim = k;
    *run_bytes = run;
    return true;
}

/* The strided gather over the window [base, base + limit) of the data
 * section; offset is relative to base. */
static stc_status read_strided(const stc_file *f, uint64_t base, uint64_t limit,
                               uint64_t offset, size_t ndim, const uint64_t *shape,
                               const int64_t *strides, size_t itemsize, void *dst,
                               stc_error *error) {
    /* Dimensions of size 1 move nothing: drop them, keeping at most
     * STC_MAX_STRIDED_DIMS others (which needs no allocation). */
    uint64_t dims[STC_MAX_STRIDED_DIMS];
    int64_t steps[STC_MAX_STRIDED_DIMS];
    size_t n = 0;
    for (size_t d = 0; d < ndim; d++) {
        if (shape[d] == 0) return STC_OK;
        if (shape[d] == 1) continue;
        if (n == STC_MAX_STRIDED_DIMS)
            return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "too many dimensions",
                             STC_NO_OFFSET, NULL, 0);
        dims[n] = shape[d];
        steps[n] = strides[d];
        n++;
    }
    size_t k;
    uint64_t run, out_size;
    /* The output (which dst must hold) has to be addressable, even when the
     * view revisits the same bytes through zero strides. */
    if (!stc__element_count(dims, n, &out_size) ||
        !stc__mul_u64(out_size, itemsize, &out_size) || out_size > SIZE_MAX)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "strided view is too large",
                         STC_NO_OFFSET, NULL, 0);
    if (itemsize == 0 || !view_bounds(offset, n, dims, steps, itemsize, limit, &k, &run))
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                         base == 0 && limit == data_len(f)
                             ? "strided view is outside the data section"
                             : "strided view is outside the tensor",
                         STC_NO_OFFSET, NULL, 0);
    /* Walk the outer k dimensions like an odometer, one read per run. */
    uint64_t index[STC_MAX_STRIDED_DIMS] = {0};
    uint8_t *out = dst;
    uint64_t at = offset;
    for (;;) {
        stc_status st = stc_read(f, base + at, (size_t)run, out, error);
        if (st != STC_OK) return st;
        out += run;
        size_t d = k;
        while (d > 0) {
            d--;
            if (++index[d] < dims[d]) {
                at = (uint64_t)((int64_t)at + steps[d]);
                break;
            }
            at = (uint64_t)((int64_t)at - steps[d] * (int64_t)(dims[d] - 1));
            index[d] = 0;
            if (d == 0) return STC_OK;
        }
        if (k == 0) return STC_OK;
    }
}

stc_status stc_read_strided(const stc_file *f, uint64_t offset, size_t ndim,
                            const uint64_t *shape, const int64_t *strides, size_t itemsize,
                            void *dst, stc_error *error) {
    return read_strided(f, 0, data_len(f), offset, ndim, shape, strides, itemsize, dst, error);
}

stc_status stc_read_tensor_strided(const stc_file *f, const stc_tensor *t, uint64_t offset,
                                   size_t ndim, const uint64_t *shape, const int64_t *strides,
                                   size_t itemsize, void *dst, stc_error *error) {
    return read_strided(f, t->begin, t->nbytes, offset, ndim, shape, strides, itemsize, dst,
                        error);
}
