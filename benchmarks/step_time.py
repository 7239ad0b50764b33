"""Seconds per optimizer step and peak memory of one-shot EM, three ways, on the same model, prompt and batch.

(a) EMTrainer (default settings, and with gradient checkpointing off);
(b) a loop written the way the official one-shot-em code works: HF generate with the KV cache off, then a forward
    pass that materialises the full logits and takes the entropy from them;
(c) plain TRL GRPOTrainer configured as EM: a zero reward and entropy_coef=-1 (its entropy bonus turned into a
    penalty), everything else at TRL's defaults.

Each variant runs in its own process, so peak memory (max RSS during training, minus RSS after loading) is its own.
The script also measures a plain fp32 matmul to put the achieved FLOP/s of a step in context.

    python benchmarks/step_time.py                      # all variants, 8 responses x 64 tokens
    python benchmarks/step_time.py --variants a,c --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

VARIANTS = {
    "a": "EMTrainer (default: shared-prompt forward, activation checkpointing on)",
    "a-plain": "EMTrainer, shared_prompt_forward=False (prompt + completion per response)",
    "a-nockpt": "EMTrainer, gradient_checkpointing=False",
    "a-trlgen": "EMTrainer, cpu_fast_rollouts=False (HF generate's own KV cache and matrix products)",
    "a-bf16": "EMTrainer, rollout_dtype='bfloat16' (rollouts' matrix products in bf16)",
    "b": "official-style loop (generate without KV cache + full logits)",
    "c": "TRL GRPOTrainer as EM (zero reward, entropy_coef=-1)",
}


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def step_flops(
    model, prompt_len: int, responses: int, completion_len: int, checkpointing: bool, shared: bool = False
) -> float:
    """Matmul FLOPs of one step: generation with a KV cache, plus forward/backward of the training pass.

    With the shared-prompt forward the training pass computes the prompt once (without checkpointing).
    """
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    body = total - head if model.config.tie_word_embeddings else total - 2 * head
    generation = 2 * body * responses * (prompt_len + completion_len) + 2 * head * responses * completion_len
    train_tokens = responses * (prompt_len + completion_len)
    if shared:
        train_tokens, checkpointing = prompt_len + responses * (1 + completion_len), False
    forward = 2 * body * train_tokens + 2 * head * responses * completion_len
    passes = 4 if checkpointing else 3  # forward + backward (2x), plus a recomputed forward when checkpointing
    return generation + forward * passes


def time_parts(trainer) -> dict[str, list[float]]:
    """Seconds spent in generation and in the loss forward, per call (the rest of a step: backward and optimizer)."""
    parts: dict[str, list[float]] = {"generation": [], "loss_forward": []}
    for name, key in (("_generate", "generation"), ("compute_loss", "loss_forward")):
        original = getattr(trainer, name)

        def timed(*args, _original=original, _key=key, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                parts[_key].append(time.perf_counter() - start)

        setattr(trainer, name, timed)
    return parts


def train_timed(trainer) -> tuple[bool, object, float, dict[str, list[float]]]:
    """Train with generation and the loss forward timed; returns what the report needs."""
    baseline = rss_mib()
    parts = time_parts(trainer)
    trainer.train()
    return trainer.args.gradient_checkpointing, trainer.model, baseline, parts


def run_variant(variant: str, steps: int, responses: int, completion_len: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from em_trainer import EMConfig, EMTrainer, load_one_shot_dataset
    from em_trainer.core.objectives import token_entropy_from_logits
    from em_trainer.data.models import resolve_model

    torch.manual_seed(0)
    model_dir = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    dataset = load_one_shot_dataset()
    prompt_text = tokenizer.apply_chat_template(dataset[0]["prompt"], tokenize=False, add_generation_prompt=True)
    prompt_len = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    times: list[float] = []
    common = dict(
        output_dir="/tmp/em-bench-" + variant,
        max_steps=steps,
        max_completion_length=completion_len,
        temperature=0.5,
        learning_rate=2e-5,
        lr_scheduler_type="constant",
        per_device_train_batch_size=responses,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        seed=0,
        bf16=False,
    )

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    # Generation happens inside the first micro-batch of a step (after on_step_begin), so it is timed.
    if variant in ("a", "a-nockpt", "a-plain", "a-trlgen", "a-bf16"):
        args = EMConfig(
            responses_per_step=responses,
            gradient_checkpointing=(variant != "a-nockpt"),
            shared_prompt_forward=(variant != "a-plain"),
            cpu_fast_rollouts=(variant != "a-trlgen"),
            rollout_dtype="bfloat16" if variant == "a-bf16" else None,
            **common,
        )
        trainer = EMTrainer(
            model_dir, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[Timer()]
        )
        checkpointing, model, baseline, parts = train_timed(trainer)
    elif variant == "c":
        from trl import GRPOConfig, GRPOTrainer

        def zero_reward(completions, **kwargs):
            return [0.0] * len(completions)

        args = GRPOConfig(num_generations=responses, entropy_coef=-1.0, beta=0.0, **common)
        trainer = GRPOTrainer(
            model_dir,
            reward_funcs=zero_reward,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Timer()],
        )
        checkpointing, model, baseline, parts = train_timed(trainer)
    elif variant == "b":
        checkpointing = False
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
        encoded = tokenizer([prompt_text] * responses, return_tensors="pt", add_special_tokens=False)
        eos = tokenizer.eos_token_id
        baseline = rss_mib()
        for _ in range(steps):
            start = time.perf_counter()
            model.eval()
            with torch.no_grad():
                output = model.generate(
                    **encoded,
                    do_sample=True,
                    temperature=0.5,
                    top_p=1.0,
                    top_k=0,
                    max_new_tokens=completion_len,
                    use_cache=False,
                    pad_token_id=eos,
                )
            model.train()
            completion = output[:, prompt_len:]
            is_eos = completion == eos
            first = torch.where(is_eos.any(1), is_eos.int().argmax(1), completion.shape[1])
            mask = (torch.arange(completion.shape[1]).unsqueeze(0) <= first.unsqueeze(1)).float()
            attention = torch.cat([encoded["attention_mask"], mask.long()], dim=1)
            logits = model(input_ids=output, attention_mask=attention).logits[:, prompt_len - 1 : -1]
            entropy = token_entropy_from_logits(logits, 0.5)
            loss = (entropy * mask).sum() / mask.sum()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - start)
    else:
        raise SystemExit(f"unknown variant {variant}; choose from {', '.join(VARIANTS)}")

    peak = rss_mib()
    measured = times[1:] if len(times) > 1 else times  # the first step pays one-off warm-up costs
    breakdown = {}
    if variant != "b":
        per_step = max(1, len(parts["loss_forward"]) // max(len(times), 1))
        generation = parts["generation"][1:] if len(parts["generation"]) > 1 else parts["generation"]
        calls = parts["loss_forward"]
        forward = [sum(calls[i : i + per_step]) for i in range(0, len(calls), per_step)]
        forward = forward[1:] if len(forward) > 1 else forward
        breakdown = {
            "generation_s": statistics.median(generation) if generation else None,
            "loss_forward_s": statistics.median(forward) if forward else None,
        }
        if breakdown["generation_s"] is not None and breakdown["loss_forward_s"] is not None:
            breakdown["backward_and_optimizer_s"] = statistics.median(measured) - sum(breakdown.values())
    seconds = statistics.median(measured)
    policy = getattr(trainer, "shared_prompt", None)
    shared = variant in ("a", "a-trlgen", "a-bf16") and getattr(policy, "state", None) == "on"
    flops = step_flops(model, prompt_len, responses, completion_len, checkpointing, shared)
    return {
        "variant": variant,
        "description": VARIANTS[variant],
        "seconds_per_step": seconds,
        "step_times": times,
        "peak_rss_mib": peak,
        "train_peak_mib": peak - baseline,
        "step_tflop": flops / 1e12,
        "achieved_gflops": flops / seconds / 1e9,
        "prompt_tokens": prompt_len,
        "breakdown": breakdown,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="a,a-plain,c")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per variant; the first is not timed")
    parser.add_argument("--steps-b", type=int, default=2, help="steps of the slow official-style loop")
    parser.add_argument("--responses", type=int, default=8)
    parser.add_argument("--completion-len", type=int, default=64)
    parser.add_argument("--output", default="benchmarks/results/step_time.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    options = parser.parse_args()

    if options.worker:
        steps = options.steps_b if options.worker == "b" else options.steps
        result = run_variant(options.worker, steps, options.responses, options.completion_len)
        print("RESULT " + json.dumps(result), flush=True)
        return

    gflops = matmul_gflops()
    print(f"fp32 matmul on this machine: {gflops:.0f} GFLOP/s", flush=True)
    results = {}
    for variant in options.variants.split(","):
        command = [sys.executable, __file__, "--worker", variant, "--steps", str(options.steps)]
        command += ["--steps-b", str(options.steps_b), "--responses", str(options.responses)]
        command += ["--completion-len", str(options.completion_len)]
        print(f"running ({variant}) {VARIANTS[variant]} ...", flush=True)
        output = subprocess.run(command, capture_output=True, text=True)
        line = next((x for x in output.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(output.stdout[-3000:], output.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"variant {variant} failed")
        results[variant] = json.loads(line[len("RESULT ") :])
        r = results[variant]
        print(
            f"  {r['seconds_per_step']:.1f} s/step (steps: {', '.join(f'{t:.1f}' for t in r['step_times'])}), "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB (+{r['train_peak_mib']:.0f} MiB training), "
            f"{r['step_tflop']:.2f} TFLOP/step -> {r['achieved_gflops']:.0f} GFLOP/s "
            f"({r['achieved_gflops'] / gflops:.0%} of matmul peak)",
            flush=True,
        )

    print(f"\n{options.responses} responses x {options.completion_len} tokens per step, SmolLM2-135M-Instruct, CPU")
    print("| variant | s/step | peak RSS (MiB) | training peak (MiB) | GFLOP/s achieved |")
    print("| --- | --- | --- | --- | --- |")
    for r in results.values():
        print(
            f"| ({r['variant']}) {r['description']} | {r['seconds_per_step']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['train_peak_mib']:.0f} | {r['achieved_gflops']:.0f} |"
        )
    for ours in ("a", "a-nockpt"):
        for other in ("b", "c"):
            if ours in results and other in results:
                ratio = results[other]["seconds_per_step"] / results[ours]["seconds_per_step"]
                print(f"speed-up of ({ours}) over ({other}): {ratio:.2f}x")
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    Path(options.output).write_text(json.dumps({"matmul_gflops": gflops, "results": results}, indent=2))
    print(f"results written to {options.output}")


if __name__ == "__main__":
    main()
