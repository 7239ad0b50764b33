"""The shared-prompt training forward against the plain one: same loss, same gradients, and its fallbacks."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig

from em_trainer.core.shared_prompt import distinct_prompts

from .test_loss_reference import inject_generate, make_trainer, scripted_completions


def rollout_batch(trainer, tokenizer):
    inject_generate(trainer, scripted_completions(tokenizer))
    rows = [trainer.train_dataset[0]] * 2 + [trainer.train_dataset[1]] * 2
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer._generate_and_score_completions(rows)


def loss_and_grads(trainer, batch, compute):
    model = trainer.model
    model.zero_grad()
    _, entropies, _ = compute(model, batch)
    mask = batch["completion_mask"]
    loss = (entropies * mask).sum() / mask.sum()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(trainer, batch):
    plain_loss, plain = loss_and_grads(trainer, batch, trainer._plain_logps_and_entropies)
    shared_loss, shared = loss_and_grads(trainer, batch, trainer._shared_logps_and_entropies)
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain.keys() == shared.keys() and plain
    for name, g_ref in plain.items():
        assert (shared[name] - g_ref).norm() <= 1e-4 * g_ref.norm() + 1e-12, name


def test_distinct_prompts_groups_identical_rows():
    ids = torch.tensor([[0, 5, 6], [1, 2, 3], [0, 5, 6], [1, 2, 3]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1]])
    first, inverse = distinct_prompts(ids, mask)
    assert torch.equal(ids[first][inverse], ids)
    assert sorted(first.tolist()) == [0, 1]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"gradient_checkpointing": True}, {"entropy_temperature": 0.8}, {"top_entropy_quantile": 0.5}],
)
def test_shared_equals_plain_with_left_padding_and_pad_eq_eos(tiny_model_dir, tokenizer, tmp_path, overrides):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, **overrides)
    batch = rollout_batch(trainer, tokenizer)
    assert batch["prompt_mask"].min() == 0, "two prompt lengths: left padding is exercised"
    assert_same(trainer, batch)


def test_shared_equals_plain_with_lora(tiny_model_dir, tokenizer, tmp_path):
    from datasets import Dataset

    from em_trainer import EMConfig, EMTrainer

    args = EMConfig(
        output_dir=str(tmp_path), responses_per_step=4, num_generations=2, per_device_train_batch_size=4,
        max_completion_length=6, gradient_checkpointing=True, report_to="none", shuffle_dataset=False,
    )  # fmt: skip
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p}]} for p in ("Hi", "A longer prompt, left-padded.")]
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = EMTrainer(model=tiny_model_dir, args=args, train_dataset=dataset, processing_class=tokenizer,
                        peft_config=lora)  # fmt: skip
    batch = rollout_batch(trainer, tokenizer)
    assert_same(trainer, batch)


def test_training_uses_the_shared_path_after_its_check(tiny_model_dir, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, max_steps=1)
    batch = rollout_batch(trainer, tokenizer)
    trainer.compute_loss(trainer.model, batch)
    assert trainer.shared_prompt.state == "on"
    assert trainer.shared_prompt.check["loss_relative_gap"] < 1e-6
    assert trainer.shared_prompt.check["grad_relative_gap"] < 1e-5


def test_a_disagreeing_shared_path_falls_back_and_says_why(tiny_model_dir, tokenizer, tmp_path, monkeypatch, caplog):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path)
    batch = rollout_batch(trainer, tokenizer)
    original = trainer._shared_logps_and_entropies

    def broken(model, inputs):  # a masking regression: one position too many counts
        logps, entropies, aux = original(model, inputs)
        return logps, entropies * 1.01, aux

    monkeypatch.setattr(trainer, "_shared_logps_and_entropies", broken)
    with caplog.at_level("INFO"):
        loss = trainer.compute_loss(trainer.model, batch)
    assert trainer.shared_prompt.state == "off"
    assert any("disagreed with the plain path" in r.getMessage() for r in caplog.records)
    trainer2 = make_trainer(tiny_model_dir, tokenizer, tmp_path / "b", shared_prompt_forward=False)
    trainer2.current_gradient_accumulation_steps = 1
    trainer2.model.train()
    torch.testing.assert_close(loss, trainer2.compute_loss(trainer2.model, batch))


@pytest.mark.slow
def test_shared_equals_plain_on_smollm2(smollm2_dir, tokenizer, tmp_path):
    trainer = make_trainer(smollm2_dir, tokenizer, tmp_path)
    batch = rollout_batch(trainer, tokenizer)
    assert_same(trainer, batch)


@pytest.mark.parametrize("kind", ["spread", "one row", "one vector"])
def test_gradient_sketch_estimates_the_gap_computed_from_the_full_tensors(kind):
    """The projections' mean squared difference against ||a - b|| summed entry by entry in float64."""
    from em_trainer.core.shared_prompt import gradient_sketch

    torch.manual_seed(0)
    a = [torch.randn(64, 48), torch.randn(48), torch.randn(200, 16), torch.randn(8, 4, 6)]
    b = [t.clone() for t in a]
    if kind == "spread":
        b = [t + 1e-3 * torch.randn_like(t) for t in a]
    elif kind == "one row":
        b[2][7] += 0.05
    else:
        b[1] += 0.05
    reference = math.sqrt(sum(float((x.double() - y.double()).pow(2).sum()) for x, y in zip(a, b, strict=True)))
    norm_a, sketch_a = gradient_sketch(tuple(a))
    _, sketch_b = gradient_sketch(tuple(b))
    estimate = float((sketch_a - sketch_b).pow(2).mean().sqrt())
    assert float(norm_a) == pytest.approx(math.sqrt(sum(float(x.double().pow(2).sum()) for x in a)), rel=1e-9)
    assert 0.5 * reference < estimate < 1.5 * reference, (estimate, reference)
    assert float((gradient_sketch(tuple(a))[1] - sketch_a).abs().max()) == 0.0, "the same directions every time"


