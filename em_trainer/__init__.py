"""em-trainer: entropy-minimization post-training of language models on the Hugging Face stack."""

from .config import EMConfig, EMConfigError
from .data import DatasetError, load_one_shot_dataset, load_prompt_dataset
from .models import DEFAULT_MODEL, ModelResolutionError, resolve_model
from .trainer import EMTrainer

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
