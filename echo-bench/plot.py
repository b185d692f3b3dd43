#!/usr/bin/env python3
"""Plots throughput and p99 latency against connections for each server, from the median lines
that `echo-bench compare` writes (64 B messages; solid: pinned set-up, dashed: unpinned).

Usage: python3 echo-bench/plot.py [target/echo-bench/compare.jsonl] [BENCHMARKS.png]
Needs matplotlib (pip install matplotlib).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src = sys.argv[1] if len(sys.argv) > 1 else "target/echo-bench/compare.jsonl"
dst = sys.argv[2] if len(sys.argv) > 2 else "BENCHMARKS.png"

# Closed-loop 64 B scenarios only ("64B c50 d16"); the open-loop one has a fixed rate.
rows = []
with open(src) as f:
    for line in f:
        r = json.loads(line)
        if r.get("kind") == "median" and r.get("size") == 64 and " d" in r["scenario"]:
            rows.append(r)

servers = ["epoll-echo", "tokio-echo", "epoll-ref"]
colors = {"epoll-echo": "tab:blue", "tokio-echo": "tab:orange", "epoll-ref": "tab:green"}
styles = {"pinned": "-", "unpinned": "--"}
fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
for col, depth in enumerate([1, 16]):
    for setup, style in styles.items():
        for server in servers:
            pts = sorted(
                (r["conns"], r["msgs_per_s"], r["p99_us"])
                for r in rows
                if r["depth"] == depth and r["setup"] == setup and r["server"] == server
            )
            if not pts:
                continue
            conns = [p[0] for p in pts]
            label = f"{server} ({setup})"
            axes[0][col].plot(conns, [p[1] for p in pts], style, marker="o", color=colors[server], label=label)
            axes[1][col].plot(conns, [p[2] / 1000 for p in pts], style, marker="o", color=colors[server], label=label)
    axes[0][col].set_title(f"64 B messages, {depth} in flight per connection")
    axes[0][col].set_ylabel("messages/s")
    axes[1][col].set_ylabel("p99 latency (ms)")
    axes[1][col].set_xlabel("connections")
    for row in range(2):
        axes[row][col].set_xscale("log")
        axes[row][col].grid(True, which="both", alpha=0.3)
    axes[1][col].set_yscale("log")
    axes[0][col].set_ylim(bottom=0)
axes[0][0].legend(fontsize=8)
fig.suptitle("echo-bench compare: medians of interleaved rounds (shared, noisy 2-core machine)")
fig.tight_layout()
fig.savefig(dst, dpi=90)
print(f"wrote {dst}")
