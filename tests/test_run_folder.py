"""The one rule for reusing a folder of work (em_trainer/data/run_folder.py): resume the same settings, refuse or
replace other settings, never mix; and the places that use it (train, the recipe's phases, the study's selection)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from em_trainer.cli import main
from em_trainer.data.run_folder import MARKER, FolderOfOtherSettingsError, claim_folder

from .training_cli import TINY


def test_claim_folder_resumes_refuses_replaces_and_checks_without_writing(tmp_path):
    folder = tmp_path / "run"
    settings = {"config": {"learning_rate": 1e-3, "objective": "entropy_loss"}, "seed": 0}
    assert claim_folder(folder, settings, check_only=True) == "fresh" and not folder.exists()
    assert claim_folder(folder, settings) == "fresh"
    (folder / "checkpoint-2").mkdir()
    assert claim_folder(folder, settings) == "resume"
    other = {"config": {"learning_rate": 5e-2, "objective": "neg_entropy_reward"}, "seed": 0}
    with pytest.raises(FolderOfOtherSettingsError) as refused:
        claim_folder(folder, other)
    message = str(refused.value)
    assert "\n" not in message and "config.learning_rate: 0.001 -> 0.05" in message
    assert "config.objective" in message and "--overwrite_output_dir" in message
    with pytest.raises(FolderOfOtherSettingsError):
        claim_folder(folder, other, check_only=True)
    assert json.loads((folder / MARKER).read_text()) == settings, "a refusal changes nothing"
    assert claim_folder(folder, other, overwrite=True, check_only=True) == "fresh"
    assert (folder / "checkpoint-2").is_dir(), "check_only deletes nothing"
    lines = []
    assert claim_folder(folder, other, overwrite=True, log=lines.append) == "fresh"
    assert not (folder / "checkpoint-2").exists() and json.loads((folder / MARKER).read_text()) == other
    assert lines and "replacing work of other settings" in lines[0]
    # Work without a marker: settings unknown, so never resumed.
    legacy = tmp_path / "legacy"
    (legacy / "checkpoint-1").mkdir(parents=True)
    with pytest.raises(FolderOfOtherSettingsError, match="no record of its settings"):
        claim_folder(legacy, settings)
    # Files that are not this kind of work do not count.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    assert claim_folder(tmp_path / "notes", settings) == "fresh"


def _train(model: str, out: Path, *extra: str) -> int:
    return main(["train", "--model", model, "--output_dir", str(out), *TINY, *extra])


def test_train_refuses_a_folder_of_other_settings_and_resumes_or_extends_its_own(tiny_model_dir, tmp_path, capsys):
    """Before: a second `train` with another learning rate and objective printed "resuming from checkpoint-2",
    trained 0 steps, left the weights byte-identical and rewrote run_identity.json with the untrained settings."""
    out = tmp_path / "run1"
    assert _train(tiny_model_dir, out, "--max_steps", "2", "--save_steps", "1") == 0
    weights = (out / "model.safetensors").read_bytes()
    marker = (out / MARKER).read_text()
    capsys.readouterr()
    changed = ["--max_steps", "2", "--learning_rate", "5e-2", "--objective", "neg_entropy_reward"]
    assert _train(tiny_model_dir, out, *changed) == 2
    err = capsys.readouterr().err
    assert "holds work of other settings" in err and "config.learning_rate: 0.001 -> 0.05" in err, err
    assert (out / "model.safetensors").read_bytes() == weights and (out / MARKER).read_text() == marker
    # A shorter run is not a continuation; a longer one on EM's constant schedule is, and resumes.
    assert _train(tiny_model_dir, out, "--max_steps", "1", "--save_steps", "1") == 2
    capsys.readouterr()
    assert _train(tiny_model_dir, out, "--max_steps", "3", "--save_steps", "1") == 0
    assert "resuming from" in capsys.readouterr().out and (out / "checkpoint-3").is_dir()
    assert json.loads((out / MARKER).read_text())["config"]["max_steps"] == 3
    assert _train(tiny_model_dir, out, *changed, "--overwrite_output_dir") == 0
    out_text = capsys.readouterr().out
    assert "replacing work of other settings" in out_text and "resuming" not in out_text
    assert json.loads((out / MARKER).read_text())["config"]["learning_rate"] == 5e-2
    assert (out / "model.safetensors").read_bytes() != weights


def test_default_output_dir_carries_the_run_fingerprint(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folders = []
    for rate in ("1e-3", "1e-3", "2e-3"):
        assert main(["train", "--model", tiny_model_dir, "--learning_rate", rate, "--check"]) == 0
        out = capsys.readouterr().out
        # The paper's recipe on a CPU: said before it starts, with its size and its disk use.
        assert "device: cpu; a step generates up to 64 x 2048 = 131,072 tokens" in out and "on a CPU" in out
        assert "GB a checkpoint" in out and "+ optimizer state" in out
        line = next(line for line in out.splitlines() if "output in" in line)
        folders.append(line.rsplit("output in ", 1)[1])
    assert folders[0] == folders[1] != folders[2]
    assert all(folder.startswith("outputs/") and "-EM-" in folder for folder in folders)


def test_recipe_phase_identity_follows_settings_order_and_start(tiny_model_dir, tmp_path):
    from em_trainer.workflows.em_then_grpo import claim_phase, load_config, phase_identity

    from .training_cli import pipeline_config

    path = pipeline_config(tmp_path, tiny_model_dir)
    recipe = load_config(path)
    first = phase_identity(recipe, "em", None)
    assert first == phase_identity(load_config(path), "em", None)
    assert phase_identity(load_config(path, ["em.learning_rate=0.5"]), "em", None) != first
    flipped = load_config(path, argv=["--order", "grpo_then_em"])
    assert claim_phase(recipe, "em", None) == "fresh"
    (recipe.phases["em"].directory / "checkpoint-1").mkdir()
    assert claim_phase(load_config(path), "em", None) == "resume"
    grpo_dir = flipped.phases["grpo"].directory
    claim_phase(flipped, "grpo", None)
    with pytest.raises(FolderOfOtherSettingsError, match="the em phase's folder"):
        claim_phase(flipped, "em", grpo_dir)  # EM from GRPO's weights is not EM from the base model
    replaced = load_config(path, argv=["--order", "grpo_then_em", "--overwrite_output_dir", "true"])
    assert claim_phase(replaced, "em", grpo_dir) == "fresh"
    assert not (recipe.phases["em"].directory / "checkpoint-1").exists()
