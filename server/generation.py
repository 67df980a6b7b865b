"""/generate's work: complete grids decoded through the engine, like /solve, and puzzles carved from them.

Two methods, both requests on an engine (batched with other traffic, with its deadlines, cancellation and 429s):
- `commit`: a commit search from the empty grid on a fill-in solver (SEARCH.md §3): each node commits the most certain
  open cells, the branch cell's value sampled at a temperature, under the legal-value mask with backtracking, until a
  row's answer or the filled grid is a valid grid.
- `prior`: one prior sample of an unconditional GRAM generator from the blank board (PTRM_GRAM.md §4.10): a rollout
  of K = 1 row.

Grid i of a request draws with seed row_seed(seed, i), so the same seed gives the same items (a request without one
gets a fresh seed: server/app.py); grids are drawn in rounds until `count` valid distinct ones are found, the sample
budget is spent or the deadline passes. Puzzles are carved from the grids by the task layer (engine/tasks/carve.py).

Every puzzle is graded by the solver it would meet (`grade`): whether one plain row (K = 1) solves it, and the
row-steps the default search needs. `difficulty: "hard"` keeps only puzzles one row fails and the search solves,
carving up to HARD_TRIES minimal puzzles per grid (fewer givens, more of them hard) and running the full search only
on those one row failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

import kernels
from engine.runtime import DeadlineExceeded, Overloaded, SearchResult
from engine.search import SearchParams
from engine.tasks import Task
from engine.tasks.carve import carve, is_minimal, minimal_puzzle

# Removal orders tried per grid before moving on to the next one: a carving pass takes about 0.7 ms and decoding a grid
# hundreds, so low clue counts are worth many (engine/tasks/carve.py: 256 find 22 givens on almost every grid and 21 on
# about half)
PUZZLE_TRIES = 256
HARD_TRIES = 8  # minimal puzzles carved and graded per grid for difficulty "hard"

Search = Callable[[np.ndarray, SearchParams, int], Awaitable[SearchResult]]  # (puzzle, params, sample index)
Solve = Callable[[np.ndarray, SearchParams], Awaitable[SearchResult]]  # a search on the solver engine


@dataclass(frozen=True)
class Grader:
    """Grades a puzzle with the solver: one plain row (K = 1, no noise), then the solver's default search."""

    solve: Solve
    defaults: SearchParams

    async def one_row(self, puzzle: np.ndarray) -> bool:
        plain = self.defaults.replace(
            rollouts=1, noise=0.0, waves=1, early_exit="verified", strategy="rollouts", diversity="none"
        )
        return bool((await self.solve(puzzle, plain)).verified)

    async def grade(self, puzzle: np.ndarray, one_row: bool | None = None) -> dict:
        one_row = await self.one_row(puzzle) if one_row is None else one_row
        full = await self.solve(puzzle, self.defaults)
        return {"one_row": one_row, "solved": bool(full.verified), "row_steps": full.row_steps}


@dataclass
class Outcome:
    items: list[dict] = field(default_factory=list)
    sampled: int = 0
    valid: int = 0
    distinct: float = 0.0
    row_steps: int = 0


async def generate(
    search: Search,
    task: Task,
    params: SearchParams,
    count: int,
    kind: str,
    clues: int | None,
    seed: int,
    max_samples: int,
    batch: int,
    deadline: float,
    grader: Grader | None = None,
    hard: bool = False,
) -> Outcome:
    out = Outcome()
    seen: set[bytes] = set()
    valid_grids: list[np.ndarray] = []
    rng = np.random.default_rng([seed, clues or 0])
    empty = np.full(task.seq_len, task.blank, np.int64)
    while len(out.items) < count and out.sampled < max_samples and (left := deadline - time.monotonic()) > 0:
        need = count - len(out.items)
        rate = out.valid / out.sampled if out.sampled else 1.0
        n = min(batch, max_samples - out.sampled, max(need, int(np.ceil(need / max(rate, 0.05)))))
        first = out.sampled
        results = await asyncio.gather(
            *(
                search(empty, params.replace(seed=kernels.row_seed(seed, first + i), timeout_s=left), first + i)
                for i in range(n)
            ),
            return_exceptions=True,
        )
        refused = next((r for r in results if isinstance(r, Overloaded)), None)
        for r in results:
            if isinstance(r, (DeadlineExceeded, Overloaded)):
                continue
            if isinstance(r, BaseException):
                raise r
            out.sampled += 1
            out.row_steps += r.row_steps
            if not r.verified:
                continue
            out.valid += 1
            valid_grids.append(r.answer)
            key = r.answer.tobytes()
            if key in seen or len(out.items) >= count:
                continue
            item = await _item(task, r.answer, kind, clues, rng, grader, hard)
            if item is not None:
                seen.add(key)
                out.items.append(item)
        if all(isinstance(r, Overloaded) for r in results):  # the engine admitted none of the round
            if not out.items:
                raise refused  # 429 with the engine's Retry-After
            break
        if out.sampled == first:  # the deadline cut every search of the round short
            break
    if valid_grids:
        out.distinct = len({g.tobytes() for g in valid_grids}) / len(valid_grids)
    return out


async def _item(
    task: Task,
    grid: np.ndarray,
    kind: str,
    clues: int | None,
    rng: np.random.Generator,
    grader: Grader | None,
    hard: bool,
) -> dict | None:
    item = {"grid": task.decode(grid), "text": task.to_text(grid), "valid": True}
    if kind == "grid":
        return item
    for _ in range(HARD_TRIES if hard else 1):
        puzzle = await asyncio.to_thread(make_puzzle, grid, clues, rng)  # carving: off the event loop
        if puzzle is None:
            return None
        difficulty = None
        if hard:
            if await grader.one_row(puzzle):
                continue  # one row solves it: not hard
            difficulty = await grader.grade(puzzle, one_row=False)
            if not difficulty["solved"]:
                continue  # nobody solves it: not a puzzle to hand out as hard
        elif grader is not None:
            difficulty = await grader.grade(puzzle)
        item.update(
            puzzle=task.to_text(puzzle),
            puzzle_grid=task.decode(puzzle),
            clues=int((puzzle != task.blank).sum()),
            unique=True,
            minimal=is_minimal(puzzle),
            difficulty=difficulty,
        )
        return item
    return None


def make_puzzle(
    grid: np.ndarray, clues: int | None, rng: np.random.Generator, tries: int = PUZZLE_TRIES
) -> np.ndarray | None:
    """A puzzle with exactly `clues` givens and a unique solution (proven by the exact solver, `carve`), trying up to
    `tries` removal orders, None when none gets there; `clues` None: a minimal puzzle (one pass always makes one)."""
    if clues is None:
        return minimal_puzzle(grid, rng)
    for _ in range(tries):
        puzzle, given = carve(grid, clues, rng)
        if given == clues:
            return puzzle
    return None
