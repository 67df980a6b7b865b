"""CUDA-only code paths, exercised without a GPU with the device mocked at its boundary (issue 36): the launchers'
argument checks and launch grids, the CUDA-graph bucket plan and capture, the static buffers' layout, and the
dispatch between the fused kernels and the references. What only a GPU can show is listed in the README (GPU)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from live import missing

import kernels
from engine.models import GRAM, TRM, preset
from engine.runtime import runner as runner_module
from engine.runtime.runner import Batch, Runner, bucket_ladder

if importlib.util.find_spec("triton") is None:
    missing("triton is not installed (the test extra has it on Linux x86-64)")

from engine import aot  # noqa: E402


@pytest.fixture
def k() -> SimpleNamespace:
    """The kernel modules, imported when a test runs (not at collection: test_kernels may still set
    TRITON_INTERPRET=1); compiled or interpreted, the launchers' checks and choices are the same."""
    from kernels import activation, noise, rms_norm, utils

    return SimpleNamespace(activation=activation, noise=noise, rms_norm=rms_norm, utils=utils)


def meta(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def rows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return meta(n, dtype=torch.long), meta(n, dtype=torch.long)


# -- the launchers' argument checks, on meta tensors with the device check mocked -----------------------------------

BAD_LAUNCHES = [
    ("add_rms_norm", lambda k: k.rms_norm.add_rms_norm(meta(2, 3, 8), meta(2, 3, 9), 1e-5), "differ"),
    ("add_rms_norm", lambda k: k.rms_norm.add_rms_norm(meta(2, 8), meta(2, 8, dtype=torch.bfloat16), 1e-5), "differ"),
    ("add_rms_norm", lambda k: k.rms_norm.add_rms_norm(meta(1, 16385), meta(1, 16385), 1e-5), "one tile"),
    ("add_rms_norm", lambda k: k.rms_norm.add_rms_norm(meta(2, 8), meta(2, 8), 1e-5, out=meta(2, 4)), "out"),
    ("swiglu", lambda k: k.activation.swiglu(meta(2, 7)), "even"),
    ("swiglu", lambda k: k.activation.swiglu(meta(2, 8), out=meta(2, 8)), "contiguous"),
    ("swiglu", lambda k: k.activation.swiglu(meta(2, 8), out=meta(4, 2).t()), "contiguous"),
    (
        "standard_normal",
        lambda k: k.noise.standard_normal(meta(2, dtype=torch.int32), meta(2, dtype=torch.long), 0, 8),
        "int64",
    ),
    (
        "standard_normal",
        lambda k: k.noise.standard_normal(*rows(2)[:1], meta(3, dtype=torch.long), 0, 8),
        "int64 \\[B\\]",
    ),
    ("standard_normal", lambda k: k.noise.standard_normal(*rows(2), 0, 8, out=meta(2, 9)), "contiguous float32"),
    ("inject", lambda k: k.noise.inject(meta(2, 4), x=meta(2, 4)), "x needs h"),
    ("inject", lambda k: k.noise.inject(meta(2, 4), h=meta(2, 5)), "differs"),
    ("inject", lambda k: k.noise.inject(meta(2, 4), sigma=meta(3), seeds=rows(3)[0], steps=rows(3)[1]), "\\[B\\]"),
    ("inject", lambda k: k.noise.inject(meta(2, 4), h=meta(2, 4), out=meta(4, 2).t()), "contiguous"),
]


@pytest.mark.parametrize("index", range(len(BAD_LAUNCHES)), ids=[f"{b[0]}-{b[2]}" for b in BAD_LAUNCHES])
def test_a_bad_launch_is_refused_before_triton(index, k):
    launched = []
    _, launch, match = BAD_LAUNCHES[index]
    with aot.mocked_cuda(launched), pytest.raises(ValueError, match=match):
        launch(k)
    assert launched == []


def test_the_device_check(k):
    """A compiled kernel refuses CPU tensors (naming TRITON_INTERPRET), and every kernel refuses mixed devices."""
    compiled = object()  # anything but an interpreted kernel: what a GPU machine builds
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        k.utils.check_launchable(compiled, torch.zeros(2), None)
    with pytest.raises(ValueError, match="share one device"):
        k.utils.check_launchable(compiled, torch.zeros(2), meta(2))


def test_strided_seeds_and_steps_reach_the_kernel_contiguous(k):
    """The static runner's seeds and steps are columns of one packed buffer: the launchers copy them to the
    contiguous rows the kernels index (refusing them once disabled the fused kernels for good)."""
    packed = meta(4, 10, dtype=torch.long)
    launched = []
    with aot.mocked_cuda(launched):
        k.noise.inject(meta(4, 3, 8), sigma=meta(4), seeds=packed[:, 1], steps=packed[:, 2])
        k.noise.standard_normal(packed[:, 1], packed[:, 2], 2, 24)
    inject_args, normal_args = launched[0][3], launched[1][3]
    assert [a.is_contiguous() for a in inject_args[4:7]] == [True, True, True]  # SIGMA, SEEDS, STEPS
    assert [a.is_contiguous() for a in normal_args[1:3]] == [True, True]


@pytest.mark.parametrize("name", ["sudoku-mlp", "gram-sudoku", "maze-attn", "arc-tiny"])
def test_launch_grids_cover_the_tensors_within_cuda_limits(name):
    """At every batch up to 1024 rows: each grid's tiles cover its tensor and stay within CUDA's grid limits
    (x < 2**31, y and z < 2**16): what the interpreter, which accepts any grid, cannot check."""
    calls = aot.record_calls(preset(name, forward_dtype="bfloat16"))
    for b, (kernel, _, grid, args, options) in aot.replay(calls, aot.batches()):
        grid = tuple(grid) + (1,) * (3 - len(grid))
        assert grid[0] < 2**31 and grid[1] < 2**16 and grid[2] < 2**16, (kernel, b, grid)
        if kernel.endswith("_add_rms_norm_kernel"):
            n_rows, n_cols = args[3], args[4]
            assert options["BLOCK_C"] >= n_cols and grid[0] * options["BLOCK_R"] >= b * n_rows
        elif kernel.endswith("_swiglu_kernel"):
            n_rows, n_inter = args[2], args[3]
            assert grid[0] * options["BLOCK_M"] >= n_rows and grid[1] * options["BLOCK_N"] >= n_inter
        else:  # inject, standard_normal: one row per program row, BLOCK elements per program
            n_cols = args[-1] if kernel.endswith("_standard_normal_kernel") else args[8]
            assert grid[0] == b and grid[1] * options["BLOCK"] >= n_cols


# -- CUDA graphs: the bucket plan and the capture, with torch.cuda mocked ------------------------------------------


@pytest.mark.parametrize(
    "max_batch, ladder",
    [
        (1, [1]),
        (2, [1, 2]),
        (8, [1, 2, 4, 8]),
        (16, [1, 2, 4, 8, 16]),
        (20, [1, 2, 4, 8, 16, 20]),
        (64, [1, 2, 4, 8, 16, 32, 48, 64]),
    ],
)
def test_bucket_ladder(max_batch, ladder):
    assert bucket_ladder(max_batch) == ladder


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TRM(preset("sudoku-tiny", forward_dtype="float32"))


def test_every_row_count_pads_to_the_smallest_bucket_holding_it(tiny):
    runner = Runner(tiny, max_batch=40, static=True, cuda_graphs=False)
    for n in range(1, 41):
        size = runner.padded(n)
        assert size in runner.buckets and size >= n and not [s for s in runner.buckets if n <= s < size]
    assert Runner(tiny, max_batch=40, static=False).padded(7) == 7


class FakeGraph:
    """torch.cuda.CUDAGraph's part the runner uses: capture into a pool, replay."""

    log: list = []

    def __init__(self):
        self.size, self.memory = None, None

    def pool(self):
        return self.memory  # the pool it was captured in: a fresh one, or the one it was given

    def replay(self):
        FakeGraph.log.append(("replay", self.size))


@pytest.fixture
def mocked_graphs(monkeypatch):
    FakeGraph.log = []
    state = {"capturing": None}

    class graph_ctx:
        def __init__(self, graph, pool=None):
            self.graph, self.pool = graph, pool

        def __enter__(self):
            state["capturing"] = self.graph
            self.graph.memory = self.pool if self.pool is not None else object()
            FakeGraph.log.append(("capture", self.pool))

        def __exit__(self, *exc):
            state["capturing"] = None

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph_ctx)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: FakeGraph.log.append(("sync",)))
    return state


