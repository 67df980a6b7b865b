"""Watching a search (issue 17): the engine's progress listener, the Server-Sent Events of /solve and /generate
(framing, order, the final event, errors, the rate limit, a disconnect mid-stream on a real uvicorn), the clients'
stream iterators and `engine-client --watch`."""

import asyncio
import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from live import PUZZLE, LiveServer, app_for, error_of, metric, solver, wait_ready

from clients import AsyncClient, BadRequest, Client, GenerateResult, Progress, SolveResult, Timeout
from clients.cli import main as client_main
from clients.stream import EventDecoder
from clients.watch import Watcher, draw
from engine.runtime import Engine, Request, Runner
from engine.runtime.progress import snapshot
from engine.search import SearchParams
from engine.tasks import get_task

SUDOKU = get_task("sudoku")
ROOT = Path(__file__).resolve().parents[1]
HARD = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."  # the mask alone cannot
FAST = dict(stream_max_events_per_s=10_000)  # every step's event goes out


def sse(text: str) -> list[tuple[str, str]]:
    """The events of a stream, checking the framing: blocks of exactly `event: NAME` and one `data: ...` line."""
    assert text.endswith("\n\n"), text[-50:]
    events = []
    for block in text[:-2].split("\n\n"):
        if block.startswith(":"):  # a keep-alive comment
            continue
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block[:200]
        events.append((lines[0][7:], lines[1][6:]))
    return events


def stream(c, path: str, body: dict, **kw) -> list[tuple[str, str]]:
    with c.stream("POST", path, json={**body, "stream": True}, **kw) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        return sse(r.read().decode())


def names(events) -> str:
    return " ".join(e for e, _ in events)


def comparable(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("timing", "request_id", "timing_s")}


@pytest.fixture
def fast(ckpt_dir):
    with TestClient(app_for(ckpt_dir, **FAST)) as c:
        wait_ready(c)
        yield c


# -- the engine's listener ---------------------------------------------------------------------------------------------


def test_a_listener_hears_each_step_before_the_result(tiny_model):
    eng = Engine(Runner(tiny_model, max_batch=8), SUDOKU)
    seen = []

    def listener(req):
        assert not req.future.done()  # the last step is heard before the request resolves
        seen.append(snapshot(req))

    req = Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=3, steps=4, early_exit="off"), listener=listener)
    eng.submit(req)
    eng.run_until_idle()
    result = req.future.result()
    assert [p.step for p in seen] == [1, 2, 3, 4] and [p.row_steps for p in seen] == [3, 6, 9, 12]
    assert all(p.rows == 3 and p.node == 0 and p.grid is None for p in seen)
    last = seen[-1]
    mode = np.array([np.bincount(col, minlength=SUDOKU.vocab_size).argmax() for col in result.rows.answers.T])
    share = (result.rows.answers == mode).mean(0)
    assert (last.consensus == mode).all() and np.allclose(last.agreement, share)
    assert set(np.round(last.agreement * 3).astype(int)) <= {1, 2, 3}
    assert last.best_q == pytest.approx(float(result.rows.q.max()))


def test_commit_search_progress_names_its_node_and_commits(tiny_model):
    eng = Engine(Runner(tiny_model, max_batch=8), SUDOKU)
    seen = []
    params = SearchParams(rollouts=2, steps=1, strategy="commit", max_nodes=3)
    req = Request(SUDOKU, SUDOKU.encode(HARD), params, listener=lambda r: seen.append(snapshot(r)))
    eng.submit(req)
    eng.run_until_idle()
    assert req.future.result().nodes == 3
    assert [p.node for p in seen] == [0, 1, 2] and [p.nodes for p in seen] == [0, 1, 2]
    puzzle = SUDOKU.encode(HARD)
    for p in seen:
        given = puzzle != SUDOKU.blank
        assert (p.grid[given] == puzzle[given]).all()  # a node keeps the givens
        assert set(p.committed) == set(np.flatnonzero((p.grid != SUDOKU.blank) & ~given))
    assert len(seen[-1].committed) > len(seen[0].committed)


def test_a_failing_listener_is_detached_and_the_request_still_answers(tiny_model):
    eng = Engine(Runner(tiny_model, max_batch=8), SUDOKU)
    calls = []

    def broken(req):
        calls.append(1)
        raise RuntimeError("boom")

    req = Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=2, steps=3, early_exit="off"), listener=broken)
    other = Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=2, steps=3, early_exit="off"))
    eng.submit(req), eng.submit(other)
    eng.run_until_idle()
    assert calls == [1] and req.listener is None
    assert req.future.result().steps == 3 and other.future.result().steps == 3


# -- Server-Sent Events ------------------------------------------------------------------------------------------------


