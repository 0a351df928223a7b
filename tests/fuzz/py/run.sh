#!/usr/bin/env bash
# Runs each Python fuzz target (atheris, coverage-guided) for SECONDS seconds.
#
#   tests/fuzz/py/run.sh SECONDS [target ...]     e.g. tests/fuzz/py/run.sh 60
#
# Targets: fuzz_pickle_vm (the pickle interpreter and the opcode walk),
# fuzz_archive (format sniffing, zip/tar/npy reading, scan, convert's dispatch),
# fuzz_index (the sharded index reader). Needs `pip install atheris` (a binary
# wheel: no clang needed). Corpora, logs and crash inputs go to
# tests/fuzz/build/py/ (git-ignored). Exits non-zero if any target finds an
# input that raises outside the documented error types, or times out.
set -uo pipefail

if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 SECONDS [target ...]" >&2
    exit 2
fi
SECONDS_PER_TARGET=$1
shift
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
BUILD="$ROOT/tests/fuzz/build/py"
PYTHON=${PYTHON:-python3}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(fuzz_pickle_vm fuzz_archive fuzz_index)

"$PYTHON" -c "import atheris" 2>/dev/null || {
    echo "run.sh: atheris is not installed (pip install atheris)" >&2; exit 2; }
mkdir -p "$BUILD/seeds" "$BUILD/logs" "$BUILD/artifacts"
"$PYTHON" "$HERE/make_seeds.py" "$BUILD/seeds" || { echo "run.sh: seeds failed" >&2; exit 1; }

status=0
for t in "${TARGETS[@]}"; do
    [ -f "$HERE/$t.py" ] || { echo "run.sh: no target $t" >&2; exit 2; }
    seeds="$BUILD/seeds/${t#fuzz_}"
    corpus="$BUILD/corpus/$t"
    mkdir -p "$corpus"
    log="$BUILD/logs/$t.log"
    echo "run.sh: $t for ${SECONDS_PER_TARGET}s"
    (cd "$ROOT" && "$PYTHON" "$HERE/$t.py" -max_total_time="$SECONDS_PER_TARGET" \
        -timeout=30 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$BUILD/artifacts/$t-" "$corpus" "$seeds") >"$log" 2>&1
    rc=$?
    execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
    [ -n "$execs" ] || execs=$(grep -Eo '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    echo "run.sh: $t exit $rc, ${execs:-?} executions, corpus $(ls "$corpus" | wc -l) files"
    if [ $rc -ne 0 ]; then
        status=1
        echo "run.sh: $t FAILED; the end of $log:" >&2
        tail -40 "$log" >&2
    fi
done
exit $status
