"""`engine-eval`: accuracy of a checkpoint on a puzzle file under a search budget, through the serving engine.

Puzzle files hold one puzzle per line (lines starting with '#' are comments); an optional solutions file holds one
answer per puzzle line, in the same order. Without solutions, the rule verifier decides what is correct.

With K rollouts it reports, besides the selected answer's accuracy, PTRM's pass@K, best-Q@K and mode@K and the
accuracy of every selector the checkpoint supports (PTRM_GRAM.md §3.3). `--sweep` measures width (K) and depth (D)
scaling in one run: row r of a K-row search is row r of any wider search with the same seed, and the engine keeps
every row's answers at the depths of the ladder. `--counts` (or a task solver) gives multi-solution coverage.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import kernels
from engine import arc_eval
from engine.checkpoint import CheckpointError, load_checkpoint
from engine.datasets import DatasetError, official
from engine.datasets.nqueens_build import read_nqueens
from engine.generate import generation_method, generation_report, grid_params
from engine.machine import describe
from engine.runtime import Engine, Limits, Request, Runner, SearchResult
from engine.search import SELECTORS, Rows, SearchParams, default_params, select
from engine.search.params import BACKTRACK, DIVERSITY, ORDERS, POLICIES, STRATEGIES
from engine.search.solutions import count_solutions
from engine.tasks import PuzzleError, Task, get_task
from engine.tasks.sudoku import symmetry_class


def read_lines(
    path: str | Path, offset: int = 0, limit: int | None = None, comment_prefix: str | None = "#"
) -> list[str]:
    """Non-empty, non-comment lines of a puzzle or solution file, newline stripped (spaces kept: they are maze cells).

    `offset` skips that many lines first (negative: counts from the end), then at most `limit` are returned."""
    with open(path) as f:
        lines = [
            line.rstrip("\r\n")
            for line in f
            if line.strip("\r\n") and not (comment_prefix and line.startswith(comment_prefix))
        ]
    lines = lines[offset:]
    return lines[:limit]


def read_table(path: str | Path, offset: int = 0, limit: int | None = None) -> tuple[list, list | None]:
    """Puzzles (and solutions, when every record has one) from JSON Lines or Parquet: records with a `puzzle` field
    (text or nested lists, as /solve takes it) and an optional `solution`."""
    path = Path(path)
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SystemExit("engine-eval: reading Parquet needs pyarrow: pip install -e '.[ray]'") from None
        records = pq.read_table(path).to_pylist()
    else:
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    records = records[offset:][:limit]
    for i, r in enumerate(records, 1):
        if "puzzle" not in r:
            raise SystemExit(f"engine-eval: {path}, record {i}: no `puzzle` field")
    solutions = [r.get("solution") for r in records]
    return [r["puzzle"] for r in records], None if None in solutions else solutions


def is_table(path: str | Path) -> bool:
    return Path(path).suffix in (".jsonl", ".parquet")


def write_results(
    path: str | Path, task: Task, puzzles: np.ndarray, results: list, ok: np.ndarray | None, extra: list | None = None
) -> None:
    """One record per puzzle, in puzzle order, as JSON Lines or (`.parquet`) Parquet; `extra`: more fields per
    record (ARC: the variant's puzzle id and identifier)."""
    records = [
        {
            "id": i,
            **(extra[i] if extra is not None else {}),
            "puzzle": task.to_text(p),
            "answer": task.to_text(r.answer),
            **({"correct": bool(ok[i])} if ok is not None else {}),
            "verified": r.verified,
            "confidence": r.selection.confidence,
            "selector": r.selection.selector,
            "rollouts": r.rollouts,
            "row_steps": r.row_steps,
            "waves": r.waves,
            "finish": r.finish,
        }
        for i, (p, r) in enumerate(zip(puzzles, results))
    ]
    if str(path).endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in records))


def encode_all(task: Task, lines: list, path: str, answers: bool = False) -> np.ndarray:
    encode = task.encode_answer if answers else task.encode
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            rows.append(encode(line))
        except PuzzleError as e:
            raise SystemExit(f"engine-eval: {path}, puzzle {i}: {e}") from None
    return np.stack(rows)


