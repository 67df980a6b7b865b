"""Quotas that hold (issue 34, item 2): every engine request an HTTP request makes reserves its worst case from its
key's row-step bucket at admission, under the key's tenant, and gets back what it did not run when it resolves. The
paths: /solve, streamed /solve, each ARC variant, each /generate grid. Under concurrency a key never spends more than
its budget plus one request's reservation (it spent 6.4 times its budget when charged only at the end).

Each test looks at the bucket while the engine's steps are held, so the admitted requests are still in progress: a
path that skipped the reservation (charging at the end, as before) leaves the bucket full there."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from live import PUZZLE, app_for, error_of, metric, solver, wait_ready
from paced import PacedRunner, pace

from engine.checkpoint import main as convert
from engine.runtime.request import worst_row_steps

OFFICIAL = Path(__file__).parent / "fixtures" / "official" / "arc"
SECRET = "sk-alice-quota"


def keys_file(tmp_path: Path, row_steps_per_minute: int) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(f'[[keys]]\nname = "alice"\nkey = "{SECRET}"\nrow_steps_per_minute = {row_steps_per_minute}\n')
    return path


AUTH = {"Authorization": f"Bearer {SECRET}"}


def held(client: TestClient, send, admitted: int, answered=lambda: 0):
    """`send()` in a thread while the engine's steps wait, until `admitted` engine requests are in or answered
    (`answered()`: how many were): returns (the requests in, the key's bucket then, what `send` returned)."""
    eng = solver(client).engine
    quota = client.app.state.keyring.quotas["alice"]
    release, launch = threading.Event(), eng.runner.launch
    eng.runner.launch = lambda batch: (release.wait(30), launch(batch))[1]
    out: list = []
    sender = threading.Thread(target=lambda: out.append(send()))
    sender.start()
    try:
        end = time.monotonic() + 30
        while eng.scheduler.queued[0] + answered() < admitted and sender.is_alive() and time.monotonic() < end:
            time.sleep(0.01)
        requests = list(eng.scheduler.active) + list(eng.scheduler._inbox)
        tokens = quota.tokens  # as the last reservation left it (the bucket refills lazily)
    finally:
        release.set()
        sender.join(60)
        eng.runner.launch = launch
    assert out, "the request did not answer"
    return requests, tokens, out[0]


def reserved(requests) -> int:
    """What the engine requests should have reserved: their worst case, from their settings."""
    assert requests and {r.tenant for r in requests} == {"alice"}, [r.tenant for r in requests]
    return sum(worst_row_steps(r.params) for r in requests)


@pytest.fixture
def slow_steps(monkeypatch):
    """The fixed-pace runner at 50 ms a step: a long search is cut by its deadline part way."""
    pace(monkeypatch)
    monkeypatch.setattr(PacedRunner, "row_s", 0.0)
    monkeypatch.setattr(PacedRunner, "step_s", 0.05)


def test_solve_reserves_its_worst_case_and_gets_back_what_it_did_not_run(ckpt_dir, tmp_path, slow_steps):
    budget = 600  # 10 row-steps a second of refill
    with TestClient(app_for(ckpt_dir, api_keys_file=keys_file(tmp_path, budget), max_steps=64)) as c:
        wait_ready(c)
        body = {"puzzle": PUZZLE, "search": {"rollouts": 1, "steps": 64, "early_exit": "off"}, "timeout_s": 1.0}
        requests, during, r = held(c, lambda: c.post("/solve", json=body, headers=AUTH), 1)
        assert during == budget - reserved(requests) == budget - 64
        assert r.status_code == 200 and r.json()["finish"] == "deadline", r.text
        ran = r.json()["row_steps"]
        assert 0 < ran < 64
        # the 64 - ran it did not run came back (and the refill since, up to the budget)
        assert c.app.state.keyring.quotas["alice"].tokens >= budget - ran - 1
        assert metric(c.get("/metrics").text, "trm_key_row_steps_total", key="alice") == ran


def test_a_streamed_solve_reserves_too(ckpt_dir, tmp_path):
    budget = 1000
    with TestClient(app_for(ckpt_dir, api_keys_file=keys_file(tmp_path, budget))) as c:
        wait_ready(c)
        body = {"puzzle": PUZZLE, "search": {"rollouts": 4, "steps": 4, "early_exit": "off"}, "stream": True}
        requests, during, r = held(c, lambda: c.post("/solve", json=body, headers=AUTH), 1)
        assert during == budget - reserved(requests) == budget - 16
        assert r.status_code == 200 and "event: result" in r.text
        assert metric(c.get("/metrics").text, "trm_key_row_steps_total", key="alice") == 16


@pytest.fixture(scope="module")
def arc_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("arc") / "arc-tiny"
    convert([str(OFFICIAL / "step_500"), str(out)])
    return out


def test_arc_variants_run_under_the_key_and_each_reserves(arc_ckpt, tmp_path):
    """Each of the 9 variants is an engine request of the caller's tenant (fair share and quotas go by it), and
    reserves its own worst case; with a budget that covers a few of them, the rest are refused: a 429."""
    budget = 10_000
    path = keys_file(tmp_path, budget)
    path.write_text(path.read_text() + '\n[[keys]]\nname = "bob"\nkey = "sk-bob-quota"\nrow_steps_per_minute = 20\n')
    with TestClient(app_for(arc_ckpt, api_keys_file=path, max_steps=16, max_batch=16)) as c:
        wait_ready(c, timeout=120)  # the warm-up of 900-cell rows is slow on a busy CPU
        body = {"task": "arc", "name": "e0000002", "test_index": 0}
        requests, during, r = held(c, lambda: c.post("/solve", json=body, headers=AUTH), 9)
        assert len(requests) == 9 and during == pytest.approx(budget - reserved(requests), abs=budget / 60)
        assert r.status_code == 200 and r.json()["variants"] == 9, r.text
        assert metric(c.get("/metrics").text, "trm_key_row_steps_total", key="alice") == r.json()["row_steps"]
        r = c.post("/solve", json=body, headers={"Authorization": "Bearer sk-bob-quota"})
        assert r.status_code == 429 and "key 'bob' spent its 20 row-steps per minute" in error_of(r)["message"]
        assert int(r.headers["retry-after"]) >= 1


def test_each_generate_grid_reserves(ckpt_dir, tmp_path):
    budget = 5_000
    with TestClient(app_for(ckpt_dir, api_keys_file=keys_file(tmp_path, budget))) as c:
        wait_ready(c)
        body = {"count": 2, "kind": "grid", "seed": 1}
        requests, during, r = held(c, lambda: c.post("/generate", json=body, headers=AUTH), 2)
        # reserved, less a second's refill at most between the two reservations
        assert len(requests) == 2 and during == pytest.approx(budget - reserved(requests), abs=budget / 60)
        assert r.status_code == 200 and r.json()["items"], r.text
        assert metric(c.get("/metrics").text, "trm_key_row_steps_total", key="alice") == r.json()["row_steps"]


def test_concurrent_requests_spend_at_most_the_budget_and_one_reservation(ckpt_dir, tmp_path, monkeypatch):
    """8 requests of 16 row-steps at once against a budget of 20: two are admitted (20 - 16 = 4 is still above zero),
    the rest refused, all while the first two are still in progress. Charged only when they ended, all 8 ran: 128."""
    pace(monkeypatch)
    budget, each = 20, 16
    with TestClient(app_for(ckpt_dir, api_keys_file=keys_file(tmp_path, budget))) as c:
        wait_ready(c)
        body = {"puzzle": PUZZLE, "search": {"rollouts": 4, "steps": 4, "early_exit": "off"}}

        done: list = []

        def post(_):
            done.append(c.post("/solve", json=body, headers=AUTH))
            return done[-1]

        def burst():
            with ThreadPoolExecutor(8) as pool:
                return list(pool.map(post, range(8)))

        _, _, answers = held(c, burst, 8, lambda: len(done))  # the engine holds until all 8 are in or refused
    spent = sum(r.json()["row_steps"] for r in answers if r.status_code == 200)
    refused = [r for r in answers if r.status_code == 429]
    assert spent <= budget + each and len(refused) == 8 - spent // each, [r.status_code for r in answers]
    assert all("row-steps per minute" in error_of(r)["message"] for r in refused)
