"""A request: one puzzle searched by K rows (rollouts), and what it resolves to.

The engine thread owns every field below `future`; other threads only read `future` and call `cancel()`.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from engine.search import Rows, SearchParams, Selection
from engine.search.rollouts import row_seeds
from engine.tasks import Task


class RequestError(Exception):
    """A request the engine did not complete; `kind` is a short label for metrics and HTTP mapping."""

    kind = "error"


class Overloaded(RequestError):
    """Admission refused: too many queued requests or rows. Retry after `retry_after` seconds (HTTP 429)."""

    kind = "overloaded"

    def __init__(self, reason: str, limit: int, retry_after: float):
        what = {"requests": "queued requests", "rows": "queued rows"}[reason]
        super().__init__(f"engine overloaded: the {what} limit ({limit}) is reached; retry in {retry_after:.0f} s")
        self.reason, self.limit, self.retry_after = reason, limit, retry_after  # reason: "requests" | "rows"


class InvalidRequest(RequestError):
    """The request cannot run on this engine as asked (HTTP 422): e.g. a selector the checkpoint lacks a head for."""

    kind = "invalid"


class TooLarge(InvalidRequest):
    """The request alone exceeds a limit, so it could never be admitted (HTTP 422)."""

    kind = "too_large"


class DeadlineExceeded(RequestError):
    kind = "deadline"


class Cancelled(RequestError):
    kind = "cancelled"


class EngineStopped(RequestError):
    """The engine is draining or stopped (HTTP 503)."""

    kind = "stopped"


@dataclass(frozen=True)
class Timing:
    queued_s: float  # submission -> first step
    compute_s: float  # first step -> resolution
    total_s: float


@dataclass(frozen=True)
class SearchResult:
    request_id: str
    answer: np.ndarray  # [seq_len] tokens of the chosen row
    selection: Selection
    verified: bool | None  # the chosen answer passes the rule verifier (None: the task has none)
    rows: Rows  # every started row's last answer, q, ... (unstarted rows of an early exit are left out)
    rollouts: int  # rows that ran at least one step
    row_steps: int  # supervision steps run, summed over rows
    steps: int  # the most steps any row ran
    finish: str  # "completed" or "early_exit"
    timing: Timing
    history: dict[int, Rows] = field(default_factory=dict)  # step count -> rows then (Request.record_steps)


@dataclass(eq=False)
class Request:
    task: Task
    puzzle: np.ndarray  # [seq_len] int64 tokens
    params: SearchParams
    puzzle_id: int = 0
    record_steps: tuple[int, ...] = ()  # evaluation: also keep every row's answers at these step counts
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    submitted: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)

    def __post_init__(self):
        K, L = self.params.rollouts, len(self.puzzle)
        self.seeds = np.array(row_seeds(self.params.seed, range(K)), dtype=np.int64)
        self.steps_done = np.zeros(K, dtype=np.int64)
        self.slot = np.full(K, -1, dtype=np.int64)  # carry slot in the runner's pool; -1: none
        self.answers = np.zeros((K, L), dtype=np.int64)
        self.q = np.full(K, -np.inf, dtype=np.float32)
        self.value: np.ndarray | None = None
        self.log_prior: np.ndarray | None = None
        self.history: dict[int, Rows] = {}
        self.started: float | None = None
        self.cancelled = False

    @property
    def rows(self) -> int:
        return self.params.rollouts

    @property
    def deadline(self) -> float:
        return self.submitted + self.params.timeout_s if self.params.timeout_s else float("inf")

    def cancel(self) -> None:
        """Ask the engine to drop this request's rows at the next step boundary (any thread)."""
        self.cancelled = True

    def row_view(self, rows: np.ndarray | None = None) -> Rows:
        i = slice(None) if rows is None else rows
        return Rows(
            self.answers[i].copy(),
            self.q[i].copy(),
            None,
            None if self.value is None else self.value[i].copy(),
            None if self.log_prior is None else self.log_prior[i].copy(),
        )
