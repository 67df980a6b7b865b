"""benchmarks/gpu_check.py end to end on the CPU in quick mode, so the one-call GPU check cannot rot before a GPU
run needs it (issue 15)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_every_section_and_writes_its_report(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--device",
            "cpu",
            "--quick",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert set(sections) == {"puzzles", "step", "engine", "fp32_vs_cpu", "commit", "generate", "host", "train", "model"}
    assert all(s["status"] == "ok" and s["result"] for s in sections.values()), sections
    assert {r["path"] for r in sections["step"]["result"]["results"]} == {"eager", "fused"}
    assert sections["generate"]["result"]["validity"] == 1.0
    assert sections["train"]["result"]["steps"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| fp32_vs_cpu | ok |" in table and "| eager | off | 1 |" in table
    assert "===== train: ok" in (tmp_path / "gpu_check.log").read_text()
    # the performance model (issue 36): the step section's timings against its predictions, and this CPU's engine
    # step predicted against measured at batch 1 and 64 (one thread, CPU time; loose bounds, the machine is shared)
    compared = report["model_vs_measured"]
    assert {(r["path"], r["rows"]) for r in compared} == {("eager", 1), ("eager", 2), ("fused", 1), ("fused", 2)}
    validation = sections["model"]["result"]["validation"]["results"]
    assert [r["rows"] for r in validation] == [1, 64] and all(0.4 < r["ratio"] < 2.5 for r in validation), validation
    assert "| eager | off | 1 |" in run.stdout and "measured / predicted" in run.stdout  # printed, not only written
    assert "Engine step on this CPU" in table and "| sudoku-small | 64 |" in table
