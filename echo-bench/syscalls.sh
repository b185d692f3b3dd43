#!/usr/bin/env bash
# Syscalls per echoed message for each server. The server runs pinned to cpu 0 and echo-bench drives
# it from cpu 1 (connecting and warming up for 2 s first); `perf stat` counts the server's syscall tracepoints during the measured window (in the
# kernel, so the server is not slowed the way strace would slow it and change its batching).
# Usage: echo-bench/syscalls.sh [echo-bench ping flags...]   (default: --conns 50 --depth 16)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p epoll-echo -p echo-bench --bins
bin=target/release
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--conns 50 --depth 16)
warmup=2
secs=2
events=raw_syscalls:sys_enter
for call in read recvfrom sendto write epoll_wait epoll_ctl; do
    events+=",syscalls:sys_enter_$call"
done
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf '%-11s %10s %9s %s\n' server msgs sys/msg "per message: read recvfrom sendto write epoll_wait epoll_ctl"
for server in epoll-echo tokio-echo epoll-ref; do
    case $server in
        epoll-echo) cmd=("$bin/epoll-echo" --bind 127.0.0.1 --port 0 --maxListeners 1 --drain-timeout 200ms) ;;
        *) cmd=("$bin/$server" --port 0 --threads 1) ;;
    esac
    taskset -c 0 "${cmd[@]}" >"$dir/$server.out" 2>/dev/null &
    pid=$!
    addr=
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$dir/$server.out")
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "$server did not start" >&2; kill "$pid"; exit 1; }
    taskset -c 1 "$bin/echo-bench" ping --json --addr "$addr" --warmup "$warmup" --duration "$secs" "${args[@]}" >"$dir/run.json" &
    bench=$!
    sleep "$warmup"
    perf stat -x, -e "$events" -p "$pid" -o "$dir/perf.csv" -- sleep "$secs" >/dev/null 2>&1
    wait "$bench"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    msgs=$(sed -n 's/.*"msgs":\([0-9]*\).*/\1/p' "$dir/run.json")
    awk -F, -v m="$msgs" -v s="$server" '
        $3 ~ /sys_enter/ { n = ($1 ~ /^[0-9]+$/) ? $1 : 0; c[$3] = n }
        END {
            printf "%-11s %10d %9.3f ", s, m, c["raw_syscalls:sys_enter"] / m
            split("read recvfrom sendto write epoll_wait epoll_ctl", k, " ")
            for (i = 1; i <= 6; i++) printf " %s=%.3f", k[i], c["syscalls:sys_enter_" k[i]] / m
            printf "\n"
        }' "$dir/perf.csv"
done
