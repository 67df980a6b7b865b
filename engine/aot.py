"""Ahead-of-time compile of every Triton kernel the engine can launch, for GPUs this machine does not have (issue 36).

The CPU interpreter checks what a kernel computes, not whether it compiles for a GPU, nor what it costs there. Triton
compiles without a GPU: `triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))` lowers a kernel to PTX and
runs the ptxas bundled in the triton wheel; the cubin's resource usage (cuobjdump, also bundled) gives registers,
local memory (the stack frame that spills go to) and shared memory, and the architecture's limits give occupancy.

Which launches: not a hand-kept list. `launches()` runs the engine's own code on the meta device for every model the
project ships or names (checkpoints/*/config.json, PRESETS, GRAM_PRESETS) and every forward dtype, with the device
mocked at one boundary (`mocked_cuda`): `kernels.backend` answers "triton", the `torch.ops.trm` ops call their
launchers, the launchers' device check accepts meta tensors, and each `kernel[grid](...)` is recorded instead of run.
The paths:
- the runner's static step (`Runner._static_step`: what CUDA serves and captures in graphs, noise on, seeds and steps
  read from the packed metadata buffer);
- the eager step (`Runner._run_eager`), with noise and without (`gpu_check`'s fp32 rollouts take this path too);
- GRAM's likelihood pass (`GRAM.elbo`, the posterior head) and its prior trajectory noise (`counter_noise`).
Each path runs once per model and dtype; then every recorded launcher call is replayed at each batch size of
`batches()` (batch is the leading axis of every kernel input), so the block sizes and warps are the launchers' own
choice at every size. Triton's binder turns the recorded arguments into what a GPU launch compiles: argument dtypes,
16-byte alignment of pointers and divisibility by 16 of integers, integers equal to 1 made constant.

    python -m engine.aot                      # compile everything for sm_80, sm_90 and the newest ptxas target
    python -m engine.aot --markdown           # the table for benchmarks/RESULTS.md
    python -m engine.aot --json out.json      # every launch and its resource usage (the test reads this)

Budgets (`BUDGET`): no local memory at all (so no spills); at most 128 registers a thread (with 4 warps that still
leaves 4 blocks, 16 warps, an SM on sm_80/sm_90); at most 32 KiB of shared memory a block (3 blocks still fit the
100 KiB SM of sm_120/121, and it is under the 48 KiB a block gets without opting in). The compiles run in
`--jobs` processes; triton's on-disk cache (TRITON_CACHE_DIR, else ~/.triton/cache) is keyed by the kernel source,
the options, the target and the ptxas version, so a second run recompiles exactly the kernels that changed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import kernels

ROOT = Path(__file__).resolve().parent.parent

# Batch sizes the launches are replayed at: every eager row count up to the server's default max_batch (64) and the
# runner's bucket ladder up to 1024 rows (gpu_check's eval batch).
DEFAULT_MAX_BATCH, LARGEST_BATCH = 64, 1024

BUDGET = {"local_bytes": 0, "registers": 128, "shared_bytes": 32 * 1024}


@dataclass(frozen=True)
class Arch:
    """Per-SM limits of a compute capability (NVIDIA CCCL, libcudacxx cuda/__device/arch_traits.h)."""

    sm: int
    cards: str
    max_warps: int  # resident warps per SM
    max_blocks: int  # resident blocks per SM
    shared_per_sm: int  # bytes
    registers_per_sm: int = 65536
    register_unit: int = 256  # registers are allocated per warp in units of 256
    reserved_shared_per_block: int = 1024  # the driver's share of every block's shared memory (cc >= 8.0)


ARCHS = {
    80: Arch(80, "A100", 64, 32, 164 * 1024),
    90: Arch(90, "H100, H200", 64, 32, 228 * 1024),
    100: Arch(100, "B200", 64, 32, 228 * 1024),
    103: Arch(103, "B300", 64, 32, 228 * 1024),
    110: Arch(110, "Thor", 48, 24, 228 * 1024),
    120: Arch(120, "RTX 50xx, RTX PRO 6000", 48, 24, 100 * 1024),
    121: Arch(121, "GB10 (DGX Spark)", 48, 24, 100 * 1024),
}


def newest_target() -> int:
    """The newest sm_NN the bundled ptxas (the one triton uses at sm_90 and above) can generate code for."""
    from triton import knobs

    text = subprocess.run([knobs.nvidia.ptxas_blackwell.path, "--help"], capture_output=True, text=True).stdout
    return max(int(m) for m in re.findall(r"'sm_(\d+)[af]?'", text))


def default_targets() -> list[int]:
    return sorted({80, 90, newest_target()})


def occupancy(arch: Arch, registers: int, shared: int, num_warps: int) -> tuple[int, float, str]:
    """(resident blocks per SM, resident warps / the SM's maximum, what limits it) for a kernel's resources."""
    per_warp = math.ceil(registers * 32 / arch.register_unit) * arch.register_unit
    by = {
        "warps": arch.max_warps // num_warps,
        "blocks": arch.max_blocks,
        "registers": (arch.registers_per_sm // per_warp) // num_warps if per_warp else arch.max_blocks,
        "shared": arch.shared_per_sm // (math.ceil((shared + arch.reserved_shared_per_block) / 128) * 128),
    }
    limit = min(by, key=lambda k: (by[k], k != "warps"))
    blocks = by[limit]
    return blocks, blocks * num_warps / arch.max_warps, limit


# -- the engine's launches, recorded on the meta device -------------------------------------------------------------


def kernel_modules() -> list:
    """The modules of `kernels` that define Triton kernels (importing them builds the kernels)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    found = []
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"kernels.{info.name}")
        if any(isinstance(v, (JITFunction, InterpretedFunction)) for v in vars(module).values()):
            found.append(module)
    return found


