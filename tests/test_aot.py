"""engine/aot.py: every Triton kernel the engine can launch, compiled for real GPUs on a machine without one (issue 36).

The compile runs in a subprocess (`python -m engine.aot --json`), where TRITON_INTERPRET is unset so the kernels are
real JIT functions; the rest runs here on the meta device, with the GPU mocked at the kernels' boundary, and works on
interpreted kernels too (triton is not imported at collection, so test_kernels can still set TRITON_INTERPRET=1).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from live import missing

if importlib.util.find_spec("triton") is None:
    missing("triton is not installed (the test extra has it on Linux x86-64)")

from engine import aot  # noqa: E402
from engine.models import preset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run(
        [sys.executable, "-m", "engine.aot", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert out.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    return run, json.loads(out.read_text())


def test_every_launch_compiles_for_every_target_with_no_spills_within_budget(report):
    run, rep = report
    bad = [(r["kernel"], r["dtype"], r["constants"], f"sm_{r['sm']}", aot.violations(r)) for r in rep["rows"]]
    assert not [b for b in bad if b[-1]], "\n".join(map(str, (b for b in bad if b[-1])))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    targets = rep["targets"]
    assert {80, 90} <= set(targets) and max(targets) == aot.newest_target() >= 100
    # every launch compiled for every target
    per_launch: dict[tuple, set] = {}
    for r in rep["rows"]:
        per_launch.setdefault((r["function"], json.dumps(r["spec"]), json.dumps(r["options"])), set()).add(r["sm"])
    assert len(per_launch) == rep["launches"] and all(sms == set(targets) for sms in per_launch.values())


def test_the_launches_cover_every_kernel_dtype_and_model(report):
    _, rep = report
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launched = {r["function"] for r in rep["rows"]}
    kernels_ = {
        f"{m.__name__}.{n}"
        for m in aot.kernel_modules()
        for n, v in vars(m).items()
        if isinstance(v, (JITFunction, InterpretedFunction)) and n.endswith("_kernel")
    }
    assert launched == kernels_
    assert {r["dtype"] for r in rep["rows"]} == {"bf16", "fp16", "fp32"}
    named = {name for r in rep["rows"] for w in r["where"] for name in w.split(" ", 1)[1].split(" = ")}
    assert named == set(aot.model_configs())
    # the launchers choose the blocks: for the paper's Sudoku MLP both SwiGLU widths and both norm layouts appear
    swiglu = {
        tuple(r["constants"].values())
        for r in rep["rows"]
        if r["kernel"] == "swiglu" and r["dtype"] == "bf16" and any("sudoku-mlp" in w for w in r["where"])
    }
    assert swiglu == {(4, 1024), (8, 512)}  # inner 1536 over hidden, 512 over the 97 tokens


def test_the_static_engine_step_takes_the_fused_kernels_on_a_mocked_gpu():
    """The runner's static step (what CUDA graphs capture) reads seeds and steps from its packed metadata buffer; the
    noise launchers once rejected those strided columns, so on a GPU the first step failed its launch and the engine
    served on the torch references for good. Every recorded path must launch without a failure."""
    for name in ("sudoku-tiny", "gram-sudoku-tiny"):
        calls = aot.record_calls(preset(name, forward_dtype="bfloat16"))
        ops = {c.op for c in calls}
        assert {"add_rms_norm", "swiglu"} <= ops
        assert ("standard_normal" if name.startswith("gram") else "inject") in ops


def test_replaying_at_a_batch_launches_what_running_at_it_does(monkeypatch):
    """The launches are recorded at one batch and replayed at the others: the same as running the paths there."""
    configs = {n: preset(n) for n in ("sudoku-tiny", "gram-sudoku-tiny", "arc-tiny")}
    replayed = aot.launches(("bfloat16",), sizes=[5], configs=configs)
    monkeypatch.setattr(aot, "PROBE", 5)
    ran = aot.launches(("bfloat16",), sizes=[5], configs=configs)
    assert sorted((lch.key(), lch.grid) for lch in replayed) == sorted((lch.key(), lch.grid) for lch in ran)
    assert len(ran) >= 6


def test_the_launch_list_is_the_launchers_choice(monkeypatch):
    """Change a launcher's tile and the list follows: nothing here is a hand-kept copy of the launchers' choices."""
    from kernels import activation, rms_norm

    configs = {"sudoku-tiny": preset("sudoku-tiny")}

    def blocks():
        return {
            (lch.name, tuple(aot.launch_constants(lch).items())) for lch in aot.launches(("float32",), [64], configs)
        }

    before = blocks()
    monkeypatch.setattr(rms_norm, "TILE", 1024)
    monkeypatch.setattr(activation, "TILE", 1024)
    after = blocks()
    assert before != after
    for name, consts in after:
        c = dict(consts)
        if name == "add_rms_norm":
            assert c["BLOCK_R"] * c["BLOCK_C"] <= 1024
        if name == "swiglu":
            assert c["BLOCK_M"] * c["BLOCK_N"] <= 1024


def test_models_fold_configs_that_are_one_model():
    found = aot.models(("float32",))
    assert any({"sudoku-small", "checkpoints/sudoku-trm", "checkpoints/sudoku-trm-fill"} <= set(n) for n, _ in found)
    assert all(c.forward_dtype == "float32" for _, c in found) and len({c for _, c in found}) == len(found)


@pytest.mark.parametrize(
    "sm, registers, shared, warps, want",
    [
        (90, 112, 0, 4, (4, 0.25, "registers")),  # 3584 registers a warp: 18 warps' worth, 4 blocks of 4
        (90, 32, 0, 4, (16, 1.0, "warps")),
        (80, 72, 0, 4, (7, 7 * 4 / 64, "registers")),
        (121, 32, 0, 4, (12, 1.0, "warps")),  # 48 warps an SM
        (121, 32, 30 * 1024, 4, (3, 0.25, "shared")),  # 31 KiB a block in 100 KiB
        (80, 16, 0, 1, (32, 0.5, "blocks")),
    ],
)
def test_occupancy(sm, registers, shared, warps, want):
    blocks, occ, limit = aot.occupancy(aot.ARCHS[sm], registers, shared, warps)
    assert (blocks, limit) == (want[0], want[2]) and occ == pytest.approx(want[1])


def test_violations_name_each_breach():
    ok = {"registers": 64, "local": 0, "stack": 0, "shared": 1024}
    assert aot.violations(ok) == []
    assert "spills" in aot.violations({**ok, "stack": 16})[0]
    assert "registers" in aot.violations({**ok, "registers": 200})[0]
    assert "shared" in aot.violations({**ok, "shared": 64 * 1024})[0]
    assert "compile error" in aot.violations({"error": "PTXASError: boom"})[0]


def test_mocked_cuda_restores_everything():
    import kernels
    from kernels import noise

    before = (kernels.backend, noise._inject_kernel, noise.check_launchable, torch.ops.trm.inject)
    with aot.mocked_cuda():
        assert kernels.backend("cpu") == "triton"
    assert (kernels.backend, noise._inject_kernel, noise.check_launchable, torch.ops.trm.inject) == before
    assert kernels.backend("cpu") == "torch" and kernels.fallback() is None
