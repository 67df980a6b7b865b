"""The Triton kernels against their torch references (SERVING.md §5.2, §5.3), and the dispatch in `kernels`.

Without CUDA the kernels run under TRITON_INTERPRET=1 on CPU tensors: tiny shapes, fp32 only (bf16 arithmetic is
silently wrong in the interpreter). The flag is read when a `@triton.jit` function is decorated, triton's own
`tl.sum` and `tl.cdiv` included, so it is set here before triton is imported and stays set for the session; that
touches nothing else, because without CUDA only these tests build Triton kernels (`import kernels` alone does not
import triton there). If something imported triton earlier in the session, the kernel tests rerun in a fresh process.
With CUDA the same tests run the compiled kernels, and the `gpu` tests add bf16 and model-sized shapes.

Tolerances: fp32 within 2e-6 (relative and absolute); bf16 at most twice the error of the torch bf16 path against an
fp32 reference (the flash-attn rule). Every output buffer is filled with NaN first, so an unwritten element fails.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import kernels
from kernels import reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

PREIMPORTED = "triton" in sys.modules  # built without the flag: interpreted kernels cannot run in this process
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
from live import missing  # noqa: E402

try:
    import triton  # noqa: F401
except ImportError:
    missing("triton is not installed (the test extra has it on Linux x86-64)")
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from kernels import activation, noise, rms_norm  # noqa: E402

RUNNABLE = CUDA or (isinstance(rms_norm._add_rms_norm_kernel, InterpretedFunction) and not PREIMPORTED)
needs_kernels = pytest.mark.skipif(not RUNNABLE, reason="triton was imported before TRITON_INTERPRET=1 was set")

FP32 = dict(rtol=2e-6, atol=2e-6)
NOISY = dict(rtol=1e-5, atol=1e-5)  # Box-Muller's log and cos: approximate on GPUs, up to ~4e-6 on |n| <= 5.8


def poisoned(shape, dtype=torch.float32) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def randn(*shape, dtype=torch.float32, generator=None) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float32).to(DEVICE, dtype)


def row_inputs(num_rows: int, seed: int = 0, first_step: int = 0):
    seeds = torch.tensor([reference.row_seed(seed, r) for r in range(num_rows)], device=DEVICE)
    steps = torch.arange(first_step, first_step + num_rows, device=DEVICE)
    return seeds, steps


def assert_within_twice_torch(out: torch.Tensor, out_torch: torch.Tensor, ref: torch.Tensor) -> None:
    """max|out - ref| <= 2 max|out_torch - ref|: the kernel rounds no worse than torch in the same dtype."""
    err, err_torch = (out.float() - ref).abs().max().item(), (out_torch.float() - ref).abs().max().item()
    assert err <= 2 * err_torch + 1e-6, f"kernel error {err:.3g} > 2 x torch's {err_torch:.3g}"


# -- residual add + RMSNorm -----------------------------------------------------------------------------------------

RMS_SHAPES = [(1, 1, 8), (2, 5, 64), (3, 7, 37), (2, 3, 5, 17), (5, 33)]


@needs_kernels
@pytest.mark.parametrize("shape", RMS_SHAPES)
def test_add_rms_norm_hidden_axis(shape):
    torch.manual_seed(0)
    x, r = randn(*shape), randn(*shape)
    out = rms_norm.add_rms_norm(x, r, 1e-5, out=poisoned(shape))
    torch.testing.assert_close(out, reference.add_rms_norm(x, r, 1e-5), **FP32)


@needs_kernels
@pytest.mark.parametrize("batch, hidden, seq_len", [(1, 16, 9), (3, 24, 11), (2, 40, 97)])
def test_add_rms_norm_sequence_axis(batch, hidden, seq_len):
    """The mlp_t block: a transposed [B, D, L] view normalised over L, read through its strides."""
    torch.manual_seed(0)
    x = randn(batch, seq_len, hidden).transpose(1, 2)
    r = randn(batch, hidden, seq_len)
    out = rms_norm.add_rms_norm(x, r, 1e-5, out=poisoned((batch, seq_len, hidden)).transpose(1, 2))
    torch.testing.assert_close(out, reference.add_rms_norm(x, r, 1e-5), **FP32)
    assert rms_norm.add_rms_norm(x, r, 1e-5).transpose(1, 2).is_contiguous()  # the output takes x's layout


# -- SwiGLU ---------------------------------------------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("shape", [(1, 2), (4, 3, 90), (7, 2 * 259), (2, 3, 5, 64)])
def test_swiglu(shape):
    torch.manual_seed(0)
    gate_up = 3 * randn(*shape)
    out = activation.swiglu(gate_up, out=poisoned((*shape[:-1], shape[-1] // 2)))
    torch.testing.assert_close(out, reference.swiglu(gate_up), **FP32)


@needs_kernels
def test_swiglu_strided_input():
    torch.manual_seed(0)
    gate_up = randn(6, 2, 40)[:, 0]  # rows 80 elements apart
    torch.testing.assert_close(activation.swiglu(gate_up), reference.swiglu(gate_up), **FP32)


# -- noise and the fused injection ----------------------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("num_rows, n_cols, stream", [(1, 1, 0), (3, 1000, 1), (2, 2500, 5)])
def test_standard_normal_matches_reference(num_rows, n_cols, stream):
    """Any difference in the integer hash would move a value by O(1): 1e-5 checks the hash and Box-Muller."""
    seeds, steps = row_inputs(num_rows, seed=2**40 + 17, first_step=2**33)  # steps past 32 bits wrap alike
    out = noise.standard_normal(seeds, steps, stream, n_cols, out=poisoned((num_rows, n_cols)))
    torch.testing.assert_close(out, reference.standard_normal(seeds, steps, stream, (n_cols,)), **NOISY)


@needs_kernels
def test_noise_statistics():
    num_rows, n_cols = 8, 4096
    z = noise.standard_normal(*row_inputs(num_rows, seed=3), 0, n_cols).double().cpu()
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    for q in (-2.0, -1.0, 0.0, 0.5, 1.5):  # the empirical CDF against Phi at a few points
        p = 0.5 * (1 + math.erf(q / math.sqrt(2)))
        assert abs((z < q).double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    corr = torch.corrcoef(z)  # rows are independent streams
    off_diagonal = corr[~torch.eye(num_rows, dtype=torch.bool)]
    assert off_diagonal.abs().max().item() < 5 / math.sqrt(n_cols)
    lag1 = torch.corrcoef(torch.stack((z[:, :-1].flatten(), z[:, 1:].flatten())))[0, 1]
    assert abs(lag1.item()) < 5 / math.sqrt(n)


@needs_kernels
def test_noise_is_deterministic_and_batch_independent():
    seeds, steps = row_inputs(5, seed=11, first_step=4)
    a = noise.standard_normal(seeds, steps, 0, 300)
    assert torch.equal(a, noise.standard_normal(seeds, steps, 0, 300))
    # A row draws the same numbers alone, or at another place in another batch.
    assert torch.equal(a[3:4], noise.standard_normal(seeds[3:4], steps[3:4], 0, 300))
    perm = torch.tensor([4, 2, 0, 3, 1], device=DEVICE)
    assert torch.equal(a[perm], noise.standard_normal(seeds[perm], steps[perm], 0, 300))
    # Another step, stream or seed gives other numbers.
    for other in (
        noise.standard_normal(seeds, steps + 1, 0, 300),
        noise.standard_normal(seeds, steps, 1, 300),
        noise.standard_normal(seeds + 1, steps, 0, 300),
    ):
        assert (a != other).all(dim=1).all()


@needs_kernels
def test_steps_are_read_from_the_tensor():
    """Advancing the steps tensor in place draws fresh noise from the same launch arguments, as a CUDA graph replay
    would (SERVING.md §5.5)."""
    seeds, steps = row_inputs(2, seed=5)
    z, sigma = randn(2, 3, 8), torch.full((2,), 0.5, device=DEVICE)
    first = noise.inject(z, sigma=sigma, seeds=seeds, steps=steps)
    steps += 1
    second = noise.inject(z, sigma=sigma, seeds=seeds, steps=steps)
    assert not torch.equal(first, second)
    torch.testing.assert_close(second, reference.add_noise(z, sigma, seeds, steps, kernels.STREAM_Z), **NOISY)


@needs_kernels
@pytest.mark.parametrize("shape", [(1, 1, 8), (3, 7, 37), (2, 11, 24)])
def test_inject_variants(shape):
    torch.manual_seed(0)
    z_L, z_H, x = randn(*shape), randn(*shape), randn(*shape)
    seeds, steps = row_inputs(shape[0], seed=9)
    sigma = torch.rand(shape[0], device=DEVICE)

    def run(**kwargs):
        return noise.inject(z_L, out=poisoned(shape), **kwargs)

    noisy = dict(sigma=sigma, seeds=seeds, steps=steps)
    torch.testing.assert_close(run(h=z_H, x=x, **noisy), reference.inject(z_L, z_H, x, **noisy), **NOISY)
    torch.testing.assert_close(run(h=z_H, x=x), reference.inject(z_L, z_H, x), **FP32)
    torch.testing.assert_close(
        run(stream=kernels.STREAM_Y, **noisy),
        reference.add_noise(z_L, sigma, seeds, steps, kernels.STREAM_Y),
        **NOISY,
    )
    zero = dict(noisy, sigma=torch.zeros_like(sigma))
    assert torch.equal(run(h=z_H, x=x, **zero), z_L + (z_H + x))


@needs_kernels
@pytest.mark.parametrize("name", ["sudoku-tiny", "sudoku-tiny-attn"])
def test_model_step_through_the_kernels(monkeypatch, name):
    """A whole noisy supervision step with every `kernels` function replaced by its launcher: the model's own layouts
    (the mlp_t transposes, chunked gate_up, the injection) reach the kernels, and the logits match the reference."""
    from engine.models import TRM, Noise, preset

    torch.manual_seed(0)
    overrides = dict(forward_dtype="float32")
    if name.endswith("-attn"):
        overrides.update(mlp_t=False, pos_encodings="rope")
    model = TRM(preset("sudoku-tiny", **overrides)).to(DEVICE)
    B = 2
    inputs = torch.randint(1, 11, (B, model.config.seq_len), device=DEVICE)
    pid = torch.zeros(B, dtype=torch.long, device=DEVICE)
    seeds, steps = row_inputs(B, seed=3)
    noisy = Noise(seeds, steps, torch.full((B,), 0.2, device=DEVICE), torch.full((B,), 0.1, device=DEVICE))
    with torch.no_grad():
        want = model.step(model.initial_carry(B), inputs, pid, noisy)
        calls = []

        def launcher(name, fn):
            monkeypatch.setattr(kernels, name, lambda *args: calls.append(name) or fn(*args))

        launcher("add_rms_norm", rms_norm.add_rms_norm)
        launcher("swiglu", activation.swiglu)
        launcher("add_noise", lambda z, s, se, st, stream: noise.inject(z, None, None, s, se, st, stream))
        launcher("inject", noise.inject)
        got = model.step(model.initial_carry(B), inputs, pid, noisy)
    assert set(calls) == {"add_rms_norm", "swiglu", "add_noise", "inject"}
    torch.testing.assert_close(got[0].z_H, want[0].z_H, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(RUNNABLE, reason="the kernel tests ran in this process")
def test_kernels_in_a_fresh_process():
    """The kernel tests, rerun where TRITON_INTERPRET=1 is set before anything imports triton."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "not fresh_process"]
    run = subprocess.run(args, env=env, capture_output=True, text=True)
    assert run.returncode == 0 and "passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]


