"""The scheduler: bounded admission, and which rows run at the next supervision step.

Admission is synchronous (any thread): a request is refused at once when the queued requests or rows would pass
their caps, before any work is spent on it (SERVING.md §2.4), or when it would not finish before its deadline at the
measured pace, given the work admitted with it (issue 16: admitting it would only end in a 504). Admitted requests
wait in an inbox that the engine thread drains at each step boundary.

Picking rows (engine thread) is max-min fair share at step granularity (issue 27): the step's rows are dealt one at
a time, round-robin over tenants (API keys; one tenant when keys are off), and within a tenant round-robin over its
requests, oldest first, until the batch is full or no request can use another row. So every live request gets a row
in every step while the batch has room, a tenant's burst cannot take the batch from another tenant's request, and a
request alone still takes the whole batch. This is deficit round-robin over row-steps with a quantum of one row-step
per round, renewed every step: a supervision step is the unit of time, so no tenant carries a deficit across steps
(a request that could use fewer rows than its share leaves them to the others in the same step, which is what
work-conserving means here), and the policy has no weights or history to tune. Within a request, rows that hold a
carry slot go before new ones, and a new row needs a free slot.

The deadline estimate follows the same order. Under fair sharing a request with W row-steps left finishes once every
tenant has run min(its work, the share it needs) (processor sharing): within its tenant, w_t = sum over the tenant's
requests of min(w_i, W); across tenants, sum over tenants of min(W_u, w_t), at the measured pace. It can never be
faster than its own supervision steps one after another.
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
        self._seq = 0  # admissions so far (Request.seq)
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
        need = self.estimate(request)
        if need * DEADLINE_MARGIN <= left:
            return
        # On a retry the deadline starts afresh: wait until the work it shares the machine with has shrunk enough
        raise DeadlineUnmet(need, timeout, self._seconds(need - timeout / DEADLINE_MARGIN))

    def estimate(self, request: Request, extra: int = 0) -> float:
        """Seconds until `request` (plus `extra` row-steps of it not counted in its rows yet, e.g. a next wave) would
        finish under fair sharing with the admitted work, at the measured pace (module docstring)."""
        pace = self.row_steps_per_s
        own = request.row_steps_left + extra
        by_tenant: dict[str, list[int]] = {}
        rows = request.rows
        for r in list(self.active) + list(self._inbox):
            if r is not request:
                by_tenant.setdefault(r.tenant, []).append(r.row_steps_left)
                rows += r.rows
        mine = own + sum(min(w, own) for w in by_tenant.pop(request.tenant, []))
        shared = mine + sum(min(sum(works), mine) for works in by_tenant.values())
        steps = -(-own // request.rows)  # its supervision steps, one after another
        step_s = min(rows, self.limits.max_batch) / pace  # at the batch the admitted work fills
        return max(shared / pace, steps * step_s)

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
            new[-1].seq, self._seq = self._seq, self._seq + 1
        self.active.extend(new)
        return new

    def pick(self, in_flight: set[int] = frozenset(), parity: int | None = None) -> list[tuple[Request, np.ndarray]]:
        """Rows for the next step by fair share (module docstring): [(request, row indices)], at most max_batch rows.
        Assigns slots. Requests whose ids are `in_flight` (in a step launched but not collected yet) wait for their
        results. `parity` (pipelined engine): requests of that admission parity are dealt rows first and the others
        only the room they leave, so consecutive steps hold different requests and can overlap; fair share alone
        would put every request in every step, leaving none for the step launched while this one is in flight."""
        runnable: dict[int, np.ndarray] = {}  # request -> its rows that can run, those holding a slot first
        for req in self.active:
            alive = req.steps_done < req.params.steps
            started = req.slot >= 0
            order = np.concatenate((np.flatnonzero(alive & started), np.flatnonzero(alive & ~started)))
            if len(order) and id(req) not in in_flight:
                runnable[id(req)] = order
        taken = dict.fromkeys(runnable, 0)
        room, free = self.limits.max_batch, len(self.free_slots)
        candidates = [r for r in self.active if id(r) in runnable]
        groups = (
            [candidates]
            if parity is None
            else [[r for r in candidates if r.seq % 2 == p] for p in (parity, 1 - parity)]
        )
        for group in groups:
            room, free = self._deal(group, runnable, taken, room, free)
        plan = []
        for req in candidates:
            rows = runnable[id(req)][: taken[id(req)]]
            if len(rows):
                new = rows[req.slot[rows] < 0]
                req.slot[new] = [self.free_slots.popleft() for _ in range(len(new))]
                plan.append((req, rows))
        return plan

    @staticmethod
    def _deal(requests: list[Request], runnable: dict, taken: dict, room: int, free: int) -> tuple[int, int]:
        """Deal up to `room` rows one at a time: round-robin over tenants, within a tenant over its requests (oldest
        first), skipping a request once it can use no more rows (`free`: carry slots left for new rows)."""
        turns: dict[str, deque[Request]] = {}
        for req in requests:
            turns.setdefault(req.tenant, deque()).append(req)
        while room and turns:
            for tenant in list(turns):
                queue = turns[tenant]
                while queue:
                    req = queue.popleft()
                    order, n = runnable[id(req)], taken[id(req)]
                    needs_slot = req.slot[order[n]] < 0
                    if needs_slot and not free:
                        continue
                    free -= needs_slot
                    taken[id(req)], room = n + 1, room - 1
                    if n + 1 < len(order):
                        queue.append(req)
                    break
                if not queue:
                    del turns[tenant]
                if not room:
                    break
        return room, free

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
