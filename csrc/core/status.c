/*
 * status.c - names and messages of status codes, and filling stc_error.
 */
#include "internal.h"

#include <string.h>

static const struct {
    const char *name;
    const char *message;
} status_table[STC_STATUS_COUNT] = {
    [STC_OK] = {"STC_OK", "success"},
    [STC_ERR_NO_MEMORY] = {"STC_ERR_NO_MEMORY", "out of memory"},
    [STC_ERR_IO] = {"STC_ERR_IO", "input/output error"},
    [STC_ERR_NOT_SAFETENSORS] = {"STC_ERR_NOT_SAFETENSORS", "not a safetensors file"},
    [STC_ERR_HEADER_TOO_SMALL] = {"STC_ERR_HEADER_TOO_SMALL",
                                  "file too small to hold the 8-byte header length"},
    [STC_ERR_HEADER_TOO_LARGE] = {"STC_ERR_HEADER_TOO_LARGE", "header length is above the limit"},
    [STC_ERR_HEADER_LENGTH] = {"STC_ERR_HEADER_LENGTH",
                               "header length points past the end of the file"},
    [STC_ERR_INVALID_UTF8] = {"STC_ERR_INVALID_UTF8", "header is not valid UTF-8"},
    [STC_ERR_INVALID_JSON] = {"STC_ERR_INVALID_JSON", "header is not valid JSON"},
    [STC_ERR_NESTING_TOO_DEEP] = {"STC_ERR_NESTING_TOO_DEEP", "header nests too deeply"},
    [STC_ERR_DUPLICATE_KEY] = {"STC_ERR_DUPLICATE_KEY", "duplicate key in the header"},
    [STC_ERR_INVALID_HEADER] = {"STC_ERR_INVALID_HEADER", "invalid header"},
    [STC_ERR_INVALID_OFFSETS] = {"STC_ERR_INVALID_OFFSETS", "invalid tensor data offsets"},
    [STC_ERR_SIZE_OVERFLOW] = {"STC_ERR_SIZE_OVERFLOW", "tensor size does not fit 64 bits"},
    [STC_ERR_MISALIGNED] = {"STC_ERR_MISALIGNED", "tensor does not fill whole bytes"},
    [STC_ERR_SIZE_MISMATCH] = {"STC_ERR_SIZE_MISMATCH",
                               "tensor data size does not match its shape and dtype"},
    [STC_ERR_TRUNCATED_DATA] = {"STC_ERR_TRUNCATED_DATA", "file is truncated"},
    [STC_ERR_TRAILING_DATA] = {"STC_ERR_TRAILING_DATA", "unexpected bytes after the last tensor"},
    [STC_ERR_FILE_CHANGED] = {"STC_ERR_FILE_CHANGED", "file changed on disk since it was opened"},
    [STC_ERR_INVALID_ARGUMENT] = {"STC_ERR_INVALID_ARGUMENT", "invalid argument"},
    [STC_ERR_NOT_REGULAR_FILE] = {"STC_ERR_NOT_REGULAR_FILE",
                                  "not a regular file (a FIFO, device or socket)"},
};

const char *stc_status_name(stc_status status) {
    if ((unsigned)status >= STC_STATUS_COUNT) return "STC_UNKNOWN";
    return status_table[status].name;
}

const char *stc_status_message(stc_status status) {
    if ((unsigned)status >= STC_STATUS_COUNT) return "unknown status";
    return status_table[status].message;
}

stc_status stc__fail(stc_error *error, stc_status status, const char *message,
                     uint64_t offset, const char *tensor, size_t tensor_len) {
    if (!error) return status;
    error->status = status;
    error->message = message ? message : stc_status_message(status);
    error->offset = offset;
    error->sys_errno = 0;
    error->tensor_truncated = 0;
    error->tensor_is_key = 0;
    error->tensor_len = 0;
    error->size_expected = 0;
    error->size_found = 0;
    if (tensor) {
        size_t kept = tensor_len;
        if (kept > STC_ERROR_TENSOR_CAPACITY) {
            kept = STC_ERROR_TENSOR_CAPACITY;
            /* Do not cut a UTF-8 sequence in half. */
            while (kept > 0 && ((uint8_t)tensor[kept] & 0xC0) == 0x80) kept--;
            error->tensor_truncated = 1;
        }
        memcpy(error->tensor, tensor, kept);
        error->tensor_len = kept;
    }
    error->tensor[error->tensor_len] = '\0';
    return status;
}

stc_status stc__fail_key(stc_error *error, stc_status status, const char *message,
                         uint64_t offset, const char *key, size_t key_len) {
    stc__fail(error, status, message, offset, key, key_len);
    if (error) error->tensor_is_key = 1;
    return status;
}

stc_status stc__fail_errno(stc_error *error, const char *message, int err) {
    stc__fail(error, STC_ERR_IO, message, STC_NO_OFFSET, NULL, 0);
    if (error) error->sys_errno = err;
    return STC_ERR_IO;
}
