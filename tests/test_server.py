"""The HTTP service on tiny random checkpoints: contract, errors, limits, metrics, /generate, disconnects; plus the few
tests that need a real uvicorn server (disconnect, a real Prometheus scraping it, a schemathesis fuzz run)."""

import asyncio
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from live import PUZZLE, LiveServer, Prometheus, app_for, error_of, metric, solver, wait_ready
from schemathesis.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from engine.checkpoint import save_checkpoint
from engine.models import GRAM, preset
from engine.runtime import EngineStopped, Overloaded, Request
from engine.search import SearchParams
from engine.tasks import get_task
from engine.tasks.sudoku import BLANK
from engine.tasks.sudoku_solver import count_solutions
from server.app import create_app
from server.logs import JsonFormatter, request_id
from server.main import parse
from server.models import load_models
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SUDOKU = get_task("sudoku")
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]


# -- helpers -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    """A random unconditional GRAM (a generator that is almost never right)."""
    torch.manual_seed(0)
    model = GRAM(preset("gram-sudoku-tiny", unconditional=True))
    return save_checkpoint(tmp_path_factory.mktemp("gen") / "tiny-gen", model, "sudoku")


# -- health, readiness, models -----------------------------------------------------------------------------------------


def test_healthz_answers_while_loading_and_readyz_waits(ckpt_dir):
    release = threading.Event()

    def slow_loader(s):
        release.wait(10)
        return load_models(s)

    with TestClient(app_for(ckpt_dir, loader=slow_loader)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert error_of(r)["type"] == "unavailable" and "loading" in error_of(r)["message"]
        assert c.post("/solve", json={"puzzle": PUZZLE}).status_code == 503
        release.set()
        wait_ready(c)
        assert c.get("/readyz").json() == {"status": "ready", "models": ["tiny"]}


def test_readyz_fails_while_an_engine_is_stalled(ckpt_dir, monkeypatch):
    with TestClient(app_for(ckpt_dir, watchdog_s=0.2)) as c:
        wait_ready(c)
        eng = solver(c).engine
        release, run = threading.Event(), eng.runner.launch
        monkeypatch.setattr(eng.runner, "launch", lambda batch: (release.wait(10), run(batch))[1])  # a hung step
        req = eng.submit(Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=1, steps=1)))
        time.sleep(0.4)
        r = c.get("/readyz")
        assert r.status_code == 503 and "no step for" in error_of(r)["message"]
        assert c.get("/healthz").status_code == 200  # liveness never asks the engine
        release.set()
        req.future.result(timeout=10)
        assert c.get("/readyz").status_code == 200


def test_a_failed_step_fails_its_requests_and_the_engine_goes_on(client, monkeypatch):
    """Issue 28: a step that raises fails the requests in it with a 500 `engine_error` naming the fault; the loop
    lives on, their carry slots come back, and the next request is answered."""
    eng = solver(client).engine
    free, run = len(eng.scheduler.free_slots), eng.runner.launch

    def broken(batch):
        raise RuntimeError("injected step failure")

    body = {"puzzle": PUZZLE, "search": {"rollouts": 2, "steps": 2}}
    monkeypatch.setattr(eng.runner, "launch", broken)
    r = client.post("/solve", json=body)
    assert r.status_code == 500 and error_of(r)["type"] == "engine_error"
    assert "RuntimeError: injected step failure" in error_of(r)["message"]
    assert len(eng.scheduler.free_slots) == free and not eng.busy
    monkeypatch.setattr(eng.runner, "launch", run)
    assert client.post("/solve", json=body).status_code == 200
    assert client.get("/readyz").status_code == 200


def test_a_wrong_method_and_an_unexpected_fault_answer_in_the_one_shape(ckpt_dir, monkeypatch):
    """Issue 28: 405 `method_not_allowed`, and a bug in a handler a 500 `internal` that names only the exception's
    type (the traceback goes to the log), after which the service answers as before."""
    import server.app

    with TestClient(app_for(ckpt_dir), raise_server_exceptions=False) as c:
        wait_ready(c)
        r = c.get("/solve")
        assert r.status_code == 405 and error_of(r)["type"] == "method_not_allowed"
        monkeypatch.setattr(server.app, "no_solution", lambda task, tokens: 1 / 0)
        r = c.post("/solve", json={"puzzle": PUZZLE})
        assert r.status_code == 500
        assert error_of(r) == {"type": "internal", "message": "internal error: ZeroDivisionError"}
        monkeypatch.undo()
        assert c.post("/solve", json={"puzzle": PUZZLE, "search": {"rollouts": 1, "steps": 1}}).status_code == 200


