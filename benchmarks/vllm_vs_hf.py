"""HF generate against vLLM's CPU build, on the same prompts: seconds per EM optimizer step, and eval throughput.

(a) one-shot EM on SmolLM2-135M-Instruct (the paper's prompt), EMTrainer with HF generate (its default CPU
    decoding: growing KV cache, packed linears) vs with vLLM rollouts (colocate), at each shape (responses x tokens;
    default 8x64, 8x256, 16x64): seconds per optimizer step (median of steps 2..N, the first is warm-up), with the
    engine's start-up timed separately, and from them the number of steps after which vLLM's start-up is repaid;
(b) greedy evaluation on the built-in arithmetic set: generated tokens per second with each backend, HF with and
    without its CPU decoding (hf, hf-plain).

Each measurement runs in its own process. Writes benchmarks/results/vllm_vs_hf.json.

    .venv-vllm/bin/python benchmarks/vllm_vs_hf.py  # everything (about 15 minutes on 2 CPU cores; make vllm-cpu)
    .venv-vllm/bin/python benchmarks/vllm_vs_hf.py --steps 3 --shapes 8x64

Each measurement's own file under outputs/bench-vllm/ is kept, so an interrupted run resumes; delete that folder to
measure everything afresh.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def train_variant(backend: str, responses: int, length: int, steps: int, out: str) -> None:
    from transformers import TrainerCallback

    from em_trainer import EMConfig, EMTrainer
    from em_trainer.data.models import resolve_model

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    vllm = {"use_vllm": True, "vllm_mode": "colocate", "vllm_max_model_length": 1024} if backend == "vllm" else {}
    args = EMConfig(
        output_dir=f"{out}.run", responses_per_step=responses, per_device_train_batch_size=responses,
        max_completion_length=length,
        max_steps=steps, report_to="none", save_strategy="no", seed=0, **vllm,
    )  # fmt: skip
    started = time.perf_counter()
    trainer = EMTrainer(model=resolve_model(), args=args, callbacks=[StepTimer()])
    setup = time.perf_counter() - started
    trainer.train()
    lengths = [log["completions/mean_length"] for log in trainer.state.log_history if "completions/mean_length" in log]
    Path(out).write_text(json.dumps({"setup_s": setup, "step_s": times, "mean_completion_length": lengths}))


def eval_variant(backend: str, problems: int, out: str) -> None:
    import torch

    from em_trainer.data.models import resolve_model
    from em_trainer.decoding.generation import HFGenerator, SamplingSettings, VLLMGenerator
    from em_trainer.evaluation.evaluate import evaluate_benchmark

    path = resolve_model()
    started = time.perf_counter()
    if backend == "vllm":
        generator = VLLMGenerator(path, dtype="float32", max_model_len=1024)
    else:
        generator = HFGenerator(path, batch_size=16, dtype=torch.float32, cpu_fast_decoding=backend == "hf")
    setup = time.perf_counter() - started
    folder = Path(f"{out}.run")
    started = time.perf_counter()
    result = evaluate_benchmark(generator, generator.tokenizer, backend, "arithmetic", folder,
                                SamplingSettings(temperature=0.0, max_new_tokens=96), limit=problems, chunk_size=16,
                                progress=None)  # fmt: skip
    seconds = time.perf_counter() - started
    records = next(folder.glob("*/t0/arithmetic*/records.jsonl")).read_text().splitlines()
    tokens = sum(json.loads(r)["num_tokens"] for r in records)
    Path(out).write_text(json.dumps({"setup_s": setup, "seconds": seconds, "tokens": tokens,
                                     "tokens_per_s": tokens / seconds, "accuracy": result.accuracy}))  # fmt: skip


def decision(hf: dict, vllm: dict) -> dict:
    """Which engine finishes a run of N steps first: vLLM pays its start-up and a slower first step, then its steps.

    A run of N steps costs set-up + first step + (N - 1) x median step; vLLM wins from the N where its total drops
    below HF's (None: never, its steps are not faster)."""
    hf_step, vllm_step = hf["median_step_s_after_first"], vllm["median_step_s_after_first"]
    head_start = (vllm["setup_s"] + vllm["step_s"][0]) - (hf["setup_s"] + hf["step_s"][0])
    gain = hf_step - vllm_step
    break_even = None if gain <= 0 else 1 + max(0, math.ceil(head_start / gain))
    return {"hf_step_s": hf_step, "vllm_step_s": vllm_step, "vllm_head_start_s": head_start,
            "vllm_faster_from_steps": break_even}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--shapes", default="8x64,8x256,16x64", help="responses x tokens per step, comma-separated")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--output", default="benchmarks/results/vllm_vs_hf.json")
    args = parser.parse_args()
    scratch = Path("outputs/bench-vllm")
    scratch.mkdir(parents=True, exist_ok=True)
    results: dict = {"train": {}, "eval": {}, "decision": {},
                     "setting": "SmolLM2-135M-Instruct, one-shot prompt, 2 CPU cores"}  # fmt: skip
    for shape in args.shapes.split(","):
        responses, length = (int(v) for v in shape.split("x"))
        for backend in ("hf", "vllm"):
            out = scratch / f"train-{backend}-{shape}.json"
            command = [sys.executable, __file__, "--_train", backend, str(responses), str(length), str(args.steps)]
            if not out.exists():  # a finished measurement is kept: an interrupted benchmark resumes
                subprocess.run([*command, str(out)], check=True)
            run = json.loads(out.read_text())
            run["median_step_s_after_first"] = statistics.median(run["step_s"][1:])
            results["train"][f"{backend}-{shape}"] = run
            print(f"[bench] {backend} {shape}: {run['median_step_s_after_first']:.1f} s/step, "
                  f"set-up {run['setup_s']:.0f} s", flush=True)  # fmt: skip
        results["decision"][shape] = decision(results["train"][f"hf-{shape}"], results["train"][f"vllm-{shape}"])
        print(f"[bench] {shape}: {results['decision'][shape]}", flush=True)
    for backend in ("hf-plain", "hf", "vllm"):  # hf-plain: HF generate's own cache and kernels
        out = scratch / f"eval-{backend}.json"
        if not out.exists():
            subprocess.run([sys.executable, __file__, "--_eval", backend, str(args.problems), str(out)], check=True)
        results["eval"][backend] = json.loads(out.read_text())
        print(f"[bench] eval {backend}: {results['eval'][backend]['tokens_per_s']:.0f} tokens/s", flush=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(f"[bench] wrote {args.output}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_train":
        train_variant(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    elif len(sys.argv) > 1 and sys.argv[1] == "--_eval":
        eval_variant(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
