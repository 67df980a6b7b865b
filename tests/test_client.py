"""The Python clients against a mocked transport: typed errors, retries that honour Retry-After, request bodies; and
`solutions=N` (the client and `engine-client solve --solutions`) against a real server on the shipped Sudoku solver."""

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
from live import LiveServer, app_for

import clients.client as client_module
from clients import (
    AsyncClient,
    BadRequest,
    Client,
    NotFound,
    Overloaded,
    ServerError,
    Solution,
    SolveResult,
    Timeout,
    Unavailable,
)
from engine.tasks import get_task

PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
OK = {
    "solution": PUZZLE,
    "grid": [[0] * 9] * 9,
    "verified": True,
    "confidence": 0.9,
    "agreement": 1.0,
    "selector": "q",
    "rollouts": 2,
    "steps": 3,
    "model": "m",
    "timing": {"total_s": 0.1},
}


def error(status, type="x", message="boom", **headers):
    return httpx.Response(status, json={"error": {"type": type, "message": message}}, headers=headers)


def scripted(*responses):
    """A transport answering with `responses` in turn, recording the requests."""
    seen, queue = [], list(responses)

    def handler(request):
        seen.append(request)
        r = queue.pop(0)
        if isinstance(r, Exception):
            raise r
        return r

    return seen, handler


@pytest.fixture
def sleeps(monkeypatch):
    slept = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)

    async def fake_sleep(s):
        slept.append(s)

    monkeypatch.setattr(client_module.asyncio, "sleep", fake_sleep)
    return slept


def test_solve_sends_the_contract_body_and_parses_the_result(sleeps):
    seen, handler = scripted(httpx.Response(200, json=OK))
    with Client("http://svc", transport=httpx.MockTransport(handler)) as c:
        res = c.solve(PUZZLE, rollouts=2, steps=3, selector=None, timeout_s=5, model="m")
    assert json.loads(seen[0].content) == {
        "puzzle": PUZZLE,
        "model": "m",
        "timeout_s": 5,
        "search": {"rollouts": 2, "steps": 3},
    }
    assert seen[0].url.path == "/solve" and res.verified and res.rollouts == 2 and res.raw == OK


@pytest.mark.parametrize(
    "status, kind",
    [(422, BadRequest), (413, BadRequest), (404, NotFound), (504, Timeout), (500, ServerError)],
)
def test_errors_are_typed_and_not_retried(sleeps, status, kind):
    seen, handler = scripted(error(status, "t", "row 2, column 3: bad", **{"x-request-id": "r1"}))
    with Client("http://svc", transport=httpx.MockTransport(handler)) as c, pytest.raises(kind) as e:
        c.solve(PUZZLE)
    assert len(seen) == 1 and sleeps == []
    assert (e.value.status, e.value.type, e.value.message, e.value.request_id) == (
        status,
        "t",
        "row 2, column 3: bad",
        "r1",
    )


def test_429_and_503_are_retried_after_the_servers_retry_after(sleeps):
    seen, handler = scripted(
        error(429, **{"retry-after": "3"}), error(503, **{"retry-after": "1"}), httpx.Response(200, json=OK)
    )
    with Client("http://svc", transport=httpx.MockTransport(handler), max_retries=2) as c:
        assert c.solve(PUZZLE).model == "m"
    assert len(seen) == 3 and sleeps == [3.0, 1.0]


def test_retries_run_out_with_the_typed_error(sleeps):
    _, handler = scripted(*[error(429, "overloaded", **{"retry-after": "2"})] * 3)
    with (
        Client("http://svc", transport=httpx.MockTransport(handler), max_retries=2) as c,
        pytest.raises(Overloaded) as e,
    ):
        c.solve(PUZZLE)
    assert e.value.retry_after == 2 and sleeps == [2.0, 2.0]


def test_connection_failures_back_off_then_raise_unavailable(sleeps):
    _, handler = scripted(*[httpx.ConnectError("refused")] * 2)
    with Client("http://svc", transport=httpx.MockTransport(handler), max_retries=1, backoff=0.5) as c:
        with pytest.raises(Unavailable, match="ConnectError"):
            c.solve(PUZZLE)
    assert len(sleeps) == 1 and 0.3 <= sleeps[0] <= 0.7  # exponential backoff with jitter, no Retry-After
    _, handler = scripted(httpx.ReadTimeout("slow"))
    with Client("http://svc", transport=httpx.MockTransport(handler)) as c, pytest.raises(Timeout):
        c.solve(PUZZLE)


def test_async_client_retries_and_generates(sleeps):
    gen = {"items": [], "complete": False, "sampled": 4, "valid": 0, "validity": 0.0, "model": "g"}
    seen, handler = scripted(error(429, **{"retry-after": "1"}), httpx.Response(200, json=gen))

    async def main():
        async with AsyncClient("http://svc", transport=httpx.MockTransport(handler)) as c:
            return await c.generate(2, "puzzle", clues=30, seed=7)

    res = asyncio.run(main())
    assert res.sampled == 4 and sleeps == [1.0]
    assert json.loads(seen[-1].content) == {"count": 2, "kind": "puzzle", "clues": 30, "seed": 7}


