"""A performance model of one supervision step, for a GPU run that has not happened yet (issue 36).

Counted, not guessed: `count` runs the step on the meta device under a dispatch mode that sees every kernel the step
launches (the engine's static step as CUDA runs it, the eager engine step as the CPU runs it, or `benchmarks/step.py`'s
step), and for each one its FLOPs (torch.utils.flop_counter's formulas: matmuls and attention) and the bytes it moves
(its tensor inputs read once, its outputs written once; a gather reads only the rows it takes). View ops launch
nothing and count nothing.

Timed from a device's numbers (`Device`): each kernel takes max(FLOPs / matmul peak, bytes / memory bandwidth, the
device's per-kernel floor), a roofline per kernel; the host spends `host_per_op` issuing each kernel (eager) or one
graph launch per step (CUDA graphs). On a GPU the host runs ahead of the device, so the step takes the larger of the
two; on the CPU the host computes, so it takes their sum. The bound is where the time goes: matmul, memory, or
launch/host (the per-kernel floor on the device, or the host issuing kernels).

GPU numbers are the published peaks (NVIDIA datasheets, dense tensor-core FLOP/s; fp32 matmuls run on the CUDA cores
as torch leaves TF32 off); the per-kernel floor and the host cost per eager op are stated assumptions that the first
GPU run measures (gpu_check prints measured against predicted). The CPU's numbers are measured here (`measure_cpu`):
a large matmul, a large copy and a tiny op, with the thread count the step runs with.

    python -m engine.perf_model                                   # H100 and H200 predictions, paper presets
    python -m engine.perf_model --validate-cpu --threads 1        # this CPU: predicted against measured
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import kernels

aten = torch.ops.aten

# -- counting -------------------------------------------------------------------------------------------------------

FREE = {  # ops that launch no kernel: allocation, metadata
    aten.empty.memory_format,
    aten.empty_strided.default,
    aten.empty_like.default,
    aten.new_empty.default,
    aten.new_empty_strided.default,
    aten.lift_fresh.default,
    aten.detach.default,
    aten.alias.default,
    aten.is_same_size.default,
    aten._local_scalar_dense.default,
}
GATHERS = {aten.index, aten.index_select, aten.embedding}  # read only the rows they take
SCATTERS = {aten.index_copy_, aten.index_copy, aten.index_put_, aten.index_put}  # write only the rows they give


@dataclass
class Kernel:
    op: str
    flops: int
    bytes: int
    matmul: bool  # counted FLOPs (a matmul or attention)


def _nbytes(t: torch.Tensor) -> int:
    """Bytes a kernel reads of `t`: its elements, at most its storage (a broadcast view reads its storage once)."""
    n = t.numel() * t.element_size()
    return min(n, t.untyped_storage().nbytes()) if t.untyped_storage().nbytes() else n


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


def _flops(func, args, kwargs, out) -> int:
    packet = func._overloadpacket
    if packet is aten.linear:  # one GEMM (bias in its epilogue): 2 FLOPs per multiply-add
        return 2 * out.numel() * args[1].shape[1]
    if packet is aten.scaled_dot_product_attention:  # one fused attention kernel (flash on CUDA, its CPU twin)
        q, k, v = args[:3]
        return flop_registry[aten._scaled_dot_product_flash_attention](q, k, v)
    if packet in flop_registry:
        return flop_registry[packet](*args, **kwargs, out_val=out)
    return 0


class Counter(TorchDispatchMode):
    """Records each kernel-launching op of the code run under it."""

    def __init__(self):
        super().__init__()
        self.kernels: list[Kernel] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in FREE or func.is_view or func.name().startswith(("aten::sym_", "prim::")):
            return out
        ins, outs = _tensors((args, kwargs)), _tensors(out)
        packet = func._overloadpacket
        indices = sum(_nbytes(t) for t in ins[1:] if not t.is_floating_point())
        if packet in GATHERS:
            moved = 2 * sum(map(_nbytes, outs)) + indices
        elif packet in SCATTERS:  # index_copy_(self, dim, index, source), index_put_(self, indices, values)
            moved = 2 * _nbytes(ins[-1]) + indices
        elif packet in (aten.copy_, aten.fill_, aten.zero_):  # writes its target, reads only the source
            moved = sum(map(_nbytes, ins[1:])) + sum(map(_nbytes, outs))
        else:  # reads every input once (an in-place op's target too), writes every output once
            moved = sum(map(_nbytes, ins)) + sum(map(_nbytes, outs))
        flops = _flops(func, args, kwargs, out)
        self.kernels.append(Kernel(str(func._overloadpacket.__name__), int(flops), int(moved), flops > 0))
        return out


@contextlib.contextmanager
def _fused_on_meta(fused: bool) -> Iterator[None]:
    """`kernels` takes the fused path for meta tensors (each torch.ops.trm op is then one kernel, its fake
    implementation giving the output), or the references as on the CPU. A fused call that fails is an error here."""
    if fused and not kernels._load_triton():
        raise RuntimeError("the fused path needs triton (the test extra) to register its torch.ops.trm ops")
    saved, failed = kernels.backend, kernels._failed
    kernels.backend = (lambda device: "triton") if fused else (lambda device: "torch")
    kernels._failed = None
    try:
        yield
        if kernels._failed is not None:
            raise RuntimeError(kernels._failed)
    finally:
        kernels.backend, kernels._failed = saved, failed


WORKLOADS = ("engine", "engine-eager", "step")


def count(config, batch: int, workload: str = "engine", fused: bool = True, sigma: float = 0.1) -> list[Kernel]:
    """The kernels of one supervision step of `batch` rows, counted on the meta device.

    engine: the runner's static step (`Runner._static_step`, what CUDA graphs capture; padded to `batch`);
    engine-eager: the runner's eager step (the CPU's), with noise when `sigma` > 0;
    step: benchmarks/step.py's step (model.step with noise, the carry copied back, the steps advanced)."""
    from engine.models import GRAM, TRM, GRAMConfig, Noise
    from engine.runtime.runner import Batch, Runner

    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
    with torch.device("meta"):
        model = (GRAM if isinstance(config, GRAMConfig) else TRM)(config)
    B, L = batch, config.seq_len
    counter = Counter()
    if workload == "step":
        if isinstance(model, GRAM):
            raise ValueError("the step workload is TRM's (benchmarks/step.py)")
        model.inference_weights()
    else:
        runner = Runner(model, max_batch=B, static=workload == "engine", cuda_graphs=False)
    with _fused_on_meta(fused), torch.inference_mode():
        if workload == "step":
            carry = model.initial_carry(B)
            inputs = torch.zeros(B, L, dtype=torch.long, device="meta")
            pid = torch.zeros(B, dtype=torch.long, device="meta")
            seeds, steps = torch.zeros(B, dtype=torch.long, device="meta"), torch.zeros_like(pid)
            noise = Noise(seeds, steps, torch.full((B,), sigma, device="meta")) if sigma > 0 else None
            with counter:
                new, _, _ = model.step(carry, inputs, pid, noise)
                carry.z_H.copy_(new.z_H)
                carry.z_L.copy_(new.z_L)
                steps.add_(1)
        elif workload == "engine":
            with counter:
                runner._static_step(B)
        else:
            zeros, s = np.zeros(B, np.int64), np.full(B, sigma)
            batch_ = Batch(
                np.arange(B), np.zeros(B, bool), np.zeros((B, L), np.int64), zeros, np.arange(B), zeros, s, np.zeros(B)
            )
            with counter:
                runner._run_eager(batch_)
    return counter.kernels


