/*
 * stc.h - the public contract of the safetensors_c core.
 *
 * The core reads, validates and writes .safetensors files. It is plain C11 plus
 * POSIX (open, pread, mmap, fsync, rename) and knows nothing of Python: the
 * CPython binding, the C tests and the fuzz targets all use only this header.
 *
 * File format, as this library reads and writes it:
 *
 *   bytes [0, 8)        N, the header length, unsigned 64-bit little-endian
 *   bytes [8, 8 + N)    a UTF-8 JSON object (JSON whitespace allowed around it)
 *   bytes [8 + N, end)  the data section: every tensor's bytes, back to back
 *
 * The JSON object maps each tensor name to {"dtype": CODE, "shape": [..],
 * "data_offsets": [begin, end]} (offsets relative to the data section, end
 * exclusive) and may hold "__metadata__": an object of string values, or null.
 *
 * Conventions used throughout:
 *  - Every function that can fail returns an stc_status. STC_OK is 0. On
 *    failure, when the caller passed a non-NULL stc_error, it is filled in:
 *    the status, a constant message, and where known the byte offset in the
 *    file and the tensor name. Outputs are left untouched on failure and
 *    nothing is leaked.
 *  - Strings are UTF-8 with an explicit length. Names decoded from the header
 *    may contain NUL bytes (JSON "\u0000"); they are NUL-terminated as well,
 *    for convenience, but the length is authoritative.
 *  - All memory the core allocates comes from one stc_allocator, which the
 *    caller may supply (tests use this to make the k-th allocation fail).
 *  - Thread-safety: an opened stc_file is immutable after stc_open returns;
 *    any number of threads may call the const accessors and the read
 *    functions on it concurrently. stc_close must not race with other calls
 *    on the same file. Writers (stc_plan, stc_output) are single-threaded
 *    objects. The library has no global mutable state.
 */
#ifndef STC_H
#define STC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define STC_VERSION_STRING "0.1.0"

/* The default cap on the header length N, as in the reference reader. */
#define STC_DEFAULT_MAX_HEADER_SIZE 100000000u

/* Containers may nest this deep in the header (the top-level object counts as
 * depth 1); one more level is an error. Bounds the parser's stack. */
#define STC_MAX_NESTING_DEPTH 127

/* stc_read_strided handles views with at most this many dimensions larger
 * than 1 (NumPy's own limit on dimensions). */
#define STC_MAX_STRIDED_DIMS 64

/* Value of stc_error.offset when no byte offset applies. */
#define STC_NO_OFFSET UINT64_MAX

/* MARK: - Status codes */

typedef enum stc_status {
    STC_OK = 0,
    STC_ERR_NO_MEMORY,        /* an allocation failed */
    STC_ERR_IO,               /* a system call failed; stc_error.sys_errno says why */
    STC_ERR_NOT_SAFETENSORS,  /* the bytes are another format (pickle, zip, ...) */
    STC_ERR_HEADER_TOO_SMALL, /* fewer than 8 bytes */
    STC_ERR_HEADER_TOO_LARGE, /* N is above the cap */
    STC_ERR_HEADER_LENGTH,    /* 8 + N is past the end of the file */
    STC_ERR_INVALID_UTF8,     /* the header is not valid UTF-8 */
    STC_ERR_INVALID_JSON,     /* the header is not strict JSON */
    STC_ERR_NESTING_TOO_DEEP, /* containers nest deeper than STC_MAX_NESTING_DEPTH */
    STC_ERR_DUPLICATE_KEY,    /* a key appears twice in one JSON object */
    STC_ERR_INVALID_HEADER,   /* valid JSON, but not a valid safetensors header */
    STC_ERR_INVALID_OFFSETS,  /* tensors overlap, leave holes, or begin > end */
    STC_ERR_SIZE_OVERFLOW,    /* element or bit count does not fit 64 bits */
    STC_ERR_MISALIGNED,       /* a tensor's bit count is not a multiple of 8 */
    STC_ERR_SIZE_MISMATCH,    /* end - begin differs from the size the shape implies */
    STC_ERR_TRUNCATED_DATA,   /* the data section is shorter than the tensors need */
    STC_ERR_TRAILING_DATA,    /* bytes follow the last tensor */
    STC_ERR_FILE_CHANGED,     /* the file shrank or was modified since it was opened */
    STC_ERR_INVALID_ARGUMENT, /* the caller passed something invalid */
    STC_ERR_NOT_REGULAR_FILE, /* a FIFO, device, socket: never read, never waited on */
    STC_STATUS_COUNT
} stc_status;