# -- custom ops, torch.compile and dispatch -------------------------------------------------------------------------


def op_samples():
    seeds, steps = (t.cpu() for t in row_inputs(2, seed=1))
    z, h, x = (torch.randn(2, 3, 5) for _ in range(3))
    sigma = torch.rand(2)
    return [
        (torch.ops.trm.add_rms_norm.default, (torch.randn(2, 3, 5), torch.randn(2, 3, 5), 1e-5)),
        (torch.ops.trm.add_rms_norm.default, (torch.randn(2, 7, 4).transpose(1, 2), torch.randn(2, 4, 7), 1e-5)),
        (torch.ops.trm.swiglu.default, (torch.randn(4, 6, 10),)),
        (torch.ops.trm.standard_normal.default, (seeds, steps, 1, 12)),
        (torch.ops.trm.inject.default, (z, h, x, sigma, seeds, steps, 0)),
        (torch.ops.trm.inject.default, (z, h, None, None, None, None, 0)),
    ]


@pytest.mark.parametrize("index", range(6))
def test_custom_op_registration(index):
    """Schema, fake (meta) implementation and dispatcher checks of torch.library.opcheck, on CPU tensors."""
    op, args = op_samples()[index]
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_custom_ops_on_cpu_are_the_references():
    seeds, steps = (t.cpu() for t in row_inputs(3, seed=4))
    x, r = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    assert torch.equal(torch.ops.trm.add_rms_norm(x, r, 1e-5), reference.add_rms_norm(x, r, 1e-5))
    assert torch.equal(torch.ops.trm.swiglu(x), reference.swiglu(x))
    got = torch.ops.trm.standard_normal(seeds, steps, 2, 24)
    assert torch.equal(got, reference.standard_normal(seeds, steps, 2, (24,)))