# -- devices --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    name: str
    matmul_flops: dict  # compute dtype -> dense matmul FLOP/s
    bandwidth: float  # bytes/s
    kernel_floor: float  # s: the least one kernel takes on the device (launch latency, ramp)
    host_per_op: float  # s: host time to issue one eager op
    overlap: bool  # the host issues asynchronously (a GPU) or computes the op itself (the CPU)
    graph_launch: float = 0.0  # s: one CUDA graph replay, host side
    source: str = ""


# Published peaks: NVIDIA H100 Tensor Core GPU datasheet (SXM5 and PCIe 80 GB) and H200 datasheet (SXM); dense
# tensor-core bf16/fp16 (the sparse figures halved), fp32 on the CUDA cores (torch's fp32 matmuls: TF32 off).
ASSUMED = dict(kernel_floor=2.5e-6, host_per_op=8e-6, graph_launch=15e-6)  # first GPU run: measure them
GPUS = {
    "H100": Device(
        "NVIDIA H100 SXM5 80 GB",
        {"bfloat16": 989.4e12, "float16": 989.4e12, "float32": 66.9e12},
        3.35e12,
        overlap=True,
        source="H100 datasheet: 989.4 TFLOP/s bf16 dense, 67 fp32, 3.35 TB/s",
        **ASSUMED,
    ),
    "H100 PCIe": Device(
        "NVIDIA H100 PCIe 80 GB",
        {"bfloat16": 756.5e12, "float16": 756.5e12, "float32": 51.2e12},
        2.0e12,
        overlap=True,
        source="H100 datasheet: 756 TFLOP/s bf16 dense, 51 fp32, 2.0 TB/s",
        **ASSUMED,
    ),
    "H200": Device(
        "NVIDIA H200 SXM 141 GB",
        {"bfloat16": 989.4e12, "float16": 989.4e12, "float32": 66.9e12},
        4.8e12,
        overlap=True,
        source="H200 datasheet: 989.4 TFLOP/s bf16 dense, 67 fp32, 4.8 TB/s",
        **ASSUMED,
    ),
}