/* A stable identifier such as "STC_ERR_INVALID_JSON"; "STC_UNKNOWN" for
 * values outside the enum. Never NULL, static storage. */
const char *stc_status_name(stc_status status);

/* A one-line generic description of the status. Never NULL, static storage. */
const char *stc_status_message(stc_status status);

#define STC_ERROR_TENSOR_CAPACITY 120

typedef struct stc_error {
    stc_status status;
    /* What went wrong, specific to the failure site. Static storage. */
    const char *message;
    /* Byte offset in the file (header offsets include the 8-byte prefix),
     * or STC_NO_OFFSET. */
    uint64_t offset;
    /* errno for STC_ERR_IO and for failures of the output file, else 0. */
    int sys_errno;
    /* The tensor (or key, see tensor_is_key) concerned, or empty. At most STC_ERROR_TENSOR_CAPACITY
     * bytes of its name are kept; tensor_truncated says if it was cut.
     * tensor_len counts the stored bytes; tensor is also NUL-terminated. */
    size_t tensor_len;
    int tensor_truncated;
    char tensor[STC_ERROR_TENSOR_CAPACITY + 1];
    /* 1 when `tensor` holds a JSON key that names no tensor (a metadata key,
     * a field of an ignored object), else 0. */
    int tensor_is_key;
    /* For STC_ERR_HEADER_LENGTH, STC_ERR_TRUNCATED_DATA and
     * STC_ERR_TRAILING_DATA: the file size the header implies (for
     * HEADER_LENGTH, at least this) and the size the file has. For
     * STC_ERR_SIZE_MISMATCH: the bytes the tensor's dtype and shape need,
     * and the bytes its data_offsets span. Else 0. */
    uint64_t size_expected;
    uint64_t size_found;
} stc_error;

/* MARK: - Allocator */

/* Every allocation of the core goes through one of these. realloc receives
 * the old size for allocators that need it. ctx is passed through. A NULL
 * allocator pointer anywhere in this API means the C library's. */
typedef struct stc_allocator {
    void *(*malloc)(void *ctx, size_t size);
    void *(*realloc)(void *ctx, void *ptr, size_t old_size, size_t new_size);
    void (*free)(void *ctx, void *ptr);
    void *ctx;
} stc_allocator;

/* MARK: - Dtypes */

/* The format's dtypes. The numeric value is the writer's order rank: the
 * writer lays tensors out by descending rank, then by name. */
typedef enum stc_dtype {
    STC_BOOL = 0,
    STC_F4,
    STC_F6_E2M3,
    STC_F6_E3M2,
    STC_U8,
    STC_I8,
    STC_F8_E5M2,
    STC_F8_E4M3,
    STC_F8_E8M0,
    STC_F8_E4M3FNUZ,
    STC_F8_E5M2FNUZ,
    STC_I16,
    STC_U16,
    STC_F16,
    STC_BF16,
    STC_I32,
    STC_U32,
    STC_F32,
    STC_C64,
    STC_F64,
    STC_I64,
    STC_U64,
    STC_DTYPE_COUNT
} stc_dtype;

/* The exact, case-sensitive code ("F32", "F8_E4M3", ...); NULL if invalid. */
const char *stc_dtype_name(stc_dtype dtype);

/* Bits per element: 1..64 (4 for F4, 6 for the F6 types); 0 if invalid. */
unsigned stc_dtype_bits(stc_dtype dtype);

/* Looks a code up by its exact bytes. Returns 1 and sets *out on success,
 * 0 if the code is unknown. */
int stc_dtype_from_name(const char *name, size_t len, stc_dtype *out);

/* MARK: - Reading */

typedef enum stc_backend {
    /* One private (copy-on-write) mapping of the whole file; tensors are
     * views into it. If the system refuses a writable private mapping (strict
     * overcommit), the mapping is read-only instead: see stc_data_writable. */
    STC_BACKEND_MMAP = 0,
    /* No mapping: the header is read with pread and tensor bytes are read on
     * request into caller memory. For untrusted or network file systems. */
    STC_BACKEND_PREAD = 1,
    /* Chosen at opening from the file system the opened descriptor is on
     * (fstatfs's f_type, see stc_backend_for_filesystem): STC_BACKEND_PREAD
     * on network, cluster and FUSE file systems, where every page fault of a
     * mapping is a round trip; STC_BACKEND_MMAP elsewhere, and when fstatfs
     * fails. stc_file_backend tells which one a file got. Memory images and
     * header-only files ignore it as they ignore the others. */
    STC_BACKEND_AUTO = 2
} stc_backend;

