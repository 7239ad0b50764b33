"""CPU rollout speed: ms per token step against the memory-bandwidth bound, and whole EM steps against TRL-as-EM.

One run measures, on SmolLM2-135M-Instruct with the one-shot prompt (the paper's), on this machine:

1. the memory bandwidth (summing a 1 GiB fp32 tensor with this process's threads) and from it the bound on a token
   step: every weight read once per step;
2. for each shape (responses x new tokens): ms per token step of HF ``generate`` with each prompt prefilled once,
   (hf) as TRL runs it, (growing) with the growing KV cache, (fast) growing cache + oneDNN-packed fp32 linears
   (EMTrainer's default on a CPU), (fast-bf16) the same with bf16 packs (``rollout_dtype="bfloat16"``); the cost of
   packing the weights (paid once per rollout in training); whether (fast) sampled the same tokens as (hf);
3. whole optimizer steps through benchmarks/step_time.py, each variant in its own process: EMTrainer (default),
   EMTrainer with TRL's decoding (``cpu_fast_rollouts=False``), EMTrainer with bf16 rollouts (8 x 64 only), and TRL
   GRPOTrainer configured as EM; the first step (warm-up, no compilation) is reported apart;
4. the candidate not taken: transformers' static KV cache with ``torch.compile`` (inductor), in a fresh process with
   an empty inductor cache: the compile cost of the first call and ms per token step after it.

    python benchmarks/decoding_speed.py                       # about 20 minutes on 2 cores
    python benchmarks/decoding_speed.py --shapes 8x64 --skip-steps

Writes benchmarks/results/decoding_speed.json (step times also in step_time_fast_<shape>.json); shapes and parts not
measured this time keep the figures of the file's previous run, marked ``earlier_run``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

HERE = Path(__file__).resolve().parent


def bandwidth_gb_s(gib: float = 1.0, repeats: int = 5) -> float:
    import torch

    tensor = torch.ones(int(gib * 2**30 / 4))
    tensor.sum()
    best = min(_timed(tensor.sum) for _ in range(repeats))
    return tensor.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def token_steps(shapes: list[tuple[int, int]], repeats: int = 2) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from em_trainer import load_one_shot_dataset
    from em_trainer.core.cpu_decoding import PackedLinears, bf16_matmul_supported
    from em_trainer.core.shared_prefill import generate_with_shared_prefill
    from em_trainer.data.models import resolve_model

    path = resolve_model()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    prompt = tokenizer.apply_chat_template(
        load_one_shot_dataset()[0]["prompt"], tokenize=False, add_generation_prompt=True
    )
    variants = {
        "hf": dict(),
        "growing": dict(growing_cache=True),
        "fast": dict(growing_cache=True, packs=PackedLinears()),
    }
    if bf16_matmul_supported():
        variants["fast-bf16"] = dict(growing_cache=True, packs=PackedLinears(torch.bfloat16))
    results: dict = {"weight_bytes": weight_bytes, "shapes": {}}
    for rows, new in shapes:
        encoded = tokenizer([prompt] * rows, return_tensors="pt", add_special_tokens=False)
        shape: dict = {"prompt_tokens": encoded["input_ids"].size(1)}
        sequences = {}
        for name, options in variants.items():

            def generate(tokens: int, options=options, encoded=encoded):
                torch.manual_seed(0)
                with torch.no_grad():
                    return generate_with_shared_prefill(
                        model, encoded["input_ids"], encoded["attention_mask"], max_new_tokens=tokens,
                        min_new_tokens=tokens, do_sample=True, temperature=0.5, top_p=1.0, top_k=0,
                        pad_token_id=tokenizer.pad_token_id, **options,
                    )  # fmt: skip

            generate(2)  # warm-up (and, for packs, the packing: timed below on its own)
            first = min(_timed(lambda: generate(1)) for _ in range(2))
            totals = []
            for _ in range(repeats):  # the fastest of a few: a busy moment elsewhere only slows a run down
                start = time.perf_counter()
                sequences[name] = generate(new + 1)
                totals.append(time.perf_counter() - start)
            total = min(totals)
            shape[name] = {"ms_per_token_step": (total - first) / new * 1000, "prefill_s": first, "total_s": total}
            print(f"[decode] {rows}x{new} {name}: {shape[name]['ms_per_token_step']:.1f} ms/token step", flush=True)
        shape["fast_same_tokens_as_hf"] = bool(torch.equal(sequences["fast"], sequences["hf"]))
        shape["growing_same_tokens_as_hf"] = bool(torch.equal(sequences["growing"], sequences["hf"]))
        results["shapes"][f"{rows}x{new}"] = shape
    for dtype in (None, torch.bfloat16) if "fast-bf16" in variants else (None,):
        packs = PackedLinears(dtype)
        with torch.no_grad():
            start = time.perf_counter()
            with packs.applied(model, rows=8):
                pass
        results[f"packing_s_{'bf16' if dtype else 'fp32'}"] = time.perf_counter() - start
    return results


def compiled_static(rows: int, new: int) -> dict:
    """Static cache + torch.compile through generate's compile_config (worker: run in a fresh process)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, CompileConfig

    from em_trainer import load_one_shot_dataset
    from em_trainer.data.models import resolve_model

    path = resolve_model()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template(
        load_one_shot_dataset()[0]["prompt"], tokenize=False, add_generation_prompt=True
    )
    encoded = tokenizer([prompt] * rows, return_tensors="pt", add_special_tokens=False)
    config = CompileConfig(fullgraph=False, dynamic=False)
    config._compile_all_devices = True  # transformers compiles on CUDA only unless told otherwise

    def generate(tokens: int, **extra):
        torch.manual_seed(0)
        with torch.no_grad():
            return model.generate(**encoded, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True,
                                  temperature=0.5, top_p=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id,
                                  cache_implementation="static", **extra)  # fmt: skip

    eager_first = _timed(lambda: generate(1))
    eager_total = _timed(lambda: generate(new + 1))
    start = time.perf_counter()
    generate(new + 1, compile_config=config)
    first_call = time.perf_counter() - start
    first = _timed(lambda: generate(1, compile_config=config))
    start = time.perf_counter()
    compiled = generate(new + 1, compile_config=config)
    total = time.perf_counter() - start
    return {
        "first_call_s": first_call,
        "ms_per_token_step": (total - first) / new * 1000,
        "eager_static_ms_per_token_step": (eager_total - eager_first) / new * 1000,
        "same_tokens_as_eager_static": bool(torch.equal(compiled, generate(new + 1))),
    }