@dataclass
class Call:
    """One call of a launcher through `torch.ops.trm` (its tensors on the meta device), replayable at another batch."""

    op: str
    args: tuple

    def key(self) -> tuple:
        return (self.op, tuple(_describe(a) for a in self.args))

    def at_batch(self, batch: int) -> tuple:
        return tuple(_rebatch(a, batch) for a in self.args)


def _describe(a):
    if isinstance(a, torch.Tensor):
        return ("T", tuple(a.shape[1:]), a.stride(), a.storage_offset(), a.dtype)
    return ("V", a)


def _rebatch(a, batch: int):
    """The same view with `batch` rows: batch is the leading axis, so strides and offset stay (a fresh meta buffer)."""
    if not isinstance(a, torch.Tensor):
        return a
    shape = (batch, *a.shape[1:])
    extent = a.storage_offset() + sum((n - 1) * s for n, s in zip(shape, a.stride())) + 1
    return torch.empty(extent, dtype=a.dtype, device="meta").as_strided(shape, a.stride(), a.storage_offset())


@dataclass
class Launch:
    """One kernel launch as a GPU would compile it: kernel, triton's specialisation and the launch options."""

    kernel: str  # module.name of the @triton.jit function
    spec: list  # triton's specialisation per argument: [type, attribute or constant value]
    options: dict  # num_warps (and any other launch option the launcher passes)
    grid: tuple = ()
    where: set = field(default_factory=set)  # "model dtype" strings the launch came from
    batches: set = field(default_factory=set)

    def key(self) -> tuple:
        return (self.kernel, json.dumps(self.spec), json.dumps(self.options, sort_keys=True))

    @property
    def name(self) -> str:
        return self.kernel.rsplit(".", 1)[1].strip("_").removesuffix("_kernel")

    @property
    def dtype(self) -> str:
        """The activation dtype: of the first pointer argument that is not fp32 or int64, else fp32."""
        ptrs = [t[1:] for t, _ in self.spec if isinstance(t, str) and t.startswith("*")]
        return next((p for p in ptrs if p not in ("fp32", "i64")), "fp32")

    def constants(self, names: list[str]) -> dict:
        return {n: v for n, (t, v) in zip(names, self.spec) if t == "constexpr" and n.isupper()}


