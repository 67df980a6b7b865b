"""The networks: TRM (and GRAM, with its issue) and their shared layers."""

from engine.models.config import PRESETS, TRMConfig, preset
from engine.models.trm import TRM, Carry, Noise

__all__ = ["PRESETS", "TRM", "TRMConfig", "Carry", "Noise", "preset"]
