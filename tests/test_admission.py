"""Admission by expected cost, and an answer by the deadline (issue 34, item 3), on the fixed-pace runner.

- A request is admitted by what requests with its settings are expected to run (p90 of the recent ones, learned
  online), not by its worst case: a burst the worst-case rule refused is admitted and finishes.
- The 429 states the rule it applied, and its Retry-After comes from the same expected cost.
- A search still running at its deadline answers with the best it has (200, `finish: "deadline"`); one that asks for
  a strict deadline gets the 504.
- The estimate counts the wait for a carry slot: rows that started keep theirs.
"""

import asyncio

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from live import PUZZLE, LiveServer, app_for, error_of, solver, wait_ready
from paced import PacedRunner, pace

from engine.runtime import Engine, Limits, Overloaded, Request, Scheduler
from engine.runtime.costs import MIN_SAMPLES, Cost
from engine.search import SearchParams
from engine.tasks import get_task
from server.main import uvicorn_options
from server.settings import Settings

SUDOKU = get_task("sudoku")


class Confident(PacedRunner):
    """A GPU's pace (20 ms a step whatever its rows), and every row confident (q = +5) from its second step on: a
    search of 8 rows x 16 steps with `early_exit: confident` runs 16 row-steps, of a worst case of 128."""

    row_s, step_s = 0.0, 0.02

    def collect(self, launched):
        out = super().collect(launched)
        batch, _ = launched
        out.q = np.where(batch.steps >= 1, 5.0, -5.0).astype(np.float32)
        return out


def test_a_burst_the_worst_case_refused_is_admitted_and_finishes(ckpt_dir, monkeypatch):
    """Once 8 requests taught the engine that this search runs 16 row-steps, 20 at once fit a 3 s deadline (20 x 16
    row-steps, a step of 16 rows every 20 ms: 0.4 s). Charged their worst case, 128 each, about 8 fit."""
    import server.models

    monkeypatch.setattr(server.models, "Runner", Confident)
    search = {"rollouts": 8, "steps": 16, "early_exit": "confident"}
    app = app_for(ckpt_dir, max_rollouts=8, max_steps=16, max_batch=16, max_queued_requests=64)

    async def run(url: str) -> tuple[list, list]:
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=20)) as http:
            learned = []
            for i in range(8):
                learned.append(await http.post("/solve", json={"puzzle": PUZZLE, "search": {**search, "seed": i}}))
            bodies = [{"puzzle": PUZZLE, "search": {**search, "seed": 100 + i}, "timeout_s": 3} for i in range(20)]
            return learned, await asyncio.gather(*(http.post("/solve", json=b) for b in bodies))

    with LiveServer(app, **uvicorn_options(Settings())) as live:
        learned, burst = asyncio.run(run(live.url))
        tiny = next(iter(app.state.models.solvers.values()))
        cost = tiny.engine.scheduler.costs.of(tiny.defaults.replace(**search))  # the settings as /solve makes them
    assert [r.json()["row_steps"] for r in learned] == [16] * 8 and cost.expected == 16
    assert [r.status_code for r in burst] == [200] * 20, [error_of(r)["message"] for r in burst if r.status_code != 200]
    assert [r.json()["finish"] for r in burst] == ["early_exit"] * 20


def test_a_refusal_states_its_rule_and_retries_after_the_expected_work():
    s = Scheduler(Limits(max_batch=8), slots=16)
    s.row_steps_per_s = 40.0
    params = SearchParams(rollouts=4, steps=100, early_exit="verified")  # worst case 400 row-steps a wave
    for _ in range(MIN_SAMPLES):
        s.costs.of(params).observe(40)
    s.admit(Request(SUDOKU, SUDOKU.encode(PUZZLE), params))
    s.admit(Request(SUDOKU, SUDOKU.encode(PUZZLE), params.replace(seed=1)))
    # 40 + 40 + 40 row-steps expected at 40/s: 3 s, x 1.25 within 5 s (charged a full wave each: 30 s)
    s.admit(Request(SUDOKU, SUDOKU.encode(PUZZLE), params.replace(seed=2, timeout_s=5)))
    with pytest.raises(Overloaded) as e:  # 4 s x 1.25 past a 3 s deadline
        s.admit(Request(SUDOKU, SUDOKU.encode(PUZZLE), params.replace(seed=3, timeout_s=3)))
    message = str(e.value)
    for part in (
        "cannot finish within its 3 s deadline",
        "expected to run 40 row-steps (p90 of the last 8 finished requests with its settings)",
        "120 expected row-steps of admitted work at the measured 40 row-steps/s: about 4.0 s",
        "x 1.25 within the deadline",
    ):
        assert part in message, message
    assert e.value.retry_after == 2  # until the shared work fits: 4 s - 3 / 1.25 s
    assert s.retry_after() == 3  # the caps' Retry-After: the 120 expected row-steps at 40/s


