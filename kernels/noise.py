"""Counter-based N(0, 1) noise and the fused input injection of the latent update (SERVING.md §5.5, §5.6).

The hash is `kernels.reference`'s, in uint32 arithmetic, so a row draws the same noise here as on the CPU (integer
part bit for bit, the Box-Muller floats to about 1e-6). Seeds, steps and sigmas are read from device tensors inside
the kernel: a captured CUDA graph draws fresh noise on every replay once the caller advances `steps`, and each row's
stream depends only on its own (seed, step), never on the batch it sits in.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels import reference
from kernels.utils import block, check_launchable, num_warps

BLOCK = 1024  # elements of one row per program


@triton.jit
def _mix32(x):
    """Wellons' lowbias32 on uint32 (= kernels.reference.mix32)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _row_key(SEEDS, STEPS, row, stream):
    """The row's uint32 key for (its step, stream) (= kernels.reference.noise_key)."""
    seed = tl.load(SEEDS + row).to(tl.uint32)  # int64 holding a uint32: truncation is exact
    step = tl.load(STEPS + row)
    return _mix32(seed ^ _mix32((step * 16 + stream).to(tl.uint32)))


@triton.jit
def _normal(key, idx):
    """fp32 N(0, 1) for element indices `idx` (int32) of the row with `key` (Box-Muller on two hashed uniforms)."""
    i2 = (2 * idx).to(tl.uint32)
    h1 = _mix32(key ^ _mix32(i2))
    h2 = _mix32(key ^ _mix32(i2 + 1))
    u1 = ((h1 >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08  # (0, 1], 2**-24 steps
    u2 = (h2 >> 8).to(tl.float32) * 5.9604644775390625e-08  # [0, 1)
    # max(., 0): an approximate log may return a tiny positive value at u1 = 1, and sqrt would give NaN.
    radius = tl.sqrt(tl.maximum(-2.0 * tl.log(u1), 0.0))
    return radius * tl.cos(6.283185307179586 * u2)


@triton.jit
def _standard_normal_kernel(OUT, SEEDS, STEPS, stream, n_cols, BLOCK: tl.constexpr):
    """OUT [B, n_cols] fp32 (contiguous) = N(0, 1); program (row, block) fills BLOCK elements of one row.

    SEEDS, STEPS: int64 [B] row seeds (uint32 values) and supervision steps; stream: the noise stream (int).
    """
    row = tl.program_id(0)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n_cols
    key = _row_key(SEEDS, STEPS, row, stream)
    tl.store(OUT + row.to(tl.int64) * n_cols + idx, _normal(key, idx), mask=mask)


@triton.jit
def _inject_kernel(
    Z,
    H,
    X,
    OUT,
    SIGMA,
    SEEDS,
    STEPS,
    stream,
    n_cols,
    HAS_NOISE: tl.constexpr,
    HAS_H: tl.constexpr,
    HAS_X: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """OUT = (Z + SIGMA * N(0, 1)) + (H + X), each add rounded to the activation dtype as torch would round it.

    Z, H, X, OUT: contiguous [B, n_cols] in one dtype; H and X are optional (HAS_H, HAS_X; X only with H).
    SIGMA: fp32 [B] noise scale per row; SEEDS, STEPS: int64 [B]; stream: the noise stream (int). Read only with
    HAS_NOISE. Program (row, block) handles BLOCK elements of one row.
    """
    row = tl.program_id(0)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n_cols
    offs = row.to(tl.int64) * n_cols + idx
    dtype = OUT.dtype.element_ty
    z = tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_NOISE:
        sigma = tl.load(SIGMA + row)
        key = _row_key(SEEDS, STEPS, row, stream)
        z = (z + sigma * _normal(key, idx)).to(dtype).to(tl.float32)
    if HAS_H:
        h = tl.load(H + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_X:
            h = (h + tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
        z = z + h
    tl.store(OUT + offs, z.to(dtype), mask=mask)


def standard_normal(
    seeds: torch.Tensor, steps: torch.Tensor, stream: int, n_cols: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """fp32 N(0, 1) [B, n_cols] for int64 `seeds` and `steps` [B] (reshape to the wanted shape), into `out`."""
    seeds, steps = _rows(seeds, steps)
    if out is None:
        out = torch.empty(seeds.shape[0], n_cols, device=seeds.device, dtype=torch.float32)
    elif out.shape != (seeds.shape[0], n_cols) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 {(seeds.shape[0], n_cols)}")
    check_launchable(_standard_normal_kernel, seeds, steps, out)
    if out.numel() == 0:
        return out
    grid = (seeds.shape[0], triton.cdiv(n_cols, BLOCK))
    _standard_normal_kernel[grid](out, seeds, steps, stream, n_cols, BLOCK=BLOCK, num_warps=num_warps(BLOCK))
    return out


def inject(
    z: torch.Tensor,
    h: torch.Tensor | None = None,
    x: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
    steps: torch.Tensor | None = None,
    stream: int = reference.STREAM_Z,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(z [+ sigma * N(0, 1)]) [+ (h [+ x])] on [B, ...] tensors of one shape and dtype, into `out` (contiguous).

    Covers `add_noise` (z, noise) and `inject` (z_L, z_H, x, noise; or z, h without x)."""
    check_launchable(_inject_kernel, z, h, x, sigma, seeds, steps, out)
    if x is not None and h is None:
        raise ValueError("x needs h")
    for name, t in (("h", h), ("x", x)):
        if t is not None and (t.shape != z.shape or t.dtype != z.dtype):
            raise ValueError(f"{name} {tuple(t.shape)} {t.dtype} differs from z {tuple(z.shape)} {z.dtype}")
    has_noise = sigma is not None
    if has_noise:
        seeds, steps = _rows(seeds, steps)
        if sigma.shape != (z.shape[0],) or seeds.shape != (z.shape[0],):
            raise ValueError(f"sigma, seeds and steps must be [B] = [{z.shape[0]}], got {tuple(sigma.shape)}")
        sigma = sigma.float().contiguous()
    z, h, x = (t.contiguous() if t is not None else None for t in (z, h, x))
    if out is None:
        out = torch.empty_like(z)
    elif out.shape != z.shape or out.dtype != z.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {z.dtype} {tuple(z.shape)}")
    if out.numel() == 0:
        return out
    n_cols = math.prod(z.shape[1:])
    n_block = block(n_cols, BLOCK)
    grid = (z.shape[0], triton.cdiv(n_cols, n_block))
    _inject_kernel[grid](
        z,
        h if h is not None else z,  # unused pointers: any tensor
        x if x is not None else z,
        out,
        sigma if has_noise else z,
        seeds if has_noise else z,
        steps if has_noise else z,
        stream,
        n_cols,
        HAS_NOISE=has_noise,
        HAS_H=h is not None,
        HAS_X=x is not None,
        BLOCK=n_block,
        num_warps=num_warps(n_block),
    )
    return out


def _rows(seeds: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """seeds and steps as the kernels read them: int64 [B], contiguous. A strided column (the runner's packed metadata
    buffer holds them so) is copied: rejecting it failed every static engine step's launch, and with it the fused
    kernels for good (issue 36)."""
    if seeds.dtype != torch.int64 or steps.dtype != torch.int64 or seeds.dim() != 1 or seeds.shape != steps.shape:
        raise ValueError(f"seeds and steps must be int64 [B], got {seeds.dtype} {tuple(seeds.shape)}, {steps.dtype}")
    return seeds.contiguous(), steps.contiguous()


@torch.library.custom_op("trm::standard_normal", mutates_args=(), device_types="cuda")
def standard_normal_op(seeds: torch.Tensor, steps: torch.Tensor, stream: int, n_cols: int) -> torch.Tensor:
    return standard_normal(seeds, steps, stream, n_cols)


@standard_normal_op.register_kernel("cpu")
def _(seeds: torch.Tensor, steps: torch.Tensor, stream: int, n_cols: int) -> torch.Tensor:
    return reference.standard_normal(seeds, steps, stream, (n_cols,))


@standard_normal_op.register_fake
def _(seeds: torch.Tensor, steps: torch.Tensor, stream: int, n_cols: int) -> torch.Tensor:
    return seeds.new_empty(seeds.shape[0], n_cols, dtype=torch.float32)


@torch.library.custom_op("trm::inject", mutates_args=(), device_types="cuda")
def inject_op(
    z: torch.Tensor,
    h: torch.Tensor | None,
    x: torch.Tensor | None,
    sigma: torch.Tensor | None,
    seeds: torch.Tensor | None,
    steps: torch.Tensor | None,
    stream: int,
) -> torch.Tensor:
    return inject(z, h, x, sigma, seeds, steps, stream)


@inject_op.register_kernel("cpu")
def _(z, h, x, sigma, seeds, steps, stream):
    if sigma is not None:
        z = reference.add_noise(z, sigma, seeds, steps, stream)
    if h is not None:
        z = z + (h + x if x is not None else h)
    return torch.empty(z.shape, dtype=z.dtype, device=z.device).copy_(z)  # contiguous, and never an input alias


@inject_op.register_fake
def _(z, h, x, sigma, seeds, steps, stream):
    return torch.empty_like(z, memory_format=torch.contiguous_format)