def test_capture_plans_one_graph_per_bucket_largest_first_in_one_pool(tiny, mocked_graphs, monkeypatch):
    runner = Runner(tiny, max_batch=20, static=True, cuda_graphs=False)
    steps = []
    real = runner._static_step

    def step(size):
        steps.append((size, mocked_graphs["capturing"] is not None))
        if mocked_graphs["capturing"] is not None:
            mocked_graphs["capturing"].size = size
        real(size)

    monkeypatch.setattr(runner, "_static_step", step)
    runner._capture()
    sizes = list(reversed(runner.buckets))
    assert sizes == [20, 16, 8, 4, 2, 1] and sorted(runner.graphs) == sorted(sizes)
    # each bucket: a warm-up step outside the capture (lazy initialisation), then the captured one
    assert steps == [(s, captured) for s in sizes for captured in (False, True)]
    pools = [e[1] for e in FakeGraph.log if e[0] == "capture"]
    assert pools[0] is None and all(p is runner.graphs[20].pool() for p in pools[1:])  # the largest's pool, shared
    assert FakeGraph.log[-1] == ("sync",)


def batch_of(n: int, L: int, sigma_z=0.25, sigma_y=0.5) -> Batch:
    r = np.random.default_rng(n)
    return Batch(
        slots=np.arange(n) + 3,
        fresh=np.arange(n) % 2 == 0,
        inputs=r.integers(0, 11, (n, L)),
        puzzle_ids=np.zeros(n, np.int64),
        seeds=r.integers(0, 2**32, n),
        steps=np.arange(n) + 7,
        sigma_z=np.full(n, sigma_z),
        sigma_y=np.full(n, sigma_y),
    )


