#!/usr/bin/env bash
# Builds every libFuzzer target, generates the seed corpora, and runs each
# target for SECONDS seconds with the dictionary.
#
#   tests/fuzz/run.sh SECONDS [target ...]     e.g. tests/fuzz/run.sh 60
#
# Environment: CC (clang), EXTRA_CFLAGS (appended to the compile flags),
# PYTHON (python3). Build products, corpora and crash artifacts go to
# tests/fuzz/build/ (git-ignored); each run's log is build/logs/<target>.log.
# Exits non-zero on any crash, leak, sanitizer report, timeout or OOM.
set -uo pipefail

if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 SECONDS [target ...]" >&2
    exit 2
fi
SECONDS_PER_TARGET=$1
shift

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD="$HERE/build"
CC=${CC:-clang}
PYTHON=${PYTHON:-python3}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(fuzz_open fuzz_write fuzz_slice)

CFLAGS=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
        -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -I"$ROOT/csrc/core")
# shellcheck disable=SC2206
EXTRA=(${EXTRA_CFLAGS:-})

mkdir -p "$BUILD/bin" "$BUILD/logs" "$BUILD/artifacts"

# 1. Build.
for t in "${TARGETS[@]}"; do
    [ -f "$HERE/$t.c" ] || { echo "run.sh: no target $t" >&2; exit 2; }
    echo "run.sh: building $t"
    "$CC" "${CFLAGS[@]}" "${EXTRA[@]}" -o "$BUILD/bin/$t" "$ROOT"/csrc/core/*.c "$HERE/$t.c" \
        || { echo "run.sh: build of $t failed" >&2; exit 1; }
done

# 2. Seeds.
"$PYTHON" "$HERE/make_seeds.py" --out "$BUILD/corpus" || { echo "run.sh: make_seeds failed" >&2; exit 1; }

# 3. Fuzz. Leaks are detected by LeakSanitizer (on by default with ASan) and
#    reported by libFuzzer as crashes (-detect_leaks=1).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
failed=0
summary=()
for t in "${TARGETS[@]}"; do
    log="$BUILD/logs/$t.log"
    start=$(date +%s)
    # The corpus directory grows with what the fuzzer finds; artifacts
    # (crash-*, leak-*, timeout-*, oom-*) land in build/artifacts/.
    "$BUILD/bin/$t" "$BUILD/corpus/$t" \
        -dict="$HERE/safetensors.dict" \
        -max_total_time="$SECONDS_PER_TARGET" \
        -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -detect_leaks=1 -print_final_stats=1 \
        -artifact_prefix="$BUILD/artifacts/$t-" \
        > "$log" 2>&1
    rc=$?
    elapsed=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    verdict=ok
    if [ $rc -ne 0 ] || grep -qE '^==[0-9]+==ERROR|runtime error:|ERROR: libFuzzer|SUMMARY: (Address|Leak|UndefinedBehavior)Sanitizer|check failed' "$log"; then
        verdict="FAILED (exit $rc)"
        failed=1
    fi
    line=$(printf '%-11s %-18s executions=%-10s seconds=%-5s corpus=%s' \
        "$t" "$verdict" "${execs:-?}" "$elapsed" \
        "$(find "$BUILD/corpus/$t" -type f | wc -l)")
    summary+=("$line")
    echo "run.sh: $line"
    if [ "$verdict" != ok ]; then
        grep -E 'ERROR|runtime error|check failed|SUMMARY|Test unit written|^    #[0-9] ' "$log" \
            | head -n 30 | sed 's/^/    /'
    fi
done

echo "run.sh: summary ($SECONDS_PER_TARGET s per target)"
printf '  %s\n' "${summary[@]}"
if [ $failed -ne 0 ]; then
    echo "run.sh: FAILED; logs in $BUILD/logs, inputs in $BUILD/artifacts"
    echo "run.sh: reproduce with: $BUILD/bin/<target> $BUILD/artifacts/<file>"
    exit 1
fi
echo "run.sh: all targets clean"
