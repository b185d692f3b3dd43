#!/usr/bin/env bash
# One entry point for every check, so people run locally exactly what CI runs.
# Usage: ci/run.sh fmt|clippy|test|all
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

all() {
    fmt
    clippy
    test_suite
}

case "${1:-all}" in
    fmt) fmt ;;
    clippy) clippy ;;
    test) test_suite ;;
    all) all ;;
    *) echo "usage: $0 fmt|clippy|test|all" >&2; exit 2 ;;
esac
