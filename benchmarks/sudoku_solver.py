"""Speed of the exact Sudoku solver: first solution and count<=2, ms per puzzle, checked against a `.sol` file.

    python benchmarks/sudoku_solver.py [--puzzles FILE] [--solutions FILE.sol] [--limit 1000] [--seed 0]

Puzzle files use the tdoku format (81 chars per line, '.' blank, '#' comment lines); solutions default to
`solutions/<stem>.sol` next to the puzzle file. Timings include the Python wrapper and exclude JIT compilation.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from engine.tasks.sudoku import Sudoku  # noqa: E402
from engine.tasks.sudoku_solver import count_solutions, search, solve  # noqa: E402

DEFAULT_PUZZLES = Path(__file__).resolve().parents[1] / "../shared/data/sudoku/forum_hardest_1905_11.txt"


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stats_ms(ns: list[int]) -> str:
    ms = np.array(ns) / 1e6
    return f"{ms.mean():.3f} | {np.median(ms):.3f} | {np.percentile(ms, 99):.3f} | {ms.max():.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--puzzles", type=Path, default=DEFAULT_PUZZLES)
    ap.add_argument("--solutions", type=Path, help="default: solutions/<stem>.sol beside the puzzle file")
    ap.add_argument("--limit", type=int, default=1000, help="puzzles sampled (fixed seed); 0 = all")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sol_path = args.solutions or args.puzzles.parent / "solutions" / f"{args.puzzles.stem}.sol"

    task = Sudoku()
    puzzles, solutions = read_lines(args.puzzles), read_lines(sol_path)
    if len(puzzles) != len(solutions):
        sys.exit(f"{args.puzzles} has {len(puzzles)} puzzles but {sol_path} has {len(solutions)} solutions")
    pick = np.arange(len(puzzles))
    if 0 < args.limit < len(puzzles):
        pick = np.sort(np.random.default_rng(args.seed).choice(len(puzzles), args.limit, replace=False))
    tokens = [task.encode(puzzles[i]) for i in pick]
    expected = [task.encode(solutions[i]) for i in pick]

    solve(tokens[0]), count_solutions(tokens[0])  # warm-up: compile or load the numba cache
    solve_ns, count_ns, wrong, not_unique = [], [], 0, 0
    for p, want in zip(tokens, expected):
        t0 = time.perf_counter_ns()
        got = solve(p)
        t1 = time.perf_counter_ns()
        n = count_solutions(p)
        t2 = time.perf_counter_ns()
        solve_ns.append(t1 - t0)
        count_ns.append(t2 - t1)
        wrong += got is None or not np.array_equal(got, want)
        not_unique += n != 1
    guesses = [search(p).guesses for p in tokens]

    print(f"puzzles: {args.puzzles.name}, {len(pick)} of {len(puzzles)} (seed {args.seed})")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; python {platform.python_version()}, "
        f"numba {numba.__version__}, numpy {np.__version__}"
    )
    print(
        f"checked: {len(pick) - wrong}/{len(pick)} solutions equal the .sol line, "
        f"{len(pick) - not_unique}/{len(pick)} counts == 1; median guesses {np.median(guesses):g}\n"
    )
    print("| operation | mean ms | median ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    print(f"| solve (first solution) | {stats_ms(solve_ns)} |")
    print(f"| count_solutions (limit 2) | {stats_ms(count_ns)} |")
    if wrong or not_unique:
        sys.exit(1)


if __name__ == "__main__":
    main()
