"""/generate's work, run in a worker thread: sample grids from a GRAM generator, keep the valid ones, and blank cells
into puzzles whose unique solution the exact solver proves.

Sampling goes in rounds of at most `batch` grids; between rounds the deadline and the cancel flag are checked, and
the next round is sized by the validity seen so far and by the time the deadline leaves at the pace so far. Round r
draws `sample_grids(model, n, seed_r)` with seed_r = row_seed(seed, r), so the same request (seed, count, kind,
clues, budget) gives the same items, unless its deadline cut a round short.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import kernels
from engine.generate import sample_grids
from engine.tasks import Task
from engine.tasks.base import PAD
from engine.tasks.sudoku import BLANK
from engine.train.data import carve

PUZZLE_TRIES = 8  # removal orders tried per grid before moving on to the next grid


@dataclass
class Outcome:
    items: list[dict] = field(default_factory=list)
    sampled: int = 0
    valid: int = 0
    distinct: float = 0.0


Sampler = Callable[[int, int], np.ndarray]  # (n, seed) -> [n, seq_len] tokens


def model_sampler(model, batch: int) -> Sampler:
    return lambda n, seed: sample_grids(model, n, seed, batch_size=batch)


def generate(
    task: Task,
    sample: Sampler,
    count: int,
    kind: str,
    clues: int,
    seed: int,
    max_samples: int,
    batch: int,
    deadline: float,
    cancel: threading.Event,
) -> Outcome:
    out = Outcome()
    seen: set[bytes] = set()
    valid_grids: list[np.ndarray] = []
    rng = np.random.default_rng([seed, clues])
    start = time.monotonic()
    for r in range(max_samples):
        now = time.monotonic()
        if len(out.items) >= count or out.sampled >= max_samples or cancel.is_set() or now > deadline:
            break
        need = count - len(out.items)
        rate = out.valid / out.sampled if out.sampled else 1.0
        n = min(batch, max_samples - out.sampled, max(need, int(np.ceil(need / max(rate, 0.05)))))
        if out.sampled:  # a round cannot be interrupted: size it to what the deadline leaves, at the pace so far
            per_sample = (now - start) / out.sampled
            n = min(n, int((deadline - now) / per_sample))
            if n < 1:
                break
        grids = np.asarray(sample(n, kernels.row_seed(seed, r)), dtype=np.int64)
        ok = task.verify_batch(np.full_like(grids, BLANK), grids) & (grids != PAD).all(-1)
        out.sampled += len(grids)
        out.valid += int(ok.sum())
        for grid in grids[ok]:
            valid_grids.append(grid)
            key = grid.tobytes()
            if key in seen or len(out.items) >= count or cancel.is_set():
                continue
            item = _item(task, grid, kind, clues, rng)
            if item is not None:
                seen.add(key)
                out.items.append(item)
    if valid_grids:
        out.distinct = len({g.tobytes() for g in valid_grids}) / len(valid_grids)
    return out


def _item(task: Task, grid: np.ndarray, kind: str, clues: int, rng: np.random.Generator) -> dict | None:
    item = {"grid": task.decode(grid), "text": task.to_text(grid), "valid": True}
    if kind == "grid":
        return item
    puzzle = make_puzzle(grid, clues, rng)
    if puzzle is None:
        return None
    item.update(
        puzzle=task.to_text(puzzle),
        puzzle_grid=task.decode(puzzle),
        clues=int((puzzle != BLANK).sum()),
        unique=True,
    )
    return item


def make_puzzle(grid: np.ndarray, clues: int, rng: np.random.Generator, tries: int = PUZZLE_TRIES) -> np.ndarray | None:
    """A puzzle with exactly `clues` givens and a unique solution (proven by the exact solver, `carve`), trying up to
    `tries` removal orders; None when none gets there."""
    for _ in range(tries):
        puzzle, given = carve(grid, clues, rng)
        if given == clues:
            return puzzle
    return None
