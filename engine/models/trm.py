"""The Tiny Recursive Model (arXiv:2510.04871) as the official code computes it (TRM.md §1, §3).

One network f (`layers`, 2 blocks) is applied recursively to two states carried across supervision steps:
z_H (the answer state y) and z_L (the latent z). One call of `step` is one supervision step:
T-1 cycles without grad, then one with grad; each cycle is n updates z_L = f(z_L + (z_H + x)), then z_H = f(z_H + z_L).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from engine.models.config import TRMConfig
from engine.models.layers import Block, Linear, RotaryEmbedding, trunc_normal_


@dataclass
class Carry:
    z_H: torch.Tensor  # [B, total_len, hidden], forward dtype
    z_L: torch.Tensor


@dataclass(frozen=True)
class Noise:
    """PTRM noise for one supervision step (PTRM_GRAM.md §3.2): N(0, sigma^2) added before the step, per row.

    Counter-based (`kernels.reference`): row r's noise depends only on seeds[r] and steps[r], never on its batch."""

    seeds: torch.Tensor  # int64 [B], see kernels.row_seed
    steps: torch.Tensor  # int64 [B], the row's supervision step index
    sigma_z: torch.Tensor  # fp32 [B], on the latent z = z_L (the paper's target)
    sigma_y: torch.Tensor | None = None  # fp32 [B], on the answer state y = z_H (an ablation); None: no noise on y


class RecursiveNet(nn.Module):
    """What TRM and GRAM share: the input embedding, the 2-block network f, the output and Q heads, the fixed initial
    states and the carry handling (same attribute names as the official code, so checkpoints map one to one)."""

    def __init__(self, config: TRMConfig):
        super().__init__()
        self.config = c = config
        self.dtype = getattr(torch, c.forward_dtype)
        self.embed_scale = c.hidden_size**0.5
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        trunc_normal_(self.embed_tokens.weight, std=1 / self.embed_scale)
        if c.puzzle_emb_ndim > 0:
            # Zero-initialised, one row per puzzle identifier (a buffer in the official code, never EMA-averaged).
            self.puzzle_emb = nn.Parameter(torch.zeros(c.num_puzzle_identifiers, c.puzzle_emb_ndim))
        if c.pos_encodings == "learned":
            self.embed_pos = nn.Parameter(
                trunc_normal_(torch.empty(c.total_len, c.hidden_size), std=1 / self.embed_scale)
            )
        self.rope = RotaryEmbedding(c.head_dim, c.total_len, c.rope_theta) if c.pos_encodings == "rope" else None
        self.layers = nn.ModuleList(Block(c) for _ in range(c.L_layers))
        self.lm_head = Linear(c.hidden_size, c.vocab_size)
        self.q_head = Linear(c.hidden_size, 2, bias=True)  # (halt, continue) logits read from prefix slot 0
        with torch.no_grad():  # Q starts near "never halt" so early training is not cut short
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)
        # Fixed random initial states: never trained, but part of the checkpoint.
        self.register_buffer("H_init", trunc_normal_(torch.empty(c.hidden_size), std=1).to(self.dtype))
        self.register_buffer("L_init", trunc_normal_(torch.empty(c.hidden_size), std=1).to(self.dtype))

    def inference_weights(self) -> RecursiveNet:
        """Cast the fp32 master parameters to the forward dtype once, for inference only. Every use casts them to it
        anyway (`Linear`, `embed`), so results are unchanged, and a bf16 step stops re-casting every weight (about a
        third of its kernels; issue 15). Training keeps the fp32 masters: never call this on a model being trained."""
        for p in self.parameters():
            p.requires_grad_(False)
            p.data = p.data.to(self.dtype)
        return self

    # -- carry ------------------------------------------------------------------------------------------------------

    def initial_carry(self, batch_size: int) -> Carry:
        shape = (batch_size, self.config.total_len, self.config.hidden_size)
        return Carry(self.H_init.expand(shape).clone(), self.L_init.expand(shape).clone())

    def reset(self, carry: Carry, mask: torch.Tensor) -> Carry:
        """Rows where `mask` is set go back to the initial state; the others keep theirs."""
        m = mask.view(-1, 1, 1)
        return Carry(torch.where(m, self.H_init, carry.z_H), torch.where(m, self.L_init, carry.z_L))

    def embed(self, inputs: torch.Tensor, puzzle_ids: torch.Tensor) -> torch.Tensor:
        """x: tokens plus the puzzle prefix (slot 0 = puzzle vector, other slots zero), scaled by sqrt(hidden)."""
        c = self.config
        x = F.embedding(inputs, self.embed_tokens.weight.to(self.dtype))
        if c.prefix_len > 0:
            if c.puzzle_emb_ndim > 0:
                p = self.puzzle_emb[puzzle_ids].to(self.dtype)
            else:  # zero-padded slots only (GRAM's N-Queens setup)
                p = x.new_zeros(len(inputs), 0)
            p = F.pad(p, (0, c.prefix_len * c.hidden_size - p.shape[-1]))
            x = torch.cat((p.view(-1, c.prefix_len, c.hidden_size), x), dim=-2)
        if c.pos_encodings == "learned":
            x = 0.707106781 * (x + self.embed_pos.to(self.dtype))  # keeps the forward variance
        return self.embed_scale * x

    def net(self, h: torch.Tensor) -> torch.Tensor:
        """The shared 2-block network f, applied to an already injected state."""
        for layer in self.layers:
            h = layer(h, self.rope)
        return h

    def halt_logit(self, q: torch.Tensor) -> torch.Tensor:
        """[B] the halting score from the Q head's [B, 2] (halt, continue) logits: positive means halt. TRM halts on
        q_halt > 0 (its `no_ACT_continue`); HRM overrides this with its rule, q_halt > q_continue."""
        return q[:, 0]


