"""Fair share through a real engine-serve (issue 27): one client's burst against another's small requests.

Burst: `--heavy` requests (K=64, D=16, early exit off: 1,024 row-steps each) are sent at once; `--delay` seconds
later one K=1 request of an easy puzzle. Reported: the easy request's latency (its idle latency beside it) and the
heavy requests' makespan. Two tenants: with keys A and B, A sends the same burst while B sends one easy K=1 request
per second; reported: B's latencies (p50, max) against B alone, and A's makespan against A alone.

The server runs the source tree given with `--source` (default: this checkout), so the same script measures an older
commit as the baseline (a `git worktree` of it), with `--no-keys` where that commit has none:

    python benchmarks/fair_share.py --json benchmarks/results/fair-share.json
    git worktree add /tmp/before 6129892 && python benchmarks/fair_share.py --source /tmp/before --no-keys

The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx  # noqa: E402

from engine.machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EASY = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"  # the README's puzzle
HARD = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."
HEAVY = {"puzzle": HARD, "search": {"rollouts": 64, "steps": 16, "early_exit": "off"}, "timeout_s": 300}
LIGHT = {"puzzle": EASY, "search": {"rollouts": 1}, "timeout_s": 300}
KEYS = '[[keys]]\nname = "a"\nkey = "key-a"\n\n[[keys]]\nname = "b"\nkey = "key-b"\n'


class Server:
    def __init__(self, source: Path, port: int, keys: Path | None, threads: int, max_batch: int):
        cmd = [sys.executable, "-m", "server.main", "--port", str(port), "--threads", str(threads)]
        cmd += ["--max-batch", str(max_batch)]
        cmd += ["--checkpoint", str(ROOT / "checkpoints" / "sudoku-trm"), "--max-queued-requests", "256"]
        cmd += ["--api-keys-file", str(keys)] if keys else []
        env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(cmd, cwd=source, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self):
        end = time.monotonic() + 180
        while time.monotonic() < end:
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the server did not become ready")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(60)


async def post(http: httpx.AsyncClient, body: dict, key: str | None = None) -> float:
    start = time.perf_counter()
    r = await http.post("/solve", json=body, headers={"Authorization": f"Bearer {key}"} if key else {})
    r.raise_for_status()
    return time.perf_counter() - start


async def burst(url: str, heavy: int, delay: float, keyed: bool) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=heavy + 4)) as http:
        key_a, key_b = ("key-a", "key-b") if keyed else (None, None)
        idle = [await post(http, LIGHT, key_b) for _ in range(5)]
        start = time.perf_counter()
        heavies = [asyncio.ensure_future(post(http, HEAVY, key_a)) for _ in range(heavy)]
        await asyncio.sleep(delay)
        light = await post(http, LIGHT, key_b)
        await asyncio.gather(*heavies)
        makespan = time.perf_counter() - start
    return {"light_idle_s": statistics.median(idle), "light_behind_burst_s": light, "heavy_makespan_s": makespan}


async def tenants(url: str, heavy: int, keyed: bool, seconds: float) -> dict:
    key_a, key_b = ("key-a", "key-b") if keyed else (None, None)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=heavy + 8)) as http:

        async def steady(n: int) -> list[float]:
            out = []
            for _ in range(n):
                begin = time.perf_counter()
                out.append(await post(http, LIGHT, key_b))
                await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - begin)))
            return out

        alone_b = await steady(5)
        start = time.perf_counter()
        await asyncio.gather(*(post(http, HEAVY, key_a) for _ in range(heavy)))
        alone_a = time.perf_counter() - start
        start = time.perf_counter()

        async def burst_a() -> float:
            await asyncio.gather(*(post(http, HEAVY, key_a) for _ in range(heavy)))
            return time.perf_counter() - start

        a = asyncio.ensure_future(burst_a())
        b = await steady(int(seconds))
        shared_a = await a
    return {
        "b_alone_p50_s": statistics.median(alone_b),
        "b_loaded_p50_s": statistics.median(b),
        "b_loaded_max_s": max(b),
        "b_requests": len(b),
        "a_alone_makespan_s": alone_a,
        "a_shared_makespan_s": shared_a,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=ROOT, help="source tree whose server to run (the baseline's)")
    p.add_argument("--no-keys", action="store_true", help="one tenant (a baseline without API keys)")
    p.add_argument("--heavy", type=int, default=20)
    p.add_argument("--delay", type=float, default=3.0)
    p.add_argument("--seconds", type=float, default=20, help="two tenants: B's requests (one per second)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=64, help="the server's rows per step (its default: 64)")
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = None if args.no_keys else Path(tmp) / "keys.toml"
        if keys:
            keys.write_text(KEYS)
        with Server(args.source, args.port, keys, args.threads, args.max_batch) as server:
            result = {"burst": asyncio.run(burst(server.url, args.heavy, args.delay, keys is not None))}
            print(json.dumps(result["burst"]), flush=True)
            result["tenants"] = asyncio.run(tenants(server.url, args.heavy, keys is not None, args.seconds))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.source, capture_output=True, text=True)
    result.update(source_commit=commit.stdout.strip(), heavy=args.heavy, threads=args.threads, max_batch=args.max_batch)
    result["machine"] = describe("cpu")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
