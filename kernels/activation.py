"""The SwiGLU activation on the fused `gate_up` projection: silu(gate) * up (SERVING.md §5.6, Liger's swiglu.py).

Rounds where `kernels.reference.swiglu` rounds: silu in fp32, rounded to the activation dtype, then the product.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import reference
from kernels.utils import TILE, block, check_launchable, num_warps


@triton.jit
def _swiglu_kernel(
    GATE_UP,
    OUT,
    n_rows,
    n_inter,
    s_gu,
    s_out,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program computes a [BLOCK_M, BLOCK_N] tile of OUT.

    GATE_UP: input rows [n_rows, 2 * n_inter], gate in the first half, up in the second, unit column stride.
    OUT: output rows [n_rows, n_inter], unit column stride.
    n_rows, n_inter: row count and the inner (output) width.
    s_gu, s_out: row strides of GATE_UP and OUT, in elements.
    BLOCK_M, BLOCK_N: tile rows and columns, powers of two.
    """
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_inter)
    gate_ptr = GATE_UP + rows[:, None] * s_gu + cols[None, :]
    gate = tl.load(gate_ptr, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_ptr + n_inter, mask=mask, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(OUT.dtype.element_ty).to(tl.float32)
    tl.store(OUT + rows[:, None] * s_out + cols[None, :], (act * up).to(OUT.dtype.element_ty), mask=mask)


def swiglu(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the kernel on gate_up [..., 2 * inter]; writes `out`, a contiguous [..., inter] (default: new)."""
    if gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up's last axis must be even, got {gate_up.shape[-1]}")
    n_inter = gate_up.shape[-1] // 2
    if out is None:
        out = gate_up.new_empty(*gate_up.shape[:-1], n_inter)
    elif out.shape != (*gate_up.shape[:-1], n_inter) or out.dtype != gate_up.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {gate_up.dtype} {(*gate_up.shape[:-1], n_inter)}")
    check_launchable(_swiglu_kernel, gate_up, out)
    if out.numel() == 0:
        return out
    if gate_up.stride(-1) != 1:
        gate_up = gate_up.contiguous()
    try:
        rows = gate_up.view(-1, 2 * n_inter)  # leading axes merged without a copy (a Linear's output always is)
    except RuntimeError:
        rows = gate_up.reshape(-1, 2 * n_inter)
    n_rows = rows.shape[0]
    BLOCK_N = block(n_inter, 1024)
    BLOCK_M = block(n_rows, max(1, TILE // BLOCK_N))
    grid = (triton.cdiv(n_rows, BLOCK_M), triton.cdiv(n_inter, BLOCK_N))
    _swiglu_kernel[grid](
        rows,
        out,
        n_rows,
        n_inter,
        rows.stride(0),
        n_inter,
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        num_warps=num_warps(BLOCK_M * BLOCK_N),
    )
    return out


@torch.library.custom_op("trm::swiglu", mutates_args=(), device_types="cuda")
def swiglu_op(gate_up: torch.Tensor) -> torch.Tensor:
    return swiglu(gate_up)


@swiglu_op.register_kernel("cpu")
def _(gate_up: torch.Tensor) -> torch.Tensor:
    return reference.swiglu(gate_up).contiguous()


@swiglu_op.register_fake
def _(gate_up: torch.Tensor) -> torch.Tensor:
    return gate_up.new_empty(*gate_up.shape[:-1], gate_up.shape[-1] // 2)