def whole_steps(shape: tuple[int, int], variants: str, steps: int) -> dict:
    rows, new = shape
    output = HERE / "results" / f"step_time_fast_{rows}x{new}.json"
    command = [sys.executable, str(HERE / "step_time.py"), "--variants", variants, "--steps", str(steps)]
    command += ["--responses", str(rows), "--completion-len", str(new), "--output", str(output)]
    subprocess.run(command, check=True)
    data = json.loads(output.read_text())["results"]
    summary = {
        name: {
            "seconds_per_step": r["seconds_per_step"],
            "first_step_s": r["step_times"][0],
            "step_times": r["step_times"],
            "generation_s": r["breakdown"].get("generation_s"),
        }
        for name, r in data.items()
    }
    if "a" in data and "c" in data:
        summary["speedup_a_over_c"] = data["c"]["seconds_per_step"] / data["a"]["seconds_per_step"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="8x64,8x256,16x64")
    parser.add_argument("--skip-steps", action="store_true", help="token steps only, no whole optimizer steps")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per variant at <= 64 tokens (else 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed generations per variant (the fastest counts)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the static cache + torch.compile run")
    parser.add_argument("--output", default=str(HERE / "results" / "decoding_speed.json"))
    options = parser.parse_args()
    import torch

    shapes = [tuple(int(v) for v in s.split("x")) for s in options.shapes.split(",")]
    bandwidth = bandwidth_gb_s()
    results: dict = {
        "model": "SmolLM2-135M-Instruct, fp32",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bandwidth_gb_s": bandwidth,
    }
    results.update(token_steps(shapes, options.repeats))
    results["bandwidth_bound_ms_per_token_step"] = results["weight_bytes"] / (bandwidth * 1e9) * 1000
    print(f"[decode] bandwidth {bandwidth:.0f} GB/s: bound {results['bandwidth_bound_ms_per_token_step']:.1f} ms per "
          "token step (fp32 weights read once)", flush=True)  # fmt: skip
    if not options.skip_compile:
        rows, new = shapes[0]
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            command = [sys.executable, __file__, "--_compiled", str(rows), str(new)]
            line = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
        results["static_cache_torch_compile"] = {"shape": f"{rows}x{new}", **json.loads(line)}
        print(f"[decode] static cache + torch.compile: {results['static_cache_torch_compile']}", flush=True)
    if not options.skip_steps:
        results["whole_steps"] = {}
        for rows, new in shapes:
            first = (rows, new) == shapes[0]
            variants = "a,a-trlgen,a-bf16,c" if first else "a,a-trlgen,c"
            steps = options.steps if new <= 64 else 2
            results["whole_steps"][f"{rows}x{new}"] = whole_steps((rows, new), variants, steps)
            ratio = results["whole_steps"][f"{rows}x{new}"].get("speedup_a_over_c")
            print(f"[steps] {rows}x{new}: EMTrainer {ratio:.2f}x TRL-as-EM", flush=True)
    previous = json.loads(Path(options.output).read_text()) if Path(options.output).exists() else {}
    # What this run did not measure keeps the figures of the file's previous run, marked as such.
    if "static_cache_torch_compile" not in results and "static_cache_torch_compile" in previous:
        results["static_cache_torch_compile"] = {**previous["static_cache_torch_compile"], "earlier_run": True}
    for part in ("shapes", "whole_steps"):
        for shape, figures in previous.get(part, {}).items():
            if shape not in results.setdefault(part, {}):
                results[part][shape] = {**figures, "earlier_run": True}
    Path(options.output).write_text(json.dumps(results, indent=2))
    print(f"[decode] wrote {options.output}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_compiled":
        print(json.dumps(compiled_static(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        main()
