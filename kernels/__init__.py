"""Kernels for the recursion step, behind one set of functions the model calls.

The names below are the dispatch point: today they are the torch references (`kernels.reference`); the Triton path
plugs in here for CUDA tensors.
"""

from kernels.reference import (
    STREAM_GRAM,
    STREAM_Y,
    STREAM_Z,
    add_noise,
    add_rms_norm,
    noisy_injection,
    row_seed,
    standard_normal,
    swiglu,
)

__all__ = [
    "STREAM_GRAM",
    "STREAM_Y",
    "STREAM_Z",
    "add_noise",
    "add_rms_norm",
    "noisy_injection",
    "row_seed",
    "standard_normal",
    "swiglu",
]
