"""Decoding: one Generator interface over HF ``generate`` and vLLM, and EM-INF (entropy minimization at decoding).

Imports only the layers below (core, data); the evaluation toolkit builds on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .em_inf import (
        PRESETS,
        AdaptiveTemperatureLogitsProcessor,
        EMInfSettings,
        EntropyMinimizingLogitsProcessor,
        entropy_minimize_logits,
    )
    from .generation import Completion, Generator, HFGenerator, SamplingSettings, VLLMGenerator, make_generator

# Imported on first use (em_trainer/_lazy.py): importing one submodule does not import the others.
_EXPORTS = {
    "AdaptiveTemperatureLogitsProcessor": ".em_inf",
    "Completion": ".generation",
    "EMInfSettings": ".em_inf",
    "entropy_minimize_logits": ".em_inf",
    "EntropyMinimizingLogitsProcessor": ".em_inf",
    "Generator": ".generation",
    "HFGenerator": ".generation",
    "make_generator": ".generation",
    "PRESETS": ".em_inf",
    "SamplingSettings": ".generation",
    "VLLMGenerator": ".generation",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    "AdaptiveTemperatureLogitsProcessor",
    "Completion",
    "EMInfSettings",
    "EntropyMinimizingLogitsProcessor",
    "Generator",
    "HFGenerator",
    "PRESETS",
    "SamplingSettings",
    "VLLMGenerator",
    "entropy_minimize_logits",
    "make_generator",
]
