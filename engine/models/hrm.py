"""The Hierarchical Reasoning Model (arXiv:2506.21734) at inference, as the official `hrm_act_v1` code computes it.

HRM is TRM's loop with a second stack: z_L = L(z_L + (z_H + x)) with the L stack (TRM's `layers`), and
z_H = H(z_H + z_L) with its own `H_layers` (TRM reuses its one network). Everything else is TRM's: the input
injection, RoPE over prefix plus sequence, the sqrt(hidden) scaling, the bf16 initial states, the Q head on slot 0.
The differences: the puzzle prefix is ceil(puzzle_emb_ndim / hidden_size) slots (`HRMConfig`), and HRM halts on
q_halt > q_continue where TRM halts on q_halt > 0 (`halt_logit`). The official loop's no-grad part and its last,
with-grad update compute the same sequence of updates as TRM.step's cycles, so at inference they agree bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.config import HRMConfig
from engine.models.layers import Block
from engine.models.trm import TRM


class HRM(TRM):
    def __init__(self, config: HRMConfig):
        if not isinstance(config, HRMConfig):
            raise TypeError(f"HRM needs an HRMConfig, got {type(config).__name__}")
        super().__init__(config)
        self.H_layers = nn.ModuleList(Block(config) for _ in range(config.H_layers))

    def update_H(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.H_layers:
            h = layer(h, self.rope)
        return h

    def halt_logit(self, q: torch.Tensor) -> torch.Tensor:
        """q_halt - q_continue: positive exactly when HRM halts, and its sigmoid is the softmax halting probability."""
        return q[:, 0] - q[:, 1]