/* The backend STC_BACKEND_AUTO picks for a file system whose statfs f_type
 * is fs_type (a magic number of linux/magic.h; only its low 32 bits count,
 * so a sign-extended f_type gives the same verdict):
 * STC_BACKEND_PREAD for NFS, SMB/CIFS, FUSE (sshfs, s3fs, gcsfuse, virtiofs
 * ...), 9p, Ceph, Lustre, GPFS, BeeGFS, OrangeFS, PanFS, AFS, Coda and NCP;
 * STC_BACKEND_MMAP for every other value (local disks, tmpfs, overlayfs,
 * unknown). Pure; thread-safe. */
stc_backend stc_backend_for_filesystem(uint64_t fs_type);

typedef struct stc_open_options {
    stc_backend backend;
    /* Cap on the header length N; 0 means STC_DEFAULT_MAX_HEADER_SIZE. */
    uint64_t max_header_size;
    /* NULL means the C library's allocator. Must outlive the stc_file. */
    const stc_allocator *allocator;
    /* stc_open_memory only: non-zero when the caller allows writes into the
     * image through stc_data (stc_data_writable then returns 1). */
    int writable_image;
} stc_open_options;

/* One tensor as described by the header. The pointers live as long as the
 * stc_file that owns them. */
typedef struct stc_tensor {
    const char *name;
    size_t name_len;
    stc_dtype dtype;
    size_t ndim;
    const uint64_t *shape; /* ndim entries; NULL when ndim is 0 */
    uint64_t begin;        /* offsets relative to the data section */
    uint64_t end;
    uint64_t nbytes;       /* end - begin */
    uint64_t header_offset; /* where the entry's name starts in the file */
} stc_tensor;

/* One key/value pair of __metadata__ (or of writer metadata). */
typedef struct stc_string_pair {
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
} stc_string_pair;

typedef struct stc_file stc_file;

/* Opens, reads the header of, parses and fully validates a file. On success
 * *out owns the descriptor, the mapping (for STC_BACKEND_MMAP) and the
 * parsed header; release it with stc_close. options may be NULL for
 * defaults. Errors: STC_ERR_IO (sys_errno from open/fstat/pread/mmap),
 * STC_ERR_NO_MEMORY, and every format error above. A file that is some
 * other format gets STC_ERR_NOT_SAFETENSORS with a message naming it. */
stc_status stc_open(const char *path, const stc_open_options *options,
                    stc_file **out, stc_error *error);

/* stc_open on an open descriptor (e.g. a Python file object's fileno()).
 * The descriptor is duplicated, so the caller keeps and closes its own; its
 * file position is neither used nor changed (all reads are pread). It must
 * refer to a regular file, as for stc_open. */
stc_status stc_open_fd(int fd, const stc_open_options *options, stc_file **out,
                       stc_error *error);

/* For sources that are neither a path nor a descriptor (file objects,
 * remote storage): the caller reads the first bytes itself.
 *
 * stc_header_length checks the 8-byte prefix of a file of file_size bytes
 * (head holds its first head_len >= 8 bytes; up to 64 help name a foreign
 * format) against options->max_header_size and the size, and gives N: the
 * caller then needs head to hold 8 + N bytes. Same errors as stc_open.
 *
 * stc_open_header parses and fully validates the header in head (the first
 * head_len >= 8 + N bytes of the file, copied, not borrowed) for a file of
 * file_size bytes. The result knows every tensor but holds no data:
 * stc_data is NULL and stc_read/stc_read_strided fail with
 * STC_ERR_INVALID_ARGUMENT; the caller reads tensor bytes from its source at
 * stc_data_start + begin. options->backend is ignored. */
stc_status stc_header_length(const void *head, size_t head_len, uint64_t file_size,
                             const stc_open_options *options, uint64_t *header_len,
                             stc_error *error);
stc_status stc_open_header(const void *head, size_t head_len, uint64_t file_size,
                           const stc_open_options *options, stc_file **out,
                           stc_error *error);

/* Parses and validates a whole file image held in memory. The bytes are
 * borrowed, not copied: they must outlive the stc_file and stay unchanged.
 * options->backend is ignored (tensors are views into data); the views are
 * writable only with options->writable_image. */
stc_status stc_open_memory(const void *data, size_t size,
                           const stc_open_options *options, stc_file **out,
                           stc_error *error);

