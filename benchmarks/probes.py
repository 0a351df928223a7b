"""What a worker observes: resident memory, the page cache, and the reader.

The reader (:func:`checksum`) is the one pass that touches every byte of
every array; every competitor's result goes through it unchanged, and the
physical-limit row runs it over arrays already in memory.
"""

from __future__ import annotations

import os

import numpy as np

# -- resident memory ---------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(field.encode() + b":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    """Current resident set size (VmRSS)."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size since start or the last :func:`reset_peak_rss` (VmHWM)."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


# -- the page cache ----------------------------------------------------------


def drop_from_page_cache(path: str) -> None:
    """Evicts ``path``'s clean pages from the page cache (--cold)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages would survive DONTNEED
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# -- the reader --------------------------------------------------------------


def as_arrays(loaded) -> list:
    """The NumPy arrays inside whatever a competitor returned."""
    if isinstance(loaded, np.ndarray):
        return [loaded]
    values = loaded.values() if isinstance(loaded, dict) else loaded
    arrays = []
    for value in values:
        if isinstance(value, np.ndarray):
            arrays.append(value)
        elif value.numel():  # a torch.Tensor: a zero-copy byte view
            import torch

            arrays.append(value.reshape(-1).view(torch.uint8).numpy())
    return arrays


def checksum(arrays) -> int:
    """Reads every byte once: a wrapping sum of 8-byte words, plus the tail bytes."""
    total = 0
    for array in arrays:
        data = array.reshape(-1).view(np.uint8)
        whole = data.size - data.size % 8
        if whole:
            total += int(np.add.reduce(data[:whole].view(np.uint64)))
        if whole != data.size:
            total += int(np.add.reduce(data[whole:], dtype=np.uint64))
    return total & 0xFFFFFFFFFFFFFFFF
