"""Each prompt prefilled once: HF generation (training rollouts, eval/select with n > 1) and the no-grad passes."""

from __future__ import annotations

import logging

import pytest
import torch

from em_trainer.core import trainer as trainer_module
from em_trainer.core.shared_prefill import generate_with_shared_prefill
from em_trainer.decoding.generation import HFGenerator, SamplingSettings

from .conftest import build_tiny_model
from .test_loss_reference import inject_generate, make_trainer, scripted_completions

PROMPTS = ["Hi", "A much longer prompt, so that the other one is left-padded."]


def backbone_batches(model) -> list[tuple[int, int]]:
    """Records (rows, positions) of every backbone call."""
    shapes: list[tuple[int, int]] = []
    model.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    return shapes


def repeated_encoding(tokenizer, copies: int):
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    return encoded["input_ids"].repeat_interleave(copies, 0), encoded["attention_mask"].repeat_interleave(copies, 0)


@pytest.mark.parametrize("sample", [False, True])
def test_shared_prefill_generates_what_generate_does(tokenizer, sample):
    model = build_tiny_model(tokenizer).eval()
    input_ids, attention_mask = repeated_encoding(tokenizer, 3)
    assert attention_mask.min() == 0, "left padding is exercised"
    kwargs = dict(max_new_tokens=12, do_sample=sample, pad_token_id=tokenizer.pad_token_id)
    if sample:
        kwargs.update(temperature=0.9, top_p=1.0, top_k=0)
    torch.manual_seed(0)
    plain = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    shapes = backbone_batches(model)
    torch.manual_seed(0)
    shared = generate_with_shared_prefill(model, input_ids, attention_mask, **kwargs)
    assert torch.equal(shared, plain)
    length = input_ids.size(1)
    assert shapes[0] == (2, length - 1), "one prefill row per distinct prompt"
    assert all(rows == 6 and positions == 1 for rows, positions in shapes[1:]), "then one token per step"


def test_distinct_prompts_fall_back_to_plain_generate(tokenizer):
    model = build_tiny_model(tokenizer).eval()
    input_ids, attention_mask = repeated_encoding(tokenizer, 1)
    shapes = backbone_batches(model)
    generate_with_shared_prefill(model, input_ids, attention_mask, max_new_tokens=2, do_sample=False)
    assert shapes[0] == tuple(input_ids.shape)


def test_hf_generator_samples_equal_num_return_sequences(tokenizer):
    model = build_tiny_model(tokenizer)
    settings = SamplingSettings(temperature=0.8, n=3, max_new_tokens=10, seed=7)
    got = HFGenerator(model, tokenizer).generate(PROMPTS, settings)
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(7)
    want = model.generate(
        **encoded, num_return_sequences=3, do_sample=True, temperature=0.8, top_p=1.0, top_k=0, max_new_tokens=10,
        pad_token_id=tokenizer.pad_token_id,
    )[:, encoded["input_ids"].size(1) :]  # fmt: skip
    eos = tokenizer.eos_token_id
    for i, samples in enumerate(got):
        for j, completion in enumerate(samples):
            ids = want[i * 3 + j].tolist()
            expected = ids[: ids.index(eos) + 1] if eos in ids else ids
            assert completion.token_ids == expected


def test_training_rollouts_prefill_each_prompt_once(tiny_model_dir, tokenizer, tmp_path):
    completions = {}
    for shared in (True, False):
        trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path / str(shared), shared_prompt_forward=shared)
        shapes = backbone_batches(trainer.model)
        rows = [trainer.train_dataset[0]] * 2 + [trainer.train_dataset[1]] * 2
        trainer.model.train()
        torch.manual_seed(0)
        batch = trainer._generate_and_score_completions(rows)
        completions[shared] = batch["completion_ids"]
        prompt_length = batch["prompt_ids"].size(1)
        assert shapes[0] == ((2, prompt_length - 1) if shared else (4, prompt_length))
        assert "generate" not in vars(trainer.model), "the generate patch is undone"
    assert torch.equal(completions[True], completions[False])


