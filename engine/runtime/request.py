"""A request: one puzzle searched by K rows (rollouts), and what it resolves to.

The engine thread owns every field below `future`; other threads only read `future` and call `cancel()`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from engine.runtime.costs import Cost
from engine.search import Rows, SearchParams, Selection
from engine.search.commit import CommitSearch, Final
from engine.search.rollouts import row_seeds
from engine.tasks import Task
from engine.tasks.symmetry import Symmetry


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


def worst_row_steps(params: SearchParams) -> int:
    """The most row-steps a request with these settings can run (what a key's quota reserves for it): K rows x D
    steps per wave, over the waves it may run; a commit search's nodes of K x D each, within its row-step budget."""
    per_node = params.rollouts * params.steps
    if params.strategy != "commit":
        return per_node * params.wave_limit
    nodes = per_node * params.max_nodes
    return nodes if params.max_row_steps is None else min(nodes, params.max_row_steps)


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
    # "completed" or "early_exit"; commit search: "verified", "filled", "budget", "exhausted", ...; "deadline": the
    # best it had when its deadline passed
    finish: str
    timing: Timing
    history: dict[int, Rows] = field(default_factory=dict)  # step count -> rows then (Request.record_steps)
    nodes: int = 0  # commit search: nodes expanded
    backtracks: int = 0
    committed: int = 0  # cells committed beyond the givens in the last node
    waves: int = 1  # rollouts: rounds of K rows run (SearchParams.waves)


@dataclass(eq=False)
class Request:
    task: Task
    puzzle: np.ndarray  # [seq_len] int64 tokens
    params: SearchParams
    puzzle_id: int = 0
    tenant: str = ""  # whose work it is (the API key's name): the scheduler shares rows fairly across tenants
    record_steps: tuple[int, ...] = ()  # evaluation: also keep every row's answers at these step counts
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    submitted: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    # Called by the engine thread with this request after each step that ran its rows (engine/runtime/progress.py)
    listener: Callable[[Request], None] | None = None
    # Row-steps its caller set aside for it at admission (a key's quota, server/keys.py): given back, less what it
    # ran, when it resolves
    reserved: int = 0

    def __post_init__(self):
        K = self.params.rollouts
        self.slot = np.full(K, -1, dtype=np.int64)  # carry slot in the runner's pool; -1: none
        self.history: dict[int, Rows] = {}
        self.seq = -1  # admission order, set by the scheduler (pipelined steps alternate between even and odd)
        self.started: float | None = None
        self.cancelled = False
        self.row_steps = 0  # over every node
        self.cost: Cost | None = None  # its search settings' learned cost, set at admission
        self.past: list[Rows] = []  # rollouts: the rows of earlier waves
        self.search = CommitSearch(self.task, self.puzzle, self.params) if self.params.strategy == "commit" else None
        self.final: Final | None = None  # commit search: answered before any row ran (e.g. the mask filled it)
        self.node = -1
        first = self.search.start() if self.search is not None else self.puzzle
        if isinstance(first, Final):
            self.final, first = first, self.puzzle
        self.start_node(first)

    def start_node(self, grid: np.ndarray) -> None:
        """(Re)start the K rows on `grid` (the puzzle, or a commit-search node): fresh carries, seeds and symmetries.

        Node n's rows take the noise streams n*K..n*K+K-1 of the request's seed, so node 0 is exactly the rollouts of
        the puzzle. With `augment`, row r runs on its own random symmetry of the grid (row 0: the identity), and its
        answer and distribution are mapped back (`unmap`); when sampling (temperature > 0) row 0 too."""
        K, L, p = self.params.rollouts, len(self.puzzle), self.params
        self.node += 1
        self.seeds = np.array(row_seeds(p.seed, range(self.node * K, (self.node + 1) * K)), dtype=np.int64)
        self.steps_done = np.zeros(K, dtype=np.int64)
        self.answers = np.zeros((K, L), dtype=np.int64)
        self.q = np.full(K, -np.inf, dtype=np.float32)
        self.value: np.ndarray | None = None
        self.log_prior: np.ndarray | None = None
        self.probs: np.ndarray | None = None  # [K, L, V] at each row's last step (commit search only)
        self.unsym: Symmetry | None = None  # per row: its frame -> the puzzle's (augment)
        self.inputs = np.broadcast_to(grid, (K, L))
        if p.augmented:
            # Row 0 keeps the puzzle's frame when solving; sampling (temperature > 0) and later waves of rollouts (whose
            # identity row would repeat the first wave's) want every row random.
            first = 0 if p.temperature > 0 or (self.node > 0 and self.search is None) else 1
            syms = [Symmetry.identity(L, self.task.vocab_size)] * first
            for r in range(first, K):
                sym = self.task.symmetry(np.random.default_rng([p.seed, self.node, r]))
                if sym is None:
                    raise ValueError(f"diversity {p.diversity!r} needs task symmetries; {self.task.name} has none")
                syms.append(sym)
            sym = Symmetry.stack(syms)
            self.inputs = sym.apply(self.inputs)
            self.unsym = sym.inverse

    def unmap(self, rows: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """Rows' answers [n, L] from their symmetric frames back to the puzzle's."""
        return answers if self.unsym is None else self._inverse(rows).apply(answers)

    def unmap_probs(self, rows: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Rows' per-cell distributions [n, L, V] from their symmetric frames back to the puzzle's."""
        return probs if self.unsym is None else self._inverse(rows).apply_probs(probs)

    def _inverse(self, rows: np.ndarray) -> Symmetry:
        if len(rows) == self.rows and (rows == np.arange(self.rows)).all():  # the usual step: every row, in order
            return self.unsym
        return Symmetry(self.unsym.cells[rows], self.unsym.tokens[rows])

    @property
    def rows(self) -> int:
        return self.params.rollouts

    @property
    def row_steps_left(self) -> int:
        """Row-steps the current node or wave still has to run (a best-effort read of the engine thread's arrays).
        Later waves are left out: most requests end in their first, and a wave that could not finish before the
        deadline is not started (Engine._next_wave)."""
        return int((self.params.steps - self.steps_done).sum())

    @property
    def max_row_steps(self) -> int:
        return worst_row_steps(self.params)

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
