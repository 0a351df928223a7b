"""The package's floors are stated once, in tests/test_layers.py (FLOORS) and
the table in docs/architecture.md that mirrors it: no module docstring claims
a floor of its own, where it could disagree with that table."""

from __future__ import annotations

import ast
import re

import pytest

from conftest import PACKAGE

MODULES = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))
FLOOR_CLAIM = re.compile(r"\bfloor\s+\d", re.IGNORECASE)


@pytest.mark.parametrize("module", MODULES)
def test_module_docstring_states_no_floor(module):
    docstring = ast.get_docstring(ast.parse((PACKAGE / module).read_text())) or ""
    claims = [line.strip() for line in docstring.splitlines() if FLOOR_CLAIM.search(line)]
    assert claims == []


@pytest.mark.parametrize("module,sentence", [
    ("_reader.py", "turns any source into a *reader* that hands out\nNumPy arrays."),
    ("_writer.py", "hands\nthem to :func:`write`; the C core plans the layout, emits the header"),
    ("_open.py", "One class serves every framework: a neutral reader plus the framework's\n"
                 "adapter"),
    ("distributed.py", "With N ranks, loading the usual way makes every rank read every byte"),
])
def test_module_docstring_keeps_its_useful_sentence(module, sentence):
    docstring = ast.get_docstring(ast.parse((PACKAGE / module).read_text()))
    assert sentence in docstring