/* Releases everything the file owns. NULL is allowed. Views obtained from
 * stc_data become invalid. */
void stc_close(stc_file *file);

/* Number of tensors. */
size_t stc_tensor_count(const stc_file *file);

/* The i-th tensor in name order (bytewise, which is Unicode code point
 * order for UTF-8). i must be below stc_tensor_count. */
const stc_tensor *stc_tensor_by_name_order(const stc_file *file, size_t i);

/* The i-th tensor in data order (by begin, then end, then name). */
const stc_tensor *stc_tensor_by_offset_order(const stc_file *file, size_t i);

/* The tensor with exactly this name, or NULL. O(log n). */
const stc_tensor *stc_find_tensor(const stc_file *file, const char *name,
                                  size_t name_len);

/* 1 if the header has a non-null "__metadata__" object, else 0. */
int stc_has_metadata(const stc_file *file);

/* Number of metadata pairs, and the i-th in header order. */
size_t stc_metadata_count(const stc_file *file);
const stc_string_pair *stc_metadata_at(const stc_file *file, size_t i);

/* Size of the whole file and offset of the data section (8 + N). */
uint64_t stc_file_size(const stc_file *file);
uint64_t stc_data_start(const stc_file *file);

/* The start of the data section in memory (mapping or borrowed image), or
 * NULL for STC_BACKEND_PREAD. Tensor t's bytes are at stc_data(f) + t->begin.
 * The memory is writable exactly when stc_data_writable returns 1; writes go
 * to private copy-on-write pages and never reach the file. */
uint8_t *stc_data(const stc_file *file);
int stc_data_writable(const stc_file *file);

/* 1 if the file is read through a memory mapping that another process could
 * shrink (STC_BACKEND_MMAP on a real file), else 0. */
int stc_is_mapped(const stc_file *file);

/* The backend file was opened with, STC_BACKEND_AUTO resolved to the one it
 * chose (never STC_BACKEND_AUTO itself): STC_BACKEND_MMAP for memory images,
 * STC_BACKEND_PREAD for header-only files. */
stc_backend stc_file_backend(const stc_file *file);

/* Checks, with one fstat of the open descriptor, that the mapped file is
 * still the one that was opened: the size and the modification time
 * (st_mtim, to the nanosecond) recorded at opening are unchanged. Returns
 * STC_ERR_FILE_CHANGED if the file shrank (touching the lost pages would
 * raise SIGBUS; message "... truncated ...") or if its size or mtime moved
 * otherwise (it was written in place: message "... modified ..."),
 * STC_ERR_IO if fstat fails, STC_OK otherwise (including for memory images
 * and the pread backend). A path renamed over the file (an atomic save)
 * changes nothing: the descriptor keeps the old inode, which is what the
 * mapping shows. What this cannot see: a writer that restores the mtime
 * (utimensat) after writing the same number of bytes, and writes between
 * this check and the moment the caller touches the pages. */
stc_status stc_check_unchanged(const stc_file *file, stc_error *error);

/* The position of `tensor` (one of file's own, as returned by its lookups)
 * in header order: 0 .. stc_tensor_count - 1. Lets callers keep per-tensor
 * state in a plain array. */
size_t stc_tensor_index(const stc_file *file, const stc_tensor *tensor);

/* Copies len bytes starting at offset (relative to the data section) into
 * dst. Uses pread (retrying on EINTR and short reads) or memcpy. Fails with
 * STC_ERR_INVALID_ARGUMENT if the range leaves the data section and with
 * STC_ERR_FILE_CHANGED if the file ends early. Safe to call concurrently. */
stc_status stc_read(const stc_file *file, uint64_t offset, size_t len, void *dst,
                    stc_error *error);

/* Like stc_read, but always from the file with pread, never from the
 * mapping: the bytes the file holds now, not those of a mapped view that may
 * have been written (the mapping is private and writable). For files opened
 * from a path or descriptor, with either backend; STC_ERR_INVALID_ARGUMENT
 * for memory images and header-only files. Safe to call concurrently. */
stc_status stc_read_file(const stc_file *file, uint64_t offset, size_t len, void *dst,
                         stc_error *error);

/* A private mapping of part of a file made by stc_map_range. */
typedef struct stc_region {
    void *addr;    /* the mapping (page-aligned), for stc_unmap_range */
    size_t len;    /* its length */
    uint8_t *data; /* the first byte of the range asked for */
} stc_region;