def test_a_failed_load_keeps_readyz_at_503_with_the_reason(tmp_path):
    with TestClient(app_for(tmp_path / "missing")) as c:
        for _ in range(200):
            if "failed" in c.get("/readyz").text:
                break
            time.sleep(0.02)
        r = c.get("/readyz")
        assert r.status_code == 503 and "config.json is missing" in error_of(r)["message"]
        assert c.get("/healthz").status_code == 200


def test_models_lists_solvers_with_runner_defaults_and_selectors(client):
    (m,) = client.get("/v1/models").json()["data"]
    assert (m["id"], m["role"], m["task"], m["arch"], m["runner"], m["kernels"]) == (
        "tiny",
        "solver",
        "sudoku",
        "trm",
        "eager",
        "torch",
    )
    assert m["defaults"]["rollouts"] == 4 and m["defaults"]["steps"] == 4  # PTRM's defaults capped by the limits
    assert m["defaults"]["selectors"] == ["q", "verifier", "vote"]


@pytest.mark.filterwarnings("ignore:Triton kernel launch failed")
def test_models_names_the_kernel_fallback_after_a_failed_fused_launch(client, monkeypatch):
    """As if on a GPU whose fused kernels cannot launch (a slim image without a C compiler): a /solve step tries the
    fused path, the launch fails, the torch references answer, and /v1/models says why (`kernels_fallback`, None
    while the kernels never failed)."""
    import kernels

    (m,) = client.get("/v1/models").json()["data"]
    assert m["kernels_fallback"] is None and m["kernels"] == "torch"
    monkeypatch.setattr(kernels, "_failed", None)
    monkeypatch.setattr(kernels, "backend", lambda device: "torch" if kernels._failed else "triton")

    def broken(*args):
        raise RuntimeError("failed to build the Triton driver: no C compiler")

    for op in ("inject", "add_rms_norm", "swiglu", "standard_normal"):
        monkeypatch.setattr(torch.ops.trm, op, broken, raising=False)
    (m,) = client.get("/v1/models").json()["data"]
    assert m["kernels"] == "triton" and m["kernels_fallback"] is None  # nothing has failed yet
    r = client.post("/solve", json={"puzzle": PUZZLE, "search": {"rollouts": 1, "steps": 1}})
    assert r.status_code == 200  # the references served the step
    (m,) = client.get("/v1/models").json()["data"]
    assert m["kernels"] == "torch" and m["kernels_fallback"].startswith("Triton kernel launch failed")
    assert "no C compiler" in m["kernels_fallback"]
    monkeypatch.undo()
    (m,) = client.get("/v1/models").json()["data"]
    assert m["kernels_fallback"] is None  # cleared with the module state


# -- /solve ------------------------------------------------------------------------------------------------------------


