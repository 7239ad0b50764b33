"""The `em-trainer train` command the interruption tests run: a tiny model, fast steps, a fixed seed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
