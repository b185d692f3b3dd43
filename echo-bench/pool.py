#!/usr/bin/env python3
"""Pools the same-round ratios of epoll-echo to epoll-ref over several `compare` runs (JSON lines
files), per set-up and scenario: one invocation's median moves by up to 0.1 on a noisy machine,
and more rounds narrow it. Usage: python3 echo-bench/pool.py FILE.jsonl [FILE.jsonl ...]"""
import collections
import json
import statistics
import sys


def quartiles(xs):
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 4], xs[3 * (len(xs) - 1) // 4]


def main(paths):
    # (setup, scenario) -> throughput ratios, CPU ratios, files seen
    pool = collections.defaultdict(lambda: ([], [], set()))
    for path in paths:
        runs = collections.defaultdict(dict)
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("kind") == "run":
                    runs[(r["setup"], r["scenario"], r["round"])][r["server"]] = r
        for (setup, scenario, _), by_server in runs.items():
            ours, ref = by_server.get("epoll-echo"), by_server.get("epoll-ref")
            if not ours or not ref or not ref["msgs_per_s"]:
                continue
            thr, cpu, files = pool[(setup, scenario)]
            thr.append(ours["msgs_per_s"] / ref["msgs_per_s"])
            a, b = ours.get("server_cpu_ns_per_msg"), ref.get("server_cpu_ns_per_msg")
            if a and b:
                cpu.append(a / b)
            files.add(path)
    print("| set-up | scenario | rounds | runs | x ref: median (quartiles) | cpu x: median (quartiles) |")
    print("|---|---|---|---|---|---|")
    for (setup, scenario), (thr, cpu, files) in sorted(pool.items()):
        cells = []
        for xs in (thr, cpu):
            if xs:
                lo, hi = quartiles(xs)
                cells.append(f"{statistics.median(xs):.2f} ({lo:.2f}-{hi:.2f})")
            else:
                cells.append("-")
        print(f"| {setup} | {scenario} | {len(thr)} | {len(files)} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
