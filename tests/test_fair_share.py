"""Fair share through a real uvicorn (issue 27): a small request is not stuck behind another client's burst, and a
tenant's steady requests keep their latency while another tenant bursts, which still gets the rest of the batch.

The engine runs on the fixed-pace runner with a GPU's cost model (every step 20 ms whatever its rows), and latency
is counted in the engine's steps: the outcome is the scheduling policy's and not the machine's load (a 0.4 s stall of
a loaded CI machine once broke a bound in seconds). benchmarks/fair_share.py measures the real model on this CPU in
seconds (benchmarks/RESULTS.md)."""

import asyncio

import httpx
import pytest
from live import PUZZLE, LiveServer, app_for
from paced import PacedRunner, pace

from server.main import uvicorn_options
from server.settings import Settings

STEP_S = 0.02
HEAVY = {"puzzle": PUZZLE, "search": {"rollouts": 16, "steps": 8, "early_exit": "off"}, "timeout_s": 60}
ONE = {"puzzle": PUZZLE, "search": {"rollouts": 1, "steps": 4, "early_exit": "off"}, "timeout_s": 60}
LIGHT = {"puzzle": PUZZLE, "search": {"rollouts": 8, "steps": 4, "early_exit": "off"}, "timeout_s": 60}
LIMITS = dict(max_batch=16, max_rollouts=16, max_steps=8, max_queued_requests=64, max_queued_rows=1024)


@pytest.fixture
def gpu_paced(monkeypatch):
    pace(monkeypatch)
    monkeypatch.setattr(PacedRunner, "row_s", 0.0)
    monkeypatch.setattr(PacedRunner, "step_s", STEP_S)


def runner_of(live: LiveServer) -> PacedRunner:
    return next(iter(live.app.state.models.solvers.values())).engine.runner


async def post(http: httpx.AsyncClient, body: dict, key: str | None = None) -> None:
    r = await http.post("/solve", json=body, headers={"Authorization": f"Bearer {key}"} if key else {})
    assert r.status_code == 200, r.text


async def steps_of(runner: PacedRunner, *requests) -> int:
    """Engine steps from sending the requests to the last answer."""
    start = runner.steps
    await asyncio.gather(*requests)
    return runner.steps - start


def test_a_small_request_is_not_stuck_behind_a_burst(ckpt_dir, gpu_paced):
    """Ten requests of 16 rows x 8 steps fill a 16-row batch for 80 steps; a one-row request sent during them needs
    only its own 4 steps (FIFO made it wait for nearly all 80)."""

    async def run(url: str, runner: PacedRunner) -> tuple[int, int]:
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=20)) as http:
            heavy = asyncio.ensure_future(steps_of(runner, *(post(http, HEAVY) for _ in range(10))))
            await asyncio.sleep(10 * STEP_S)
            return await steps_of(runner, post(http, ONE)), await heavy

    with LiveServer(app_for(ckpt_dir, **LIMITS), **uvicorn_options(Settings())) as live:
        light, makespan = asyncio.run(run(live.url, runner_of(live)))
    assert light <= 4 + 8, (light, makespan)  # its own 4 steps, and a few more while HTTP carries it
    # the batch stayed full: the burst lost no throughput (160 rows x 8 steps and 1 x 4 fill 16 rows for 81 steps; a
    # few more as the last requests' rows end apart)
    assert makespan <= 81 + 12, (light, makespan)


def test_a_steady_tenant_keeps_its_latency_while_another_bursts(ckpt_dir, gpu_paced, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text('[[keys]]\nname = "a"\nkey = "key-a"\n\n[[keys]]\nname = "b"\nkey = "key-b"\n')

    async def steady(http: httpx.AsyncClient, runner: PacedRunner, n: int) -> list[int]:
        out = []
        for _ in range(n):
            out.append(await steps_of(runner, post(http, LIGHT, "key-b")))
            await asyncio.sleep(2 * STEP_S)
        return out

    async def run(url: str, runner: PacedRunner) -> dict:
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=20)) as http:
            alone_b = await steady(http, runner, 4)
            alone_a = await steps_of(runner, *(post(http, HEAVY, "key-a") for _ in range(10)))
            a = asyncio.ensure_future(steps_of(runner, *(post(http, HEAVY, "key-a") for _ in range(10))))
            loaded_b = await steady(http, runner, 6)
            return dict(alone_b=alone_b, loaded_b=loaded_b, alone_a=alone_a, shared_a=await a)

    with LiveServer(app_for(ckpt_dir, api_keys_file=keys, **LIMITS), **uvicorn_options(Settings())) as live:
        r = asyncio.run(run(live.url, runner_of(live)))
    # B's 8 rows get half the batch in every step: each request its 4 steps, and a few more while HTTP carries it
    # (per-request shares would give it 16/11 of a row a step: 22 steps; FIFO makes the first wait for A's burst)
    assert r["alone_b"] == [4] * 4 and sum(r["loaded_b"]) <= 6 * (4 + 4), r
    # A gets the rest: B's 6 x 32 row-steps cost A their share of the batch, 12 steps, and a few more as A's last
    # rows end apart
    assert r["shared_a"] <= r["alone_a"] + 12 + 8, r
