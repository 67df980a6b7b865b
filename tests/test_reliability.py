"""Reliability (issue 16): deadline-aware admission, the body limit on bytes received, parse errors named, no host
paths, strict types, idle connections closed, unsolvable puzzles refused, the resolve/cancel race, graceful shutdown
on a real SIGTERM, and a CPU-sized chaos/load run. Tiny random models built here; nothing read from ../shared/."""

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from live import PUZZLE, SMALL, LiveServer, app_for, error_of, free_port, metric, solver, wait_ready
from paced import pace

from engine.runtime import Engine, Limits, Overloaded, Request, Runner, Scheduler
from engine.search import SearchParams
from engine.tasks import get_task
from engine.tasks.solvable import no_solution
from server.app import create_app
from server.main import uvicorn_options
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SUDOKU = get_task("sudoku")


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
    s.row_steps_per_s = 40.0
    with pytest.raises(Overloaded) as e:  # 400 row-steps sharing with the 400 admitted: 800 at 40/s = 20 s > 5 s
        s.admit(sudoku_request(rollouts=4, steps=100, timeout_s=5))
    # retry once the shared work fits: 20 s - 5 / 1.25 s = 16 s
    assert e.value.reason == "deadline" and e.value.retry_after == 16 and "5 s deadline" in str(e.value)
    # a short one shares the batch with the long one: done after 40 + 40 row-steps (2 s), within 5 s
    s.admit(sudoku_request(rollouts=4, steps=10, timeout_s=5))
    s.admit(sudoku_request(rollouts=4, steps=10))  # no deadline: only the caps apply
    assert s.queued == (3, 12)
    assert s.retry_after() == 12  # all 480 row-steps at 40/s, no longer capped at 60 s when the truth is longer


def test_the_deadline_estimate_follows_fair_sharing():
    s = Scheduler(Limits(max_batch=8), slots=16)
    s.row_steps_per_s = 100.0
    heavy = [sudoku_request(rollouts=8, steps=100) for _ in range(3)]  # 800 row-steps each
    for r in heavy:
        s.admit(r)
    small = sudoku_request(rollouts=1, steps=10)  # 10 row-steps: done once each heavy one has run 10 too
    assert s.estimate(small) == pytest.approx(max((10 + 3 * 10) / 100, 10 * 8 / 100))
    other = Request(SUDOKU, SUDOKU.encode(PUZZLE), SearchParams(rollouts=8, steps=100), tenant="b")
    # tenant b's 800 row-steps against tenant "" (2400): each tenant runs min(its work, 800) -> 1600 at 100/s
    assert s.estimate(other) == pytest.approx(16.0)
    assert s.estimate(heavy[0]) == pytest.approx(24.0)  # its own tenant's three, equal: all of them


def test_a_deadline_refusal_is_429_with_retry_after_and_counted(client):
    eng = solver(client).engine
    release, run = threading.Event(), eng.runner.launch
    eng.runner.launch = lambda batch: (release.wait(30), run(batch))[1]  # the engine is busy with a long request
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
        eng.runner.launch = run


# -- item 2: the body limit on the bytes received ----------------------------------------------------------------------


def test_the_body_limit_counts_bytes_received_whatever_content_length_says(ckpt_dir):
    with TestClient(app_for(ckpt_dir, max_body_bytes=1024)) as c:
        wait_ready(c)
        big = json.dumps({"puzzle": PUZZLE, "model": "x" * 2000}).encode()
        # httpx sends the given Content-Length (5) with no Transfer-Encoding; the app receives all 2 KB
        r = c.post("/solve", content=iter([big]), headers={"content-type": "application/json", "content-length": "5"})
        assert r.status_code == 413 and error_of(r) == {
            "type": "payload_too_large",
            "message": "the request body exceeds the limit of 1024 bytes",
        }
        both = {"content-type": "application/json", "content-length": "5", "transfer-encoding": "chunked"}
        r = c.post("/solve", content=iter([big]), headers=both)
        assert r.status_code == 400 and error_of(r)["type"] == "bad_request"
        assert "Content-Length and Transfer-Encoding" in error_of(r)["message"]


