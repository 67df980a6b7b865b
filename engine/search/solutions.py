"""Several answers to one puzzle: the distinct verified answers among a search's rows, and the exact number of
solutions where a task has a counter (coverage's denominator; GRAM §4.2, docs/multi-solution.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.search.selectors import Rows
from engine.tasks import Task

COUNT_LIMIT = 1000  # solutions counted at most; a puzzle with more has no exact count (and no coverage)


@dataclass(frozen=True)
class Found:
    answer: np.ndarray  # [seq_len] tokens
    samples: int  # rows whose answer it was
    score: float  # mean sigmoid(q halt) of those rows


def verified_rows(task: Task, puzzle: np.ndarray, rows: Rows) -> np.ndarray:
    """bool [K]: the rows whose answer passes the rule verifier."""
    if rows.verified is not None:
        return np.asarray(rows.verified, bool)
    return task.verify_batch(np.broadcast_to(puzzle, rows.answers.shape), rows.answers)


def distinct_verified(task: Task, puzzle: np.ndarray, rows: Rows) -> list[Found]:
    """Each distinct verified answer once, the most often found first, then by score (ties: first found)."""
    ok = verified_rows(task, puzzle, rows)
    answers, q = task.canonical(rows.answers[ok]), np.asarray(rows.q, np.float64)[ok]  # a colouring class once
    if not len(answers):
        return []
    unique, first, inverse = np.unique(answers, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    samples = np.bincount(inverse, minlength=len(unique))
    score = np.bincount(inverse, weights=1 / (1 + np.exp(-q)), minlength=len(unique)) / samples
    order = sorted(range(len(unique)), key=lambda i: (-samples[i], -score[i], first[i]))
    return [Found(unique[i], int(samples[i]), float(score[i])) for i in order]


def merge(found: list[list[Found]]) -> list[Found]:
    """Answers of several searches of one puzzle, each once (samples added, score averaged over the samples)."""
    by_key: dict[bytes, Found] = {}
    for f in (f for group in found for f in group):
        key = np.asarray(f.answer).tobytes()
        if (old := by_key.get(key)) is None:
            by_key[key] = f
        else:
            total = old.samples + f.samples
            by_key[key] = Found(old.answer, total, (old.score * old.samples + f.score * f.samples) / total)
    return sorted(by_key.values(), key=lambda f: (-f.samples, -f.score))


def count_solutions(task: Task, puzzle: np.ndarray, limit: int = COUNT_LIMIT) -> int | None:
    """How many solutions the puzzle has, counting no further than `limit`; None where the task has no counter."""
    if task.name == "sudoku":
        from engine.tasks.sudoku_solver import count_solutions as count
    elif task.name.startswith("nqueens"):
        from engine.tasks.nqueens import count_completions as count
    elif task.name.startswith("graph-colouring"):
        from engine.tasks.graph_colouring import count_colourings as count
    else:
        return None
    return int(count(np.asarray(puzzle, np.int64), limit))
