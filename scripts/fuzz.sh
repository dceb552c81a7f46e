#!/usr/bin/env bash
# Runs every libFuzzer target in fuzz/ for SECONDS each (default 30: the CI smoke run; use 600
# or more for a real campaign). Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); builds on
# stable Rust without sanitizers (`-s none`: coverage-guided only; panics and aborts are the
# findings). New interesting inputs are added to fuzz/corpus/<target>/; a crash leaves its input
# in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH="${1:-30}"
TARGETS=(teleop_wire scan_protocol urdf igtl nifti dicom)
cargo fuzz build -s none -O
for t in "${TARGETS[@]}"; do
    echo "== fuzz $t for ${SECONDS_EACH}s"
    mkdir -p "corpus/$t"
    # -max_len bounds one input (URDF and TOML seeds are a few kB, DICOM ones up to 39 kB); stats
    # on the last line.
    cargo fuzz run -s none -O "$t" -- -max_total_time="$SECONDS_EACH" -max_len=65536 \
        -print_final_stats=1 2>&1 | grep -E "^(Done|stat::number_of_executed_units|==|SUMMARY)|panicked|ERROR" || true
    # (One glob per kind, unmatched ones dropped: `ls a* b*` fails when any pattern is empty,
    # which hid a real crash once.)
    found=$(compgen -G "artifacts/$t/crash-*" || true; compgen -G "artifacts/$t/oom-*" || true;
        compgen -G "artifacts/$t/timeout-*" || true)
    if [ -n "$found" ]; then
        echo "fuzz target $t found a failing input: see fuzz/artifacts/$t" >&2
        exit 1
    fi
done
