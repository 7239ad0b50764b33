"""LoRA outputs are models like any other, and the defects found by trying and by reading stay fixed (each test here
failed before its fix)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from em_trainer.cli import main
from em_trainer.data.identity import model_identity

from .training_cli import TINY, pipeline_config

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA run's output: `train --use_peft` saves an adapter folder (no config.json)."""
    out = tmp_path_factory.mktemp("lora-run")
    code = main(["train", "--model", tiny_model_dir, "--output_dir", str(out), "--max_steps", "2", *TINY,
                 "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj",
                 "v_proj"])  # fmt: skip
    assert code == 0
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").is_file()
    return str(out)


def test_eval_generate_select_and_analyze_accept_an_adapter_folder(adapter_dir, tiny_model_dir, tmp_path, capsys):
    from em_trainer.data.models import resolve_model

    merged = AutoModelForCausalLM.from_pretrained(resolve_model(adapter_dir))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not merged.model.layers[0].self_attn.q_proj.weight.equal(base.model.layers[0].self_attn.q_proj.weight)

    out = tmp_path / "ev"
    assert main(["eval", "--model", adapter_dir, "--benchmarks", "arithmetic", "--limit", "2", "--max_new_tokens", "2",
                 "--output_dir", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert f"LoRA on {tiny_model_dir}" in summary[0]["model"]  # the report names the base
    identity = json.loads(next(out.rglob("identity.json")).read_text())
    assert identity["generator"]["model"]["base_model"] == model_identity(tiny_model_dir)

    assert main(["generate", "--model", adapter_dir, "--prompt", "Hi", "--max_new_tokens", "2"]) == 0
    assert main(["select", "--model", adapter_dir, "--pool", str(FIXTURES / "arithmetic_pool.jsonl"), "--limit", "2",
                 "--k", "2", "--max_new_tokens", "2", "--output", str(tmp_path / "sel.jsonl")]) == 0  # fmt: skip
    assert main(["analyze", "logits", "--model", f"lora={adapter_dir}", "--max_new_tokens", "2", "--samples", "1",
                 "--output_dir", str(tmp_path / "an")]) == 0  # fmt: skip


def test_sweep_evaluation_of_a_lora_run(adapter_dir, tmp_path):
    from em_trainer.workflows.sweep import evaluate_model

    scores = evaluate_model(Path(adapter_dir), ["arithmetic"], tmp_path / "ev", {"limit": 2, "max_new_tokens": 2})
    assert 0.0 <= scores["arithmetic"] <= 1.0


def test_train_log_completions_completes(tiny_model_dir, tmp_path):
    """TRL's documented --log_completions printed the completions table after step 1 and crashed (IndexError)."""
    code = main(["train", "--model", tiny_model_dir, "--output_dir", str(tmp_path / "o"), "--max_steps", "2", *TINY,
                 "--log_completions", "true"])  # fmt: skip
    assert code == 0


def test_early_stopping_restores_the_best_lora_adapter(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import TrainerControl, TrainerState

    from em_trainer.core.callbacks import DevSetEarlyStopping

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False),
    )
    scores = iter([1.0, 0.5])
    stopping = DevSetEarlyStopping(lambda m: next(scores), eval_steps=1, patience=5)
    args, state, control = SimpleNamespace(output_dir=str(tmp_path)), TrainerState(), TrainerControl()
    lora = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    state.global_step = 1
    stopping.on_step_end(args, state, control, model=model)
    best = lora.detach().clone()
    with torch.no_grad():
        lora.add_(1.0)  # a worse step
    state.global_step = 2
    stopping.on_step_end(args, state, control, model=model)
    stopping.on_train_end(args, state, control, model=model)
    assert lora.equal(best)


def test_sweep_final_loss_is_the_last_logged_step_after_an_early_stop(tmp_path):
    from em_trainer.workflows.sweep import loss_by_step

    checkpoint = tmp_path / "checkpoint-5"
    checkpoint.mkdir()
    logs = [{"step": s, "loss": 1.0 / s} for s in range(1, 8)]
    (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": logs[:5]}))
    (checkpoint / "model.safetensors").write_text("x")
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": logs}))  # stopped at step 7
    losses = loss_by_step(tmp_path)
    assert max(losses) == 7 and losses[7] == pytest.approx(1 / 7)


def test_a_grid_of_strings_is_plotted(tmp_path):
    from em_trainer.workflows.sweep import plot_over_field

    records = [{"fields": {"em_reward": r}, "scores": {"arithmetic": s}} for r, s in
               (("token", 0.1), ("trajectory", 0.2), ("token", 0.3))]  # fmt: skip
    path = plot_over_field(records, "em_reward", tmp_path / "p.png")
    assert path.stat().st_size > 1000


def test_em_rl_refuses_a_second_entropy_temperature():
    from em_trainer.core.config import EMConfig, EMConfigError

    with pytest.raises(EMConfigError, match="sampling temperature"):
        EMConfig("o", objective="neg_entropy_reward", temperature=0.5, entropy_temperature=1.0)
    EMConfig("o", objective="entropy_loss", temperature=0.5, entropy_temperature=1.0)  # EM-FT keeps it
    EMConfig("o", objective="neg_entropy_reward", temperature=0.5, entropy_temperature=0.5)


def test_recipe_lora_merge_push_uploads_full_weights_and_grpo_starts_from_them(tiny_model_dir, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    """With LoRA, merge_on_save and push_to_hub, the push saved the trainer's model again: an adapter that
    merge_and_unload had emptied, which also made the GRPO phase start from the base model."""
    from em_trainer.workflows.em_then_grpo import load_config, run_em_then_grpo

    uploads = []

    class Hub:
        def create_repo(self, name, **kwargs):
            return SimpleNamespace(repo_id=name)

        def upload_folder(self, repo_id, folder_path, **kwargs):
            files = sorted(p.name for p in Path(folder_path).iterdir())
            uploads.append((repo_id, files))

    monkeypatch.setattr("transformers.trainer.hf_api", lambda: Hub())
    peft = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}
    config = load_config(pipeline_config(tmp_path, tiny_model_dir, peft=peft, merge_on_save=True, push_to_hub=True,
                                         hub_model_id="org/tiny"))  # fmt: skip
    em_dir, grpo_dir = run_em_then_grpo(config)
    assert [repo for repo, _ in uploads] == ["org/tiny-em", "org/tiny-em-grpo"]
    for _, files in uploads:
        assert "model.safetensors" in files and "adapter_config.json" not in files, files
    em = AutoModelForCausalLM.from_pretrained(em_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not em.model.layers[0].self_attn.q_proj.weight.equal(base.model.layers[0].self_attn.q_proj.weight)
    assert "merged" in (em_dir / "README.md").read_text()


def test_a_lora_adapter_of_the_embedded_model_names_its_hub_base_and_its_data(tiny_model_dir, tmp_path):
    """Before: adapter_config.json and the card named this machine's cache folder as the base, and a card written
    from Python said "training data: unknown". The base here is a copy of the tiny model marked as the embedded
    model's conversion (as resolve_model marks it), so its Hub id is known."""
    import shutil

    from datasets import Dataset

    from em_trainer import EMConfig, EMTrainer
    from em_trainer.data.models import BASE_SIDECAR, adapter_base, resolve_model

    base = tmp_path / "embedded-conversion"
    shutil.copytree(tiny_model_dir, base)
    (base / ".complete").write_text("/somewhere/SmolLM2-135M-Instruct.Q4_1.gguf\n")
    out = tmp_path / "lora"
    assert main(["train", "--model", str(base), "--output_dir", str(out), "--max_steps", "1", *TINY,
                 "--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj"]) == 0  # fmt: skip
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert json.loads((out / BASE_SIDECAR).read_text())["local_base"] == str(base)
    card = (out / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and str(base) not in card
    assert adapter_base(out) == str(base)  # here, em-trainer still loads the exact weights it trained on
    assert AutoModelForCausalLM.from_pretrained(resolve_model(str(out))) is not None

    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "What is 2 + 2?"}]}] * 2)
    args = EMConfig(output_dir=str(tmp_path / "py"), responses_per_step=4, max_completion_length=4, max_steps=1,
                    report_to="none", gradient_checkpointing=False)  # fmt: skip
    trainer = EMTrainer(model=str(base), args=args, train_dataset=dataset)
    trainer.create_model_card()
    card = (tmp_path / "py" / "README.md").read_text()
    assert "training data: unknown" not in card and "2 prompt(s) given in Python" in card
