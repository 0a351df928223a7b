"""The release package: one version, a wheel and an sdist that carry everything.

Builds the wheel (``pip wheel --no-deps --no-build-isolation``) and the sdist (setuptools'
PEP 517 hook) once, from a copy of the checkout in a temporary directory, and checks their
file lists against the source tree: a module, stub or start-up file left out of the wheel is
an ImportError on a user's machine that an editable install never shows. tests/wheel_check.sh
(run by CI) goes further: it installs both in fresh environments and runs this suite against
the installed wheel, where the checks that need the source tree skip themselves and
``test_wheel_run_imports_the_installed_wheel`` makes sure the package under test is the wheel.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import safetensors_c

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the package itself supports 3.10

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "safetensors_c"
SOURCE_TREE = (ROOT / "pyproject.toml").is_file() and PACKAGE.is_dir()
WHEEL_RUN = os.environ.get("STC_WHEEL_RUN") == "1"
STARTUP_FILES = ("safetensors_c_compat.pth", "_safetensors_c_startup.py")
BUILD_TIMEOUT = 600


# What a copy of the checkout leaves out: build products and caches.
IGNORED = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "*.so", "*.o", "__pycache__", ".pytest_cache",
    ".hypothesis")


def pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def source_files(pattern):
    """Paths relative to ROOT of the package's files matching ``pattern``."""
    return sorted(
        p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob(pattern)
        if "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    copy = tmp_path_factory.mktemp("packaging") / "src"
    shutil.copytree(ROOT, copy, ignore=IGNORED)
    return copy


@pytest.fixture(scope="module")
def wheel(source_copy, tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(source_copy)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = out.glob("safetensors_c-*.whl")
    return path


@pytest.fixture(scope="module")
def sdist(source_copy, tmp_path_factory):
    out = tmp_path_factory.mktemp("sdist")
    hook = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", hook, str(out)], cwd=source_copy,
                            capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / result.stdout.strip().splitlines()[-1]


def wheel_names(path):
    with zipfile.ZipFile(path) as z:
        return set(z.namelist())


def wheel_metadata(path):
    with zipfile.ZipFile(path) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(z.read(name).decode("utf-8"))


# ---- the version ---------------------------------------------------------------------------


@pytest.mark.source_tree
def test_version_has_one_source():
    config = pyproject()
    project = config["project"]
    assert "version" not in project, "pyproject.toml must not repeat the version"
    assert "version" in project["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "safetensors_c.__version__"}
    # A plain string assignment, so that setuptools reads it without importing the package.
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    literals = [node.value.value for node in tree.body
                if isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
                and isinstance(node.value, ast.Constant)]
    assert literals == [safetensors_c.__version__]


def test_version_is_the_installed_distributions():
    assert safetensors_c.__version__ == importlib.metadata.version("safetensors_c")


@pytest.mark.source_tree
def test_changelog_records_this_version_and_an_unreleased_section():
    headings = [line for line in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8").splitlines()
                if line.startswith("## ")]
    assert "## Unreleased" in headings
    assert f"## {safetensors_c.__version__}" in headings


# ---- the wheel -----------------------------------------------------------------------------


@pytest.mark.source_tree
def test_wheel_carries_every_module_stub_and_startup_file(wheel):
    names = wheel_names(wheel)
    expected = set(source_files("*.py")) | set(source_files("*.pyi")) | {
        "safetensors_c/py.typed", *STARTUP_FILES}
    assert len(source_files("*.py")) > 20  # the package's modules were found at all
    assert sorted(expected - names) == []
    extensions = [n for n in names if n.startswith("safetensors_c/_core.") and
                  n.endswith((".so", ".pyd"))]
    assert len(extensions) == 1, sorted(names)


@pytest.mark.source_tree
def test_wheel_holds_only_the_package_and_its_startup_files(wheel):
    tops = {name.split("/", 1)[0] for name in wheel_names(wheel)}
    assert tops == {"safetensors_c", f"safetensors_c-{safetensors_c.__version__}.dist-info",
                    *STARTUP_FILES}


@pytest.mark.source_tree
def test_wheel_metadata(wheel):
    metadata = wheel_metadata(wheel)
    assert metadata["Name"] == "safetensors_c"
    assert metadata["Version"] == safetensors_c.__version__
    assert metadata["Requires-Python"] == ">=3.10"
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert {"numpy>=2.0", "ml_dtypes>=0.5"} <= set(metadata.get_all("Requires-Dist"))
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert "safetensors-c = safetensors_c.cli:main" in z.read(name).decode()


# ---- the sdist -----------------------------------------------------------------------------


@pytest.mark.source_tree
def test_sdist_carries_what_a_build_needs(sdist):
    with tarfile.open(sdist) as t:
        prefix = f"safetensors_c-{safetensors_c.__version__}/"
        names = {n[len(prefix):] for n in t.getnames() if n.startswith(prefix)}
    csrc = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").rglob("*")
                  if p.suffix in (".c", ".h"))
    expected = set(csrc) | set(source_files("*.py")) | set(source_files("*.pyi")) | {
        "safetensors_c/py.typed", "pyproject.toml", "setup.py", "README.md", "CHANGELOG.md",
        "MANIFEST.in", *(f"startup/{name}" for name in STARTUP_FILES)}
    assert len(csrc) > 10
    assert sorted(expected - names) == []
    assert not [n for n in names if n.endswith((".so", ".o"))]


# ---- twine ---------------------------------------------------------------------------------


@pytest.mark.source_tree
@pytest.mark.skipif(importlib.util.find_spec("twine") is None, reason="twine is not installed")
def test_twine_check_passes(wheel, sdist):
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel),
                             str(sdist)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


# ---- the release wheels (cibuildwheel) -----------------------------------------------------

EXPECTED_IDENTIFIERS = {
    "linux": {f"cp3{minor}-manylinux_{arch}" for minor in (10, 11, 12, 13)
              for arch in ("x86_64", "aarch64")},
    "macos": {f"cp3{minor}-macosx_{arch}" for minor in (10, 11, 12, 13)
              for arch in ("x86_64", "arm64")},
}


@pytest.mark.source_tree
def test_cibuildwheel_configuration_names_the_wheels_users_expect():
    config = pyproject()["tool"]["cibuildwheel"]
    assert config["build"].split() == ["cp310-*", "cp311-*", "cp312-*", "cp313-*"]
    assert config["linux"]["archs"] == ["x86_64", "aarch64"]
    assert config["macos"]["archs"] == ["x86_64", "arm64"]
    assert config["test-command"] == "python {project}/tests/wheel_smoke.py"
    assert (ROOT / "tests" / "wheel_smoke.py").is_file()


@pytest.mark.source_tree
@pytest.mark.skipif(shutil.which("cibuildwheel") is None, reason="cibuildwheel is not installed")
@pytest.mark.parametrize("platform", sorted(EXPECTED_IDENTIFIERS))
def test_cibuildwheel_builds_exactly_the_expected_identifiers(platform):
    result = subprocess.run(
        ["cibuildwheel", "--print-build-identifiers", "--platform", platform],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == EXPECTED_IDENTIFIERS[platform]


# ---- the run against the installed wheel ---------------------------------------------------


@pytest.mark.skipif(not WHEEL_RUN, reason="only in tests/wheel_check.sh's run (STC_WHEEL_RUN=1)")
def test_wheel_run_imports_the_installed_wheel():
    package_dir = Path(safetensors_c.__file__).resolve().parent
    site = Path(sysconfig.get_paths()["platlib"]).resolve()
    assert package_dir == site / "safetensors_c"
    assert not SOURCE_TREE
    for name in STARTUP_FILES:
        assert (site / name).is_file()
    # The distribution the metadata names is the wheel's, not an editable install.
    files = importlib.metadata.files("safetensors_c")
    assert any(str(f).startswith("safetensors_c/_core.") for f in files)
    # Nothing else can serve a module missing from the wheel: no editable install's finder,
    # and no other safetensors_c package on sys.path.
    finders = [getattr(f, "__name__", type(f).__name__) for f in sys.meta_path]
    assert not [name for name in finders if "editable" in name.lower()], finders
    others = [p for p in sys.path if p and (Path(p) / "safetensors_c").is_dir()
              and Path(p).resolve() != site]
    assert others == []
