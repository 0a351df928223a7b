"""Runs the core's own C tests (tests/c) and a cheap lint of csrc/core.

The C program builds from csrc/core/*.c and tests/c/*.c with strict warnings
(see tests/c/Makefile); these tests only drive it and report its output.
Set STC_C_EXTRA_CFLAGS (e.g. "-fsanitize=address,undefined") to build the
plain test run with extra flags; the valgrind run always builds without them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.source_tree  # builds and runs the core's C tests from tests/c and csrc/
C_TESTS = ROOT / "tests" / "c"
CORE = ROOT / "csrc" / "core"

# Generous: the allocation-failure loops are slow under valgrind.
TIMEOUT_SECONDS = 1800


def _missing_tools(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def _run_make(target: str, build_dir: str, extra_cflags: str) -> subprocess.CompletedProcess[str]:
    # Each pytest test builds into its own directory, so that parallel runs
    # (pytest-xdist) never race on one binary.
    command = [
        "make",
        "-C",
        str(C_TESTS),
        target,
        f"BUILD={build_dir}",
        f"EXTRA_CFLAGS={extra_cflags}",
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )


def _assert_success(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        pytest.fail(
            f"{what} failed with exit status {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )


def test_c_core_unit_tests() -> None:
    missing = _missing_tools("make", "cc")
    if missing:
        pytest.skip(f"cannot build the C tests: {', '.join(missing)} not found on PATH")
    extra = os.environ.get("STC_C_EXTRA_CFLAGS", "")
    result = _run_make("test", "build/pytest", extra)
    _assert_success(result, "make -C tests/c test")
    assert "OK:" in result.stdout, result.stdout


def test_c_core_under_valgrind() -> None:
    missing = _missing_tools("make", "cc", "valgrind")
    if missing:
        pytest.skip(f"cannot run the C tests under valgrind: {', '.join(missing)} not found on PATH")
    result = _run_make("valgrind", "build/pytest-valgrind", "")
    _assert_success(result, "make -C tests/c valgrind")
    assert "OK:" in result.stdout, result.stdout


_FORBIDDEN_INCLUDE = re.compile(
    r'^\s*#\s*include\s*[<"]\s*(Python\.h|numpy/[^>"]*|[^>"]*/Python\.h)\s*[>"]',
    re.MULTILINE,
)


def test_core_does_not_include_python_or_numpy() -> None:
    sources = sorted(CORE.glob("*.[ch]"))
    assert (CORE / "stc.h") in sources, f"the public header is missing from {CORE}"
    offenders = []
    for path in sources:
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in _FORBIDDEN_INCLUDE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0).strip()}")
    assert not offenders, "csrc/core must stay pure C:\n" + "\n".join(offenders)
