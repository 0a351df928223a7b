#!/usr/bin/env bash
# Runs the whole pytest suite against an AddressSanitizer + UBSan build of the
# extension, built in a temporary copy of the tree so that the normal in-place
# build is left alone.
#
#   tests/sanitize.sh [pytest args...]
#
# Environment: CC (gcc by default; clang works too), KEEP=1 keeps the
# temporary directory, PYTHON (python3). Exits non-zero if the build or
# pytest fails or if any sanitizer reported anything (reports are collected
# from log files, so those of subprocesses count too).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
CC=${CC:-gcc}
export CC

WORK=$(mktemp -d "${TMPDIR:-/tmp}/stc-sanitize.XXXXXX")
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then echo "sanitize: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# 1. A copy of the source tree without build products.
mkdir -p "$WORK/src" "$WORK/logs"
tar -C "$ROOT" \
    --exclude=./.git --exclude=./build --exclude=./dist --exclude='*.egg-info' \
    --exclude='*.so' --exclude='*.o' --exclude=__pycache__ --exclude=.pytest_cache \
    --exclude=.hypothesis --exclude=./tests/c/build --exclude=./tests/fuzz/build \
    -cf - . | tar -xf - -C "$WORK/src"

# 2. The sanitized extension, built in place in the copy.
echo "sanitize: building with CC=$CC STC_SANITIZE=address,undefined in $WORK/src"
(cd "$WORK/src" && STC_SANITIZE=address,undefined "$PYTHON" setup.py build_ext --inplace -q) \
    > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; echo "sanitize: build failed"; exit 1; }

# 3. The sanitizer runtimes must be loaded before the interpreter starts.
case "$("$CC" --version 2>/dev/null | head -n 1)" in
*clang*)
    PRELOAD=$("$CC" -print-file-name=libclang_rt.asan-$(uname -m).so)  # includes UBSan
    ;;
*)
    PRELOAD="$("$CC" -print-file-name=libasan.so) $("$CC" -print-file-name=libubsan.so)"
    ;;
esac
for lib in $PRELOAD; do
    [ -f "$lib" ] || { echo "sanitize: runtime $lib not found"; exit 1; }
done

# CPython and NumPy leak at exit by design: no leak checking here (the C tests
# and the fuzzers check the core for leaks). Reports go to files so that
# reports from subprocesses are not lost.
# handle_sigbus=0: tests/test_file_changes.py checks that a child touching a
# truncated mapping dies of SIGBUS, as documented; ASan must not catch it.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:handle_sigbus=0:log_path=$WORK/logs/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$WORK/logs/ubsan"
export PYTHONMALLOC=malloc   # let ASan see CPython's allocations too
export PYTHONDONTWRITEBYTECODE=1

# Valgrind cannot run a program with the ASan runtime preloaded: the C core's
# valgrind run is checked by the normal suite (and `make -C tests/c valgrind`).
DESELECT=(--deselect tests/test_c_core.py::test_c_core_under_valgrind)
# The framework suites (JAX, TensorFlow, Paddle, MLX) and the client
# libraries (transformers, diffusers, ...) load large native runtimes of
# their own that are not built for ASan; their adapters are pure Python over
# the same extension calls that the rest of the suite exercises here.
DESELECT+=(--ignore=tests/test_frameworks.py --ignore=tests/test_clients.py)
# The memory-ceiling tests run the scanner under RLIMIT_AS = 1 GiB; ASan reserves
# terabytes of address space for its shadow memory, so no process starts under it.
DESELECT+=(--ignore=tests/test_scan_ceiling.py)
# The same for the remote reader's memory test, which runs under RLIMIT_AS = 4 GiB.
DESELECT+=(--deselect
    tests/test_remote_hostile.py::test_an_announced_6_gib_tensor_that_never_comes_costs_no_memory)
# The device checks of the other frameworks import their runtimes (see above).
DESELECT+=(--deselect
    tests/test_dropin_parity.py::test_device_verdicts_match_the_reference_in_other_frameworks)
# Storage-read bounds (/proc/self/io) of the distributed single-file load: the
# sanitized build once read a page beyond the bound; the normal suite checks them.
DESELECT+=(--deselect tests/test_distributed_load.py::test_full_load_equals_single_process)

echo "sanitize: running pytest with LD_PRELOAD=$PRELOAD"
status=0
(cd "$WORK/src" && LD_PRELOAD="$PRELOAD" "$PYTHON" -m pytest -q -p no:cacheprovider \
    "${DESELECT[@]}" tests "$@") || status=$?

reports=$(find "$WORK/logs" -type f 2>/dev/null | sort)
if [ -n "$reports" ]; then
    for r in $reports; do
        echo "===== sanitizer report: $(basename "$r")"
        cat "$r"
    done
    echo "sanitize: FAILED: sanitizer reports above"
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "sanitize: FAILED: pytest exited with status $status"
    exit "$status"
fi
echo "sanitize: OK (pytest passed, no sanitizer reports)"
