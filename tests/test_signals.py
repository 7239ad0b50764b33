"""SIGTERM and SIGINT stop a job cleanly: progress saved, a message on how to resume, exit 130; the rerun resumes."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from em_trainer import cli

from .training_cli import ENV, STEPS, train


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_any_verb_exits_130_with_how_to_resume(monkeypatch, capsys, sig):
    def killed_main(argv):
        os.kill(os.getpid(), sig)
        raise AssertionError("the signal should have stopped the verb")

    monkeypatch.setattr(cli._verb("eval"), "main", killed_main)
    # As in a terminal: a job started in the background (`cmd &`, nohup, some CI runners) inherits SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert cli.main(["eval"]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the same command again to resume" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is not cli._interrupt, "the handler is put back"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_training_saves_that_step_and_the_rerun_ends_where_an_uninterrupted_run_does(
    tiny_model_dir, straight_run, tmp_path, sig
):
    """Cost (about 25 s per signal): a real training process stopped by the signal, then the same command resumed to
    the end, against the uninterrupted run's weights."""
    steps, env = STEPS, ENV

    command = train(tiny_model_dir, tmp_path / "stopped", steps)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in process.stdout:
        if "'loss'" in line:  # the first optimizer step is done
            process.send_signal(sig)
            break
    output = line + process.communicate(timeout=300)[0]
    assert process.returncode == 130, output[-2000:]
    assert "Run the same command again to resume" in output and "Traceback" not in output
    checkpoints = sorted((tmp_path / "stopped").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and 1 <= int(checkpoints[0].name.split("-")[1]) < steps
    assert not (tmp_path / "stopped" / "model.safetensors").exists(), "a stopped run does not pass for a finished one"

    resumed = subprocess.run(command, capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {checkpoints[0]}" in resumed.stdout
    want = load_file(straight_run / "model.safetensors")
    got = load_file(tmp_path / "stopped" / "model.safetensors")
    for name, tensor in want.items():
        assert torch.allclose(got[name], tensor, atol=1e-6, rtol=0), name


JOB = """
import signal, sys
from em_trainer import cli
from em_trainer.workflows.child_process import run_child
signal.signal(signal.SIGTERM, cli._interrupt)  # as every em-trainer verb does
try:
    code, _ = run_child(sys.argv[2:], sys.argv[1])
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(code)
"""


def test_a_job_stopped_by_sigterm_forwards_it_and_its_training_child_saves_the_step(
    tiny_model_dir, straight_run, tmp_path
):
    """A job (the process a sweep, a study or SLURM runs) stopped mid-interval: before, `subprocess.run` killed its
    training child 0.25 s after the stop, so no step was saved, and the child's output, held in memory, never reached
    the log. Now the stop is forwarded and waited for; the log streams as the child runs."""
    import json
    import sys
    import time

    out, log = tmp_path / "run", tmp_path / "train.log"
    command = train(tiny_model_dir, out, STEPS)
    job = subprocess.Popen([sys.executable, "-c", JOB, str(log), *command], env=ENV)
    deadline = time.monotonic() + 300
    while "'loss'" not in (log.read_text() if log.exists() else ""):  # streamed: the first step is in the log
        assert job.poll() is None and time.monotonic() < deadline, "the job ended, or its log stayed empty"
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=300) == 130
    text = log.read_text()
    assert "SIGTERM: finishing this optimizer step" in text and "Run the same command again to resume" in text
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1, text[-2000:]
    stopped_at = int(checkpoints[0].name.split("-")[1])
    resumed = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert resumed.returncode == 0 and f"resuming from {checkpoints[0]}" in resumed.stdout, resumed.stderr[-2000:]
    state = json.loads((out / "trainer_state.json").read_text())
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == list(range(1, STEPS + 1)) and 1 <= stopped_at < STEPS, "every step trained once"
    want, got = load_file(straight_run / "model.safetensors"), load_file(out / "model.safetensors")
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=1e-5)
