#!/usr/bin/env bash
# One entry point for every check, so people run locally exactly what CI runs.
# Usage: ci/run.sh fmt|clippy|test|proptest|loom|sim|fuzz|bench-smoke|mutants|mutants-shell|all
# (the two mutation runs are slow: not part of all)
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
    step "model properties, PROPTEST_CASES=1000"
    PROPTEST_CASES=1000 cargo test --release --lib sim::model_tests
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

# Mutation testing of the shell and the binary: the worker loop, the stop coordination, start-up,
# the handover, the system calls, the flags and the counters, against every test that runs them
# (integration tests included). The loom-only models are left out (they are never compiled
# without --cfg loom). nextest runs the test binaries side by side (their time is mostly waiting
# on sockets and timers), which takes the suite from about 35 s to 10 s per mutant.
# Slow: MUTANTS_SHARD=k/n runs one shard (cargo mutants --shard), MUTANTS_TIMEOUT the per-mutant
# bound (6x the suite, so a slow run is reported as a timeout, not caught), MUTANTS_JOBS the jobs.
mutants_shell() {
    step "cargo mutants over the shell and the binary"
    command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked
    command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
    local shard=()
    [ -n "${MUTANTS_SHARD:-}" ] && shard=(--shard "$MUTANTS_SHARD")
    PROPTEST_CASES=64 SIM_SEEDS=100 cargo mutants -j "${MUTANTS_JOBS:-1}" --test-tool nextest \
        --timeout "${MUTANTS_TIMEOUT:-60}" \
        --file src/worker.rs --file src/shutdown.rs --file src/server.rs --file src/handover.rs \
        --file 'src/sys/*.rs' --file 'src/cmd/**/*.rs' --file src/main.rs --file src/report.rs \
        --exclude-re 'loom' "${shard[@]}" "$@" -- --test-threads 6
}

# The simulated network for many more seeds than `cargo test` runs (SIM_SEEDS overrides).
sim() {
    local seeds="${SIM_SEEDS:-5000}"
    step "simulated network, $seeds seeds (release)"
    SIM_SEEDS="$seeds" cargo test --release --test sim -- --nocapture
}

# A bounded fuzz run of echo_stream. New inputs go to a scratch dir listed first, so the committed
# seed corpus stays as it is. Nightly gets the sanitizer build; stable runs without one.
fuzz() {
    local secs="${FUZZ_SECONDS:-60}"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        step "installing cargo-fuzz"
        cargo install cargo-fuzz --locked
    fi
    local scratch log rc=0
    scratch="$(mktemp -d)"
    log="$(mktemp)"
    local run=(cargo fuzz run)
    if cargo +nightly --version >/dev/null 2>&1; then
        run=(cargo +nightly fuzz run)
    else
        run+=(--sanitizer none)
    fi
    step "${run[*]} echo_stream for ${secs}s"
    "${run[@]}" echo_stream "$scratch" fuzz/corpus/echo_stream -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        # The panic message first (the backtrace after it can be long), then the end of the log.
        grep -v '^epoll-echo: accept failed' "$log" | grep -A 12 'panicked' | head -n 40 || true
        grep -v '^epoll-echo: accept failed' "$log" | tail -n 20
    fi
    grep -E '^(Done |stat::)' "$log" || true
    local execs
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    echo "fuzz: ${execs:-?} executions in ${secs}s (exit $rc)"
    rm -rf "$scratch" "$log"
    return "$rc"
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
    local common=(--addr "$addr" --server-pid "$pid")
    # idle has no warm-up: it only opens and holds connections.
    {
        "${bench[@]}" ping "${common[@]}" --warmup 0.1 --conns 8 --depth 16 --duration 1 &&
        "${bench[@]}" ping "${common[@]}" --warmup 0.1 --conns 4 --size 16384 --duration 1 &&
        "${bench[@]}" stream "${common[@]}" --warmup 0.1 --conns 8 --rate 20000 --duration 1 &&
        "${bench[@]}" churn "${common[@]}" --warmup 0.1 --duration 0.5 &&
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
    proptest_suite
    loom
    sim
    fuzz
    bench_smoke
}

case "${1:-all}" in
    fmt) fmt ;;
    clippy) clippy ;;
    test) test_suite ;;
    proptest) proptest_suite ;;
    loom) loom ;;
    sim) sim ;;
    fuzz) fuzz ;;
    bench-smoke) bench_smoke ;;
    mutants) shift; mutants "$@" ;;
    mutants-shell) shift; mutants_shell "$@" ;;
    all) all ;;
    *) echo "usage: $0 fmt|clippy|test|proptest|loom|sim|fuzz|bench-smoke|mutants|mutants-shell|all" >&2; exit 2 ;;
esac
