"""`engine-eval`: accuracy of a checkpoint on a puzzle file, deterministic TRM (K=1), batched.

Puzzle files hold one puzzle per line (lines starting with '#' are comments); an optional solutions file holds one
answer per puzzle line, in the same order. Without solutions, only the rule verifier scores the answers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.checkpoint import CheckpointError, load_checkpoint
from engine.machine import describe
from engine.tasks import PuzzleError, Task, get_task


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


def encode_all(task: Task, lines: list[str], path: str, answers: bool = False) -> np.ndarray:
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
    model, inputs: np.ndarray, batch_size: int, steps: int | None, device: str, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Final-step argmax answers [N, seq_len] and Q-halt logits [N]."""
    answers, q_halt = [], []
    for start in tqdm(range(0, len(inputs), batch_size), desc="eval", unit="batch", leave=False, disable=not progress):
        x = torch.as_tensor(inputs[start : start + batch_size], device=device)
        logits, q = model.rollout(x, torch.zeros(len(x), dtype=torch.long, device=device), steps)
        answers.append(logits.argmax(-1).cpu().numpy())
        q_halt.append(q[:, 0].cpu().numpy())
    return np.concatenate(answers), np.concatenate(q_halt)


def evaluate(
    task: Task, puzzles: np.ndarray, answers: np.ndarray, q_halt: np.ndarray, solutions: np.ndarray | None
) -> dict:
    n = len(puzzles)
    result = {"n": n, "verified": float(task.verify_batch(puzzles, answers).mean()) if task.has_rule_verifier else None}
    if solutions is not None:
        exact = (answers == solutions).all(axis=1)
        result.update(
            exact_accuracy=float(exact.mean()),
            cell_accuracy=float((answers == solutions).mean()),
            q_halt_accuracy=float(((q_halt >= 0) == exact).mean()),
        )
    result["mean_confidence"] = float(torch.sigmoid(torch.from_numpy(q_halt)).mean())
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="engine-eval", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--puzzles", required=True, help="puzzle file, one per line")
    p.add_argument("--solutions", help="solutions file, one per puzzle line")
    p.add_argument("--offset", type=int, default=0, help="skip the first N puzzles (negative: take the last -N)")
    p.add_argument("--limit", type=int, help="evaluate at most N puzzles")
    p.add_argument("--steps", type=int, help="supervision steps D (default: the checkpoint's N_sup)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", help="compute dtype: auto, bfloat16, float32")
    p.add_argument("--json", help="write the results to this JSON file")
    args = p.parse_args(argv)

    try:
        ckpt = load_checkpoint(args.checkpoint, args.device, args.dtype)
    except CheckpointError as e:
        raise SystemExit(f"engine-eval: {e}") from None
    task = get_task(ckpt.task)
    puzzles = encode_all(task, read_lines(args.puzzles, args.offset, args.limit, task.comment_prefix), args.puzzles)
    solutions = None
    if args.solutions:
        solutions = encode_all(
            task, read_lines(args.solutions, args.offset, args.limit, task.comment_prefix), args.solutions, answers=True
        )
        if len(solutions) != len(puzzles):
            raise SystemExit(f"engine-eval: {len(puzzles)} puzzles but {len(solutions)} solutions")

    start = time.perf_counter()
    answers, q_halt = predict(ckpt.model, puzzles, args.batch_size, args.steps, args.device)
    wall = time.perf_counter() - start
    result = evaluate(task, puzzles, answers, q_halt, solutions)
    result.update(
        checkpoint=str(args.checkpoint),
        puzzles=str(args.puzzles),
        offset=args.offset,
        task=task.name,
        rollouts=1,
        steps=args.steps or ckpt.config.halt_max_steps,
        device=args.device,
        dtype=ckpt.config.forward_dtype,
        wall_seconds=round(wall, 3),
        puzzles_per_second=round(len(puzzles) / wall, 2),
        machine=describe(args.device),
    )
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
