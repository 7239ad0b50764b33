"""One-shot EM on the real SmolLM2-135M-Instruct: 10 optimizer steps lower the entropy of fresh samples."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from em_trainer import EMConfig, EMTrainer, load_one_shot_dataset
from em_trainer.analysis import fresh_sample_entropy

pytestmark = pytest.mark.slow


def test_ten_steps_lower_entropy_of_fresh_samples(smollm2_dir, tokenizer, tmp_path):
    dataset = load_one_shot_dataset()
    prompt = dataset[0]["prompt"]
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    # Measured outside the trainer: new samples (another seed than training), entropy from a full-logits forward.
    before = fresh_sample_entropy(
        base, tokenizer, [prompt], num_samples=12, temperature=0.5, max_new_tokens=48, seed=123
    )
    del base

    args = EMConfig(
        output_dir=str(tmp_path / "em"),
        responses_per_step=4,
        max_completion_length=32,
        max_steps=10,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    trainer = EMTrainer(model=smollm2_dir, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 10

    after = fresh_sample_entropy(
        trainer.model, tokenizer, [prompt], num_samples=12, temperature=0.5, max_new_tokens=48, seed=123
    )
    print(f"\nbefore: {before}\nafter:  {after}")
    assert after.mean_entropy < 0.8 * before.mean_entropy, (before, after)
