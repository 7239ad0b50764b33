"""Two real processes (torchrun, gloo on CPU): same steps and responses per step, global loss normalisation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_two_process_gradient_equals_one_process_reference(tiny_model_dir, tmp_path):
    result = torchrun(str(REPO / "tests" / "scripts" / "ddp_loss_check.py"), tiny_model_dir, str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "DDP_OK world=2" in result.stdout


def test_two_process_training_run_matches_one_process_shape(tiny_model_dir, tmp_path):
    common = ["--model", tiny_model_dir, "--max_steps", "2", "--responses_per_step", "4",
              "--per_device_train_batch_size", "1", "--max_completion_length", "6", "--report_to", "none",
              "--save_steps", "1"]  # fmt: skip
    result = torchrun(str(REPO / "recipes" / "em_one_shot.py"), *common, "--output_dir", str(tmp_path / "two"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    from em_trainer.cli import main

    assert main(["train", *common, "--output_dir", str(tmp_path / "one")]) == 0
    shapes = {}
    for name in ("one", "two"):
        args = torch.load(tmp_path / name / "training_args.bin", weights_only=False)
        state = json.loads((tmp_path / name / "checkpoint-2" / "trainer_state.json").read_text())
        shapes[name] = (
            state["global_step"],
            args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps,
            args.world_size,
        )
    assert shapes["one"] == (2, 4, 1)
    assert shapes["two"] == (2, 4, 2)  # 2 processes x 1 response x 2 accumulation steps = the same 4 per step