/* Maps bytes [offset, offset + len) of the data section afresh: a new
 * private, writable (copy-on-write) mapping of the file pages that cover
 * them, taken from the file, independent of the file's main mapping and of
 * every other region. Writes into it reach neither the file nor any other
 * view. Costs one mapping of the process (vm.max_map_count) and no copy.
 * The region does not depend on the stc_file afterwards: it may outlive
 * stc_close; release it with stc_unmap_range. Errors:
 * STC_ERR_INVALID_ARGUMENT for memory images, header-only files and an
 * empty range or one outside the data section; STC_ERR_IO when mmap fails
 * (sys_errno ENOMEM when the process has no mapping left, or the system
 * refuses to commit the memory). As for the main mapping, touching the
 * region after the file shrank raises SIGBUS: check stc_check_unchanged
 * first. Safe to call concurrently. */
stc_status stc_map_range(const stc_file *file, uint64_t offset, uint64_t len,
                         stc_region *out, stc_error *error);

/* Unmaps a region from stc_map_range (NULL or an already released region
 * is allowed) and clears it. */
void stc_unmap_range(stc_region *region);

/* Gathers a strided view of the data section into dst, in C order, densely.
 * The view starts at byte `offset` of the data section and has ndim
 * dimensions; element (i0, .., ik) lives at offset + sum(i_d * strides[d])
 * and is itemsize bytes long. Strides may be negative. Every byte the view
 * touches must lie inside the data section (else STC_ERR_INVALID_ARGUMENT).
 * Contiguous runs are read with one read each, so slicing whole rows of a
 * tensor costs one read per run, not per element. dst must hold
 * itemsize * product(shape) bytes. Needs no allocation; at most
 * STC_MAX_STRIDED_DIMS dimensions may be larger than 1. */
stc_status stc_read_strided(const stc_file *file, uint64_t offset, size_t ndim,
                            const uint64_t *shape, const int64_t *strides,
                            size_t itemsize, void *dst, stc_error *error);

/* stc_read_strided confined to one tensor: offset is relative to the
 * tensor's first byte, and every byte the view touches must lie inside that
 * tensor (else STC_ERR_INVALID_ARGUMENT), so a view can never reach a
 * neighbour's bytes. */
stc_status stc_read_tensor_strided(const stc_file *file, const stc_tensor *tensor,
                                   uint64_t offset, size_t ndim, const uint64_t *shape,
                                   const int64_t *strides, size_t itemsize, void *dst,
                                   stc_error *error);

/* MARK: - Reading into caller buffers (read_into.c) */

/* Copies len bytes of `tensor`, starting byte_offset bytes into it, to dst:
 * memcpy from the mapping or image, pread (retrying EINTR and short reads)
 * for STC_BACKEND_PREAD. tensor must be one of file's own tensors (as
 * returned by its lookups) and the range must lie inside it: a range that
 * reaches past the tensor's last byte fails with STC_ERR_INVALID_ARGUMENT
 * and copies nothing, so a neighbour's bytes are never read. dst must hold
 * len bytes; it may be NULL when len is 0. STC_ERR_FILE_CHANGED if the file
 * ends early (pread). For a mapped file the caller checks
 * stc_check_unchanged first, as touching lost pages raises SIGBUS. Needs no
 * allocation; safe to call from many threads on one file, for ranges of one
 * tensor or of different tensors, which is how large tensors are split. */
stc_status stc_read_tensor_into(const stc_file *file, const stc_tensor *tensor,
                                uint64_t byte_offset, size_t len, void *dst,
                                stc_error *error);

/* The same for STC_BACKEND_PREAD, reading the aligned middle of the range
 * through direct_fd: a descriptor of the same file opened by the caller
 * with O_DIRECT (a descriptor of a file of another size is refused with
 * STC_ERR_INVALID_ARGUMENT, one of another file, by device and inode, with
 * STC_ERR_FILE_CHANGED, before a byte is written). align is
 * the file system's direct I/O alignment (a power of two, e.g. 4096). Bytes
 * move from the device straight into dst, bypassing the page cache, for the
 * whole blocks where dst + k and the file offset are both multiples of
 * align; the unaligned head and tail, every byte when the two are not
 * congruent modulo align, and the rest after a file system refuses the
 * direct read (EINVAL) go through the ordinary path. A mapped file, or
 * direct_fd < 0, always takes the ordinary path. *direct_bytes (when not
 * NULL) tells how many bytes were read directly. */
stc_status stc_read_tensor_direct(const stc_file *file, const stc_tensor *tensor,
                                  uint64_t byte_offset, size_t len, void *dst, int direct_fd,
                                  size_t align, size_t *direct_bytes, stc_error *error);