def test_solve_text_in_text_out_with_the_contract_fields(client):
    r = client.post(
        "/solve",
        json={"puzzle": PUZZLE, "search": {"rollouts": 3, "steps": 2, "seed": 5, "noise": 0.5}},
        headers={"X-Request-ID": "req-42"},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
    body = r.json()
    assert isinstance(body["solution"], str) and len(body["solution"]) == 81
    assert "".join(str(d) if d else "." for row in body["grid"] for d in row) == body["solution"]
    assert (body["rollouts"], body["steps"], body["row_steps"], body["selector"]) == (3, 2, 6, "q")
    assert body["model"] == "tiny" and body["task"] == "sudoku" and body["request_id"] == "req-42"
    assert body["verified"] is False and body["fault"]  # a random model: the first broken rule is named
    assert 0 <= body["confidence"] <= 1 and 0 < body["agreement"] <= 1
    t = body["timing"]
    assert set(t) == {"queued_s", "compute_s", "total_s", "server_s"} and t["total_s"] >= t["compute_s"] >= 0
    again = client.post(
        "/solve", json={"puzzle": PUZZLE, "search": {"rollouts": 3, "steps": 2, "seed": 5, "noise": 0.5}}
    )
    assert again.json()["solution"] == body["solution"]  # seeded: reproducible


def test_solve_by_commit_search_with_augment_reports_the_search(client):
    search = {"strategy": "commit", "diversity": "augment", "rollouts": 2, "steps": 1, "max_nodes": 200, "seed": 1}
    r = client.post("/solve", json={"puzzle": PUZZLE, "search": search})
    assert r.status_code == 200
    body = r.json()
    assert body["strategy"] == "commit" and body["diversity"] == "augment" and body["verified"]  # mask + DFS
    # the README puzzle falls to the rules' forced cells alone: filled before any node is expanded
    assert body["finish"] == "filled" and body["nodes"] == 0 and body["row_steps"] == 0 and body["selector"] == "commit"
    again = client.post("/solve", json={"puzzle": PUZZLE, "search": search}).json()
    assert again["solution"] == body["solution"] and again["nodes"] == body["nodes"]
    plain = client.post("/solve", json={"puzzle": PUZZLE, "search": {"rollouts": 2, "steps": 1}}).json()
    assert plain["strategy"] == "rollouts" and plain["nodes"] == 0 and plain["waves"] == 1
    waves = {"rollouts": 2, "steps": 1, "waves": 3, "early_exit": "verified"}  # a random model never verifies
    three = client.post("/solve", json={"puzzle": PUZZLE, "search": waves}).json()
    assert (three["waves"], three["rollouts"], three["row_steps"]) == (3, 6, 6)
    text = client.get("/metrics").text
    assert metric(text, "trm_search_committed_cells_count", model="tiny") == 2  # the two commit searches
    assert metric(text, "trm_search_nodes_total", model="tiny") == 0


@pytest.mark.parametrize(
    "search, field",
    [
        ({"strategy": "beam"}, "strategy"),
        ({"diversity": "dropout"}, "diversity"),
        ({"max_nodes": 0}, "max_nodes"),
        ({"waves": 0}, "waves"),
        ({"waves": 9}, "waves"),
        ({"threshold": 1.5}, "threshold"),
        ({"order": "min"}, "order"),
        ({"mask": "yes"}, "mask"),
        ({"backtrack": "bfs"}, "backtrack"),
    ],
)
def test_solve_search_knobs_out_of_bounds_are_422(client, search, field):
    r = client.post("/solve", json={"puzzle": PUZZLE, "search": search})
    assert r.status_code == 422 and field in error_of(r)["message"]


def test_solve_lists_in_lists_out_and_a_fresh_request_id(client):
    grid = SUDOKU.decode(SUDOKU.encode(PUZZLE))
    r = client.post("/solve", json={"puzzle": grid, "search": {"rollouts": 1, "steps": 1}})
    assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    body = r.json()
    assert body["solution"] == body["grid"] and len(body["grid"]) == 9 and all(len(row) == 9 for row in body["grid"])


@pytest.mark.parametrize(
    "puzzle, where",
    [
        (PUZZLE[:20] + "x" + PUZZLE[21:], "row 3, column 3: unexpected character 'x'"),
        (PUZZLE[:-1], "expected 81 cells, got 80"),
        ([[0] * 9] * 4 + [[0, 0, 7, 0, 0, 0, 0, 0, 11]] + [[0] * 9] * 4, "row 5, column 9: 11 is not a digit"),
        ([[0] * 9] * 8 + [[0] * 8], "row 9 has 8 cells"),
        ("55" + "." * 79, "row 1 has two 5s"),
    ],
)
def test_a_bad_puzzle_is_422_naming_the_row_or_cell(client, puzzle, where):
    r = client.post("/solve", json={"puzzle": puzzle})
    assert r.status_code == 422
    err = error_of(r)
    assert err["type"] == "invalid_puzzle" and where in err["message"]


def test_schema_violations_are_422_in_the_one_error_shape(client):
    cases = [
        ({"puzzle": PUZZLE, "search": {"rollouts": 5}}, "search.rollouts: Input should be less than or equal to 4"),
        ({"puzzle": PUZZLE, "search": {"steps": 0}}, "search.steps"),
        ({"puzzle": PUZZLE, "search": {"selector": "best"}}, "search.selector"),
        ({"puzzle": PUZZLE, "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"search": {}}, "puzzle: Field required"),
    ]
    for body, message in cases:
        r = client.post("/solve", json=body)
        assert r.status_code == 422 and message in error_of(r)["message"], (body, r.json())
    r = client.post("/solve", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and error_of(r)["type"] == "invalid_request"


def test_openapi_shows_the_configured_limits(client):
    spec = client.get("/openapi.json").json()
    search = spec["components"]["schemas"]["SearchIn"]["properties"]
    rollouts = search["rollouts"]["anyOf"][0]
    assert rollouts["maximum"] == 4 and search["steps"]["anyOf"][0]["maximum"] == 4
    assert "/metrics" not in spec["paths"] and {"/solve", "/generate", "/v1/models"} <= set(spec["paths"])


def test_unknown_model_wrong_task_and_unavailable_selector(client):
    r = client.post("/solve", json={"puzzle": PUZZLE, "model": "nope"})
    assert r.status_code == 404 and "no solver named 'nope'" in error_of(r)["message"]
    r = client.post("/solve", json={"puzzle": PUZZLE, "task": "maze"})
    assert r.status_code == 404 and "no solver for task 'maze'" in error_of(r)["message"]
    r = client.post("/solve", json={"puzzle": PUZZLE, "model": "tiny", "task": "maze"})
    assert r.status_code == 422 and "solves sudoku" in error_of(r)["message"]
    r = client.post("/solve", json={"puzzle": PUZZLE, "search": {"selector": "prior"}})
    assert r.status_code == 422 and "'prior' is not available" in error_of(r)["message"]


def test_body_over_the_limit_is_413_naming_the_limit(ckpt_dir):
    with TestClient(app_for(ckpt_dir, max_body_bytes=1024)) as c:
        wait_ready(c)
        big = {"puzzle": PUZZLE, "task": "sudoku", "model": "x" * 2000}
        r = c.post("/solve", json=big)
        assert r.status_code == 413 and error_of(r) == {
            "type": "payload_too_large",
            "message": "the request body exceeds the limit of 1024 bytes",
        }
        chunked = c.post(
            "/solve", content=iter([json.dumps(big).encode()]), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413
        small = c.post(
            "/solve",
            content=iter([json.dumps({"puzzle": PUZZLE}).encode()]),
            headers={"content-type": "application/json"},
        )
        assert small.status_code == 200


def test_overload_is_429_with_retry_after_and_counted_by_reason(ckpt_dir):
    with TestClient(app_for(ckpt_dir, max_queued_requests=1, max_queued_rows=6, max_steps=10**6)) as c:
        wait_ready(c)
        eng = solver(c).engine
        hog = eng.submit(Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=2, steps=10**6)))
        r = c.post("/solve", json={"puzzle": PUZZLE})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        err = error_of(r)
        assert err["type"] == "overloaded" and "queued requests limit (1)" in err["message"]
        eng.cancel(hog)
        while eng.busy:
            time.sleep(0.01)
        r = c.post("/solve", json={"puzzle": PUZZLE, "search": {"rollouts": 4}})
        assert r.status_code == 200
        text = c.get("/metrics").text
        assert metric(text, "trm_admission_rejections_total", model="tiny", reason="queue_full") == 1
        assert metric(text, "trm_requests_total", endpoint="solve", outcome="rejected") == 1
    with TestClient(app_for(ckpt_dir, max_queued_rows=3)) as c:  # a request that could never fit
        wait_ready(c)
        r = c.post("/solve", json={"puzzle": PUZZLE, "search": {"rollouts": 4}})
        assert r.status_code == 422 and error_of(r)["type"] == "too_large" and "row limit 3" in error_of(r)["message"]


def test_deadline_is_504(ckpt_dir):
    with TestClient(app_for(ckpt_dir, max_steps=10**6)) as c:
        wait_ready(c)
        search = {"rollouts": 1, "steps": 10**6, "strict_deadline": True}  # else: its best so far (test_admission)
        r = c.post("/solve", json={"puzzle": PUZZLE, "search": search, "timeout_s": 0.2})
        assert r.status_code == 504 and error_of(r)["type"] == "deadline_exceeded"
        assert not solver(c).engine.busy
        assert metric(c.get("/metrics").text, "trm_requests_total", endpoint="solve", outcome="timeout") == 1


def test_early_exit_and_draining_on_shutdown(ckpt_dir):
    with TestClient(app_for(ckpt_dir)) as c:
        wait_ready(c)
        r = c.post("/solve", json={"puzzle": PUZZLE, "search": {"early_exit": "confident"}})
        assert r.status_code == 200
        eng = solver(c).engine
    assert eng.scheduler.draining and not eng.busy  # the lifespan drained and stopped the engine
    with pytest.raises(EngineStopped):
        eng.submit(Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams()))


# -- metrics -----------------------------------------------------------------------------------------------------------


def test_metrics_count_requests_work_and_latency(client):
    for _ in range(2):
        assert client.post("/solve", json={"puzzle": PUZZLE, "search": {"rollouts": 3, "steps": 2}}).status_code == 200
    client.post("/solve", json={"puzzle": "bad"})
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric(text, "trm_requests_total", endpoint="solve", outcome="ok") == 2
    assert metric(text, "trm_requests_total", endpoint="solve", outcome="invalid") == 1
    assert metric(text, "trm_rollouts_total", model="tiny") == 6
    assert metric(text, "trm_supervision_steps_total", model="tiny") == 12
    assert metric(text, "trm_requests_finished_total", model="tiny") == 2
    for h in ("queue", "compute", "e2e"):
        assert metric(text, f"trm_request_{h}_seconds_count", model="tiny") == 2
    assert metric(text, "trm_selection_agreement_count", model="tiny") == 2
    assert metric(text, "trm_batch_rows_sum", model="tiny") == 12  # rows summed over engine steps
    assert metric(text, "trm_batch_occupancy_count", model="tiny") >= 2
    assert (
        metric(text, "trm_requests_waiting", model="tiny") == 0 and metric(text, "trm_rows_running", model="tiny") == 0
    )
    info = dict(model="tiny", role="solver", runner="eager", kernels="torch", device="cpu", dtype="float32")
    assert metric(text, "trm_model_info", **info) == 1
    assert metric(text, "trm_ready") == 1
    assert "_created" not in text


def test_gauges_read_the_scheduler_state(client):
    eng = solver(client).engine
    req = eng.submit(Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=3, steps=10**6)))
    while req.started is None:
        time.sleep(0.005)
    text = client.get("/metrics").text
    assert metric(text, "trm_requests_running", model="tiny") == 1
    assert metric(text, "trm_rows_running", model="tiny") == 3
    eng.cancel(req)