class _Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **options)` records the launch."""

    def __init__(self, name: str, fn, sink: list):
        self.name, self.fn, self.sink = name, fn, sink

    def __getitem__(self, grid):
        return lambda *args, **options: self.sink.append((self.name, self.fn, tuple(grid), args, options))


@contextlib.contextmanager
def mocked_cuda(launched: list | None = None, calls: list | None = None) -> Iterator[None]:
    """Within: the fused path is taken for meta tensors as for CUDA ones, and nothing runs on a device.

    `kernels.backend` answers "triton"; each `torch.ops.trm.*` op calls its CUDA implementation (the launcher), noted
    in `calls`; the launchers' device check accepts one meta device; each `kernel[grid](...)` is appended to
    `launched` as (module.name, the JIT function, grid, args, options). The dispatch is the real one, so a launcher
    that raises is caught there (on a GPU the engine would warn and serve on the torch references for good); leaving
    the block then raises RuntimeError naming the error."""
    launched = [] if launched is None else launched
    modules = kernel_modules()
    saved: list[tuple[object, str, object]] = []

    def patch(obj, name, value):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def meta_only(kernel, *tensors):
        devices = {t.device for t in tensors if t is not None}
        if devices != {torch.device("meta")}:
            raise ValueError(f"mocked launches take meta tensors, got {sorted(map(str, devices))}")

    def on_cuda(op_name, impl):
        def call(*args):
            if calls is not None:
                calls.append(Call(op_name, args))
            return impl(*args)

        return call

    from torch._library.custom_ops import CustomOpDef
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    try:
        patch(kernels, "backend", lambda device: "triton")
        patch(kernels, "_failed", None)
        for module in modules:
            for name, value in list(vars(module).items()):
                if isinstance(value, (JITFunction, InterpretedFunction)):
                    patch(module, name, _Recorder(f"{module.__name__}.{name}", value, launched))
                elif isinstance(value, CustomOpDef) and value._namespace == "trm":  # torch.ops.trm.<op>
                    op_name = value._name
                    patch(torch.ops.trm, op_name, on_cuda(op_name, value._init_fn))
            if hasattr(module, "check_launchable"):
                patch(module, "check_launchable", meta_only)
        yield
        if kernels._failed is not None:  # the real dispatch caught a launcher's error: on a GPU, references for good
            raise RuntimeError(f"a fused launch failed on the mocked device: {kernels._failed}")
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def model_configs() -> dict:
    """Every model the engine can serve: the shipped checkpoints' configs and the named presets (deduplicated later)."""
    from engine.checkpoint import ARCHS as MODEL_ARCHS
    from engine.checkpoint import read_config
    from engine.models.config import GRAM_PRESETS, PRESETS, preset

    configs = {}
    for path in sorted((ROOT / "checkpoints").iterdir()):
        if (path / "config.json").is_file():
            c = read_config(path)
            configs[f"checkpoints/{path.name}"] = MODEL_ARCHS[c["arch"]][1].from_dict(c["model"])
    for name in [*PRESETS, *GRAM_PRESETS]:
        configs[name] = preset(name)
    return configs


def _engine_paths(config) -> None:
    """Run the engine's device paths once for `config` on the meta device, inside `mocked_cuda`, batch `PROBE`."""
    from engine.models import GRAM, TRM, GRAMConfig, counter_noise
    from engine.runtime.runner import Batch, Runner

    with torch.device("meta"):
        model = (GRAM if isinstance(config, GRAMConfig) else TRM)(config)
    B, L = PROBE, config.seq_len
    runner = Runner(model, max_batch=B, static=True, cuda_graphs=False)
    runner._static_step(B)  # what a CUDA graph captures
    zeros, ones = np.zeros(B), np.ones(B)
    for sigma in (0.1, 0.0):  # the eager step, with noise (fresh contiguous seeds) and without
        batch = Batch(
            np.arange(B),
            ones.astype(bool),
            np.ones((B, L), np.int64),
            zeros.astype(np.int64),
            np.arange(B),
            zeros.astype(np.int64),
            np.full(B, sigma),
            np.full(B, sigma),
        )
        runner._run_eager(batch)
    if isinstance(model, GRAM):
        x = torch.ones(B, L, dtype=torch.long, device="meta")
        seeds = torch.zeros(B, dtype=torch.long, device="meta")
        pids = torch.zeros(B, dtype=torch.long, device="meta")
        model.elbo(x, pids, x, 1, counter_noise(seeds))  # Runner.likelihood's pass
        model.trajectory(x, pids, 1, counter_noise(seeds))  # /generate's prior samples


PROBE = 3  # the batch the paths run at (any: the replay changes only the leading axis, checked in record_calls)


def batches() -> list[int]:
    from engine.runtime.runner import bucket_ladder

    return sorted(set(range(1, DEFAULT_MAX_BATCH + 1)) | set(bucket_ladder(LARGEST_BATCH)))


def record_calls(config) -> list[Call]:
    """The distinct `torch.ops.trm` calls the engine makes for `config` (its forward dtype), at batch PROBE."""
    calls: list[Call] = []
    with mocked_cuda(calls=calls), torch.inference_mode():
        _engine_paths(config)
    distinct = {}
    for c in calls:
        for a in c.args:
            if isinstance(a, torch.Tensor) and a.shape[0] != PROBE:
                raise AssertionError(f"{c.op}: an input's leading axis is {a.shape[0]}, not the batch {PROBE}")
        distinct.setdefault(c.key(), c)
    return list(distinct.values())


def replay(calls: list[Call], sizes: list[int]) -> list[tuple]:
    """Each call's launcher at each batch size (inside `mocked_cuda`): the launches as recorded tuples, with sizes."""
    launched: list = []
    out = []
    with mocked_cuda(launched), torch.inference_mode():
        ops = {c.op: getattr(torch.ops.trm, c.op) for c in calls}
        for c in calls:
            for b in sizes:
                n = len(launched)
                ops[c.op](*c.at_batch(b))
                out.extend((b, rec) for rec in launched[n:])
    return out


_binders: dict = {}


def specialise(fn, args: tuple, options: dict) -> list:
    """Triton's specialisation of a launch (as `JITFunction.run` computes it), target-independent for CUDA."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    raw = fn.fn if not isinstance(fn, JITFunction) else fn  # an interpreted kernel: its function, JIT-wrapped
    if raw not in _binders:
        jit = raw if isinstance(raw, JITFunction) else JITFunction(raw)
        backend = make_backend(GPUTarget("cuda", 90, 32))
        _binders[raw] = (jit, create_function_from_signature(jit.signature, jit.params, backend))
    jit, binder = _binders[raw]
    _, spec, _ = binder(*args, **options)
    return [[t, v] for t, v in spec]


def model_launches(names: list[str], config, sizes: list[int]) -> list[Launch]:
    """The distinct launches of one model (in its forward dtype) over `sizes`."""
    found: dict[tuple, Launch] = {}
    for b, (kernel, fn, grid, args, kwargs) in replay(record_calls(config), sizes):
        options = {k: v for k, v in kwargs.items() if k not in fn.arg_names}  # launch options: num_warps, ...
        launch = Launch(kernel, specialise(fn, args, kwargs), options, grid)
        launch = found.setdefault(launch.key(), launch)
        launch.where.add(f"{config.forward_dtype} {' = '.join(names)}")
        launch.batches.add(b)
    return list(found.values())


def _model_task(task) -> list[Launch]:
    names, config, sizes = task
    return model_launches(names, config, sizes)


def models(dtypes: tuple[str, ...] | None = None, configs: dict | None = None) -> list[tuple[list[str], object]]:
    """(names, config) per distinct model and dtype: sudoku-small and the checkpoints trained from it are one model."""
    from engine.models.config import FORWARD_DTYPES

    configs = configs or model_configs()
    same: dict = {}
    for dtype in dtypes or FORWARD_DTYPES:
        for name, config in configs.items():
            same.setdefault(dataclasses.replace(config, forward_dtype=dtype), []).append(name)
    return [(names, config) for config, names in same.items()]


def merge(per_model: list[list[Launch]]) -> list[Launch]:
    found: dict[tuple, Launch] = {}
    for launches_ in per_model:
        for launch in launches_:
            kept = found.setdefault(launch.key(), launch)
            if kept is not launch:
                kept.where |= launch.where
                kept.batches |= launch.batches
    return sorted(found.values(), key=lambda lch: (lch.name, lch.dtype, json.dumps(lch.spec)))


def launches(
    dtypes: tuple[str, ...] | None = None, sizes: list[int] | None = None, configs: dict | None = None, pool=None
) -> list[Launch]:
    """Every distinct launch the engine makes, over the models, forward dtypes and batch sizes (a list of Launch);
    one task per model and dtype, in `pool` (an executor) when given."""
    tasks = [(names, config, sizes or batches()) for names, config in models(dtypes, configs)]
    return merge(list(pool.map(_model_task, tasks, chunksize=1)) if pool else [_model_task(t) for t in tasks])


# -- compile --------------------------------------------------------------------------------------------------------


def _resources(cubin: bytes) -> dict:
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    line = next(ln for ln in text.splitlines() if "REG:" in ln)
    usage = dict(re.findall(r"(\w+):(\d+)", line))
    return {
        "registers": int(usage["REG"]),
        "stack": int(usage["STACK"]),
        "local": int(usage["LOCAL"]),
        "static_shared": int(usage["SHARED"]),
    }


def compile_one(kernel: str, spec: list, options: dict, sm: int) -> dict:
    """Compile one launch for sm_`sm` as `JITFunction.run` would; its resources, or the error."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import JITFunction

    module, name = kernel.rsplit(".", 1)
    fn = getattr(importlib.import_module(module), name)
    if not isinstance(fn, JITFunction):
        raise RuntimeError(f"{kernel} is not a JITFunction (TRITON_INTERPRET=1 set?): cannot compile it for a GPU")
    target = GPUTarget("cuda", sm, 32)
    backend = make_backend(target)
    kwargs = dict(options)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    specialization = [tuple(s) for s in spec]
    bound = {p.name: (v if t == "constexpr" else None) for p, (t, v) in zip(fn.params, specialization)}
    opts, signature, constexprs, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, backend.parse_options(kwargs)
    )
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TRITON_DEFAULT_FP_FUSION unset: the runtime default, said once
            compiled = triton.compile(
                triton.compiler.ASTSource(fn, signature, constexprs, attrs), target=target, options=opts.__dict__
            )
    except Exception as e:  # noqa: BLE001  (the report names it; the test fails on it)
        return {"error": f"{type(e).__name__}: {str(e)[-2000:]}", "seconds": time.perf_counter() - start}
    out = _resources(compiled.asm["cubin"])
    shared = compiled.metadata.shared + out["static_shared"]
    num_warps = compiled.metadata.num_warps
    blocks, occ, limit = occupancy(ARCHS[sm], out["registers"], shared, num_warps) if sm in ARCHS else (0, 0.0, "?")
    out.update(
        shared=shared,
        num_warps=num_warps,
        blocks_per_sm=blocks,
        occupancy=occ,
        limit=limit,
        seconds=time.perf_counter() - start,
    )
    return out


def _compile_task(task):
    return compile_one(*task)


def compile_all(found: list[Launch], targets: list[int], pool=None) -> list[dict]:
    """Compile every launch for every target (in `pool`, an executor, when given): one row per (launch, target)."""
    tasks = [(launch.kernel, launch.spec, launch.options, sm) for launch in found for sm in targets]
    results = list(pool.map(_compile_task, tasks, chunksize=1)) if pool else [_compile_task(t) for t in tasks]
    rows = []
    for (kernel, spec, options, sm), result, launch in zip(tasks, results, [lch for lch in found for _ in targets]):
        rows.append(
            {
                "kernel": launch.name,
                "function": kernel,
                "sm": sm,
                "dtype": launch.dtype,
                "constants": launch_constants(launch),
                "spec": spec,
                "options": options,
                "batches": sorted(launch.batches),
                "where": sorted(launch.where),
                **result,
            }
        )
    return rows


@contextlib.contextmanager
def workers(jobs: int | None = None) -> Iterator[ProcessPoolExecutor]:
    """Fresh processes (spawned: no patched modules, and TRITON_INTERPRET unset so the kernels are real JIT
    functions) for the enumeration and the compiles."""
    import multiprocessing

    interpret = os.environ.pop("TRITON_INTERPRET", None)
    try:
        with ProcessPoolExecutor(jobs or os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool
    finally:
        if interpret is not None:
            os.environ["TRITON_INTERPRET"] = interpret


def launch_constants(launch: Launch) -> dict:
    """The block sizes and flags of a launch (its upper-case constexpr arguments), by name."""
    module, name = launch.kernel.rsplit(".", 1)
    return launch.constants(list(getattr(importlib.import_module(module), name).arg_names))


def violations(row: dict) -> list[str]:
    """Why a compiled launch breaks the budget (empty when it compiles and fits)."""
    if "error" in row:
        return [f"compile error: {row['error']}"]
    out = []
    if row["local"] + row["stack"] > BUDGET["local_bytes"]:
        out.append(f"{row['local'] + row['stack']} bytes of local memory (spills)")
    if row["registers"] > BUDGET["registers"]:
        out.append(f"{row['registers']} registers > {BUDGET['registers']}")
    if row["shared"] > BUDGET["shared_bytes"]:
        out.append(f"{row['shared']} bytes of shared memory > {BUDGET['shared_bytes']}")
    return out


def markdown(rows: list[dict], targets: list[int]) -> str:
    """One line per kernel, dtype and block configuration; per target registers / spills / shared / occupancy."""
    groups: dict[tuple, dict[int, list[dict]]] = {}
    for r in rows:
        consts = ", ".join(f"{k}={v}" for k, v in r["constants"].items())
        key = (r["kernel"], r["dtype"], consts, r["options"].get("num_warps", 4))
        groups.setdefault(key, {}).setdefault(r["sm"], []).append(r)
    head = "| kernel | dtype | block configuration | warps | specs |"
    head += "".join(f" sm_{sm}: regs / spills / smem / occupancy |" for sm in targets)
    lines = [head, "|---|---|---|---:|---:|" + "---|" * len(targets)]
    for (kernel, dtype, consts, warps), by_sm in sorted(groups.items()):
        n = len(next(iter(by_sm.values())))
        cells = []
        for sm in targets:
            rs = by_sm.get(sm, [])
            if any("error" in r for r in rs) or not rs:
                cells.append("**error**")
                continue
            regs = sorted({r["registers"] for r in rs})
            spill = max(r["local"] + r["stack"] for r in rs)
            smem = max(r["shared"] for r in rs)
            occ = min(r["occupancy"] for r in rs)
            lim = {r["limit"] for r in rs if r["occupancy"] == occ}
            reg = f"{regs[0]}" if len(regs) == 1 else f"{regs[0]}-{regs[-1]}"
            cells.append(f"{reg} / {spill} / {smem} B / {100 * occ:.0f}% ({', '.join(sorted(lim))})")
        lines.append(f"| {kernel} | {dtype} | {consts} | {warps} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(
    targets: list[int] | None = None,
    dtypes: tuple[str, ...] | None = None,
    jobs: int | None = None,
    list_only: bool = False,
) -> dict:
    """Enumerate the launches and compile them: the report `--json` writes."""
    targets = targets or default_targets()
    with workers(jobs) as pool:
        start = time.perf_counter()
        found = launches(dtypes, pool=pool)
        enumerate_s = time.perf_counter() - start
        start = time.perf_counter()
        rows = [] if list_only else compile_all(found, targets, pool)
        compile_s = time.perf_counter() - start
    return {
        "targets": targets,
        "budget": BUDGET,
        "batches": batches(),
        "launches": len(found),
        "enumerate_s": enumerate_s,
        "compile_s": compile_s,
        "rows": rows,
        "list": [
            {
                "kernel": lch.name,
                "dtype": lch.dtype,
                "constants": launch_constants(lch),
                "options": lch.options,
                "where": sorted(lch.where),
            }
            for lch in found
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", type=int, nargs="+", help="sm numbers (default: 80, 90 and the newest ptxas target)")
    p.add_argument("--dtypes", nargs="+", help="forward dtypes (default: all)")
    p.add_argument("--jobs", type=int, help="worker processes (default: one per CPU)")
    p.add_argument("--json", help="write every launch and its resources here")
    p.add_argument("--markdown", action="store_true", help="print the RESULTS.md table")
    p.add_argument("--list", action="store_true", help="only list the launches (no compile)")
    args = p.parse_args()
    report = run(args.targets, tuple(args.dtypes) if args.dtypes else None, args.jobs, args.list)
    print(
        f"{report['launches']} distinct launches over {len(report['batches'])} batch sizes "
        f"in {report['enumerate_s']:.1f} s",
        flush=True,
    )
    if args.list:
        for launch in report["list"]:
            print(launch["kernel"], launch["dtype"], launch["constants"], launch["options"], launch["where"][:2])
        return
    rows, targets = report["rows"], report["targets"]
    bad = [(r, v) for r in rows if (v := violations(r))]
    print(
        f"compiled {len(rows)} (launch, target) pairs for {', '.join(f'sm_{t}' for t in targets)} "
        f"in {report['compile_s']:.1f} s; {len(bad)} over budget",
        flush=True,
    )
    for r, v in bad:
        print(f"  {r['kernel']} {r['dtype']} {r['constants']} sm_{r['sm']}: {'; '.join(v)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    if args.markdown:
        print(markdown(rows, targets))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
