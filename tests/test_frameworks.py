"""Runs each framework's tests (tests/frameworks/test_<name>.py) in a pytest
process of its own: frameworks that crash when imported together (paddle
after tensorflow) each get a clean interpreter.

A framework that is not installed is skipped here; the test extras install
all of them, so CI runs every suite.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# suite name -> the module it needs
SUITES = {
    "flax": "jax",
    "tensorflow": "tensorflow",
    "paddle": "paddle",
    "mlx": "mlx.core",
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_framework_suite(suite):
    path = ROOT / "tests" / "frameworks" / f"test_{suite}.py"
    if not path.exists():
        pytest.fail(f"{path} is missing")
    if not _installed(SUITES[suite]):
        pytest.skip(f"{SUITES[suite]} is not installed (pip install -e '.[test]' installs it)")
    env = dict(os.environ, STC_FRAMEWORK_SUITE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, (
        f"the {suite} suite failed (exit {proc.returncode}):\n"
        + proc.stdout[-12000:] + proc.stderr[-4000:]
    )
