"""The GPU paths of em-trainer in one run, written to one JSON: what a CPU machine cannot check.

On a CUDA machine, for a randomly initialised model of a real architecture and size (the Qwen2.5-1.5B config, bf16,
SDPA attention, and flash attention when installed):

- versions of everything that ran, and the device;
- the shared-prompt forward against the plain one on the device (relative loss and gradient gaps, as EMTrainer
  checks them on first use);
- EMTrainer against TRL's GRPOTrainer configured as EM (zero reward, ``entropy_coef=-1``) and against itself without
  the shared-prompt forward: seconds per optimizer step (the first apart), peak GPU memory and its split into
  weights, gradients, optimizer state and the rest, at a paper-like shape (64 responses x 512 tokens); the
  shared-prompt decision and its check;
- EM-RL's self-certainty reward against its token reward (peak memory: self-certainty builds no vocabulary-sized
  tensor);
- a LoRA step with gradient checkpointing;
- EM-INF decoding speed against plain decoding (tokens per second).

``--dry_run`` runs the same code on the CPU with a tiny config and tiny shapes, in a minute: the test suite runs it,
so the script cannot rot. The GPU machine has PyTorch, transformers, accelerate and peft but no TRL, datasets or
math-verify and no registry: ``benchmarks/gpu_check_wheels.sh`` downloads the wheels and a tokenizer into
``gpu_check_assets/`` (ignored by git), which the device run carries::

    bash benchmarks/gpu_check_wheels.sh
    # on the GPU machine, from the repository root:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site gpu_check_assets/wheels/*.whl &&
        PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_check.py --output benchmarks/results/gpu_check.json

Every section is timed and guarded: one that fails records its error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
ASSETS = Path(__file__).resolve().parents[1] / "gpu_check_assets"

# The Qwen2.5-1.5B architecture (config.json of Qwen/Qwen2.5-1.5B), random weights; the vocabulary is the carried
# tokenizer's, so prompts tokenise for real.
QWEN2_5_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                    tie_word_embeddings=True)  # fmt: skip
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, tie_word_embeddings=True)  # fmt: skip


def tokenizer_dir() -> str:
    """The carried tokenizer (its tokenizer.json gzipped), else the embedded SmolLM2's."""
    carried = ASSETS / "tokenizer"
    if (carried / "tokenizer_config.json").is_file():
        import gzip
        import shutil
        import tempfile

        unpacked = Path(tempfile.mkdtemp(prefix="gpu-check-tokenizer-"))
        for item in carried.iterdir():
            if item.name.endswith(".gz"):
                with gzip.open(item, "rb") as packed, open(unpacked / item.name[:-3], "wb") as raw:
                    shutil.copyfileobj(packed, raw)
            else:
                shutil.copy(item, unpacked / item.name)
        return str(unpacked)
    from em_trainer.data.models import resolve_model

    return resolve_model("smollm2-135m-instruct")


def build_model(sizes: dict[str, Any], tokenizer: Any, dtype: Any, attn: str, out: Path) -> str:
    """A random model of the given sizes saved to ``out``, so both trainers load the same weights by path."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    config = Qwen2Config(vocab_size=len(tokenizer), **ids, **sizes)
    config._attn_implementation = attn
    model = Qwen2ForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def versions() -> dict[str, Any]:
    import importlib.metadata

    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "trl", "accelerate", "peft", "datasets", "flash-attn", "em-trainer"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return found


class Clock:
    """Seconds per optimizer step (a TrainerCallback), and the device's peak memory."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        times: list[float] = []

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                self.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                times.append(time.perf_counter() - self.start)

        self.times, self.callback = times, Timer()


def peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def reset_peak() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def memory_split(trainer: Any, peak: float | None) -> dict[str, Any]:
    """The peak's parts (GiB): weights, gradients (one per trainable weight, in its dtype), optimizer state, and the
    rest above them (activations, logits, caches): the part the shared-prompt forward and the fused head act on."""
    gib = 2**30
    model = trainer.model
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / gib
    gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / gib
    optimizer = 0.0
    if trainer.optimizer is not None:
        for state in trainer.optimizer.state.values():
            optimizer += sum(v.numel() * v.element_size() for v in state.values() if hasattr(v, "numel")) / gib
    above = None if peak is None else peak - weights - gradients - optimizer
    return {"weights_gib": weights, "gradients_gib": gradients, "optimizer_gib": optimizer, "above_gib": above}


