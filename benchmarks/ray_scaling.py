"""Ray scale-out on one machine (issue 24), three ratios measured in one run:

1. /solve throughput of Ray Serve with 2 Engines replicas against 1 (one torch thread and one CPU each): closed-loop
   clients send the same fixed-work search (K rows x D steps, no early exit) until `--requests` have completed;
   `--rounds` alternations of 1 and 2 replicas, the median ratio reported.
2. Serve's overhead at one replica against plain `engine-serve` (a subprocess, one thread): p50 latency of an easy
   puzzle (the README's, one row, early exit: one supervision step), sent one at a time.
3. `engine-eval --ray` with 2 actors against 1 on `--puzzles` generated puzzles at equal search; the per-puzzle
   answers must be identical.

    pip install -e '.[ray]'
    python benchmarks/ray_scaling.py --json benchmarks/results/ray-scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the `engine` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from engine.machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EASY = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
SETTINGS = {"checkpoints": ["sudoku-trm"], "threads": 1}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def throughput(url: str, body: dict, requests: int, clients: int) -> dict:
    """Closed loop: `clients` workers send `body` until `requests` answers; requests/s of the 200s."""
    http = httpx.Client(base_url=url, timeout=600)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(lambda _: http.post("/solve", json=body).status_code, range(requests)))
    wall = time.perf_counter() - start
    assert statuses == [200] * requests, statuses
    return {"requests": requests, "wall_s": round(wall, 2), "requests_per_s": round(requests / wall, 3)}


def latency(url: str, n: int) -> dict:
    http, times = httpx.Client(base_url=url, timeout=60), []
    body = {"puzzle": EASY, "search": {"rollouts": 1, "early_exit": "verified"}}
    for i in range(n + 5):
        start = time.perf_counter()
        assert http.post("/solve", json=body).status_code == 200
        if i >= 5:  # the first few warm the connection pool
            times.append(time.perf_counter() - start)
    ms = lambda q: round(1000 * float(np.percentile(times, q)), 2)  # noqa: E731
    return {"n": n, "p50_ms": ms(50), "p90_ms": ms(90)}


def engine_serve_latency(n: int) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "server.main", "--port", str(port), "--threads", "1", "--checkpoint", "sudoku-trm"]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        return latency(url, n)
    finally:
        server.terminate()
        server.wait(60)


def serve_measurements(args) -> dict:
    import ray
    from ray import serve

    from server.ray_serve import application

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url, out = f"http://127.0.0.1:{port}", {}
    body = {"puzzle": EASY, "search": {"rollouts": args.rollouts, "steps": args.steps, "early_exit": "off"}}
    try:
        for round in range(args.rounds):  # 1 and 2 replicas alternate: a slow spell of the machine hits both
            for replicas in (1, 2):
                options = {"num_replicas": replicas, "ray_actor_options": {"num_cpus": 1}}
                serve.run(application(SETTINGS, engines=options), name="trm", route_prefix="/")
                throughput(url, body, args.clients, args.clients)  # warm the replicas and the connections
                out.setdefault(f"throughput_{replicas}", []).append(throughput(url, body, args.requests, args.clients))
                if replicas == 1 and round == 0:
                    out["serve_latency_1"] = latency(url, args.latency_n)
                serve.delete("trm")
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def eval_measurements(args, work: Path) -> dict:
    from engine.tasks import get_task
    from engine.train.data import generate_puzzles

    task = get_task("sudoku")
    inputs, _ = generate_puzzles(args.puzzles, np.random.default_rng(400), clues=(24, 28))
    (work / "p.txt").write_text("".join(task.to_text(p) + "\n" for p in inputs.astype(np.int64)))
    out = {}
    for actors in (1, 2):
        cmd = [sys.executable, "-m", "engine.eval", "--checkpoint", str(ROOT / "checkpoints" / "sudoku-trm")]
        cmd += ["--puzzles", str(work / "p.txt"), *args.search.split(), "--threads", "1", "--ray"]
        cmd += ["--concurrency", str(actors), "--puzzles-per-batch", "16", "--out", str(work / f"r{actors}.jsonl")]
        cmd += ["--json", str(work / f"r{actors}.json")]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
        summary = json.loads((work / f"r{actors}.json").read_text())
        out[f"eval_{actors}"] = {k: summary[k] for k in ("n", "exact_accuracy", "row_steps_per_puzzle", "wall_seconds")}
    answers = [[json.loads(line)["answer"] for line in (work / f"r{a}.jsonl").read_text().splitlines()] for a in (1, 2)]
    out["eval_identical_answers"] = answers[0] == answers[1]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=48, help="throughput: requests per configuration and round")
    p.add_argument("--rounds", type=int, default=3, help="throughput: rounds of 1 then 2 replicas (median ratio)")
    p.add_argument("--clients", type=int, default=8, help="throughput: concurrent closed-loop clients")
    p.add_argument("--rollouts", type=int, default=16, help="throughput: K of the fixed-work search")
    p.add_argument("--steps", type=int, default=16, help="throughput: D of the fixed-work search")
    p.add_argument("--latency-n", type=int, default=100, help="latency: sequential easy requests")
    p.add_argument("--puzzles", type=int, default=400, help="eval: generated puzzles (24-28 clues)")
    p.add_argument("--search", default="-K 16 -D 8 --diversity augment --early-exit verified --waves 2")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")

    result = {"machine": describe("cpu"), "date": time.strftime("%Y-%m-%d"), "args": vars(args)}
    result["engine_serve_latency"] = engine_serve_latency(args.latency_n)
    result.update(serve_measurements(args))
    with tempfile.TemporaryDirectory() as work:
        result.update(eval_measurements(args, Path(work)))
    r, per_s = result, lambda key: [x["requests_per_s"] for x in result[key]]  # noqa: E731
    by_round = [two / one for one, two in zip(per_s("throughput_1"), per_s("throughput_2"))]
    r["ratios"] = {
        "serve_throughput_2_over_1_by_round": [round(x, 2) for x in by_round],
        "serve_throughput_2_over_1": round(float(np.median(by_round)), 2),
        "serve_p50_overhead_ms": round(r["serve_latency_1"]["p50_ms"] - r["engine_serve_latency"]["p50_ms"], 2),
        "eval_speedup_2_over_1": round(r["eval_1"]["wall_seconds"] / r["eval_2"]["wall_seconds"], 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
