"""Helpers shared by the framework suites; nothing here imports a framework
but the one named by ``STC_FRAMEWORK``.

Each framework's suite runs in a pytest process of its own
(tests/test_frameworks.py), so a framework's import and global settings
never leak into another's. The shared suite (test_every_framework.py) takes
the framework as the ``fw`` parameter: the table of ``STC_FRAMEWORK``
(framework_tables.py); ``@pytest.mark.from_table(argname, attribute)``
parametrises a test over a list the table holds. The helpers reach the tests
through the ``helpers`` fixture (``import conftest`` would be ambiguous next
to tests/conftest.py).
"""

from __future__ import annotations

import functools
import json
import os
import struct
import types
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

import safetensors_c
import framework_tables


@functools.lru_cache(maxsize=None)
def framework_table(name):
    return framework_tables.table(name)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "from_table(argname, attribute): parametrise over the framework table's list")


def pytest_generate_tests(metafunc):
    if "fw" not in metafunc.fixturenames:
        return
    name = os.environ.get("STC_FRAMEWORK")
    if name not in framework_tables.TABLES:
        raise pytest.UsageError(
            f"STC_FRAMEWORK={name!r}: set it to one of {sorted(framework_tables.TABLES)} "
            "(tests/test_frameworks.py does)")
    table = framework_table(name)
    metafunc.parametrize("fw", [table], ids=[name])
    for mark in metafunc.definition.iter_markers("from_table"):
        argname, attribute = mark.args
        metafunc.parametrize(argname, getattr(table, attribute))


def header_of(path_or_bytes) -> Tuple[int, dict]:
    """(N, header) of a file or a file image."""
    if isinstance(path_or_bytes, bytes):
        data = path_or_bytes
    else:
        data = Path(path_or_bytes).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8:8 + n])


def data_start(path_or_bytes) -> int:
    """The file offset of the first data byte (8 + N)."""
    return 8 + header_of(path_or_bytes)[0]


def save_aligned(tensors: Dict[str, np.ndarray], path, alignment: int = 64) -> Path:
    """Writes ``tensors`` (NumPy arrays) with our writer so that the data
    section starts at a multiple of ``alignment`` in the file, by growing a
    metadata value. Each tensor then starts aligned if the sizes of the
    tensors before it are multiples of ``alignment``."""
    path = Path(path)
    pad = ""
    for _ in range(alignment // 8 + 1):
        safetensors_c.save_file(tensors, path, metadata={"pad": pad})
        missing = -data_start(path) % alignment
        if missing == 0:
            return path
        pad += " " * missing
    raise AssertionError("could not align the data section")


def file_mappings(path) -> List[Tuple[int, int]]:
    """(start, end) of every mapping of ``path`` in this process, from /proc/self/maps."""
    real = os.path.realpath(path)
    out = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == real:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                out.append((start, end))
    return out


def in_mapping_of(path, address: int) -> bool:
    """Whether ``address`` lies inside a mapping of the file ``path``."""
    return any(start <= address < end for start, end in file_mappings(path))


def numpy_address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


@pytest.fixture
def helpers():
    """This module's helpers: ``helpers.save_aligned(...)``, ``helpers.in_mapping_of(...)``, ..."""
    return types.SimpleNamespace(
        header_of=header_of,
        data_start=data_start,
        save_aligned=save_aligned,
        file_mappings=file_mappings,
        in_mapping_of=in_mapping_of,
        numpy_address=numpy_address,
    )
