#!/usr/bin/env bash
# Build and run every fuzz target (fuzz/README.md) for SECONDS each (default 60).
#
#   scripts/fuzz.sh [SECONDS]
#
# SECONDS=0 fuzzes nothing: it replays the checked-in corpus (seeds and the
# regress-* reproducers of fixed crashes) once through every target
# (tests/fuzz/test_fuzz_corpus.py).
#
# C targets: clang libFuzzer + ASan + UBSan, built into build/fuzz/. The Python target
# (xenstored's wire parser) runs under atheris from .venv (or $PYTHON). Each target
# starts from its checked-in seed corpus fuzz/corpus/<target>/ (read only) plus a
# scratch corpus build/fuzz/corpus/<target>/ kept between runs. A crash, leak,
# timeout or out-of-memory is kept under fuzz/crashes/ and its path printed.
# Environment: FUZZ_TARGETS="frame ring" runs a subset; FUZZ_FRESH=1 drops the scratch
# corpus first; FUZZ_OUT / FUZZ_CRASHES move build/fuzz and fuzz/crashes; FUZZ_SELFTEST=1
# plants a crash in the frame target (tests/fuzz/test_fuzz_sh.py checks the reporting).
#
# Last line, always: "fuzz: N targets, M runs, K crashes" (M = executions in total);
# the exit status is non-zero when K > 0 or a target could not be built or run.
set -uo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-60}
case "$SECS" in
'' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS]" >&2; exit 2 ;;
esac
CC=${CC_FUZZ:-clang}
PY=${PYTHON:-.venv/bin/python}
OUT=${FUZZ_OUT:-build/fuzz}
CRASHES=${FUZZ_CRASHES:-fuzz/crashes}
ALL_TARGETS="frame layout ring pump xs_wire"
TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}
mkdir -p "$OUT/corpus" "$OUT/logs" "$CRASHES"

CFLAGS=(-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
    -g -O1 -std=gnu11 -Wall -Wextra -Werror -Ifuzz -Icext/vchan -Icext/tracker -Icext/pump -Icext/forward)
# every source file of a component (its internal file split may change)
[ "${FUZZ_SELFTEST:-0}" = 1 ] && CFLAGS+=(-DFUZZ_SELFTEST)
VCHAN_SRCS=(cext/vchan/*.c cext/tracker/*.c)
VCHAN_LIBS=(-lxengnttab -lxenevtchn -lpthread)

targets=0 runs=0 crashes=0 failed=0

build() { # target -> binary
    local t=$1 bin=$OUT/fuzz_$1
    case $t in
    frame) "$CC" "${CFLAGS[@]}" fuzz/fuzz_frame.c cext/pump/frame.c -o "$bin" ;;
    layout | ring) "$CC" "${CFLAGS[@]}" "fuzz/fuzz_$t.c" "${VCHAN_SRCS[@]}" "${VCHAN_LIBS[@]}" -o "$bin" ;;
    pump) "$CC" "${CFLAGS[@]}" fuzz/fuzz_pump.c cext/pump/*.c cext/forward/*.c "${VCHAN_SRCS[@]}" "${VCHAN_LIBS[@]}" -o "$bin" ;;
    esac
}

run_one() { # target
    local t=$1 log=$OUT/logs/$1.log work=$OUT/corpus/$1 rc n art
    local before
    [ "${FUZZ_FRESH:-0}" = 1 ] && rm -rf "$work"
    mkdir -p "$work"
    before=$(ls "$CRASHES" 2>/dev/null | sort)
    local tmo=10
    [ "$t" = pump ] && tmo=30 # its own hang check (10 s) reports first, with details
    local opts=(-max_total_time="$SECS" -print_final_stats=1 -timeout=$tmo -rss_limit_mb=2048
        -artifact_prefix="$CRASHES/$t-" "$work" "fuzz/corpus/$t")
    if [ "$SECS" -eq 0 ]; then # replay the checked-in corpus only, nothing written
        opts=(-runs=0 -print_final_stats=1 -timeout=$tmo -rss_limit_mb=2048
            -artifact_prefix="$CRASHES/$t-" "fuzz/corpus/$t")
    fi
    case $t in
    frame) opts=(-max_len=70000 "${opts[@]}") ;;
    layout) opts=(-max_len=4098 -close_fd_mask=2 "${opts[@]}") ;;
    ring) opts=(-max_len=2048 -close_fd_mask=2 "${opts[@]}") ;;
    pump) opts=(-max_len=140000 -close_fd_mask=2 "${opts[@]}") ;;
    xs_wire) opts=(-max_len=16384 "${opts[@]}") ;;
    esac
    if [ "$t" = xs_wire ]; then
        "$PY" fuzz/fuzz_xs_wire.py "${opts[@]}" >"$log" 2>&1
    else
        "$OUT/fuzz_$t" "${opts[@]}" >"$log" 2>&1
    fi
    rc=$?
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    local rate
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    runs=$((runs + ${n:-0}))
    targets=$((targets + 1))
    # new artifacts of this target (crash-, leak-, timeout-, oom-, slow-unit- excluded)
    art=$(comm -13 <(echo "$before") <(ls "$CRASHES" | sort) | grep -E "^$t-(crash|leak|timeout|oom)-" || true)
    if [ "$rc" -ne 0 ] || [ -n "$art" ]; then
        crashes=$((crashes + 1))
        echo "fuzz[$t]: CRASH (exit $rc), log $log"
        grep -E "^fuzz_[a-z_]+: |ERROR: |SUMMARY: |Uncaught Python exception|Error:" "$log" | head -5 | sed 's/^/    /'
        if [ -n "$art" ]; then
            for a in $art; do echo "fuzz[$t]: crashing input kept: $CRASHES/$a"; done
        else
            echo "fuzz[$t]: no crashing input was written (see the log)"
        fi
    else
        echo "fuzz[$t]: ${n:-0} runs in ${SECS}s (${rate:-0}/s), corpus $(ls "$work" | wc -l) + $(ls "fuzz/corpus/$t" | wc -l) seeds"
    fi
}

for t in $TARGETS; do
    case " $ALL_TARGETS " in *" $t "*) ;; *) echo "fuzz[$t]: unknown target $t" >&2; failed=1; continue ;; esac
    if [ "$t" = xs_wire ]; then
        if ! "$PY" -c "import atheris" 2>/dev/null; then
            echo "fuzz[$t]: atheris is not installed for $PY (pip install atheris): not run" >&2
            failed=1
            continue
        fi
    else
        if ! command -v "$CC" >/dev/null; then
            echo "fuzz[$t]: $CC not found (apt-get install clang): not built" >&2
            failed=1
            continue
        fi
        if ! build "$t" >"$OUT/logs/$t.build.log" 2>&1; then
            echo "fuzz[$t]: build failed:" >&2
            sed 's/^/    /' "$OUT/logs/$t.build.log" >&2
            failed=1
            continue
        fi
    fi
    run_one "$t"
done

echo "fuzz: $targets targets, $runs runs, $crashes crashes"
[ "$crashes" -eq 0 ] && [ "$failed" -eq 0 ]