def test_two_apps_keep_separate_registries(ckpt_dir):
    a, b = app_for(ckpt_dir), app_for(ckpt_dir)
    assert a.state.metrics.registry is not b.state.metrics.registry


# -- /generate ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def gen_client(ckpt_dir, gen_dir):
    with TestClient(app_for(ckpt_dir, gen_dir)) as c:
        wait_ready(c)
        yield c


def test_prior_generation_without_a_generator_is_404(client):
    r = client.post("/generate", json={"count": 1, "method": "prior"})
    assert r.status_code == 404 and "no generator loaded" in error_of(r)["message"]


def test_generate_grids_by_commit_decoding_through_the_engine(client):
    """A random tiny TRM: the legal mask and backtracking still make every served grid valid; seeded."""
    r = client.post("/generate", json={"count": 3, "kind": "grid", "seed": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["complete"] and len(body["items"]) == 3 and body["method"] == "commit" and body["model"] == "tiny"
    texts = [i["text"] for i in body["items"]]
    assert len(set(texts)) == 3
    for item in body["items"]:
        tokens = SUDOKU.encode(item["grid"])
        assert item["valid"] and SUDOKU.verify(np.ones(81, np.int64), tokens) and SUDOKU.to_text(tokens) == item["text"]
    assert body["row_steps"] > 0 and body["sampled"] >= 3 and body["validity"] == body["valid"] / body["sampled"]
    again = client.post("/generate", json={"count": 3, "kind": "grid", "seed": 3}).json()
    assert [i["text"] for i in again["items"]] == texts
    other = client.post("/generate", json={"count": 3, "kind": "grid", "seed": 4}).json()
    assert [i["text"] for i in other["items"]] != texts
    text = client.get("/metrics").text
    assert metric(text, "trm_generate_items_total", model="tiny", kind="grid") == 9
    assert metric(text, "trm_supervision_steps_total", model="tiny") >= body["row_steps"]  # it ran on the engine


def test_generate_temperature_zero_decodes_one_grid_whatever_the_seed(client):
    """Commit decoding at temperature 0 takes each branch cell's most probable value: every sample of every seed is
    the same grid (one row, identity symmetry), so it never finds a second distinct one; at temperature 1 the values
    are sampled and one request finds two."""
    cold = [
        client.post(
            "/generate", json={"count": 2, "kind": "grid", "seed": seed, "temperature": 0, "max_samples": 2}
        ).json()
        for seed in (1, 2)
    ]
    for body in cold:
        assert body["sampled"] == body["valid"] == 2 and body["distinct"] == 0.5
        assert not body["complete"] and len(body["items"]) == 1
    assert cold[0]["items"][0]["text"] == cold[1]["items"][0]["text"]
    hot = client.post("/generate", json={"count": 2, "kind": "grid", "seed": 1, "temperature": 1, "max_samples": 3})
    body = hot.json()
    assert body["complete"] and body["distinct"] == 1.0 and len({i["text"] for i in body["items"]}) == 2


def test_generate_puzzles_have_the_clue_count_and_a_proven_unique_solution(client):
    body = client.post("/generate", json={"count": 2, "kind": "puzzle", "clues": 30, "seed": 1}).json()
    assert body["complete"] and len(body["items"]) == 2
    for item in body["items"]:
        puzzle = SUDOKU.encode(item["puzzle"])
        assert item["clues"] == 30 and (puzzle != 1).sum() == 30 and item["unique"]
        assert count_solutions(puzzle, limit=2) == 1
        assert SUDOKU.verify(puzzle, SUDOKU.encode(item["grid"]))  # the grid is the puzzle's solution
        assert SUDOKU.decode(puzzle) == item["puzzle_grid"]


def test_prior_samples_of_a_random_generator_stay_within_the_budget(gen_client):
    r = gen_client.post("/generate", json={"count": 2, "max_samples": 20, "seed": 0, "method": "prior"})
    body = r.json()
    assert r.status_code == 200 and body["sampled"] == 20 and body["model"] == "tiny-gen"  # nothing valid
    assert body["items"] == [] and not body["complete"] and body["validity"] == 0 and body["method"] == "prior"
    text = gen_client.get("/metrics").text
    assert metric(text, "trm_model_info", model="tiny-gen", role="generator") == 1
    r = gen_client.post("/generate", json={"count": 1, "kind": "puzzle", "clues": 16})
    assert r.status_code == 422 and "clues" in error_of(r)["message"]
    r = gen_client.post("/generate", json={"count": 1, "method": "prior", "model": "tiny"})
    assert r.status_code == 422 and "cannot generate by method 'prior'" in error_of(r)["message"]


def test_generate_stops_at_its_deadline_with_what_it_found(client):
    eng = solver(client).engine
    run = eng.runner.launch

    def slow(batch):
        time.sleep(0.05)
        return run(batch)

    eng.runner.launch = slow
    try:
        start = time.monotonic()
        r = client.post("/generate", json={"count": 4, "timeout_s": 0.5})
        assert time.monotonic() - start < 3.0
        body = r.json()
        assert r.status_code == 200 and not body["complete"] and len(body["items"]) < 4
    finally:
        eng.runner.launch = run


def test_generate_on_a_full_engine_is_429(client):
    eng = solver(client).engine
    release, run = threading.Event(), eng.runner.launch

    def blocked(batch):
        release.wait(10)
        return run(batch)

    eng.runner.launch = blocked
    try:
        hold = []
        with pytest.raises(Overloaded):  # fill the engine's queue to its limit
            while True:
                hold.append(eng.submit(Request(SUDOKU, np.ones(81, np.int64), SearchParams(rollouts=4, steps=4))))
        r = client.post("/generate", json={"count": 1})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    finally:
        release.set()
        eng.runner.launch = run
    for h in hold:
        h.future.result(timeout=30)


def test_generate_without_a_seed_gives_new_items_and_its_seed_replays_them(client):
    """Issue 26: a generator is fresh by default (two calls share no grid) and the returned seed replays a call;
    /solve stays deterministic without a seed."""
    first, second = (client.post("/generate", json={"count": 2}).json() for _ in range(2))
    assert first["seed"] != second["seed"]
    grids = lambda r: [json.dumps(item["grid"]) for item in r["items"]]  # noqa: E731
    assert len(grids(first)) == 2 and not set(grids(first)) & set(grids(second))
    assert grids(client.post("/generate", json={"count": 2, "seed": first["seed"]}).json()) == grids(first)
    solve = {"puzzle": PUZZLE, "search": {"rollouts": 2, "steps": 2}}
    answers = [client.post("/solve", json=solve).json()["solution"] for _ in range(2)]
    assert answers[0] == answers[1]


def test_generate_minimal_puzzles(client):
    """Issue 26: `minimal: true` puzzles have one solution and need every given (checked here with the solver)."""
    r = client.post("/generate", json={"count": 2, "kind": "puzzle", "minimal": True, "seed": 4})
    assert r.status_code == 200 and len(r.json()["items"]) == 2
    for item in r.json()["items"]:
        assert item["minimal"] and item["unique"] and item["clues"] < 30
        puzzle = SUDOKU.encode(item["puzzle"])
        assert count_solutions(puzzle, 2) == 1
        for cell in np.flatnonzero(puzzle != BLANK):
            weaker = puzzle.copy()
            weaker[cell] = BLANK
            assert count_solutions(weaker, 2) == 2, f"given at {cell} is not needed"


def test_generate_reaches_21_clues_and_names_its_floor_below(client):
    """Issue 26: low clue counts are found (many removal orders per grid: carving is cheap next to decoding), and a
    count under the floor is a 422 that names it."""
    r = client.post("/generate", json={"count": 1, "kind": "puzzle", "clues": 21, "seed": 2})
    item = r.json()["items"][0]
    assert item["clues"] == 21 and count_solutions(SUDOKU.encode(item["puzzle"]), 2) == 1
    assert r.json()["sampled"] <= 8  # half the grids give 21 clues in 256 orders; 8 orders need ~40 grids
    r = client.post("/generate", json={"count": 1, "kind": "puzzle", "clues": 20})
    assert r.status_code == 422 and "greater than or equal to 21" in error_of(r)["message"]


def test_the_shipped_prior_generator_is_labelled_a_research_baseline():
    """Issue 26: `method: prior` (the shipped GRAM generator, no valid grid) must not look like a usable default."""
    from fastapi.testclient import TestClient

    shipped = Path(__file__).resolve().parent.parent / "checkpoints"
    with TestClient(app_for(shipped / "sudoku-trm", shipped / "sudoku-gram-gen")) as c:
        wait_ready(c)
        cards = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert cards["sudoku-gram-gen"]["status"].startswith("research baseline")
    assert cards["sudoku-trm"]["status"] is None


# -- settings, logs, CLI, Docker ---------------------------------------------------------------------------------------


def test_settings_from_env_overridden_by_flags_and_default_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("TRM_PORT", "9001")
    monkeypatch.setenv("TRM_MAX_ROLLOUTS", "7")
    s = parse(["--max-rollouts", "9", "--checkpoint-root", str(tmp_path)])
    assert (s.port, s.max_rollouts) == (9001, 9)
    assert s.checkpoint_paths() == [
        (tmp_path / "sudoku-trm", True),
        (tmp_path / "sudoku-gram-gen", False),
    ]
    assert Settings().checkpoint_root.resolve() == ROOT / "checkpoints"  # the repo's shipped checkpoints by default
    s = parse(["--checkpoint", "sudoku-trm", "--checkpoint", str(tmp_path)])
    assert s.checkpoint_paths() == [(ROOT / "checkpoints" / "sudoku-trm", True), (tmp_path, True)]


@pytest.mark.parametrize("script", ["engine-serve", "engine-client"])
def test_console_scripts_are_installed(script):
    path = shutil.which(script, path=str(Path(sys.executable).parent))
    assert path, f"{script} is not installed next to {sys.executable}"
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: " + script in result.stdout


def test_engine_serve_refuses_a_missing_checkpoint_before_starting(tmp_path):
    from server.main import main

    with pytest.raises(SystemExit, match="is not a checkpoint directory"):
        main(["--checkpoint", str(tmp_path / "nope")])


def test_json_log_lines_carry_the_request_id():
    import logging

    token = request_id.set("rid-7")
    try:
        record = logging.LogRecord("server", logging.INFO, __file__, 1, "hello", None, None)
        record.fields = {"status": 200}
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id.reset(token)
    assert line["request_id"] == "rid-7" and line["msg"] == "hello" and line["status"] == 200


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(" ", 1)[0].upper(), ln.split(" ", 1)[1]) for ln in lines]


