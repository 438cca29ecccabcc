#!/usr/bin/env bash
# Fuzzes Tributary with its cargo-fuzz targets (fuzz/), one after another, and sums up what each found.
#
# Usage: bash benches/fuzz.sh [SECONDS=600] [TARGET...]
#   SECONDS  how long each target runs (libFuzzer's -max_total_time)
#   TARGET   any of: sql_front_end pgwire_frames json_fast_path csv_decoder pgoutput_decoder
#            (default: all, in that order)
#
# Builds every target once (nightly toolchain, cargo-fuzz installed when missing), under
# flock /tmp/tributary-cargo.lock like every build of the project, then runs them one at a time.
# Exits non-zero when a target found a crash (a file in fuzz/artifacts/<target>/) or failed to run.
#
# Environment:
#   CARGO_TARGET_DIR  the fuzz build's target directory (default ~/.cache/tributary/fuzz-target):
#                     never the main build's, which the fuzz flags would rebuild from scratch
#   FUZZ_CORPUS_DIR   where each target's corpus grows (default ~/.cache/tributary/fuzz-corpus):
#                     libFuzzer writes new inputs to its first corpus directory, so the committed
#                     seeds in fuzz/corpus/<target> are read, never written; copy inputs worth
#                     keeping into them by hand
#   FUZZ_LOG_DIR      libFuzzer's output per target (default ~/.cache/tributary/fuzz-logs)
#   FUZZ_SANITIZER    cargo fuzz --sanitizer (default none: the code fuzzed is safe Rust, and
#                     without AddressSanitizer it runs about twice as fast; address for unsafe code)
#   FUZZ_SKIP_BUILD   set: run the targets as last built (another run is building, say)
#   FUZZ_BUILD_FLAGS  more `cargo fuzz build` flags (default "--codegen-units 16"; cargo-fuzz forces
#                     1, the fastest fuzzing but the slowest build) or "-O" (no debug assertions
#                     and overflow checks, which cargo fuzz otherwise turns on in every crate)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$root/fuzz"
all_targets=(sql_front_end pgwire_frames json_fast_path csv_decoder pgoutput_decoder)

seconds="${1:-600}"
if [[ ! "$seconds" =~ ^[0-9]+$ ]]; then
    echo "usage: bash benches/fuzz.sh [SECONDS=600] [TARGET...] (targets: ${all_targets[*]})" >&2
    exit 2
fi
shift $(( $# > 0 ? 1 : 0 ))
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=("${all_targets[@]}")
fi
for t in "${targets[@]}"; do
    if [[ ! -f "$fuzz_dir/fuzz_targets/$t.rs" ]]; then
        echo "unknown fuzz target: $t (targets: ${all_targets[*]})" >&2
        exit 2
    fi
done

cache="$HOME/.cache/tributary"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/fuzz-target}"
corpus_root="${FUZZ_CORPUS_DIR:-$cache/fuzz-corpus}"
log_dir="${FUZZ_LOG_DIR:-$cache/fuzz-logs}"
sanitizer="${FUZZ_SANITIZER:-none}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
lock=/tmp/tributary-cargo.lock

# The longest input libFuzzer makes for each target.
max_len() {
    case "$1" in
        sql_front_end) echo 4096 ;;
        pgwire_frames) echo 65536 ;;
        json_fast_path | csv_decoder) echo 16384 ;;
        pgoutput_decoder) echo 4096 ;;
        *) echo 4096 ;;
    esac
}

# Extra libFuzzer flags: a dictionary of SQL words for the targets that read SQL; no leak
# checks where tokio's threads keep allocating between inputs (LeakSanitizer would blame them).
extra_flags() {
    case "$1" in
        sql_front_end | pgwire_frames)
            echo "-dict=$fuzz_dir/dict/sql.dict -detect_leaks=0"
            ;;
    esac
}

if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    # A build too: under the project's build lock.
    flock "$lock" cargo install cargo-fuzz --locked
fi

