"""Kernels for the recursion step, behind the functions the model calls.

Each function runs a fused Triton custom op (`torch.ops.trm.*`, modules `noise`, `rms_norm`, `activation`) on CUDA
tensors and the torch reference (`kernels.reference`) everywhere else. The Triton path is taken when
- the tensors are on a CUDA device and triton is importable,
- the backend is not forced to the reference: `TRM_KERNELS=torch` in the environment, or `set_backend("torch")`,
- no input needs a gradient: the custom ops have no backward, so training keeps the reference (which
  `torch.compile` fuses on its own).

`import kernels` never imports triton on a machine without CUDA: the kernel modules load on first use, or at import
when CUDA is available, so a test can still set TRITON_INTERPRET=1 before they are built (SERVING.md §5.3).
"""

from __future__ import annotations

import math
import os
import warnings

import torch

from kernels import reference
from kernels.reference import STREAM_GRAM, STREAM_Y, STREAM_Z, row_seed

__all__ = [
    "STREAM_GRAM",
    "STREAM_Y",
    "STREAM_Z",
    "add_noise",
    "add_rms_norm",
    "backend",
    "inject",
    "row_seed",
    "set_backend",
    "standard_normal",
    "swiglu",
]

MODES = ("auto", "torch")  # auto: Triton on CUDA, the reference elsewhere; torch: the reference everywhere

_mode = "auto"
_triton_loaded: bool | None = None  # None: not tried yet


def set_backend(mode: str) -> None:
    """Choose the kernels: "auto" (the default) or "torch", the reference everywhere (for debugging)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"kernel backend must be one of {MODES}, got {mode!r}")
    _mode = mode
    if mode == "auto" and torch.cuda.is_available():
        _load_triton()


def backend(device: torch.device | str) -> str:
    """The kernels for tensors on `device`: "triton" (the fused path, when no gradient is needed) or "torch"."""
    if _mode == "torch" or torch.device(device).type != "cuda":
        return "torch"
    return "triton" if _load_triton() else "torch"


def _load_triton() -> bool:
    global _triton_loaded
    if _triton_loaded is None:
        try:
            import kernels.activation  # noqa: F401  (each registers its torch.ops.trm.* ops)
            import kernels.noise  # noqa: F401
            import kernels.rms_norm  # noqa: F401

            _triton_loaded = True
        except ImportError:  # no triton: the references
            _triton_loaded = False
        except Exception as e:  # a broken triton install must not take the engine down with it
            warnings.warn(f"Triton kernels unavailable, using the torch references: {e!r}", stacklevel=2)
            _triton_loaded = False
    return _triton_loaded


def _fused(*tensors: torch.Tensor | None) -> bool:
    if backend(tensors[0].device) != "triton":
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


# -- the functions the model calls ----------------------------------------------------------------------------------


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm(x + residual) over the last axis, fp32 inside (`reference.add_rms_norm`)."""
    if _fused(x, residual):
        return torch.ops.trm.add_rms_norm(x, residual, eps)
    return reference.add_rms_norm(x, residual, eps)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up on the fused gate_up projection output [..., 2 * inter] (`reference.swiglu`)."""
    if _fused(gate_up):
        return torch.ops.trm.swiglu(gate_up)
    return reference.swiglu(gate_up)


def standard_normal(seeds: torch.Tensor, steps: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """fp32 counter-based N(0, 1) of shape [B, *shape] (`reference.standard_normal`)."""
    if _fused(seeds):
        return torch.ops.trm.standard_normal(seeds, steps, stream, math.prod(shape)).view(-1, *shape)
    return reference.standard_normal(seeds, steps, stream, shape)


def add_noise(
    z: torch.Tensor, sigma: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor, stream: int
) -> torch.Tensor:
    """z + sigma * N(0, 1) per row, rounded to z's dtype (`reference.add_noise`)."""
    if _fused(z, sigma):
        return torch.ops.trm.inject(z, None, None, sigma, seeds, steps, stream)
    return reference.add_noise(z, sigma, seeds, steps, stream)


def inject(
    z_L: torch.Tensor,
    z_H: torch.Tensor,
    x: torch.Tensor,
    sigma: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
    steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """z_L (+ sigma * N(0, 1)) + (z_H + x), the latent update's input in one kernel (`reference.inject`)."""
    if _fused(z_L, z_H, x, sigma):
        return torch.ops.trm.inject(z_L, z_H, x, sigma, seeds, steps, STREAM_Z)
    return reference.inject(z_L, z_H, x, sigma, seeds, steps)


set_backend(os.environ.get("TRM_KERNELS", "auto"))
