"""Torch references for the recursion-step kernels: the CPU path, and the ground truth the Triton kernels are tested on.

Noise is counter-based: element i of stream s at supervision step t of a row is a pure function of
(row seed, t, s, i). So a row draws the same noise whatever else shares its batch, on CPU and GPU alike, and a CUDA
graph that reads seeds and steps from device tensors draws fresh noise on every replay (SERVING.md §5.5).
The hash is 32-bit multiply/xor-shift arithmetic, which Triton's uint32 and torch's masked int64 compute identically.
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF

# Noise streams: the PTRM latent z (= z_L), the answer state y (= z_H), then GRAM's transitions t = 0, 1, ...
STREAM_Z, STREAM_Y, STREAM_GRAM = 0, 1, 2


def mix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """A 32-bit integer finaliser (Wellons' lowbias32) on int64 tensors or Python ints holding uint32 values.

    int64 products of two uint32 values wrap, but their low 32 bits, all we keep, are exact."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def row_seed(seed: int, row: int) -> int:
    """The 32-bit noise seed of rollout `row` of a request seeded with `seed` (any Python int)."""
    seed &= (1 << 64) - 1
    return mix32((seed & MASK32) ^ mix32(((seed >> 32) ^ mix32(row & MASK32)) & MASK32))


def noise_key(seeds: torch.Tensor, steps: torch.Tensor, stream: int) -> torch.Tensor:
    """Per-row keys [B] (int64 holding uint32) for one (step, stream)."""
    return mix32(seeds ^ mix32((steps * 16 + stream) & MASK32))


def standard_normal(seeds: torch.Tensor, steps: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """fp32 N(0, 1) noise of shape [B, *shape] for rows with int64 `seeds` [B] at supervision `steps` [B].

    Box-Muller on two hashed uniforms per element; u1 in (0, 1] keeps the log finite (|n| <= 5.77)."""
    n = math.prod(shape)
    key = noise_key(seeds, steps, stream).view(-1, 1)
    i = torch.arange(n, device=seeds.device, dtype=torch.int64)
    h1 = mix32(key ^ mix32(2 * i))
    h2 = mix32(key ^ mix32(2 * i + 1))
    u1 = ((h1 >> 8) + 1).float() * 2.0**-24
    u2 = (h2 >> 8).float() * 2.0**-24
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.view(-1, *shape)


def add_noise(
    z: torch.Tensor, sigma: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor, stream: int
) -> torch.Tensor:
    """z + sigma * N(0, 1) per row (`sigma` [B] fp32), computed in fp32 and rounded to z's dtype."""
    noise = standard_normal(seeds, steps, stream, tuple(z.shape[1:]))
    return (z.float() + sigma.view(-1, *([1] * (z.dim() - 1))) * noise).to(z.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm(x + residual) over the last axis, fp32 inside (the post-norm of every block)."""
    h = (x + residual).float()  # the add in the activation dtype, as the official post-norm does
    return (h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up on the fused `gate_up` projection output [..., 2 * inter]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def inject(
    z_L: torch.Tensor,
    z_H: torch.Tensor,
    x: torch.Tensor,
    sigma: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
    steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """The latent update's input z_L + (z_H + x) (the official bf16 summation order), with PTRM's noise on z_L when
    `sigma` is given: the three-way add and the noise of one fused kernel."""
    if sigma is not None:
        z_L = add_noise(z_L, sigma, seeds, steps, STREAM_Z)
    return z_L + (z_H + x)
