"""em-trainer: entropy-minimization post-training of language models on the Hugging Face stack.

Layout (imports go one way, top to bottom; ``lint-imports`` checks it in CI)::

    cli/          one module per ``em-trainer`` verb
    workflows/    EM then GRPO, multi-seed sweeps
    evaluation/   benchmarks, scoring, evaluation, selection, analysis, rewards, dev-set scorers
    decoding/     generation backends (HF generate, vLLM) and EM-INF
    core/         the TRL plugin: EMConfig, EMTrainer, objectives, callbacks, model card
    data/         model references, prompts, problem pools
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _compat
from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .core.config import EMConfig, EMConfigError
    from .core.trainer import EMTrainer
    from .data.models import DEFAULT_MODEL, ModelResolutionError, resolve_model
    from .data.prompts import load_one_shot_dataset, load_prompt_dataset
    from .data.sources import DatasetError

_compat.install()

__version__ = "0.1.0"

# Imported on first use (_lazy.py): `python -m em_trainer.cli study` or a submitit job does not import TRL.
_EXPORTS = {
    "DEFAULT_MODEL": ".data.models",
    "DatasetError": ".data.sources",
    "EMConfig": ".core.config",
    "EMConfigError": ".core.config",
    "EMTrainer": ".core.trainer",
    "ModelResolutionError": ".data.models",
    "load_one_shot_dataset": ".data.prompts",
    "load_prompt_dataset": ".data.prompts",
    "resolve_model": ".data.models",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    "DEFAULT_MODEL",
    "DatasetError",
    "EMConfig",
    "EMConfigError",
    "EMTrainer",
    "ModelResolutionError",
    "load_one_shot_dataset",
    "load_prompt_dataset",
    "resolve_model",
]