def test_solve_streams_progress_per_step_then_result_then_done(fast):
    body = {"puzzle": PUZZLE, "search": {"rollouts": 2, "steps": 3, "seed": 5, "early_exit": "off"}}
    events = stream(fast, "/solve", body)
    assert names(events) == "progress progress progress result done" and events[-1][1] == "[DONE]"
    progress = [json.loads(d) for e, d in events if e == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3] and [p["row_steps"] for p in progress] == [2, 4, 6]
    p = progress[-1]
    assert set(p) == {"step", "rows", "row_steps", "best_q", "grid", "agreement"}
    assert np.shape(p["grid"]) == np.shape(p["agreement"]) == (9, 9) and p["rows"] == 2
    assert {a for row in p["agreement"] for a in row} <= {0.5, 1.0}
    result = json.loads(events[-2][1])
    plain = fast.post("/solve", json=body).json()
    assert comparable(result) == comparable(plain)  # the final event is the plain response, same seed same answer


def test_accept_header_streams_and_commit_events_carry_the_search(fast):
    body = {"puzzle": HARD, "search": {"rollouts": 2, "steps": 1, "strategy": "commit", "max_nodes": 2, "seed": 1}}
    with fast.stream("POST", "/solve", json=body, headers={"accept": "text/event-stream"}) as r:
        events = sse(r.read().decode())
    assert names(events) == "progress progress result done"
    first, second = (json.loads(d) for e, d in events if e == "progress")
    assert (first["node"], second["node"], second["nodes"]) == (0, 1, 1)
    assert len(second["committed"]) > 0 and np.shape(second["node_grid"]) == (9, 9)
    flat = np.array(second["node_grid"]).reshape(81)
    assert all(flat[i] > 0 and HARD[i] == "." for i in second["committed"])
    result = json.loads(events[-2][1])
    assert result["strategy"] == "commit" and result["nodes"] == 2
    assert comparable(result) == comparable(fast.post("/solve", json=body).json())


def test_refusals_before_admission_keep_their_status_and_json(ckpt_dir):
    with TestClient(app_for(ckpt_dir, max_queued_requests=1, max_steps=10**6)) as c:
        wait_ready(c)
        r = c.post("/solve", json={"puzzle": "x" + PUZZLE[1:], "stream": True})
        assert r.status_code == 422 and "row 1, column 1" in error_of(r)["message"]
        r = c.post("/solve", json={"puzzle": PUZZLE, "model": "nope", "stream": True})
        assert r.status_code == 404 and error_of(r)["type"] == "not_found"
        eng = solver(c).engine
        hog = eng.submit(Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=1, steps=10**6)))
        r = c.post("/solve", json={"puzzle": PUZZLE, "stream": True})
        assert r.status_code == 429 and error_of(r)["type"] == "overloaded" and int(r.headers["retry-after"]) >= 1
        r = c.post("/generate", json={"stream": True})
        assert r.status_code == 429 and error_of(r)["type"] == "overloaded"
        eng.cancel(hog)


def test_an_error_after_the_stream_started_is_an_error_event(ckpt_dir):
    with TestClient(app_for(ckpt_dir, max_steps=10**6)) as c:
        wait_ready(c)
        search = {"rollouts": 1, "steps": 10**6, "strict_deadline": True}  # a strict deadline: the 504 as an event
        events = stream(c, "/solve", {"puzzle": PUZZLE, "search": search, "timeout_s": 0.3})
        assert names(events)[-len("error done") :] == "error done" and set(names(events).split()) <= {
            "progress",
            "error",
            "done",
        }
        error = json.loads(events[-2][1])
        assert set(error) == {"error"} and set(error["error"]) == {"type", "message"}
        assert error["error"]["type"] == "deadline_exceeded" and "deadline" in error["error"]["message"]
        assert not solver(c).engine.busy
        text = c.get("/metrics").text
        assert metric(text, "trm_requests_total", endpoint="solve", outcome="timeout") == 1
        with pytest.raises(KeyError):  # not counted as a success for having started with a 200
            metric(text, "trm_requests_total", endpoint="solve", outcome="ok")


def test_events_are_rate_limited_and_the_result_always_arrives(ckpt_dir, monkeypatch):
    with TestClient(app_for(ckpt_dir, max_steps=1000, stream_max_events_per_s=5)) as c:
        wait_ready(c)
        run = solver(c).engine.runner.launch
        monkeypatch.setattr(solver(c).engine.runner, "launch", lambda batch: (time.sleep(0.02), run(batch))[1])
        start = time.monotonic()
        events = stream(c, "/solve", {"puzzle": PUZZLE, "search": {"rollouts": 1, "steps": 60, "early_exit": "off"}})
        took = time.monotonic() - start
        assert names(events).endswith("result done")
        progress = [json.loads(d) for e, d in events if e == "progress"]
        assert took > 1.2 and 2 <= len(progress) <= 5 * took + 1  # 60 steps, at most 5 events a second
        assert progress[0]["step"] == 1  # the first step is never held back
        assert json.loads(events[-2][1])["steps"] == 60


