"""The TRL plugin: EMConfig, EMTrainer, the objectives as pure tensor functions, callbacks and the model card.

Imports only em_trainer.data below it; never the toolkit (decoding, evaluation, workflows, cli).
"""

from .callbacks import CollapseGuard, DevSetEarlyStopping, Scorer, repetition_rate
from .config import EMConfig, EMConfigError
from .trainer import EMTrainer

__all__ = [
    "CollapseGuard",
    "DevSetEarlyStopping",
    "EMConfig",
    "EMConfigError",
    "EMTrainer",
    "Scorer",
    "repetition_rate",
]