def test_custom_ops_compile_fullgraph():
    """The fake implementations let torch.compile trace the ops without a graph break."""

    def block(x, r, gate_up):
        return torch.ops.trm.add_rms_norm(x, r, 1e-5), torch.ops.trm.swiglu(gate_up)

    args = torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*args), block(*args)):
        assert torch.equal(got, want)


def test_backend_selection():
    assert kernels.backend("cpu") == "torch"
    assert kernels.backend(torch.device("meta")) == "torch"
    assert kernels.backend("cuda") == "triton"  # triton is importable here
    try:
        kernels.set_backend("torch")
        assert kernels.backend("cuda") == "torch"
    finally:
        kernels.set_backend("auto")
    with pytest.raises(ValueError, match="must be one of"):
        kernels.set_backend("cutlass")


def test_a_failed_launch_falls_back_to_the_references_for_good(monkeypatch):
    """Triton imports but cannot launch (a slim image has no C compiler for its driver): the first failure warns and
    answers with the reference, the references serve from then on, and `kernels.fallback()` says why."""
    real = kernels.backend
    monkeypatch.setattr(kernels, "backend", lambda device: real("cuda"))  # as if the tensors were on a GPU
    monkeypatch.setattr(kernels, "_failed", None)
    calls = []

    def broken(*args):
        calls.append(args)
        raise RuntimeError("failed to build the Triton driver: no C compiler")

    monkeypatch.setattr(torch.ops.trm, "swiglu", broken)
    x = torch.randn(4, 8)
    with pytest.warns(UserWarning, match="no C compiler"):
        y = kernels.swiglu(x)
    assert torch.equal(y, reference.swiglu(x)) and "no C compiler" in kernels.fallback()
    assert real("cuda") == "torch"
    assert torch.equal(kernels.swiglu(x), y) and len(calls) == 1  # no second try, no second warning