/* Asks the system to bring the range of `tensor` (bounded as above) into
 * memory now. For a mapped file with populate set, the pages are faulted in
 * before returning (MADV_POPULATE_READ where the kernel has it), so a thread
 * can pay for the I/O ahead of the code that reads the tensor; otherwise
 * read-ahead is started (MADV_WILLNEED) and the call returns at once. A
 * no-op for the pread backend and for memory images. Advice the kernel
 * refuses is ignored: only a bad range is an error. */
stc_status stc_prefetch_tensor(const stc_file *file, const stc_tensor *tensor,
                               uint64_t byte_offset, size_t len, int populate,
                               stc_error *error);

/* One copy of a batch: len bytes of `tensor` (one of the file's own), from
 * byte_offset bytes into it, to dst (len bytes of memory the caller owns).
 * With from_file set, a mapped file's bytes are read from the file with
 * pread (as stc_read_file), never from the mapping, whose pages may hold
 * writes made through a view handed out earlier. */
typedef struct stc_copy {
    const stc_tensor *tensor;
    uint64_t byte_offset;
    size_t len;
    void *dst;
    int from_file;
} stc_copy;

/* How stc_read_batch runs. Zero-initialised fields mean the defaults, except
 * direct_fd, which must be -1 for none. */
typedef struct stc_batch_options {
    /* The most threads that copy, the calling thread included (0 or 1: the
     * calling thread only; at most STC_BATCH_MAX_THREADS). Fewer start when
     * the batch is small: one per chunk at most. */
    unsigned threads;
    /* The most bytes one thread takes at a time: many small copies together,
     * or one slice of a larger copy, cut where the file offset is a multiple
     * of 4096. 0: about a quarter of each thread's share, between
     * STC_BATCH_MIN_CHUNK and STC_BATCH_MAX_CHUNK. Rounded down to 4096. */
    size_t chunk_size;
    /* As for stc_read_tensor_direct: a descriptor of this very file opened
     * with O_DIRECT (checked once, by size, device and inode, before any
     * byte is written), or -1; align is its block size (0: 4096). */
    int direct_fd;
    size_t align;
    /* 1: once copied, each range's pages are dropped from the page cache
     * (posix_fadvise POSIX_FADV_DONTNEED, whole pages, so the pages shared
     * with a neighbouring range go too and may be read twice from storage).
     * The bytes are then read from the file with pread, never through the
     * mapping: mapped pages stay cached whatever the advice says. Once every
     * thread has stopped, every copied range is dropped once more (pages
     * that kernel read-ahead brought back after a thread dropped them), with
     * the header's pages when the first tensor is copied: the kernel drops a
     * large folio only whole. A few pages per CPU that the kernel has not
     * yet put on its lists, and folios shared with bytes not copied, can
     * stay. Does nothing for memory images. */
    int drop_cache;
} stc_batch_options;

#define STC_BATCH_MAX_THREADS 64
#define STC_BATCH_MIN_CHUNK ((size_t)1 << 20)
#define STC_BATCH_MAX_CHUNK ((size_t)64 << 20)

/* Runs `count` copies (each bounded by its tensor, as stc_read_tensor_into)
 * on up to options->threads threads, with no allocation and no global
 * state. Every copy is checked first (its tensor is the file's, its range
 * lies inside the tensor, dst is not NULL when len > 0) and the direct
 * descriptor with it: any failure there returns before a byte is written.
 * options may be NULL (the calling thread, no direct reads). Copies may be
 * in any order; copying in file order reads the storage sequentially.
 * Destinations must not overlap each other or the file's own memory.
 *
 * A read that fails midway (STC_ERR_FILE_CHANGED when the file ends early,
 * STC_ERR_IO) stops every thread from taking more work; the first error is
 * returned once all have stopped. The destinations are then partly written:
 * those copied so far hold the file's bytes, the others what they held.
 * For a mapped file, the caller checks stc_check_unchanged first.
 * *direct_bytes (when not NULL) tells how many bytes came through direct_fd.
 * Safe to call from several threads on one file. */
stc_status stc_read_batch(const stc_file *file, const stc_copy *copies, size_t count,
                          const stc_batch_options *options, size_t *direct_bytes,
                          stc_error *error);

/* MARK: - Writing */

/* One tensor to write. The shape is the logical shape (F4 counts 4-bit
 * values, F6 counts 6-bit values). */