def http_raw(port: int, head: bytes, body_chunks=(), timeout=10.0) -> tuple[int, dict, bytes]:
    """Send a hand-made request (headers the HTTP clients refuse to send) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the body ended: what a limit should do
        data = b""
        while True:
            try:
                part = s.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
    head_part, _, rest = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, rest


def test_conflicting_framing_headers_are_refused_on_a_real_server(ckpt_dir):
    app = app_for(ckpt_dir, max_body_bytes=1024)
    with LiveServer(app) as live:
        head = (
            b"POST /solve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 65536
        chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 64 + [b"0\r\n\r\n"]  # 4 MiB, chunked
        status, headers, body = http_raw(live.port, head, chunks)
        assert status == 400 and headers.get("connection") == "close"
        assert json.loads(body)["error"]["type"] == "bad_request"
        head = head.replace(b"Content-Length: 5\r\n", b"")
        status, _, body = http_raw(live.port, head, chunks)
        assert status == 413 and json.loads(body)["error"]["type"] == "payload_too_large"


# -- item 6: parse errors named, in the one shape ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        (b"[" * 5000 + b"]" * 5000, "body: the JSON is nested deeper than the parser's limit"),
        (b'{"puzzle": "\xff\xfe"}', "body: invalid UTF-8 at byte 12"),
        (b'{"puzzle": "x", "timeout_s": ' + b"9" * 5000 + b"}", "body: an integer has more than 4300 digits"),
        (b'{"puzzle": "x",\n  "search": {rollouts: 2}}', "body: invalid JSON at line 2, column 14: Expecting property"),
    ],
)
def test_parse_errors_are_422_naming_the_fault(client, body, message):
    r = client.post("/solve", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and error_of(r)["type"] == "invalid_request"
    assert error_of(r)["message"].startswith(message), error_of(r)["message"]


def test_every_status_the_service_returns_is_documented(client):
    spec = client.get("/openapi.json").json()["paths"]
    assert {"400", "404", "413", "422", "429", "503", "504"} <= set(spec["/solve"]["post"]["responses"])


# -- item 5: unsolvable puzzles proven at admission --------------------------------------------------------------------


@pytest.mark.parametrize(
    "puzzle, why",
    [
        ("12345678." + "........9" + "." * 63, "row 1, column 9 has no candidate digit"),
        # every cell has a candidate, yet row 1's last two cells both need the 9
        ("1234567.." + "." * 18 + ".......8." + "." * 18 + "........8" + "." * 18, "no digits fill the blanks"),
    ],
)
def test_an_unsolvable_puzzle_is_422_naming_why(client, puzzle, why):
    r = client.post("/solve", json={"puzzle": puzzle})
    assert r.status_code == 422 and error_of(r)["type"] == "invalid_puzzle"
    assert error_of(r)["message"].startswith(f"puzzle: the puzzle has no solution: {why}")
    assert not solver(client).engine.stats.row_steps  # refused before any model work


def test_puzzles_with_many_solutions_stay_valid_input(client):
    assert client.post("/solve", json={"puzzle": "." * 81, "search": {"rollouts": 1, "steps": 1}}).status_code == 200


def test_the_other_exact_solvers_prove_no_solution():
    queens = get_task("nqueens")
    assert no_solution(queens, queens.encode("." * 64)) is None
    assert "no placement" in no_solution(queens, queens.encode("Q" + "." * 16 + "Q" + "." * 46))  # (1,1), (3,2)
    maze = get_task("maze")
    rows = ["#" * 30] + ["#" + " " * 28 + "#"] * 28 + ["#" * 30]
    rows[5], rows[25] = "#S" + " " * 27 + "#", "#" + " " * 27 + "G#"
    assert no_solution(maze, maze.encode("".join(rows))) is None
    rows[15] = "#" * 30  # a wall across
    assert no_solution(maze, maze.encode("".join(rows))) == "no path leads from the start to the goal"


# -- item 7: no host paths, strict types, idle connections closed ------------------------------------------------------


def test_responses_show_no_absolute_host_path(ckpt_dir, tmp_path):
    with TestClient(create_app(Settings(checkpoint_root=ckpt_dir.parent, checkpoints=["tiny"], **SMALL))) as c:
        wait_ready(c)
        (m,) = c.get("/v1/models").json()["data"]
        assert m["path"] == "tiny"
    with TestClient(app_for(ckpt_dir)) as c:  # named by an absolute path outside the root: its directory name
        wait_ready(c)
        assert c.get("/v1/models").json()["data"][0]["path"] == "tiny"
    missing = tmp_path / "deep" / "missing"
    with TestClient(app_for(missing)) as c:
        for _ in range(200):
            if "failed" in c.get("/readyz").text:
                break
            time.sleep(0.02)
        for r in (c.get("/readyz"), c.post("/solve", json={"puzzle": PUZZLE})):
            message = error_of(r)["message"]
            assert r.status_code == 503 and "missing" in message and "config.json is missing" in message
            assert str(tmp_path) not in message and "/deep/" not in message, message


@pytest.mark.parametrize(
    "body, field",
    [
        ({"puzzle": PUZZLE, "search": {"rollouts": "4"}}, "search.rollouts"),
        ({"puzzle": PUZZLE, "search": {"steps": True}}, "search.steps"),
        ({"puzzle": PUZZLE, "search": {"noise": "0.5"}}, "search.noise"),
        ({"puzzle": PUZZLE, "timeout_s": "5"}, "timeout_s"),
    ],
)
def test_no_string_or_bool_coercion_at_the_http_boundary(client, body, field):
    r = client.post("/solve", json=body)
    assert r.status_code == 422 and error_of(r)["message"].startswith(field), r.json()


def test_ints_still_pass_as_floats(client):
    body = {"puzzle": PUZZLE, "search": {"rollouts": 1, "steps": 1, "noise": 1}, "timeout_s": 30}
    assert client.post("/solve", json=body).status_code == 200


def test_a_connection_that_never_sends_a_byte_is_closed(ckpt_dir):
    with LiveServer(app_for(ckpt_dir), **uvicorn_options(Settings(idle_timeout_s=1))) as live:
        with socket.create_connection(("127.0.0.1", live.port), timeout=10) as s:
            start = time.monotonic()
            assert s.recv(1) == b""  # closed by the server (a timeout here raises instead)
            assert time.monotonic() - start < 5
        with socket.create_connection(("127.0.0.1", live.port), timeout=10) as s:  # slow headers: same deadline
            start = time.monotonic()
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            time.sleep(0.6)
            s.sendall(b"Host: x\r\n")
            assert s.recv(1) == b"" and time.monotonic() - start < 5
        assert httpx.get(live.url + "/healthz").status_code == 200  # a real request is unaffected


# -- item 8: chaos and load (loopback, CPU-sized) ----------------------------------------------------------------------


def burst(url: str, bodies: list[dict], timeout: float = 60.0) -> list:
    """POST every body to /solve at once; each outcome is a response or the transport error raised."""

    async def run():
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as c:
            return await asyncio.gather(*(c.post("/solve", json=b) for b in bodies), return_exceptions=True)

    return asyncio.run(run())


def check_answers(bodies: list[dict], outcomes: list, allowed=(200, 429)) -> dict[int, int]:
    """Every outcome a response in `allowed`, in the one error shape, 429s with a Retry-After, 200s verified by the
    rules (a random model is rarely right: `verified` must say what the verifier says, and a fault when false)."""
    counts: dict[int, int] = {}
    for body, r in zip(bodies, outcomes):
        assert isinstance(r, httpx.Response), f"transport error: {r!r}"
        assert r.status_code in allowed, (r.status_code, r.text)
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
        if r.status_code == 200:
            answer = r.json()
            tokens = np.asarray(answer["grid"]).reshape(-1) + 1  # digit d -> token d + 1 (the codec's encoding)
            fault = SUDOKU.check(SUDOKU.encode(body["puzzle"]), tokens)
            assert answer["verified"] is (fault is None) and (answer["fault"] is None) is (fault is None)
        else:
            error_of(r)
            if r.status_code in (429, 503):
                assert int(r.headers["retry-after"]) >= 1
    return counts


def test_a_burst_far_beyond_capacity_gives_only_200s_and_429s(ckpt_dir, monkeypatch):
    """On the fixed-pace runner, so the deadline estimates hold whatever else the machine runs: what is admitted
    finishes before its deadline (no 504), the rest is refused at once with 429 and a Retry-After."""
    pace(monkeypatch)
    app = app_for(ckpt_dir, max_steps=64, max_queued_requests=32)
    with LiveServer(app, **uvicorn_options(Settings())) as live:
        eng = next(iter(app.state.models.solvers.values())).engine
        search = [{"rollouts": 4, "steps": 32, "seed": i} for i in range(80)]  # 0.64 s each at the fixed pace
        bodies = [{"puzzle": PUZZLE, "search": s, "timeout_s": 4} for s in search]
        start = time.monotonic()
        outcomes = burst(live.url, bodies)
        took = time.monotonic() - start
        counts = check_answers(bodies, outcomes)
        assert counts.get(200, 0) >= 3 and counts.get(429, 0) >= 40, counts
        refused = [r.elapsed.total_seconds() for r in outcomes if r.status_code == 429]
        assert max(refused) < 2.0, refused  # refused on admission, not by waiting out the 4 s deadline
        print(f"burst of {len(bodies)}: {counts} in {took:.1f} s, pace {eng.scheduler.row_steps_per_s:.0f} row-steps/s")
        text = httpx.get(live.url + "/metrics").text
        assert metric(text, "trm_admission_rejections_total", model="tiny", reason="deadline") >= 1
        assert not eng.busy


def test_a_burst_on_the_real_model_resolves_every_request_in_the_one_shape(ckpt_dir):
    """The same burst on the real model, whose pace moves with the machine's load: a 504 may happen when the pace
    drops mid-burst, but never a transport error or another shape, and every admitted request resolves."""
    app = app_for(ckpt_dir, max_steps=64, max_queued_requests=32)
    with LiveServer(app, **uvicorn_options(Settings())) as live:
        eng = next(iter(app.state.models.solvers.values())).engine
        bodies = [
            {"puzzle": PUZZLE, "search": {"rollouts": 4, "steps": 32, "seed": i}, "timeout_s": 4} for i in range(80)
        ]
        counts = check_answers(bodies, burst(live.url, bodies), allowed=(200, 429, 504))
        assert counts.get(200, 0) >= 1, counts
        assert not eng.busy and not eng.scheduler.active


def test_sigterm_mid_burst_drains_and_loses_no_admitted_request(ckpt_dir, tmp_path):
    """engine-serve in a real process, on the fixed-pace runner (tests/paced.py): SIGTERM while requests run.
    /readyz says "draining" at once and stays
    reachable, new work gets 503 + Retry-After, what can finish in the drain window answers 200, what cannot gets a
    JSON 503; then the process exits. Nothing ends in a transport error, a 5xx other than 503, or plain text."""
    port, drain_s = free_port(), 6
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "w")
    cmd = [sys.executable, str(ROOT / "tests" / "paced.py"), "--checkpoint", str(ckpt_dir), "--port", str(port)]
    cmd += ["--drain-timeout", str(drain_s), "--max-steps", "100000", "--max-batch", "8", "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=log)
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            time.sleep(0.2)
        start = time.monotonic()
        assert httpx.post(url + "/solve", json={"puzzle": PUZZLE, "search": {"rollouts": 1, "steps": 100}}).is_success
        # one row's step, HTTP included, x the 8 rows of a full batch: fair share runs every admitted request in
        # every step, so under the burst a request's step takes a full batch's time
        per_step = (time.monotonic() - start) / 100 * 8

        def solve(seconds: float, timeout_s: float = 300, **search) -> dict:
            steps = max(1, int(seconds / per_step))
            return {"puzzle": PUZZLE, "search": {"rollouts": 1, "steps": steps, **search}, "timeout_s": timeout_s}

        # one that ends inside the drain window, two that cannot, and a crowd of mid-sized ones (some refused)
        bodies = [solve(1.5), solve(60), solve(60)] + [solve(0.5 + i % 4, 8, seed=i) for i in range(20)]
        outcomes: list = []
        sender = threading.Thread(target=lambda: outcomes.extend(burst(url, bodies, timeout=120)))
        sender.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 503 and "draining" in error_of(ready)["message"]
        assert time.monotonic() - signalled < 2
        late = httpx.post(url + "/solve", json={"puzzle": PUZZLE})
        assert late.status_code == 503 and error_of(late)["type"] == "unavailable" and late.headers["retry-after"]
        sender.join(120)
        proc.wait(drain_s + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    counts = check_answers(bodies, outcomes, allowed=(200, 429, 503))
    assert outcomes[0].status_code == 200, outcomes[0].text  # in flight at the signal, done within the drain
    for cut in outcomes[1:3]:
        assert cut.status_code == 503 and "shut down before the request finished" in error_of(cut)["message"]
    assert "Traceback" not in text and "CancelledError" not in text, text
    print(f"SIGTERM mid-burst: {counts}")
