"""The runner: owns the model and the rows' carries, and runs one supervision step for any set of rows.

Carries live in a slot pool ([slots + 1, total_len, hidden] for z_H and z_L; the last slot is scratch for padding
rows); each step gathers the scheduled rows' slots, runs, and scatters the new carries back, so rows of different
requests can join and leave at any step boundary. The runner casts the model's weights to its compute dtype in place
(`inference_weights`). Two modes:
- eager (the CPU default): the step runs on exactly the scheduled rows;
- static (the CUDA default): rows are copied into fixed buffers padded to the smallest bucket of a ladder, and on
  CUDA one graph per bucket is captured for the step (SERVING.md §2.3), gather and scatter included. Seeds, steps
  and noise scales are read from device buffers, so every replay draws the rows' own fresh noise.
`launch` enqueues a step and `collect` waits for its results, so the engine can keep one step on the device while it
books the previous one (two host staging buffers alternate).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

import kernels
from engine.models import Carry, counter_noise
from engine.search import StepOut, search_step


def bucket_ladder(max_batch: int) -> list[int]:
    """nano-vllm's ladder: 1, 2, 4, 8, then multiples of 16 up to max_batch (always included)."""
    ladder = [b for b in (1, 2, 4, 8) if b < max_batch] + list(range(16, max_batch, 16))
    return ladder + [max_batch]


@dataclass
class Batch:
    """One step's rows, in the order the outputs come back."""

    slots: np.ndarray  # [n] pool slots
    fresh: np.ndarray  # [n] bool: first step, start from the initial carry
    inputs: np.ndarray  # [n, seq_len] tokens
    puzzle_ids: np.ndarray  # [n]
    seeds: np.ndarray  # [n] 32-bit row seeds (kernels.row_seed)
    steps: np.ndarray  # [n] the step index each row is about to run
    sigma_z: np.ndarray  # [n] PTRM noise scales
    sigma_y: np.ndarray  # [n]
    want_probs: bool = False  # also return per-cell distributions (commit search needs them at a node's last step)


@dataclass
class Launched:
    """A step enqueued on the device whose results are not read yet (`Runner.collect` reads them)."""

    n: int  # rows
    out: StepOut | None = None  # eager: the step's device tensors
    results: torch.Tensor | None = None  # static: the pinned staging buffer its results land in
    probs: torch.Tensor | None = None  # per-cell distributions on the device, when the batch asked for them
    done: torch.cuda.Event | None = None  # CUDA: recorded after the step's copies


@dataclass
class StepResult:
    answers: np.ndarray  # [n, seq_len]
    q: np.ndarray  # [n]
    value: np.ndarray | None
    log_prior: np.ndarray | None
    probs: np.ndarray | None = None  # [n, seq_len, vocab] fp32, when the batch asked for them


