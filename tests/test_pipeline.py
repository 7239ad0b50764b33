"""EM then GRPO: both phases end to end on a tiny model, skip and resume, LoRA merge, and the folder a push sends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from em_trainer.workflows.em_then_grpo import PHASE_MARKER, PipelineConfigError, load_config, run_em_then_grpo

from .training_cli import pipeline_config as tiny_config


def test_em_then_grpo_end_to_end_and_the_pushed_folder(tmp_path, tiny_model_dir, capsys):
    config = load_config(tiny_config(tmp_path, tiny_model_dir, hub_model_id="my-org/tiny"), ["grpo.max_steps=2"])
    em_dir, grpo_dir = run_em_then_grpo(config)
    for directory in (em_dir, grpo_dir):
        files = {p.name for p in directory.iterdir()}
        # What push_to_hub would upload: weights, config, generation config, tokenizer and a model card.
        assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= files
        assert PHASE_MARKER in files
        AutoModelForCausalLM.from_pretrained(directory)
        AutoTokenizer.from_pretrained(directory)
        GenerationConfig.from_pretrained(directory)
    card = (grpo_dir / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert {"em-trainer", "entropy-minimization", "grpo", "em-then-grpo"} <= set(metadata["tags"])
    assert metadata["library_name"] == "transformers"
    assert "2505.20282" in card and "2505.15134" in card
    assert "my-org/tiny-em-grpo" in card  # the quick-start names the repo it would be pushed to
    assert "EM (before GRPO) optimizer steps | 2" in card and "GRPO optimizer steps | 2" in card
    assert "tests/fixtures/arithmetic_pool.jsonl" in card
    em_card = (em_dir / "README.md").read_text()
    assert "EM-FT" in em_card and "my-org/tiny-em" in em_card

    # A rerun skips both finished phases.
    capsys.readouterr()
    run_em_then_grpo(config)
    printed = capsys.readouterr().out
    assert "EM phase already complete" in printed and "GRPO phase already complete" in printed


def test_interrupted_phase_resumes_from_its_checkpoint(tmp_path, tiny_model_dir):
    config = load_config(tiny_config(tmp_path, tiny_model_dir))
    _, grpo_dir = run_em_then_grpo(config)
    # Simulate a crash after GRPO's first checkpoint: no marker, no final weights, no second checkpoint.
    (grpo_dir / PHASE_MARKER).unlink()
    (grpo_dir / "model.safetensors").unlink()
    shutil.rmtree(grpo_dir / "checkpoint-2")
    em_weights = (tmp_path / "run" / "em" / "model.safetensors").stat().st_mtime_ns
    run_em_then_grpo(config)
    assert (tmp_path / "run" / "em" / "model.safetensors").stat().st_mtime_ns == em_weights  # phase 1 untouched
    state = json.loads((grpo_dir / "checkpoint-2" / "trainer_state.json").read_text())
    steps = [log["step"] for log in state["log_history"] if "loss" in log]
    assert steps == [1, 2]  # step 1 kept from before the crash, step 2 trained after resuming
    assert (grpo_dir / PHASE_MARKER).is_file() and (grpo_dir / "model.safetensors").is_file()


@pytest.mark.parametrize("merge", [True, False])
def test_lora_phases_save_adapter_or_merged_weights(tmp_path, tiny_model_dir, merge):
    peft = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    config = load_config(tiny_config(tmp_path, tiny_model_dir, peft=peft, merge_on_save=merge))
    em_dir, grpo_dir = run_em_then_grpo(config)
    em_files = {p.name for p in em_dir.iterdir()}
    if merge:
        assert "model.safetensors" in em_files and "adapter_config.json" not in em_files
        merged = AutoModelForCausalLM.from_pretrained(em_dir)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        q_merged = merged.model.layers[0].self_attn.q_proj.weight
        assert not q_merged.equal(base.model.layers[0].self_attn.q_proj.weight)  # the adapter was folded in
    else:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= em_files and "model.safetensors" not in em_files
    assert (grpo_dir / PHASE_MARKER).is_file()


def test_config_errors(tmp_path, tiny_model_dir):
    with pytest.raises(PipelineConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\noutput_dir: y\nlearning_rate: 1\n")
    with pytest.raises(PipelineConfigError, match="learning_rate"):
        load_config(bad)
    with pytest.raises(PipelineConfigError, match="key=value"):
        load_config(tiny_config(tmp_path, tiny_model_dir), ["grpo.max_steps"])


def test_em_then_grpo_with_a_code_dataset_and_the_code_reward(tmp_path, tiny_model_dir):
    fixtures = str(Path(__file__).parent / "fixtures" / "benchmarks")
    overrides = ["grpo.reward=code", "grpo.dataset=livecodebench", f"grpo.data_dir={fixtures}", "grpo.max_steps=1",
                 "em.max_steps=1"]  # fmt: skip
    config = load_config(tiny_config(tmp_path, tiny_model_dir), overrides)
    _, grpo_dir = run_em_then_grpo(config)
    state = json.loads(next(grpo_dir.glob("checkpoint-*/trainer_state.json")).read_text())
    assert any("rewards/code_reward/mean" in log for log in state["log_history"])
    assert "tests pass in the sandbox" in (grpo_dir / "README.md").read_text()
    (tmp_path / "b").mkdir()
    with pytest.raises(PipelineConfigError, match="code benchmark"):  # before any EM step
        run_em_then_grpo(load_config(tiny_config(tmp_path / "b", tiny_model_dir), ["grpo.reward=code"]))
    assert not (tmp_path / "b" / "run" / "em").exists()


def _weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_orders_run_their_phases_from_the_right_weights(tmp_path, tiny_model_dir):
    """grpo_then_em: GRPO from the base model, then EM from GRPO's weights; grpo: no EM phase at all."""
    import torch

    # The same seed, data and settings: GRPO-first's GRPO phase and GRPO-alone's are the same training.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # A random tiny model earns no reward, so GRPO's gradient is zero: weight decay makes its update visible.
    decay = ["grpo.weight_decay=0.5"]
    alone = load_config(tiny_config(tmp_path / "a", tiny_model_dir, order="grpo"), decay)
    em_dir, grpo_alone = run_em_then_grpo(alone)
    assert em_dir is None and not (tmp_path / "a" / "run" / "em").exists()
    first = load_config(tiny_config(tmp_path / "b", tiny_model_dir, order="grpo_then_em"), decay)
    em_dir, grpo_dir = run_em_then_grpo(first)
    assert (em_dir / PHASE_MARKER).is_file() and (grpo_dir / PHASE_MARKER).is_file()
    base, grpo, after = _weights(Path(tiny_model_dir)), _weights(grpo_dir), _weights(em_dir)
    assert all(torch.allclose(grpo[k], _weights(grpo_alone)[k]) for k in grpo), "GRPO started from the base model"
    assert any(not torch.equal(base[k], grpo[k]) for k in grpo), "GRPO trained"
    assert any(not torch.equal(grpo[k], after[k]) for k in grpo), "EM trained after GRPO"
    card = (grpo_alone / "README.md").read_text()
    assert "none: GRPO from the base model" in card


def test_unknown_order_is_named(tmp_path, tiny_model_dir):
    with pytest.raises(PipelineConfigError, match="order: 'sideways'"):
        load_config(tiny_config(tmp_path, tiny_model_dir, order="sideways"))
