"""The networks: TRM, GRAM, HRM and their shared layers."""

from engine.models.config import GRAM_PRESETS, HRM_PRESETS, PRESETS, GRAMConfig, HRMConfig, TRMConfig, preset
from engine.models.gram import GRAM, GramStep, counter_noise
from engine.models.hrm import HRM
from engine.models.trm import TRM, Carry, Noise

__all__ = [
    "GRAM",
    "GRAM_PRESETS",
    "HRM",
    "HRM_PRESETS",
    "PRESETS",
    "TRM",
    "Carry",
    "GRAMConfig",
    "GramStep",
    "HRMConfig",
    "Noise",
    "TRMConfig",
    "counter_noise",
    "preset",
]
