"""Generation: the search parameters that decode one grid from the empty board on the engine (`grid_params`), and
unconditional GRAM prior samples in plain batches (PTRM_GRAM.md §4.10), which the trainer's evaluation uses.

Each sample is one prior trajectory of N_sup supervision steps from the fixed z_0, decoded by argmax; diversity comes
only from the noise. Noise is counter-based per sample (`kernels.row_seed(seed, i)`), so sample i of a seed is the
same whatever the batch size or device batching.
"""

from __future__ import annotations

import numpy as np
import torch

import kernels
from engine.models.gram import GRAM, counter_noise
from engine.search import SearchParams
from engine.tasks import Task, get_task
from engine.tasks.base import PAD
from engine.tasks.sudoku_solver import FULL

GRID_NODES = 256  # a grid may need a node per cell, plus backtracking
GRID_STEPS = 2  # supervision steps per node, unless the checkpoint's config.json says ("generate": {"steps": D})


def decode_steps(ckpt) -> int:
    """Supervision steps per node when this checkpoint decodes grids: its own measured setting, else GRID_STEPS
    (`sudoku-trm` v2 decodes best at 6: benchmarks/RESULTS.md, "the v2 solver decodes grids")."""
    return int(ckpt.meta.get("generate", {}).get("steps", GRID_STEPS))


def generation_method(ckpt) -> str | None:
    """How grids are decoded with a checkpoint: GRAM prior samples (an unconditional GRAM), commit decoding (a
    fill-in task), or None."""
    if ckpt.arch == "gram" and getattr(ckpt.config, "unconditional", False):
        return "prior"
    return "commit" if get_task(ckpt.task).blank is not None else None


def grid_params(method: str, ckpt, defaults: SearchParams, temperature: float) -> SearchParams:
    """Search parameters that decode one grid from the empty board with `ckpt`. `commit`: one row, one sampled cell
    per node (threshold 1: only what the model is certain of, or the mask forces, is committed beside it) at the
    checkpoint's `decode_steps`, the legal mask and backtracking on; a row whose answer is already a valid grid ends
    it."""
    if method == "prior":
        return defaults.replace(rollouts=1, strategy="rollouts", diversity="none", selector="q", early_exit="off")
    return defaults.replace(
        rollouts=1,
        steps=decode_steps(ckpt),
        threshold=1.0,
        strategy="commit",
        diversity="augment",
        temperature=temperature,
        mask=True,
        backtrack="dfs",
        max_nodes=max(defaults.max_nodes, GRID_NODES),
    )


@torch.no_grad()
def sample_grids(
    model: GRAM,
    n: int,
    seed: int,
    steps: int | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    blank: int = 1,
    temperature: float = 1.0,
) -> np.ndarray:
    """`n` raw samples [n, seq_len] int64 tokens: argmax decodes of prior trajectories from the blank input.

    `temperature` scales the standard-normal draws (eps = mean + temperature * scale * n); 1 samples the prior."""
    if not isinstance(model, GRAM):
        raise TypeError(f"sampling needs a GRAM model, got {type(model).__name__}")
    device = device or next(model.parameters()).device
    L = model.config.seq_len
    out = np.empty((n, L), np.int64)
    for start in range(0, n, batch_size):
        rows = range(start, min(n, start + batch_size))
        seeds = torch.tensor([kernels.row_seed(seed, r) for r in rows], dtype=torch.int64, device=device)
        inputs = torch.full((len(rows), L), blank, dtype=torch.long, device=device)
        ids = torch.zeros(len(rows), dtype=torch.long, device=device)
        plan = counter_noise(seeds)
        if temperature != 1.0:
            plan = lambda n, plan=plan: lambda t, shape, f=plan(n): temperature * f(t, shape)  # noqa: E731
        logits, _ = model.rollout(inputs, ids, steps, plan)
        out[start : start + len(rows)] = logits.argmax(-1).cpu().numpy()
    return out


def generation_report(task: Task, samples: np.ndarray, blank: int = 1) -> dict:
    """{"n": samples, "validity": share that are valid complete grids, "distinct": share of distinct grids among
    the valid ones (0 when none is valid)}; Sudoku adds "units": the share of rows, columns and boxes holding 1-9
    exactly once, a finer progress measure while validity is still 0."""
    samples = np.asarray(samples)
    empty = np.full_like(samples, blank)
    valid = task.verify_batch(empty, samples) & (samples != PAD).all(-1)
    good = samples[valid]
    distinct = len(np.unique(good, axis=0)) / len(good) if len(good) else 0.0
    report = {"n": len(samples), "validity": float(valid.mean()) if len(samples) else 0.0, "distinct": float(distinct)}
    if task.name == "sudoku" and len(samples):
        report["units"] = sudoku_unit_share(samples)
    return report


def sudoku_unit_share(samples: np.ndarray) -> float:
    """Mean share of the 27 units (rows, columns, boxes) of each grid that hold every digit exactly once."""
    a = np.asarray(samples, np.int64).reshape(-1, 9, 9)
    bits = np.where((a >= 2) & (a <= 10), np.left_shift(1, np.clip(a - 2, 0, 8)), 0)
    boxes = bits.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
    full = [np.bitwise_or.reduce(g, axis=2) == FULL for g in (bits, bits.transpose(0, 2, 1), boxes)]
    # OR == FULL over 9 cells means all nine digits appear, hence each exactly once
    return float(np.concatenate(full, axis=1).mean())
