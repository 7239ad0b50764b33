"""Short end-to-end runs on a tiny random model: parameters move, entropy of fresh samples falls."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from em_trainer import EMConfig, EMTrainer
from em_trainer.evaluation.analysis import fresh_sample_entropy


def tiny_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        responses_per_step=8,
        per_device_train_batch_size=4,
        max_completion_length=12,
        max_steps=4,
        learning_rate=1e-2,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    values.update(overrides)
    return EMConfig(**values)


def test_training_moves_parameters_and_lowers_entropy(tiny_model_dir, tokenizer, tmp_path):
    prompt = [{"role": "user", "content": "What is 12 + 30?"}]
    before_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = fresh_sample_entropy(before_model, tokenizer, [prompt], num_samples=8, temperature=0.5, max_new_tokens=12)

    args = tiny_args(tmp_path)
    assert args.gradient_accumulation_steps == 2  # 8 responses = 2 micro-batches of 4
    trainer = EMTrainer(
        model=tiny_model_dir,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": prompt}]),
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 4

    trained = trainer.model
    changed = [
        name
        for (name, p0), (_, p1) in zip(before_model.named_parameters(), trained.named_parameters(), strict=True)
        if not torch.equal(p0, p1.detach().cpu())
    ]
    assert len(changed) == len(list(trained.parameters()))
    after = fresh_sample_entropy(trained, tokenizer, [prompt], num_samples=8, temperature=0.5, max_new_tokens=12)
    assert after.mean_entropy < 0.8 * before.mean_entropy, (before, after)

    logs = [log for log in trainer.state.log_history if "entropy" in log]
    assert len(logs) == 4
    for key in ("loss", "entropy", "grad_norm", "completions/mean_length", "learning_rate"):
        assert key in logs[0], key
    # The placeholder reward TRL needs internally stays out of the logs.
    assert not any(key.startswith("rewards/") or key == "reward" for log in logs for key in log)
    assert logs[-1]["entropy"] < logs[0]["entropy"]


def test_one_prompt_dataset_just_works(tiny_model_dir, tokenizer, tmp_path):
    """The paper's default shape (64 responses of one prompt) on a one-row dataset trains every step."""
    args = tiny_args(
        tmp_path, responses_per_step=None, per_device_train_batch_size=32, max_steps=2, max_completion_length=4
    )
    assert args.responses_per_step == 64 and args.num_generations == 64 and args.gradient_accumulation_steps == 2
    trainer = EMTrainer(model=tiny_model_dir, args=args, processing_class=tokenizer)  # default: the one-shot prompt
    assert len(trainer.train_dataset) == 1
    trainer.train()
    assert trainer.state.global_step == 2


def test_monitoring_rewards_are_logged_but_do_not_change_the_loss(tiny_model_dir, tokenizer, tmp_path):
    calls = []

    def contains_answer(completions, answer, **kwargs):
        calls.append(len(completions))
        return [float(a in str(c)) for c, a in zip(completions, answer, strict=True)]

    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "What is 2 + 2?"}], "answer": "4"}])
    runs = {}
    for name, rewards in (("plain", None), ("monitored", [contains_answer])):
        trainer = EMTrainer(
            model=tiny_model_dir,
            reward_funcs=rewards,
            args=tiny_args(tmp_path / name, max_steps=2),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer.train()
        runs[name] = [log for log in trainer.state.log_history if "loss" in log and "entropy" in log]
    assert calls, "the monitoring reward was never called"
    assert "rewards/contains_answer/mean" in runs["monitored"][0]
    for plain, monitored in zip(runs["plain"], runs["monitored"], strict=True):
        assert plain["loss"] == monitored["loss"]


def test_lora_run_saves_an_adapter(tiny_model_dir, tokenizer, tmp_path):
    from peft import LoraConfig

    args = tiny_args(tmp_path, max_steps=2, learning_rate=1e-3)
    trainer = EMTrainer(
        model=tiny_model_dir,
        args=args,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "model.safetensors" not in files

    from peft import AutoPeftModelForCausalLM

    reloaded = AutoPeftModelForCausalLM.from_pretrained(args.output_dir)
    lora_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero; training must move it"


def test_model_card_names_method_data_and_papers(tiny_model_dir, tokenizer, tmp_path):
    args = tiny_args(tmp_path, max_steps=1)
    trainer = EMTrainer(model=tiny_model_dir, args=args, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(args.output_dir)
    trainer.create_model_card(dataset_name="my-org/prompts")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "entropy-minimization" in card and "em-trainer" in card
    assert "2505.20282" in card and "2505.15134" in card  # both papers cited
    assert "my-org/prompts" in card and "sampling temperature | 0.5" in card
    assert "None" not in card.split("---")[2].split("## Citations")[0]


def test_save_at_steps_keeps_weights_and_only_the_newest_optimizer_state(tiny_model_dir, tmp_path):
    """`train --save_at_steps`: every listed checkpoint keeps its weights; AdamW state stays in the newest only."""
    import subprocess

    from .training_cli import ENV, train

    out = tmp_path / "run"
    first = subprocess.run(
        [*train(tiny_model_dir, out, 3), "--save_at_steps", "1,2,3"], capture_output=True, text=True, env=ENV
    )
    assert first.returncode == 0, first.stderr[-2000:]
    for step in (1, 2, 3):
        checkpoint = out / f"checkpoint-{step}"
        AutoModelForCausalLM.from_pretrained(checkpoint)  # the weights a study measures
        assert (checkpoint / "trainer_state.json").is_file()
        assert (checkpoint / "optimizer.pt").is_file() == (step == 3), step
    # A longer rerun resumes from the newest checkpoint, whose optimizer state is whole.
    second = subprocess.run(
        [*train(tiny_model_dir, out, 4), "--save_at_steps", "1,2,3,4"], capture_output=True, text=True, env=ENV
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert "checkpoint-3" in second.stdout + second.stderr
    assert not (out / "checkpoint-3" / "optimizer.pt").exists() and (out / "checkpoint-4" / "optimizer.pt").is_file()


def test_older_checkpoints_keep_weights_and_only_the_newest_keeps_optimizer_state(tiny_model_dir, tokenizer, tmp_path):
    """Cost: two 2-step runs of the tiny model (about 10 s alone). Before, every checkpoint kept AdamW's moments
    (1.1 GB a checkpoint for the 135M model) that nobody resumes from; keep_optimizer_state='all' keeps Trainer's."""
    for keep, older_whole in (("latest", False), ("all", True)):
        args = tiny_args(tmp_path / keep, max_steps=2, save_strategy="steps", save_steps=1, keep_optimizer_state=keep)
        EMTrainer(model=tiny_model_dir, args=args, processing_class=tokenizer).train()
        older, newest = tmp_path / keep / "out" / "checkpoint-1", tmp_path / keep / "out" / "checkpoint-2"
        AutoModelForCausalLM.from_pretrained(older)  # the weights stay either way
        assert (older / "optimizer.pt").is_file() == older_whole and (older / "scheduler.pt").is_file() == older_whole
        assert (newest / "optimizer.pt").is_file() and (newest / "scheduler.pt").is_file()
