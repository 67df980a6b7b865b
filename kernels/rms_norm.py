"""Fused residual add + weightless RMSNorm: the post-norm of every TRM block (SERVING.md §5.6).

out = RMSNorm(x + residual) over the last axis, the add rounded to the activation dtype, the norm in fp32, exactly as
`kernels.reference.add_rms_norm`. Inputs are read through their strides, so the `mlp_t` block's transposed [B, D, L]
view (norm over the sequence axis, stride D between its elements) needs no copy; the output takes x's layout, which
makes the transpose back to [B, L, D] contiguous again.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import reference
from kernels.utils import TILE, block, check_launchable, num_warps


@triton.jit
def _add_rms_norm_kernel(
    X,
    R,
    OUT,
    n_rows,
    n_cols,
    sx_b,
    sx_r,
    sx_c,
    sr_b,
    sr_r,
    sr_c,
    so_b,
    so_r,
    so_c,
    eps,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program normalises BLOCK_R rows of one batch entry, a [BLOCK_R, BLOCK_C] tile read through strides.

    X, R: the two inputs [B, n_rows, n_cols]; OUT: the output, same shape and dtype.
    n_rows, n_cols: rows per batch entry, and the normalised length (n_cols <= BLOCK_C).
    s{x,r,o}_{b,r,c}: element strides of X, R and OUT along batch, row and normalised axes.
    eps: added to the mean square before the reciprocal square root (fp32).
    BLOCK_R, BLOCK_C: tile rows and columns, powers of two.
    """
    pid = tl.program_id(0)
    num_row_blocks = tl.cdiv(n_rows, BLOCK_R)
    b = (pid // num_row_blocks).to(tl.int64)
    rows = (pid % num_row_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    x = tl.load(X + b * sx_b + rows[:, None] * sx_r + cols[None, :] * sx_c, mask=mask, other=0.0)
    r = tl.load(R + b * sr_b + rows[:, None] * sr_r + cols[None, :] * sr_c, mask=mask, other=0.0)
    # The add in the activation dtype (the official post-norm), everything after in fp32.
    h = (x.to(tl.float32) + r.to(tl.float32)).to(OUT.dtype.element_ty).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(h * h, axis=1) / n_cols + eps)
    out = h * rstd[:, None]
    tl.store(OUT + b * so_b + rows[:, None] * so_r + cols[None, :] * so_c, out.to(OUT.dtype.element_ty), mask=mask)


def _as_3d(t: torch.Tensor) -> torch.Tensor:
    """[B, rows, cols] view of t (raises RuntimeError when its leading axes cannot be merged without a copy)."""
    return t.view(-1, *t.shape[-2:]) if t.dim() >= 2 else t.view(1, 1, -1)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the kernel on tensors of any layout (same shape and dtype); writes `out` (default: laid out like x)."""
    if x.shape != residual.shape or x.dtype != residual.dtype:
        raise ValueError(f"x {tuple(x.shape)} {x.dtype} and residual {tuple(residual.shape)} {residual.dtype} differ")
    n_cols = x.shape[-1]
    if n_cols > 16384:
        raise ValueError(f"rows of {n_cols} elements do not fit one tile (at most 16384)")
    if out is None:
        out = torch.empty_like(x)  # x's strides when x is dense (the transposed mlp_t view is)
    elif out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(f"out {tuple(out.shape)} {out.dtype} differs from x {tuple(x.shape)} {x.dtype}")
    check_launchable(_add_rms_norm_kernel, x, residual, out)
    if out.numel() == 0:
        return out
    try:
        x3, r3 = _as_3d(x), _as_3d(residual)
    except RuntimeError:  # leading axes that no view merges: copy (never the case in the model)
        x3, r3 = _as_3d(x.contiguous()), _as_3d(residual.contiguous())
    o3 = _as_3d(out)  # a caller's `out` must merge its leading axes without a copy
    n_batch, n_rows, _ = x3.shape
    BLOCK_C = block(n_cols, 16384)
    BLOCK_R = block(n_rows, max(1, TILE // BLOCK_C))
    grid = (n_batch * triton.cdiv(n_rows, BLOCK_R),)
    _add_rms_norm_kernel[grid](
        x3,
        r3,
        o3,
        n_rows,
        n_cols,
        *x3.stride(),
        *r3.stride(),
        *o3.stride(),
        float(eps),
        BLOCK_R=BLOCK_R,
        BLOCK_C=BLOCK_C,
        num_warps=num_warps(BLOCK_R * BLOCK_C),
    )
    return out


@torch.library.custom_op("trm::add_rms_norm", mutates_args=(), device_types="cuda")
def add_rms_norm_op(x: torch.Tensor, residual: torch.Tensor, eps: float) -> torch.Tensor:
    return add_rms_norm(x, residual, eps)


@add_rms_norm_op.register_kernel("cpu")
def _(x: torch.Tensor, residual: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x).copy_(reference.add_rms_norm(x, residual, eps))  # x's layout, as on CUDA


@add_rms_norm_op.register_fake
def _(x: torch.Tensor, residual: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x)