def test_a_quiet_stream_sends_keep_alive_comments(ckpt_dir, monkeypatch):
    monkeypatch.setattr("server.stream.PING_S", 0.05)
    with TestClient(app_for(ckpt_dir, stream_max_events_per_s=0.1)) as c:  # one progress event, then quiet
        wait_ready(c)
        run = solver(c).engine.runner.launch
        monkeypatch.setattr(solver(c).engine.runner, "launch", lambda batch: (time.sleep(0.1), run(batch))[1])
        body = {"puzzle": PUZZLE, "stream": True, "search": {"rollouts": 1, "steps": 4, "early_exit": "off"}}
        with c.stream("POST", "/solve", json=body) as r:
            text = r.read().decode()
    assert ": ping\n\n" in text[text.index("event: progress") :]  # between the one progress event and the result
    assert names(sse(text)) == "progress result done"  # the comments are not events


def test_generate_streams_its_samples_and_ends_with_the_plain_response(fast):
    body = {"count": 1, "seed": 3}
    events = stream(fast, "/generate", body)
    assert names(events).endswith("result done") and names(events).startswith("progress")
    progress = [json.loads(d) for e, d in events if e == "progress"]
    assert all(p["sample"] == 0 and "node" in p and "committed" in p for p in progress)
    assert [p["node"] for p in progress] == sorted(p["node"] for p in progress)
    result = json.loads(events[-2][1])
    assert comparable(result) == comparable(fast.post("/generate", json=body).json()) and result["items"]


def test_a_streamed_solve_with_solutions_ends_with_them_in_its_result():
    """`"solutions": 3` on the empty grid (far more solutions than the counter counts), streamed: progress events, then
    a result with 3 distinct verified solutions, as the plain call would answer."""
    with TestClient(app_for(ROOT / "checkpoints" / "sudoku-trm", **FAST)) as c:
        wait_ready(c)
        events = stream(c, "/solve", {"puzzle": "." * 81, "solutions": 3, "timeout_s": 60})
    assert names(events)[-len("result done") :] == "result done" and events[0][0] == "progress"
    result = json.loads(events[-2][1])
    answers = [SUDOKU.encode(s["solution"]) for s in result["solutions"]]
    assert len(answers) == 3 and len({a.tobytes() for a in answers}) == 3
    assert all(SUDOKU.verify(SUDOKU.encode("." * 81), a) for a in answers)
    assert all(np.array_equal(SUDOKU.encode(s["grid"]), a) for s, a in zip(result["solutions"], answers))
    assert all(s["samples"] >= 1 and 0 <= s["score"] <= 1 for s in result["solutions"])
    assert result["verified"] and result["solution"] == result["solutions"][0]["solution"]
    assert result["count"] is None and result["coverage"] is None


def test_openapi_documents_the_stream(fast):
    schema = fast.get("/openapi.json").json()
    for path in ("/solve", "/generate"):
        content = schema["paths"][path]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}
    assert "stream" in schema["components"]["schemas"]["SolveRequest"]["properties"]


# -- a real server: disconnect, clients, CLI ---------------------------------------------------------------------------


def test_a_client_leaving_mid_stream_cancels_the_rows(ckpt_dir):
    app = app_for(ckpt_dir, max_steps=10**6, **FAST)
    with LiveServer(app) as live:
        eng = next(iter(app.state.models.solvers.values())).engine
        body = {"puzzle": PUZZLE, "search": {"rollouts": 4, "steps": 10**6}, "timeout_s": 60, "stream": True}
        with httpx.stream("POST", live.url + "/solve", json=body, timeout=10) as r:
            lines = r.iter_lines()
            assert next(lines) == "event: progress"  # it runs and streams; then the client goes away
        end = time.monotonic() + 10
        while eng.busy and time.monotonic() < end:
            time.sleep(0.02)
        assert not eng.busy and eng.scheduler.active == [] and len(eng.scheduler.free_slots) == eng.runner.slots
        steps = eng.stats.row_steps
        time.sleep(0.2)
        assert eng.stats.row_steps == steps > 0  # nothing runs any more
        text = httpx.get(live.url + "/metrics").text
        assert metric(text, "trm_requests_total", endpoint="solve", outcome="cancelled") == 1