def gpu_for(name: str) -> Device | None:
    """The Device for a CUDA device name (torch.cuda.get_device_name), or None for a card not modelled."""
    if "H200" in name:
        return GPUS["H200"]
    if "H100" in name:
        return GPUS["H100 PCIe"] if "PCIe" in name else GPUS["H100"]
    return None


CLOCK = time.process_time  # CPU seconds of this process: what a core did for it, however loaded the machine is


def _times(fn, repeats: int, warmup: int = 1, clock=CLOCK) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = clock()
        fn()
        out.append(clock() - start)
    return out


def _best(fn, repeats: int, warmup: int = 1) -> float:
    return min(_times(fn, repeats, warmup))


class _TinyBlock(torch.nn.Module):
    """Eager module code with no compute to speak of: SwiGLU, a residual add and an RMSNorm on [1, 4, 8]."""

    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(8, 16, bias=False), torch.nn.Linear(8, 8, bias=False)

    def forward(self, x):
        gate, up = self.up(x).chunk(2, -1)
        h = (x + self.down(torch.nn.functional.silu(gate) * up)).float()
        return (h * torch.rsqrt(h.square().mean(-1, keepdim=True) + 1e-5)).to(x.dtype)


def measure_cpu(threads: int | None = None, quick: bool = False) -> Device:
    """This CPU's numbers, measured with `threads` threads in CPU time (so a loaded machine reads as one core's work):
    a 1024^3 fp32 matmul (best of 5), a 64 MiB copy (bytes read + written, best of 5), and the host time per kernel
    of eager module code (`_TinyBlock`: Python, dispatch, allocation; its kernels counted by `Counter`)."""
    if threads:
        torch.set_num_threads(threads)
    n = 512 if quick else 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    flops = 2 * n**3 / _best(lambda: a @ b, 3 if quick else 5)
    src = torch.randn((16 if quick else 64) * 2**18)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / _best(lambda: dst.copy_(src), 3 if quick else 5)
    block, x, reps = _TinyBlock(), torch.randn(1, 4, 8), 200 if quick else 1000
    with torch.inference_mode():
        counter = Counter()
        with counter:
            block(x)

        def loop():
            for _ in range(reps):
                block(x)

        per_op = _best(loop, 3) / reps / len(counter.kernels)
    from engine.machine import describe

    return Device(
        f"{describe('cpu')}, {torch.get_num_threads()} threads",
        {"float32": flops},
        bandwidth,
        kernel_floor=0.0,
        host_per_op=per_op,
        overlap=False,
        source="measured in CPU time: 1024^3 fp32 matmul, 64 MiB copy, eager module code per kernel",
    )


