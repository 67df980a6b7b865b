"""Reliability (issue 16): deadline-aware admission, the body limit on bytes received, parse errors named, no host
paths, strict types, idle connections closed, unsolvable puzzles refused, the resolve/cancel race, graceful shutdown
on a real SIGTERM, and a CPU-sized chaos/load run. Tiny random models built here; nothing read from ../shared/."""

import threading
import time
from concurrent.futures import Future

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from engine.checkpoint import save_checkpoint
from engine.models import TRM, preset
from engine.runtime import Engine, Limits, Overloaded, Request, Runner, Scheduler
from engine.search import SearchParams
from engine.tasks import get_task
from server.app import create_app
from server.settings import Settings

SUDOKU = get_task("sudoku")
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
SMALL = dict(max_rollouts=4, max_steps=4, max_batch=8, max_generate_count=4, max_generate_samples=64, generate_batch=16)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", TRM(preset("sudoku-tiny")), "sudoku")


def app_for(*checkpoints, **overrides):
    return create_app(Settings(checkpoints=[str(c) for c in checkpoints], **{**SMALL, **overrides}))


def wait_ready(client, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


@pytest.fixture
def client(ckpt_dir):
    with TestClient(app_for(ckpt_dir)) as c:
        wait_ready(c)
        yield c


def solver(client):
    return next(iter(client.app.state.models.solvers.values()))


def metric(text: str, name: str, **labels) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(f"{name}{labels} not in the exposition")


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    return body["error"]


# -- item 4: the resolve/cancel race -----------------------------------------------------------------------------------


class RacyFuture(Future):
    """Once armed, the client cancels right after the engine checked `cancelled()`: the racy moment."""

    armed = False

    def cancelled(self) -> bool:
        was = super().cancelled()
        if self.armed:
            self.armed = False
            self.cancel()
        return was

    def set_running_or_notify_cancel(self) -> bool:  # the same client, for an engine that claims atomically
        if self.armed:
            self.armed = False
            self.cancel()
        return super().set_running_or_notify_cancel()


def test_a_cancel_between_check_and_set_fails_no_other_request(tiny_model):
    eng = Engine(Runner(tiny_model, max_batch=8, static=False), SUDOKU, Limits(max_batch=8))
    racy = Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=1, steps=1), future=RacyFuture())
    other = Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=1, steps=3))
    remove = eng.scheduler.remove

    def remove_then_arm(req):  # _resolve/_fail remove the request, then look at its future
        remove(req)
        if req is racy:
            racy.future.armed = True

    eng.scheduler.remove = remove_then_arm
    eng.submit(racy)
    eng.submit(other)
    eng.start()
    try:
        result = other.future.result(timeout=30)  # before the fix: RequestError("engine error: InvalidStateError")
    finally:
        eng.shutdown(drain=False, timeout=5)
    assert result.row_steps == 3 and racy.future.cancelled()


# -- item 1: deadline-aware admission ----------------------------------------------------------------------------------


def sudoku_request(rollouts=4, steps=10, timeout_s=None) -> Request:
    return Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=rollouts, steps=steps, timeout_s=timeout_s))


def test_admission_refuses_what_cannot_finish_before_its_deadline():
    s = Scheduler(Limits(max_batch=8), slots=8)
    s.admit(sudoku_request(rollouts=4, steps=100, timeout_s=0.001))  # alone: always admitted (its deadline decides)
    with pytest.raises(Overloaded) as e:  # queued work ahead, and no pace measured yet
        s.admit(sudoku_request(timeout_s=60))
    assert e.value.reason == "deadline" and e.value.retry_after == 1
    s.row_steps_per_s = 40.0  # 400 row-steps ahead: 10 s at this pace
    with pytest.raises(Overloaded) as e:
        s.admit(sudoku_request(rollouts=4, steps=10, timeout_s=5))  # (400 + 40) / 40 = 11 s > 5 s
    # retry once what is ahead fits: 10 s ahead - (5 / 1.25 - 1 s own) = 7 s
    assert e.value.reason == "deadline" and e.value.retry_after == 7 and "5 s deadline" in str(e.value)
    s.admit(sudoku_request(rollouts=4, steps=10, timeout_s=60))  # 11 s x 1.25 < 60 s
    s.admit(sudoku_request(rollouts=4, steps=10))  # no deadline: only the caps apply
    assert s.queued == (3, 12)
    assert s.retry_after() == 12  # 480 row-steps at 40/s, no longer capped at 60 s when the truth is longer


def test_a_deadline_refusal_is_429_with_retry_after_and_counted(client):
    eng = solver(client).engine
    release, run = threading.Event(), eng.runner.run
    eng.runner.run = lambda batch: (release.wait(30), run(batch))[1]  # the engine is busy with a long request
    try:
        eng.scheduler.row_steps_per_s = 4.0
        eng.submit(sudoku_request(rollouts=4, steps=4, timeout_s=60))  # 16 row-steps ahead: 4 s
        r = client.post("/solve", json={"puzzle": PUZZLE, "search": {"rollouts": 4, "steps": 4}, "timeout_s": 2})
        assert r.status_code == 429 and error_of(r)["type"] == "overloaded" and "deadline" in error_of(r)["message"]
        assert int(r.headers["retry-after"]) >= 2
        text = client.get("/metrics").text
        assert metric(text, "trm_admission_rejections_total", model="tiny", reason="deadline") == 1
    finally:
        release.set()
        eng.runner.run = run
