#!/usr/bin/env bash
# One entry point for every check, so people run locally exactly what CI runs.
# Usage: ci/run.sh fmt|clippy|test|bench-smoke|all
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

# A few seconds of every echo-bench scenario against the server: proves the tool works and that the
# server echoes every byte under load. Not a measurement; echo-bench exits non-zero on any mismatch.
bench_smoke() {
    step "echo-bench smoke"
    # The workspace's default member is the server alone, so the tool is linted and tested here.
    cargo clippy -p echo-bench --all-targets -- -D warnings
    cargo test -p echo-bench
    cargo build -p epoll-echo -p echo-bench --bins
    local dir out pid addr status=0
    dir=$(mktemp -d)
    out="$dir/server.out"
    target/debug/epoll-echo --bind 127.0.0.1 --port 0 --maxListeners 2 --drain-timeout 1s >"$out" &
    pid=$!
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$out")
        [ -n "$addr" ] && break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "server did not report its address" >&2
        kill "$pid" 2>/dev/null || true
        rm -rf "$dir"
        return 1
    fi
    local bench=(target/debug/echo-bench)
    local common=(--addr "$addr" --server-pid "$pid" --warmup 0.1)
    {
        "${bench[@]}" ping "${common[@]}" --conns 8 --depth 16 --duration 1 &&
        "${bench[@]}" ping "${common[@]}" --conns 4 --size 16384 --duration 1 &&
        "${bench[@]}" stream "${common[@]}" --conns 8 --rate 20000 --duration 1 &&
        "${bench[@]}" churn "${common[@]}" --duration 0.5 &&
        "${bench[@]}" idle "${common[@]}" --conns 500 --duration 0.1
    } || status=$?
    kill -TERM "$pid"
    wait "$pid" || status=$?
    rm -rf "$dir"
    return "$status"
}

all() {
    fmt
    clippy
    test_suite
    bench_smoke
}

case "${1:-all}" in
    fmt) fmt ;;
    clippy) clippy ;;
    test) test_suite ;;
    bench-smoke) bench_smoke ;;
    all) all ;;
    *) echo "usage: $0 fmt|clippy|test|bench-smoke|all" >&2; exit 2 ;;
esac
