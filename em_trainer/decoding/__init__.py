"""Decoding: one Generator interface over HF ``generate`` and vLLM, and EM-INF (entropy minimization at decoding).

Imports only the layers below (core, data); the evaluation toolkit builds on it.
"""

from .em_inf import (
    PRESETS,
    AdaptiveTemperatureLogitsProcessor,
    EMInfSettings,
    EntropyMinimizingLogitsProcessor,
    entropy_minimize_logits,
)
from .generation import Completion, Generator, HFGenerator, SamplingSettings, VLLMGenerator, make_generator

__all__ = [
    "PRESETS",
    "AdaptiveTemperatureLogitsProcessor",
    "Completion",
    "EMInfSettings",
    "EntropyMinimizingLogitsProcessor",
    "Generator",
    "HFGenerator",
    "SamplingSettings",
    "VLLMGenerator",
    "entropy_minimize_logits",
    "make_generator",
]
