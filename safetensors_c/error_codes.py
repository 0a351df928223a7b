"""Every ``code`` a :class:`SafetensorError` can carry, in one table.

A ``SafetensorError`` (a ``ValueError``) always has a ``code`` attribute: a
stable string that programs may test instead of parsing the message::

    from safetensors_c import error_codes

    try:
        tensors = load_file(path)
    except SafetensorError as e:
        if e.code == error_codes.FILE_CHANGED:
            ...  # the file was rewritten while it was read: open it again

Each constant below is that string (``FILE_CHANGED == "STC_ERR_FILE_CHANGED"``).
The set is closed: the package raises no code that is not listed here
(``tests/test_error_codes.py`` keeps it so, and checks that the C core's own
status table, ``csrc/core/status.c``, matches :data:`RAISED_BY_CORE`).
Codes are added, never renamed or reused for another meaning.
"""

from __future__ import annotations

from typing import Dict

__all__ = ["DESCRIPTIONS", "RAISED_BY_CORE", "describe"]

# MARK: raised by the C core while a file is opened or read ---------------------

NO_MEMORY = "STC_ERR_NO_MEMORY"
IO = "STC_ERR_IO"
NOT_SAFETENSORS = "STC_ERR_NOT_SAFETENSORS"
HEADER_TOO_SMALL = "STC_ERR_HEADER_TOO_SMALL"
HEADER_TOO_LARGE = "STC_ERR_HEADER_TOO_LARGE"
HEADER_LENGTH = "STC_ERR_HEADER_LENGTH"
INVALID_UTF8 = "STC_ERR_INVALID_UTF8"
INVALID_JSON = "STC_ERR_INVALID_JSON"
NESTING_TOO_DEEP = "STC_ERR_NESTING_TOO_DEEP"
DUPLICATE_KEY = "STC_ERR_DUPLICATE_KEY"
INVALID_HEADER = "STC_ERR_INVALID_HEADER"
INVALID_OFFSETS = "STC_ERR_INVALID_OFFSETS"
SIZE_OVERFLOW = "STC_ERR_SIZE_OVERFLOW"
MISALIGNED = "STC_ERR_MISALIGNED"
SIZE_MISMATCH = "STC_ERR_SIZE_MISMATCH"
TRUNCATED_DATA = "STC_ERR_TRUNCATED_DATA"
TRAILING_DATA = "STC_ERR_TRAILING_DATA"
FILE_CHANGED = "STC_ERR_FILE_CHANGED"
INVALID_ARGUMENT = "STC_ERR_INVALID_ARGUMENT"
NOT_REGULAR_FILE = "STC_ERR_NOT_REGULAR_FILE"

# MARK: raised by the Python layers --------------------------------------------

NO_SUCH_TENSOR = "STC_ERR_NO_SUCH_TENSOR"
INDEX_OUT_OF_BOUNDS = "STC_ERR_INDEX_OUT_OF_BOUNDS"
CLOSED = "STC_ERR_CLOSED"
UNSUPPORTED_DTYPE = "STC_ERR_UNSUPPORTED_DTYPE"
INVALID_DTYPE = "STC_ERR_INVALID_DTYPE"
DTYPE_MISMATCH = "STC_ERR_DTYPE_MISMATCH"
SHAPE_MISMATCH = "STC_ERR_SHAPE_MISMATCH"
INVALID_INDEX = "STC_ERR_INVALID_INDEX"
SHARD_MISMATCH = "STC_ERR_SHARD_MISMATCH"
DIGEST_MISMATCH = "STC_ERR_DIGEST_MISMATCH"
INVALID_DIGESTS = "STC_ERR_INVALID_DIGESTS"
WEAK_DIGESTS = "STC_ERR_WEAK_DIGESTS"
NO_DIGESTS = "STC_ERR_NO_DIGESTS"
REMOTE = "STC_ERR_REMOTE"
REMOTE_TIMEOUT = "STC_ERR_REMOTE_TIMEOUT"
BAD_REDIRECT = "STC_ERR_BAD_REDIRECT"
INSECURE_REDIRECT = "STC_ERR_INSECURE_REDIRECT"
RANK_MISMATCH = "STC_ERR_RANK_MISMATCH"
RANK_FAILED = "STC_ERR_RANK_FAILED"