def test_dockerfile_serves_the_default_checkpoints_as_a_non_root_user():
    ins = dockerfile_instructions()
    of = lambda name: [args for kind, args in ins if kind == name]  # noqa: E731
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entry,) = of("ENTRYPOINT")
    assert json.loads(entry) == ["engine-serve"] and scripts["engine-serve"] == "server.main:main"
    (health,) = of("HEALTHCHECK")
    probe = json.loads(health.split("CMD", 1)[1])
    assert probe[0] == "python" and "http://127.0.0.1:8000/healthz" in probe[-1]
    assert any(route.path == "/healthz" for route in create_app(Settings()).routes)
    assert "PYTHON=python:3.11-slim" in of("ARG")
    assert of("USER")[-1] not in ("root", "0") and any("useradd --uid 10001" in r for r in of("RUN"))
    assert any(args.split()[-2:] == ["checkpoints", "/app/checkpoints"] for args in of("COPY"))
    env = " ".join(of("ENV"))
    assert "TRM_HOST=0.0.0.0" in env and "TRM_CHECKPOINT_ROOT=/app/checkpoints" in env and "TRM_PORT=8000" in env
    for pkg in ("engine", "server", "kernels", "clients"):
        assert f"{pkg} {pkg}" in of("COPY")
    # a CUDA build gets a C compiler: Triton builds its launcher driver with one at the first kernel launch
    (cc,) = [r for r in of("RUN") if "gcc" in r]
    assert "torch.version.cuda" in cc and "libc6-dev" in cc