@torch.no_grad()
def predict(
    model,
    inputs: np.ndarray,
    batch_size: int,
    steps: int | None,
    device: str,
    progress: bool = True,
    puzzle_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic TRM (K=1, no noise) in plain batches: final-step answers [N, seq_len] and Q-halt logits [N],
    each row with its puzzle id (ARC's variants; default 0). The trainer's quick held-out check; serving-shaped
    evaluation goes through `search_all`."""
    answers, q_halt = [], []
    ids = np.zeros(len(inputs), np.int64) if puzzle_ids is None else puzzle_ids.astype(np.int64)
    for start in tqdm(range(0, len(inputs), batch_size), desc="eval", unit="batch", leave=False, disable=not progress):
        x = torch.as_tensor(inputs[start : start + batch_size].astype(np.int64), device=device)
        logits, q = model.rollout(x, torch.as_tensor(ids[start : start + batch_size], device=device), steps)
        answers.append(logits.argmax(-1).cpu().numpy())
        q_halt.append(q[:, 0].cpu().numpy())
    return np.concatenate(answers), np.concatenate(q_halt)


def grid_seeds(seed: int, ids) -> list[int]:
    """The seed of each request when every one draws its own (generation): request i gets row_seed(seed, i), whatever
    batch or Ray actor runs it."""
    return [kernels.row_seed(seed, int(i)) for i in ids]


def new_engine(runner: Runner, task: Task, n: int, params: SearchParams) -> Engine:
    """An engine that admits `n` requests of `params` at once (an evaluation submits them all)."""
    return Engine(runner, task, Limits(runner.max_batch, n, n * params.rollouts))


def search_all(
    engine: Engine,
    puzzles: np.ndarray,
    params: SearchParams,
    record_steps: tuple[int, ...] = (),
    progress=True,
    seeds: list[int] | None = None,
    puzzle_ids=None,
) -> list[SearchResult]:
    """Every puzzle as one request through the engine (continuous batching over all of them); `seeds`: one seed per
    request instead of params.seed (generation: each grid its own draw); `puzzle_ids`: each puzzle's row of the
    checkpoint's puzzle-embedding table (ARC's augmented variants; else 0).

    Requests go in as the batch has room for all their rows, oldest first: fair share would otherwise spread an
    oversubscribed batch over every request, one row each, and with an early exit which row verifies first, and so
    a puzzle's row-steps, would depend on the batch size and on how the puzzles are sharded (engine-eval --ray)."""
    per = [params] * len(puzzles) if seeds is None else [params.replace(seed=s) for s in seeds]
    ids = np.zeros(len(puzzles), np.int64) if puzzle_ids is None else puzzle_ids
    waiting = [Request(engine.task, x, p, int(i), record_steps=record_steps) for x, p, i in zip(puzzles, per, ids)]
    requests, room = list(waiting), engine.scheduler.limits.max_batch
    waiting.reverse()
    with tqdm(total=len(requests), desc="search", unit="puzzle", leave=False, disable=not progress) as bar:
        while waiting or engine.busy:
            while waiting and (not engine.busy or engine.scheduler.queued[1] + waiting[-1].rows <= room):
                engine.submit(waiting.pop())
            engine.step()
            bar.update(engine.stats.requests_finished - bar.n)
    return [r.future.result() for r in requests]


def correct(task: Task, puzzles: np.ndarray, answers: np.ndarray, solutions: np.ndarray | None) -> np.ndarray:
    """Per-answer correctness: exact match with the solution, or the rule verifier when there is none."""
    if solutions is not None:
        return (answers == solutions).all(axis=-1)
    return task.verify_batch(puzzles, answers)


def waves_curve(task: Task, puzzles: np.ndarray, results: list, solutions: np.ndarray | None, params) -> dict:
    """{w: {exact_accuracy, row_steps_per_puzzle}} had the search stopped after w waves. Wave w's rows do not depend
    on later waves, so one run gives the whole curve: a puzzle that needed more than w waves would have ended with
    the best-q row of its first w (the answer the q selector picks), after w x K x D row-steps."""
    K, D = params.rollouts, params.steps
    curve = {}
    for w in range(1, params.waves + 1):
        answers, cost = [], 0
        for r in results:
            if r.waves <= w:
                answers.append(r.answer)
                cost += r.row_steps
            else:
                answers.append(r.rows.answers[int(np.argmax(r.rows.q[: w * K]))])
                cost += w * K * D
        ok = correct(task, puzzles, np.stack(answers), solutions)
        curve[w] = {"exact_accuracy": float(ok.mean()), "row_steps_per_puzzle": round(cost / len(results), 1)}
    return curve


def score(
    task: Task,
    puzzles: np.ndarray,
    rows: list[Rows],
    solutions: np.ndarray | None,
    selector: str,
    likelihoods: list | None = None,
) -> dict:
    """Accuracy of the selected answers and, over the rows, pass@K, best-Q@K, mode@K and each usable selector."""
    n, K = len(puzzles), len(rows[0].q)
    if task.has_rule_verifier:
        for p, r in zip(puzzles, rows):
            if r.verified is None:
                r.verified = task.verify_batch(np.broadcast_to(p, r.answers.shape), r.answers)
    ok = [
        correct(task, np.broadcast_to(p, r.answers.shape), r.answers, s)
        for p, r, s in zip(puzzles, rows, _sol(solutions, n))
    ]
    selectors = [s for s in SELECTORS if _usable(s, rows[0], likelihoods)]
    picked = {
        s: [select(r, s, likelihoods[i] if likelihoods else None).index for i, r in enumerate(rows)] for s in selectors
    }
    acc = {s: float(np.mean([ok[i][j] for i, j in enumerate(picked[s])])) for s in selectors}
    chosen = np.stack([r.answers[j] for r, j in zip(rows, picked[selector])])
    result = {"n": n, "exact_accuracy": acc[selector]}
    if task.has_rule_verifier:
        result["verified"] = float(task.verify_batch(puzzles, chosen).mean())
    if solutions is not None:
        result["cell_accuracy"] = float((chosen == solutions).mean())
    if K > 1:
        result.update(
            pass_at_k=float(np.mean([o.any() for o in ok])),
            best_q_at_k=acc["q"],
            mode_at_k=acc["vote"],
            selector_accuracy=acc,
        )
    q = np.array([r.q[j] for r, j in zip(rows, picked[selector])], dtype=np.float64)
    result["q_halt_accuracy"] = float(((q >= 0) == np.array([o[j] for o, j in zip(ok, picked[selector])])).mean())
    result["mean_confidence"] = float((1 / (1 + np.exp(-q))).mean())
    return result


def coverage(task: Task, puzzles: np.ndarray, rows: list[Rows], counts: np.ndarray) -> dict:
    """GRAM Table 1 (the paper leaves the aggregation open, so both): validity (share of all rows that are valid
    answers: per-sample accuracy), coverage (distinct valid answers found over the number of solutions, per puzzle
    then averaged) and pooled coverage (all distinct valid answers found over all solutions)."""
    valid, found = [], []
    for p, r in zip(puzzles, rows):
        ok = r.verified if r.verified is not None else task.verify_batch(np.broadcast_to(p, r.answers.shape), r.answers)
        valid.append(ok.mean())
        found.append(len(np.unique(task.canonical(r.answers[ok]), axis=0)))  # a colouring class once
    found, counts = np.array(found), np.asarray(counts)
    return {
        "validity": float(np.mean(valid)),
        "coverage": float(np.mean(np.divide(found, counts, out=np.zeros(len(found)), where=counts > 0))),
        "coverage_pooled": float(found.sum() / max(counts.sum(), 1)),
        "mean_solutions": float(counts.mean()),
    }


def count_all(task: Task, puzzles: np.ndarray, limit: int = 100_000) -> np.ndarray:
    """Solution counts from the task's exact counter (Sudoku, N-Queens, graph colouring)."""
    counts = [count_solutions(task, p, limit) for p in puzzles]
    if None in counts:
        raise SystemExit(f"engine-eval: no solver counts solutions for {task.name}; pass --counts")
    return np.array(counts)


def ladder(top: int) -> list[int]:
    """1, 2, 4, ... up to `top` (included)."""
    values = [1 << i for i in range(top.bit_length()) if 1 << i < top]
    return values + [top]


def sweep(task: Task, puzzles, results: list[SearchResult], solutions, selector: str) -> dict:
    """Width: the first k rows of each request, k = 1, 2, 4, ..., K. Depth: all K rows at d = 1, 2, 4, ..., D."""
    K = len(results[0].rows.q)
    width = {k: score(task, puzzles, [_first(r.rows, k) for r in results], solutions, selector) for k in ladder(K)}
    depths = sorted(results[0].history)
    depth = {d: score(task, puzzles, [r.history[d] for r in results], solutions, selector) for d in depths}
    return {"width": width, "depth": depth}


def plot(sweeps: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, (axis, label) in zip(axes, (("width", "rollouts K"), ("depth", "supervision steps D"))):
        xs = list(sweeps[axis])
        for metric, name in (("pass_at_k", "pass@K"), ("best_q_at_k", "best-Q@K"), ("mode_at_k", "mode@K")):
            ys = [sweeps[axis][x].get(metric, sweeps[axis][x]["exact_accuracy"]) for x in xs]
            ax.plot(xs, [100 * y for y in ys], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


def _first(rows: Rows, k: int) -> Rows:
    cut = lambda a: None if a is None else a[:k]  # noqa: E731
    return Rows(rows.answers[:k], rows.q[:k], cut(rows.verified), cut(rows.value), cut(rows.log_prior))


def _sol(solutions: np.ndarray | None, n: int):
    return [None] * n if solutions is None else solutions


def _usable(selector: str, rows: Rows, likelihoods) -> bool:
    return {
        "verifier": rows.verified is not None,
        "lprm": rows.value is not None,
        "prior": rows.log_prior is not None,
        "likelihood": likelihoods is not None,
    }.get(selector, True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="engine-eval", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--puzzles", help="puzzle file, one per line")
    p.add_argument(
        "--dataset",
        help="ARC: an official dataset directory (engine-data arc, or the official builder); its test split's "
        "augmented variants are run and voted as the official evaluator does. N-Queens: an engine-data nqueens "
        "directory; its test inputs are run and scored against all their completions (accuracy and coverage). "
        "Sudoku, Maze: an official-layout directory (engine-data sudoku / maze, or the official builders); its test "
        "split's inputs, scored against its labels",
    )
    p.add_argument("--task", help="check that the checkpoint solves this task (e.g. arc)")
    p.add_argument("--submission", help="--dataset: write the Kaggle submission.json here")
    p.add_argument(
        "--generate",
        type=int,
        metavar="N",
        help="decode N grids from the empty board (commit on a solver, prior on a GRAM generator): validity, "
        "distinct share, diversity, row-steps per grid",
    )
    p.add_argument("--solutions", help="solutions file, one per puzzle line (else the rule verifier judges)")
    p.add_argument("--counts", help="file of solution counts per puzzle: report validity and coverage")
    p.add_argument("--coverage", action="store_true", help="report coverage, counting solutions with the solver")
    p.add_argument("--offset", type=int, default=0, help="skip the first N puzzles (negative: take the last -N)")
    p.add_argument("--limit", type=int, help="evaluate at most N puzzles")
    s = p.add_argument_group("search (defaults: K = 1 without noise, the rest from the checkpoint)")
    s.add_argument("--rollouts", "-K", type=int, help="rollouts K per puzzle")
    s.add_argument("--steps", "-D", type=int, help="supervision steps D")
    s.add_argument("--noise", type=float, help="PTRM noise sigma")
    s.add_argument("--noise-target", choices=["z", "y", "both"])
    s.add_argument("--selector", choices=SELECTORS)
    s.add_argument("--seed", type=int)
    s.add_argument("--early-exit", choices=["off", "verified", "confident"])
    s.add_argument("--strategy", choices=STRATEGIES, help="rollouts (PTRM) or commit (commit, branch, backtrack)")
    s.add_argument("--diversity", choices=DIVERSITY, help="what makes rows differ: noise, augment, both, none")
    s.add_argument("--waves", type=int, help="rollouts: rounds of K fresh rows, the next only when none verified")
    c = p.add_argument_group("commit search (--strategy commit)")
    c.add_argument("--max-nodes", type=int, help="nodes expanded per puzzle at most")
    c.add_argument("--max-row-steps", type=int, help="row-steps per puzzle at most")
    c.add_argument("--threshold", type=float, help="commit open cells whose masked probability reaches this")
    c.add_argument(
        "--agree", action="store_true", default=None, help="commit a certain cell only if the parent node agreed"
    )
    c.add_argument("--width", type=int, help="values tried per branch (default: every legal value)")
    c.add_argument("--order", choices=ORDERS, help="most certain cell by margin (top1 - top2) or by max probability")
    c.add_argument("--no-mask", dest="mask", action="store_false", default=None, help="no legal-value mask")
    c.add_argument("--backtrack", choices=BACKTRACK)
    c.add_argument("--policy", choices=POLICIES, help="uniform: the network replaced by legal values at random")
    c.add_argument("--temperature", type=float, default=1.0, help="--generate: sampling temperature of values")
    s.add_argument(
        "--likelihood",
        action="store_true",
        help="GRAM: also score the likelihood selector (a posterior pass per distinct answer: costs about K x D more)",
    )
    p.add_argument("--sweep", action="store_true", help="width (K) and depth (D) scaling from one run")
    p.add_argument("--plot", help="with --sweep: accuracy vs K and vs D as a PNG")
    p.add_argument("--batch-size", type=int, default=256, help="rows per engine step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", help="compute dtype: auto, bfloat16, float32")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is much faster on a machine other jobs load)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--out", help="write one record per puzzle to this file: JSON Lines, or Parquet (.parquet)")
    r = p.add_argument_group("Ray Data: an actor pool of engines on a Ray cluster (pip install -e '.[ray]')")
    r.add_argument("--ray", action="store_true", help="search on Ray actors instead of this process")
    r.add_argument("--ray-address", help="cluster to join (default: RAY_ADDRESS, else a local one started here)")
    r.add_argument("--concurrency", type=int, default=2, help="actors, each with its own engine")
    r.add_argument("--gpus-per-actor", type=float, default=0.0, help="fractional GPUs pack actors on one device")
    r.add_argument("--puzzles-per-batch", type=int, default=32, help="puzzles an actor takes at a time")
    args = p.parse_args(argv)
    if args.ray and (args.likelihood or args.selector == "likelihood"):
        raise SystemExit("engine-eval: --ray does not score the likelihood selector (it needs the driver's model)")
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        ckpt = load_checkpoint(args.checkpoint, args.device, args.dtype)
    except CheckpointError as e:
        raise SystemExit(f"engine-eval: {e}") from None
    task = get_task(ckpt.task)
    if args.task is not None and args.task != task.name:
        raise SystemExit(f"engine-eval: {args.checkpoint} solves {task.name}, not {args.task}")
    if args.generate:
        return _generate(ckpt, task, args)
    if not args.puzzles and not args.dataset:
        raise SystemExit("engine-eval: give --puzzles FILE, --dataset DIR (ARC) or --generate N")
    if args.out and not args.out.endswith((".jsonl", ".parquet")):
        raise SystemExit("engine-eval: --out takes a .jsonl or .parquet file")
    # Without search flags: deterministic TRM (K = 1, no noise), the number a CARD quotes; with K > 1 the noise
    # defaults to the checkpoint's (PTRM's per-task sigma).
    defaults = default_params(task.name, ckpt.arch, ckpt.config.halt_max_steps, ckpt.meta.get("search"))
    rollouts = args.rollouts or 1
    flags = dict(
        steps=args.steps,
        noise=args.noise if args.noise is not None else (defaults.noise if rollouts > 1 else 0.0),
        noise_target=args.noise_target,
        selector=args.selector,
        seed=args.seed,
        early_exit=args.early_exit or ("off" if rollouts == 1 else None),  # K = 1: the plain model, as CARDs quote
        strategy=args.strategy,
        diversity=args.diversity,
        waves=args.waves or (1 if rollouts == 1 else None),  # K = 1: the plain model, as CARDs quote
        max_nodes=args.max_nodes,
        max_row_steps=args.max_row_steps,
        threshold=args.threshold,
        agree=args.agree,
        width=args.width,
        order=args.order,
        mask=args.mask,
        backtrack=args.backtrack,
        policy=args.policy,
    )
    try:
        params = defaults.replace(rollouts=rollouts, **{k: v for k, v in flags.items() if v is not None})
    except ValueError as e:
        raise SystemExit(f"engine-eval: {e}") from None
    if params.waves > params.wave_limit:
        if args.waves:
            raise SystemExit("engine-eval: --waves needs an early exit (--early-exit verified or confident)")
        params = params.replace(waves=params.wave_limit)  # the checkpoint's default waves do not apply
    if args.dataset and task.name == "arc":
        result = arc_eval.evaluate(args, ckpt, task, params)
        return _report(args, {**result, **run_settings(args, ckpt, task, params)})
    picked_by_engine = params.early_exit != "off" or params.strategy == "commit"
    if args.sweep and picked_by_engine:
        raise SystemExit("engine-eval: --sweep needs rollouts with --early-exit off (every row must run all D steps)")
    read = lambda path: read_lines(path, args.offset, args.limit, task.comment_prefix)  # noqa: E731
    counts = dataset_solutions = None
    take = lambda a: a[args.offset :][: args.limit]  # noqa: E731
    if args.dataset and task.many_answers:  # its test inputs, with every completion counted for coverage
        split = read_nqueens(args.dataset, "test")
        puzzles, counts = take(split.inputs).astype(np.int64), np.array([len(c) for c in take(split.completions)])
        lines, table_solutions = [], None
    elif args.dataset:  # an official Sudoku / Maze build: the test split's examples, labels as the solutions
        try:
            split = official.read_split(args.dataset, "test")
        except DatasetError as e:
            raise SystemExit(f"engine-eval: {e}") from None
        if (split.seq_len, split.vocab_size) != (task.seq_len, task.vocab_size):
            raise SystemExit(
                f"engine-eval: {args.dataset} holds {split.seq_len} tokens of vocabulary {split.vocab_size}, "
                f"not {task.name}'s {task.seq_len} of {task.vocab_size}"
            )
        inputs, labels, _ = split.examples()
        puzzles, dataset_solutions = take(inputs).astype(np.int64), take(labels).astype(np.int64)
        lines, table_solutions = [], None
    elif is_table(args.puzzles):
        lines, table_solutions = read_table(args.puzzles, args.offset, args.limit)
    else:
        lines, table_solutions = read(args.puzzles), None
    if lines:
        puzzles = encode_all(task, lines, args.puzzles)
    solutions = dataset_solutions
    if args.solutions or table_solutions is not None:
        path = args.solutions or args.puzzles
        solutions = encode_all(task, read(path) if args.solutions else table_solutions, path, answers=True)
        if len(solutions) != len(puzzles):
            raise SystemExit(f"engine-eval: {len(puzzles)} puzzles but {len(solutions)} solutions")

    # The engine selects by q here; `score` then applies every selector to the same rows (likelihood only once).
    engine_params = params if picked_by_engine else params.replace(selector="q")
    depths = tuple(ladder(params.steps)) if args.sweep else ()
    results, runner, wall = run(args, ckpt, task, puzzles, engine_params, depths)
    likelihoods = None
    if ckpt.arch == "gram" and (args.likelihood or params.selector == "likelihood"):
        likelihoods = [lambda c, p=p: runner.likelihood(p, 0, c, params.seed, params.steps) for p in puzzles]
    rows = [r.rows for r in results]
    if not picked_by_engine:
        result = score(task, puzzles, rows, solutions, params.selector, likelihoods)
    else:  # answers chosen by the engine (early exit, commit search); their rows differ in number
        chosen = chosen_answers(results)
        result = {"n": len(puzzles), "exact_accuracy": float(correct(task, puzzles, chosen, solutions).mean())}
        if task.has_rule_verifier:
            result["verified"] = float(task.verify_batch(puzzles, chosen).mean())
    row_steps = sum(r.row_steps for r in results)
    result.update(row_steps=row_steps, row_steps_per_puzzle=round(row_steps / len(puzzles), 1))
    if params.strategy == "rollouts" and params.waves > 1:  # fewer waves, read off this run (their rows are the same)
        result["by_waves"] = waves_curve(task, puzzles, results, solutions, params)
    if params.strategy == "commit":
        result.update(
            nodes=round(float(np.mean([r.nodes for r in results])), 2),
            backtracks=round(float(np.mean([r.backtracks for r in results])), 2),
            finish={f: sum(r.finish == f for r in results) for f in sorted({r.finish for r in results})},
        )
    else:
        result.update(
            row_steps_saved=round(1 - row_steps / (len(puzzles) * params.rollouts * params.steps * params.waves), 4),
            early_exits=sum(r.finish == "early_exit" for r in results),
        )
    if args.counts or args.coverage or counts is not None:
        if counts is None:
            counts = np.array(read(args.counts), dtype=np.int64) if args.counts else count_all(task, puzzles)
        result.update(coverage(task, puzzles, rows, counts))
    result.update(puzzles=str(args.dataset or args.puzzles), offset=args.offset)
    result.update(run_settings(args, ckpt, task, params))
    result.update(
        runner=_mode(args, runner),
        wall_seconds=round(wall, 3),
        puzzles_per_second=round(len(puzzles) / wall, 2),
        row_steps_per_second=round(row_steps / wall, 1),
        machine=describe(args.device),
    )
    _print(result)
    if args.out:
        write_results(args.out, task, puzzles, results, correct(task, puzzles, chosen_answers(results), solutions))
    if args.sweep:
        result["sweep"] = sweep(task, puzzles, results, solutions, params.selector)
        _print_sweep(result["sweep"])
        if args.plot:
            plot(result["sweep"], args.plot, f"{Path(args.checkpoint).name} on {Path(args.puzzles).name}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def run_settings(args: argparse.Namespace, ckpt, task: Task, params: SearchParams) -> dict:
    """What every summary says about the run: checkpoint, task and search settings, device and dtype."""
    return dict(
        checkpoint=str(args.checkpoint),
        task=task.name,
        rollouts=params.rollouts,
        steps=params.steps,
        noise=params.noise,
        noise_target=params.noise_target,
        selector=params.selector,
        seed=params.seed,
        early_exit=params.early_exit,
        strategy=params.strategy,
        diversity=params.diversity,
        waves=params.waves,
        **(
            dict(
                max_nodes=params.max_nodes,
                max_row_steps=params.max_row_steps,
                threshold=params.threshold,
                agree=params.agree,
                width=params.width,
                order=params.order,
                mask=params.mask,
                backtrack=params.backtrack,
                policy=params.policy,
            )
            if params.strategy == "commit"
            else {}
        ),
        device=args.device,
        dtype=ckpt.config.forward_dtype,
    )


def _report(args: argparse.Namespace, result: dict) -> None:
    result["machine"] = describe(args.device)
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def _generate(ckpt, task: Task, args: argparse.Namespace) -> None:
    """`--generate N`: N grids decoded from the empty board through the engine, as /generate does: `commit` decoding
    on a fill-in solver, or one prior sample of a GRAM generator (`prior`). With --no-mask --backtrack off the
    validity is the raw one: what the model knows, no rule help and no second tries."""
    method = generation_method(ckpt)
    if method is None:
        raise SystemExit(f"engine-eval: --generate needs a fill-in solver or a GRAM generator; {task.name} is neither")
    defaults = default_params(task.name, ckpt.arch, ckpt.config.halt_max_steps, ckpt.meta.get("search"))
    params = grid_params(method, ckpt, defaults, args.temperature)
    flags = dict(steps=args.steps, rollouts=args.rollouts, max_nodes=args.max_nodes, threshold=args.threshold)
    if method == "commit":
        flags.update(
            mask=args.mask, backtrack=args.backtrack, order=args.order, diversity=args.diversity, agree=args.agree
        )
    params = params.replace(**{k: v for k, v in flags.items() if v is not None})
    seed = args.seed or 0
    empty = np.full((args.generate, task.seq_len), task.blank, np.int64)
    results, runner, wall = run(args, ckpt, task, empty, params, seed_grids=seed)
    samples = chosen_answers(results)
    result = {"method": method, **generation_report(task, samples)}
    valid = samples[task.verify_batch(empty, samples)]
    result.update(diversity_report(valid) if task.name == "sudoku" and len(valid) > 1 else {})
    result.update(
        row_steps_per_grid=round(sum(r.row_steps for r in results) / len(results), 1),
        nodes_per_grid=round(float(np.mean([r.nodes for r in results])), 1),
        checkpoint=str(args.checkpoint),
        seed=seed,
        rollouts=params.rollouts,
        steps=params.steps,
        **(
            dict(mask=params.mask, backtrack=params.backtrack, temperature=params.temperature, agree=params.agree)
            if method == "commit"
            else {}
        ),
        device=args.device,
        runner=_mode(args, runner),
        wall_seconds=round(wall, 3),
        samples_per_second=round(args.generate / wall, 2),
        machine=describe(args.device),
    )
    _print(result)
    if args.out:
        write_results(args.out, task, empty, results, None)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def run(
    args: argparse.Namespace,
    ckpt,
    task: Task,
    puzzles: np.ndarray,
    params: SearchParams,
    record_steps: tuple[int, ...] = (),
    seed_grids: int | None = None,
    puzzle_ids: np.ndarray | None = None,
) -> tuple[list[SearchResult], Runner | None, float]:
    """Every puzzle through an engine: this process's (and its runner), or with --ray an actor pool of them (no
    runner here); and the seconds it took (a Ray cluster's start left out). `seed_grids`: request i gets seed
    row_seed(seed_grids, i) (generation: each grid its own draw); `puzzle_ids`: see `search_all`."""
    if args.ray:
        from engine.ray_eval import connect, search_ray

        connect(args.ray_address)
        options = dict(concurrency=args.concurrency, gpus_per_actor=args.gpus_per_actor, address=args.ray_address)
        options.update(puzzles_per_batch=args.puzzles_per_batch, batch_size=args.batch_size, device=args.device)
        options.update(dtype=args.dtype, threads=args.threads or 1, record_steps=record_steps, seed_grids=seed_grids)
        options.update(puzzle_ids=puzzle_ids)
        start = time.perf_counter()
        return search_ray(args.checkpoint, puzzles, params, **options), None, time.perf_counter() - start
    start = time.perf_counter()
    runner = Runner(ckpt.model, max_batch=args.batch_size)
    seeds = None if seed_grids is None else grid_seeds(seed_grids, range(len(puzzles)))
    engine = new_engine(runner, task, len(puzzles), params)
    results = search_all(engine, puzzles, params, record_steps, seeds=seeds, puzzle_ids=puzzle_ids)
    return results, runner, time.perf_counter() - start


def chosen_answers(results: list[SearchResult]) -> np.ndarray:
    return np.stack([r.answer for r in results])


def _mode(args: argparse.Namespace, runner: Runner | None) -> str:
    return f"ray ({args.concurrency} actors)" if runner is None else runner.mode


def diversity_report(grids: np.ndarray) -> dict:
    """How varied valid Sudoku grids are: the largest deviation of a cell's digit frequency from 1/9, the most cells
    any two grids share, and the share of grids in distinct symmetry classes (a lower bound on the essentially
    different ones: a decoder whose grids are symmetric images of a few passes the first two, not this)."""
    digits = np.asarray(grids) - 2
    freq = np.stack([(digits == d).mean(0) for d in range(9)])  # [9, 81]
    onehot = np.eye(9, dtype=np.int32)[digits].reshape(len(grids), -1)
    shared = onehot @ onehot.T
    np.fill_diagonal(shared, 0)
    return {
        "digit_frequency_max_deviation": float(np.abs(freq - 1 / 9).max()),
        "max_shared_cells": int(shared.max()),
        "distinct_up_to_symmetry": len({symmetry_class(g) for g in grids}) / len(grids),
    }


def _print(result: dict) -> None:
    width = max(map(len, result))
    for key, value in result.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")


def _print_sweep(sweeps: dict) -> None:
    for axis, label in (("width", "K"), ("depth", "D")):
        print(f"\n{label:>5}  {'pass@K':>8}  {'best-Q@K':>8}  {'mode@K':>8}  {'selected':>8}")
        for x, r in sweeps[axis].items():
            cols = [r.get(m, r["exact_accuracy"]) for m in ("pass_at_k", "best_q_at_k", "mode_at_k", "exact_accuracy")]
            print(f"{x:>5}  " + "  ".join(f"{100 * c:8.2f}" for c in cols))


if __name__ == "__main__":
    main()