def test_a_launch_replays_the_graph_of_its_bucket(tiny, mocked_graphs, monkeypatch):
    runner = Runner(tiny, max_batch=8, static=True, cuda_graphs=False)
    runner._capture()
    for size, graph in runner.graphs.items():
        graph.size = size
    FakeGraph.log = []
    monkeypatch.setattr(runner, "_static_step", lambda size: pytest.fail("a captured bucket ran eagerly"))
    for n, bucket in ((1, 1), (3, 4), (5, 8), (8, 8)):
        runner.collect(runner.launch(batch_of(n, tiny.config.seq_len)))
        assert FakeGraph.log[-1] == ("replay", bucket)


def test_cuda_graphs_need_a_cuda_model_and_static_buffers(tiny):
    with pytest.raises(ValueError, match="CUDA graphs need"):
        Runner(tiny, max_batch=4, cuda_graphs=True)
    assert Runner(tiny, max_batch=4).mode == "eager" and Runner(tiny, max_batch=4, static=True).mode == "static"


# -- the static buffers: what one copy in carries, and how the step reads it ----------------------------------------


def test_the_metadata_row_layout_and_its_padding(tiny):
    runner = Runner(tiny, max_batch=8, static=True, cuda_graphs=False)
    L, n = tiny.config.seq_len, 5
    b = batch_of(n, L)
    runner.collect(runner.launch(b))
    host = runner.meta_host[runner._stage][:8].numpy()
    assert (host[:n, :L] == b.inputs).all() and (host[:n, L] == b.puzzle_ids).all()
    assert (host[:n, L + 1] == b.seeds).all() and (host[:n, L + 2] == b.steps).all()
    assert (host[:n, L + 3] == b.fresh).all() and (host[:n, L + 4] == b.slots).all()
    sigma = host[:n, L + 5 :].view(np.float32)
    assert (sigma[:, 0] == 0.25).all() and (sigma[:, 1] == 0.5).all()
    pad = host[n:8]  # padding rows: fresh, noiseless, on the scratch slot past the pool
    assert runner.scratch == runner.slots and (pad[:, L + 3] == 1).all() and (pad[:, L + 4] == runner.scratch).all()
    assert (pad[:, L + 5 :] == 0).all() and (pad[:, :L] == 0).all()
    assert torch.equal(runner.meta[:8], runner.meta_host[runner._stage][:8])  # the one copy in