# -- a real server -----------------------------------------------------------------------------------------------------


def test_a_disconnected_client_leaves_no_rows_in_the_engine(ckpt_dir):
    app = app_for(ckpt_dir, max_steps=10**6)
    with LiveServer(app) as live:
        eng = next(iter(app.state.models.solvers.values())).engine
        body = {"puzzle": PUZZLE, "search": {"rollouts": 4, "steps": 10**6}, "timeout_s": 60}
        with pytest.raises(httpx.ReadTimeout):  # the client gives up mid-flight and closes the connection
            httpx.post(live.url + "/solve", json=body, timeout=httpx.Timeout(1.0, connect=5.0))
        assert eng.stats.row_steps > 0  # it was running
        end = time.monotonic() + 10
        while eng.busy and time.monotonic() < end:
            time.sleep(0.02)
        assert not eng.busy and eng.scheduler.active == [] and eng.scheduler.queued == (0, 0)
        assert len(eng.scheduler.free_slots) == eng.runner.slots
        steps = eng.stats.row_steps
        time.sleep(0.2)
        assert eng.stats.row_steps == steps  # nothing runs any more
        text = httpx.get(live.url + "/metrics").text
        assert metric(text, "trm_requests_total", endpoint="solve", outcome="cancelled") == 1


def test_clients_and_cli_against_a_live_server(ckpt_dir, capsys):
    from clients import AsyncClient, BadRequest, Client
    from clients.cli import main as client_main

    app = app_for(ckpt_dir)
    with LiveServer(app) as live:
        with Client(live.url) as c:
            res = c.solve(PUZZLE, rollouts=2, steps=2, seed=1)
            assert len(res.solution) == 81 and res.rollouts == 2 and res.model == "tiny"
            with pytest.raises(BadRequest, match="row 1, column 1"):
                c.solve("x" + PUZZLE[1:])
            assert [m["id"] for m in c.models()] == ["tiny"]

        async def run():
            async with AsyncClient(live.url) as ac:
                return await asyncio.gather(*(ac.solve(PUZZLE, rollouts=1, steps=1, seed=s) for s in range(3)))

        assert [r.rollouts for r in asyncio.run(run())] == [1, 1, 1]
        client_main(["--url", live.url, "solve", PUZZLE, "--rollouts", "2", "--steps", "1"])
        out = capsys.readouterr().out
        assert "------+-------+------" in out and "verified: no" in out and "2 rollouts x 1 steps on tiny" in out
        with pytest.raises(SystemExit, match="404 not_found: no generator loaded"):
            client_main(["--url", live.url, "generate", "--method", "prior"])
        client_main(["--url", live.url, "generate", "--seed", "2"])  # commit decoding on the solver
        assert "1 items; sampled 1, valid 1 (100%)" in capsys.readouterr().out


