"""Helpers shared by the Triton launchers: block sizes and the checks that keep a bad launch from failing deep inside
Triton (SERVING.md §5.3)."""

from __future__ import annotations

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

# One program's tile: about 4096 elements, 16 KiB of fp32 per operand.
TILE = 4096


def num_warps(tile: int) -> int:
    """4 warps up to a 4096-element tile, 8 above (the Triton layer-norm tutorial's rule, capped at 8)."""
    return 4 if tile <= 4096 else 8


def block(n: int, cap: int) -> int:
    """The power of two covering `n`, at most `cap`."""
    return min(triton.next_power_of_2(max(n, 1)), cap)


def check_launchable(kernel, *tensors: torch.Tensor | None) -> None:
    """Tensors must share one device: CUDA, or the CPU when the kernels were built under TRITON_INTERPRET=1."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        raise ValueError(f"kernel inputs must share one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type != "cuda" and not isinstance(kernel, InterpretedFunction):
        raise RuntimeError(
            f"Triton kernels run on CUDA tensors, got {device}; on the CPU, import `kernels.*` with TRITON_INTERPRET=1"
        )
