"""Accuracy against compute for search strategies: one point per `engine-eval --json` result.

    python benchmarks/search_plot.py OUT.png r1.json r2.json ...

Each point is labelled by strategy, diversity and K x D; x is the mean row-steps per puzzle (every row's supervision
steps, over every commit-search node), y the exact accuracy. Results on different puzzle files should not share a plot.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def label(r: dict) -> str:
    name = "commit" if r.get("strategy") == "commit" else "rollouts"
    if r.get("policy") == "uniform":
        return "commit, uniform policy"
    return f"{name}, {r.get('diversity', 'noise')}, K={r['rollouts']} D={r['steps']}"


def main(argv: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, paths = argv[0], argv[1:]
    results = [json.loads(Path(p).read_text()) for p in paths]
    if len({r["puzzles"] for r in results}) > 1:
        raise SystemExit("search_plot: the results are on different puzzle files")
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for r in results:
        x, y = r["row_steps"] / r["n"], 100 * r["exact_accuracy"]
        ax.scatter(x, y, s=40)
        ax.annotate(label(r), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("row-steps per puzzle (mean)")
    ax.set_ylabel("exact accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{Path(results[0]['checkpoint']).name} on {Path(results[0]['puzzles']).name} (n={results[0]['n']})")
    fig.savefig(out, dpi=120)
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1:])
