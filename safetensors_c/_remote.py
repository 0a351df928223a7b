"""Remote files as *byte sources*: the entry points, and fsspec.

:func:`open_url` picks the source for a URL: :class:`HTTPSource` (in
:mod:`._http`) for http(s), which speaks HTTP/1.1 itself and needs no
third-party package, and :class:`FsspecSource` (here) for any other
protocol fsspec knows (``s3://``, ``gs://``, ``memory://``, ``file://``,
chained URLs, ...), read through ``fs.cat_file`` / ``fs.cat_ranges`` with
every length checked. fsspec is optional: ``pip install
"safetensors_c[remote]"``. :func:`exists` and :func:`open_fsspec_file`
are the other ways in.

What a byte source is, the errors, URLs, read planning and options live
one floor down in :mod:`._sources`; this module re-exports the names the
rest of the package uses (``_remote.is_url``, ``_remote.coalesce``, ...).

Both sources read the first ``prefetch`` bytes (256 KiB) in one request
when opened, so the header normally costs one request and never more than
two; reads are planned by :func:`plan_reads`: nearby runs coalesced, long
runs split into ``block_size`` parts fetched ``max_concurrency`` at a time.
Every loop is bounded: retries, redirects, parts, bytes read, and the time
of each request. Memory follows the bytes received (at most twice them),
never a size a server announced: each answer's buffer grows as its bytes
arrive.
"""


from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

# Re-exported: the package and its tests reach these as ``_remote.<name>``.
from ._http import DEFAULT_TIMEOUT, MAX_TIMEOUT, MIN_RATE, HTTPSource, request_deadline
from ._sources import (
    _DEFAULT_OPTIONS,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_COALESCE_GAP,
    DEFAULT_MAX_REQUESTS,
    DEFAULT_PREFETCH,
    MAX_CONCURRENCY,
    RemoteError,
    RemoteOptions,
    _is_http,
    _RangeSource,
    coalesce,
    display_url,
    is_url,
    join_url,
    plan_reads,
)

__all__ = [
    "RemoteError",
    "HTTPSource",
    "FsspecSource",
    "is_url",
    "open_url",
    "open_fsspec_file",
    "is_fsspec_file",
    "exists",
    "join_url",
    "plan_reads",
    "coalesce",
    "DEFAULT_PREFETCH",
    "RemoteOptions",
    "REMOTE_EXTRA",
]

REMOTE_EXTRA = 'pip install "safetensors_c[remote]"'


# ---------------------------------------------------------------------------
# MARK: fsspec


def _fsspec():
    try:
        import fsspec
    except ImportError:
        raise ImportError(
            f"reading URLs other than http(s) needs fsspec: {REMOTE_EXTRA}"
        ) from None
    return fsspec


class FsspecSource(_RangeSource):
    """A file of any fsspec file system, read with ``cat_file`` /
    ``cat_ranges`` (concurrent for asynchronous file systems such as s3fs);
    every answer's length is checked."""

    def __init__(
        self,
        fs,
        path: str,
        name: Optional[str] = None,
        *,
        size: Optional[int] = None,
        options: RemoteOptions = _DEFAULT_OPTIONS,
    ) -> None:
        super().__init__(display_url(name) if name else path, options)
        self.fs = fs
        self.path = path
        if size is None:
            try:
                size = fs.size(path)
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.name}: no such file") from None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise RemoteError(f"{self.name}: the file system gave no size ({size!r})")
        self.size = size
        first = min(self.prefetch, size)
        if first:
            got: List[Any] = []
            self._fetch_parts([(0, first)], lambda _, data: got.append(data))
            self._prefix = memoryview(bytes(got[0]))

    def _cat(self, start: int, end: int):
        try:
            return self.fs.cat_file(self.path, start=start, end=end)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.name}: no such file") from None

    def _fetch_parts(self, parts, deliver) -> None:
        if getattr(self.fs, "async_impl", False) and len(parts) > 1:
            results: Any = self.fs.cat_ranges(
                [self.path] * len(parts),
                [s for s, _ in parts],
                [e for _, e in parts],
                batch_size=self.max_concurrency,
                on_error="return",
            )
        else:
            results = (self._cat(s, e) for s, e in parts)  # one at a time
        for i, ((start, end), data) in enumerate(zip(parts, results)):
            if isinstance(data, BaseException):
                if isinstance(data, FileNotFoundError):
                    raise FileNotFoundError(f"{self.name}: no such file")
                raise RemoteError(f"{self.name} (bytes {start}-{end - 1}): {data!r}") from data
            self._count(len(data))
            if len(data) != end - start:
                raise RemoteError(
                    f"{self.name} (bytes {start}-{end - 1}): short read, {len(data)} of "
                    f"{end - start} bytes (the file changed or is shorter than it said)"
                )
            deliver(i, data)


def is_fsspec_file(obj: Any) -> bool:
    """True for an fsspec file object (it knows its file system and path)."""
    fsspec = sys.modules.get("fsspec")
    if fsspec is None:  # not imported: nothing can be one of its files
        return False
    fs = getattr(obj, "fs", None)
    return isinstance(fs, fsspec.AbstractFileSystem) and isinstance(getattr(obj, "path", None), str)


def open_fsspec_file(file, options: RemoteOptions = _DEFAULT_OPTIONS) -> FsspecSource:
    """A byte source over an open fsspec file object: reads go through its
    file system's range calls (concurrent where it is asynchronous), not
    through the file object's own read-ahead cache."""
    size = getattr(file, "size", None)
    if not isinstance(size, int) or isinstance(size, bool):
        size = None
    fs = file.fs
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    name = file.path if "://" in file.path else f"{protocol}://{file.path}"
    return FsspecSource(fs, file.path, name, size=size, options=options)


# ---------------------------------------------------------------------------
# MARK: entry points


def open_url(
    url: str,
    storage_options: Optional[Dict[str, Any]] = None,
    *,
    max_concurrency: int = _DEFAULT_OPTIONS.max_concurrency,
    block_size: int = _DEFAULT_OPTIONS.block_size,
    prefetch: int = _DEFAULT_OPTIONS.prefetch,
    coalesce_gap: int = _DEFAULT_OPTIONS.coalesce_gap,
) -> _RangeSource:
    """A byte source for ``url``: :class:`HTTPSource` for http(s), else an
    :class:`FsspecSource` (fsspec required). ``storage_options`` go to
    fsspec (for http(s): ``headers``, ``client_kwargs={"headers", "auth"}``,
    ``auth``, ``timeout``, ``ssl``, ``allow_insecure_redirects``,
    ``forward_headers``; see :class:`HTTPSource`). Every option is checked
    before any request; the first ``prefetch`` bytes are read now."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    if storage_options is not None and not isinstance(storage_options, dict):
        raise TypeError(
            f"storage_options must be a dict, not {type(storage_options).__name__}"
        )
    options = RemoteOptions(max_concurrency=max_concurrency, block_size=block_size,
                            prefetch=prefetch, coalesce_gap=coalesce_gap)
    if _is_http(url):
        return HTTPSource(url, storage_options, options)
    fsspec = _fsspec()
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return FsspecSource(fs, path, url, options=options)


def exists(url: str, storage_options: Optional[Dict[str, Any]] = None) -> bool:
    """Whether ``url`` names an existing file (one small request)."""
    try:
        source = open_url(url, storage_options, prefetch=8)
    except FileNotFoundError:
        return False
    source.close()
    return True