def test_check_tolerances_follow_the_compute_precision():
    from em_trainer.core.shared_prompt import check_tolerances

    assert check_tolerances(torch.float32) == (1e-4, 1e-3)
    assert check_tolerances(torch.bfloat16) == (4 * 2**-7, 32 * 2**-7)
    assert check_tolerances(torch.float16) == (4 * 2**-10, 32 * 2**-10)


def wrong_prefix(trainer):
    """A grouping regression: every row continues another row's prompt."""
    original = trainer._shared_logps_and_entropies

    def broken(model, inputs):
        flipped = {**inputs, "prompt_ids": inputs["prompt_ids"].flip(0), "prompt_mask": inputs["prompt_mask"].flip(0)}
        return original(model, flipped)

    return broken


@pytest.mark.parametrize("model", ["tiny", "smollm2"])
def test_bf16_check_keeps_the_shared_path_and_still_refuses_a_wrong_prefix(
    model, tiny_model_dir, smollm2_dir, tokenizer, tmp_path, monkeypatch, request
):
    """bf16 rounding alone parts the two paths by more than float32's tolerance (it switched the shared path off on
    every bf16 run, the GPU check found); a real error still parts them by far more than bf16's."""
    if model == "smollm2":
        request.applymarker(pytest.mark.slow)
    path = tiny_model_dir if model == "tiny" else smollm2_dir
    trainer = make_trainer(path, tokenizer, tmp_path, model_init_kwargs={"dtype": "bfloat16"})
    batch = rollout_batch(trainer, tokenizer)
    trainer.compute_loss(trainer.model, batch)
    check = trainer.shared_prompt.check
    assert check["compute_dtype"] == "bfloat16" and check["grad_tolerance"] == 0.25
    assert trainer.shared_prompt.state == "on", check
    broken = make_trainer(path, tokenizer, tmp_path / "b", model_init_kwargs={"dtype": "bfloat16"})
    monkeypatch.setattr(broken, "_shared_logps_and_entropies", wrong_prefix(broken))
    broken.compute_loss(broken.model, rollout_batch(broken, tokenizer))
    assert broken.shared_prompt.state == "off"
    assert broken.shared_prompt.check["grad_relative_gap"] > 2 * broken.shared_prompt.check["grad_tolerance"]
    print(model, check, broken.shared_prompt.check)