class TRM(RecursiveNet):
    def step(
        self, carry: Carry, inputs: torch.Tensor, puzzle_ids: torch.Tensor, noise: Noise | None = None
    ) -> tuple[Carry, torch.Tensor, torch.Tensor]:
        """One supervision step. Returns the detached new carry, logits [B, seq_len, vocab] and q [B, 2] (fp32).

        With `noise`, z (and optionally y) are perturbed first; the noisy z only feeds the first injection, so its noise
        is fused into that add."""
        c = self.config
        x = self.embed(inputs, puzzle_ids)
        z_H, z_L = carry.z_H, carry.z_L
        if noise is not None and noise.sigma_y is not None:
            z_H = kernels.add_noise(z_H, noise.sigma_y, noise.seeds, noise.steps, kernels.STREAM_Y)
        for cycle in range(c.H_cycles):
            # Gradient only through the last cycle (TRM's 1-step gradient approximation).
            with torch.set_grad_enabled(torch.is_grad_enabled() and cycle == c.H_cycles - 1):
                for i in range(c.L_cycles):
                    if noise is not None and cycle == 0 and i == 0:  # PTRM: z gets its noise before the step
                        h = kernels.inject(z_L, z_H, x, noise.sigma_z, noise.seeds, noise.steps)
                    else:
                        h = kernels.inject(z_L, z_H, x)  # z_L + (z_H + x): the official bf16 summation order
                    z_L = self.net(h)
                z_H = self.update_H(z_H + z_L)
        logits = self.lm_head(z_H)[:, c.prefix_len :]
        q = self.q_head(z_H[:, 0]).float()
        return Carry(z_H.detach(), z_L.detach()), logits, q

    def update_H(self, h: torch.Tensor) -> torch.Tensor:
        """z_H's update from the injected z_H + z_L: TRM's one network f (HRM: its own H stack)."""
        return self.net(h)

    @torch.no_grad()
    def rollout(
        self, inputs: torch.Tensor, puzzle_ids: torch.Tensor, steps: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic TRM inference: `steps` supervision steps (default all N_sup) from the initial state.

        Returns the final step's logits and q logits, as the official evaluation does (TRM.md §9)."""
        carry = self.initial_carry(inputs.shape[0])
        for _ in range(steps or self.config.halt_max_steps):
            carry, logits, q = self.step(carry, inputs, puzzle_ids)
        return logits, q
