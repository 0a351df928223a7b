#!/usr/bin/env bash
# The release check: builds the sdist and the wheel the way a release does and
# tests what users would install, each in a fresh environment, away from the
# source tree. Run by .ci/run; by hand:
#
#   tests/wheel_check.sh [pytest args]   # every step; pytest args default to -x
#   SKIP_SUITE=1 tests/wheel_check.sh    # all but the test suite against the wheel
#
# Steps (each prints its time):
#  1. release tools (the `release` extra of pyproject.toml) in a venv of their own;
#  2. `python -m build`: the sdist, then the wheel built from that sdist;
#  3. `twine check` of both;
#  4. `auditwheel show` must name a manylinux tag; `auditwheel repair` makes the
#     wheel we test (needs patchelf);
#  5. the sdist builds and installs in a fresh venv; tests/wheel_smoke.py;
#  6. the repaired wheel installs in a fresh venv with no compiler (CC and CXX
#     are /bin/false; numpy and ml_dtypes come as wheels); tests/wheel_smoke.py;
#  7. the pytest suite, from a copy of tests/ outside the checkout, against the
#     repaired wheel installed in a venv that sees this interpreter's packages
#     (torch and the other test dependencies) but neither the source tree nor an
#     editable install of it.
#
# Environment: PYTHON (python3), KEEP=1 keeps the temporary directory,
# SKIP_SUITE=1 skips step 7. Exits non-zero when any step fails.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/stc-wheel.XXXXXX")
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then echo "wheel_check: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

STEP_NAME=
STEP_START=$SECONDS
finish_step() {
    [ -z "$STEP_NAME" ] || echo "wheel_check: -- $STEP_NAME: $((SECONDS - STEP_START)) s"
    STEP_NAME=
}
step() {
    finish_step
    STEP_NAME=$1
    STEP_START=$SECONDS
    echo "wheel_check: == $STEP_NAME"
}
fail() { echo "wheel_check: FAILED: $*"; exit 1; }
# Runs a command with its output in a log, shown only when it fails (pip's is long).
quiet() {
    "$@" > "$WORK/step.log" 2>&1 || { cat "$WORK/step.log"; fail "$*"; }
}

# A fresh venv at $1 (extra arguments go to `python -m venv`).
make_venv() {
    local dir=$1; shift
    "$PYTHON" -m venv "$@" "$dir"
}

# ---- 1. release tools ----------------------------------------------------------------------
step "release tools"
TOOLS=$WORK/tools
make_venv "$TOOLS"
(cd "$ROOT" && "$TOOLS/bin/python" -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["release"]))
') > "$WORK/release-requirements.txt"
quiet "$TOOLS/bin/python" -m pip install -r "$WORK/release-requirements.txt"

# ---- 2. build ------------------------------------------------------------------------------
# From a copy of the tree without build products, so that none of the checkout's
# (build/, *.so, *.egg-info) can leak into the sdist, and the checkout is left alone.
step "python -m build (sdist, then the wheel from the sdist)"
mkdir -p "$WORK/src"
tar -C "$ROOT" \
    --exclude=./.git --exclude=./build --exclude=./dist --exclude='*.egg-info' \
    --exclude='*.so' --exclude='*.o' --exclude=__pycache__ --exclude=.pytest_cache \
    --exclude=.hypothesis --exclude=./tests/c/build --exclude=./tests/fuzz/build \
    -cf - . | tar -xf - -C "$WORK/src"
