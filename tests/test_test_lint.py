"""A lint of the suite itself: every test can fail.

Every ``test_*`` function (module level or in a class) of ``tests/**/test_*.py``
must contain, somewhere in its body (nested functions included), at least one of:

- an ``assert`` statement;
- a call of ``pytest.raises``, ``pytest.warns``, ``pytest.fail`` or
  ``pytest.deprecated_call``;
- a call of a checking helper: a function or method whose name, leading
  underscores aside, starts with ``assert`` (``np.testing.assert_array_equal``,
  ``self.assertEqual``, ``_assert_same``), or a function defined at the top
  level of the same test module that itself meets this rule (``_refused`` in
  tests/test_scan.py, which wraps ``pytest.raises``).

A test that only runs code (a smoke test) passes however wrong the result is;
give it a check, or list it in ALLOWED with the reason it needs none.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CHECKING_PYTEST_CALLS = {"raises", "warns", "fail", "deprecated_call"}

# "path::function" -> why running it is the check. Keep this list short.
ALLOWED: dict[str, str] = {}


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _is_pytest_check(call: ast.Call) -> bool:
    func = call.func
    return (isinstance(func, ast.Attribute) and func.attr in CHECKING_PYTEST_CALLS
            and isinstance(func.value, ast.Name) and func.value.id == "pytest")


def _checks(function: ast.AST, helpers: set[str]) -> bool:
    """Whether ``function``'s body asserts, expects an exception or calls a checker."""
    for node in ast.walk(function):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            if _is_pytest_check(node):
                return True
            name = _called_name(node)
            if name and (name.lstrip("_").startswith("assert") or name in helpers):
                return True
    return False


def _module_helpers(tree: ast.Module) -> set[str]:
    """Top-level non-test functions that check (directly or through another helper)."""
    functions = {node.name: node for node in tree.body
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and not node.name.startswith("test_")}
    helpers: set[str] = set()
    grew = True
    while grew:  # a helper may check through another helper
        grew = False
        for name, node in functions.items():
            if name not in helpers and _checks(node, helpers):
                helpers.add(name)
                grew = True
    return helpers


def _tests(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name.startswith("test_"):
                yield node.name, node
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                        and item.name.startswith("test_"):
                    yield f"{node.name}.{item.name}", item


def unchecked_tests(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    helpers = _module_helpers(tree)
    rel = path.relative_to(TESTS.parent).as_posix()
    return [f"{rel}::{name}" for name, node in _tests(tree) if not _checks(node, helpers)]


def test_every_test_checks_something():
    found = []
    for path in sorted(TESTS.rglob("test_*.py")):
        found += unchecked_tests(path)
    unchecked = [name for name in found if name not in ALLOWED]
    assert not unchecked, ("tests that cannot fail (no assert, no pytest.raises/warns/fail, "
                           "no checking helper):\n" + "\n".join(unchecked))
    stale = sorted(set(ALLOWED) - set(found))
    assert not stale, f"ALLOWED lists tests that now check something: {stale}"


# MARK: the lint's own rule, on small sources ---------------------------------------------


def _verdicts(source: str) -> list[str]:
    tree = ast.parse(source)
    helpers = _module_helpers(tree)
    return [name for name, node in _tests(tree) if not _checks(node, helpers)]


def test_the_rule_on_small_sources():
    source = '''
import pytest, numpy as np

def _refused(x):
    with pytest.raises(ValueError):
        x()

def _via(x):
    _refused(x)

def _runs(x):
    x()

def test_asserts(): assert 1
def test_raises():
    with pytest.raises(KeyError): {}[1]
def test_np_helper(): np.testing.assert_array_equal([1], [1])
def test_module_helper(): _refused(int)
def test_helper_through_helper(): _via(int)
def test_nested():
    def inner(): assert True
    inner()
def test_only_runs(): _runs(int)
def test_nothing(): int("1")
def test_skip_is_no_check(): pytest.skip("x")
class TestGroup:
    def test_method(self): self.assertEqual(1, 1)
    def test_empty_method(self): pass
'''
    assert _verdicts(source) == ["test_only_runs", "test_nothing", "test_skip_is_no_check",
                                 "TestGroup.test_empty_method"]