def test_the_expected_cost_is_a_high_quantile_once_enough_requests_finished():
    cost = Cost()
    for n in range(1, MIN_SAMPLES):
        cost.observe(n * 10)
    assert cost.expected is None  # too few: admission charges a full wave or node
    for n in range(MIN_SAMPLES, 11):
        cost.observe(n * 10)
    assert cost.expected == 90  # p90 of 10, 20, ..., 100


def test_a_search_cut_by_its_deadline_counts_as_its_worst_case(tiny_model):
    """Counted at what it ran, an overload would teach admission that requests are cheap."""
    eng = Engine(PacedRunner(tiny_model, max_batch=8), SUDOKU, Limits(max_batch=8))
    cut = eng.submit(Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=2, steps=1000, timeout_s=0.1)))
    eng.run_until_idle()
    assert cut.future.result().finish == "deadline" and cut.row_steps < 2000
    assert list(cut.cost.samples) == [2000]
    whole = eng.submit(Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=2, steps=3)))
    eng.run_until_idle()
    assert list(whole.cost.samples) == [6]


@pytest.fixture
def slow_steps(monkeypatch):
    pace(monkeypatch)
    monkeypatch.setattr(PacedRunner, "row_s", 0.0)
    monkeypatch.setattr(PacedRunner, "step_s", 0.05)


def test_a_search_past_its_deadline_answers_its_best_and_a_strict_one_gets_504(ckpt_dir, slow_steps):
    with TestClient(app_for(ckpt_dir, max_steps=64)) as c:
        wait_ready(c)
        search = {"rollouts": 2, "steps": 64, "early_exit": "off"}  # 3.2 s at 50 ms a step
        r = c.post("/solve", json={"puzzle": PUZZLE, "search": search, "timeout_s": 0.5})
        assert r.status_code == 200, r.text
        body = r.json()
        # the paced runner's grid breaks the rules
        assert body["finish"] == "deadline" and body["verified"] is False and body["fault"]
        assert 0 < body["steps"] < 64 and body["row_steps"] == 2 * body["steps"] and body["rollouts"] == 2
        r = c.post("/solve", json={"puzzle": PUZZLE, "search": {**search, "strict_deadline": True}, "timeout_s": 0.5})
        assert r.status_code == 504 and error_of(r)["type"] == "deadline_exceeded"
        assert not solver(c).engine.busy


def test_the_deadline_estimate_counts_the_wait_for_a_carry_slot(tiny_model):
    """Two carry slots, both held by tenant a's rows for 19 more steps: tenant b's one-row request cannot start
    before they end (fair share would give it a row at once, were a slot free). Estimated without the wait: 2 steps;
    it takes 21."""
    runner = PacedRunner(tiny_model, max_batch=2, slots=2)
    eng = Engine(runner, SUDOKU, Limits(max_batch=2))
    eng.submit(Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=2, steps=20), tenant="a"))
    eng.step()
    eng.scheduler.row_steps_per_s = 2.0  # a step of 2 rows a second: the estimate counts steps
    b = Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=1, steps=2), tenant="b")
    estimate = eng.scheduler.estimate(b)
    eng.submit(b)
    start = runner.steps
    while not b.future.done():
        eng.step()
    took = runner.steps - start
    assert took == 21 and estimate >= 0.9 * took, (estimate, took)
    eng.run_until_idle()
