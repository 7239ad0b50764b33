"""SIGKILL in the middle of a long job, then the same command again: the result equals an uninterrupted run's, and
nothing finished before the kill is computed again (append-only progress would show it as a duplicate)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .training_cli import ENV, STEPS, train

FIXTURES = Path(__file__).parent / "fixtures"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "em_trainer.cli", *args]


def kill_when(command: list[str], ready, timeout: float = 600) -> int:
    """Start ``command``, SIGKILL it as soon as ``ready()`` holds; returns how far it got (``ready()``'s value)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + timeout
    while time.time() < deadline:
        reached = ready()
        if reached:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return reached
        assert process.poll() is None, "the job ended before it could be killed: make it longer"
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the job never reached the kill point")


def lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_train_killed_mid_run_resumes_to_the_uninterrupted_weights(tiny_model_dir, tmp_path, straight_run):
    command = train(tiny_model_dir, tmp_path / "killed", STEPS) + ["--save_steps", "1"]
    checkpoint = tmp_path / "killed" / "checkpoint-3" / "trainer_state.json"
    kill_when(command, lambda: checkpoint.exists())  # during step 4 or later: whatever it was doing is lost
    resumed = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    want, got = load_file(straight_run / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    for name, tensor in want.items():
        assert torch.allclose(got[name], tensor, atol=1e-6, rtol=0), name


@pytest.mark.slow
def test_eval_killed_mid_run_loses_and_recomputes_nothing(tmp_path):
    def command(out: Path) -> list[str]:
        return cli("eval", "--benchmarks", "arithmetic", "--limit", "16", "--max_new_tokens", "32", "--batch_size",
                   "4", "--temperature", "0.7", "--n", "2", "--output_dir", str(out))  # fmt: skip

    straight = subprocess.run(command(tmp_path / "straight"), capture_output=True, text=True, env=ENV)
    assert straight.returncode == 0, straight.stderr[-2000:]
    records = next((tmp_path / "straight").rglob("records.jsonl"))
    killed_dir = tmp_path / "killed"

    def progress() -> int:
        found = list(killed_dir.rglob("records.jsonl"))
        return len(lines(found[0])) if found else 0

    done_before = kill_when(command(killed_dir), progress)
    assert 0 < done_before < 32
    rerun = subprocess.run(command(killed_dir), capture_output=True, text=True, env=ENV)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    got = lines(next(killed_dir.rglob("records.jsonl")))
    keys = [(r["index"], r["sample"]) for r in got]
    assert len(keys) == len(set(keys)) == 32, "no sample lost, none computed twice"
    strip = lambda rs: sorted((r["index"], r["sample"], r["completion"], r["correct"]) for r in rs)  # noqa: E731
    assert strip(got) == strip(lines(records)), "the same samples and scores as the uninterrupted run"


@pytest.mark.slow
def test_select_killed_mid_run_loses_and_recomputes_nothing(tmp_path):
    def command(out: Path) -> list[str]:
        return cli("select", "--pool", str(FIXTURES / "arithmetic_pool.jsonl"), "--k", "2", "--max_new_tokens",
                   "32", "--batch_size", "1", "--output", str(out / "selected.jsonl"))  # fmt: skip

    straight = subprocess.run(command(tmp_path / "straight"), capture_output=True, text=True, env=ENV)
    assert straight.returncode == 0, straight.stderr[-2000:]
    progress_file = tmp_path / "killed" / "selected.progress.jsonl"
    done_before = kill_when(command(tmp_path / "killed"), lambda: len(lines(progress_file)))
    assert 0 < done_before < 8
    rerun = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True, env=ENV)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    indices = [r["index"] for r in lines(progress_file)]
    assert len(indices) == len(set(indices)) == 8, "no prompt lost, none scored twice"
    assert lines(tmp_path / "killed" / "selected.jsonl") == lines(tmp_path / "straight" / "selected.jsonl")
