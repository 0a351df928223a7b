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


# -- memory by kind, residency, machine load (benchmarks/peers.py) -----------


def status_kib(pid="self", fields=("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")) -> dict:
    """Chosen ``/proc/<pid>/status`` fields in KiB ({} once the process is gone).

    RssAnon is private memory (heap, anonymous mappings): under a container's
    memory limit it can only go to swap. RssFile is mapped pages of files: page
    cache the kernel can drop and read again. VmHWM is the peak of their sum.
    """
    out = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                key, _, value = line.partition(b":")
                name = key.decode()
                if name in fields:
                    out[name] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return out


def cpu_seconds_of(pid) -> float:
    """User + system CPU time of a live process, its reaped children included."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used since boot (``/proc/stat``)."""
    with open("/proc/stat", "rb") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: all but idle and iowait
    busy = sum(values[:8]) - values[3] - values[4]
    return busy / os.sysconf("SC_CLK_TCK")


_LIBC = []


def _libc():
    if _LIBC:
        return _LIBC[0]
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    _LIBC.append(libc)
    return libc


def resident_fraction(path: str) -> float:
    """The share of ``path``'s pages in the page cache now (mincore(2) over a mapping)."""
    import ctypes
    import mmap as mmap_module

    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    libc = _libc()
    page = mmap_module.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap_module.PROT_READ, mmap_module.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            resident = int((np.frombuffer(vec, dtype=np.uint8) & 1).sum())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return resident / pages
