"""EM training with vLLM rollouts (colocate, vLLM's CPU build): do the trained weights reach the engine?

``python vllm_train_check.py OUT.json {full,lora_em_rl}`` trains 2 optimizer steps on SmolLM2, then scores a fixed
continuation with the engine (prompt log-probabilities) and with the trained and the base HF models, and writes
the differences, the logged entropies and (full) the entropy of fresh HF samples before and after, as JSON.
``full``: EM-FT with every weight trained (the full-weight sync); ``lora_em_rl``: EM-RL with a LoRA adapter (the
merged-adapter sync and EM-RL's reward from vLLM rollouts), two paths that do not depend on each other checked in
one engine start-up. ``lora_em_rl`` also builds its engine eagerly (``vllm_enforce_eager``: no torch.compile, about
50 s less here) and reports whether it was; ``full`` keeps vLLM's default, the compiled engine a GPU user runs.
"""

from __future__ import annotations

import json
import sys
import time

import torch


def hf_logprobs(model, ids: list[int], start: int) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    log_p = torch.log_softmax(logits, -1)
    return torch.stack([log_p[i - 1, ids[i]] for i in range(start, len(ids))])


def main(out_path: str, mode: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams

    from em_trainer import EMConfig, EMTrainer, load_one_shot_dataset
    from em_trainer.data.models import resolve_model
    from em_trainer.evaluation.analysis import fresh_sample_entropy

    path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    peft_config = None
    if mode not in ("full", "lora_em_rl"):
        raise SystemExit(f"mode {mode!r}: use full or lora_em_rl")
    lora = mode == "lora_em_rl"
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    extra = {"objective": "neg_entropy_reward", "num_generations": 4} if mode == "lora_em_rl" else {}
    args = EMConfig(
        output_dir=f"{out_path}.run", responses_per_step=4, per_device_train_batch_size=4, max_completion_length=24,
        max_steps=2, use_vllm=True, vllm_mode="colocate", report_to="none", save_strategy="no",
        learning_rate={"full": 2e-4, "lora_em_rl": 4e-3}[mode], vllm_max_model_length=512, seed=0,
        vllm_enforce_eager=lora, **extra,
    )  # fmt: skip
    base = AutoModelForCausalLM.from_pretrained(path)
    prompts = [load_one_shot_dataset()[0]["prompt"]]
    report: dict = {"mode": mode}
    if mode == "full":
        report["fresh_entropy_before"] = fresh_sample_entropy(base, tokenizer, prompts, 4, 0.5, 48, 0).mean_entropy
    started = time.time()
    trainer = EMTrainer(model=path, args=args, peft_config=peft_config, processing_class=tokenizer)
    report["engine_start_s"] = time.time() - started
    report["engine_dtype"] = str(trainer.vllm_generation.llm.llm_engine.model_config.dtype)
    report["engine_enforce_eager"] = trainer.vllm_generation.llm.llm_engine.model_config.enforce_eager
    started = time.time()
    trainer.train()
    report["train_s"] = time.time() - started
    report["logged_entropy"] = [log["entropy"] for log in trainer.state.log_history if "entropy" in log]
    report["logged_rewards"] = [log.get("reward") for log in trainer.state.log_history if "reward" in log]
    trainer.vllm_generation.sync_weights()  # TRL syncs before each generation; push the weights of the last step too

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 35?"}], tokenize=False, add_generation_prompt=True
    )
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = prompt + tokenizer(" 12 + 35 = 47. The answer is 47.", add_special_tokens=False)["input_ids"]
    output = trainer.vllm_generation.llm.generate(
        [{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
    )
    engine = torch.tensor([output[0].prompt_logprobs[i][ids[i]].logprob for i in range(len(prompt), len(ids))])
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if lora:
        trained = trained.merge_and_unload()
    trained_lp = hf_logprobs(trained, ids, len(prompt))
    base_lp = hf_logprobs(base, ids, len(prompt))
    report["engine_vs_trained"] = {
        "max": float((engine - trained_lp).abs().max()),
        "mean": float((engine - trained_lp).abs().mean()),
    }
    report["base_vs_trained"] = {
        "max": float((base_lp - trained_lp).abs().max()),
        "mean": float((base_lp - trained_lp).abs().mean()),
    }
    if mode == "full":
        report["fresh_entropy_after"] = fresh_sample_entropy(trained, tokenizer, prompts, 4, 0.5, 48, 0).mean_entropy
    with open(out_path, "w") as handle:
        json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