quiet "$TOOLS/bin/python" -m build --outdir "$WORK/dist" "$WORK/src"
SDIST=$(ls "$WORK"/dist/*.tar.gz)
WHEEL=$(ls "$WORK"/dist/*.whl)
echo "wheel_check: built $(basename "$SDIST") and $(basename "$WHEEL")"

# ---- 3. metadata ---------------------------------------------------------------------------
step "twine check"
"$TOOLS/bin/python" -m twine check --strict "$SDIST" "$WHEEL"

# ---- 4. manylinux --------------------------------------------------------------------------
step "auditwheel show and repair"
"$TOOLS/bin/auditwheel" show "$WHEEL" | tee "$WORK/auditwheel-show.txt"
grep -Eo 'manylinux_[0-9]+_[0-9]+_[a-z0-9_]+' "$WORK/auditwheel-show.txt" | head -n 1 \
    > "$WORK/tag.txt" || true
TAG=$(cat "$WORK/tag.txt")
[ -n "$TAG" ] || fail "auditwheel show names no manylinux tag"
# auditwheel runs the patchelf that the release tools brought (on PATH from their venv).
PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair --plat "$TAG" -w "$WORK/repaired" "$WHEEL"
REPAIRED=$(ls "$WORK"/repaired/*.whl)
case "$(basename "$REPAIRED")" in
*"$TAG"*) echo "wheel_check: repaired wheel $(basename "$REPAIRED") (tag $TAG)" ;;
*) fail "the repaired wheel $(basename "$REPAIRED") does not carry $TAG" ;;
esac

# ---- 5. the sdist in a fresh venv ----------------------------------------------------------
step "sdist: build and install in a fresh venv"
make_venv "$WORK/venv-sdist"
quiet "$WORK/venv-sdist/bin/python" -m pip install "$SDIST"
(cd "$WORK" && "$WORK/venv-sdist/bin/python" "$ROOT/tests/wheel_smoke.py")

# ---- 6. the wheel with no compiler ---------------------------------------------------------
step "wheel: install in a fresh venv with no compiler"
make_venv "$WORK/venv-wheel"
quiet "$WORK/venv-wheel/bin/python" -m pip install --only-binary=:all: numpy ml_dtypes
quiet env CC=/bin/false CXX=/bin/false "$WORK/venv-wheel/bin/python" -m pip install \
    --no-build-isolation --no-deps --only-binary=:all: "$REPAIRED"
"$WORK/venv-wheel/bin/python" -m pip check
(cd "$WORK" && "$WORK/venv-wheel/bin/python" "$ROOT/tests/wheel_smoke.py")

# ---- 7. the test suite against the installed wheel -----------------------------------------
if [ "${SKIP_SUITE:-0}" = 1 ]; then
    finish_step
    echo "wheel_check: OK (test suite against the wheel skipped: SKIP_SUITE=1)"
    exit 0
fi
step "pytest against the installed wheel"
# The venv reuses this interpreter's packages (torch and the other test dependencies) through
# a .pth file that lists their directories. Not `--system-site-packages`: that would also run
# the .pth files there, among them an editable install's finder, which would serve any module
# missing from the wheel out of the checkout.
VENV=$WORK/venv-suite
make_venv "$VENV"
"$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"]); print(sysconfig.get_paths()["platlib"])' \
    | sort -u > "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_stc_test_dependencies.pth"
quiet env CC=/bin/false CXX=/bin/false "$VENV/bin/python" -m pip install \
    --no-build-isolation --no-deps --ignore-installed "$REPAIRED"
# tests/ lands in $WORK/run/tests: the tests' ROOT is then $WORK/run, which holds no
# safetensors_c, so `import safetensors_c` (here and in every subprocess) is the wheel's.
mkdir -p "$WORK/run"
tar -C "$ROOT" --exclude=__pycache__ --exclude=./tests/c/build --exclude=./tests/fuzz/build \
    -cf - tests | tar -xf - -C "$WORK/run"
# Tests that read the checkout itself (csrc/, docs/, README.md, benchmarks/, pyproject.toml),
# not the installed package, carry the `source_tree` marker and are left to the normal run:
# the C core's own tests, the layering and error-code lints, the docs examples, the benchmark
# smoke runs and the builds from source. Lints of the package's Python files read the
# installed package (safetensors_c.__file__) and run here.
[ "$#" -gt 0 ] || set -- -x
status=0
(cd "$WORK/run" && PATH="$VENV/bin:$PATH" STC_WHEEL_RUN=1 "$VENV/bin/python" -m pytest \
    -q -p no:cacheprovider --rootdir "$WORK/run" -m "not source_tree" tests "$@") || status=$?
[ "$status" = 0 ] || fail "pytest against the installed wheel exited with status $status"
finish_step
echo "wheel_check: OK"
