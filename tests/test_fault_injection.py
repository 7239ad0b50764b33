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

from em_trainer.core.checkpoints import last_complete_checkpoint

from .training_cli import ENV, STEPS, TINY, pipeline_config, train

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
    """Cost (about 25 s): a training process SIGKILLed after its third checkpoint, then resumed to the end, against the
    uninterrupted run's weights."""
    command = train(tiny_model_dir, tmp_path / "killed", STEPS) + ["--save_steps", "1"]
    checkpoint = tmp_path / "killed" / "checkpoint-3" / "trainer_state.json"
    kill_when(command, lambda: checkpoint.exists())  # during step 4 or later: whatever it was doing is lost
    resumed = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    want, got = load_file(straight_run / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    for name, tensor in want.items():
        assert torch.allclose(got[name], tensor, atol=1e-6, rtol=0), name


def test_last_complete_checkpoint_passes_over_one_cut_off_while_saving(tmp_path, capsys):
    for step, state in ((1, "{}"), (2, "{}"), (3, '{"log_hist'), (10, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2"), "numeric order, 10 > 3 > 2"
    printed = capsys.readouterr().out
    assert "checkpoint-10 was cut off" in printed and "checkpoint-3 was cut off" in printed
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_train_resumes_past_a_checkpoint_cut_off_while_saving(tiny_model_dir, tmp_path, straight_run):
    """A kill while saving leaves checkpoint-N without (or with half) its trainer_state.json, the last file written."""
    command = train(tiny_model_dir, tmp_path / "killed", STEPS) + ["--save_steps", "1"]
    kill_when(command, lambda: (tmp_path / "killed" / "checkpoint-5" / "trainer_state.json").exists())
    newest = max((tmp_path / "killed").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = newest / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # what a kill in the middle of writing it leaves
    resumed = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{newest} was cut off while saving" in resumed.stdout
    step = int(newest.name.split("-")[1])
    assert f"resuming from {newest.parent / f'checkpoint-{step - 1}'}" in resumed.stdout
    want, got = load_file(straight_run / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    for name, tensor in want.items():
        assert torch.allclose(got[name], tensor, atol=1e-6, rtol=0), name


@pytest.mark.slow
def test_sweep_killed_mid_run_gives_the_uninterrupted_rows(tiny_model_dir, tmp_path):
    """Killed while training its second run (after that run's third checkpoint): the rerun keeps the first run, resumes
    the second from its checkpoint, and the sweep's rows equal an uninterrupted sweep's."""
    config = tmp_path / "tiny.yaml"
    # A checkpoint every step, from the train config: the sweep's own --save_steps acts only with --eval_checkpoints,
    # which needs --eval (refused without it).
    config.write_text(f"model: {tiny_model_dir}\nsave_steps: 1\n")
    # The sweep sets the seed; the train config sets the checkpoint spacing.
    owned = ("--seed", "--save_steps")
    tiny = [a for i, a in enumerate(TINY) if not set(owned) & set(TINY[max(i - 1, 0) : i + 1])]

    def command(out: Path) -> list[str]:
        return cli("sweep", "--train_config", str(config), "--seeds", "2", "--output_dir", str(out),
                   "--max_steps", "8", *tiny)  # fmt: skip

    # The reference runs serially (no job process per run); serial and local give equal rows (test_executors).
    straight = subprocess.run([*command(tmp_path / "straight"), "--executor", "serial"], capture_output=True,
                              text=True, env=ENV)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = tmp_path / "killed"

    def run_dir(seed: int) -> Path:  # <point>-<fingerprint of the resolved config>/seed-N
        return next(iter(killed.glob("base-*")), killed / "base-?") / f"seed-{seed}"

    kill_when(command(killed), lambda: (run_dir(1) / "checkpoint-3" / "trainer_state.json").exists())
    first_marker = run_dir(0) / ".run_complete"
    assert first_marker.is_file() and not (run_dir(1) / ".run_complete").exists()
    kept = first_marker.stat().st_mtime_ns
    rerun = subprocess.run(command(killed), capture_output=True, text=True, env=ENV)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # The default executor (local) ran each run as a job; the job of the killed sweep stopped with it (SIGTERM).
    assert "1 of 2 run(s) done, kept" in rerun.stdout and first_marker.stat().st_mtime_ns == kept, "run 1 not redone"
    assert "resuming from" in (run_dir(1) / "train.log").read_text()
    rows = lambda out: json.loads((out / "sweep_summary.json").read_text())["runs"]  # noqa: E731
    want, got = rows(tmp_path / "straight"), rows(killed)
    assert [(r["point"], r["seed"]) for r in got] == [(r["point"], r["seed"]) for r in want]
    for a, b in zip(got, want, strict=True):
        assert a["loss_by_step"].keys() == b["loss_by_step"].keys()
        assert all(abs(a["loss_by_step"][k] - b["loss_by_step"][k]) < 1e-5 for k in a["loss_by_step"])


@pytest.mark.slow
def test_em_then_grpo_recipe_killed_in_each_phase_ends_as_an_uninterrupted_run(tiny_model_dir, tmp_path):
    """Killed once during EM and once during GRPO, each after a checkpoint: the final weights of both phases equal an
    uninterrupted run's, the finished EM phase is not touched by the second rerun, and no step is logged twice."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "em_then_grpo.py"
    # GRPO on a random tiny model earns no reward (zero gradient): weight decay makes its optimizer steps visible.
    overrides = ["em.max_steps=4", "grpo.max_steps=4", "grpo.weight_decay=0.5", "em.seed=3", "grpo.seed=3"]

    def command(root: Path) -> list[str]:
        root.mkdir(exist_ok=True)
        config = pipeline_config(root, tiny_model_dir)
        return [sys.executable, str(recipe), "--config", str(config), *(f"--set={o}" for o in overrides)]

    straight = subprocess.run(command(tmp_path / "straight"), capture_output=True, text=True, env=ENV)
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = tmp_path / "killed" / "run"
    kill_when(command(tmp_path / "killed"), lambda: (run / "em" / "checkpoint-2" / "trainer_state.json").exists())
    assert not (run / "em" / ".phase_complete").exists()
    kill_when(command(tmp_path / "killed"), lambda: (run / "grpo" / "checkpoint-2" / "trainer_state.json").exists())
    em_weights = (run / "em" / "model.safetensors").stat().st_mtime_ns
    final = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True, env=ENV)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "EM phase already complete" in final.stdout
    assert (run / "em" / "model.safetensors").stat().st_mtime_ns == em_weights, "the finished EM phase is kept"
    for phase in ("em", "grpo"):
        state = json.loads((run / phase / "checkpoint-4" / "trainer_state.json").read_text())
        assert [log["step"] for log in state["log_history"] if "loss" in log] == [1, 2, 3, 4], phase
        want = load_file(tmp_path / "straight" / "run" / phase / "model.safetensors")
        got = load_file(run / phase / "model.safetensors")
        for name, tensor in want.items():
            assert torch.allclose(got[name], tensor, atol=1e-6, rtol=0), (phase, name)


@pytest.mark.slow
def test_eval_killed_mid_run_loses_and_recomputes_nothing(tmp_path):
    """Cost (about 50 s): a real `eval` process killed mid-run, then resumed, then compared with an uninterrupted run:
    three evaluations on the embedded model."""
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
    """Cost (about 55 s): a real `select` process killed mid-run, then resumed, then compared with an uninterrupted
    run: three selections on the embedded model."""
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
