"""`em-trainer train` end to end on a tiny model, its errors, and resuming after an interruption."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from em_trainer import EMConfig, EMTrainer
from em_trainer.cli import main

TINY = [
    "--per_device_train_batch_size", "4",
    "--responses_per_step", "4",
    "--max_completion_length", "8",
    "--gradient_checkpointing", "false",
    "--report_to", "none",
    "--learning_rate", "1e-3",
]  # fmt: skip


def test_train_command_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {tiny_model_dir}\nmax_steps: 2\nsave_steps: 1\nseed: 3\n")
    code = main(["train", "--config", str(config), "--output_dir", str(out), "--report_entropy_samples", "2", *TINY])
    assert code == 0
    printed = capsys.readouterr().out
    assert "BEFORE training" in printed and "AFTER training" in printed and str(out.resolve()) in printed
    model = AutoModelForCausalLM.from_pretrained(out)  # the final directory loads as a plain model
    assert model.config.vocab_size > 0
    assert (out / "README.md").is_file() and (out / "tokenizer.json").is_file()
    state = json.loads((Path(get_last_checkpoint(str(out))) / "trainer_state.json").read_text())
    assert state["global_step"] == 2

    # A rerun with more steps resumes from the last checkpoint instead of starting over.
    code = main(["train", "--config", str(config), "--output_dir", str(out), "--max_steps", "3", *TINY])
    assert code == 0
    assert "resuming from" in capsys.readouterr().out
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert [log["step"] for log in state["log_history"] if "entropy" in log] == [1, 2, 3]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "./no/such/model"], "neither an existing path nor a Hub id"),
        (["--dataset", "missing.jsonl"], "Dataset file not found"),
        (["--use_adaptive_entropy", "true"], "use_adaptive_entropy"),
    ],
)
def test_train_command_reports_bad_input(tiny_model_dir, tmp_path, capsys, args, message):
    code = main(["train", "--model", tiny_model_dir, "--output_dir", str(tmp_path), *TINY, *args])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_console_script_help():
    """The console script as a user runs it: a new Python process that imports the package (seconds)."""
    result = subprocess.run(
        [sys.executable, "-m", "em_trainer.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "em-trainer <command>" in result.stdout


class StopAfter(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt  # an interruption right after the checkpoint of this step is written


def test_interrupted_run_resumes_to_the_same_weights(tiny_model_dir, tokenizer, tmp_path):
    def run(output_dir, callbacks=(), resume=None):
        args = EMConfig(
            output_dir=str(output_dir), responses_per_step=4, per_device_train_batch_size=4, max_completion_length=8,
            max_steps=3, save_steps=1, learning_rate=1e-3, gradient_checkpointing=False, report_to="none", seed=7,
        )  # fmt: skip
        trainer = EMTrainer(model=tiny_model_dir, args=args, processing_class=tokenizer, callbacks=list(callbacks))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "interrupted", callbacks=[StopAfter(2)])
    assert get_last_checkpoint(str(tmp_path / "interrupted")).endswith("checkpoint-2")
    resumed = run(tmp_path / "interrupted", resume=True)
    assert resumed.state.global_step == 3
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, n=name: f"{n}: {m}")


def test_version_and_env_say_what_a_bug_report_needs(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"em-trainer {version('em-trainer')}\n"
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for key in ("Python version", "em-trainer version", "CPU", "torch version", "trl version", "transformers version",
                "Code sandbox", "Math grader version", "Embedded model"):  # fmt: skip
        assert f"- {key}: " in out, key
    assert f"- trl version: {version('trl')}\n" in out


def test_train_help_shows_em_options_first_and_every_verb_its_defaults_and_config(capsys):
    """Before: `train --help` was 1,532 lines with the first EM flag at line 1,325; other verbs showed no defaults;
    no verb mentioned --config."""
    import dataclasses

    from trl import GRPOConfig

    from em_trainer.cli import VERBS

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    first_flag = next(i for i, line in enumerate(lines) if line.strip().startswith("--"))
    assert first_flag < 20 and lines[first_flag].split()[0] == "--objective", lines[first_flag]
    sections = ["EM options", "em-trainer train options", "GRPO options", "training options", "model options"]
    positions = [out.index(f"\n{title}") for title in sections]
    assert positions == sorted(positions)
    own = {f.name for f in dataclasses.fields(EMConfig)} - {f.name for f in dataclasses.fields(GRPOConfig)}
    assert all(out.index(f"--{name} ") < positions[1] for name in own)
    for verb in VERBS:
        assert main([verb, "--help"]) == 0
        text = capsys.readouterr().out
        assert "--config FILE" in text, verb
        if verb != "env":  # env has no options
            assert "(default: " in text or "default: " in text, verb
