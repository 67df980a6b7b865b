"""Accuracy against compute for search strategies: one point per `engine-eval --json` result.

    python benchmarks/search_plot.py OUT.png r1.json r2.json ...

Each point is labelled by strategy, diversity and K x D; x is the mean row-steps per puzzle (every row's supervision
steps, over every commit-search node), y the exact accuracy. A run with `by_waves` (engine-eval reads it off one
run) also draws the curve through its fewer waves. Results on different puzzle files should not share a plot.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def label(r: dict) -> str:
    name = "commit" if r.get("strategy") == "commit" else "rollouts"
    if r.get("policy") == "uniform":
        return "commit, uniform policy"
    n = r.get("waves") or len(r.get("by_waves", {})) or 1
    waves = f" x {n} waves" if n > 1 else ""
    return f"{name}, {r.get('diversity', 'noise')}, K={r['rollouts']}{waves} D={r['steps']}"


def main(argv: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, paths = argv[0], argv[1:]
    results = [json.loads(Path(p).read_text()) for p in paths]
    if len({r["puzzles"] for r in results}) > 1:
        raise SystemExit("search_plot: the results are on different puzzle files")
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for i, r in enumerate(results):
        if not r["row_steps"]:  # the uniform policy runs no rows: it has no place on this axis
            continue
        color = f"C{i}"
        if "by_waves" in r:  # the same run stopped after fewer waves: a curve through the smaller budgets
            points = sorted((int(k), v) for k, v in r["by_waves"].items())
            xs = [v["row_steps_per_puzzle"] for _, v in points]
            ys = [100 * v["exact_accuracy"] for _, v in points]
            ax.plot(xs, ys, marker=".", color=color, alpha=0.6)
            for (k, _), xk, yk in zip(points, xs, ys):
                ax.annotate(f"{k}", (xk, yk), textcoords="offset points", xytext=(3, -10), fontsize=7, color=color)
        ax.scatter(r["row_steps"] / r["n"], 100 * r["exact_accuracy"], s=40, color=color, label=label(r))
    ax.legend(fontsize=8, loc="lower right", title="numbers: waves run", title_fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("row-steps per puzzle (mean)")
    ax.set_ylabel("exact accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{Path(results[0]['checkpoint']).name} on {Path(results[0]['puzzles']).name} (n={results[0]['n']})")
    fig.savefig(out, dpi=120)
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1:])
