"""engine/perf_model.py: FLOPs, bytes and kernels counted from the model on the meta device, and the roofline that
turns them into a step time (issue 36). The CPU validation (predicted against measured) runs in test_gpu_check."""

from __future__ import annotations

import pytest
import torch

from engine import perf_model as pm
from engine.models import preset
from engine.models.layers import swiglu_inter_size


def closed_form_flops(c, rows: int) -> int:
    """A supervision step's matmul FLOPs for `rows` rows, in closed form from the layer shapes."""
    T, D, V = c.total_len, c.hidden_size, c.vocab_size
    inter = swiglu_inter_size(D, c.expansion)
    channel = 2 * T * (D * 2 * inter + inter * D)
    if c.mlp_t:
        inter_t = swiglu_inter_size(T, c.expansion)
        mixing = 2 * D * (T * 2 * inter_t + inter_t * T)
    else:  # qkv and o projections, then attention: QK^T and PV, 2 FLOPs a multiply-add each
        mixing = 2 * T * D * 3 * D + 2 * T * D * D + 4 * T * T * D
    nets = c.H_cycles * (c.L_cycles + 1)
    heads = 2 * T * D * V + 2 * D * 2  # lm_head over every position, then the Q head on slot 0
    return rows * (nets * c.L_layers * (mixing + channel) + heads)


@pytest.mark.parametrize("name", ["sudoku-mlp", "sudoku-attn", "sudoku-tiny"])
@pytest.mark.parametrize("fused", [False, True])
def test_counted_flops_are_the_architectures(name, fused):
    config = preset(name, forward_dtype="bfloat16")
    ks = pm.count(config, 3, "step", fused=fused)
    assert sum(k.flops for k in ks) == closed_form_flops(config, 3)
    assert all(k.matmul == (k.flops > 0) for k in ks)


def test_the_fused_path_is_one_kernel_per_fused_call():
    c = preset("sudoku-mlp", forward_dtype="bfloat16")
    nets = c.H_cycles * (c.L_cycles + 1) * c.L_layers
    fused = [k.op for k in pm.count(c, 2, "step", fused=True)]
    assert fused.count("add_rms_norm") == 2 * nets and fused.count("swiglu") == 2 * nets
    assert fused.count("inject") == c.H_cycles * c.L_cycles  # the first one carries the noise
    assert not {"rsqrt", "silu", "__xor__"} & set(fused)  # no reference op left
    reference = [k.op for k in pm.count(c, 2, "step", fused=False)]
    assert len(reference) > 2 * len(fused) and reference.count("rsqrt") == 2 * nets


def test_bytes_and_kernels_of_single_ops():
    pool = torch.empty(100, 10, device="meta")
    idx = torch.empty(3, dtype=torch.long, device="meta")
    a, b = torch.empty(4, 8, device="meta"), torch.empty(4, 8, device="meta")
    counter = pm.Counter()
    with counter:
        rows = pool[idx]  # a gather reads the rows it takes, not the pool
        a.t()[1:].unsqueeze(0), a.view(32).expand(2, 32)  # views launch nothing
        a + b
        a.add_(b)
        pool.index_copy_(0, idx, rows)
        a.copy_(b)
    got = [(k.op, k.bytes) for k in counter.kernels]
    assert got == [
        ("index", 2 * 3 * 10 * 4 + 3 * 8),
        ("add", 3 * 4 * 8 * 4),
        ("add_", 3 * 4 * 8 * 4),  # reads both, writes its target
        ("index_copy_", 2 * 3 * 10 * 4 + 3 * 8),
        ("copy_", 2 * 4 * 8 * 4),
    ]


def kernels_(*specs) -> list[pm.Kernel]:
    return [pm.Kernel("k", flops, nbytes, flops > 0) for flops, nbytes in specs]


def test_each_kernel_is_bound_by_its_slowest_resource():
    h100 = pm.GPUS["H100"]
    mm = pm.predict(kernels_((int(989.4e12 * 1e-3), 1000)), h100, "bfloat16", 1, graphs=True)
    assert mm.bound == "matmul" and mm.step_s == pytest.approx(1e-3) and mm.mfu == pytest.approx(1.0)
    mem = pm.predict(kernels_((10**6, int(3.35e9))), h100, "bfloat16", 1, graphs=True)
    assert mem.bound == "memory" and mem.step_s == pytest.approx(1e-3)
    tiny = pm.predict(kernels_(*[(0, 1000)] * 400), h100, "bfloat16", 1, graphs=True)
    assert tiny.bound == "launch/host" and tiny.step_s == pytest.approx(400 * h100.kernel_floor)
    # without graphs the host issues each kernel; it runs ahead of the device, so the slower of the two counts
    eager = pm.predict(kernels_(*[(0, 1000)] * 400), h100, "bfloat16", 1, graphs=False)
    assert eager.step_s == pytest.approx(400 * h100.host_per_op) and eager.bound == "launch/host"
    # a host slower than some of the device's causes but faster than the device: the device decides
    mixed = [(0, int(3.35e12 * 1.1e-5))] * 500 + [(int(989.4e12 * 1e-5), 0)] * 500  # 5.5 ms memory, 5 ms matmul
    busy = pm.predict(kernels_(*mixed), h100, "bfloat16", 1, graphs=False)  # the host: 1,000 x 8 us
    assert busy.shares["memory"] < busy.shares["host"] < busy.step_s and busy.bound == "memory"
    # on the CPU the host computes, so host time and compute add up
    cpu = pm.Device("cpu", {"float32": 1e11}, 1e10, kernel_floor=0.0, host_per_op=1e-6, overlap=False)
    p = pm.predict(kernels_((10**8, 10**6), (0, 10**7)), cpu, "float32", 1)
    assert p.step_s == pytest.approx(1e-3 + 1e-3 + 2e-6)


def test_h100_and_h200_predictions_for_the_paper_sudoku_mlp():
    rows = {(r["card"], r["rows"]): r for r in pm.gpu_predictions(("sudoku-mlp",), (1, 64, 256))}
    assert rows["H100", 1]["bound"] == "launch/host"  # one row: the per-kernel floor of ~375 kernels
    assert rows["H100", 256]["bound"] in ("memory", "matmul")
    assert rows["H100", 1]["row_steps_per_s"] < rows["H100", 64]["row_steps_per_s"]
    assert rows["H200", 256]["row_steps_per_s"] > rows["H100", 256]["row_steps_per_s"]  # more bandwidth, same FLOPs
    assert all(0 < r["mfu"] <= 1 for r in rows.values())


@pytest.mark.parametrize(
    "name, card",
    [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200"),
     ("NVIDIA A100-SXM4-80GB", None)],
)  # fmt: skip
def test_gpu_for(name, card):
    assert pm.gpu_for(name) == (pm.GPUS[card] if card else None)


def test_the_engine_workloads_count_the_runner_paths():
    c = preset("sudoku-small", forward_dtype="float32")
    static = [k.op for k in pm.count(c, 4, "engine", fused=True)]
    eager = [k.op for k in pm.count(c, 4, "engine-eager", fused=False)]
    assert "index_copy_" in static and "index_put_" in eager  # scatters back into the slot pool
    assert static.count("inject") == c.H_cycles * c.L_cycles + 1  # y noise too: the static step always has it
    with pytest.raises(ValueError, match="workload"):
        pm.count(c, 1, "bogus")
