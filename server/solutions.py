"""/solve's answers for puzzles with several solutions (`"solutions": N`, and any puzzle the exact counter finds
ambiguous): which engine requests to run, and the distinct verified answers they found (docs/multi-solution.md).

- A unique puzzle (or one a task cannot count) runs the ordinary search: its rows' verified answers.
- A GRAM solver samples its learned prior: one request of max(K, 2N) rows, no early exit (GRAM §4.2).
- A TRM solver of a fill-in task decodes as /generate does, from the puzzle's givens: one row per request, a
  sampled cell per node, the legal mask and backtracking, so every finished request is a verified answer, and
  requests with different seeds find different ones. Rounds of such requests run until N are found (or all the
  puzzle has). Rollouts of a deterministic model would give one answer, and an ambiguous puzzle (the empty grid)
  has no confident rows: the ordinary search runs out its deadline there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from engine.generate import grid_params
from engine.runtime import SearchResult
from engine.runtime.request import DeadlineExceeded, Overloaded
from engine.search import SearchParams
from engine.search.solutions import COUNT_LIMIT, Found, count_solutions, distinct_verified, merge

Search = Callable[[np.ndarray, SearchParams, int | None], Awaitable[SearchResult]]
DECODE_ROUNDS = 4  # rounds of decoding requests at most; a round asks for twice the answers still missing


@dataclass(frozen=True)
class Many:
    found: list[Found]  # distinct verified answers, the most often found first
    result: SearchResult  # the request whose answer leads (or the last one, when nothing verified)
    row_steps: int  # over every request
    rollouts: int  # rows over every request
    count: int | None  # the puzzle's solutions (None: no counter, or COUNT_LIMIT or more)


def plan(solver, count: int | None, n: int) -> str:
    """search | samples | decode (see the module docstring); `count` as counted, up to COUNT_LIMIT."""
    if count == 1 or (count is None and n == 1):
        return "search"
    if solver.ckpt.arch == "gram" or solver.task.blank is None:
        return "search" if n == 1 else "samples"
    return "decode"


def _found(result: SearchResult, task, puzzle: np.ndarray, params: SearchParams) -> list[Found]:
    if params.strategy == "commit":  # a commit search's rows are its last node's; its answer is what it found
        ok = result.verified
        return [Found(result.answer, 1, result.selection.confidence)] if ok else []
    return distinct_verified(task, puzzle, result.rows)


async def solve_many(solver, puzzle: np.ndarray, params: SearchParams, n: int, max_rows: int, search: Search) -> Many:
    """Up to `n` distinct verified answers to `puzzle` (more may be found; the caller keeps n)."""
    task = solver.task
    counted = count_solutions(task, puzzle)
    how = plan(solver, counted, n)
    count = counted if counted is None or counted < COUNT_LIMIT else None
    if how != "decode":
        if how == "samples":
            params = params.replace(
                rollouts=min(max(params.rollouts, 2 * n), max_rows), early_exit="off", waves=1, strategy="rollouts"
            )
        result = await search(puzzle, params, None)
        return Many(_found(result, task, puzzle, params), result, result.row_steps, result.rollouts, count)

    decode = grid_params("commit", solver.ckpt, params, temperature=1.0)
    results: list[SearchResult] = []
    found: list[Found] = []
    want = min(n, count) if count is not None else n
    for _ in range(DECODE_ROUNDS):
        first = len(results)
        size = min(max(2 * (want - len(found)), 1), max_rows)
        tries = [decode.replace(seed=params.seed + first + i) for i in range(size)]
        done = await asyncio.gather(*(search(puzzle, p, first + i) for i, p in enumerate(tries)), return_exceptions=True)
        failed = [r for r in done if isinstance(r, BaseException)]
        # the deadline, or a full engine or spent quota for some of the round: the search ends with what was found
        if other := next((e for e in failed if not isinstance(e, (DeadlineExceeded, Overloaded))), None):
            raise other
        results += [r for r in done if not isinstance(r, BaseException)]
        if not results:
            raise failed[0]
        found = merge([found, *(_found(r, task, puzzle, decode) for r in results[first:])])
        cut = failed or any(r.finish == "deadline" for r in results[first:])  # each round's requests time anew
        if len(found) >= want or cut:
            break
    lead = results[-1]
    if found:
        lead = next(r for r in results if r.verified and np.array_equal(r.answer, found[0].answer))
    return Many(found, lead, sum(r.row_steps for r in results), sum(r.rollouts for r in results), count)
