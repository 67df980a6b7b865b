"""GRAM, Generative Recursive Reasoning (arXiv:2605.19376; PTRM_GRAM.md §4), on TRM's layers.

State (h, l) = (z_H, z_L) as in TRM. One transition: K deterministic low-level updates l = f(l + h + x), then
u = f(h + l) and h = u + eps, with eps drawn from the learned prior p(eps | u) = N(mu(u), sigma(u)^2), or from the
posterior q(eps | u, y) in training and likelihood scoring. One `step` (a supervision step) is T transitions, then a
decode of h's content positions. Noise enters only at the high level.

Choices where the paper is silent (PTRM_GRAM.md §4.2-4.5, [N] there):
- f_L and f_H are one shared 2-block network, as in TRM: the paper's 10M against TRM's 7M parameters leaves room for
  the noise heads only. Embedding, z_0 (fixed H_init / L_init vectors broadcast over positions), carry and reset are
  TRM's own code.
- Each Gaussian is one per-token SwiGLU MLP with 2D outputs (mean, scale). scale = min + (max - min) * sigmoid(s),
  starting near `sigma_init`; the mean projection starts at zero, the scale projection small but random (a zeroed
  scale projection "locked the model into KL=0" in a community port, §7).
- The posterior sees the target additively: u + E_y(y), a separate target embedding (zero on the prefix slots).
- Noise on every position of h, prefix slots included (the ACT head reads h[:, 0]).
- Decoder: a SwiGLU MLP then a linear map to the vocabulary, on h's content positions.
- The ACT (halt, continue) and LPRM value heads read h[:, 0] detached: no gradient into the core (§4.5). The value is
  sigmoid(linear), in [0, 1].
- Only the last transition of a step runs with grad (the truncated ELBO, Eq. 14), like TRM's last cycle.
- Given a target, only that last transition draws from the posterior; the others draw from the prior
  (`posterior_on="last"`). The paper does not say which distribution feeds the undifferentiated, unpenalised
  transitions. Drawing them from the posterior too (`"all"`) leaked y for free: in a CPU generator run the posterior
  put the grid into the first transition (KL there about 8 nats per position, never penalised) while the penalised
  last-transition KL fell to 0.03, so prior samples were never valid. With "last" every nat of y pays its KL, and
  the truncated surrogate is an exact ELBO for this variational family (the other KL terms are 0).
- Log-densities and KLs are fp32 sums over every position and channel of h (nats per row).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from engine.models.config import GRAMConfig
from engine.models.layers import Linear, SwiGLU, swiglu_inter_size
from engine.models.trm import Carry, RecursiveNet

StepNoise = Callable[[int, tuple[int, ...]], torch.Tensor]  # (transition t, shape) -> fp32 N(0, 1) [B, *shape]
NoisePlan = Callable[[int], StepNoise]  # supervision step n of a trajectory -> that step's noise

_LOG_2PI = math.log(2 * math.pi)


class Gaussian(NamedTuple):
    """A diagonal Gaussian over [B, L, D] (fp32)."""

    mean: torch.Tensor
    scale: torch.Tensor

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row log-density [B], summed over positions and channels."""
        z = (x - self.mean) / self.scale
        return (-0.5 * z.square() - self.scale.log() - 0.5 * _LOG_2PI).flatten(1).sum(-1)


def gaussian_kl(q: Gaussian, p: Gaussian) -> torch.Tensor:
    """KL(q || p) per row [B], summed over positions and channels."""
    var_ratio = (q.scale / p.scale).square()
    mean_term = ((q.mean - p.mean) / p.scale).square()
    return (0.5 * (var_ratio + mean_term - 1) - torch.log(q.scale / p.scale)).flatten(1).sum(-1)