def test_trm_kernels_environment_variable():
    """TRM_KERNELS=torch forces the references, without importing triton; so does a missing triton."""
    code = (
        "import sys, kernels; print(kernels._mode, 'triton' in sys.modules); "
        "sys.modules['triton'] = None; kernels.set_backend('auto'); print(kernels.backend('cuda'))"
    )
    env = {**os.environ, "TRM_KERNELS": "torch"}
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["torch", "False", "torch"]
    env["TRM_KERNELS"] = "bogus"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "must be one of" in run.stderr


def test_dispatch_on_cpu_uses_the_references():
    seeds, steps = (t.cpu() for t in row_inputs(2, seed=6))
    z, h, x = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    sigma = torch.rand(2)
    assert torch.equal(kernels.inject(z, h, x, sigma, seeds, steps), reference.inject(z, h, x, sigma, seeds, steps))
    got = kernels.standard_normal(seeds, steps, 0, (3, 4))
    assert torch.equal(got, reference.standard_normal(seeds, steps, 0, (3, 4)))


# -- GPU: bf16, model-sized shapes, CUDA graphs, the model ----------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 64, 129])
def test_gpu_model_shapes(dtype, batch):
    """The Sudoku paper shapes: 97 tokens (81 cells + 16 prefix slots), hidden 512, SwiGLU inner 1536 and 512."""
    torch.manual_seed(0)
    L, D = 97, 512
    x, r = randn(batch, L, D), randn(batch, L, D)
    checks = [
        (rms_norm.add_rms_norm, reference.add_rms_norm, (x, r, 1e-5)),
        (rms_norm.add_rms_norm, reference.add_rms_norm, (x.transpose(1, 2), r.transpose(1, 2).contiguous(), 1e-5)),
        (activation.swiglu, reference.swiglu, (3 * randn(batch, L, 2 * 1536),)),
        (activation.swiglu, reference.swiglu, (3 * randn(batch, D, 2 * 512),)),
    ]
    seeds, steps = row_inputs(batch, seed=8)
    sigma = torch.rand(batch, device=DEVICE)
    z_L, z_H = randn(batch, L, D), randn(batch, L, D)
    checks.append((noise.inject, reference.inject, (z_L, z_H, x, sigma, seeds, steps)))

    def cast(args, to):  # activations only; sigma, seeds and steps keep their dtypes
        return [a.to(to) if torch.is_tensor(a) and a.dim() > 1 else a for a in args]

    for kernel, ref, args in checks:
        low = cast(args, dtype)
        out = kernel(*low)
        if dtype == torch.float32:
            torch.testing.assert_close(out, ref(*args), rtol=1e-5, atol=1e-5)
        else:
            assert_within_twice_torch(out, ref(*low), ref(*cast(low, torch.float32)))