def test_a_drain_cut_off_ends_the_stream_with_a_503_error_event(ckpt_dir):
    app = app_for(ckpt_dir, max_steps=10**6, **FAST)
    with LiveServer(app) as live:
        eng = next(iter(app.state.models.solvers.values())).engine
        body = {"puzzle": PUZZLE, "search": {"rollouts": 2, "steps": 10**6}, "stream": True}
        with httpx.stream("POST", live.url + "/solve", json=body, timeout=10) as r:
            lines = r.iter_lines()
            assert next(lines) == "event: progress"
            (work,) = app.state.drain.inflight  # the stream's work is in flight for the drain to wait for
            work.get_loop().call_soon_threadsafe(app.state.drain.cutoff.set)  # what a drain timeout does
            events = sse("\n".join(["event: progress", *lines]) + "\n")
        error = json.loads(events[-2][1])["error"]
        assert names(events).endswith("error done") and error["type"] == "unavailable" and "drain" in error["message"]
        end = time.monotonic() + 10
        while (eng.busy or app.state.drain.inflight) and time.monotonic() < end:
            time.sleep(0.02)
        assert not eng.busy and not app.state.drain.inflight


def test_client_iterators_yield_typed_events_then_the_result(ckpt_dir):
    app = app_for(ckpt_dir, max_steps=10**6, **FAST)
    search = dict(rollouts=2, steps=2, seed=4, early_exit="off")
    with LiveServer(app) as live:
        with Client(live.url) as c:
            events = list(c.solve_stream(PUZZLE, **search))
            assert [type(e) for e in events] == [Progress, Progress, SolveResult]
            assert [e.step for e in events[:2]] == [1, 2] and events[0].node is None
            assert events[-1].raw["request_id"] != c.solve(PUZZLE, **search).raw["request_id"]
            assert events[-1].solution == c.solve(PUZZLE, **search).solution
            with pytest.raises(BadRequest, match="row 1, column 1"):
                list(c.solve_stream("x" + PUZZLE[1:]))
            with pytest.raises(Timeout, match="504 deadline_exceeded"):  # an error event, typed as the status would be
                list(c.solve_stream(PUZZLE, rollouts=1, steps=10**6, timeout_s=0.3, strict_deadline=True))
            gen = list(c.generate_stream(seed=2))
            assert isinstance(gen[-1], GenerateResult) and all(isinstance(e, Progress) for e in gen[:-1])
            assert gen[0].sample == 0 and gen[-1].items

        async def run():
            async with AsyncClient(live.url) as ac:
                return [e async for e in ac.solve_stream(PUZZLE, **search)]

        got = asyncio.run(run())
        assert [type(e) for e in got] == [Progress, Progress, SolveResult]
        assert got[-1].solution == events[-1].solution and got[0] == events[0]


def test_engine_client_watch_prints_lines_off_a_terminal(ckpt_dir, capsys):
    app = app_for(ckpt_dir, **FAST)
    with LiveServer(app) as live:
        client_main(["--url", live.url, "solve", PUZZLE, "--watch", "--rollouts", "2", "--steps", "3"])
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # not a terminal: no escapes
    lines = out.splitlines()
    assert lines[0].startswith("step 1, rows 2, row-steps 2, best q ") and lines[2].startswith("step 3,")
    assert "------+-------+------" in out and "2 rollouts x 3 steps on tiny" in out


def test_watcher_redraws_in_place_on_a_terminal():
    out = io.StringIO()
    w = Watcher(out, given={0}, tty=True)
    grid, agreement = [[1] * 9 for _ in range(9)], [[1.0] * 9 for _ in range(9)]
    p = Progress(step=1, rows=2, row_steps=2, best_q=0.5, grid=grid, agreement=agreement, node=0, committed=[1])
    w.progress(p)
    first = out.getvalue()
    assert first.count("\n") == 12 and "\x1b[1m1\x1b[0m" in first and "\x1b[1m\x1b[34m1" in first  # given, commit
    w.progress(p)
    assert out.getvalue()[len(first) :].startswith("\x1b[12F\x1b[J")  # back over the 12 lines, erase, redraw
    w.clear()
    assert out.getvalue().endswith("\x1b[12F\x1b[J") and w.drawn == 0
    assert draw([[0, 2]], [[0.2, 0.6]]) == "\x1b[2m.\x1b[0m \x1b[33m2\x1b[0m"


def test_event_decoder_follows_the_event_stream_rules():
    d = EventDecoder()
    got = [d.feed(line) for line in [": ping", "", "event: progress", "data: {", "data:}", "", "data: x", ""]]
    assert [g for g in got if g] == [("progress", "{\n}"), ("message", "x")]
