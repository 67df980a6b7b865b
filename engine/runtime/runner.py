"""The runner: owns the model and the rows' carries, and runs one supervision step for any set of rows.

Carries live in a slot pool ([slots, total_len, hidden] for z_H and z_L); each step gathers the scheduled rows'
slots, runs, and scatters the new carries back, so rows of different requests can join and leave at any step
boundary. The runner casts the model's weights to its compute dtype in place (`inference_weights`). Two modes:
- eager (the CPU default): the step runs on exactly the scheduled rows;
- static (the CUDA default): rows are copied into fixed buffers padded to the smallest bucket of a ladder, and on
  CUDA one graph per bucket is captured for the step (SERVING.md §2.3). Seeds, steps and noise scales are read from
  device buffers, so every replay draws the rows' own fresh noise.
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
        carry = model.initial_carry(self.slots)
        self.pool_H, self.pool_L = carry.z_H, carry.z_L
        self.static = on_cuda if static is None else static
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not (on_cuda and self.static):
            raise ValueError("CUDA graphs need a CUDA model and static buffers")
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, StepOut]] = {}
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

    @torch.inference_mode()
    def run(self, batch: Batch) -> StepResult:
        n = len(batch.slots)
        if not 0 < n <= self.max_batch:
            raise ValueError(f"a step takes 1..{self.max_batch} rows, got {n}")
        idx = torch.as_tensor(batch.slots, device=self.device)
        out = self._run_static(batch, idx) if self.static else self._run_eager(batch, idx)
        self.pool_H[idx] = out.carry.z_H[:n]
        self.pool_L[idx] = out.carry.z_L[:n]
        cpu = lambda t: None if t is None else t[:n].float().cpu().numpy()  # noqa: E731
        probs = cpu(out.logits.float().softmax(-1)) if batch.want_probs else None
        return StepResult(out.answers[:n].cpu().numpy(), cpu(out.q), cpu(out.value), cpu(out.log_prior), probs)

    def _run_eager(self, b: Batch, idx: torch.Tensor) -> StepOut:
        t = lambda a, dtype=torch.long: torch.as_tensor(a, dtype=dtype, device=self.device)  # noqa: E731
        carry = self.model.reset(Carry(self.pool_H[idx], self.pool_L[idx]), t(b.fresh, torch.bool))
        sigma_z = t(b.sigma_z, torch.float32) if b.sigma_z.any() else None
        sigma_y = t(b.sigma_y, torch.float32) if b.sigma_y.any() else None
        return search_step(self.model, carry, t(b.inputs), t(b.puzzle_ids), t(b.seeds), t(b.steps), sigma_z, sigma_y)

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

    def _buffers(self) -> None:
        B, dev = self.max_batch, self.device
        init = self.model.initial_carry(B)
        self.buf = {
            "z_H": init.z_H,
            "z_L": init.z_L,
            "fresh": torch.ones(B, dtype=torch.bool, device=dev),
            "inputs": torch.zeros(B, self.model.config.seq_len, dtype=torch.long, device=dev),
            "puzzle_ids": torch.zeros(B, dtype=torch.long, device=dev),
            "seeds": torch.zeros(B, dtype=torch.long, device=dev),
            "steps": torch.zeros(B, dtype=torch.long, device=dev),
            "sigma_z": torch.zeros(B, dtype=torch.float32, device=dev),
            "sigma_y": torch.zeros(B, dtype=torch.float32, device=dev),
        }

    def _static_step(self, size: int, with_y: bool = False) -> StepOut:
        v = {k: t[:size] for k, t in self.buf.items()}
        carry = self.model.reset(Carry(v["z_H"], v["z_L"]), v["fresh"])
        return search_step(
            self.model,
            carry,
            v["inputs"],
            v["puzzle_ids"],
            v["seeds"],
            v["steps"],
            v["sigma_z"],
            v["sigma_y"] if with_y else None,
        )

    def _run_static(self, b: Batch, idx: torch.Tensor) -> StepOut:
        n = len(b.slots)
        size = self.padded(n)
        self.buf["z_H"][:n] = self.pool_H[idx]
        self.buf["z_L"][:n] = self.pool_L[idx]
        self.buf["fresh"][:n] = torch.as_tensor(b.fresh)
        self.buf["fresh"][n:size] = True  # padding rows start from the initial carry: finite and never read
        for name in ("inputs", "puzzle_ids", "seeds", "steps", "sigma_z", "sigma_y"):
            self.buf[name][:n] = torch.as_tensor(getattr(b, name))
        self.buf["sigma_z"][n:size] = 0
        with_y = bool(b.sigma_y.any())
        if size in self.graphs and not with_y:  # graphs hold the z-noise step; y noise (an ablation) runs eagerly
            graph, out = self.graphs[size]
            graph.replay()
            return out
        return self._static_step(size, with_y)

    @torch.inference_mode()
    def _capture(self) -> None:
        """One graph per bucket, largest first, sharing one memory pool (nano-vllm's recipe)."""
        pool = None
        for size in reversed(self.buckets):
            self._static_step(size)  # warm-up: lazy initialisation outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool):
                out = self._static_step(size)
            pool = graph.pool()
            self.graphs[size] = (graph, out)
        torch.cuda.synchronize()