@pytest.mark.gpu
def test_gpu_noise_under_cuda_graph_replays():
    seeds, steps = row_inputs(4, seed=1)
    z, sigma = randn(4, 97, 512, dtype=torch.bfloat16), torch.full((4,), 0.3, device=DEVICE)
    kernels.add_noise(z, sigma, seeds, steps, 0)  # warm-up: compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.add_noise(z, sigma, seeds, steps, 0)
    draws = []
    for _ in range(3):
        graph.replay()
        torch.testing.assert_close(out, reference.add_noise(z, sigma, seeds, steps, 0), rtol=1e-2, atol=1e-2)
        draws.append(out.clone())
        steps += 1
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sudoku-tiny", "sudoku-mlp", "sudoku-attn"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_model_step_triton_vs_torch(name, dtype):
    """One noisy supervision step through the Triton kernels and through the references: fp32 logits agree closely,
    bf16 answers (argmax per cell) almost everywhere."""
    from engine.models import TRM, Noise, preset

    torch.manual_seed(0)
    model = TRM(preset(name, forward_dtype=dtype)).to(DEVICE)
    B = 8
    inputs = torch.randint(1, 11, (B, model.config.seq_len), device=DEVICE)
    pid = torch.zeros(B, dtype=torch.long, device=DEVICE)
    seeds, steps = row_inputs(B, seed=2)
    noise_ = Noise(seeds, steps, torch.full((B,), 0.1, device=DEVICE), torch.full((B,), 0.05, device=DEVICE))
    with torch.no_grad():
        assert kernels.backend(DEVICE) == "triton"
        _, logits, _ = model.step(model.initial_carry(B), inputs, pid, noise_)
        try:
            kernels.set_backend("torch")
            _, logits_ref, _ = model.step(model.initial_carry(B), inputs, pid, noise_)
        finally:
            kernels.set_backend("auto")
    if dtype == "float32":
        torch.testing.assert_close(logits, logits_ref, rtol=1e-3, atol=1e-3)
    agree = (logits.argmax(-1) == logits_ref.argmax(-1)).float().mean().item()
    assert agree > 0.95, f"answers agree on {agree:.3f} of the cells"


@pytest.mark.gpu
def test_gpu_custom_ops_under_inductor():
    def block(x, r, gate_up):
        return kernels.add_rms_norm(x, r, 1e-5), kernels.swiglu(gate_up)

    args = randn(4, 97, 512, dtype=torch.bfloat16), randn(4, 97, 512, dtype=torch.bfloat16)
    args = (*args, randn(4, 97, 3072, dtype=torch.bfloat16))
    with torch.no_grad():
        compiled = torch.compile(block, fullgraph=True)
        for got, want in zip(compiled(*args), block(*args)):
            assert torch.equal(got, want)


@pytest.mark.gpu
def test_gpu_gradients_take_the_reference():
    x = randn(2, 5, 64).requires_grad_()
    kernels.add_rms_norm(x, randn(2, 5, 64), 1e-5).sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        assert kernels.backend(x.device) == "triton"
