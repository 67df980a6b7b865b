"""`engine-client`: call a running trm-engine server from the shell.

    engine-client solve '53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79'
    engine-client solve --file puzzle.txt --rollouts 16 --early-exit verified
    engine-client solve --watch --strategy commit PUZZLE     # the grid redrawn as the search runs
    engine-client solve --solutions 5 PUZZLE                 # up to 5 distinct solutions of an ambiguous puzzle
    engine-client generate --count 3 --kind puzzle --clues 30 --seed 1
    engine-client models

The server is `--url` or $TRM_URL (default http://127.0.0.1:8000). Grids print as the task draws them; --json prints
the raw response.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from clients.client import DEFAULT_URL, APIError, Client
from clients.stream import Progress
from clients.watch import Watcher


def render(task: str, grid) -> str:
    """The task's terminal picture of a grid (nested lists); a wrong answer (say a repeated digit) is drawn too."""
    try:
        import numpy as np

        from engine.tasks import PuzzleError, get_task

        t = get_task(task)
        try:
            tokens = t.encode(grid)
        except PuzzleError:
            if task != "sudoku":
                raise
            tokens = np.asarray(grid, dtype=np.int64).reshape(81) + 1  # the codec's tokens: digit d -> d + 1
        return t.render(tokens)
    except Exception:
        return "\n".join(" ".join(str(v) for v in row) for row in grid)


def read_puzzle(args) -> str:
    if args.file:
        with open(args.file) as f:
            text = f.read()
    elif args.puzzle in (None, "-"):
        text = sys.stdin.read()
    else:
        text = args.puzzle
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return "\n".join(lines).strip()


def givens(puzzle: str) -> set[int]:
    """The given cells of a Sudoku text puzzle (drawn bold by --watch); none for other forms."""
    text = "".join(puzzle.split())
    return {i for i, ch in enumerate(text) if ch in "123456789"} if len(text) == 81 else set()


def watched(stream, given: set[int] = frozenset()):
    """A call like `solve` that streams: draws each progress event, erases the drawing, returns the result."""

    def call(*args, **kwargs):
        watcher, result = Watcher(sys.stdout, given), None
        for event in stream(*args, **kwargs):
            if isinstance(event, Progress):
                watcher.progress(event)
            else:
                result = event
        watcher.clear()
        return result

    return call


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="engine-client", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--url", default=os.environ.get("TRM_URL", DEFAULT_URL))
    p.add_argument("--timeout", type=float, default=120.0, help="client timeout in seconds")
    p.add_argument("--retries", type=int, default=2, help="retries on 429/503 (honouring Retry-After)")
    p.add_argument("--api-key", help="the service's API key (default: TRM_API_KEY)")
    p.add_argument("--json", action="store_true", help="print the raw JSON response")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("solve", help="solve a puzzle")
    s.add_argument("puzzle", nargs="?", help="the puzzle text; '-' or nothing reads stdin")
    s.add_argument("--file", help="read the puzzle from a file ('#' lines are comments)")
    s.add_argument("--task")
    s.add_argument("--model")
    s.add_argument("--rollouts", type=int)
    s.add_argument("--steps", type=int)
    s.add_argument("--noise", type=float)
    s.add_argument("--selector")
    s.add_argument("--seed", type=int)
    s.add_argument("--early-exit", choices=["off", "verified", "confident"])
    s.add_argument("--strategy", choices=["rollouts", "commit"])
    s.add_argument("--diversity", choices=["noise", "augment", "both", "none"])
    s.add_argument("--max-nodes", type=int, help="commit search: nodes expanded at most")
    s.add_argument("--timeout-s", type=float, help="the server-side deadline")
    s.add_argument("--watch", action="store_true", help="stream the search: redraw the grid after each step")
    s.add_argument(
        "--solutions", type=int, metavar="N", help="up to N distinct verified solutions (the server allows 1-32)"
    )

    g = sub.add_parser("generate", help="sample grids or puzzles from the GRAM generator")
    g.add_argument("--count", type=int, default=1)
    g.add_argument("--kind", choices=["grid", "puzzle"], default="grid")
    g.add_argument("--clues", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--model")
    g.add_argument("--method", choices=["commit", "prior"])
    g.add_argument("--watch", action="store_true", help="stream the decoding: redraw the grid as cells are committed")

    sub.add_parser("models", help="list the loaded models")
    args = p.parse_args(argv)

    with Client(args.url, timeout=args.timeout, max_retries=args.retries, api_key=args.api_key) as client:
        try:
            if args.command == "solve":
                puzzle = read_puzzle(args)
                call = watched(client.solve_stream, givens(puzzle)) if args.watch else client.solve
                res = call(
                    puzzle,
                    task=args.task,
                    model=args.model,
                    timeout_s=args.timeout_s,
                    solutions=args.solutions,
                    rollouts=args.rollouts,
                    steps=args.steps,
                    noise=args.noise,
                    selector=args.selector,
                    seed=args.seed,
                    early_exit=args.early_exit,
                    strategy=args.strategy,
                    diversity=args.diversity,
                    max_nodes=args.max_nodes,
                )
                if args.json:
                    print(json.dumps(res.raw, indent=2))
                    return
                r = res.raw
                if not res.solutions:  # none asked for, or none verified: the answer as it is
                    print(render(r["task"], res.grid))
                for i, found in enumerate(res.solutions or []):
                    samples = f"{found.samples} sample" + ("s" if found.samples != 1 else "")
                    print(f"# {i + 1}: {samples}, score {found.score:.3f}")
                    print(render(r["task"], found.grid))
                    print()
                verdict = {True: "yes", False: f"no, {r.get('fault')}", None: "n/a"}[res.verified]
                print(f"verified: {verdict}")
                print(f"confidence {res.confidence:.3f}, agreement {res.agreement:.2f} ({res.selector})")
                print(f"{res.rollouts} rollouts x {res.steps} steps on {res.model}, {res.timing['total_s']:.3f} s")
                if r.get("strategy") == "commit":
                    print(
                        f"commit search: {r['nodes']} nodes, {r['backtracks']} backtracks, {r['row_steps']} row-steps"
                    )
                if res.solutions is not None:
                    known = res.coverage is not None
                    of = f" of the puzzle's {res.count}, coverage {res.coverage:.0%}" if known else ""
                    print(f"{len(res.solutions)} distinct solutions{of}")
                elif res.count is not None and res.count > 1:
                    print(f"the puzzle has {res.count} solutions (--solutions N lists them)")
            elif args.command == "generate":
                call = watched(client.generate_stream) if args.watch else client.generate
                res = call(args.count, args.kind, args.clues, args.seed, model=args.model, method=args.method)
                if args.json:
                    print(json.dumps(res.raw, indent=2))
                    return
                for i, item in enumerate(res.items):
                    print(f"# {i + 1}" + (f": {item['clues']} clues, unique" if args.kind == "puzzle" else ""))
                    print(render("sudoku", item["puzzle_grid"] if args.kind == "puzzle" else item["grid"]))
                    print()
                print(f"{len(res.items)} items; sampled {res.sampled}, valid {res.valid} ({res.validity:.0%})")
                print(f"seed {res.raw['seed']} (--seed {res.raw['seed']} replays these)")
            else:
                print(json.dumps(client.models(), indent=2))
        except APIError as e:
            raise SystemExit(f"engine-client: {e}") from None


if __name__ == "__main__":
    main()
