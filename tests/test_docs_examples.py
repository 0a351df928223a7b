"""The documents tell the truth about the code they describe.

Every ``python`` block of the README runs as written, in a fresh process and an
empty directory, against this checkout; the floor table of docs/architecture.md
is the one tests/test_layers.py enforces; the README stays short enough to read
in an afternoon and starts with the test command CI runs."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.source_tree  # checks README.md, docs/ and .ci/run
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
README_MAX_LINES = 400


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


# The wheel run (tests/wheel_check.sh) collects this module without the checkout, then
# deselects it (source_tree); here a missing README fails the tests that read it.
README_BLOCKS = python_blocks(README.read_text(encoding="utf-8")) if README.is_file() else []


def test_the_readme_has_examples():
    assert len(README_BLOCKS) >= 2, "the README lost its first examples"


@pytest.mark.parametrize("index", range(len(README_BLOCKS)))
def test_readme_example_runs(index, tmp_path):
    code = README_BLOCKS[index]
    if "torch" in code:
        pytest.importorskip("torch")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("SAFETENSORS_C_COMPAT", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"README example {index + 1} fails:\n{code}\n--- stderr ---\n{done.stderr}")


def floors_enforced() -> dict[str, int]:
    """FLOORS of tests/test_layers.py, read from its source (no import of a test module)."""
    tree = ast.parse((ROOT / "tests" / "test_layers.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "FLOORS"):
            return ast.literal_eval(node.value)
    pytest.fail("tests/test_layers.py has no FLOORS table")


def adapter_floor() -> int:
    tree = ast.parse((ROOT / "tests" / "test_layers.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "ADAPTER_FLOOR":
            return ast.literal_eval(node.value)
    pytest.fail("tests/test_layers.py has no ADAPTER_FLOOR")


def floors_documented() -> dict[str, int]:
    """module -> floor, from the table rows of docs/architecture.md."""
    found: dict[str, int] = {}
    for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines():
        row = re.match(r"^\| (\d+) \| ([^|]+) \|", line)
        if row:
            for name in re.findall(r"`([^`]+)`", row.group(2)):
                assert name not in found, f"docs/architecture.md lists {name} twice"
                found[name] = int(row.group(1))
    return found


def test_architecture_states_the_floors_the_layer_test_enforces():
    expected = dict(floors_enforced())
    expected["_adapters.<framework>"] = adapter_floor()
    documented = floors_documented()
    missing = sorted(set(expected) - set(documented))
    extra = sorted(set(documented) - set(expected))
    moved = sorted(f"{m}: documented {documented[m]}, enforced {expected[m]}"
                   for m in set(expected) & set(documented) if documented[m] != expected[m])
    assert not (missing or extra or moved), (
        f"docs/architecture.md disagrees with tests/test_layers.py FLOORS: "
        f"missing {missing}, not enforced {extra}, other floor {moved}")


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/")


def test_readme_starts_with_the_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"^```bash\n(.*?)^```", text, re.S | re.M)
    assert first_block and text.index(first_block.group(0)) < text.index("\n## "), (
        "the README must open with its two commands, before any section")
    install, run_tests = first_block.group(1).splitlines()
    assert install == "pip install . && python benchmarks/run.py --quick"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert run_tests in ci, "CI no longer runs the README's test command verbatim"
