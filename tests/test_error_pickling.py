"""Errors survive pickling: multiprocessing, DataLoader workers and
concurrent.futures send a worker's exception to its parent with pickle.

Every exception class the package defines is raised here from a real call
site, pickled and unpickled (and, for the whole family, sent back from a
worker process), and must keep its type, its message, its ``code`` and its
other attributes (``found``, ``member``). A test enumerates the package's
exception classes, so a new one without a case here fails.
"""

from __future__ import annotations

import ast
import io
import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError, SliceIndexError, _remote
from safetensors_c.convert import ConversionError, UnsafePickleError, convert
from safetensors_c._archive import ArchiveError, NotRegularFileError, Source, ZipArchive
from safetensors_c.numpy import save_file

from remote_servers.hostile import HostileServer, VirtualFile


def _checkpoint(tmp_path) -> str:
    path = str(tmp_path / "x.safetensors")
    save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, path)
    return path


# Each case: a function of tmp_path that raises the exception from a real call.


def _core_error(tmp_path):
    safetensors_c.load(b"this is not a safetensors file at all")


def _python_error(tmp_path):
    with safetensors_c.safe_open(_checkpoint(tmp_path), framework="np") as f:
        pass
    f.get_tensor("w")  # closed handle


def _slice_error(tmp_path):
    with safetensors_c.safe_open(_checkpoint(tmp_path), framework="np") as f:
        f.get_slice("w")[7]


def _slice_error_over_a_file_object(tmp_path):
    data = open(_checkpoint(tmp_path), "rb").read()
    with safetensors_c.safe_open(io.BytesIO(data), framework="np") as f:
        f.get_slice("w")[:, 9]


def _remote_error(tmp_path):
    data = open(_checkpoint(tmp_path), "rb").read()
    with HostileServer(VirtualFile(data), "ignore-range") as server:
        safetensors_c.safe_open(server.url, framework="np", storage_options={"timeout": 2.0})


def _conversion_error(tmp_path):
    src = tmp_path / "empty.bin"
    src.write_bytes(b"")
    convert(str(src), str(tmp_path / "out.safetensors"))


def _unsafe_pickle(tmp_path):
    src = tmp_path / "evil.pkl"
    # GLOBAL os.system, a string, TUPLE1, REDUCE, STOP: never executed.
    src.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    convert(str(src), str(tmp_path / "out.safetensors"))


def _archive_error(tmp_path):
    ZipArchive(b"PK\x03\x04 but nothing a zip needs", "broken.pt")


def _not_regular_file(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    Source(str(fifo))


CASES = {
    "core SafetensorError": (_core_error, SafetensorError),
    "python SafetensorError": (_python_error, SafetensorError),
    "SliceIndexError (mapped)": (_slice_error, SliceIndexError),
    "SliceIndexError (file object)": (_slice_error_over_a_file_object, SliceIndexError),
    "RemoteError": (_remote_error, _remote.RemoteError),
    "ConversionError": (_conversion_error, ConversionError),
    "UnsafePickleError": (_unsafe_pickle, UnsafePickleError),
    "ArchiveError": (_archive_error, ArchiveError),
    "NotRegularFileError": (_not_regular_file, NotRegularFileError),
}

# Attributes beyond the message that callers read.
ATTRIBUTES = ("code", "found", "member", "errno", "strerror", "filename")


def _raised(case, tmp_path) -> BaseException:
    function, kind = CASES[case]
    with pytest.raises(kind) as info:
        function(tmp_path)
    assert type(info.value) is kind, f"{case}: raised {type(info.value).__name__}"
    return info.value


def _same(original: BaseException, copy: BaseException) -> None:
    assert type(copy) is type(original)
    assert str(copy) == str(original)
    assert copy.args == original.args
    for attribute in ATTRIBUTES:
        assert getattr(copy, attribute, None) == getattr(original, attribute, None), attribute


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_pickled_error_keeps_its_type_message_and_code(case, tmp_path):
    error = _raised(case, tmp_path)
    if isinstance(error, SafetensorError):
        assert isinstance(error.code, str) and error.code.startswith("STC_"), error.code
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        _same(error, pickle.loads(pickle.dumps(error, protocol=protocol)))


def test_slice_index_error_has_its_own_code(tmp_path):
    error = _raised("SliceIndexError (mapped)", tmp_path)
    assert error.code == "STC_ERR_INDEX_OUT_OF_BOUNDS"
    assert isinstance(error, IndexError) and isinstance(error, SafetensorError)


def test_unsafe_pickle_error_keeps_what_it_found(tmp_path):
    error = pickle.loads(pickle.dumps(_raised("UnsafePickleError", tmp_path)))
    assert error.found == "os.system"


def _raise_in_worker(case: str, directory: str) -> None:
    import pathlib

    CASES[case][0](pathlib.Path(directory))


def test_errors_cross_a_process_pool(tmp_path):
    """What a DataLoader worker or a ProcessPoolExecutor hands its parent."""
    expected = {}
    for i, case in enumerate(sorted(CASES)):
        directory = tmp_path / f"parent-{i}"
        directory.mkdir()
        expected[case] = _raised(case, directory)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        futures = {}
        for i, case in enumerate(sorted(CASES)):
            directory = tmp_path / f"worker-{i}"
            directory.mkdir()
            futures[case] = pool.submit(_raise_in_worker, case, str(directory))
        for case, future in futures.items():
            error = future.exception(timeout=120)
            assert error is not None, case
            original = expected[case]
            assert type(error) is type(original), case
            for attribute in ("code", "found"):
                assert getattr(error, attribute, None) == getattr(original, attribute, None)


def _package_exception_classes():
    """Names of the exception classes the package's sources define (read with
    ast: importing every framework module into one process is not safe)."""
    package = os.path.dirname(safetensors_c.__file__)
    found = set()
    for folder, _, files in os.walk(package):
        for name in files:
            if not name.endswith(".py"):
                continue
            with open(os.path.join(folder, name), encoding="utf-8") as source:
                tree = ast.parse(source.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    bases = [ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases]
                    if any(base.endswith(("Error", "Exception")) for base in bases):
                        found.add(node.name)
    return found


def test_every_public_exception_class_has_a_case():
    covered = {kind.__name__ for _, kind in CASES.values()}
    missing = _package_exception_classes() - covered
    assert not missing, f"no pickling case for {sorted(missing)}"
