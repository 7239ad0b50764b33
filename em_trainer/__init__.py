"""em-trainer: entropy-minimization post-training of language models on the Hugging Face stack.

Layout (imports go one way, top to bottom; ``lint-imports`` checks it in CI)::

    cli/          one module per ``em-trainer`` verb
    workflows/    EM then GRPO, multi-seed sweeps
    evaluation/   benchmarks, scoring, evaluation, selection, analysis, rewards, dev-set scorers
    decoding/     generation backends (HF generate, vLLM) and EM-INF
    core/         the TRL plugin: EMConfig, EMTrainer, objectives, callbacks, model card
    data/         model references, prompts, problem pools
"""

from . import _compat
from .core.config import EMConfig, EMConfigError
from .core.trainer import EMTrainer
from .data.models import DEFAULT_MODEL, ModelResolutionError, resolve_model
from .data.prompts import load_one_shot_dataset, load_prompt_dataset
from .data.sources import DatasetError

_compat.install()

__version__ = "0.1.0"

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