# MARK: the table ---------------------------------------------------------------

DESCRIPTIONS: Dict[str, str] = {
    NO_MEMORY: "an allocation failed while a header was parsed or a tensor read",
    IO: "a system call failed while a file was read (the errno is in the message)",
    NOT_SAFETENSORS: "the bytes are another format (a pickle, a zip archive, ...)",
    HEADER_TOO_SMALL: "the file is shorter than the 8-byte header length",
    HEADER_TOO_LARGE: "the header length is above the limit (max_header_size)",
    HEADER_LENGTH: "the header length points past the end of the file",
    INVALID_UTF8: "the header is not valid UTF-8",
    INVALID_JSON: "the header is not strict JSON",
    NESTING_TOO_DEEP: "the header's JSON nests deeper than the limit",
    DUPLICATE_KEY: "a key appears twice in one JSON object of the header",
    INVALID_HEADER: "valid JSON, but not a valid safetensors header",
    INVALID_OFFSETS: "tensors overlap, leave holes, or a range ends before it begins",
    SIZE_OVERFLOW: "a tensor's element or bit count does not fit 64 bits",
    MISALIGNED: "a tensor's bit count is not a whole number of bytes",
    SIZE_MISMATCH: "a tensor's byte range differs from what its shape and dtype need",
    TRUNCATED_DATA: "the data section is shorter than the tensors need",
    TRAILING_DATA: "bytes follow the last tensor",
    FILE_CHANGED: "the file (or remote object) changed since it was opened",
    INVALID_ARGUMENT: "the caller passed a value the operation cannot take",
    NOT_REGULAR_FILE: "a FIFO, device or socket: never read, never waited on",
    NO_SUCH_TENSOR: "no tensor of that name in the file",
    INDEX_OUT_OF_BOUNDS: "a slice index is outside the tensor's shape",
    CLOSED: "the file handle was used after it was closed",
    UNSUPPORTED_DTYPE: "the framework has no dtype for the file's (or the array's) dtype",
    INVALID_DTYPE: "a dtype code that the format does not define",
    DTYPE_MISMATCH: "a preallocated destination has another dtype than the file's tensor",
    SHAPE_MISMATCH: "a preallocated destination has another shape than the file's tensor",
    INVALID_INDEX: "a sharded checkpoint's index is malformed or names files it may not",
    SHARD_MISMATCH: "the shards of a checkpoint come from different saves",
    DIGEST_MISMATCH: "a tensor's bytes differ from the digest recorded for them",
    INVALID_DIGESTS: "the recorded digests are malformed",
    WEAK_DIGESTS: "only the old bytes-only digests are recorded (allow_bytes_only=True accepts)",
    NO_DIGESTS: "digests were required but the file records none",
    REMOTE: "a server's answer breaks the HTTP range protocol",
    REMOTE_TIMEOUT: "a request to a server did not finish within its deadline",
    BAD_REDIRECT: "too many redirects, or a redirect to a place that is not http(s)",
    INSECURE_REDIRECT: "an https URL redirected to plain http (credentials would travel in clear)",
    RANK_MISMATCH: "the ranks of a process group opened different files or plans",
    RANK_FAILED: "another rank of the process group failed, so this one stopped too",
}

# The codes of the C core's status table, in its order (csrc/core/status.c).
RAISED_BY_CORE = (
    NO_MEMORY, IO, NOT_SAFETENSORS, HEADER_TOO_SMALL, HEADER_TOO_LARGE, HEADER_LENGTH,
    INVALID_UTF8, INVALID_JSON, NESTING_TOO_DEEP, DUPLICATE_KEY, INVALID_HEADER,
    INVALID_OFFSETS, SIZE_OVERFLOW, MISALIGNED, SIZE_MISMATCH, TRUNCATED_DATA, TRAILING_DATA,
    FILE_CHANGED, INVALID_ARGUMENT, NOT_REGULAR_FILE,
)


def describe(code: str) -> str:
    """One line saying what ``code`` means; ``KeyError`` for a code not listed."""
    return DESCRIPTIONS[code]