# -- prediction -----------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    device: str
    rows: int
    graphs: bool
    step_s: float
    row_steps_per_s: float
    mfu: float
    bound: str
    flops: int
    bytes: int
    kernels: int
    shares: dict = field(default_factory=dict)  # seconds per cause: matmul, memory, launch (floor), host

    def as_dict(self) -> dict:
        return asdict(self)


def predict(ks: list[Kernel], device: Device, dtype: str, rows: int, graphs: bool = False) -> Prediction:
    peak = device.matmul_flops[dtype]
    shares = {"matmul": 0.0, "memory": 0.0, "launch": 0.0}
    for k in ks:
        times = {"matmul": k.flops / peak, "memory": k.bytes / device.bandwidth, "launch": device.kernel_floor}
        cause = max(times, key=times.get)
        shares[cause] += times[cause]
    on_device = sum(shares.values())
    host = device.graph_launch if graphs else len(ks) * device.host_per_op
    step = max(on_device, host) if device.overlap else on_device + host
    if device.overlap and host > on_device:
        bound = "launch/host"
    else:  # the device's own time decides, plus the host's on the CPU (where it adds up, not overlaps)
        cause = max(shares if device.overlap else {**shares, "host": host}, key=lambda c: shares.get(c, host))
        bound = {"launch": "launch/host", "host": "launch/host"}.get(cause, cause)
    shares["host"] = host
    flops = sum(k.flops for k in ks)
    return Prediction(
        device.name,
        rows,
        graphs,
        step,
        rows / step,
        flops / (step * peak),
        bound,
        flops,
        sum(k.bytes for k in ks),
        len(ks),
        shares,
    )


def measure_rows_per_s(config, rows: int, repeats: int = 5, sigma: float = 0.1, seconds: float = 2.0):
    """This CPU's engine step (the eager runner step, noise on) over `rows` rows: row-steps per CPU second (the best
    step, as the peaks are best-of too: the least disturbed by a loaded machine) and per wall-clock second (median)."""
    from engine.models import GRAM, TRM, GRAMConfig
    from engine.runtime.runner import Batch, Runner

    torch.manual_seed(0)
    model = (GRAM if isinstance(config, GRAMConfig) else TRM)(config)
    runner = Runner(model, max_batch=rows, static=False, cuda_graphs=False)
    zeros = np.zeros(rows, np.int64)
    batch = Batch(
        np.arange(rows),
        np.zeros(rows, bool),
        np.random.default_rng(0).integers(1, 11, (rows, config.seq_len)),
        zeros,
        np.arange(rows, dtype=np.int64),
        zeros,
        np.full(rows, sigma),
        np.zeros(rows),
    )
    start = CLOCK()
    runner.run(batch)  # warm-up, and the repeats that fill `seconds` of CPU time (at least `repeats`)
    repeats = max(repeats, int(seconds / max(CLOCK() - start, 1e-4)))
    cpu, wall = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), CLOCK()
        runner.run(batch)
        cpu.append(CLOCK() - start_cpu)
        wall.append(time.perf_counter() - start)
    return rows / min(cpu), rows / statistics.median(wall)


def validate_cpu(
    preset_name: str = "sudoku-small",
    sizes=(1, 64),
    threads: int = 1,
    quick: bool = False,
    device: Device | None = None,
) -> dict:
    """The model against this CPU: measured peaks, then predicted and measured row-steps/s of the eager engine step."""
    from engine.models import preset

    torch.set_num_threads(threads)
    device = device or measure_cpu(threads, quick)
    config = preset(preset_name, forward_dtype="float32")
    out = []
    for rows in sizes:
        p = predict(count(config, rows, "engine-eager", fused=False), device, "float32", rows)
        measured, wall = measure_rows_per_s(config, rows, 3, seconds=0.5 if quick else 2.0)
        out.append(
            {
                "preset": preset_name,
                **p.as_dict(),
                "measured_row_steps_per_s": measured,
                "wall_row_steps_per_s": wall,
                "ratio": measured / p.row_steps_per_s,
            }
        )
    return {
        "device": device.name,
        "threads": threads,
        "matmul_gflops": device.matmul_flops["float32"] / 1e9,
        "bandwidth_gbs": device.bandwidth / 1e9,
        "host_per_op_us": device.host_per_op * 1e6,
        "results": out,
    }