typedef struct stc_tensor_spec {
    const char *name;
    size_t name_len;
    stc_dtype dtype;
    size_t ndim;
    const uint64_t *shape;
} stc_tensor_spec;

/* A plan fixes the layout of a file before any byte is written: the order of
 * the tensors, their offsets, and the complete header (the 8-byte length,
 * the JSON, the space padding to a multiple of 8), byte-identical to the
 * reference writer's. */
typedef struct stc_plan stc_plan;

/* Validates the specs and builds a plan. Names must be valid UTF-8, unique
 * and not "__metadata__"; sizes must fit 64 bits; F4/F6 tensors must total
 * whole bytes. metadata may be NULL when has_metadata is 0; with
 * has_metadata set, "__metadata__" is written even when it is empty.
 * Metadata keys must be unique; pairs are written sorted by key. The specs'
 * strings and shapes are copied; they need not outlive the call.
 * Errors: STC_ERR_INVALID_ARGUMENT, STC_ERR_SIZE_OVERFLOW,
 * STC_ERR_MISALIGNED, STC_ERR_NO_MEMORY. */
stc_status stc_plan_create(const stc_tensor_spec *specs, size_t count,
                           const stc_string_pair *metadata, size_t metadata_count,
                           int has_metadata, const stc_allocator *allocator,
                           stc_plan **out, stc_error *error);

void stc_plan_free(stc_plan *plan);

/* The header bytes to write first (8-byte length prefix included). */
const uint8_t *stc_plan_header(const stc_plan *plan, size_t *len);

/* Size of the whole file: header plus data. */
uint64_t stc_plan_file_size(const stc_plan *plan);

/* The index (into the caller's specs) of the i-th tensor in file order. */
size_t stc_plan_order(const stc_plan *plan, size_t i);

/* Data size in bytes of specs[spec_index]. */
uint64_t stc_plan_nbytes(const stc_plan *plan, size_t spec_index);

/* An output file written atomically: the bytes go to a new temporary file in
 * the target's directory, which stc_output_commit flushes (fsync), renames
 * over the target and makes durable (fsync of the directory). Until commit,
 * the target is untouched; after an error or stc_output_abort, the
 * temporary file is removed. */
typedef struct stc_output stc_output;

/* Creates the temporary file. Errors: STC_ERR_IO (sys_errno), NO_MEMORY. */
stc_status stc_output_open(const char *path, const stc_allocator *allocator,
                           stc_output **out, stc_error *error);

/* Appends bytes, retrying short writes and EINTR. Errors: STC_ERR_IO (for
 * example ENOSPC or EFBIG, in sys_errno); the output stays open so that the
 * caller can abort it. */
stc_status stc_output_write(stc_output *output, const void *data, size_t len,
                            stc_error *error);

/* fsync, rename over the target, fsync the directory, release. On failure
 * the temporary file is removed, the target is untouched, and the output
 * is released as well: never call abort after commit. */
stc_status stc_output_commit(stc_output *output, stc_error *error);

/* Removes the temporary file and releases the output. NULL is allowed. */
void stc_output_abort(stc_output *output);

/* Convenience for C callers: plans and atomically writes a whole file.
 * data[i] points at specs[i]'s bytes (stc_plan_nbytes of them, C order). */
stc_status stc_write_file(const char *path, const stc_tensor_spec *specs,
                          size_t count, const void *const *data,
                          const stc_string_pair *metadata, size_t metadata_count,
                          int has_metadata, const stc_allocator *allocator,
                          stc_error *error);

/* MARK: - Tensor statistics (stats.c) */

/* Summary statistics of the values of one tensor (or of part of one: partial
 * results combine exactly with stc_stats_merge).
 *
 * Every dtype is read as the values it encodes, converted to double:
 * integers and BOOL (false 0, any other byte 1) exactly, except I64/U64
 * beyond 2^53 which round to the nearest double; the float types (F64, F32,
 * F16, BF16, every F8 and the packed F4/F6) exactly, as each encodes a
 * subset of the doubles; C64 as the modulus |z| of each element, in double
 * (NaN when either part is NaN, infinite when either part is infinite and
 * none is NaN, zero when both parts are zero). Packed values: F4 holds two
 * values per byte, the first in the low nibble; F6 holds four values per
 * three bytes, read as one 24-bit little-endian word whose value i sits in
 * bits [6i, 6i + 6). Hosts are little-endian, as in the rest of the core.
 *
 * The rules, which match NumPy's nan-aware functions on the decoded values:
 *  - nan counts NaNs; inf counts +inf and -inf; zeros counts values equal to
 *    zero (-0.0 included, false for BOOL). Types without NaN or infinity
 *    (integers, BOOL, F4, F6, the F8 "fn" types have no infinity) count 0.
 *  - min and max are taken over every value but NaNs: infinities take part
 *    (np.nanmin, np.nanmax). They mean something only when count > nan.
 *  - mean and m2 (the sum of squared deviations from the mean) are taken
 *    over the finite values only: infinities are counted but left out, as
 *    NaNs are. They mean something only when finite > 0. The population
 *    standard deviation (NumPy's default ddof=0) is sqrt(m2 / finite).
 *  - Accumulation is in double. Values are taken in blocks; each block's
 *    mean and m2 come from two passes over it, and blocks (then chunks)
 *    combine with Chan's parallel formula, always in the same order: the
 *    result depends on the data only, never on the number of threads. */
