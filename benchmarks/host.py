"""Host time per engine step: the engine's own work (scheduling, batching, answers, early-exit verification,
resolution) with the model replaced by a stub runner that answers at once, so what is timed is all host time.

Issue 15's CPU target: at 1,024 rows (64 requests x K=16) with early exit on, at most 5 ms per step. The stub's answers
break the rules, so no row exits early and every step verifies every row (the early-exit path's worst case).

    python benchmarks/host.py                       # 64 x 16 rows, D = 16
    python benchmarks/host.py --requests 256 --rollouts 4 --diversity augment
    python benchmarks/host.py --device-ms 5       # + the pipelined engine against a simulated 5 ms device step

The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the `engine` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.machine import describe  # noqa: E402
from engine.models import TRM, preset  # noqa: E402
from engine.runtime import Batch, Engine, Limits, Request  # noqa: E402
from engine.runtime.runner import StepResult  # noqa: E402
from engine.search import SearchParams  # noqa: E402
from engine.tasks import get_task  # noqa: E402
from engine.train.data import generate_puzzles  # noqa: E402


class StubRunner:
    """The Runner's interface without a model: every step answers a fixed rule-breaking grid per row, at once or,
    with `device_ms`, as a device would: steps queue one after another and each is ready `device_ms` after the
    previous one ends (collect waits for it), so host work can overlap them."""

    mode, kernels, static, device = "stub", "none", False, torch.device("cpu")

    def __init__(self, max_batch: int, seq_len: int, vocab: int, device_ms: float = 0.0):
        self.model = TRM(preset("sudoku-tiny"))  # only its config is read (token and puzzle id ranges)
        self.max_batch, self.slots = max_batch, 2 * max_batch
        self.device_s, self.free_at = device_ms / 1e3, 0.0
        rng = np.random.default_rng(0)
        self.answers = rng.integers(2, vocab, (max_batch, seq_len))
        self.q = rng.standard_normal(max_batch).astype(np.float32) - 5
        self.probs = np.full((max_batch, seq_len, vocab), 1 / vocab, np.float32)

    def padded(self, rows: int) -> int:
        return rows

    def launch(self, batch: Batch) -> tuple[Batch, float]:
        self.free_at = max(time.perf_counter(), self.free_at) + self.device_s
        return batch, self.free_at

    def collect(self, launched: tuple[Batch, float]) -> StepResult:
        batch, ready = launched
        time.sleep(max(0.0, ready - time.perf_counter()))
        n = len(batch.slots)
        return StepResult(self.answers[:n], self.q[:n], None, None, self.probs[:n] if batch.want_probs else None)


def loaded(
    requests: int, params: SearchParams, max_batch: int, device_ms: float = 0.0, pipeline: bool | None = None
) -> Engine:
    """An engine on a stub runner of `max_batch` rows with `requests` easy puzzles submitted (seeds 0, 1, ...)."""
    task = get_task("sudoku")
    rows = requests * params.rollouts
    puzzles = generate_puzzles(requests, np.random.default_rng(0), (30, 45))[0].astype(np.int64)
    runner = StubRunner(max_batch, task.seq_len, task.vocab_size, device_ms)
    limits = Limits(max_batch=max_batch, max_requests=requests, max_rows=rows)
    eng = Engine(runner, task, limits, pipeline=pipeline)
    for i, p in enumerate(puzzles):
        eng.submit(Request(task, p, params.replace(seed=i)))
    return eng


def measure(requests: int, params: SearchParams, repeats: int) -> dict:
    rows = requests * params.rollouts
    per_step = []
    for _ in range(repeats):
        eng = loaded(requests, params, rows)
        while eng.busy:
            start = time.perf_counter()
            eng.step()
            per_step.append((time.perf_counter() - start, eng.stats.running_rows))
    full = [t for t, n in per_step if n == rows]
    return {
        "rows": rows,
        "steps_timed": len(full),
        "host_ms_per_step_median": 1e3 * float(np.median(full)),
        "host_ms_per_step_p90": 1e3 * float(np.percentile(full, 90)),
        "host_us_per_row_step": 1e6 * float(np.median(full)) / rows,
    }


def overlap(requests: int, params: SearchParams, device_ms: float) -> dict:
    """Wall time for all requests with a simulated device step of `device_ms`, the engine pipelined and not. The rows
    fill two batches, since a request in flight waits for its results: overlap needs a second batch to run."""
    out = {}
    for pipeline in (False, True):
        eng = loaded(requests, params, requests * params.rollouts // 2, device_ms=device_ms, pipeline=pipeline)
        start = time.perf_counter()
        eng.run_until_idle()
        out["pipelined" if pipeline else "serial"] = 1e3 * (time.perf_counter() - start) / eng.stats.steps
    return {"device_ms": device_ms, **{f"ms_per_step_{k}": round(v, 3) for k, v in out.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--rollouts", "-K", type=int, default=16)
    ap.add_argument("--steps", "-D", type=int, default=16)
    ap.add_argument("--diversity", default="noise", choices=("noise", "augment", "both", "none"))
    ap.add_argument("--early-exit", default="verified", choices=("off", "verified", "confident"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device-ms", type=float, help="also time the pipelined engine against a simulated device step")
    args = ap.parse_args()
    params = SearchParams(
        rollouts=args.rollouts,
        steps=args.steps,
        noise=0.3,
        diversity=args.diversity,
        early_exit=args.early_exit,
    )
    result = measure(args.requests, params, args.repeats)
    print(f"machine: {describe('cpu')}")
    print(
        f"{result['rows']} rows ({args.requests} requests x K={args.rollouts}, early exit {args.early_exit}, "
        f"{args.diversity}): host time per step {result['host_ms_per_step_median']:.2f} ms median, "
        f"{result['host_ms_per_step_p90']:.2f} ms p90 ({result['host_us_per_row_step']:.2f} us per row-step)"
    )
    if args.device_ms:
        result.update(overlap(args.requests, params, args.device_ms))
        print(
            f"{result['rows'] // 2} rows a step, simulated device step {args.device_ms:g} ms: "
            f"{result['ms_per_step_serial']:.2f} ms per step serial, {result['ms_per_step_pipelined']:.2f} ms pipelined"
        )
    print(json.dumps({"benchmark": "host", **vars(args), **result}))


if __name__ == "__main__":
    main()
