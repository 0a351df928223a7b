"""Sharded checkpoints: one model split over several .safetensors files.

The layout Hugging Face ``transformers`` and ``huggingface_hub`` write and
read::

    model-00001-of-00003.safetensors
    model-00002-of-00003.safetensors
    model-00003-of-00003.safetensors
    model.safetensors.index.json   {"metadata": {"total_size": N},
                                    "weight_map": {tensor name: shard file}}

A checkpoint that fits in one shard is a plain ``model.safetensors`` with no
index. :func:`save_sharded` writes this layout, :func:`load_sharded` reads it
all, and :class:`safe_open_sharded` opens it lazily with the methods of
:class:`~safetensors_c.safe_open`.

The index is untrusted input, checked before any tensor is handed out:
shard names must be plain file names inside the checkpoint's directory (no
``..``, no absolute paths, no symlink leading out); ``weight_map`` is an
allow-list (every shard holds exactly the tensors the index assigns to it,
so no tensor is missing, unlisted, or in two shards); ``total_size`` must
equal the bytes of all tensors. Every shard is itself fully validated.

One save, not a mix of two: :func:`save_sharded` draws a random save id,
writes it into every shard's metadata and, last, into the index's
``"metadata"`` (both under :data:`SAVE_ID_KEY`). When an index carries a save
id, every shard must carry the same one, or opening, loading and verifying
fail with SafetensorError ``STC_ERR_SHARD_MISMATCH`` naming the shard: so a
save killed while overwriting a checkpoint of the same layout (new shards
beside old ones, under the old index), or a shard copied in from another
save, is refused instead of loading as a silent mix. Indexes without a save
id (written by transformers, huggingface_hub or older releases) load as
before, unless two of their shards carry different save ids (shards of two
saves, under an index another tool rewrote): that is refused the same way.

For tools that write a checkpoint's files themselves (the CLI's staged
convert): :func:`parse_index` is the one validator of an index's bytes
(this layout's and the ``*.bin.index.json`` that ``convert_sharded``
reads); :func:`remove_unbound_index` and :func:`remove_stale_shards` do what
:func:`save_sharded` does before and after it writes, so that no loader
takes files of two saves for one checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import urllib.parse
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union


from . import _display, _remote, _writer, distributed, error_codes
from ._digests import add_digests
from ._archive import NotRegularFileError, open_regular
from ._checks import check_metadata, did_you_mean, error, fs_path, parse_size
from ._core import SafetensorError
from ._frameworks import adapter_for, to_neutral
from ._into import run_parallel
from ._open import safe_open

__all__ = [
    "save_sharded",
    "load_sharded",
    "safe_open_sharded",
    "parse_size",
    "INDEX_SUFFIX",
    "SAVE_ID_KEY",
    "parse_index",
    "remove_unbound_index",
    "remove_stale_shards",
]

INDEX_SUFFIX = ".safetensors.index.json"
#: the metadata key (of each shard, and of the index's "metadata") holding the save id
SAVE_ID_KEY = "safetensors_c.save_id"
_SAVE_ID = re.compile(r"[0-9a-f]{32}")
# adapter name -> the "format" transformers writes into (and expects in) shard metadata
_FORMATS = {"torch": "pt", "tensorflow": "tf", "flax": "flax", "mlx": "mlx"}
MAX_INDEX_SIZE = 100_000_000  # bytes; the same cap as a file's header
_SHARD_PATTERN = "{prefix}-{index:05d}-of-{count:05d}.safetensors"


# ---------------------------------------------------------------------------
# MARK: saving

def _check_prefix(prefix: Any) -> str:
    if (
        not isinstance(prefix, str)
        or not prefix
        or prefix in (".", "..")
        or "/" in prefix
        or "\\" in prefix
        or "\x00" in prefix
    ):
        raise ValueError(f"prefix must be a plain file name such as 'model', not {prefix!r}")
    return prefix


def _split(names: List[str], sizes: List[int], limit: int) -> List[List[int]]:
    """Shards as lists of tensor positions, filled as huggingface_hub does.

    Tensors go in order into the current shard until the next would tip it
    over ``limit``; a tensor larger than ``limit`` gets a shard of its own,
    placed when it is met (so it precedes the shard being filled).
    """
    shards: List[List[int]] = []
    current: List[int] = []
    current_size = 0
    for i, size in enumerate(sizes):
        if size > limit:
            shards.append([i])
            continue
        if current_size + size > limit:
            shards.append(current)
            current, current_size = [], 0
        current.append(i)
        current_size += size
    if current:
        shards.append(current)
    return shards


#: the bytes of work from which a progress bar is worth showing (with progress=None)
PROGRESS_MIN_BYTES = 64 << 20


def wants_progress(progress: Optional[bool], nbytes: int) -> bool:
    """Whether to show a progress bar: ``progress=True`` forces one,
    ``False`` never shows one, and ``None`` (auto) shows one only when
    stderr is a terminal and the work is large (``nbytes`` of at least
    :data:`PROGRESS_MIN_BYTES`), so that logs and pipes get no bar text."""
    if progress is not None:
        return bool(progress)
    if nbytes < PROGRESS_MIN_BYTES:
        return False
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    """A tqdm bar over shards, when wanted (see :func:`wants_progress`),
    useful (2+ shards) and tqdm is installed."""
    if not enabled or total < 2:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="shard", file=sys.stderr)


def _progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar to update by hand (from worker threads), or None; as :func:`_progress`."""
    if not enabled or total < 2:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="shard", file=sys.stderr)