def test_cli_reads_a_puzzle_file_and_draws_even_a_wrong_grid(tmp_path):
    from clients.cli import read_puzzle, render

    f = tmp_path / "p.txt"
    f.write_text("# a comment\n" + "\n".join(PUZZLE[i : i + 9] for i in range(0, 81, 9)) + "\n")
    args = type("Args", (), {"file": str(f), "puzzle": None})()
    assert "".join(read_puzzle(args).split()) == PUZZLE
    wrong = [[1] * 9] * 9  # nine 1s per row: the codec refuses it, the picture still shows it
    picture = render("sudoku", wrong)
    assert picture.splitlines()[0] == "1 1 1 | 1 1 1 | 1 1 1" and "------+-------+------" in picture


def test_cli_flags_reach_the_request_bodies_and_the_server_takes_them(client, monkeypatch, tmp_path, capsys):
    """`engine-client`'s documented flags (`--help`, README) become the request it sends: the body of /solve and
    /generate, the URL, timeout and retries of the client. The requests go to the app on a tiny checkpoint (the
    `client` fixture), which must accept them."""
    import clients.cli as cli

    seen, made = [], []

    def forward(request):
        seen.append(request)
        r = client.request(
            request.method, request.url.path, content=request.content, headers={"content-type": "application/json"}
        )
        return httpx.Response(r.status_code, content=r.content, headers={"content-type": r.headers["content-type"]})

    def recording_client(url, **kwargs):
        made.append((url, kwargs))
        return Client(url, transport=httpx.MockTransport(forward), **kwargs)

    monkeypatch.setattr(cli, "Client", recording_client)
    top = ["--url", "http://svc:9", "--timeout", "30", "--retries", "0", "--json"]
    cli.main(
        [*top, "solve", PUZZLE, "--task", "sudoku", "--model", "tiny", "--rollouts", "2", "--steps", "1"]
        + ["--noise", "0.5", "--selector", "vote", "--seed", "3", "--early-exit", "verified", "--strategy", "rollouts"]
        + ["--diversity", "both", "--max-nodes", "7", "--timeout-s", "9"]
    )
    assert made[0][0] == "http://svc:9" and made[0][1]["timeout"] == 30 and made[0][1]["max_retries"] == 0
    assert seen[-1].url.path == "/solve" and json.loads(seen[-1].content) == {
        "puzzle": PUZZLE,
        "task": "sudoku",
        "model": "tiny",
        "timeout_s": 9,
        "search": {
            "rollouts": 2,
            "steps": 1,
            "noise": 0.5,
            "selector": "vote",
            "seed": 3,
            "early_exit": "verified",
            "strategy": "rollouts",
            "diversity": "both",
            "max_nodes": 7,
        },
    }
    answer = json.loads(capsys.readouterr().out)
    assert answer["rollouts"] == 2 and answer["selector"] == "vote" and answer["model"] == "tiny"

    f = tmp_path / "p.txt"
    f.write_text("# the README puzzle\n" + PUZZLE + "\n")
    cli.main([*top, "solve", "--file", str(f), "--strategy", "commit", "--max-nodes", "5", "--steps", "1"])
    assert json.loads(seen[-1].content) == {
        "puzzle": PUZZLE,
        "search": {"steps": 1, "strategy": "commit", "max_nodes": 5},
    }
    assert json.loads(capsys.readouterr().out)["strategy"] == "commit"

    cli.main([*top, "generate", "--count", "2", "--kind", "puzzle", "--clues", "30", "--seed", "1", "--model", "tiny"])
    assert seen[-1].url.path == "/generate"
    assert json.loads(seen[-1].content) == {"count": 2, "kind": "puzzle", "clues": 30, "seed": 1, "model": "tiny"}
    body = json.loads(capsys.readouterr().out)
    assert body["seed"] == 1 and all(item["clues"] == 30 for item in body["items"])
    cli.main([*top, "generate", "--method", "commit"])
    assert json.loads(seen[-1].content) == {"count": 1, "kind": "grid", "method": "commit"}
    capsys.readouterr()

    cli.main([*top, "models"])
    assert seen[-1].url.path == "/v1/models" and seen[-1].method == "GET"
    assert json.loads(capsys.readouterr().out)[0]["id"] == "tiny"  # client.models(): the list


# -- several solutions (`solutions=N`) ---------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
EMPTY = "." * 81  # far more solutions than the server's counter counts: no count, no coverage
SIX = ".3...8.1267.19534..983..5.7..9..14..4...5.....13..4...9..5.7...28..1.6.5.45....7."  # exactly 6 solutions
SUDOKU = get_task("sudoku")


