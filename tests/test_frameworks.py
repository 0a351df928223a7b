"""Runs each framework's tests in a pytest process of its own: frameworks that
crash when imported together (paddle after tensorflow) each get a clean
interpreter. A framework's process runs the shared suite
(tests/frameworks/test_every_framework.py, with STC_FRAMEWORK naming the
framework) and the tests only that framework has
(tests/frameworks/test_<name>.py).

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


SHARED = ROOT / "tests" / "frameworks" / "test_every_framework.py"


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_framework_suite(suite):
    own = ROOT / "tests" / "frameworks" / f"test_{suite}.py"
    for path in (SHARED, own):
        if not path.exists():
            pytest.fail(f"{path} is missing")
    if not _installed(SUITES[suite]):
        pytest.skip(f"{SUITES[suite]} is not installed (pip install -e '.[test]' installs it)")
    env = dict(os.environ, STC_FRAMEWORK_SUITE="1", STC_FRAMEWORK=suite)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SHARED), str(own)],
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
