"""The scheduler: bounded admission, and which rows run at the next supervision step.

Admission is synchronous (any thread): a request is refused at once when the queued requests or rows would pass
their caps, before any work is spent on it (SERVING.md §2.4), or when the work queued ahead of it plus its own would
not finish before its deadline at the measured pace (issue 16: admitting it would only end in a 504). Admitted
requests wait in an inbox that the engine thread drains at each step boundary.

Picking rows (engine thread) is FIFO over requests in two passes: first every request gets up to
`rows_per_request` rows, so one huge K cannot starve the others; then leftover room goes FIFO without the cap.
Within a request, rows already in flight go before new ones, and a new row needs a free carry slot.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from engine.runtime.request import EngineStopped, Overloaded, Request, RequestError, TooLarge

DEADLINE_MARGIN = 1.25  # estimated finish x this must still be before the deadline (the pace is an estimate)
MAX_RETRY_AFTER = 3600.0  # Retry-After stays truthful for long queues, within reason


class DeadlineUnmet(Overloaded):
    """Admission refused: the work queued ahead plus this request's would not finish before its deadline (HTTP 429)."""

    def __init__(self, need_s: float | None, timeout_s: float, retry_after: float):
        took = "the pace is not measured yet" if need_s is None else f"it would take about {need_s:.1f} s"
        RequestError.__init__(
            self,
            f"engine overloaded: the queued work plus this request cannot finish within its {timeout_s:g} s deadline "
            f"({took}); retry in {retry_after:.0f} s",
        )
        self.reason, self.limit, self.retry_after = "deadline", 0, retry_after


@dataclass(frozen=True)
class Limits:
    max_batch: int = 64  # rows per step
    max_requests: int = 256  # queued + running requests
    max_rows: int = 4096  # queued + running rows (a request counts its K)
    rows_per_request: int = 32  # rows one request may take per step while others are waiting


@dataclass(frozen=True)
class Load:
    requests_waiting: int
    requests_running: int
    rows_waiting: int  # admitted rows that have not started (or are paused without a carry slot)
    rows_running: int  # rows holding a carry slot


