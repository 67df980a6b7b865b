"""One command that measures everything a GPU run should (issue 15), for a machine lent for minutes: the GPU tests,
the step benchmark (eager bf16, torch.compile, fused kernels; CUDA graphs off and on; MFU against a measured bf16
matmul peak), the engine benchmark under CUDA graphs, answers on the GPU at fp32 against the CPU reference, the
commit-search and /generate paths, the engine's host time per step, a short paper-size training probe, and the
performance model's predictions (engine/perf_model.py) printed against what the step section measured.

Each section runs in its own process with its own time limit, so one failure or hang costs only itself. Results go
to OUT (default: $OUT, else ./gpu_check_out): gpu_check.json (every section's parsed result), gpu_check.md (the
tables) and gpu_check.log (every section's output).

    python benchmarks/gpu_check.py                                  # on the GPU machine: about 6-8 minutes
    python benchmarks/gpu_check.py --wheels .whl                    # first install missing packages from wheels
    python benchmarks/gpu_check.py --device cpu --quick             # the end-to-end smoke test (tests/ runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()
# Run as a script, this file's folder comes first on sys.path and benchmarks/engine.py would shadow `engine`.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE.parent]


def sections(device: str, quick: bool, work: Path) -> list[tuple[str, list[str], float]]:
    """(name, command, time limit in seconds), in the order they run. A command prints its result as its last JSON
    line, or writes it to work/NAME.json (engine-eval's --json)."""
    py = sys.executable
    bench = lambda name, *a: [py, str(ROOT / "benchmarks" / name), *a]  # noqa: E731
    me = lambda name: [py, str(HERE), "--section", name, "--device", device, "--work", str(work)] + ["--quick"] * quick  # noqa: E731
    evaluate = lambda name, ckpt, *a: [  # noqa: E731
        py, "-m", "engine.eval", "--checkpoint", str(ROOT / "checkpoints" / ckpt), "--device", device,
        "--json", str(work / f"{name}.json"), *a,
    ]  # fmt: skip
    puzzles = ["--puzzles", str(work / "puzzles.txt")]
    if quick:
        return [
            ("puzzles", me("puzzles"), 120),
            ("step", bench("step.py", "--device", device, "--quick", "--presets", "sudoku-tiny", "--paths", "eager",
                           "fused", "--rollout-steps", "2"), 300),
            ("engine", bench("engine.py", "--device", device, "--requests", "4", "--max-batch", "8"), 300),
            ("fp32_vs_cpu", me("fp32_vs_cpu"), 300),
            ("commit", evaluate("commit", "sudoku-trm", *puzzles, "--strategy", "commit", "-K", "2",
                                "--max-nodes", "4"), 300),
            ("generate", evaluate("generate", "sudoku-trm-fill", "--generate", "2"), 300),
            ("host", bench("host.py", "--requests", "8", "--rollouts", "4", "--repeats", "1"), 300),
            ("train", me("train"), 300),
            ("model", me("model"), 300),
        ]  # fmt: skip
    sizes = ["--sizes", "1", "16", "64", "256", "1024"]
    return [
        ("puzzles", me("puzzles"), 120),
        ("pytest_gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "--continue-on-collection-errors", "tests"], 150),
        ("step", bench("step.py", "--device", device, "--presets", "sudoku-mlp", *sizes,
                       "--compile-mode", "default"), 150),
        ("engine", bench("engine.py", "--device", device, "--preset", "sudoku-mlp", "--requests", "256",
                         "--max-batch", "256", "--steps", "8"), 90),
        ("fp32_vs_cpu", me("fp32_vs_cpu"), 60),
        ("commit", evaluate("commit", "sudoku-trm", *puzzles, "--strategy", "commit", "-K", "16", "--diversity",
                            "augment", "--max-row-steps", "2000", "--batch-size", "1024"), 45),
        ("generate", evaluate("generate", "sudoku-trm-fill", "--generate", "100", "--batch-size", "256"), 45),
        ("host", bench("host.py"), 30),
        ("train", me("train"), 150),
        ("model", me("model"), 120),
    ]  # fmt: skip


# -- sections run in this file ------------------------------------------------------------------------------------


def puzzles_section(args) -> dict:
    """Generated 30-45-clue puzzles (the GPU machine has no data folder) for the commit path."""
    import numpy as np

    from engine.tasks import get_task
    from engine.train.data import generate_puzzles

    n = 4 if args.quick else 100
    inputs, _ = generate_puzzles(n, np.random.default_rng(1), (30, 45))
    task = get_task("sudoku")
    Path(args.work, "puzzles.txt").write_text("".join(task.to_text(p.astype(np.int64)) + "\n" for p in inputs))
    return {"puzzles": n}


def fp32_vs_cpu_section(args) -> dict:
    """The shipped solver at fp32, K = 1, D = 16 through the model on the device and on the CPU reference: the share
    of identical answers (issue 15's target: all of 1,000)."""
    import numpy as np
    import torch

    from engine.checkpoint import load_checkpoint
    from engine.train.data import generate_puzzles

    n = 16 if args.quick else 1000
    inputs, _ = generate_puzzles(n, np.random.default_rng(2), (22, 35))
    x = torch.as_tensor(inputs.astype(np.int64))
    answers = {}
    for device in dict.fromkeys([args.device, "cpu"]):
        model = load_checkpoint(ROOT / "checkpoints" / "sudoku-trm", device, "float32").model.inference_weights()
        with torch.inference_mode():
            logits, _ = model.rollout(x.to(device), torch.zeros(n, dtype=torch.long, device=device))
        answers[device] = logits.argmax(-1).cpu().numpy()
    same = (answers[args.device] == answers["cpu"]).all(axis=1)
    return {
        "puzzles": n,
        "identical_answers": float(same.mean()),
        "identical_cells": float((answers[args.device] == answers["cpu"]).mean()),
    }


def train_section(args) -> dict:
    """A paper-size training probe (sudoku-mlp, batch 768, bf16 on CUDA) for ~2 minutes: samples/s and peak memory.
    On the CPU (quick) a tiny model for a few seconds."""
    import numpy as np
    import torch

    from engine.train.config import train_preset
    from engine.train.data import generate_puzzles
    from engine.train.trainer import Trainer

    quick = args.quick or not args.device.startswith("cuda")
    cfg = train_preset("tiny" if quick else "paper", global_batch_size=16 if quick else 768, eval_every=10**9)
    data = generate_puzzles(64 if quick else 2000, np.random.default_rng(3), (30, 45))
    budget = 5.0 if quick else 110.0
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, "sudoku", data, data, out, args.device)
        trainer.train_step()  # warm-up (lazy init, allocator)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < budget:
            trainer.train_step()
            steps += 1
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    return {
        "preset": cfg.model_preset,
        "batch": cfg.global_batch_size,
        "steps": steps,
        "seconds": round(elapsed, 1),
        "samples_per_s": round(steps * cfg.global_batch_size / elapsed, 1),
        "peak_memory_gib": peak,
    }


def step_run(device: str, quick: bool) -> tuple[str, list[int]]:
    """The preset and row counts the step section times (read from its command: step.py's --quick means rows 1, 2)."""
    cmd = {name: c for name, c, _ in sections(device, quick, Path("."))}["step"]
    if "--quick" in cmd:
        sizes = [1, 2]
    else:
        rest = cmd[cmd.index("--sizes") + 1 :]
        sizes = [int(x) for x in rest[: next((i for i, x in enumerate(rest) if x.startswith("--")), len(rest))]]
    return cmd[cmd.index("--presets") + 1], sizes


def model_section(args) -> dict:
    """The performance model (engine/perf_model.py, issue 36): its predictions of the step section's timings on this
    device (the card's published peaks on a GPU; on the CPU this machine's measured ones, one thread), and on the CPU
    the engine step predicted against measured at batch 1 and 64. The driver joins the step predictions with the step
    section's measurements."""
    import torch

    from engine import perf_model

    preset_name, sizes = step_run(args.device, args.quick)
    if args.device.startswith("cuda"):
        name = torch.cuda.get_device_name(args.device)
        device = perf_model.gpu_for(name) or perf_model.GPUS["H100"]
        note = "" if perf_model.gpu_for(name) else f"{name} is not modelled: H100 SXM numbers"
        dtype, validation = "bfloat16", None
        engine = perf_model.gpu_predictions(("sudoku-mlp",), (1, 64, 256, 1024))
    else:
        device, dtype, note, engine = perf_model.measure_cpu(1, args.quick), "float32", "", []
        validation = perf_model.validate_cpu("sudoku-small", (1, 64), threads=1, quick=args.quick, device=device)
    step = perf_model.step_predictions(device, preset_name, sizes, dtype, fused=args.device.startswith("cuda"))
    return {
        "device": device.name,
        "gpu": args.device.startswith("cuda"),
        "peak_tflops": device.matmul_flops[dtype] / 1e12,
        "note": note,
        "validation": validation,
        "step": step,
        "engine": engine,
    }


SECTIONS = {
    "puzzles": puzzles_section,
    "fp32_vs_cpu": fp32_vs_cpu_section,
    "train": train_section,
    "model": model_section,
}


# -- the driver ---------------------------------------------------------------------------------------------------


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run_section(name: str, cmd: list[str], limit: float, work: Path, log) -> dict:
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        out, status = proc.stdout + proc.stderr, "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        if name == "pytest_gpu" and proc.returncode == 1:
            status = "failures"  # pytest's own summary line says which
    except subprocess.TimeoutExpired as e:
        # what the section printed before it was killed: bytes even under text=True, or None when nothing came
        out = "".join(t.decode(errors="replace") if isinstance(t, bytes) else t or "" for t in (e.stdout, e.stderr))
        status = f"timeout after {limit:.0f} s"
    seconds = time.perf_counter() - start
    log.write(f"\n===== {name}: {status} in {seconds:.1f} s\n$ {' '.join(cmd)}\n{out}\n")
    log.flush()
    tail = [ln for ln in out.strip().splitlines() if ln.strip()][-1:] if out.strip() else []
    written = work / f"{name}.json"
    result = json.loads(written.read_text()) if written.is_file() else last_json(out)
    return {"status": status, "seconds": round(seconds, 1), "result": result, "last_line": tail[0] if tail else ""}


def markdown(report: dict) -> str:
    lines = [f"# gpu_check: {report['device']}", "", f"{report['started']}, {report['total_s']:.0f} s in all", ""]
    lines += ["| section | status | seconds | headline |", "|---|---|---:|---|"]
    for name, s in report["sections"].items():
        lines.append(f"| {name} | {s['status']} | {s['seconds']} | {headline(name, s).replace('|', '/')} |")
    step = (report["sections"].get("step") or {}).get("result")
    if step:
        lines += ["", f"Step benchmark ({step['dtype']}, peak {step['peak_tflops']:.1f} TFLOP/s):", ""]
        lines += ["| path | graphs | rows | step ms | rows/s | MFU |", "|---|---|---:|---:|---:|---:|"]
        for r in step["results"]:
            lines.append(
                f"| {r['path']} | {'on' if r['graphs'] else 'off'} | {r['rows']} | {r['step_ms']:.3f} "
                f"| {r['step_rows_per_s']:.0f} | {100 * r['mfu']:.1f}% |"
            )
    return "\n".join(lines + model_lines(report)) + "\n"


def compared(report: dict) -> list[dict]:
    """The step section's timings joined with the model's predictions of them (path, CUDA graphs, rows)."""
    step = (report["sections"].get("step") or {}).get("result")
    model = (report["sections"].get("model") or {}).get("result")
    if not (step and model):
        return []
    predicted = {(p["path"], p["graphs"], p["rows"]): p for p in model["step"]}
    out = []
    for r in step["results"]:
        p = predicted.get((r["path"], r["graphs"], r["rows"]))
        if p is None:  # compile: no prediction (torch.compile fuses what the model counts op by op)
            continue
        out.append(
            {
                "path": r["path"],
                "graphs": r["graphs"],
                "rows": r["rows"],
                "measured": r["step_rows_per_s"],
                "predicted": p["row_steps_per_s"],
                "ratio": r["step_rows_per_s"] / p["row_steps_per_s"],
                "bound": p["bound"],
                "measured_mfu": r["tflops"] / model["peak_tflops"],
                "predicted_mfu": p["mfu"],
            }
        )
    return out


def model_lines(report: dict) -> list[str]:
    """The predicted-vs-measured tables (engine/perf_model.py), for gpu_check.md and the console."""
    model = (report["sections"].get("model") or {}).get("result")
    if not model:
        return []
    lines = [
        "",
        f"Performance model: {model['device']}, {model['peak_tflops']:.3g} TFLOP/s matmul peak "
        f"(MFU against it) {model['note']}".rstrip(),
        "",
    ]
    rows = compared(report)
    if rows:
        clock = "" if model["gpu"] else " (the step benchmark times wall-clock: on a shared CPU it reads low)"
        lines += [f"Step benchmark, measured against predicted (row-steps/s){clock}:", ""]
        lines += [
            "| path | graphs | rows | measured | predicted | measured / predicted | predicted bound "
            "| MFU measured | MFU predicted |",
            "|---|---|---:|---:|---:|---:|---|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['path']} | {'on' if r['graphs'] else 'off'} | {r['rows']} | {r['measured']:,.1f} "
                f"| {r['predicted']:,.1f} | {r['ratio']:.2f} | {r['bound']} | {100 * r['measured_mfu']:.2f}% "
                f"| {100 * r['predicted_mfu']:.2f}% |"
            )
    validation = model.get("validation")
    if validation:
        from engine.perf_model import cpu_table

        lines += [
            "",
            f"Engine step on this CPU ({validation['threads']} thread, CPU time, the machine as loaded as it "
            f"is): measured against predicted",
            "",
            cpu_table(validation).rstrip(),
        ]
    if model.get("engine"):
        from engine.perf_model import table

        lines += [
            "",
            "Engine static step predicted for the cards (CUDA graphs on):",
            "",
            table(model["engine"]).rstrip(),
        ]
    return lines


def headline(name: str, s: dict) -> str:
    r = s["result"]
    if r is None:
        return s["last_line"][:120]
    if name == "model":
        v = r.get("validation")
        if v:
            return "; ".join(
                f"{x['rows']} rows: predicted {x['row_steps_per_s']:.0f}, measured "
                f"{x['measured_row_steps_per_s']:.0f} row-steps/s"
                for x in v["results"]
            )
        return f"{len(r['step'])} step predictions for {r['device']}"
    if name == "step":
        best = max(r["results"], key=lambda x: x["mfu"])
        return f"{len(r['results'])} timings; best MFU {100 * best['mfu']:.1f}% ({best['path']}, {best['rows']} rows)"
    keys = {
        "engine": ("throughput_ratio", "engine_row_steps_per_s", "pipeline_gain", "runner"),
        "fp32_vs_cpu": ("identical_answers", "identical_cells"),
        "train": ("samples_per_s", "peak_memory_gib"),
        "host": ("host_ms_per_step_median",),
        "commit": ("exact_accuracy", "row_steps_per_puzzle", "row_steps_per_second"),
        "generate": ("validity", "distinct", "row_steps_per_grid", "samples_per_second"),
        "puzzles": ("puzzles",),
    }.get(name)
    if keys is None:
        return s["last_line"][:120]
    return ", ".join(f"{k} {r[k]}" for k in keys if k in r) or s["last_line"][:120]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: the end-to-end smoke test")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    p.add_argument("--wheels", help="first pip-install the wheels in this folder (no index) into a private site dir")
    p.add_argument("--only", nargs="+", help="run only these sections")
    p.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one in-file section, print its JSON
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.section:
        print(json.dumps(SECTIONS[args.section](args)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.wheels:
        site = Path(tempfile.gettempdir()) / "gpu_check_site"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--target",
                str(site),
                *map(str, Path(args.wheels).glob("*.whl")),
            ],
            check=True,
        )
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    from engine.machine import describe

    report = {
        "device": describe(args.device),
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sections": {},
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work, open(out / "gpu_check.log", "w") as log:
        for name, cmd, limit in sections(args.device, args.quick, Path(work)):
            if args.only and name not in args.only and name != "puzzles":
                continue
            report["sections"][name] = s = run_section(name, cmd, limit, Path(work), log)
            print(f"{name:12s} {s['status']:>10s} {s['seconds']:7.1f} s  {headline(name, s)}", flush=True)
    report["total_s"] = time.perf_counter() - start
    report["model_vs_measured"] = compared(report)
    print("\n".join(model_lines(report)).strip("\n") + "\n" if model_lines(report) else "", flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_check.md").write_text(markdown(report))
    print(f"wrote {out / 'gpu_check.json'}, {out / 'gpu_check.md'}, {out / 'gpu_check.log'}")
    failed = [n for n, s in report["sections"].items() if s["status"] != "ok"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
