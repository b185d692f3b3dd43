#!/usr/bin/env bash
# One entry point for every check, so people run locally exactly what CI runs.
# Usage: ci/run.sh fmt|clippy|test|proptest|loom|mutants|all   (mutants is slow: not part of all)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

fmt() {
    step "cargo fmt --check"
    cargo fmt --all --check
}

clippy() {
    step "cargo clippy --all-targets -- -D warnings"
    cargo clippy --all-targets -- -D warnings
}

# The test command exactly as the README gives it.
test_suite() {
    step "cargo test"
    cargo test
}

# The model-based properties of the dispatch core, with many more cases than `cargo test` runs.
proptest_suite() {
    step "dispatch model properties, PROPTEST_CASES=1000"
    PROPTEST_CASES=1000 cargo test --release --lib dispatch::model_tests
}

# Loom models of stop coordination, in their own target dir (every crate is built with --cfg loom).
loom() {
    step "loom models of shutdown"
    RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
        cargo test --release --lib --target-dir target/loom shutdown::loom_tests -- --nocapture
}

# Mutation testing of the pure core: shows the tests catch broken decisions. Takes minutes.
mutants() {
    step "cargo mutants over src/dispatch"
    command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked
    PROPTEST_CASES=64 cargo mutants --file 'src/dispatch/*.rs' -j 1 --timeout 20 "$@" -- --lib
}

all() {
    fmt
    clippy
    test_suite
    proptest_suite
    loom
}

case "${1:-all}" in
    fmt) fmt ;;
    clippy) clippy ;;
    test) test_suite ;;
    proptest) proptest_suite ;;
    loom) loom ;;
    mutants) shift; mutants "$@" ;;
    all) all ;;
    *) echo "usage: $0 fmt|clippy|test|proptest|loom|mutants|all" >&2; exit 2 ;;
esac