class GramStep(NamedTuple):
    """What one supervision step returns; `last` (posterior, prior) is the step's last transition, kept with grad
    for the training loss."""

    carry: Carry  # detached
    logits: torch.Tensor  # [B, seq_len, vocab]
    q: torch.Tensor  # [B, 2] fp32, (halt, continue) logits
    value: torch.Tensor | None  # [B] fp32 LPRM value in [0, 1]
    log_prior: torch.Tensor  # [B] fp32, log p(eps | u) of the eps drawn at this step's transitions, summed
    kl: torch.Tensor | None  # [B] fp32, sum of KL(q || p) over this step's posterior transitions; posterior mode
    last: tuple[Gaussian, Gaussian] | None = None


class GaussianHead(nn.Module):
    """Per-token SwiGLU MLP -> (mean, scale) of a diagonal Gaussian over the hidden channels."""

    def __init__(self, c: GRAMConfig):
        super().__init__()
        self.lo, self.hi, D = c.sigma_min, c.sigma_max, c.hidden_size
        inter = swiglu_inter_size(D, c.expansion)
        self.gate_up_proj = Linear(D, 2 * inter)
        self.down_proj = Linear(inter, 2 * D, bias=True)
        with torch.no_grad():
            self.down_proj.weight[:D].zero_()
            self.down_proj.weight[D:].mul_(0.01)
            frac = (c.sigma_init - c.sigma_min) / (c.sigma_max - c.sigma_min)
            self.down_proj.bias[D:].fill_(math.log(frac / (1 - frac)))

    def forward(self, u: torch.Tensor) -> Gaussian:
        mean, s = self.down_proj(kernels.swiglu(self.gate_up_proj(u))).float().chunk(2, dim=-1)
        return Gaussian(mean, self.lo + (self.hi - self.lo) * torch.sigmoid(s))