@pytest.mark.parametrize(
    "overrides", [{"beta": 0.1}, {"num_iterations": 2}, {"num_iterations": 2, "gradient_checkpointing": True}]
)
def test_no_grad_passes_share_the_prompt_and_match_plain(tiny_model_dir, tokenizer, tmp_path, overrides):
    """TRL's reference and old-log-prob passes: shared path taken (and checked), same values as the plain path."""
    batches = {}
    for shared in (True, False):
        trainer = make_trainer(
            tiny_model_dir, tokenizer, tmp_path / str(shared), shared_prompt_forward=shared, **overrides
        )
        inject_generate(trainer, scripted_completions(tokenizer))
        rows = [trainer.train_dataset[0]] * 2 + [trainer.train_dataset[1]] * 2
        trainer.model.train()
        batches[shared] = trainer._generate_and_score_completions(rows)
        assert trainer.shared_prompt.state == ("on" if shared else "off")
    key = "ref_per_token_logps" if "beta" in overrides else "old_per_token_logps"
    mask = batches[False]["completion_mask"].bool()
    assert torch.allclose(batches[True][key][mask], batches[False][key][mask], atol=1e-5, rtol=1e-5)


def test_em_rl_reward_pass_is_shared(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, objective="neg_entropy_reward")
    calls = []
    original = trainer_module.shared_prompt_logps_and_entropies
    monkeypatch.setattr(
        trainer_module, "shared_prompt_logps_and_entropies", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    inject_generate(trainer, scripted_completions(tokenizer))
    trainer.model.train()
    trainer._generate_and_score_completions([trainer.train_dataset[0]] * 2 + [trainer.train_dataset[1]] * 2)
    assert calls and trainer.shared_prompt.state == "on"


def test_a_disagreeing_no_grad_pass_falls_back_and_says_why(tiny_model_dir, tokenizer, tmp_path, monkeypatch, caplog):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, beta=0.1)
    original = trainer_module.shared_prompt_logps_and_entropies

    def masking_regression(*args, **kwargs):
        logps, entropies = original(*args, **kwargs)
        return logps * 1.5, entropies

    monkeypatch.setattr(trainer_module, "shared_prompt_logps_and_entropies", masking_regression)
    inject_generate(trainer, scripted_completions(tokenizer))
    trainer.model.train()
    rows = [trainer.train_dataset[0]] * 2 + [trainer.train_dataset[1]] * 2
    with caplog.at_level(logging.WARNING):
        batch = trainer._generate_and_score_completions(rows)
    assert trainer.shared_prompt.state == "off"
    assert "disagreed with the plain path" in caplog.text
    with torch.no_grad():
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        plain, _, _ = trainer_module.GRPOTrainer._get_per_token_logps_and_entropies(
            trainer, trainer.ref_model, input_ids, mask, batch["completion_ids"].size(1)
        )
    assert torch.allclose(batch["ref_per_token_logps"], plain, atol=1e-6)


@pytest.mark.parametrize("objective", ["neg_entropy_reward", "grpo"])
def test_the_first_use_check_runs_once_when_a_no_grad_pass_comes_first(tiny_model_dir, tokenizer, tmp_path,
                                                                       objective):  # fmt: skip
    """The check's own plain pass is a no-grad pass too: before, it started the check again, recursing (one forward
    per level) until Python's limit, which made each GRPO step of the CPU label-free study take minutes."""
    def constant(completions, **kwargs):
        return [1.0] * len(completions)

    # GRPO: the reference pass (beta > 0) is its first no-grad pass.
    extra = {"reward_funcs": [constant], "beta": 0.1} if objective == "grpo" else {}
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, objective=objective, **extra)
    calls = []
    original = trainer._shared_prompt_check_outcome
    trainer._shared_prompt_check_outcome = lambda inputs: calls.append(1) or original(inputs)
    inject_generate(trainer, scripted_completions(tokenizer))
    trainer.model.train()
    trainer._generate_and_score_completions([trainer.train_dataset[0]] * 2 + [trainer.train_dataset[1]] * 2)
    assert calls == [1] and trainer.shared_prompt.state == "on", trainer.shared_prompt
