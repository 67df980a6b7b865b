"""The engine loop: one thread owns the model; every iteration runs one supervision step for the scheduled rows.

    drop     requests cancelled (their rows leave now) or past their deadline (they answer with their best so far)
    pick     rows of many requests, fairly shared across tenants and requests (scheduler)
    launch   one step on the runner
    update   rows' answers and q; early exit when a row verifies (or is confident); finished requests are selected
             and resolved

Pipelined (the CUDA default; issue 15): the step launched in this iteration stays in flight while the previous one
is collected and updated, so the device computes step t+1 while the host books step t. Requests in flight are not
picked again until their results are in, so each request still sees its steps one after another.

Continuous batching at supervision-step granularity: new rows join at any boundary with a reset carry, finished rows
leave. `submit` and `cancel` are safe from any thread; `run_until_idle` drives the loop in the calling thread (for
evaluation), `start` in a background thread (for the server).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.models import GRAM
from engine.runtime.request import (
    Cancelled,
    DeadlineExceeded,
    InvalidRequest,
    Request,
    RequestError,
    SearchResult,
    Timing,
)
from engine.runtime.runner import Batch, Launched, Runner, StepResult
from engine.runtime.scheduler import Limits, Scheduler
from engine.search import Rows, SearchParams, Selection, select, selection_of
from engine.search.commit import Final
from engine.tasks import Task

log = logging.getLogger(__name__)
PACE_DECAY = 0.9  # smoothing of the measured row-steps/s used for Retry-After


@dataclass
class Stats:
    """Counters and gauges from the engine's own state (read by the server's metrics)."""

    steps: int = 0  # engine iterations that ran a batch
    row_steps: int = 0  # rows x supervision steps run
    padded_row_steps: int = 0  # ... including bucket padding (what the device computed)
    rows_started: int = 0
    requests_finished: int = 0
    busy_s: float = 0.0
    running_rows: int = 0  # rows in the last step (0 once idle)
    last_step_s: float = 0.0
    last_step_at: float = 0.0  # time.monotonic() at the end of the last step (a watchdog reads it)


class Engine:
    def __init__(self, runner: Runner, task: Task, limits: Limits | None = None, pipeline: bool | None = None):
        limits = limits or Limits(max_batch=runner.max_batch)
        if limits.max_batch > runner.max_batch:
            raise ValueError(f"limits.max_batch {limits.max_batch} exceeds the runner's {runner.max_batch}")
        self.runner, self.task = runner, task
        self.scheduler = Scheduler(limits, runner.slots)
        self.stats = Stats()
        self.pipeline = runner.device.type == "cuda" if pipeline is None else pipeline
        self._flight: deque[tuple[list[tuple[Request, np.ndarray]], Launched, float]] = deque()  # launched steps
        self._landed = 0.0  # perf_counter() when the last step's results came in
        self.on_step: list[Callable[[int, int, float], None]] = []  # (rows, bucket rows, seconds)
        self.on_resolve: list[Callable[[Request, SearchResult | None, RequestError | None], None]] = []
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = False

    # -- any thread -------------------------------------------------------------------------------------------------

    @property
    def selectors(self) -> set[str]:
        """The selectors this checkpoint can serve."""
        names = {"q", "vote", "verifier"}
        if isinstance(self.runner.model, GRAM):
            names |= {"prior", "likelihood"} | ({"lprm"} if self.runner.model.config.lprm else set())
        return names

    def submit(self, request: Request) -> Request:
        """Admit a request (raises Overloaded, InvalidRequest/TooLarge or EngineStopped at once) and return it;
        await `request.future` for the SearchResult."""
        if len(request.puzzle) != self.task.seq_len:
            raise InvalidRequest(
                f"puzzle has {len(request.puzzle)} tokens; task {self.task.name} needs {self.task.seq_len}"
            )
        # A token or puzzle id out of range would trip a device-side assert, which inside a CUDA graph replay kills
        # the context for good: check here, for library callers too (the HTTP codec checks its own).
        config = self.runner.model.config
        tokens = np.asarray(request.puzzle)
        if tokens.min(initial=0) < 0 or tokens.max(initial=0) >= config.vocab_size:
            bad = int(np.flatnonzero((tokens < 0) | (tokens >= config.vocab_size))[0])
            raise InvalidRequest(f"puzzle token {int(tokens[bad])} at cell {bad} is outside 0..{config.vocab_size - 1}")
        if not 0 <= request.puzzle_id < config.num_puzzle_identifiers:
            raise InvalidRequest(
                f"puzzle id {request.puzzle_id} is outside 0..{config.num_puzzle_identifiers - 1} for this checkpoint"
            )
        if request.params.selector not in self.selectors:
            raise InvalidRequest(
                f"selector {request.params.selector!r} is not available for this checkpoint; "
                f"use one of {sorted(self.selectors)}"
            )
        self.scheduler.admit(request)
        self._wake.set()
        return request

    def cancel(self, request: Request) -> None:
        request.cancel()
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="trm-engine", daemon=True)
        self._thread.start()

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; finish (drain) or cancel the admitted ones; stop the loop thread."""
        self.scheduler.draining = True
        if not drain:
            for req in list(self.scheduler.active) + list(self.scheduler._inbox):
                req.cancel()
        self._wake.set()
        if self._thread is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.busy and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.01)
            self._stop = True
            self._wake.set()
            self._thread.join()
            self._thread = None

    @property
    def busy(self) -> bool:
        return self.scheduler.queued[0] > 0

    # -- the loop ---------------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop:
            try:
                worked = self.step()
            except Exception as e:  # a failed step fails its requests, never the loop
                log.exception("engine step failed")
                self._flight.clear()
                for req in list(self.scheduler.active):
                    self._fail(req, RequestError(f"engine error: {type(e).__name__}: {e}"))
                continue
            if not worked:
                self._wake.wait(0.05)
                self._wake.clear()

    def warm_up(self, steps: int = 2) -> float:
        """Run a few steps before serving (issue 24): one at every bucket size, then `steps` at the full batch, so the
        allocator (and on CUDA the kernels) are warm and deadline admission knows the pace from the first request
        instead of taking one request at a time until it does. Call it before `start`; it leaves nothing in `stats`.
        Returns the measured pace (row-steps per second at the full batch)."""
        full = min(self.scheduler.limits.max_batch, self.scheduler.limits.max_rows)
        blank = np.zeros(self.task.seq_len, np.int64)  # any in-vocabulary tokens do
        for rows in [r for r in self.runner.buckets if r < full] + [full]:
            self.submit(Request(self.task, blank, SearchParams(rollouts=rows, steps=1)))
            self.run_until_idle()
        start = time.perf_counter()
        self.submit(Request(self.task, blank, SearchParams(rollouts=full, steps=steps)))
        self.run_until_idle()
        pace = full * steps / (time.perf_counter() - start)
        self.stats, self.scheduler.row_steps_per_s = Stats(), pace
        return pace

    def run_until_idle(self) -> None:
        while self.busy:
            self.step()

    def step(self) -> bool:
        """One iteration; False when there was nothing to run."""
        sched = self.scheduler
        for req in sched.take_inbox():
            if req.search is not None and req.params.policy == "uniform" and req.final is None:
                req.final = req.search.uniform()  # the baseline runs no rows
            if req.final is not None:
                self._finish(req, req.final)
        now = time.monotonic()
        in_flight = {id(req) for plan, _, _ in self._flight for req, _ in plan}
        for req in list(sched.active):
            if id(req) in in_flight:
                continue  # dropped once its step is in
            if req.cancelled or req.future.cancelled():
                self._fail(req, Cancelled("cancelled"))
            elif now > req.deadline:
                self._expire(req)
        plan = sched.pick(in_flight, self.stats.steps % 2 if self.pipeline else None)
        if plan:
            batch, start = self._batch(plan), time.perf_counter()
            self._flight.append((plan, self.runner.launch(batch), start))
        elif not self._flight:
            self.stats.running_rows = 0
            return False
        while len(self._flight) > (1 if self.pipeline and plan else 0):  # keep the step just launched in flight
            self._land(*self._flight.popleft())
        return True

    def _land(self, plan: list[tuple[Request, np.ndarray]], step: Launched, launched: float) -> None:
        out = self.runner.collect(step)
        now = time.perf_counter()
        # Wall time since the later of its launch and the previous landing: with steps overlapping, the sum over
        # steps stays the time the engine spent, so the measured pace stays true.
        self._account(sum(len(rows) for _, rows in plan), now - max(launched, self._landed))
        self._landed = now
        self._update(plan, out)

    def _batch(self, plan: list[tuple[Request, np.ndarray]]) -> Batch:
        now = time.monotonic()
        for req, _ in plan:
            if req.started is None:
                req.started = now
        counts = [len(rows) for _, rows in plan]
        per_row = lambda values, dtype: np.repeat(np.array(values, dtype), counts)  # noqa: E731
        gather = lambda name: np.concatenate([getattr(req, name)[rows] for req, rows in plan])  # noqa: E731
        steps = gather("steps_done")
        # commit search needs the per-cell distributions of a node's last step
        last = per_row([req.params.steps - 1 if req.search is not None else -1 for req, _ in plan], np.int64)
        self.stats.rows_started += int((steps == 0).sum())
        return Batch(
            slots=gather("slot"),
            fresh=steps == 0,
            inputs=gather("inputs"),
            puzzle_ids=per_row([req.puzzle_id for req, _ in plan], np.int64),
            seeds=gather("seeds"),
            steps=steps,
            sigma_z=per_row([req.params.sigma_z for req, _ in plan], np.float32),
            sigma_y=per_row([req.params.sigma_y for req, _ in plan], np.float32),
            want_probs=bool((steps == last).any()),
        )

    def _account(self, rows: int, elapsed: float) -> None:
        s = self.stats
        bucket = self.runner.padded(rows)
        s.steps += 1
        s.row_steps += rows
        s.padded_row_steps += bucket
        s.busy_s += elapsed
        s.running_rows, s.last_step_s, s.last_step_at = rows, elapsed, time.monotonic()
        pace = rows / max(elapsed, 1e-9)
        old = self.scheduler.row_steps_per_s
        self.scheduler.row_steps_per_s = pace if old == 0 else PACE_DECAY * old + (1 - PACE_DECAY) * pace
        for hook in self.on_step:
            hook(rows, bucket, elapsed)

    def _update(self, plan: list[tuple[Request, np.ndarray]], out: StepResult) -> None:
        """Book the step's rows into their requests, check early exits, and resolve what finished. The rule verifier
        runs once over every row that needs it (one vectorised call per step, not one per request: issue 15)."""
        answers = np.empty_like(out.answers)  # in the puzzles' frames
        spans, i = [], 0
        for req, rows in plan:
            j = i + len(rows)
            spans.append((req, rows, slice(i, j)))
            req.steps_done[rows] += 1
            req.row_steps += len(rows)
            last = req.steps_done[rows] >= req.params.steps
            answers[i:j] = req.answers[rows] = req.unmap(rows, out.answers[i:j])
            req.q[rows] = out.q[i:j]
            if req.search is not None and last.any():
                probs = req.unmap_probs(rows[last], out.probs[i:j][last])
                req.probs = req.probs if req.probs is not None else np.zeros((req.rows, *probs.shape[1:]), np.float32)
                req.probs[rows[last]] = probs
            if out.value is not None:
                req.value = req.value if req.value is not None else np.zeros(req.rows, np.float32)
                req.value[rows] = out.value[i:j]
            if out.log_prior is not None:
                req.log_prior = req.log_prior if req.log_prior is not None else np.zeros(req.rows, np.float32)
                req.log_prior[rows] += out.log_prior[i:j]
            i = j
            self.scheduler.free_rows(req, rows[last])
            for d in req.record_steps:
                if d not in req.history and (req.steps_done >= d).all():
                    req.history[d] = req.row_view()
        verified = self._verify_rows(spans, answers)
        for req, rows, span in spans:
            if req.listener is not None:
                self._notify(req)
            if self._early_exit(req, rows, verified[span]):
                continue
            if (req.steps_done >= req.params.steps).all():
                if req.search is not None:
                    self._advance(req)
                elif req.node + 1 < req.params.wave_limit:
                    self._next_wave(req)
                else:
                    self._resolve(req, "completed")

    def _notify(self, req: Request) -> None:
        """Tell a watching caller about this step (before it resolves, so its last step comes before its result)."""
        try:
            req.listener(req)
        except Exception:  # a broken listener must not fail the step of every request in the batch
            log.exception("progress listener failed; detached", extra={"fields": {"request": req.id}})
            req.listener = None

    def _exit_policy(self, req: Request) -> str:
        return "verified" if req.search is not None else req.params.early_exit  # commit search stops when solved

    def _verify_rows(self, spans: list[tuple[Request, np.ndarray, slice]], answers: np.ndarray) -> np.ndarray:
        """bool [n]: each row of the step whose request exits early on a verified answer passes the rule verifier
        (False for the other rows)."""
        ok = np.zeros(len(answers), bool)
        if not self.task.has_rule_verifier:
            return ok
        check = np.zeros(len(answers), bool)
        puzzles = np.empty_like(answers)
        for req, _, span in spans:
            if self._exit_policy(req) == "verified":
                check[span], puzzles[span] = True, req.puzzle
        if check.all():
            return self.task.verify_batch(puzzles, answers)
        if check.any():
            ok[check] = self.task.verify_batch(puzzles[check], answers[check])
        return ok

    def _early_exit(self, req: Request, rows: np.ndarray, verified: np.ndarray) -> bool:
        """Resolve `req` now if one of the rows just run gives an answer good enough to stop (beyond the papers)."""
        policy = self._exit_policy(req)
        if policy == "off":
            return False
        if policy == "verified" and self.task.has_rule_verifier:
            ok = verified
        else:  # "confident", or "verified" on a task without a rule verifier
            ok = 1 / (1 + np.exp(-req.q[rows].astype(np.float64))) >= req.params.confidence
        if not ok.any():
            return False
        winner = int(rows[ok][np.argmax(req.q[rows][ok])])
        if req.search is not None:
            self._finish(req, Final(req.answers[winner].copy(), "verified", float(req.q[winner])))
        else:
            self._resolve(req, "early_exit", winner=winner)
        return True

    def _advance(self, req: Request) -> None:
        """Commit search: a node's rows are done; expand it and start the next node, or finish."""
        search = req.search
        search.row_steps = req.row_steps
        step = search.expanded(req.answers, req.probs, req.q)  # no row verified: `_early_exit` checked each step
        if isinstance(step, Final):
            self._finish(req, step)
            return
        self.scheduler.free_rows(req, np.arange(req.rows))
        req.start_node(step)

    def _next_wave(self, req: Request) -> None:
        """Rollouts: every row of this wave ran without an early exit; start K fresh rows on the puzzle, unless at
        the measured pace they could not finish before the deadline: then answer now with the best row so far."""
        wave = req.rows * req.params.steps
        if self.scheduler.row_steps_per_s > 0 and time.monotonic() + self.scheduler.estimate(req, wave) > req.deadline:
            self._resolve(req, "completed")
            return
        req.past.append(req.row_view())
        self.scheduler.free_rows(req, np.arange(req.rows))
        req.start_node(req.puzzle)

    def _expire(self, req: Request) -> None:
        """Its deadline passed. A search is anytime: it answers with the best it has (finish "deadline", verified as
        it is), unless it asked for a strict deadline or no row of it has run a step yet: then it fails (HTTP 504)."""
        started = np.flatnonzero(req.steps_done > 0)
        ran = len(started) or req.past or (req.search is not None and req.search.nodes > 0)
        if req.params.strict_deadline or not ran:
            self._fail(req, DeadlineExceeded(f"deadline of {req.params.timeout_s} s passed"))
        elif req.search is None:
            self._resolve(req, "deadline")
        else:  # the best row of the nodes expanded, or of the current node's rows that ran
            q, answer = req.search.best
            if len(started) and req.q[started].max() > q:
                i = started[np.argmax(req.q[started])]
                q, answer = float(req.q[i]), req.answers[i].copy()
            self._finish(req, Final(answer, "deadline", q))

    def _finish(self, req: Request, final: Final) -> None:
        """Resolve a commit search with its answer (a row's, or a grid filled by commits)."""
        search, answer = req.search, final.answer
        verified = bool(self.task.verify(req.puzzle, answer)) if self.task.has_rule_verifier else None
        agreement = float((req.answers == answer).all(axis=1).mean()) if req.row_steps else 0.0
        confidence = float(1 / (1 + np.exp(-final.q))) if np.isfinite(final.q) else 1.0 if verified else 0.0
        rows = Rows(answer[None].copy(), np.array([final.q], np.float32), np.array([bool(verified)]))
        self._deliver(
            req,
            SearchResult(
                request_id=req.id,
                answer=answer,
                selection=Selection(0, "commit", confidence, agreement),
                verified=verified,
                rows=rows,
                rollouts=req.rows,
                row_steps=req.row_steps,
                steps=req.params.steps,
                finish=final.finish,
                timing=self._timing(req),
                nodes=search.nodes,
                backtracks=search.backtracks,
                committed=search.committed,
            ),
        )

    # -- resolution -------------------------------------------------------------------------------------------------

    def _resolve(self, req: Request, finish: str, winner: int | None = None) -> None:
        started = np.flatnonzero(req.steps_done > 0)
        earlier = sum(len(r.q) for r in req.past)  # rows of earlier waves come first
        rows = Rows.concat([*req.past, req.row_view(started)])
        if self.task.has_rule_verifier:
            rows.verified = self.task.verify_batch(np.broadcast_to(req.puzzle, rows.answers.shape), rows.answers)
        try:
            if winner is not None:
                selection = selection_of(rows, earlier + int(np.searchsorted(started, winner)), "early_exit")
            else:
                selection = select(rows, req.params.selector, self.likelihood_fn(req))
        except ValueError as e:
            self._fail(req, RequestError(str(e)))
            return
        answer = rows.answers[selection.index]
        result = SearchResult(
            request_id=req.id,
            answer=answer,
            selection=selection,
            verified=bool(rows.verified[selection.index]) if rows.verified is not None else None,
            rows=rows,
            rollouts=earlier + len(started),
            row_steps=req.row_steps,
            steps=int(req.steps_done.max()),
            finish=finish,
            timing=self._timing(req),
            history=req.history,
            waves=req.node + 1,
        )
        self._deliver(req, result)

    @staticmethod
    def _timing(req: Request) -> Timing:
        now = time.monotonic()
        started = req.started if req.started is not None else now
        return Timing(started - req.submitted, now - started, now - req.submitted)

    def _deliver(self, req: Request, result: SearchResult) -> None:
        self.scheduler.remove(req)
        self.stats.requests_finished += 1
        if req.cost is not None:  # what its settings cost, for admission (costs.py: one cut short counts its worst)
            req.cost.observe(req.row_steps if result.finish != "deadline" else req.max_row_steps)
        for hook in self.on_resolve:  # before the caller hears of it: its quota and metrics are booked by then
            hook(req, result, None)
        # Check and claim in one atomic call: a client cancel between a `cancelled()` check and the set would
        # raise here, in the loop, whose handler then fails every active request (issue 16).
        if req.future.set_running_or_notify_cancel():
            req.future.set_result(result)

    def _fail(self, req: Request, error: RequestError) -> None:
        self.scheduler.remove(req)
        if req.cost is not None and isinstance(error, DeadlineExceeded):
            req.cost.observe(req.max_row_steps)
        for hook in self.on_resolve:
            hook(req, None, error)
        if req.future.set_running_or_notify_cancel():  # atomic, as in _resolve
            req.future.set_exception(error)

    def likelihood_fn(self, req: Request):
        """Scores distinct candidates by the GRAM ELBO for the `likelihood` selector (None for TRM checkpoints)."""
        if not isinstance(self.runner.model, GRAM):
            return None
        return lambda candidates: self.runner.likelihood(
            req.puzzle, req.puzzle_id, candidates, req.params.seed, req.params.steps
        )