def step_times(times: list[float]) -> dict[str, Any]:
    later = sorted(times[1:])
    return {"first_step_s": times[0] if times else None,
            "later_step_median_s": later[len(later) // 2] if later else None}  # fmt: skip


def em_step(
    model_path: str, shape: dict[str, int], steps: int, bf16: bool, peft: bool = False, shared: bool = True,
    em_reward: str | None = None,
) -> dict[str, Any]:
    from em_trainer import EMConfig, EMTrainer, load_one_shot_dataset

    reset_peak()
    clock = Clock()
    args = EMConfig(output_dir="/tmp/gpu-check-em", max_steps=steps, responses_per_step=shape["responses"],
                    per_device_train_batch_size=shape["micro_batch"], max_completion_length=shape["tokens"],
                    bf16=bf16, gradient_checkpointing=True, save_strategy="no", report_to="none", logging_steps=1,
                    seed=0, shared_prompt_forward=shared,
                    **({"objective": "neg_entropy_reward", "em_reward": em_reward} if em_reward else {}))  # fmt: skip
    peft_config = None
    if peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = EMTrainer(model_path, args=args, train_dataset=load_one_shot_dataset(), callbacks=[clock.callback],
                        peft_config=peft_config)  # fmt: skip
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    peak = peak_gib()
    policy = trainer.shared_prompt
    return {"seconds_per_step": clock.times, **step_times(clock.times), "peak_gib": peak,
            "memory": memory_split(trainer, peak), "losses": losses, "shared_prompt_check": policy.check,
            "shared_prompt": {"state": policy.state, "reason": policy.reason}}  # fmt: skip


def trl_step(model_path: str, shape: dict[str, int], steps: int, bf16: bool) -> dict[str, Any]:
    from trl import GRPOConfig, GRPOTrainer

    from em_trainer import load_one_shot_dataset

    def zero_reward(completions, **kwargs):
        return [0.0] * len(completions)

    reset_peak()
    clock = Clock()
    accumulation = shape["responses"] // shape["micro_batch"]
    args = GRPOConfig(output_dir="/tmp/gpu-check-trl", max_steps=steps, num_generations=shape["responses"],
                      per_device_train_batch_size=shape["micro_batch"], gradient_accumulation_steps=accumulation,
                      max_completion_length=shape["tokens"], temperature=0.5, learning_rate=2e-5, beta=0.0,
                      entropy_coef=-1.0, bf16=bf16, gradient_checkpointing=True, save_strategy="no",
                      report_to="none", logging_steps=1, seed=0)  # fmt: skip
    trainer = GRPOTrainer(model_path, reward_funcs=zero_reward, args=args, train_dataset=load_one_shot_dataset(),
                          callbacks=[clock.callback])  # fmt: skip
    trainer.train()
    peak = peak_gib()
    return {"seconds_per_step": clock.times, **step_times(clock.times), "peak_gib": peak,
            "memory": memory_split(trainer, peak)}  # fmt: skip


def em_inf_speed(model_path: str, tokens: int, prompts: int) -> dict[str, Any]:
    from em_trainer.decoding.em_inf import PRESETS
    from em_trainer.decoding.generation import SamplingSettings, make_generator

    found = {}
    for name, em_inf in (("plain", None), ("em_inf", PRESETS["default"])):
        generator = make_generator(model_path, backend="hf", em_inf=em_inf, batch_size=prompts)
        settings = SamplingSettings(temperature=0.5, max_new_tokens=tokens, seed=0)
        batch = [generator.tokenizer.apply_chat_template([{"role": "user", "content": f"Count to {i + 3}."}],
                                                         tokenize=False, add_generation_prompt=True)
                 for i in range(prompts)]  # fmt: skip
        # Warm-up at the measured shapes: a shorter or smaller warm-up left kernel selection for the batch's shapes
        # inside the timed call (plain decoding measured 4x slower than EM-INF on the first GPU run).
        generator.generate(batch, settings)
        start = time.perf_counter()
        outputs = generator.generate(batch, settings)
        seconds = time.perf_counter() - start
        generated = sum(len(c.token_ids) for samples in outputs for c in samples)
        found[name] = {"seconds": seconds, "tokens": generated, "tokens_per_second": generated / seconds}
        del generator
        reset_peak()
    return found


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the training issue asks for: the shared-prompt decision, EMTrainer's memory above weights,
    gradients and optimizer state against TRL-as-EM's and against its own plain path, and first steps."""

    def get(section: str, *keys: str) -> Any:
        value: Any = report.get(section)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    ours, trl, plain = (get(s, "memory", "above_gib") for s in ("em_trainer_sdpa", "trl_as_em_sdpa",
                                                                 "em_trainer_plain_sdpa"))  # fmt: skip
    return {
        "shared_prompt": get("em_trainer_sdpa", "shared_prompt"),
        "above_ratio_vs_trl": None if ours is None or not trl else ours / trl,
        "above_ratio_vs_plain": None if ours is None or not plain else ours / plain,
        "first_step_s": {s: get(s, "first_step_s") for s in ("em_trainer_sdpa", "trl_as_em_sdpa",
                                                             "em_trainer_plain_sdpa")},  # fmt: skip
        "self_certainty_peak_vs_token": None if not get("em_rl_token", "peak_gib") else
        get("em_rl_self_certainty", "peak_gib") / get("em_rl_token", "peak_gib"),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry_run", action="store_true", help="CPU, tiny config and shapes (what the tests run)")
    parser.add_argument("--output", default="gpu_check.json")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--responses", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--micro_batch", type=int, default=16)
    parser.add_argument("--sections", default="em_trainer,trl_as_em,plain,self_certainty,lora,em_inf",
                        help="comma-separated subset of em_trainer, trl_as_em, plain (EMTrainer without the "
                        "shared-prompt forward), self_certainty (EM-RL's self-certainty and token rewards), lora, "
                        "em_inf")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("gpu_check: no CUDA device; use --dry_run for the CPU run of the same code.", file=sys.stderr)
        return 2
    dry = args.dry_run
    shape = {"responses": 4, "tokens": 8, "micro_batch": 2} if dry else {
        "responses": args.responses, "tokens": args.tokens, "micro_batch": args.micro_batch}  # fmt: skip
    steps = 1 if dry else args.steps
    dtype, bf16 = (torch.float32, False) if dry else (torch.bfloat16, True)
    report: dict[str, Any] = {"dry_run": dry, "versions": versions(), "shape": shape, "steps": steps,
                              "model": "tiny" if dry else "Qwen2.5-1.5B config, random weights"}  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(), padding_side="left")
    attentions = ["sdpa"]
    if cuda and report["versions"].get("flash-attn"):
        attentions.append("flash_attention_2")
    wanted = set(args.sections.split(","))
    started = time.perf_counter()

    def section(name: str, run) -> None:
        begin = time.perf_counter()
        try:
            report[name] = run()
        except Exception as error:  # noqa: BLE001 - a failed section is a finding; the rest still runs
            report[name] = {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-2000:]}
        report[name + "_seconds"] = round(time.perf_counter() - begin, 1)
        print(f"[gpu_check] {name}: {json.dumps(report[name], default=str)[:300]}", flush=True)
        # Written after every section: a run stopped at the device's time limit keeps what it measured.
        Path(args.output).write_text(json.dumps(report, indent=2, default=str) + "\n")

    for attn in attentions:
        path = build_model(TINY if dry else QWEN2_5_1_5B, tokenizer, dtype, attn, Path(f"/tmp/gpu-check-{attn}"))
        if "em_trainer" in wanted:
            section(f"em_trainer_{attn}", lambda path=path: em_step(path, shape, steps, bf16))
        if attn != "sdpa":
            continue
        if "trl_as_em" in wanted:
            section("trl_as_em_sdpa", lambda path=path: trl_step(path, shape, steps, bf16))
        if "plain" in wanted:
            section("em_trainer_plain_sdpa", lambda path=path: em_step(path, shape, steps, bf16, shared=False))
        if "self_certainty" in wanted:
            for reward in ("self_certainty", "token"):
                section(f"em_rl_{reward}", lambda path=path, reward=reward: em_step(path, shape, 1, bf16,
                                                                                    em_reward=reward))  # fmt: skip
        if "lora" in wanted:
            section("lora_gradient_checkpointing", lambda path=path: em_step(path, shape, 1, bf16, peft=True))
        if "em_inf" in wanted:
            section("em_inf_decoding", lambda path=path: em_inf_speed(path, 8 if dry else 128, 2 if dry else 8))
    report["summary"] = summary(report)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    Path(args.output).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"[gpu_check] wrote {args.output} in {report['total_seconds']} s")
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