def gpu_predictions(
    presets=("sudoku-mlp", "gram-sudoku", "sudoku-attn", "maze-attn", "arc-attn"),
    sizes=(1, 16, 64, 256, 1024),
    devices=("H100", "H200"),
    dtype: str = "bfloat16",
) -> list[dict]:
    """The engine's static step (fused kernels) per preset, batch size and card, CUDA graphs on."""
    from engine.models import preset

    out = []
    for name in presets:
        config = preset(name, forward_dtype=dtype)
        for rows in sizes:
            ks = count(config, rows, "engine", fused=True)
            for d in devices:
                p = predict(ks, GPUS[d], dtype, rows, graphs=True)
                out.append({"preset": name, "card": d, **p.as_dict()})
    return out


def step_predictions(
    device: Device, preset_name: str, sizes, dtype: str = "bfloat16", fused: bool = True
) -> list[dict]:
    """benchmarks/step.py's step on `device` (paths eager and fused, CUDA graphs off and on where the device has them):
    what gpu_check compares the step section against. `fused`: whether the fused path runs the Triton kernels (on the
    CPU both paths run the references)."""
    from engine.models import preset

    config = preset(preset_name, forward_dtype=dtype)
    out = []
    for rows in sizes:
        for path in ("eager", "fused"):
            ks = count(config, rows, "step", fused=fused and path == "fused")
            for graphs in (False, True) if device.overlap else (False,):
                out.append({"preset": preset_name, "path": path, **predict(ks, device, dtype, rows, graphs).as_dict()})
    return out


def cpu_table(report: dict) -> str:
    """Predicted against measured on this CPU (row-steps per CPU second; wall-clock for reference)."""
    lines = [
        "| preset | rows | predicted row-steps/s | measured (CPU time) | measured / predicted | wall-clock | bound "
        "| kernels |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['preset']} | {r['rows']} | {r['row_steps_per_s']:.1f} | {r['measured_row_steps_per_s']:.1f} "
            f"| {r['ratio']:.2f} | {r['wall_row_steps_per_s']:.1f} | {r['bound']} | {r['kernels']} |"
        )
    return "\n".join(lines) + "\n"


def table(rows: list[dict]) -> str:
    head = "| preset | card | rows | graphs | step ms | row-steps/s | MFU | bound | kernels | GFLOP | MB |"
    lines = [head, "|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r.get('card', r['device'])} | {r['rows']} | {'on' if r['graphs'] else 'off'} "
            f"| {1e3 * r['step_s']:.3f} | {r['row_steps_per_s']:,.0f} | {100 * r['mfu']:.1f}% | {r['bound']} "
            f"| {r['kernels']} | {r['flops'] / 1e9:.2f} | {r['bytes'] / 1e6:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--validate-cpu", action="store_true", help="predict and measure this CPU's engine step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--preset", default="sudoku-small", help="the CPU validation's model")
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = p.parse_args()
    if args.validate_cpu:
        report = validate_cpu(args.preset, tuple(args.sizes or (1, 64)), args.threads, args.quick)
        print(
            f"{report['device']}: fp32 matmul {report['matmul_gflops']:.1f} GFLOP/s, copy "
            f"{report['bandwidth_gbs']:.1f} GB/s, {report['host_per_op_us']:.1f} us per op\n"
        )
        print(cpu_table(report))
    else:
        report = {"predictions": gpu_predictions(sizes=tuple(args.sizes or (1, 16, 64, 256, 1024)))}
        print(table(report["predictions"]))
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
