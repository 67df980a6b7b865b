"""`POST /solve` for ARC (issue 25): every augmented variant the checkpoint knows for the task, then the vote.

TRM is transductive: a task is known to the checkpoint by the rows of its puzzle-embedding table, one per augmented
variant (`identifiers.json`). The test input is mapped into each variant's frame (`Augmentation.apply`), each variant
runs as one engine request with its own puzzle id, and the predictions, mapped back, are voted exactly as the
official evaluator does (engine/tasks/arc_vote.py). The two best candidates are Kaggle's two attempts.

Variants go to the engine a window at a time (a quarter of its request cap), so one task's thousand variants neither
trip the admission cap nor hold every row of the batch; they share one deadline. Streaming sends a `vote` event as
variants finish: the leading candidate and its votes so far.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from engine.runtime import DeadlineExceeded, Request, SearchResult
from engine.search import SearchParams
from engine.tasks.arc_augment import Augmentation
from engine.tasks.arc_vote import ATTEMPTS, Candidate, Vote, vote_rows
from server.errors import ApiError
from server.models import Solver
from server.schemas import ArcAttempt, SolveResponse
from server.stream import Watch

Submit = Callable[..., Request]  # (grid, params, puzzle_id=, request_id=) -> the admitted engine request


def test_input(solver: Solver, body) -> np.ndarray:
    """The grid to solve: the request's `puzzle`, or test input `test_index` of the task (test_puzzles.json)."""
    if body.puzzle is not None and body.test_index is not None:
        raise ApiError(422, "invalid_request", "give `puzzle` or `test_index`, not both")
    if body.puzzle is not None:
        return np.asarray(solver.task.decode(solver.task.encode(body.puzzle)), np.uint8)  # PuzzleError -> 422
    tests = (solver.ckpt.test_puzzles or {}).get(body.name, {}).get("test", [])
    if body.test_index is None or body.test_index >= len(tests):
        known = f"the checkpoint has {len(tests)} test inputs for {body.name!r}"
        raise ApiError(422, "invalid_request", f"give `puzzle` (a grid) or a `test_index` below {len(tests)}: {known}")
    return np.asarray(tests[body.test_index]["input"], np.uint8)


def task_variants(solver: Solver, name: str | None) -> list[tuple[int, Augmentation]]:
    if solver.arc_variants is None:
        raise ApiError(
            422,
            "invalid_request",
            f"model {solver.name!r} has no identifiers.json, so its puzzle ids name no ARC task: convert it with "
            "engine-convert --identifiers",
        )
    if name is None:
        raise ApiError(422, "invalid_request", "ARC needs `name`: the task's name as the checkpoint was trained on it")
    if name not in solver.arc_variants:
        raise ApiError(404, "not_found", f"model {solver.name!r} knows no ARC task {name!r}")
    return solver.arc_variants[name]


async def solve(
    solver: Solver,
    body,
    params: SearchParams,
    request_id: str,
    window: int,
    submit: Submit,
    watch: Watch | None,
    start: float,
) -> SolveResponse:
    """`submit(grid, params, puzzle_id=, request_id=)`: admits one variant under the caller's key (Keyring.submit:
    its tenant and quota)."""
    found = task_variants(solver, body.name)
    grid = test_input(solver, body)
    inputs = np.stack([solver.task.encode(aug.apply(grid).tolist()) for _, aug in found])
    deadline = time.monotonic() + params.timeout_s
    gate, running = asyncio.Semaphore(window), Vote()
    due, done = 0.0, 0  # streaming: when the next vote event may go; variants finished

    async def variant(i: int) -> SearchResult | None:
        nonlocal due, done
        pid, aug = found[i]
        async with gate:
            left = deadline - time.monotonic()
            if left <= 0:
                if params.strict_deadline:
                    raise DeadlineExceeded(f"deadline of {params.timeout_s} s passed")
                return None  # not run: the vote goes without it
            timed = params.replace(timeout_s=left)
            req = submit(inputs[i], timed, puzzle_id=pid, request_id=f"{request_id}-{i}")
            if watch is not None:
                watch.admitted.set()
            try:
                result = await solver.facade.wait(req)
            except DeadlineExceeded:
                if params.strict_deadline:
                    raise
                return None  # its deadline came before its first step
        done += 1
        if watch is not None and done < len(found):  # the last event is the final vote's, below
            running.add_result(body.name, aug, inputs[i], result)
            if time.monotonic() >= due:
                due = time.monotonic() + watch.interval
                watch.event("vote", vote_json(running.ranked(body.name, grid), len(found)))
        return result

    tasks = [asyncio.ensure_future(variant(i)) for i in range(len(found))]
    try:
        outcomes = await asyncio.gather(*tasks)
    finally:  # one failed (a 429, a strict deadline) or the client left: the other variants' rows stop too
        for t in tasks:
            t.cancel()
    # Anytime, as each variant is: at the deadline the vote counts the variants that ran (None: not started)
    ran = [i for i, r in enumerate(outcomes) if r is not None]
    if not ran:
        raise DeadlineExceeded(f"deadline of {params.timeout_s} s passed before any variant ran")
    results = [outcomes[i] for i in ran]
    cut = len(ran) < len(found) or any(r.finish == "deadline" for r in results)
    # The final vote in variant order, as the official evaluation adds rows in dataset order (it breaks exact ties)
    vote = vote_rows([body.name] * len(ran), [found[i][1] for i in ran], inputs[ran], results)
    ranked = vote.ranked(body.name, grid)
    if watch is not None:
        watch.event("vote", vote_json(ranked, len(found)))
    picks = attempts(ranked)
    first = picks[0]
    queued = min(r.timing.queued_s for r in results)
    total = time.perf_counter() - start
    return SolveResponse(
        solution=solver.task.to_text(solver.task.encode(first.grid)) if isinstance(body.puzzle, str) else first.grid,
        grid=first.grid,
        verified=None,
        confidence=first.mean_q,
        agreement=first.share,
        selector="vote",
        rollouts=sum(r.rollouts for r in results),
        steps=max(r.steps for r in results),
        row_steps=sum(r.row_steps for r in results),
        finish="deadline" if cut else "completed",
        strategy=params.strategy,
        diversity=params.diversity,
        attempts=picks,
        variants=len(ran),
        model=solver.name,
        task="arc",
        request_id=request_id,
        timing={"queued_s": queued, "compute_s": total - queued, "total_s": total, "server_s": total},
    )


def attempts(ranked: list[Candidate]) -> list[ArcAttempt]:
    total = sum(c.votes for c in ranked)
    return [
        ArcAttempt(grid=c.grid.tolist(), votes=c.votes, share=c.votes / total, mean_q=c.mean_q)
        for c in ranked[:ATTEMPTS]
    ]


def vote_json(ranked: list[Candidate], variants: int) -> dict:
    return {
        "votes": sum(c.votes for c in ranked),
        "variants": variants,
        "candidates": len(ranked),
        "leader": {"grid": ranked[0].grid.tolist(), "votes": ranked[0].votes, "mean_q": ranked[0].mean_q},
    }
