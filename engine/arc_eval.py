"""`engine-eval --task arc --dataset DIR`: an official ARC dataset's test split through the engine, then the vote.

Every row of the test split (one test input of one augmented variant, with its own puzzle id) is one engine request,
as the official evaluation runs one row per example. With K > 1 every row of the request votes (PTRM noise or
symmetries give the variant more samples); K = 1 without noise is the official run. The vote, pass@K and the Kaggle
`submission.json` follow the official evaluator exactly (engine/tasks/arc_vote.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from engine.checkpoint import Checkpoint
from engine.datasets.official import identifiers as read_identifiers
from engine.datasets.official import read_split, test_puzzles
from engine.search import SearchParams
from engine.tasks import Task
from engine.tasks.arc_augment import parse
from engine.tasks.arc_vote import PASS_KS, vote_rows


def test_rows(dataset: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The test split's rows: int64 tokens [n, 900] and each row's puzzle id [n] (its variant's identifier)."""
    inputs, _, ids = read_split(dataset, "test").examples()
    return inputs.astype(np.int64), ids


def evaluate(args: argparse.Namespace, ckpt: Checkpoint, task: Task, params: SearchParams) -> dict:
    """Run, vote, write `submission.json` (args.submission) and return the summary."""
    from engine.eval import _mode, run, write_results  # engine.eval imports this module for its --dataset flag

    if task.name != "arc":
        raise SystemExit(f"engine-eval: --dataset votes ARC variants; {args.checkpoint} is a {task.name} checkpoint")
    names = read_identifiers(args.dataset)
    recorded = ckpt.identifiers
    if recorded is not None and recorded != names:
        raise SystemExit(
            f"engine-eval: {args.dataset}/identifiers.json differs from the identifiers the checkpoint was converted "
            "with: its puzzle ids would name other variants (build the dataset with the checkpoint's options and seed)"
        )
    table = ckpt.config.num_puzzle_identifiers
    if len(names) > table:
        raise SystemExit(f"engine-eval: the dataset names {len(names)} puzzle ids; the checkpoint's table has {table}")
    inputs, ids = test_rows(args.dataset)
    if args.limit is not None:  # the first tasks' rows (a quick look; pass@K then covers only those tasks)
        inputs, ids = inputs[: args.limit], ids[: args.limit]
    results, runner, wall = run(args, ckpt, task, inputs, params, puzzle_ids=ids)
    tasks, augs = zip(*(parse(names[i]) for i in ids))
    vote = vote_rows(list(tasks), list(augs), inputs, results)
    puzzles = test_puzzles(args.dataset)
    if args.limit is not None:
        seen = set(tasks)
        puzzles = {k: v for k, v in puzzles.items() if k in seen}
    metrics, submission = vote.score(puzzles, PASS_KS)
    if args.submission:
        Path(args.submission).write_text(json.dumps(submission))
    if args.out:  # one record per variant row: its answer (in the variant's frame), identifier and q halt logit
        extra = [
            {"puzzle_id": int(i), "identifier": names[i], "q": float(r.rows.q[r.selection.index])}
            for i, r in zip(ids, results)
        ]
        write_results(args.out, task, inputs, results, None, extra)
    row_steps = sum(r.row_steps for r in results)
    return {
        "n": len(puzzles),
        "test_inputs": sum(len(p["test"]) for p in puzzles.values()),
        "variants": len(inputs),
        "exact_accuracy": metrics["ARC/pass@1"],  # the first attempt, as the selected answer of other tasks
        **metrics,
        "row_steps": row_steps,
        "row_steps_per_puzzle": round(row_steps / len(puzzles), 1),
        "dataset": str(args.dataset),
        "submission": args.submission,
        "wall_seconds": round(wall, 3),
        "runner": _mode(args, runner),
    }
