"""Building blocks of the TRM network, numerically as in the official code (TRM.md §1.3, §5).

Weights are fp32 masters cast to the activation dtype at call time (a no-op once `inference_weights` cast them for
serving); activations run in `forward_dtype` (bf16); RMSNorm and RoPE compute in fp32 inside. The elementwise parts
(residual + RMSNorm, SwiGLU) go through `kernels`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from engine.models.config import TRMConfig


def trunc_normal_(t: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """JAX-style truncated normal on [lower*std, upper*std] whose std is exactly `std` (official common.py)."""
    with torch.no_grad():
        if std == 0:
            return t.zero_()
        a, b = math.erf(lower / math.sqrt(2)), math.erf(upper / math.sqrt(2))
        z = (b - a) / 2
        c = (2 * math.pi) ** -0.5
        pdf_u, pdf_l = c * math.exp(-0.5 * lower**2), c * math.exp(-0.5 * upper**2)
        comp_std = std / math.sqrt(1 - (upper * pdf_u - lower * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2)
        x = torch.empty(t.shape, dtype=torch.float32, device=t.device).uniform_(a, b).erfinv_()
        x.mul_(math.sqrt(2) * comp_std).clamp_(lower * comp_std, upper * comp_std)
        return t.copy_(x)


class Linear(nn.Module):
    """fp32 master weight, cast to the input dtype on each call; init std 1/sqrt(fan_in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


def swiglu_inter_size(hidden: int, expansion: float) -> int:
    """round(expansion * hidden * 2/3) rounded up to a multiple of 256: 1536 for 512, 512 for 97."""
    return -(round(expansion * hidden * 2 / 3) // -256) * 256


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, expansion: float):
        super().__init__()
        inter = swiglu_inter_size(hidden, expansion)
        self.gate_up_proj = Linear(hidden, 2 * inter)
        self.down_proj = Linear(inter, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(kernels.swiglu(self.gate_up_proj(x)))


class RotaryEmbedding(nn.Module):
    """fp32 cos/sin tables for positions 0..total_len-1, counted from the first prefix slot."""

    def __init__(self, head_dim: int, num_positions: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(num_positions, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX rotate-half RoPE on [B, S, H, D], computed in fp32 (the tables' dtype)."""
    h = x.to(cos.dtype)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return (h * cos + rotate_half(h) * sin).to(x.dtype)


class Attention(nn.Module):
    """Non-causal multi-head attention with a fused qkv projection (heads: Q, then K, then V)."""

    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden // num_heads
        self.qkv_proj = Linear(hidden, 3 * hidden)
        self.o_proj = Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding | None) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = self.qkv_proj(x).view(B, S, 3 * self.num_heads, self.head_dim).split(self.num_heads, dim=2)
        if rope is not None:
            q, k = apply_rope(q, rope.cos, rope.sin), apply_rope(k, rope.cos, rope.sin)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o_proj(out.transpose(1, 2).reshape(B, S, D))


class Block(nn.Module):
    """Post-norm block: token mixing (attention, or the `mlp_t` MLP over the sequence axis), then a channel MLP."""

    def __init__(self, config: TRMConfig):
        super().__init__()
        self.eps = config.rms_norm_eps
        if config.mlp_t:
            self.mlp_t = SwiGLU(config.total_len, config.expansion)
        else:
            self.self_attn = Attention(config.hidden_size, config.num_heads)
        self.mlp = SwiGLU(config.hidden_size, config.expansion)

    def forward(self, h: torch.Tensor, rope: RotaryEmbedding | None) -> torch.Tensor:
        if hasattr(self, "mlp_t"):
            # Mix tokens on [B, D, L]; this norm runs over the sequence axis (TRM.md §1.3).
            t = h.transpose(1, 2)
            h = kernels.add_rms_norm(t, self.mlp_t(t), self.eps).transpose(1, 2)
        else:
            h = kernels.add_rms_norm(h, self.self_attn(h, rope), self.eps)
        return kernels.add_rms_norm(h, self.mlp(h), self.eps)