class Scheduler:
    def __init__(self, limits: Limits, slots: int):
        self.limits = limits
        self.active: list[Request] = []  # admitted, in FIFO order (engine thread)
        self.free_slots = deque(range(slots))
        self._inbox: deque[Request] = deque()
        self._lock = threading.Lock()
        self._requests = self._rows = 0  # admitted and not yet resolved
        self.draining = False
        self.row_steps_per_s = 0.0  # recent throughput, for Retry-After

    # -- any thread -------------------------------------------------------------------------------------------------

    def admit(self, request: Request) -> None:
        lim = self.limits
        if request.rows > lim.max_rows:
            raise TooLarge(f"rollouts {request.rows} exceed the engine's row limit {lim.max_rows}")
        with self._lock:
            if self.draining:
                raise EngineStopped("the engine is shutting down")
            if self._requests + 1 > lim.max_requests:
                raise Overloaded("requests", lim.max_requests, self.retry_after())
            if self._rows + request.rows > lim.max_rows:
                raise Overloaded("rows", lim.max_rows, self.retry_after())
            self._check_deadline(request)
            self._requests += 1
            self._rows += request.rows
            self._inbox.append(request)

    def release(self, request: Request) -> None:
        """A resolved request frees its admission share."""
        with self._lock:
            self._requests -= 1
            self._rows -= request.rows

    def _check_deadline(self, request: Request) -> None:
        """Refuse (DeadlineUnmet) a request that would finish past its deadline behind the admitted work. A request
        with nothing ahead of it is always admitted: only its own deadline can stop it then."""
        if self._requests == 0 or request.params.timeout_s is None:
            return
        timeout, pace = request.params.timeout_s, self.row_steps_per_s
        left = request.deadline - time.monotonic()
        if pace <= 0:  # nothing measured yet: one request at a time until the first step gives a pace
            raise DeadlineUnmet(None, timeout, 1.0)
        ahead = self.work()
        own = request.row_steps_left
        need = (ahead + own) / pace
        if need * DEADLINE_MARGIN <= left:
            return
        # On a retry the deadline starts afresh: wait until what is ahead has shrunk to what then fits.
        fits = max(0.0, timeout / DEADLINE_MARGIN - own / pace)
        raise DeadlineUnmet(need, timeout, self._seconds(ahead / pace - fits))

    def work(self) -> int:
        """Row-steps the admitted requests still have to run (a best-effort read of the engine thread's arrays)."""
        return sum(r.row_steps_left for r in list(self.active) + list(self._inbox))

    @staticmethod
    def _seconds(s: float) -> float:
        return float(min(MAX_RETRY_AFTER, max(1, math.ceil(s))))

    def retry_after(self) -> float:
        """Seconds until the queued work would be done at the recent pace (1 when it is not measured yet)."""
        if self.row_steps_per_s <= 0:
            return 1.0
        return self._seconds(self.work() / self.row_steps_per_s)

    @property
    def queued(self) -> tuple[int, int]:
        """(requests, rows) admitted and not yet resolved."""
        return self._requests, self._rows

    def snapshot(self) -> Load:
        """Waiting and running requests and rows, for gauges (any thread; a best-effort view between steps)."""
        with self._lock:
            requests, rows = self._requests, self._rows
            active = list(self.active)
        running = [r for r in active if r.started is not None]
        rows_running = sum(int((r.slot >= 0).sum()) for r in active)
        rows_done = sum(int((r.steps_done >= r.params.steps).sum()) for r in active)
        return Load(requests - len(running), len(running), rows - rows_running - rows_done, rows_running)

    # -- engine thread ----------------------------------------------------------------------------------------------

    def take_inbox(self) -> list[Request]:
        """Move admitted requests to the active list; returns the newcomers."""
        new = []
        while self._inbox:
            new.append(self._inbox.popleft())
        self.active.extend(new)
        return new

    def pick(self, in_flight: set[int] = frozenset()) -> list[tuple[Request, np.ndarray]]:
        """Rows for the next step: [(request, row indices)], at most max_batch rows in all. Assigns slots.

        Two passes in FIFO order: first up to `rows_per_request` rows each, then whatever room is left. A request's
        rows that hold a carry slot go before those that need one. Requests whose ids are `in_flight` (in a step
        launched but not collected yet) wait for their results."""
        lim = self.limits
        room = lim.max_batch
        taken: dict[int, np.ndarray] = {}
        for cap in (lim.rows_per_request, lim.max_batch):
            for req in self.active:
                if room == 0:
                    break
                if id(req) in in_flight:
                    continue
                mine = taken.get(id(req), np.zeros(0, np.int64))
                alive = req.steps_done < req.params.steps
                started = req.slot >= 0
                order = np.concatenate((np.flatnonzero(alive & started), np.flatnonzero(alive & ~started)))
                if len(mine):
                    order = order[~np.isin(order, mine)]
                order = order[: min(cap - len(mine), room)]
                new = order[~started[order]]
                short = len(new) - len(self.free_slots)
                if short > 0:  # unstarted rows come last in `order`: drop those without a slot
                    order, new = order[: len(order) - short], new[: len(new) - short]
                req.slot[new] = [self.free_slots.popleft() for _ in range(len(new))]
                taken[id(req)] = np.concatenate((mine, order))
                room -= len(order)
        return [(req, taken[id(req)]) for req in self.active if len(taken.get(id(req), ()))]

    def free_rows(self, req: Request, rows: np.ndarray) -> None:
        for row in rows:
            if req.slot[row] >= 0:
                self.free_slots.append(int(req.slot[row]))
                req.slot[row] = -1

    def remove(self, req: Request) -> None:
        """Take a resolved request out: its slots and its admission share come back."""
        self.free_rows(req, np.arange(req.rows))
        self.active.remove(req)
        self.release(req)
