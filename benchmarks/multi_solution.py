"""Accuracy and coverage on many-answer puzzles at equal compute (GRAM Table 1; docs/multi-solution.md).

Every method runs through `engine-eval --dataset` on the same test inputs of an `engine-data nqueens` directory:
GRAM prior samples (K = 1, 4, 20), the TRM baseline deterministic (K = 1: one answer), with PTRM noise over a sigma
sweep (K = 20) and with a random rotation or reflection per row (K = 20). Row-steps per puzzle are reported with
each, so a method's coverage is read at its compute.

    python benchmarks/multi_solution.py --gram checkpoints/nqueens8-gram --trm checkpoints/nqueens8-trm \\
        --dataset data/nqueens8 --limit 200 --json benchmarks/results/nqueens8.json --plot benchmarks/nqueens8.png
    python benchmarks/multi_solution.py --trm ... --only trm     # one side (two processes share a 2-core machine)

The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from engine.eval import main as engine_eval  # noqa: E402
from engine.machine import describe  # noqa: E402

SIGMAS = (0.1, 0.3, 1.0)
SAMPLES = 20  # the paper's coverage budget


def methods(gram: str | None, trm: str | None) -> list[tuple[str, str, list[str]]]:
    """(name, checkpoint, engine-eval flags); every row runs all D steps (no early exit)."""
    off = ["--early-exit", "off"]
    runs = []
    if gram:
        runs += [(f"GRAM prior, K = {k}", gram, ["-K", str(k), *off]) for k in (1, 4, SAMPLES)]
    if trm:
        runs.append(("TRM deterministic, K = 1", trm, ["-K", "1", *off]))
        runs += [
            (f"TRM + PTRM noise sigma {s:g}, K = {SAMPLES}", trm, ["-K", str(SAMPLES), "--noise", str(s), *off])
            for s in SIGMAS
        ]
        runs.append((f"TRM + symmetries, K = {SAMPLES}", trm, ["-K", str(SAMPLES), "--diversity", "augment", *off]))
    return runs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gram", help="a GRAM checkpoint of the task")
    p.add_argument("--trm", help="the TRM baseline of the task")
    p.add_argument("--dataset", required=True, help="engine-data nqueens directory (its test split is run)")
    p.add_argument("--limit", type=int, default=200, help="test inputs (the first N)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the table here")
    p.add_argument("--plot", help="coverage against row-steps per puzzle as a PNG (needs both sides in --json)")
    args = p.parse_args(argv)
    rows = []
    for name, ckpt, flags in methods(args.gram, args.trm):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            engine_eval(
                ["--checkpoint", ckpt, "--dataset", args.dataset, "--limit", str(args.limit), "--threads",
                 str(args.threads), *flags, "--json", out.name]
            )  # fmt: skip
            r = json.loads(Path(out.name).read_text())
        rows.append(
            {
                "method": name,
                "checkpoint": ckpt,
                "validity": r["validity"],
                "selected_valid": r["exact_accuracy"],
                "coverage": r["coverage"],
                "coverage_pooled": r["coverage_pooled"],
                "row_steps_per_puzzle": r["row_steps_per_puzzle"],
                "n": r["n"],
                "mean_solutions": r["mean_solutions"],
                "wall_seconds": r["wall_seconds"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {"dataset": args.dataset, "limit": args.limit, "machine": describe("cpu"), "rows": rows}
    if args.json:
        previous = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {"rows": []}
        kept = [r for r in previous["rows"] if r["method"] not in {x["method"] for x in rows}]
        result["rows"] = kept + rows  # one side at a time adds to the other's table
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result["rows"], args.plot)
    print(table(result["rows"]))
    print(json.dumps(result))


def table(rows: list[dict]) -> str:
    lines = [
        "| method | row-steps / puzzle | validity (per sample) | selected answer valid | coverage (mean) | coverage (pooled) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['row_steps_per_puzzle']:g} | {100 * r['validity']:.1f}% | "
            f"{100 * r['selected_valid']:.1f}% | {100 * r['coverage']:.1f}% | {100 * r['coverage_pooled']:.1f}% |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for r in rows:
        marker = "o" if r["method"].startswith("GRAM") else "s"
        ax.scatter(r["row_steps_per_puzzle"], 100 * r["coverage"], marker=marker)
        ax.annotate(r["method"], (r["row_steps_per_puzzle"], 100 * r["coverage"]), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("row-steps per puzzle")
    ax.set_ylabel("coverage (%), mean over puzzles")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