class GRAM(RecursiveNet):
    def __init__(self, config: GRAMConfig):
        if not isinstance(config, GRAMConfig):
            raise TypeError(f"GRAM needs a GRAMConfig, got {type(config).__name__}")
        super().__init__(config)
        c = config
        self.prior = GaussianHead(c)
        self.posterior = GaussianHead(c)
        self.embed_target = nn.Embedding(c.vocab_size, c.hidden_size)  # N(0, 1): the scale of u's channels
        self.decoder = SwiGLU(c.hidden_size, c.expansion)
        self.value_head = Linear(c.hidden_size, 1, bias=True) if c.lprm else None

    def step(
        self,
        carry: Carry,
        inputs: torch.Tensor,
        puzzle_ids: torch.Tensor,
        noise: StepNoise | None = None,
        target: torch.Tensor | None = None,
    ) -> GramStep:
        """One supervision step of T stochastic transitions: eps = mean + scale * noise(t, shape) (torch's RNG
        without `noise`), from the prior, or from the posterior q(eps | u, target) given `target` [B, seq_len]."""
        c = self.config
        x = self.embed(inputs, puzzle_ids)
        y = None
        if target is not None:
            y = F.pad(F.embedding(target, self.embed_target.weight.to(self.dtype)), (0, 0, c.prefix_len, 0))
        z_H, z_L = carry.z_H, carry.z_L
        B, shape = inputs.shape[0], (c.total_len, c.hidden_size)
        log_prior = torch.zeros(B, device=z_H.device)
        kl = torch.zeros(B, device=z_H.device) if y is not None else None
        last = None
        for t in range(c.H_cycles):
            is_last = t == c.H_cycles - 1
            with torch.set_grad_enabled(torch.is_grad_enabled() and is_last):
                for _ in range(c.L_cycles):
                    z_L = self.net(z_L + (z_H + x))
                u = self.net(z_H + z_L)
                prior = self.prior(u)
                use_post = y is not None and (is_last or c.posterior_on == "all")
                post = self.posterior(u + y) if use_post else None
                dist = post if post is not None else prior
                n = noise(t, shape) if noise is not None else torch.randn(B, *shape, device=u.device)
                eps = dist.mean + dist.scale * n.to(u.device, torch.float32)
                z_H = (u.float() + eps).to(self.dtype)
                with torch.no_grad():
                    log_prior += prior.log_prob(eps)
                    if post is not None:
                        kl += gaussian_kl(post, prior)
                if is_last and post is not None:
                    last = (post, prior)
        logits = self.lm_head(self.decoder(z_H[:, c.prefix_len :]))
        first = z_H[:, 0].detach()
        q = self.q_head(first).float()
        value = torch.sigmoid(self.value_head(first).float()).squeeze(-1) if self.value_head is not None else None
        return GramStep(Carry(z_H.detach(), z_L.detach()), logits, q, value, log_prior, kl, last)

    # -- whole trajectories ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def trajectory(
        self,
        inputs: torch.Tensor,
        puzzle_ids: torch.Tensor,
        steps: int | None = None,
        noise: NoisePlan | None = None,
        target: torch.Tensor | None = None,
    ) -> GramStep:
        """`steps` supervision steps (default N_sup) from z_0, the prior's or (with `target`) the posterior's.

        Returns the last step's outputs with `log_prior` (the cheap prior path log-density of the sampled eps) and
        `kl` summed over the whole trajectory. `noise(n)` gives step n's noise."""
        carry = self.initial_carry(inputs.shape[0])
        log_prior, kl = 0.0, 0.0
        for n in range(steps or self.config.halt_max_steps):
            out = self.step(carry, inputs, puzzle_ids, noise(n) if noise is not None else None, target)
            carry, log_prior = out.carry, log_prior + out.log_prior
            kl = kl + out.kl if out.kl is not None else None
        return out._replace(log_prior=log_prior, kl=kl)

    @torch.no_grad()
    def rollout(
        self, inputs: torch.Tensor, puzzle_ids: torch.Tensor, steps: int | None = None, noise: NoisePlan | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One prior-sampled trajectory: the final step's logits and q logits (TRM.rollout's contract)."""
        out = self.trajectory(inputs, puzzle_ids, steps, noise)
        return out.logits, out.q

    @torch.no_grad()
    def elbo(
        self,
        inputs: torch.Tensor,
        puzzle_ids: torch.Tensor,
        candidates: torch.Tensor,
        steps: int | None = None,
        noise: NoisePlan | None = None,
        passes: int = 1,
    ) -> torch.Tensor:
        """A lower bound on log p(candidate | x) per row [B] fp32 (nats; Eq. 13, PTRM_GRAM.md §5 option 2).

        Each pass runs the posterior q(. | x, candidate) for `steps` supervision steps and scores
        log p(candidate | h_final) (softmax over the vocabulary, summed over cells) minus the KL of every transition;
        passes are averaged. Pass p, step n draws its noise from `noise(p * steps + n)`."""
        S = steps or self.config.halt_max_steps
        bounds = []
        for p in range(passes):
            plan = (lambda n, p=p: noise(p * S + n)) if noise is not None else None
            out = self.trajectory(inputs, puzzle_ids, S, plan, target=candidates)
            loglik = F.log_softmax(out.logits.float(), -1).gather(-1, candidates.unsqueeze(-1)).squeeze(-1).sum(-1)
            bounds.append(loglik - out.kl)
        return torch.stack(bounds).mean(0)

    @torch.no_grad()
    def prior_log_density(
        self, inputs: torch.Tensor, puzzle_ids: torch.Tensor, steps: int | None = None, noise: NoisePlan | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample one prior trajectory: (final answers [B, seq_len], log-density of its eps path [B] fp32)."""
        out = self.trajectory(inputs, puzzle_ids, steps, noise)
        return out.logits.argmax(-1), out.log_prior


def counter_noise(seeds: torch.Tensor, first_step: int = 0) -> NoisePlan:
    """Per-row counter-based noise (`kernels.standard_normal`): row r's draws depend only on seeds[r] and the step
    index, never on its batch. Step n, transition t reads stream STREAM_GRAM + t at step first_step + n."""

    def at_step(n: int) -> StepNoise:
        steps = torch.full_like(seeds, first_step + n)
        return lambda t, shape: kernels.standard_normal(seeds, steps, kernels.STREAM_GRAM + t, shape)

    return at_step
