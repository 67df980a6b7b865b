"""`engine-eval --ray`: the same evaluation on a Ray Data actor pool of engines (issue 24; SERVING.md §10.5).

Each actor loads the checkpoint once and runs its batches of puzzles through its own engine, exactly as the local run
does (`search_all`), so a puzzle's answer depends only on the puzzle and its seed: every request uses the search's
seed, and `--generate` seeds grid i with `row_seed(seed, i)`, whatever actor or batch it lands in. The driver gets
the SearchResults back, puts them in puzzle order and computes the same summary as a local run.

Ray Data retries the batch of an actor that dies (a restarted actor takes it), so a killed actor costs time, not
puzzles; the driver still checks that every id came back exactly once.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from engine.checkpoint import load_checkpoint
from engine.eval import grid_seeds, new_engine, search_all
from engine.ray_extra import require_ray
from engine.runtime import Runner, SearchResult
from engine.search import SearchParams
from engine.tasks import get_task


class Searcher:
    """One actor: a checkpoint on its own engine; called with batches of {id, puzzle} rows."""

    def __init__(
        self,
        checkpoint: str,
        params: SearchParams,
        device: str,
        dtype: str,
        batch_size: int,
        threads: int,
        record_steps: tuple[int, ...] = (),
        seed_grids: int | None = None,
    ):
        torch.set_num_threads(threads)
        self.ckpt = load_checkpoint(checkpoint, device, dtype)
        self.task = get_task(self.ckpt.task)
        self.runner = Runner(self.ckpt.model, max_batch=batch_size)
        self.params, self.record_steps, self.seed_grids = params, record_steps, seed_grids

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, puzzles = batch["id"], np.stack(batch["puzzle"])
        engine = new_engine(self.runner, self.task, len(puzzles), self.params)
        seeds = None if self.seed_grids is None else grid_seeds(self.seed_grids, ids)
        results = search_all(
            engine, puzzles, self.params, self.record_steps, False, seeds, puzzle_ids=batch["puzzle_id"]
        )
        out = np.empty(len(results), dtype=object)
        out[:] = results
        return {"id": ids, "result": out}


def connect(address: str | None = None):
    """The ray module, joined to a running cluster (`address`, else RAY_ADDRESS) or to a local one started here."""
    ray = require_ray()
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=address, log_to_driver=False)
    return ray


def search_ray(
    checkpoint: str,
    puzzles: np.ndarray,
    params: SearchParams,
    *,
    record_steps: tuple[int, ...] = (),
    seed_grids: int | None = None,
    puzzle_ids: np.ndarray | None = None,
    address: str | None = None,
    concurrency: int = 2,
    gpus_per_actor: float = 0.0,
    puzzles_per_batch: int = 32,
    batch_size: int = 256,
    device: str = "cpu",
    dtype: str = "auto",
    threads: int = 1,
) -> list[SearchResult]:
    """Every puzzle as one request on an actor pool of `concurrency` engines; results in puzzle order.
    `puzzle_ids`: each puzzle's row of the puzzle-embedding table (ARC's variants; else 0)."""
    ray = connect(address)
    ids = np.zeros(len(puzzles), np.int64) if puzzle_ids is None else puzzle_ids
    items = [{"id": i, "puzzle": p, "puzzle_id": int(pid)} for i, (p, pid) in enumerate(zip(puzzles, ids))]
    data = ray.data.from_items(items, override_num_blocks=-(-len(items) // puzzles_per_batch))  # a block a batch
    searched = data.map_batches(
        Searcher,
        fn_constructor_kwargs=dict(
            checkpoint=str(checkpoint),
            params=params,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            threads=threads,
            record_steps=record_steps,
            seed_grids=seed_grids,
        ),
        batch_size=puzzles_per_batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_gpus=gpus_per_actor,
    )
    by_id: dict[int, SearchResult] = {}
    for row in searched.iter_rows():
        by_id.setdefault(int(row["id"]), row["result"])  # a retried batch may only repeat, never change, a result
    missing = sorted(set(range(len(puzzles))) - set(by_id))
    if missing:
        raise RuntimeError(f"Ray Data returned no result for {len(missing)} puzzles (first: {missing[:5]})")
    return [by_id[i] for i in range(len(puzzles))]
