"""What a request looks like between two supervision steps, for callers that watch the search (issue 17).

A request with a `listener` (Request.listener) has it called by the engine thread after each step that ran its
rows, with the request itself; the listener decides whether it wants a `Progress` now (a rate limit) and takes one
with `snapshot`, still on the engine thread, which owns the request's arrays. Requests without a listener pay nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.runtime.request import Request


@dataclass(frozen=True)
class Progress:
    request_id: str
    step: int  # supervision steps the current node's furthest row has run
    node: int  # commit search: the node being expanded (0-based); rollouts: the wave (0 unless waves > 1)
    rows: int  # rows of the current node that have run at least one step
    row_steps: int  # supervision steps so far, summed over rows and nodes
    consensus: np.ndarray  # [L] tokens: per cell, the answer most of those rows give
    agreement: np.ndarray  # [L] float32: the share of those rows that give it
    best_q: float  # the largest halt logit among those rows
    grid: np.ndarray | None = None  # commit search: the node's grid, givens and committed cells (puzzle frame)
    committed: np.ndarray | None = None  # commit search: cells filled beyond the givens in this node
    nodes: int = 0  # commit search: nodes expanded so far
    backtracks: int = 0
    depth: int = 0  # commit search: choices on the path from the puzzle to this node


def snapshot(req: Request) -> Progress:
    """The request now (engine thread only): the per-cell consensus of its started rows, and the search's state."""
    started = req.steps_done > 0
    answers = req.answers[started] if started.any() else req.answers[:1]
    counts = (answers[:, :, None] == np.arange(req.task.vocab_size)).sum(0)  # [L, V]
    consensus = counts.argmax(-1)
    agreement = (counts.max(-1) / len(answers)).astype(np.float32)
    best_q = float(req.q[started].max()) if started.any() else float("-inf")
    progress = dict(
        request_id=req.id,
        step=int(req.steps_done.max()),
        node=max(req.node, 0),
        rows=int(started.sum()),
        row_steps=req.row_steps,
        consensus=consensus,
        agreement=agreement,
        best_q=best_q,
    )
    search = req.search
    if search is not None and search.current is not None:
        grid = search.current.copy()
        blank = req.task.blank
        progress.update(
            grid=grid,
            committed=np.flatnonzero((grid != blank) & (req.puzzle == blank)),
            nodes=search.nodes,
            backtracks=search.backtracks,
            depth=len(search.stack),
        )
    return Progress(**progress)
