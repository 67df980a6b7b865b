"""TRM training losses (TRM.md §8.1): stablemax cross-entropy and the ACT loss head."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log of s(x) / sum s(x), s(x) = x + 1 for x >= 0 and 1 / (1 - x) below (arXiv:2501.04697)."""
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, kind: str = "stablemax") -> torch.Tensor:
    """Per-token cross-entropy [B, L]; stablemax runs in float64 as in the official code."""
    if kind == "stablemax":
        return -log_stablemax(logits.double()).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if kind == "softmax":
        return F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")
    raise ValueError(f"unknown loss {kind!r} (stablemax or softmax)")


def act_loss(
    logits: torch.Tensor, q: torch.Tensor, labels: torch.Tensor, kind: str = "stablemax"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss of one supervision step over all rows: per-sequence mean token CE + 0.5 * BCE(q_halt, grid correct).

    Returns (loss, seq_is_correct). Every Sudoku cell is supervised, so there is no ignore mask; the caller divides
    by the global batch size. q_continue is unused (the official `no_ACT_continue=True`)."""
    lm_loss = token_cross_entropy(logits, labels, kind).mean(-1).sum()
    with torch.no_grad():
        seq_is_correct = (logits.argmax(-1) == labels).all(-1)
    q_halt_loss = F.binary_cross_entropy_with_logits(q[:, 0], seq_is_correct.to(q.dtype), reduction="sum")
    return lm_loss + 0.5 * q_halt_loss, seq_is_correct
