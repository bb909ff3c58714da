#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) from the checked-in seeds (fuzz/corpus/<target>),
# keeping what it finds in target/fuzz-corpus/<target> (not checked in). A crash stops the run with the
# input saved under fuzz/artifacts/<target>/; `cargo +nightly fuzz tmin <target> <file>` minimizes it, and
# the minimized input becomes a regression test next to the code it broke.
#   scripts/fuzz.sh            # 60 s per target (what CI runs is set in scripts/test.sh)
#   scripts/fuzz.sh 3600 tracker   # one target for an hour
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
# The tools first: the target list comes from cargo-fuzz itself (listed before it was installed, it was empty
# and a fresh machine fuzzed nothing and passed).
if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
    if [ ${#targets[@]} -eq 0 ]; then
        echo "fuzz: cargo fuzz list found no targets in fuzz/: nothing would be fuzzed" >&2
        exit 1
    fi
fi
(cd fuzz && cargo +nightly fuzz build)
for t in "${targets[@]}"; do
    mkdir -p "target/fuzz-corpus/$t"
    echo "fuzz: $t for ${seconds}s"
    # -max_len 64 KiB: past the largest message the decoders hold whole; -rss_limit_mb: a leak is a crash.
    (cd fuzz && cargo +nightly fuzz run "$t" "../target/fuzz-corpus/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
        grep -E "^(#[0-9]+ +DONE|==[0-9]+==|SUMMARY|Done|stat::number_of_executed_units|thread '|.*panicked)" || true)
    if ls "fuzz/artifacts/$t"/* >/dev/null 2>&1; then
        echo "fuzz: $t found a crash: $(ls "fuzz/artifacts/$t")" >&2
        exit 1
    fi
done
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"