class Runner:
    def __init__(
        self,
        model: torch.nn.Module,
        max_batch: int = 64,
        slots: int | None = None,
        static: bool | None = None,
        cuda_graphs: bool | None = None,
    ):
        self.model = model.eval().inference_weights()  # the runner only infers: weights in the compute dtype, once
        self.device = next(model.parameters()).device
        on_cuda = self.device.type == "cuda"
        self.max_batch = max_batch
        self.buckets = bucket_ladder(max_batch)
        self.slots = slots or 2 * max_batch
        carry = model.initial_carry(self.slots + 1)  # + a scratch slot for the static path's padding rows
        self.pool_H, self.pool_L = carry.z_H, carry.z_L
        self.static = on_cuda if static is None else static
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not (on_cuda and self.static):
            raise ValueError("CUDA graphs need a CUDA model and static buffers")
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if self.static:
            self._buffers()
        if self.cuda_graphs:
            self._capture()

    @property
    def mode(self) -> str:
        return "cuda-graphs" if self.cuda_graphs else "static" if self.static else "eager"

    def padded(self, rows: int) -> int:
        """Rows the device computes for a step of `rows`: the smallest bucket that holds them (static mode)."""
        return next(s for s in self.buckets if s >= rows) if self.static else rows

    @property
    def kernels(self) -> str:
        return kernels.backend(self.device)

    # -- one step ---------------------------------------------------------------------------------------------------

    def run(self, batch: Batch) -> StepResult:
        return self.collect(self.launch(batch))

    @torch.inference_mode()
    def launch(self, batch: Batch) -> Launched:
        """Enqueue one step of `batch`'s rows; on CUDA this returns before the device finishes, so the engine can do
        host work meanwhile (issue 15). At most two launched steps may be uncollected at once (two staging buffers)."""
        n = len(batch.slots)
        if not 0 < n <= self.max_batch:
            raise ValueError(f"a step takes 1..{self.max_batch} rows, got {n}")
        if self.static:
            return self._launch_static(batch)
        out = self._run_eager(batch)
        return Launched(n, out=out, probs=out.logits.float().softmax(-1) if batch.want_probs else None)

    @torch.inference_mode()
    def collect(self, step: Launched) -> StepResult:
        """Wait for a launched step and return its results on the host."""
        if step.done is not None:
            step.done.synchronize()  # the one wait of a step
        probs = None if step.probs is None else step.probs.cpu().numpy()
        if step.out is not None:
            cpu = lambda t: None if t is None else t.float().cpu().numpy()  # noqa: E731
            out = step.out
            return StepResult(out.answers.cpu().numpy(), cpu(out.q), cpu(out.value), cpu(out.log_prior), probs)
        L, r = self.model.config.seq_len, step.results[: step.n].numpy()
        extra = lambda col, present: r[:, col].copy() if present else None  # noqa: E731
        return StepResult(
            r[:, :L].astype(np.int64),
            r[:, L].copy(),
            extra(L + 1, self.has_value),
            extra(L + 2, self.has_log_prior),
            probs,
        )

    def _run_eager(self, b: Batch) -> StepOut:
        t = lambda a, dtype=torch.long: torch.as_tensor(a, dtype=dtype, device=self.device)  # noqa: E731
        idx = t(b.slots)
        carry = self.model.reset(Carry(self.pool_H[idx], self.pool_L[idx]), t(b.fresh, torch.bool))
        sigma_z = t(b.sigma_z, torch.float32) if b.sigma_z.any() else None
        sigma_y = t(b.sigma_y, torch.float32) if b.sigma_y.any() else None
        out = search_step(self.model, carry, t(b.inputs), t(b.puzzle_ids), t(b.seeds), t(b.steps), sigma_z, sigma_y)
        self.pool_H[idx], self.pool_L[idx] = out.carry.z_H, out.carry.z_L
        return out

    @torch.inference_mode()
    def likelihood(self, puzzle: np.ndarray, puzzle_id: int, candidates: np.ndarray, seed: int, steps: int):
        """GRAM only: lower bounds on log p(candidate | puzzle) [C] from one posterior pass each (the `likelihood`
        selector). A candidate's noise is seeded by its content, so its score does not depend on the others."""
        C, dev = len(candidates), self.device
        seeds = torch.tensor([kernels.row_seed(seed, zlib.crc32(c.tobytes())) for c in candidates], device=dev)
        bound = self.model.elbo(
            torch.as_tensor(puzzle, device=dev).expand(C, -1),
            torch.full((C,), puzzle_id, device=dev),
            torch.as_tensor(candidates, device=dev),
            steps,
            counter_noise(seeds),
        )
        return bound.float().cpu().numpy()

    # -- static buffers and CUDA graphs -----------------------------------------------------------------------------
    #
    # A static step moves two buffers, once each (SERVING.md §2.3; issue 15): the rows' metadata in (one int64
    # [B, L + 6] copy: tokens, puzzle id, seed, step, fresh, slot, and the two float32 noise scales packed in one
    # column) and the results out (one float32 [B, L + 3]: answers, q, value, log-prior; the logits only when search
    # asks for distributions). Gathering carries from the slot pool and scattering them back happen inside the step,
    # so inside the graph; padding rows read and write a scratch slot past the pool's end. Every graph writes the
    # same output buffer, so no graph keeps outputs of its own, and the noise scales are always inputs, so rows with
    # y noise replay the graph too.

    def _buffers(self) -> None:
        B, L, dev = self.max_batch, self.model.config.seq_len, self.device
        pinned = dev.type == "cuda"
        self.scratch = self.slots  # the pool's extra last slot
        self._stage = 0  # which of the two host staging buffers the next step uses
        self.meta_host = torch.zeros(2, B, L + 6, dtype=torch.long, pin_memory=pinned)
        self.meta_host[:, :, L + 3], self.meta_host[:, :, L + 4] = 1, self.scratch  # every row padding until filled
        self.meta = self.meta_host[0].to(dev, copy=True)
        self.results = torch.zeros(B, L + 3, dtype=torch.float32, device=dev)
        self.results_host = torch.zeros(2, B, L + 3, dtype=torch.float32, pin_memory=pinned)
        self.logits = torch.zeros(B, L, self.model.config.vocab_size, dtype=torch.float32, device=dev)

    def _static_step(self, size: int) -> None:
        """One step of the first `size` rows of the static buffers, from metadata to results: what a graph holds."""
        L = self.model.config.seq_len
        m = self.meta[:size]
        slot, sigma = m[:, L + 4], m[:, L + 5 :].view(torch.float32)  # [size, 2]: sigma_z, sigma_y
        # The noise kernels index seeds, steps and scales as contiguous [size] rows: one copy each a step, not a call.
        columns = (m[:, L + 1], m[:, L + 2], sigma[:, 0], sigma[:, 1])
        seeds, steps, sigma_z, sigma_y = (c.contiguous() for c in columns)
        carry = self.model.reset(Carry(self.pool_H[slot], self.pool_L[slot]), m[:, L + 3].bool())
        out = search_step(self.model, carry, m[:, :L], m[:, L], seeds, steps, sigma_z, sigma_y)
        self.pool_H.index_copy_(0, slot, out.carry.z_H)
        self.pool_L.index_copy_(0, slot, out.carry.z_L)
        r = self.results[:size]
        r[:, :L] = out.answers
        r[:, L] = out.q
        self.has_value, self.has_log_prior = out.value is not None, out.log_prior is not None  # fixed per model
        if self.has_value:
            r[:, L + 1] = out.value
        if self.has_log_prior:
            r[:, L + 2] = out.log_prior
        self.logits[:size] = out.logits

    def _launch_static(self, b: Batch) -> Launched:
        n, L = len(b.slots), self.model.config.seq_len
        size = self.padded(n)
        self._stage ^= 1  # alternate staging buffers: the other may still belong to an uncollected step
        meta_host, results_host = self.meta_host[self._stage], self.results_host[self._stage]
        meta = meta_host[:size].numpy()
        meta[:n, :L] = b.inputs
        meta[:n, L], meta[:n, L + 1], meta[:n, L + 2], meta[:n, L + 3], meta[:n, L + 4] = (
            b.puzzle_ids,
            b.seeds,
            b.steps,
            b.fresh,
            b.slots,
        )
        meta[:n, L + 5 :].view(np.float32)[:] = np.stack((b.sigma_z, b.sigma_y), axis=1)
        meta[n:] = 0  # padding rows: fresh, noiseless, on the scratch slot
        meta[n:, L + 3], meta[n:, L + 4] = 1, self.scratch
        # Stream order keeps the single device buffers safe with two steps in flight: this copy into `meta` runs
        # after the previous step's graph, and the previous results left `results` before this graph overwrites it.
        self.meta[:size].copy_(meta_host[:size], non_blocking=True)
        if size in self.graphs:
            self.graphs[size].replay()
        else:
            self._static_step(size)
        results_host[:n].copy_(self.results[:n], non_blocking=True)
        probs = self.logits[:n].softmax(-1) if b.want_probs else None  # a fresh tensor, not the shared logits
        done = None
        if self.device.type == "cuda":
            done = torch.cuda.Event()
            done.record()
        return Launched(n, results=results_host, probs=probs, done=done)

    @torch.inference_mode()
    def _capture(self) -> None:
        """One graph per bucket, largest first, sharing one memory pool (nano-vllm's recipe)."""
        pool = None
        for size in reversed(self.buckets):
            self._static_step(size)  # warm-up: lazy initialisation outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool):
                self._static_step(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()