# Mapped shards are populated in pieces of at most this many bytes.
_POPULATE_PIECE = 64 << 20


def save_sharded(
    tensors: Mapping[str, Any],
    directory: Union[str, os.PathLike],
    max_shard_size: Union[int, str] = "5GB",
    prefix: str = "model",
    metadata: Optional[Dict[str, str]] = None,
    *,
    framework: str = "np",
    progress: Optional[bool] = None,
    digests: bool = False,
) -> Dict[str, Any]:
    """Saves ``tensors`` into ``directory`` as a (possibly) sharded checkpoint.

    Tensors fill shards in order; a shard is closed when the next tensor would
    take it past ``max_shard_size`` bytes (an int, or "5GB", "500MB",
    "10KiB": GB = 10^9, GiB = 2^30), and a tensor larger than that is alone
    in its shard. Shards are ``{prefix}-00001-of-0000N.safetensors`` with a
    ``{prefix}.safetensors.index.json`` written last (sorted keys, 2-space
    indent, as transformers writes it); one shard is a plain
    ``{prefix}.safetensors`` with no index. ``metadata`` goes into every
    shard. Shard files and an index left from an earlier save with this
    prefix are removed. Every input is checked before anything is written;
    each file is written atomically. Returns the index as a dict.

    With several shards, a random save id goes into every shard's metadata
    and into the index (:data:`SAVE_ID_KEY`), so that a save interrupted
    while overwriting a checkpoint of the same layout is refused when loaded
    rather than read as a mix of two saves (see the module docstring). Since
    the shards then carry metadata, a ``"format"`` is added when
    ``metadata`` has none and the framework is one transformers knows
    (``"pt"``, ``"tf"``, ``"flax"``, ``"mlx"``), as transformers and
    huggingface_hub write it and require it of metadata they read.
    ``digests=True`` records each shard's v2 digests, as ``save_file(...,
    digests=True)`` does, for ``verify_digests=True`` and ``safetensors-c verify``.
    With several shards, a tqdm bar (if tqdm is installed) counts them on
    stderr: ``progress=None`` (the default) shows it only when stderr is a
    terminal and the tensors come to 64 MiB or more, ``True`` always,
    ``False`` never.

    ``framework`` names the arrays' framework ("np", "pt", "flax", "tf",
    "paddle", "mlx"), with the same checks as that framework's ``save_file``.
    """
    adapter = adapter_for(framework)
    neutral = to_neutral(adapter, tensors)
    metadata = check_metadata(metadata)
    names = list(neutral)
    limit = parse_size(max_shard_size)
    prefix = _check_prefix(prefix)
    directory = fs_path(directory, "directory")
    sizes = [int(neutral[name].data.nbytes) for name in names]
    shards = _split(names, sizes, limit) or [[]]
    count = len(shards)
    if count == 1:
        files = [f"{prefix}.safetensors"]
    else:
        files = [_SHARD_PATTERN.format(prefix=prefix, index=i + 1, count=count) for i in range(count)]
    weight_map = {names[i]: files[k] for k, shard in enumerate(shards) for i in shard}
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    if count > 1:  # one file needs no index, so nothing binds it
        save_id = secrets.token_hex(16)
        metadata = dict(metadata or {}, **{SAVE_ID_KEY: save_id})
        # transformers and huggingface_hub refuse a shard whose metadata lacks
        # the "format" they know (they write it themselves): name the framework.
        if "format" not in metadata and adapter.NAME in _FORMATS:
            metadata["format"] = _FORMATS[adapter.NAME]
        index["metadata"][SAVE_ID_KEY] = save_id

    os.makedirs(directory, exist_ok=True)
    index_path = os.path.join(directory, prefix + INDEX_SUFFIX)
    if count > 1:
        remove_unbound_index(index_path)
    show = wants_progress(progress, sum(sizes))
    for file, shard in _progress(zip(files, shards), count, "Saving shards", show):
        part = {names[i]: neutral[names[i]] for i in shard}
        shard_metadata = add_digests(part, metadata) if digests else metadata
        _writer.write(part, shard_metadata, os.path.join(directory, file))
    if count > 1:
        _writer.write_text_atomic(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")
    remove_stale_shards(directory, prefix, set(files), remove_index=count == 1)
    return index


def remove_unbound_index(index_path: str) -> None:
    """Removes the index at ``index_path`` unless it carries a save id.

    Call it before overwriting the shards of a checkpoint in place. An
    index with no save id (written by another tool or an older release)
    would, if the save were cut short, present old and new shards as one
    checkpoint; with it gone, nothing does. An index with a save id stays:
    it refuses shards of another save by itself. A missing index is fine."""
    if not os.path.lexists(index_path):
        return
    try:
        _, index_metadata = _read_index(index_path)
    except (OSError, SafetensorError):
        index_metadata = None
    if (index_metadata or {}).get(SAVE_ID_KEY) is None:
        os.unlink(index_path)


def remove_stale_shards(directory: str, prefix: str, keep: set, remove_index: bool) -> None:
    """Removes what an earlier save with ``prefix`` left in ``directory``.

    Call it after a save's files are in place. Every
    ``{prefix}-NNNNN-of-NNNNN.safetensors`` whose name is not in ``keep`` is
    removed, and, when ``remove_index`` (the new checkpoint is one file
    with no index), ``{prefix}.safetensors.index.json`` too: so that no
    loader mixes the two saves."""
    stale = re.compile(re.escape(prefix) + r"-\d{5}-of-\d{5}\.safetensors")
    for entry in os.scandir(directory):
        if entry.name not in keep and stale.fullmatch(entry.name) and entry.is_file():
            os.unlink(entry.path)
    if remove_index:
        try:
            os.unlink(os.path.join(directory, prefix + INDEX_SUFFIX))
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------
# MARK: reading the index

def _reject_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _IndexError(f"duplicate key {key!r}: the index repeats the key {key!r}, "
                              f"and JSON readers disagree on which value wins")
        result[key] = value
    return result


def _reject_constant(name: str) -> None:
    raise _IndexError(f"{name} is not valid JSON")


class _IndexError(Exception):
    """Raised inside JSON parsing; reported as a SafetensorError."""


def _index_error(path: str, message: str) -> SafetensorError:
    return error(f"{path}: invalid sharded checkpoint index: {message}", error_codes.INVALID_INDEX)


def _read_regular_file(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file, opened by the one check every
    reader of checkpoint files shares (a non-blocking open, then ``fstat`` of
    that descriptor: a FIFO would otherwise wait for a writer forever)."""
    try:
        fd, _ = open_regular(path)
    except NotRegularFileError as exc:
        raise error(f"{exc} as a checkpoint index", error_codes.NOT_REGULAR_FILE) from None
    try:
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_index(
    path: str, storage_options: Optional[Dict[str, Any]] = None
) -> Tuple[Dict[str, str], Optional[Dict[str, Any]]]:
    """(weight_map, metadata) of an index file (a path or a URL), with its
    structure checked."""
    if _remote.is_url(path):
        source = _remote.open_url(path, storage_options)
        try:
            path = source.name
            if source.size > MAX_INDEX_SIZE:
                raise _index_error(path, f"the file is larger than {MAX_INDEX_SIZE} bytes")
            raw = bytes(source.read_at(0, source.size))
        finally:
            source.close()
    else:
        raw = _read_regular_file(path, MAX_INDEX_SIZE + 1)
    return parse_index(raw, path)


def parse_index(raw: bytes, path: str) -> Tuple[Dict[str, str], Optional[Dict[str, Any]]]:
    """(weight_map, metadata) of the bytes of a checkpoint index, checked.

    The one validator of both kinds of index: ``*.safetensors.index.json``
    and the ``*.bin.index.json`` that :func:`safetensors_c.convert.convert_sharded`
    reads. ``raw`` may be at most :data:`MAX_INDEX_SIZE` bytes of UTF-8
    JSON: an object whose ``"weight_map"`` maps tensor names to shard file
    names (strings) and whose optional ``"metadata"`` is an object, with a
    non-negative integer ``"total_size"`` and a well-formed save id if it
    has them. A key repeated anywhere (JSON readers disagree on which value
    wins) and the non-JSON constants ``NaN`` and ``Infinity`` are refused.
    ``path`` only names the index in messages. Raises SafetensorError
    ``STC_ERR_INVALID_INDEX``. Shard names are not checked here: each
    reader resolves them against its own directory.
    """
    if len(raw) > MAX_INDEX_SIZE:
        raise _index_error(path, f"the file is larger than {MAX_INDEX_SIZE} bytes")
    try:
        text = raw.decode("utf-8")
        index = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except UnicodeDecodeError as exc:
        raise _index_error(path, f"not UTF-8 ({exc})") from None
    except _IndexError as exc:
        raise _index_error(path, str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise _index_error(path, f"not valid JSON ({exc})") from None
    if not isinstance(index, dict):
        raise _index_error(path, f"expected a JSON object, found {type(index).__name__}")
    if "weight_map" not in index:
        raise _index_error(path, 'no "weight_map"')
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict):
        raise _index_error(path, '"weight_map" must map tensor names to shard file names')
    for name, file in weight_map.items():
        if not isinstance(file, str):
            raise _index_error(
                path, f"tensor {name!r}: shard file name must be a string, not {file!r}"
            )
    metadata = index.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _index_error(path, '"metadata" must be an object')
    if metadata is not None and "total_size" in metadata:
        total = metadata["total_size"]
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise _index_error(path, f'"total_size" must be a non-negative integer, not {total!r}')
    if metadata is not None and SAVE_ID_KEY in metadata:
        save_id = metadata[SAVE_ID_KEY]
        if not isinstance(save_id, str) or not _SAVE_ID.fullmatch(save_id):
            raise _index_error(path, f'"{SAVE_ID_KEY}" must be 32 lowercase hex digits, '
                                     f"not {str(save_id)[:80]!r}")
    return weight_map, metadata


def _check_save_id(index_path: str, index_metadata: Optional[Dict[str, Any]], file: str,
                   shard_metadata: Optional[Dict[str, str]]) -> None:
    """Raises unless the shard ``file`` is from the save the index records
    (when the index records one)."""
    expected = (index_metadata or {}).get(SAVE_ID_KEY)
    if expected is None:
        return
    found = (shard_metadata or {}).get(SAVE_ID_KEY)
    if found != expected:
        what = "no save id" if found is None else f"save id {found[:80]!r}"
        raise error(
            f"{index_path}: shard {file!r} is not from the save this index describes (it "
            f"carries {what}, the index {expected!r}): a save into this directory was "
            f"interrupted, or shards of different saves were mixed; save the checkpoint again",
            error_codes.SHARD_MISMATCH,
        )


def _check_one_save(index_path: str, index_metadata: Optional[Dict[str, Any]],
                    shard_metadata: Mapping[str, Optional[Dict[str, str]]]) -> None:
    """For an index without a save id (rewritten by another tool, say): raises
    when two shards (file -> metadata) carry different save ids, which only
    shards of two saves do. Shards without one are not judged."""
    if (index_metadata or {}).get(SAVE_ID_KEY) is not None:
        return  # each shard was checked against the index's own
    first: Optional[Tuple[str, str]] = None
    for file, metadata in shard_metadata.items():
        found = (metadata or {}).get(SAVE_ID_KEY)
        if found is None:
            continue
        if first is None:
            first = (file, found)
        elif found != first[1]:
            raise error(
                f"{index_path}: shards {first[0]!r} and {file!r} are from different saves "
                f"(save ids {first[1][:80]!r} and {found[:80]!r}): shards of different saves "
                f"were mixed; save the checkpoint again",
                error_codes.SHARD_MISMATCH,
            )


def _shard_path(directory: str, real_directory: str, name: str, index_path: str) -> str:
    """The path (or URL) of shard ``name``, which must stay inside the
    directory."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or os.path.isabs(name)
    ):
        raise _index_error(
            index_path,
            f"shard {name!r} is not a plain file name in the checkpoint's directory",
        )
    if _remote.is_url(directory):
        return _remote.join_url(directory, name)
    path = os.path.join(directory, name)
    real = os.path.realpath(path)
    if real == real_directory or os.path.commonpath([real, real_directory]) != real_directory:
        raise _index_error(
            index_path, f"shard {name!r} is a symbolic link leading out of the checkpoint's "
            f"directory (to {real!r})"
        )
    return path


def _locate(
    path, prefix: str, storage_options: Optional[Dict[str, Any]] = None
) -> Tuple[str, Optional[str], Optional[str]]:
    """(directory, index path or None, single-file name or None); for a
    URL, the directory's URL and the index's URL."""
    if isinstance(path, str) and _remote.is_url(path):
        return _locate_url(path, _check_prefix(prefix), storage_options)
    if storage_options is not None:
        raise TypeError("storage_options applies only to URLs (e.g. 'https://...', 's3://...')")
    path = fs_path(path, "path")
    prefix = _check_prefix(prefix)
    if os.path.isdir(path):
        index = os.path.join(path, prefix + INDEX_SUFFIX)
        if os.path.exists(index):  # a FIFO or device here is refused when read
            return path, index, None
        single = os.path.join(path, prefix + ".safetensors")
        if os.path.isfile(single):
            return path, None, prefix + ".safetensors"
        raise FileNotFoundError(
            f"{path}: no sharded checkpoint here: neither {prefix + INDEX_SUFFIX} nor "
            f"{prefix}.safetensors exists"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint directory or file")
    directory = os.path.dirname(path) or "."
    if path.endswith(".json"):
        return directory, path, None
    return directory, None, os.path.basename(path)


def _locate_url(url: str, prefix: str, storage_options) -> Tuple[str, Optional[str], Optional[str]]:
    """``_locate`` for a URL: an index (``.json``), a single ``.safetensors``
    file, or else a directory, where the index is looked for first (one
    8-byte request; a 404 moves on to ``{prefix}.safetensors``)."""
    head, sep, query = url.partition("?")
    if head.endswith(".json") or head.endswith(".safetensors"):
        directory, _, name = head.rpartition("/")
        directory += sep + query
        if head.endswith(".json"):
            return directory, url, None
        return directory, None, urllib.parse.unquote(name)
    directory = head.rstrip("/") + sep + query
    index = _remote.join_url(directory, prefix + INDEX_SUFFIX)
    if _remote.exists(index, storage_options):
        return directory, index, None
    if _remote.exists(_remote.join_url(directory, prefix + ".safetensors"), storage_options):
        return directory, None, prefix + ".safetensors"
    raise FileNotFoundError(
        f"{_remote.display_url(directory)}: no sharded checkpoint here: neither "
        f"{prefix + INDEX_SUFFIX} nor {prefix}.safetensors exists"
    )


def _join(directory: str, name: str) -> str:
    """The single file ``name`` in ``directory`` (a path or a URL)."""
    if _remote.is_url(directory):
        return _remote.join_url(directory, name)
    return os.path.join(directory, name)


# ---------------------------------------------------------------------------
# MARK: opening

class safe_open_sharded:
    """Opens a sharded checkpoint lazily, with the methods of ``safe_open``.

    safe_open_sharded(path, framework="np", device="cpu", *, prefix="model",
                      backend="auto", storage_options=None, verify_digests=False,
                      allow_bytes_only=False)

    ``path`` is the checkpoint's directory, its index file, or a single
    .safetensors file, as a path or a URL (``https://``, ``s3://``, ...;
    ``storage_options`` go to fsspec). For a URL each shard's header is
    fetched here (one request, two for a header over 256 KiB) and the
    tensors' bytes only when asked for. Every shard is opened (mapped and its header fully
    validated) once, here, and checked against the index; no tensor data is
    read until asked for. ``get_tensor``, ``get_slice`` and ``get_tensors``
    then serve every tensor from its shard, zero-copy.

    When the index carries a save id (:data:`SAVE_ID_KEY`), every shard must
    carry the same one (SafetensorError ``STC_ERR_SHARD_MISMATCH`` otherwise).
    ``verify_digests`` and ``allow_bytes_only`` apply to every shard as in
    :class:`~safetensors_c.safe_open`.
    """

    def __init__(
        self,
        path,
        framework: str = "np",
        device: Any = "cpu",
        *,
        prefix: str = "model",
        backend: str = "auto",
        storage_options: Optional[Dict[str, Any]] = None,
        verify_digests: bool = False,
        allow_bytes_only: bool = False,
    ) -> None:
        self._shards: Optional[Dict[str, safe_open]] = None
        directory, index_path, single = _locate(path, prefix, storage_options)
        self._directory = directory
        self._index_path = index_path
        if index_path is not None:
            weight_map, index_metadata = _read_index(index_path, storage_options)
        else:
            weight_map, index_metadata = None, None
        shards: Dict[str, safe_open] = {}
        options = dict(backend=backend, storage_options=storage_options,
                       verify_digests=verify_digests, allow_bytes_only=allow_bytes_only)
        try:
            if weight_map is None:
                shards[single] = safe_open(_join(directory, single), framework, device, **options)
                weight_map = {name: single for name in shards[single].keys()}
            else:
                real_directory = os.path.realpath(directory)
                files = sorted(set(weight_map.values()))
                paths = [_shard_path(directory, real_directory, f, index_path) for f in files]
                for file, shard_path in zip(files, paths):
                    shards[file] = safe_open(shard_path, framework, device, **options)
                    _check_save_id(index_path, index_metadata, file, shards[file].metadata())
                _check_one_save(index_path, index_metadata,
                                {file: shard.metadata() for file, shard in shards.items()})
                self._check_against_index(index_path, weight_map, index_metadata, shards)
        except BaseException:
            for shard in shards.values():
                shard.close()
            raise
        self._weight_map: Dict[str, str] = weight_map
        self._index_metadata = index_metadata
        self._shards = shards

    @staticmethod
    def _check_against_index(index_path, weight_map, index_metadata, shards) -> None:
        total = 0
        for file, shard in shards.items():
            present = shard.keys()
            for name in present:
                listed = weight_map.get(name)
                if listed is None:
                    raise _index_error(
                        index_path,
                        f"shard {file!r} holds tensor {name!r}, which the index's weight_map "
                        "does not list",
                    )
                if listed != file:
                    raise _index_error(
                        index_path,
                        f"tensor {name!r} is in two shards: {listed!r} (as the index says) "
                        f"and {file!r}",
                    )
            present_set = set(present)
            for name, listed in weight_map.items():
                if listed == file and name not in present_set:
                    raise _index_error(
                        index_path,
                        f"tensor {name!r} is listed in shard {file!r}, which does not hold it",
                    )
            handle = shard.reader
            total += handle.file_size - handle.data_start  # the tensors tile the data exactly
        if index_metadata is not None and "total_size" in index_metadata:
            if index_metadata["total_size"] != total:
                raise _index_error(
                    index_path,
                    f'"total_size" is {index_metadata["total_size"]}, but the shards\' tensors '
                    f"take {total} bytes",
                )

    # -- lifetime -------------------------------------------------------

    def _open_shards(self) -> Dict[str, safe_open]:
        shards = self._shards
        if shards is None:
            raise error(
                "this safe_open_sharded handle is closed; tensors it returned stay valid, "
                "but open the checkpoint again to read more",
                error_codes.CLOSED,
            )
        return shards

    def _shard_of(self, name: str) -> safe_open:
        shards = self._open_shards()
        file = self._weight_map.get(name) if isinstance(name, str) else None
        if file is None:
            where = self._index_path or self._directory
            raise error(f"no tensor named {name!r} in checkpoint {where!r}"
                        f"{did_you_mean(name, self._weight_map)}", error_codes.NO_SUCH_TENSOR)
        return shards[file]

    def close(self) -> None:
        """Closes every shard. Tensors already returned stay valid."""
        shards, self._shards = self._shards, None
        for shard in (shards or {}).values():
            shard.close()

    def __enter__(self) -> "safe_open_sharded":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the index ------------------------------------------------------

    def keys(self) -> List[str]:
        """Every tensor name, sorted."""
        self._open_shards()
        return sorted(self._weight_map)

    def offset_keys(self) -> List[str]:
        """Tensor names shard by shard, each shard in file order."""
        return [name for shard in self._open_shards().values() for name in shard.offset_keys()]

    def metadata(self) -> Optional[Dict[str, str]]:
        """The ``__metadata__`` of the first shard (save_sharded gives every
        shard the same), or None."""
        shards = self._open_shards()
        return next(iter(shards.values())).metadata() if shards else None

    def index_metadata(self) -> Optional[Dict[str, Any]]:
        """The index's ``"metadata"`` object (None for a single file)."""
        self._open_shards()
        return None if self._index_metadata is None else dict(self._index_metadata)

    @property
    def closed(self) -> bool:
        """True once the handle is closed, as for a Python file object."""
        return self._shards is None

    @property
    def directory(self) -> str:
        """The directory (or URL prefix) the shards are read from."""
        return self._directory

    @property
    def weight_map(self) -> Dict[str, str]:
        """Tensor name -> shard file name."""
        return dict(self._weight_map)

    @property
    def shard_files(self) -> List[str]:
        """The shard file names, in order."""
        return list(self._open_shards())

    @property
    def shards(self) -> Dict[str, safe_open]:
        """The open shard handles by shard file name, in the order of
        :attr:`shard_files` (sorted by file name). A new dict each time;
        the handles stay owned by this object, so closing it closes them.
        For code that works shard by shard below this API, such as the CLI,
        ``diff`` and ``load_model``. A SafetensorError (``STC_ERR_CLOSED``)
        once the handle is closed."""
        return dict(self._open_shards())

    # -- tensors --------------------------------------------------------

    def get_tensor(self, name: str):
        return self._shard_of(name).get_tensor(name)

    def get_slice(self, name: str):
        return self._shard_of(name).get_slice(name)

    def get_tensors(self, *, progress: Optional[bool] = None,
                    max_workers: Optional[int] = None) -> Dict[str, Any]:
        """Every tensor, shard by shard, each shard in file order.

        The shards are read concurrently on at most ``max_workers`` threads
        (default: the number of CPUs). For mapped shards the workers bring
        the pages in themselves (``MADV_POPULATE_READ``, in pieces of at
        most 64 MiB, so that one large shard keeps every worker busy): the
        storage is read in parallel now, instead of page by page later when
        the tensors are first used. ``progress``: a tqdm bar over the shards,
        as for :func:`load_sharded`.
        """
        shards = list(self._open_shards().values())
        pieces = []
        for shard in shards:
            reader = shard.reader
            if not getattr(reader, "mapped", False) or not hasattr(reader, "prefetch"):
                continue
            for name in reader.offset_keys():
                begin, end = reader.info(name)[3:5]
                for offset in range(0, end - begin, _POPULATE_PIECE):
                    length = min(_POPULATE_PIECE, end - begin - offset)
                    pieces.append((reader, name, offset, length))
        nbytes = sum(shard.reader.file_size for shard in shards)
        bar = _progress_bar(len(shards), "Loading shards", wants_progress(progress, nbytes))
        try:
            run_parallel(lambda p: p[0].prefetch(p[1], p[2], p[3]), pieces, max_workers)

            def one(shard: safe_open) -> Dict[str, Any]:
                tensors = shard.get_tensors()
                if bar is not None:
                    bar.update(1)
                return tensors

            result: Dict[str, Any] = {}
            for tensors in run_parallel(one, shards, max_workers):
                result.update(tensors)
        finally:
            if bar is not None:
                bar.close()
        return result

    def __contains__(self, name: object) -> bool:
        self._open_shards()
        return name in self._weight_map

    def __len__(self) -> int:
        self._open_shards()
        return len(self._weight_map)

    def __repr__(self) -> str:
        if self._shards is None:
            return "<safetensors_c.safe_open_sharded (closed)>"
        return (
            f"<safetensors_c.safe_open_sharded {self._directory!r}: "
            f"{len(self._weight_map)} tensors in {len(self._shards)} shards>"
        )

    def __getitem__(self, name: str):
        """``f[name]`` is ``f.get_tensor(name)`` (and tab-completes in IPython)."""
        return self.get_tensor(name)

    def _repr_html_(self) -> str:
        return _display.sharded_html(self)

    def _ipython_key_completions_(self) -> List[str]:
        return self.keys()


def load_sharded(
    path,
    framework: str = "np",
    device: Any = "cpu",
    *,
    prefix: str = "model",
    backend: str = "auto",
    progress: Optional[bool] = None,
    storage_options: Optional[Dict[str, Any]] = None,
    max_workers: Optional[int] = None,
    process_group: Any = None,
    plan: Any = None,
    verify_digests: bool = False,
    allow_bytes_only: bool = False,
) -> Dict[str, Any]:
    """Every tensor of a sharded checkpoint (a directory, its index file, or
    a single .safetensors file; a path or a URL, with ``storage_options``
    for fsspec). The shards are read concurrently on at most ``max_workers``
    threads (default: the number of CPUs; see
    :meth:`safe_open_sharded.get_tensors`). With several shards a tqdm bar
    (if tqdm is installed) counts them on stderr: ``progress=None`` (the
    default) shows it only when stderr is a terminal and the shards come to
    64 MiB or more, ``True`` always, ``False`` never.

    With ``process_group`` (torch.distributed; every rank calls this
    together) each rank reads ~1/N of the checkpoint's bytes and the ranks
    exchange the rest; with ``plan`` (tensor name -> dimension) each keeps
    only its tensor-parallel part of the planned tensors. See
    :mod:`safetensors_c.distributed`.

    Shards of another save than the index's are refused (see
    :class:`safe_open_sharded`); ``verify_digests`` and ``allow_bytes_only``
    check every shard's digests as :class:`~safetensors_c.safe_open` does
    (not with ``process_group``).
    """
    if process_group is not None:
        if verify_digests:
            raise ValueError("verify_digests=True is not supported with process_group=; "
                             "verify the checkpoint first (safetensors-c verify)")
        return _load_distributed(path, prefix, storage_options, framework, device, plan,
                                 max_workers, process_group)
    if plan is not None:
        raise ValueError("plan= splits tensors between ranks: it needs process_group=")
    with safe_open_sharded(
        path, framework, device, prefix=prefix, backend=backend, storage_options=storage_options,
        verify_digests=verify_digests, allow_bytes_only=allow_bytes_only,
    ) as f:
        return f.get_tensors(progress=progress, max_workers=max_workers)


def _load_distributed(path, prefix, storage_options, framework, device, plan, max_workers,
                      process_group) -> Dict[str, Any]:
    """load_sharded(process_group=...): the index is read, and the shards'
    save ids checked, inside the ranks' agreement (distributed.load_files),
    so that an index missing or a mix of saves on one rank reaches every
    rank; the shards' headers come from the files load_files opens (read
    without read-ahead on this rank's account)."""
    if (isinstance(path, str) and _remote.is_url(path)) or storage_options is not None:
        raise error("process_group= reads local files (or files on a shared file system), not URLs")
    found: Dict[str, Any] = {}

    def find() -> List[str]:
        directory, index_path, single = _locate(path, prefix)
        found["index_path"] = index_path
        if index_path is None:
            found["weight_map"] = None
            return [_join(directory, single)]
        weight_map, found["index_metadata"] = _read_index(index_path, None)
        found["weight_map"] = weight_map
        real_directory = os.path.realpath(directory)
        found["names"] = sorted(set(weight_map.values()))
        return [_shard_path(directory, real_directory, f, index_path) for f in found["names"]]

    def check(metadatas: Sequence[Optional[Dict[str, str]]]) -> None:
        if found["index_path"] is None:
            return
        index_path, index_metadata = found["index_path"], found["index_metadata"]
        headers = dict(zip(found["names"], metadatas))
        for name, metadata in headers.items():
            _check_save_id(index_path, index_metadata, name, metadata)
        _check_one_save(index_path, index_metadata, headers)

    result = distributed.load_files(find, process_group, framework=framework, device=device,
                                    plan=plan, max_workers=max_workers, check=check)
    weight_map = found["weight_map"]
    if weight_map is not None and set(result) != set(weight_map):
        extra = sorted(set(result) - set(weight_map))
        absent = sorted(set(weight_map) - set(result))
        raise _index_error(
            found["index_path"],
            f"the shards and the index's weight_map disagree (in the shards only: {extra[:5]}; "
            f"in the index only: {absent[:5]})",
        )
    return result
