"""The error codes form one closed, documented table (safetensors_c.error_codes).

Source lints in the manner of tests/test_layers.py: they read the package's
files, so a raise that spells a code as a string literal, a code the table
lacks, or a table row the documentation lacks fails here.
"""

import pathlib
import pickle
import re

import pytest

import safetensors_c
from safetensors_c import error_codes

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.source_tree  # reads every raise in the sources, csrc/ and docs/
PACKAGE = ROOT / "safetensors_c"
CODE = re.compile(r"STC_ERR_[A-Z0-9_]+")


def constants():
    return {name: value for name, value in vars(error_codes).items()
            if name.isupper() and isinstance(value, str)}


def test_each_constant_is_named_for_its_code():
    for name, value in constants().items():
        assert value == f"STC_ERR_{name}"


def test_the_table_lists_every_constant_once_with_a_description():
    assert sorted(error_codes.DESCRIPTIONS) == sorted(constants().values())
    for code, text in error_codes.DESCRIPTIONS.items():
        assert text and text == text.strip() and "\n" not in text, code
    assert error_codes.describe(error_codes.FILE_CHANGED).startswith("the file")
    with pytest.raises(KeyError):
        error_codes.describe("STC_ERR_NOT_A_CODE")


def test_the_core_status_table_matches():
    source = (ROOT / "csrc" / "core" / "status.c").read_text()
    in_core = re.findall(r'\[(STC_ERR_[A-Z0-9_]+)\]\s*=\s*\{"(STC_ERR_[A-Z0-9_]+)"', source)
    assert in_core, "status.c's table was not found"
    assert all(index == name for index, name in in_core)
    assert tuple(name for name, _ in in_core) == error_codes.RAISED_BY_CORE


def python_sources():
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "error_codes.py"]


def test_the_package_raises_codes_by_name_only():
    literal = re.compile(r"""(?<![`\w])["'](STC_ERR_[A-Z0-9_]+)["']""")
    found = []
    for path in python_sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in literal.finditer(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {match.group(1)}")
    assert not found, "use safetensors_c.error_codes names, not literals:\n" + "\n".join(found)


def test_every_name_used_in_the_package_is_in_the_table():
    used = re.compile(r"error_codes\.([A-Z][A-Z0-9_]*)")
    unknown = []
    for path in python_sources():
        for name in used.findall(path.read_text()):
            if name not in constants():
                unknown.append(f"{path.relative_to(ROOT)}: error_codes.{name}")
    assert not unknown, "\n".join(unknown)


def mentioned_codes(paths):
    for path in paths:
        for code in CODE.findall(path.read_text(errors="replace")):
            yield path, code


def test_every_code_mentioned_anywhere_exists():
    paths = (python_sources() + sorted((ROOT / "csrc").rglob("*.[ch]"))
             + sorted((ROOT / "docs").glob("*.md"))
             + [ROOT / "README.md", ROOT / "SECURITY.md"])
    known = set(error_codes.DESCRIPTIONS)
    typos = {f"{p.relative_to(ROOT)}: {c}" for p, c in mentioned_codes(paths)
             if c not in known and c != "STC_ERR_"}
    assert not typos, "codes not in safetensors_c.error_codes:\n" + "\n".join(sorted(typos))


def test_every_code_is_documented_with_its_meaning():
    page = (ROOT / "docs" / "errors.md").read_text()
    rows = dict(re.findall(r"^\| `(STC_ERR_[A-Z0-9_]+)` \| [^|]+ \| (.+) \|$", page, re.M))
    assert set(rows) == set(error_codes.DESCRIPTIONS)
    for code, text in error_codes.DESCRIPTIONS.items():
        assert rows[code] == text, code


def test_a_raised_error_carries_a_listed_code_and_survives_pickling(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x05\x00")
    with pytest.raises(safetensors_c.SafetensorError) as caught:
        safetensors_c.safe_open(path, "np")
    assert caught.value.code == error_codes.HEADER_TOO_SMALL
    again = pickle.loads(pickle.dumps(caught.value))
    assert again.code == error_codes.HEADER_TOO_SMALL
