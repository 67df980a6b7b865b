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
faster than its own supervision steps one after another, and those wait for a carry slot when none is free: rows
that started keep theirs until they end (issue 34). The work counted is what requests are expected to run, learned
per search setting (engine/runtime/costs.py), not their worst case: a search that is still running at its deadline
answers with the best it has (Engine._expire), so admission need not hold a request's every last wave.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from engine.runtime.costs import QUANTILE, Costs
from engine.runtime.request import EngineStopped, Overloaded, Request, RequestError, TooLarge

DEADLINE_MARGIN = 1.25  # estimated finish x this must still be before the deadline (the pace is an estimate)
MAX_RETRY_AFTER = 3600.0  # Retry-After stays truthful for long queues, within reason


@dataclass(frozen=True)
class Expected:
    """What admission expects a request to run, and why (its 429 message states the rule)."""

    row_steps: int
    basis: str  # e.g. "p90 of the last 64 finished requests with its settings"


class DeadlineUnmet(Overloaded):
    """Admission refused: the work queued ahead plus this request's would not finish before its deadline (HTTP 429)."""

    def __init__(
        self,
        need_s: float | None,
        timeout_s: float,
        retry_after: float,
        expected: Expected | None = None,
        ahead: int = 0,
        pace: float = 0.0,
    ):
        if need_s is None:
            why = "one request at a time until the engine's pace is measured"
        else:
            why = (
                f"it is expected to run {expected.row_steps} row-steps ({expected.basis}), sharing the engine with "
                f"{ahead} expected row-steps of admitted work at the measured {pace:.0f} row-steps/s: about "
                f"{need_s:.1f} s, and admission wants that x {DEADLINE_MARGIN:g} within the deadline"
            )
        RequestError.__init__(
            self,
            f"engine overloaded: this request cannot finish within its {timeout_s:g} s deadline ({why}); "
            f"retry in {retry_after:.0f} s",
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
        self.limits, self.slots = limits, slots
        self.active: list[Request] = []  # admitted, in FIFO order (engine thread)
        self.free_slots = deque(range(slots))
        self.costs = Costs()  # row-steps per finished request, by search setting
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
            request.cost = self.costs.of(request.params)
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
        """Refuse (DeadlineUnmet) a request expected to finish past its deadline behind the admitted work. A request
        with nothing ahead of it is always admitted: only its own deadline can stop it then."""
        if self._requests == 0 or request.params.timeout_s is None:
            return
        timeout, pace = request.params.timeout_s, self.row_steps_per_s
        left = request.deadline - time.monotonic()
        if pace <= 0:  # nothing measured yet: one request at a time until the first step gives a pace
            raise DeadlineUnmet(None, timeout, 1.0)
        need, ahead = self._estimate(request)
        if need * DEADLINE_MARGIN <= left:
            return
        # On a retry the deadline starts afresh: wait until the work it shares the machine with has shrunk enough
        retry = self._seconds(need - timeout / DEADLINE_MARGIN)
        raise DeadlineUnmet(need, timeout, retry, self.expected(request), ahead, pace)

    def expected(self, request: Request) -> Expected:
        """Row-steps `request` is expected to run in all, and the rule behind the number (costs.py)."""
        cost = request.cost
        if cost is not None and cost.expected is not None:
            basis = f"p{QUANTILE * 100:.0f} of the last {len(cost.samples)} finished requests with its settings"
            return Expected(min(cost.expected, request.max_row_steps), basis)
        what = "node" if request.search is not None else "wave"
        return Expected(request.row_steps_left, f"a full {what}: nothing learned for its settings yet")

    def expected_left(self, request: Request) -> int:
        """Row-steps `request` is expected to run from now: its expected total less what it ran; once past that (a
        slow one), what its current wave or node has left, at most the expected total again. Before anything is
        learned, its current wave or node at full depth (a best-effort read of the engine thread's arrays)."""
        cost = request.cost
        if cost is None or cost.expected is None:
            return request.row_steps_left
        total = min(cost.expected, request.max_row_steps)
        left = total - request.row_steps
        if left <= 0:
            left = min(request.row_steps_left, total)
        return max(0, min(left, request.max_row_steps - request.row_steps))

    def estimate(self, request: Request, own: int | None = None) -> float:
        """Seconds until `request` would finish under fair sharing with the admitted work, at the measured pace
        (module docstring); `own`: its row-steps left, when not what it is expected to run (e.g. a next wave)."""
        return self._estimate(request, own)[0]

    def _estimate(self, request: Request, own: int | None = None) -> tuple[float, int]:
        """(estimate's seconds, the row-steps the other admitted requests are expected to run)."""
        pace = self.row_steps_per_s
        own = self.expected_left(request) if own is None else own
        by_tenant: dict[str, list[int]] = {}
        rows, ahead = request.rows, 0
        for r in list(self.active) + list(self._inbox):
            if r is not request:
                w = self.expected_left(r)
                by_tenant.setdefault(r.tenant, []).append(w)
                rows, ahead = rows + r.rows, ahead + w
        mine = own + sum(min(w, own) for w in by_tenant.pop(request.tenant, []))
        shared = mine + sum(min(sum(works), mine) for works in by_tenant.values())
        # its supervision steps, one after another, after waiting for a carry slot
        steps = self._slot_wait(request) + -(-own // min(request.rows, self.slots))
        step_s = min(rows, self.limits.max_batch) / pace  # at the batch the admitted work fills
        return max(shared / pace, steps * step_s), ahead

    def _slot_wait(self, request: Request) -> float:
        """Engine steps until a carry slot frees for a request holding none, when none is free: rows that started
        keep their slot until they end or their request does. The first to free is the slot holder with the fewest
        steps left (its request's expected steps, if fewer); holders share the batch, so their steps come once every
        holders / max_batch engine steps."""
        if len(self.free_slots) or (request.slot >= 0).any():
            return 0.0
        held, soonest = 0, math.inf
        for r in list(self.active):
            holding = r.slot >= 0
            n = int(holding.sum())
            if n:
                held += n
                ends = int((r.params.steps - r.steps_done[holding]).min())
                soonest = min(soonest, ends, -(-self.expected_left(r) // r.rows))
        return 0.0 if not held else soonest * max(1.0, held / self.limits.max_batch)

    def work(self) -> int:
        """Row-steps the admitted requests are expected to run from now (a best-effort read of the engine thread's
        arrays)."""
        return sum(self.expected_left(r) for r in list(self.active) + list(self._inbox))

    @staticmethod
    def _seconds(s: float) -> float:
        return float(min(MAX_RETRY_AFTER, max(1, math.ceil(s))))

    def retry_after(self) -> float:
        """Seconds until the queued work would be done at the recent pace, as expected (1 when not measured yet)."""
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
