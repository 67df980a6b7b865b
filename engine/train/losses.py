"""Training losses: TRM's stablemax cross-entropy and ACT head (TRM.md §8.1); GRAM's truncated ELBO
(PTRM_GRAM.md §4.3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.models.gram import Gaussian, GramStep, gaussian_kl


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
    logits: torch.Tensor,
    q: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "stablemax",
    group: int = 1,
    ignore: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss of one supervision step over all rows: per-sequence mean token CE + 0.5 * BCE(q_halt, grid correct).

    Returns (loss, seq_is_correct). The caller divides by the global batch size. q_continue is unused (the official
    `no_ACT_continue=True`). `ignore`: a label token that is not scored (ARC's PAD, the dataset's ignore_label_id):
    the mean runs over the other positions and "correct" means all of them right, as the official loss head. Every
    Sudoku cell is supervised, so Sudoku passes None.

    `group` > 1: consecutive rows are one puzzle under different symmetries, and each group's term is the negative
    log-likelihood of the solution under the mixture of its rows, -log mean_g p_g(grid), per cell and counted once
    per row. The gradient goes to the rows nearest the answer: a row that commits to a right guess is credited over
    a row that hedges, as the search over symmetries needs one row to finish, not all (multiple-choice learning)."""
    ce = token_cross_entropy(logits, labels, kind)
    valid = None if ignore is None else labels != ignore
    if valid is not None:
        if group != 1:
            raise ValueError("group training scores every position (Sudoku); it takes no ignore label")
        lm_loss = (torch.where(valid, ce, 0).sum(-1) / valid.sum(-1).clamp_min(1)).sum()
    elif group == 1:
        lm_loss = ce.mean(-1).sum()
    else:
        nll = ce.sum(-1).view(-1, group)  # -log p(grid) per row
        mixture = math.log(group) - torch.logsumexp(-nll, dim=1)
        lm_loss = mixture.sum() * group / labels.shape[-1]
    with torch.no_grad():
        hits = logits.argmax(-1) == labels
        seq_is_correct = (hits if valid is None else hits | ~valid).all(-1)
    q_halt_loss = F.binary_cross_entropy_with_logits(q[:, 0], seq_is_correct.to(q.dtype), reduction="sum")
    return lm_loss + 0.5 * q_halt_loss, seq_is_correct


def balanced_kl(q: Gaussian, p: Gaussian, balance: float = 0.8) -> torch.Tensor:
    """KL balancing (DreamerV2/V3; PTRM_GRAM.md §4.3) per row [B]: balance * KL(sg(q) || p) + (1 - balance) *
    KL(q || sg(p)). Same value as KL(q || p); the prior gets `balance` of the gradient, the posterior the rest."""
    sg = lambda g: Gaussian(g.mean.detach(), g.scale.detach())  # noqa: E731
    return balance * gaussian_kl(sg(q), p) + (1 - balance) * gaussian_kl(q, sg(p))


def gram_loss(
    out: GramStep,
    labels: torch.Tensor,
    beta: float,
    balance: float = 0.8,
    lprm_weight: float = 1.0,
    kind="softmax",
    kl_sum: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed loss of one GRAM supervision step over all rows (Eq. 14 plus the ACT and LPRM heads, §4.3-4.5):

    mean token CE + beta * balanced KL of the last transition + 0.5 * BCE(q_halt, grid correct)
    + lprm_weight * (value - cell accuracy)^2. The paper does not say how CE and KL are normalised. By default the KL
    is divided by the positions of h, so CE and KL are both per-token quantities; `kl_sum` charges the KL of the
    whole row against the per-token CE (the beta-VAE convention), which prices every nat the posterior passes to h
    (multi-solution tasks: docs/multi-solution.md). Returns (loss, seq_is_correct [B], last-transition KL per
    position [B], detached)."""
    post, prior = out.last
    positions = post.mean.shape[1]
    ce = token_cross_entropy(out.logits, labels, kind).mean(-1)
    kl = balanced_kl(post, prior, balance) / positions
    charged = kl * positions if kl_sum else kl
    with torch.no_grad():
        hits = out.logits.argmax(-1) == labels
        correct, cells = hits.all(-1), hits.float().mean(-1)
    loss = ce.sum() + beta * charged.sum()
    loss = loss + 0.5 * F.binary_cross_entropy_with_logits(out.q[:, 0], correct.to(out.q.dtype), reduction="sum")
    if out.value is not None:
        loss = loss + lprm_weight * (out.value - cells).square().sum()
    return loss, correct, kl.detach()
