"""Kernels for the recursion step, behind the functions the model calls.

Each function runs a fused Triton custom op (`torch.ops.trm.*`, modules `noise`, `rms_norm`, `activation`) on CUDA
tensors and the torch reference (`kernels.reference`) everywhere else. The Triton path is taken when
- the tensors are on a CUDA device and triton is importable,
- the backend is not forced to the reference: `TRM_KERNELS=torch` in the environment, or `set_backend("torch")`,
- no input needs a gradient: the custom ops have no backward, so training keeps the reference (which
  `torch.compile` fuses on its own),
- no launch has failed: Triton compiles a small C driver at the first launch, so a machine without a C compiler
  (a slim image) can import triton yet not run it. The first failed launch switches to the references for good,
  warned once and reported by `fallback()` (the server shows it in /v1/models).

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
    "fallback",
    "inject",
    "row_seed",
    "set_backend",
    "standard_normal",
    "swiglu",
]

MODES = ("auto", "torch")  # auto: Triton on CUDA, the reference elsewhere; torch: the reference everywhere

_mode = "auto"
_triton_loaded: bool | None = None  # None: not tried yet
_failed: str | None = None  # why a fused launch failed (then the references serve everywhere)


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
    if _mode == "torch" or _failed is not None or torch.device(device).type != "cuda":
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


def fallback() -> str | None:
    """Why the fused kernels stopped serving after a failed launch (None: they never failed)."""
    return _failed


def _dispatch(tensors: tuple[torch.Tensor | None, ...], fused, ref):
    """`fused()` when the Triton path applies to `tensors`, else (or when its launch fails) `ref()`."""
    if backend(tensors[0].device) == "triton" and not (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    ):
        try:
            return fused()
        except Exception as e:  # e.g. no C compiler for Triton's driver: serve on the references, never fail
            global _failed
            _failed = f"Triton kernel launch failed, using the torch references: {e!r}"
            warnings.warn(_failed, stacklevel=3)
    return ref()


# -- the functions the model calls ----------------------------------------------------------------------------------


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm(x + residual) over the last axis, fp32 inside (`reference.add_rms_norm`)."""
    return _dispatch(
        (x, residual),
        lambda: torch.ops.trm.add_rms_norm(x, residual, eps),
        lambda: reference.add_rms_norm(x, residual, eps),
    )


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up on the fused gate_up projection output [..., 2 * inter] (`reference.swiglu`)."""
    return _dispatch((gate_up,), lambda: torch.ops.trm.swiglu(gate_up), lambda: reference.swiglu(gate_up))


def standard_normal(seeds: torch.Tensor, steps: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """fp32 counter-based N(0, 1) of shape [B, *shape] (`reference.standard_normal`)."""
    return _dispatch(
        (seeds,),
        lambda: torch.ops.trm.standard_normal(seeds, steps, stream, math.prod(shape)).view(-1, *shape),
        lambda: reference.standard_normal(seeds, steps, stream, shape),
    )


def add_noise(
    z: torch.Tensor, sigma: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor, stream: int
) -> torch.Tensor:
    """z + sigma * N(0, 1) per row, rounded to z's dtype (`reference.add_noise`)."""
    return _dispatch(
        (z, sigma),
        lambda: torch.ops.trm.inject(z, None, None, sigma, seeds, steps, stream),
        lambda: reference.add_noise(z, sigma, seeds, steps, stream),
    )


def inject(
    z_L: torch.Tensor,
    z_H: torch.Tensor,
    x: torch.Tensor,
    sigma: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
    steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """z_L (+ sigma * N(0, 1)) + (z_H + x), the latent update's input in one kernel (`reference.inject`)."""
    return _dispatch(
        (z_L, z_H, x, sigma),
        lambda: torch.ops.trm.inject(z_L, z_H, x, sigma, seeds, steps, STREAM_Z),
        lambda: reference.inject(z_L, z_H, x, sigma, seeds, steps),
    )


set_backend(os.environ.get("TRM_KERNELS", "auto"))
