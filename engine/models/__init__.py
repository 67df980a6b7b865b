"""The networks: TRM, GRAM and their shared layers."""

from engine.models.config import GRAM_PRESETS, PRESETS, GRAMConfig, TRMConfig, preset
from engine.models.gram import GRAM, GramStep, counter_noise
from engine.models.trm import TRM, Carry, Noise

__all__ = [
    "GRAM",
    "GRAM_PRESETS",
    "PRESETS",
    "TRM",
    "Carry",
    "GRAMConfig",
    "GramStep",
    "Noise",
    "TRMConfig",
    "counter_noise",
    "preset",
]
