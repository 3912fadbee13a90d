#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets) on the stable toolchain,
# both at once, for SECONDS each (default 3600), then prints each one's
# executions and findings. Installs cargo-fuzz from crates.io if missing.
# Corpus and crash artefacts stay in fuzz/corpus and fuzz/artifacts (not
# committed). Exits non-zero if a target found a crash.
#
#   scripts/fuzz.sh            # an hour each
#   scripts/fuzz.sh 60         # a minute each
set -euo pipefail
secs=${1:-3600}
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
# libFuzzer's instrumentation needs nightly flags; the stable compiler
# accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
targets=(request_parser reply_scanner)
cargo fuzz build -O
logs=$(mktemp -d)
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    cargo fuzz run -O "$t" -- -max_total_time="$secs" -print_final_stats=1 \
        >"$logs/$t.log" 2>&1 &
done
status=0
wait || status=$?
for t in "${targets[@]}"; do
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' || echo "?")
    crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
    echo "$t: ${secs}s, $execs executions, corpus $(find "corpus/$t" -type f | wc -l) inputs, $crashes findings"
    if grep -q 'ERROR: libFuzzer\|panicked' "$logs/$t.log"; then
        status=1
        grep -m5 -A5 'panicked\|ERROR: libFuzzer' "$logs/$t.log"
    fi
done
exit $status
