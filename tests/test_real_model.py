"""One-shot EM on the real SmolLM2-135M-Instruct: 10 optimizer steps lower the entropy of fresh samples."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from em_trainer import EMConfig, EMTrainer, load_one_shot_dataset
from em_trainer.evaluation.analysis import fresh_sample_entropy

pytestmark = pytest.mark.slow


def test_ten_steps_lower_entropy_of_fresh_samples(smollm2_dir, tokenizer, tmp_path):
    """Cost (about 130 s): ten EM steps on the real SmolLM2-135M with entropy measured on fresh samples before and
    after: the one end-to-end proof that the method does on a real model what the paper says."""
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


def test_smollm2_scores_on_arithmetic_and_not_on_gsm8k(smollm2_dir, tmp_path):
    """The built-in arithmetic set gives a tiny model a measurable score, unlike GSM8K (the reason it exists)."""
    import json

    from em_trainer.cli import main

    fixtures = str(__import__("pathlib").Path(__file__).resolve().parent / "fixtures" / "benchmarks")
    out = tmp_path / "eval"
    code = main(
        ["eval", "--model", smollm2_dir, "--benchmarks", "arithmetic,gsm8k", "--data-dir", fixtures, "--limit", "16",
         "--max-new-tokens", "96", "--batch-size", "16", "--output-dir", str(out)]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())[0]["benchmarks"]
    assert 0 < summary["arithmetic"]["accuracy"] < 1
    assert summary["arithmetic"]["total"] == 16 and summary["gsm8k"]["total"] == 5


def test_select_on_smollm2_picks_a_max_variance_prompt(smollm2_dir, tmp_path):
    """Cost (about 25 s): selection samples k responses per pool prompt from the real SmolLM2, whose answers vary (a
    tiny random model's never would)."""
    import json
    from pathlib import Path

    from em_trainer.cli import main

    pool = Path(__file__).resolve().parent / "fixtures" / "arithmetic_pool.jsonl"
    out = tmp_path / "selected.jsonl"
    code = main(
        ["select", "--model", smollm2_dir, "--pool", str(pool), "--k", "4", "--max-new-tokens", "96",
         "--batch-size", "8", "--output", str(out)]
    )  # fmt: skip
    assert code == 0
    selected = json.loads(out.read_text().splitlines()[0])
    ranking = json.loads((tmp_path / "selected.report.json").read_text())["ranking"]
    assert len(ranking) == 8
    assert 0 < selected["pass_rate"] < 1
    assert selected["variance"] == max(r["variance"] for r in ranking)


def test_em_rl_on_smollm2_lowers_entropy(smollm2_dir, tokenizer, tmp_path):
    """Cost (about 100 s): EM-RL with the token reward on the real SmolLM2-135M: a short GRPO run raises the reward,
    i.e. lowers the entropy of fresh samples. Without gradient checkpointing, which the tiny-model tests run."""
    dataset = load_one_shot_dataset()
    prompt = dataset[0]["prompt"]
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    before = fresh_sample_entropy(base, tokenizer, [prompt], num_samples=8, temperature=1.0, max_new_tokens=32, seed=5)
    del base
    args = EMConfig(
        output_dir=str(tmp_path / "emrl"),
        objective="neg_entropy_reward",
        em_reward="token",
        temperature=1.0,
        num_generations=4,
        responses_per_step=4,
        learning_rate=2e-5,
        max_completion_length=32,
        max_steps=8,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    trainer = EMTrainer(model=smollm2_dir, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    rewards = [log["rewards/neg_entropy_token/mean"] for log in trainer.state.log_history if "reward" in log]
    assert len(rewards) == 8
    after = fresh_sample_entropy(
        trainer.model, tokenizer, [prompt], num_samples=8, temperature=1.0, max_new_tokens=32, seed=5
    )
    print(f"\nEM-RL rewards per step: {[round(r, 3) for r in rewards]}\nbefore: {before}\nafter:  {after}")
    # The token reward is minus the mean entropy: measured on fresh samples, outside the trainer, it went up.
    assert -after.mean_entropy > -before.mean_entropy


def test_a_plain_prompt_on_the_embedded_chat_model_is_handled_as_documented(smollm2_dir, tokenizer, tmp_path):
    """Cost (about 20 s): two one-step runs on the real SmolLM2-135M-Instruct. A plain-text prompt column, loaded as
    `em-trainer train` loads it (plain_prompts='chat'), trains on real responses; loaded raw (TRL's format, the
    Python default) the chat model ends most responses at once, and the first step stops with the cause."""
    import json

    from em_trainer import load_prompt_dataset
    from em_trainer.core.config import EMConfigError

    source = tmp_path / "plain.jsonl"
    source.write_text(json.dumps({"prompt": "What is 12 + 7?"}) + "\n")

    def run(plain_prompts: str) -> EMTrainer:
        dataset = load_prompt_dataset(str(source), plain_prompts=plain_prompts)
        args = EMConfig(output_dir=str(tmp_path / plain_prompts), responses_per_step=8, max_completion_length=16,
                        max_steps=1, temperature=1.0, gradient_checkpointing=False, save_strategy="no",
                        report_to="none", seed=0)  # fmt: skip
        trainer = EMTrainer(model=smollm2_dir, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
        return trainer

    assert load_prompt_dataset(str(source), plain_prompts="chat")[0]["prompt"] == [
        {"role": "user", "content": "What is 12 + 7?"}
    ]
    assert run("chat").state.global_step == 1
    with pytest.raises(EMConfigError, match="one token long.*plain-text prompt on a chat model"):
        run("raw")