typedef struct stc_stats {
    uint64_t count;  /* values seen */
    uint64_t nan;    /* NaN values */
    uint64_t inf;    /* infinite values, either sign */
    uint64_t zeros;  /* values equal to zero */
    uint64_t finite; /* count - nan - inf: the values in mean and m2 */
    double min;      /* smallest non-NaN value; +inf when there is none */
    double max;      /* largest non-NaN value; -inf when there is none */
    double mean;     /* mean of the finite values; 0 when there is none */
    double m2;       /* sum of (value - mean)^2 over the finite values */
} stc_stats;

/* Tensors of at least this many values are split into chunks of this many
 * values, spread over worker threads; smaller ones stay on the calling thread. */
#define STC_STATS_CHUNK_VALUES ((size_t)1 << 20)

/* The most worker threads one call starts (the calling thread included). */
#define STC_STATS_MAX_THREADS 16

/* Sets *stats to the statistics of no values. */
void stc_stats_init(stc_stats *stats);

/* Folds `other` into *into, as if into's values and other's had been
 * measured together (Chan et al.'s pairwise update of mean and m2). */
void stc_stats_merge(stc_stats *into, const stc_stats *other);

/* The number of values in nbytes bytes of dtype: nbytes * 2 for F4,
 * nbytes / 3 * 4 for F6, nbytes / itemsize otherwise. Returns 0 and sets
 * *out, or STC_ERR_INVALID_ARGUMENT (error filled) for an invalid dtype or a
 * byte count that is not a whole number of values (of 3-byte groups, F6). */
stc_status stc_stats_value_count(stc_dtype dtype, uint64_t nbytes, uint64_t *out,
                                 stc_error *error);

/* Computes the statistics of the nbytes bytes at data, holding values of
 * dtype (nbytes checked as by stc_stats_value_count), into *out. threads is
 * the most threads to use, the calling thread included: 0 means the number
 * of online processors, and at most STC_STATS_MAX_THREADS run. Data of more
 * than one chunk is split into chunks of STC_STATS_CHUNK_VALUES values that
 * the threads take in turn; a thread that cannot be started is simply not
 * used. data may be NULL when nbytes is 0. The data is only read, and must
 * not change during the call. Allocates one stc_stats per chunk (none for a
 * single chunk). Errors: STC_ERR_INVALID_ARGUMENT, STC_ERR_NO_MEMORY.
 * Needs no global state: safe to call from many threads at once. */
stc_status stc_stats_compute(stc_dtype dtype, const void *data, size_t nbytes,
                             unsigned threads, const stc_allocator *allocator,
                             stc_stats *out, stc_error *error);

/* Adds to counts[0 .. bins) a histogram of the finite values of the data
 * (same arguments as stc_stats_compute) over [lo, hi]: bins of equal width,
 * value v in bin floor((v - lo) / (hi - lo) * bins), hi itself in the last
 * bin, every finite value in bin 0 when lo == hi. Values outside [lo, hi],
 * NaNs and infinities are not counted. Counts are added, not set, so that
 * the pieces of a tensor read in parts accumulate. lo and hi must be finite
 * with lo <= hi, and 1 <= bins <= 4096 (else STC_ERR_INVALID_ARGUMENT).
 * Allocates one array of bins counts per thread when it uses more than one. */
stc_status stc_stats_histogram(stc_dtype dtype, const void *data, size_t nbytes,
                               double lo, double hi, size_t bins, uint64_t *counts,
                               unsigned threads, const stc_allocator *allocator,
                               stc_error *error);

#ifdef __cplusplus
}
#endif

#endif /* STC_H */
