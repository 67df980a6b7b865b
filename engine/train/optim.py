"""Optimisers, schedule and EMA of the TRM recipe (TRM.md §8.2-8.4), in plain torch."""

from __future__ import annotations

import math

import torch


class AdamATan2(torch.optim.Optimizer):
    """Adam with atan2 in place of m / (sqrt(v) + eps) (arXiv:2407.05872; the `adam-atan2` package, a = b = 1).

    p <- p * (1 - lr * wd);  p <- p - lr * atan2(m / (1 - b1^t), sqrt(v / (1 - b2^t))). No epsilon to tune."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * wd)
                m.lerp_(p.grad, 1 - b1)
                v.lerp_(p.grad.square(), 1 - b2)
                p.sub_(lr * torch.atan2(m / (1 - b1**t), (v / (1 - b2**t)).sqrt()))


class SignSGD(torch.optim.Optimizer):
    """Sign descent with decoupled weight decay, for the puzzle-embedding table (official sparse_embedding.py).

    The official version updates only the rows a batch touched; rows without gradient are skipped here likewise."""

    def __init__(self, params, lr: float = 1e-4, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                touched = p.grad.ne(0).any(-1, keepdim=True)
                update = p * (1 - group["lr"] * group["weight_decay"]) - group["lr"] * p.grad.sign()
                p.copy_(torch.where(touched, update, p))


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 1.0) -> float:
    """Linear warm-up, then cosine down to min_ratio * base_lr; the paper's min_ratio = 1 keeps it constant."""
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param, for trainable parameters except the puzzle embedding
    (a buffer in the official code, so never averaged)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if averaged(n, p)}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p, 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n])


def averaged(name: str, p: torch.nn.Parameter) -> bool:
    return p.requires_grad and name != "puzzle_emb"
