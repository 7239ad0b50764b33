"""The commands the interruption tests run (`em-trainer train`, the EM-then-GRPO recipe): a tiny model, fast steps,
a fixed seed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

STEPS = 30
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
TINY = [
    "--responses_per_step", "4", "--per_device_train_batch_size", "4", "--max_completion_length", "8",
    "--learning_rate", "1e-3", "--gradient_checkpointing", "false", "--report_to", "none", "--seed", "7",
    "--save_steps", "1000", "--logging_steps", "1", "--disable_tqdm", "true",
]  # fmt: skip


def train(model_dir: str, output_dir: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "em_trainer.cli", "train", "--model", model_dir, "--output_dir", str(output_dir),
            "--max_steps", str(steps), *TINY]  # fmt: skip


POOL = str(Path(__file__).resolve().parent / "fixtures" / "arithmetic_pool.jsonl")


def pipeline_config(tmp_path: Path, tiny_model_dir: str, **top) -> Path:
    """An EM-then-GRPO YAML on the tiny model: two steps per phase, a checkpoint after each."""
    config = {
        "model": tiny_model_dir,
        "output_dir": str(tmp_path / "run"),
        "em": {"responses_per_step": 4, "per_device_train_batch_size": 4, "max_completion_length": 6, "max_steps": 2,
               "learning_rate": 1e-3, "report_to": "none", "save_steps": 1},
        "grpo": {"dataset": POOL, "num_generations": 2, "per_device_train_batch_size": 4, "max_completion_length": 6,
                 "max_steps": 2, "learning_rate": 1e-4, "report_to": "none", "save_steps": 1, "logging_steps": 1},
    }  # fmt: skip
    config.update(top)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
