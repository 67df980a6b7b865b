"""Rollouts: one supervision step for a batch of rows, each with its own noise stream.

TRM rows follow PTRM (PTRM_GRAM.md §3.2): N(0, sigma^2) on z (= z_L; or on y, or both, as ablations) before every
step, no halting. GRAM rows sample eps from the learned prior at every high-level transition (§4.1). A row's noise
is a function of (its seed, its step), never of its batch neighbours: `kernels.standard_normal`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import kernels
from engine.models import TRM, Carry, Noise
from engine.search.params import SearchParams


@dataclass
class StepOut:
    carry: Carry
    answers: torch.Tensor  # [B, seq_len] argmax tokens
    q: torch.Tensor  # [B] halt logits, fp32 (`halt_logit`: q_halt for TRM and GRAM, q_halt - q_continue for HRM)
    logits: torch.Tensor  # [B, seq_len, vocab]
    value: torch.Tensor | None = None  # [B] LPRM estimate (GRAM with a value head)
    log_prior: torch.Tensor | None = None  # [B] prior log-density of this step's GRAM transitions


def search_step(
    model: torch.nn.Module,
    carry: Carry,
    inputs: torch.Tensor,
    puzzle_ids: torch.Tensor,
    seeds: torch.Tensor,
    steps: torch.Tensor,
    sigma_z: torch.Tensor | None,
    sigma_y: torch.Tensor | None = None,
) -> StepOut:
    """One supervision step for rows with per-row seeds [B], step indices [B] and noise scales [B] (TRM; None: no
    row of the batch has noise there, so the deterministic step runs)."""
    if isinstance(model, TRM):
        noise = None
        if sigma_z is not None or sigma_y is not None:
            noise = Noise(seeds, steps, sigma_z if sigma_z is not None else torch.zeros_like(sigma_y), sigma_y)
        carry, logits, q = model.step(carry, inputs, puzzle_ids, noise)
        return StepOut(carry, logits.argmax(-1), model.halt_logit(q), logits)  # HRM: q_halt - q_continue
    out = model.step(
        carry,
        inputs,
        puzzle_ids,
        noise=lambda t, shape: kernels.standard_normal(seeds, steps, kernels.STREAM_GRAM + t, shape),
    )
    return StepOut(out.carry, out.logits.argmax(-1), model.halt_logit(out.q), out.logits, out.value, out.log_prior)


def row_seeds(seed: int, rows: range | list[int]) -> list[int]:
    return [kernels.row_seed(seed, r) for r in rows]


@torch.no_grad()
def run_rollouts(model: torch.nn.Module, puzzle: np.ndarray, params: SearchParams, device: str = "cpu") -> dict:
    """The plain model loop: all K rows of one puzzle for D steps, no engine. The reference the engine must match.

    Returns numpy arrays: answers [K, seq_len], q [K], and value / log_prior [K] where the model gives them."""
    K = params.rollouts
    inputs = torch.as_tensor(puzzle, device=device).expand(K, -1)
    pids = torch.zeros(K, dtype=torch.long, device=device)
    seeds = torch.tensor(row_seeds(params.seed, range(K)), device=device)
    sigma_z = torch.full((K,), params.sigma_z, device=device) if params.sigma_z else None
    sigma_y = torch.full((K,), params.sigma_y, device=device) if params.sigma_y else None
    carry, log_prior = model.initial_carry(K), None
    for d in range(params.steps):
        steps = torch.full((K,), d, dtype=torch.long, device=device)
        out = search_step(model, carry, inputs, pids, seeds, steps, sigma_z, sigma_y)
        carry = out.carry
        if out.log_prior is not None:
            log_prior = out.log_prior if log_prior is None else log_prior + out.log_prior
    result = {"answers": out.answers.cpu().numpy(), "q": out.q.cpu().numpy()}
    if out.value is not None:
        result["value"] = out.value.cpu().numpy()
    if log_prior is not None:
        result["log_prior"] = log_prior.cpu().numpy()
    return result
