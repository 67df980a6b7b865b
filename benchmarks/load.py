"""HTTP load against a running `engine-serve`: a concurrency sweep, then an overload burst.

Sweep: at each concurrency C, C closed-loop workers send /solve requests (puzzles made by the exact solver's
generator) until `--requests` have completed; reported per C: ok / 429 / 5xx / other counts, p50 and p99 latency of
the successful requests, and throughput (ok requests/s, rows x steps/s). Overload: `--burst` requests at once; a
healthy server answers every one with 200 or 429 (with Retry-After), never 5xx, and every admitted (200) request
completes. The last output line is one JSON object with everything.

    engine-serve --port 8000 --max-queued-requests 8 &
    python benchmarks/load.py --url http://127.0.0.1:8000 --concurrency 1,2,4,8 --requests 32 --burst 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the `engine` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from engine.tasks import get_task  # noqa: E402
from engine.train.data import generate_puzzles  # noqa: E402


def percentile(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


async def one(http: httpx.AsyncClient, body: dict) -> tuple[int, float, dict | None, str | None]:
    start = time.perf_counter()
    try:
        r = await http.post("/solve", json=body)
    except httpx.HTTPError as e:
        return -1, time.perf_counter() - start, None, type(e).__name__
    took = time.perf_counter() - start
    return r.status_code, took, r.json() if r.status_code == 200 else None, r.headers.get("retry-after")


def tally(results: list, wall: float) -> dict:
    codes = [c for c, *_ in results]
    lat = [t for c, t, *_ in results if c == 200]
    work = sum(b["row_steps"] for c, _, b, _ in results if c == 200)
    return {
        "requests": len(results),
        "ok": codes.count(200),
        "429": codes.count(429),
        "5xx": sum(c >= 500 for c in codes),
        "other": sum(c not in (200, 429) and c < 500 for c in codes),
        "p50_s": percentile(lat, 50),
        "p99_s": percentile(lat, 99),
        "ok_per_s": len(lat) / wall,
        "row_steps_per_s": work / wall,
        "wall_s": wall,
    }


async def sweep_level(http, bodies: list[dict], concurrency: int, n: int) -> dict:
    results, next_i = [], iter(range(n))

    async def worker():
        for i in next_i:
            results.append(await one(http, bodies[i % len(bodies)]))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"concurrency": concurrency, **tally(results, time.perf_counter() - start)}


async def burst(http, bodies: list[dict], n: int) -> dict:
    start = time.perf_counter()
    results = await asyncio.gather(*(one(http, bodies[i % len(bodies)]) for i in range(n)))
    out = tally(results, time.perf_counter() - start)
    retry = [float(r) for c, _, _, r in results if c == 429 and r is not None]
    out["429_with_retry_after"] = len(retry)
    out["every_admitted_completed"] = all(b is not None and b["rollouts"] > 0 for c, _, b, _ in results if c == 200)
    out["healthy"] = out["5xx"] == 0 and out["other"] == 0 and out["429_with_retry_after"] == out["429"]
    return out


async def main_async(args) -> dict:
    task = get_task("sudoku")
    puzzles, _ = generate_puzzles(16, np.random.default_rng(0), clues=(30, 40))
    search = {"rollouts": args.rollouts, "steps": args.steps, "seed": 0}
    if args.early_exit:
        search["early_exit"] = args.early_exit
    bodies = [{"puzzle": task.to_text(p.astype(np.int64)), "search": search} for p in puzzles]
    timeout = httpx.Timeout(args.timeout, connect=10)
    limits = httpx.Limits(max_connections=max(args.burst, 64), max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=args.url, timeout=timeout, limits=limits) as http:
        models = (await http.get("/v1/models")).json()["data"]
        await one(http, bodies[0])  # warm-up
        levels = [await sweep_level(http, bodies, c, args.requests) for c in args.concurrency]
        overload = await burst(http, bodies, args.burst) if args.burst else None
        metrics = (await http.get("/metrics")).text
    rejected = [ln for ln in metrics.splitlines() if ln.startswith("trm_admission_rejections_total")]
    return {"url": args.url, "search": search, "models": models, "levels": levels, "overload": overload,
            "rejections": rejected, "client": f"{platform.machine()}, python {platform.python_version()}"}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    p.add_argument("--requests", type=int, default=32, help="completed requests per concurrency level")
    p.add_argument("--burst", type=int, default=64, help="simultaneous requests of the overload phase (0: skip)")
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--early-exit", choices=["off", "verified", "confident"])
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    out = asyncio.run(main_async(args))
    m = out["models"][0]
    print(
        f"server: {args.url}  model {m['id']} ({m.get('runner')}, {m['device']}, {m['dtype']})  search {out['search']}"
    )
    print("| C | requests | ok | 429 | 5xx | p50 s | p99 s | ok/s | row-steps/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for lv in out["levels"]:
        print(
            f"| {lv['concurrency']} | {lv['requests']} | {lv['ok']} | {lv['429']} | {lv['5xx']} | "
            f"{lv['p50_s']:.3f} | {lv['p99_s']:.3f} | {lv['ok_per_s']:.2f} | {lv['row_steps_per_s']:.0f} |"
        )
    if out["overload"]:
        o = out["overload"]
        print(
            f"overload: {o['requests']} at once -> {o['ok']} ok, {o['429']} x 429 ({o['429_with_retry_after']} with "
            f"Retry-After), {o['5xx']} x 5xx, {o['other']} other; every admitted completed: "
            f"{o['every_admitted_completed']}; healthy: {o['healthy']}"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
