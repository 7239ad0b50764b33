"""The TRL plugin: EMConfig, EMTrainer, the objectives as pure tensor functions, callbacks and the model card.

Imports only em_trainer.data below it; never the toolkit (decoding, evaluation, workflows, cli).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .callbacks import CollapseGuard, DevSetEarlyStopping, Scorer, repetition_rate
    from .config import EMConfig, EMConfigError
    from .trainer import EMTrainer

# Imported on first use (em_trainer/_lazy.py): importing one submodule does not import the others.
_EXPORTS = {
    "CollapseGuard": ".callbacks",
    "DevSetEarlyStopping": ".callbacks",
    "EMConfig": ".config",
    "EMConfigError": ".config",
    "EMTrainer": ".trainer",
    "repetition_rate": ".callbacks",
    "Scorer": ".callbacks",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    "CollapseGuard",
    "DevSetEarlyStopping",
    "EMConfig",
    "EMConfigError",
    "EMTrainer",
    "Scorer",
    "repetition_rate",
]