def test_a_real_prometheus_scrapes_the_service(ckpt_dir, tmp_path):
    app = app_for(ckpt_dir)
    with LiveServer(app) as live:
        scrape = f"  - job_name: trm\n    static_configs: [{{targets: ['127.0.0.1:{live.port}']}}]\n"
        with Prometheus(scrape, tmp_path) as prom:
            assert prom.wait_for('up{job="trm"}', 1, timeout=30) == 1
            for _ in range(3):
                httpx.post(live.url + "/solve", json={"puzzle": PUZZLE, "search": {"rollouts": 2, "steps": 2}})
            httpx.post(live.url + "/solve", json={"puzzle": "nonsense"})
            assert prom.wait_for('sum(trm_requests_total{endpoint="solve",outcome="ok"})', 3, timeout=30) == 3
            assert prom.wait_for('sum(trm_requests_total{endpoint="solve",outcome="invalid"})', 1, timeout=30) == 1
            assert prom.wait_for('trm_supervision_steps_total{model="tiny"}', 12, timeout=30) == 12
            assert prom.wait_for('trm_request_e2e_seconds_count{model="tiny"}', 3, timeout=30) == 3
            assert prom.wait_for('trm_model_info{model="tiny",runner="eager",kernels="torch"}', 1, timeout=30) == 1