def distinct_solutions_of(puzzle: str, grids: list) -> int:
    """How many distinct grids there are, each checked to be a solution of `puzzle`."""
    answers = [SUDOKU.encode(g) for g in grids]
    assert all(SUDOKU.verify(SUDOKU.encode(puzzle), a) for a in answers)
    return len({a.tobytes() for a in answers})


def test_solutions_goes_top_level_and_the_result_carries_them(sleeps):
    found = {"solution": PUZZLE, "grid": [[1] * 9] * 9, "samples": 3, "score": 0.75}
    answer = {**OK, "solutions": [found, {**found, "samples": 1}], "count": 6, "coverage": 2 / 6}
    seen, handler = scripted(httpx.Response(200, json=answer), httpx.Response(200, json=OK))
    with Client("http://svc", transport=httpx.MockTransport(handler)) as c:
        res = c.solve(PUZZLE, solutions=2, rollouts=4)
        plain = c.solve(PUZZLE)
    assert json.loads(seen[0].content) == {"puzzle": PUZZLE, "solutions": 2, "search": {"rollouts": 4}}
    assert res.solutions == [Solution(PUZZLE, [[1] * 9] * 9, 3, 0.75), Solution(PUZZLE, [[1] * 9] * 9, 1, 0.75)]
    assert (res.count, res.coverage) == (6, 2 / 6)
    assert "solutions" not in json.loads(seen[1].content)
    assert (plain.solutions, plain.count, plain.coverage) == (None, None, None)  # an answer without the fields


@pytest.fixture(scope="module")
def shipped():
    """A real uvicorn serving the shipped Sudoku solver."""
    with LiveServer(app_for(ROOT / "checkpoints" / "sudoku-trm")) as live:
        yield live


def test_clients_get_several_distinct_verified_solutions_sync_async_and_streamed(shipped):
    with Client(shipped.url) as c:
        res = c.solve(EMPTY, solutions=3, timeout_s=60)
        assert distinct_solutions_of(EMPTY, [s.solution for s in res.solutions]) == 3
        assert all(s.samples >= 1 and 0 <= s.score <= 1 for s in res.solutions)
        assert res.solution == res.solutions[0].solution and (res.count, res.coverage) == (None, None)
        six = c.solve(SIX, solutions=3)
        assert distinct_solutions_of(SIX, [s.grid for s in six.solutions]) == 3
        assert (six.count, six.coverage) == (6, 0.5)
        assert c.solve(SIX).solutions is None and c.solve(SIX).count == 6  # not asked for: no list, still the count
        streamed = list(c.solve_stream(EMPTY, solutions=3, timeout_s=60))[-1]
        assert isinstance(streamed, SolveResult)
        assert distinct_solutions_of(EMPTY, [s.solution for s in streamed.solutions]) == 3

    async def run():
        async with AsyncClient(shipped.url) as ac:
            plain = await ac.solve(SIX, solutions=4)
            events = [e async for e in ac.solve_stream(SIX, solutions=2)]
            return plain, events[-1]

    plain, streamed = asyncio.run(run())
    assert distinct_solutions_of(SIX, [s.grid for s in plain.solutions]) == 4 and plain.coverage == pytest.approx(4 / 6)
    assert distinct_solutions_of(SIX, [s.grid for s in streamed.solutions]) == 2 and streamed.count == 6


def test_cli_prints_every_solution_numbered_then_count_and_coverage(shipped, capsys):
    from clients.cli import main as cli_main

    cli_main(["--url", shipped.url, "solve", SIX, "--solutions", "3"])
    out = capsys.readouterr().out
    blocks = re.split(r"^# \d+: .*$", out, flags=re.M)
    headers = re.findall(r"^# (\d+): (\d+) samples?, score (\d\.\d{3})$", out, flags=re.M)
    assert [int(n) for n, _, _ in headers] == [1, 2, 3] and all(int(s) >= 1 for _, s, _ in headers)
    grids = ["".join(re.findall(r"[1-9]", "\n".join(b.strip().splitlines()[:11]))) for b in blocks[1:]]
    assert all("------+-------+------" in b for b in blocks[1:])  # drawn as the single answer is
    assert distinct_solutions_of(SIX, grids) == 3
    assert "verified: yes" in out and "3 distinct solutions of the puzzle's 6, coverage 50%" in out

    cli_main(["--url", shipped.url, "solve", EMPTY, "--solutions", "2", "--timeout-s", "60"])
    out = capsys.readouterr().out
    assert re.findall(r"^# (\d+):", out, flags=re.M) == ["1", "2"]
    assert "2 distinct solutions\n" in out and "coverage" not in out  # the empty grid's count is not known

    cli_main(["--url", shipped.url, "solve", SIX])  # no --solutions: one answer, and the hint
    out = capsys.readouterr().out
    assert "# 1" not in out and "the puzzle has 6 solutions (--solutions N lists them)" in out
