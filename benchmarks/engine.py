"""Engine throughput: many concurrent requests through the batching engine vs the same requests one at a time.

Throughput is rows x supervision steps per second. The engine runs twice, pipelined (the CUDA default: step t+1 is
launched before step t is booked) and not, to show what the overlap gains. Both sides run in this one process, one
after the other, on the same model and puzzles, so their ratios are meaningful on a shared machine. A second table
times one engine step at every bucket size of the ladder. The last output line is one JSON object (throughput_ratio,
pipeline_gain, device, ...).

    python benchmarks/engine.py --checkpoint checkpoints/sudoku-trm --requests 32
    python benchmarks/engine.py --preset sudoku-mlp --device cuda --requests 256 --max-batch 512   # paper size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the `engine` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import torch

from engine.checkpoint import load_checkpoint
from engine.machine import describe
from engine.models import TRM, preset
from engine.models.config import compute_dtype
from engine.runtime import AsyncEngine, Batch, Engine, Limits, Runner
from engine.search import SearchParams, run_rollouts
from engine.tasks import get_task
from engine.train.data import generate_puzzles


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def one_at_a_time(model, puzzles: np.ndarray, params: SearchParams, device: str) -> float:
    start = time.perf_counter()
    for p in puzzles:
        run_rollouts(model, p, params, device)
    sync(device)
    return time.perf_counter() - start


def concurrent(engine: Engine, puzzles: np.ndarray, params: SearchParams) -> float:
    async def main() -> float:
        facade = AsyncEngine(engine)
        start = time.perf_counter()
        await asyncio.gather(*(facade.search(p, params.replace(seed=i)) for i, p in enumerate(puzzles)))
        elapsed = time.perf_counter() - start
        await facade.shutdown()
        return elapsed

    return asyncio.run(main())


def bucket_times(runner: Runner, seq_len: int, repeats: int) -> dict[int, float]:
    """Seconds per engine step at each bucket size (all rows noisy, mid-rollout)."""
    times = {}
    for size in runner.buckets:
        batch = Batch(
            slots=np.arange(size),
            fresh=np.zeros(size, dtype=bool),
            inputs=np.ones((size, seq_len), dtype=np.int64),
            puzzle_ids=np.zeros(size, dtype=np.int64),
            seeds=np.arange(size),
            steps=np.zeros(size, dtype=np.int64),
            sigma_z=np.full(size, 0.3, dtype=np.float32),
            sigma_y=np.zeros(size, dtype=np.float32),
        )
        runner.run(batch)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            runner.run(batch)
        times[size] = (time.perf_counter() - start) / repeats
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", default="checkpoints/sudoku-trm")
    src.add_argument("--preset", help="a randomly initialised model preset instead (e.g. sudoku-mlp)")
    p.add_argument("--requests", type=int, default=32, help="concurrent requests")
    p.add_argument("--rollouts", type=int, default=1, help="K per request")
    p.add_argument("--steps", type=int, default=16, help="D per request")
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--max-batch", type=int, default=64, help="engine rows per step (the largest bucket)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per bucket size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads; use 1 on a loaded machine (see RESULTS.md)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.preset:
        torch.manual_seed(0)
        model = TRM(preset(args.preset, forward_dtype=compute_dtype(args.device))).to(args.device).eval()
        source = f"preset {args.preset} (random weights)"
    else:
        model = load_checkpoint(args.checkpoint, args.device).model
        source = args.checkpoint
    task = get_task("sudoku")
    puzzles = generate_puzzles(args.requests, np.random.default_rng(0), clues=(22, 30))[0].astype(np.int64)
    params = SearchParams(rollouts=args.rollouts, steps=args.steps, noise=args.noise)
    work = args.requests * args.rollouts * args.steps

    runner = Runner(model, max_batch=args.max_batch)
    limits = Limits(args.max_batch, args.requests, args.requests * args.rollouts)
    t_engine = concurrent(Engine(runner, task, limits), puzzles, params)  # pipelined on CUDA
    t_serial = concurrent(Engine(runner, task, limits, pipeline=False), puzzles, params)  # host waits for each step
    t_single = one_at_a_time(model, puzzles, params, args.device)
    ratio = t_single / t_engine

    print(
        f"machine: {describe(args.device)}, {torch.get_num_threads()} torch threads; model: {source}; "
        f"runner: {runner.mode}; kernels: {runner.kernels}"
    )
    print(f"{args.requests} requests x K={args.rollouts} x D={args.steps} = {work} row-steps")
    print(f"  engine, concurrent     {t_engine:8.2f} s  {work / t_engine:9.1f} row-steps/s")
    print(f"  engine, not pipelined  {t_serial:8.2f} s  {work / t_serial:9.1f} row-steps/s")
    print(f"  plain loop, one by one {t_single:8.2f} s  {work / t_single:9.1f} row-steps/s")
    print(f"  ratio                  {ratio:8.2f}x")
    times = bucket_times(Runner(model, max_batch=args.max_batch), model.config.seq_len, args.repeats)
    print(f"\n{'bucket':>6}  {'ms/step':>9}  {'row-steps/s':>11}")
    for size, t in times.items():
        print(f"{size:>6}  {1e3 * t:9.2f}  {size / t:11.1f}")
    print(
        json.dumps(
            {
                "throughput_ratio": round(ratio, 3),
                "device": describe(args.device),
                "threads": torch.get_num_threads(),
                "model": source,
                "runner": runner.mode,
                "requests": args.requests,
                "rollouts": args.rollouts,
                "steps": args.steps,
                "engine_row_steps_per_s": round(work / t_engine, 1),
                "pipelined": runner.device.type == "cuda",
                "pipeline_gain": round(t_serial / t_engine, 3),
                "single_row_steps_per_s": round(work / t_single, 1),
                "bucket_row_steps_per_s": {s: round(s / t, 1) for s, t in times.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