def test_fuzzing_the_openapi_schema_finds_no_server_error(ckpt_dir, gen_dir, tmp_path):
    """schemathesis cases for every operation (positive and negative), ~30 each, against a real server with an API
    key: no 5xx. Driven through hypothesis directly: schemathesis' pytest plugin does not run under pytest 9."""
    set_hypothesis_home_dir(tmp_path / "hypothesis")  # not ./.hypothesis in the checkout
    limits = dict(max_rollouts=2, max_steps=2, max_generate_samples=2, max_timeout_s=5, default_timeout_s=5)
    app = app_for(ckpt_dir, gen_dir, api_key=["fuzz-key"], **limits)
    with LiveServer(app) as live:
        schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.label for op in operations} >= {"POST /solve", "POST /generate", "GET /v1/models"}
        seen = []
        for op in operations:

            @given(case=op.as_strategy())
            @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def no_server_error(case):
                response = case.call(timeout=30, headers={"Authorization": "Bearer fuzz-key"})
                seen.append(response.status_code)
                # 504 is the contract's answer to a deadline the case itself set (timeout_s=1e-9, say)
                asked_deadline = isinstance(case.body, dict) and case.body.get("timeout_s") is not None
                ok = response.status_code < 500 or (response.status_code == 504 and asked_deadline)
                assert ok, (response.status_code, response.text, case.as_curl_command())
                # every answer documented: its status code, content type and body schema (issue 16's target)
                case.validate_response(response, checks=CONFORMANCE)

            no_server_error()
        assert 200 in seen and 422 in seen