build_flags=(--fuzz-dir "$fuzz_dir" --sanitizer "$sanitizer" --target-dir "$CARGO_TARGET_DIR")
# 16 codegen units: cargo-fuzz's default of 1 makes the instrumented DataFusion and delta-rs
# build take over an hour on two cores, for a few percent of fuzzing speed.
read -r -a more <<<"${FUZZ_BUILD_FLAGS:---codegen-units 16}"
build_flags+=("${more[@]}")
if [[ -z "${FUZZ_SKIP_BUILD:-}" ]]; then
    echo "== building the fuzz targets into $CARGO_TARGET_DIR (sanitizer $sanitizer; waits for $lock)"
    (cd "$root" && flock "$lock" cargo +nightly fuzz build "${build_flags[@]}")
fi

triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin_dir="$CARGO_TARGET_DIR/$triple/release"
mkdir -p "$log_dir"

declare -A runs rate corpus crashes status
failed=0
for t in "${targets[@]}"; do
    seeds="$fuzz_dir/corpus/$t"
    work="$corpus_root/$t"
    artifacts="$fuzz_dir/artifacts/$t"
    log="$log_dir/$t.log"
    mkdir -p "$seeds" "$work" "$artifacts"
    stamp="$(mktemp)"
    echo "== $t: ${seconds}s, corpus $work + seeds $seeds, log $log"
    code=0
    # shellcheck disable=SC2046 # extra_flags is a list of words
    "$bin_dir/$t" "$work" "$seeds" \
        -max_total_time="$seconds" \
        -rss_limit_mb=2048 \
        -max_len="$(max_len "$t")" \
        -timeout=60 \
        -print_final_stats=1 \
        -artifact_prefix="$artifacts/" \
        $(extra_flags "$t") \
        >"$log" 2>&1 || code=$?

    # Executions and their rate: libFuzzer's final stats, else its last status line
    # ("#N DONE ... exec/s: R", or the last "#N ..." before a crash).
    n="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    r="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    last="$(grep -a -E '^#[0-9]+' "$log" | tail -n 1 || true)"
    if [[ -z "$n" ]]; then
        n="$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)"
    fi
    if [[ -z "$n" && -n "$last" ]]; then
        n="$(sed -E 's/^#([0-9]+).*/\1/' <<<"$last")"
    fi
    if [[ -z "$r" && -n "$last" ]]; then
        r="$(grep -o -E 'exec/s: [0-9]+' <<<"$last" | grep -o -E '[0-9]+' || true)"
    fi
    # Units in libFuzzer's corpus at the end, else the files of both directories.
    c="$(grep -o -E 'corp: [0-9]+' <<<"$last" | grep -o -E '[0-9]+' || true)"
    if [[ -z "$c" ]]; then
        c="$(find "$work" "$seeds" -maxdepth 1 -type f | wc -l)"
    fi
    # Crashes: files this run left in the artifacts (slow-unit-* are only slow).
    k="$(find "$artifacts" -maxdepth 1 -type f -newer "$stamp" ! -name 'slow-unit-*' | wc -l)"
    rm -f "$stamp"

    runs[$t]="${n:-?}"
    rate[$t]="${r:-?}"
    corpus[$t]="$c"
    crashes[$t]="$k"
    if [[ "$k" -gt 0 ]]; then
        status[$t]="CRASH"
        failed=1
    elif [[ "$code" -ne 0 ]]; then
        status[$t]="FAILED (exit $code)"
        failed=1
    else
        status[$t]="ok"
    fi
    if [[ "${status[$t]}" != ok ]]; then
        echo "-- $t: ${status[$t]}; the end of $log:"
        tail -n 40 "$log"
    fi
done

echo
printf '%-18s %-20s %14s %10s %8s %8s\n' target status executions exec/s corpus crashes
for t in "${targets[@]}"; do
    printf '%-18s %-20s %14s %10s %8s %8s\n' \
        "$t" "${status[$t]}" "${runs[$t]}" "${rate[$t]}" "${corpus[$t]}" "${crashes[$t]}"
done
if [[ "$failed" -ne 0 ]]; then
    echo
    echo "Crashing inputs are in $fuzz_dir/artifacts/<target>/; replay one with"
    echo "  $bin_dir/<target> <file>"
    echo "or minimise it with: cargo +nightly fuzz tmin --fuzz-dir fuzz --target-dir \"$CARGO_TARGET_DIR\" <target> <file>"
fi
exit "$failed"
