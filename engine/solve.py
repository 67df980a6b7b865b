"""`engine-solve`: load a checkpoint and solve one puzzle with deterministic TRM (all supervision steps)."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from engine.checkpoint import CheckpointError, load_checkpoint
from engine.tasks import PuzzleError, get_task


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="engine-solve", description=__doc__)
    p.add_argument(
        "puzzle", nargs="?", help="the puzzle as text (Sudoku: 81 chars, '.' or '0' for blanks); '-' reads stdin"
    )
    p.add_argument("--file", help="read the puzzle from this file instead")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--steps", type=int, help="supervision steps (default: the checkpoint's N_sup)")
    p.add_argument("--puzzle-id", type=int, default=0, help="puzzle identifier (ARC); 0 for other tasks")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", help="compute dtype: auto, bfloat16, float32")
    args = p.parse_args(argv)
    if args.file:
        text = open(args.file).read()
    elif args.puzzle in (None, "-"):
        text = sys.stdin.read()
    else:
        text = args.puzzle
    try:
        ckpt = load_checkpoint(args.checkpoint, args.device, args.dtype)
        task = get_task(ckpt.task)
        tokens = task.encode(text.rstrip("\n"))
    except (CheckpointError, PuzzleError) as e:
        raise SystemExit(f"engine-solve: {e}") from None

    inputs = torch.as_tensor(tokens, device=args.device).unsqueeze(0)
    puzzle_ids = torch.tensor([args.puzzle_id], device=args.device)
    start = time.perf_counter()
    logits, q = ckpt.model.rollout(inputs, puzzle_ids, args.steps)
    elapsed = time.perf_counter() - start
    answer = logits.argmax(-1)[0].cpu().numpy()

    print(task.render(answer))
    fault = task.check(tokens, answer)
    if task.has_rule_verifier:
        print(f"verified: {'yes' if fault is None else 'no, ' + fault}")
    print(f"confidence: {torch.sigmoid(q[0, 0]).item():.3f} (Q halt logit {q[0, 0].item():+.2f})")
    print(
        f"steps: {args.steps or ckpt.config.halt_max_steps}, "
        f"{elapsed * 1000:.0f} ms on {args.device} ({ckpt.config.forward_dtype})"
    )
