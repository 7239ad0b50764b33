"""benchmarks/gpu_check.py, the prepared GPU check, runs on the CPU with a tiny config (--dry_run), so it cannot rot
between the sessions that have a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_section(tmp_path):
    """Cost (about 20 s): the prepared GPU check run whole on the CPU with a tiny config, so that it cannot rot between
    the sessions that have a GPU: every section trains or decodes once."""
    output = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry_run", "--output",
                             str(output)], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    for section in ("em_trainer_sdpa", "trl_as_em_sdpa", "em_trainer_plain_sdpa", "em_rl_self_certainty",
                    "em_rl_token", "lora_gradient_checkpointing", "em_inf_decoding"):
        assert "error" not in report[section], report[section]
    assert report["versions"]["trl"] and report["dry_run"] is True
    check = report["em_trainer_sdpa"]["shared_prompt_check"]
    assert check["loss_relative_gap"] < 1e-5 and check["grad_relative_gap"] < 1e-4
    assert report["em_inf_decoding"]["em_inf"]["tokens"] > 0
    assert report["summary"]["shared_prompt"] == {"state": "on", "reason": None}
    assert report["em_trainer_plain_sdpa"]["shared_prompt"]["reason"] == "shared_prompt_forward=False"
    memory = report["em_trainer_sdpa"]["memory"]
    assert memory["weights_gib"] > 0 and memory["optimizer_gib"] > memory["weights_gib"]  # Adam: two moments
    assert report["em_trainer_sdpa"]["first_step_s"] > 0
