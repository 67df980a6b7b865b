"""One supervision step and a whole rollout of the paper Sudoku TRMs: eager, torch.compile and the fused kernels.

Paths (SERVING.md §6):
- eager: the torch references (`kernels.set_backend("torch")`), op by op;
- compile: the same with the shared network `model.net` compiled (`--compile-mode`, default max-autotune-no-cudagraphs
  on CUDA); the step's Python loop around it stays eager;
- fused: eager with the Triton kernels (`kernels.set_backend("auto")`); on the CPU this is the reference again.
Each runs with CUDA graphs off and on (one step captured, replayed once per supervision step; CUDA only). Steps carry
PTRM noise (`--sigma`, seeds and steps in device tensors, advanced inside the step), so the noise kernel is exercised.

Times are medians of `--repeats` runs after warm-up, the device synchronised before each timer read. FLOPs are the
matmul and attention FLOPs of one row counted by torch.utils.flop_counter (elementwise work excluded), times the rows;
MFU divides the achieved FLOP/s by a big matmul's (best of 10), measured in this run in the compute dtype (bf16 on
CUDA).
The last line printed is one JSON object with every result and the device.

    python benchmarks/step.py --quick                                  # CPU smoke test
    python benchmarks/step.py --presets sudoku-mlp --sizes 1 8 64 512  # a GPU run (all paths, graphs on and off)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# Run as a script, this folder comes first on sys.path, and benchmarks/engine.py would shadow the `engine` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import kernels  # noqa: E402
from engine.machine import describe  # noqa: E402
from engine.models import TRM, Noise, preset  # noqa: E402
from engine.models.config import PRESETS as MODEL_PRESETS  # noqa: E402

PRESETS = ("sudoku-mlp", "sudoku-attn")
PATHS = ("eager", "compile", "fused")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def times(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


def median_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    return statistics.median(times(fn, device, repeats, warmup))


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of the fastest of 10 large square matmuls (8192 on CUDA, 1024 on the CPU)."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return 2 * n**3 / min(times(lambda: a @ b, device, repeats=10, warmup=3))


@torch.no_grad()
def flops_per_row(model: TRM, device: torch.device) -> int:
    inputs = torch.randint(1, 11, (1, model.config.seq_len), device=device)
    pid = torch.zeros(1, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        model.step(model.initial_carry(1), inputs, pid)
    return counter.get_total_flops()


def make_step(model: TRM, rows: int, sigma: float, device: torch.device) -> Callable[[], torch.Tensor]:
    """A closure running one supervision step in place on static buffers (carry, noise steps): graph-capturable."""
    inputs = torch.randint(1, 11, (rows, model.config.seq_len), device=device)
    pid = torch.zeros(rows, dtype=torch.long, device=device)
    carry = model.initial_carry(rows)
    seeds = torch.tensor([kernels.row_seed(0, r) for r in range(rows)], device=device)
    noise = Noise(seeds, torch.zeros(rows, dtype=torch.long, device=device), torch.full((rows,), sigma, device=device))

    @torch.no_grad()
    def step() -> torch.Tensor:
        new, logits, _ = model.step(carry, inputs, pid, noise if sigma > 0 else None)
        carry.z_H.copy_(new.z_H)
        carry.z_L.copy_(new.z_L)
        noise.steps.add_(1)  # the next step (or graph replay) draws fresh noise
        return logits

    return step


def capture(step: Callable[[], torch.Tensor], device: torch.device) -> Callable[[], None]:
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up off the default stream (compiles, autotunes, allocates)
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def bench_one(model: TRM, path: str, graphs: bool, rows: int, args, device: torch.device) -> dict:
    kernels.set_backend("auto" if path == "fused" else "torch")
    step = make_step(model, rows, args.sigma, device)
    run = capture(step, device) if graphs else step

    def rollout() -> None:
        for _ in range(args.rollout_steps):
            run()

    step_s = median_time(run, device, args.repeats, warmup=1)
    rollout_s = median_time(rollout, device, args.repeats, warmup=0)
    return dict(
        path=path,
        kernels=kernels.backend(device) if path == "fused" else "torch",
        graphs=graphs,
        rows=rows,
        step_ms=1e3 * step_s,
        step_rows_per_s=rows / step_s,
        rollout_ms=1e3 * rollout_s,
        rollout_rows_per_s=rows / rollout_s,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    sudoku = [n for n in MODEL_PRESETS if n.startswith("sudoku")]  # e.g. sudoku-tiny for a quick CPU check
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=sudoku)
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--sizes", type=int, nargs="+", default=[2**i for i in range(10)], help="rows (bucket sizes)")
    p.add_argument("--graphs", choices=("both", "on", "off"), default="both", help="CUDA graphs (CUDA only)")
    p.add_argument("--dtype", default=None, help="compute dtype (default bfloat16 on CUDA, float32 on the CPU)")
    p.add_argument("--compile-mode", default=None, help="default: max-autotune-no-cudagraphs on CUDA, else default")
    p.add_argument("--rollout-steps", type=int, default=16)
    p.add_argument("--sigma", type=float, default=0.1, help="PTRM noise on z (0: deterministic TRM)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="smoke test: rows 1 and 2, one repeat")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.repeats = [1, 2], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    compile_mode = args.compile_mode or ("max-autotune-no-cudagraphs" if device.type == "cuda" else "default")
    graph_modes = (
        {"both": [False, True], "on": [True], "off": [False]}[args.graphs] if device.type == "cuda" else [False]
    )
    for knob in ("recompile_limit", "cache_size_limit"):  # one compile per bucket size and preset
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 256)

    torch.manual_seed(0)
    peak = matmul_peak(device, getattr(torch, dtype))
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"device: {describe(device)}{threads}; compute {dtype}; {dtype} matmul peak {peak / 1e12:.3f} TFLOP/s")
    print(f"kernels on this device: {kernels.backend(device)}; compile mode: {compile_mode}; sigma {args.sigma}\n")
    print("| preset | path | kernels | graphs | rows | step ms | rows/s | rollout ms | rows/s | TFLOP/s | MFU |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for name in args.presets:
        model = TRM(preset(name, forward_dtype=dtype, halt_max_steps=args.rollout_steps)).to(device).eval()
        model.inference_weights()  # as served: weights cast to the compute dtype once (issue 15)
        kernels.set_backend("torch")
        flops = flops_per_row(model, device)
        eager_net = model.net
        for path in args.paths:
            model.net = torch.compile(eager_net, mode=compile_mode) if path == "compile" else eager_net
            for graphs in graph_modes:
                for rows in args.sizes:
                    r = bench_one(model, path, graphs, rows, args, device)
                    r.update(preset=name, flops_per_row_step=flops)
                    r["tflops"] = flops * rows / (r["step_ms"] / 1e3) / 1e12
                    r["mfu"] = r["tflops"] * 1e12 / peak
                    results.append(r)
                    print(
                        f"| {name} | {path} | {r['kernels']} | {'on' if graphs else 'off'} | {rows} "
                        f"| {r['step_ms']:.2f} | {r['step_rows_per_s']:.1f} | {r['rollout_ms']:.1f} "
                        f"| {r['rollout_rows_per_s']:.1f} | {r['tflops']:.3f} | {100 * r['mfu']:.2f}% |",
                        flush=True,
                    )
        model.net = eager_net
    kernels.set_backend("auto")
    summary = dict(
        device=describe(device),
        threads=torch.get_num_threads() if device.type == "cpu" else None,
        dtype=dtype,
        compile_mode=compile_mode,
        sigma=args.sigma,
        rollout_steps=args.rollout_steps,
        peak_tflops=peak / 1e12,
        results=results,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