def test_the_static_step_unpacks_rows_as_the_noise_kernels_read_them(tiny, monkeypatch):
    runner = Runner(tiny, max_batch=8, static=True, cuda_graphs=False)
    seen = {}
    real = runner_module.search_step

    def spy(model, carry, inputs, puzzle_ids, seeds, steps, sigma_z, sigma_y=None):
        seen.update(inputs=inputs, seeds=seeds, steps=steps, sigma_z=sigma_z, sigma_y=sigma_y, z_H=carry.z_H)
        return real(model, carry, inputs, puzzle_ids, seeds, steps, sigma_z, sigma_y)

    monkeypatch.setattr(runner_module, "search_step", spy)
    L, n = tiny.config.seq_len, 3
    b = batch_of(n, L)
    runner.collect(runner.launch(b))
    assert seen["inputs"].shape == (4, L) and (seen["inputs"][:n].numpy() == b.inputs).all()
    for name, want in (("seeds", b.seeds), ("steps", b.steps), ("sigma_z", b.sigma_z), ("sigma_y", b.sigma_y)):
        t = seen[name]
        assert t.is_contiguous() and t.shape == (4,), name  # [bucket] rows the kernels index directly
        assert np.allclose(t[:n].numpy(), want), name
        assert (t[n:] == 0).all(), name  # padding rows: seed 0, step 0, no noise
    fresh = torch.as_tensor(b.fresh)
    assert torch.equal(seen["z_H"][:n][fresh], tiny.H_init.expand(int(fresh.sum()), *seen["z_H"].shape[1:]))


def test_static_gram_results_carry_value_and_log_prior():
    torch.manual_seed(0)
    gram = GRAM(preset("gram-sudoku-tiny", forward_dtype="float32"))
    static, eager = (Runner(gram, max_batch=4, static=s, cuda_graphs=False) for s in (True, False))
    b = batch_of(3, gram.config.seq_len, 0.0, 0.0)
    got, want = static.run(b), eager.run(b)
    assert np.array_equal(got.answers, want.answers)
    for name in ("q", "value", "log_prior"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-4, atol=1e-4)


# -- dispatch: the fused kernels on CUDA, the references for gradients and after a failed launch --------------------


@pytest.fixture
def fused_spy(monkeypatch, k):  # k: the torch.ops.trm ops registered
    calls = []
    monkeypatch.setattr(kernels, "backend", lambda device: "triton")  # as if the tensors were on a GPU
    monkeypatch.setattr(kernels, "_failed", None)
    monkeypatch.setattr(torch.ops.trm, "swiglu", lambda x: calls.append(x) or torch.zeros(*x.shape[:-1], 4))
    return calls


def test_a_tensor_needing_a_gradient_takes_the_reference(fused_spy):
    x = torch.randn(2, 8, requires_grad=True)
    y = kernels.swiglu(x)
    assert fused_spy == [] and y.requires_grad  # training: the reference, which has a backward
    with torch.no_grad():
        kernels.swiglu(x)
    with torch.inference_mode():
        kernels.swiglu(torch.randn(2, 8))
    kernels.swiglu(torch.randn(2, 8))  # no input needs a gradient
    assert len(fused_spy) == 3


def test_after_a_failed_launch_every_device_takes_the_references(monkeypatch):
    monkeypatch.setattr(kernels, "_failed", "Triton kernel launch failed: no C compiler")
    assert kernels.backend("cuda") == "torch" and kernels.backend(torch.device("cuda", 1)) == "torch"
    monkeypatch.setattr(kernels, "_failed", None)
    assert kernels.backend("cuda") == "triton" and kernels.backend("meta") == "torch"
