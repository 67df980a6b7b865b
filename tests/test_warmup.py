"""Warm before ready (issue 24): the engines run a few steps while loading, so deadline admission knows the pace
before /readyz says ready. Before, the pace was unknown until traffic arrived and admission took one request at a
time: a client sending the default /solve 4 at a time to a freshly ready server met 429s."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from live import free_port
from test_shipped import FAMOUS

from engine.runtime import Engine, Limits, Runner
from engine.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent


def test_warm_up_measures_the_pace_and_leaves_no_trace(tiny_model):
    engine = Engine(Runner(tiny_model, max_batch=8), get_task("sudoku"), Limits(max_batch=8))
    assert engine.scheduler.row_steps_per_s == 0
    pace = engine.warm_up(steps=2)
    assert pace > 0 and engine.scheduler.row_steps_per_s == pace
    assert engine.stats.steps == 0 and engine.stats.row_steps == 0 and not engine.busy


def variants(n: int) -> list[str]:
    """`n` distinct hard puzzles: the famous three under transposition and digit relabelling (as hard as they are)."""
    out = []
    for i in range(n):
        grid = np.array([0 if c == "." else int(c) for c in FAMOUS[i % 3][0]]).reshape(9, 9)
        grid = grid.T if (i // 3) % 2 else grid
        grid = np.where(grid > 0, (grid - 1 + i // 3) % 9 + 1, 0)
        out.append("".join(str(d) if d else "." for d in grid.ravel()))
    assert len(set(out)) == n
    return out


def test_eight_default_solves_sent_the_moment_ready_are_all_admitted_and_answered():
    """The issue's target, on a real `engine-serve` with the shipped solver: 8 concurrent default /solve requests
    of hard puzzles (timeout_s 300), sent as soon as /readyz turns 200, all answered 200 (none refused with 429)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "server.main", "--port", str(port), "--threads", "1", "--checkpoint", "sudoku-trm"]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 120
        while True:
            assert time.monotonic() < end and server.poll() is None, "engine-serve did not become ready"
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.02)

        def solve(puzzle: str) -> httpx.Response:
            return httpx.post(url + "/solve", json={"puzzle": puzzle, "timeout_s": 300}, timeout=310)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(solve, variants(8)))
        assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers if r.status_code != 200]
        assert all(r.json()["verified"] for r in answers)
    finally:
        server.terminate()
        server.wait(60)
