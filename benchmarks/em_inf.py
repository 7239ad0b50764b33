"""Tokens per second of HF generate with and without EM-INF, on SmolLM2-135M-Instruct, at batch 1 and 8.

    python benchmarks/em_inf.py                 # greedy, 64 new tokens, both presets
    python benchmarks/em_inf.py --new-tokens 128 --repeats 3

Every run forces exactly ``--new-tokens`` tokens (EOS disabled) so the counts are comparable; the first run of each
setting warms up and is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/em_inf.json")
    options = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from em_trainer.data.models import resolve_model
    from em_trainer.data.prompts import render_chat
    from em_trainer.decoding.em_inf import EntropyMinimizingLogitsProcessor

    path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    question = "Natalia sold clips to 48 of her friends in April, and then half as many in May. How many in all?"
    prompt = render_chat(tokenizer, question)
    variants = {
        "plain": [],
        "em-inf default (5 steps)": [EntropyMinimizingLogitsProcessor(preset="default")],
        "em-inf paper-scripts (3 steps)": [EntropyMinimizingLogitsProcessor(preset="paper-scripts")],
    }
    results = []
    print(f"SmolLM2-135M-Instruct, CPU threads {torch.get_num_threads()}, greedy, {options.new_tokens} new tokens")
    print("| batch | decoding | tokens/s | vs plain | mean EM-INF steps per token |")
    print("| --- | --- | --- | --- | --- |")
    for batch in [int(b) for b in options.batch_sizes.split(",")]:
        encoded = tokenizer([prompt] * batch, return_tensors="pt", padding=True)
        plain_rate = None
        for name, processors in variants.items():
            for p in processors:
                p.total_steps = p.total_rows = 0
            timings = []
            for repeat in range(options.repeats + 1):
                start = time.perf_counter()
                with torch.no_grad():
                    model.generate(
                        **encoded,
                        max_new_tokens=options.new_tokens,
                        min_new_tokens=options.new_tokens,
                        do_sample=False,
                        logits_processor=processors,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                if repeat > 0:
                    timings.append(time.perf_counter() - start)
            rate = batch * options.new_tokens / statistics.median(timings)
            plain_rate = plain_rate or rate
            steps = sum(p.total_steps / max(p.total_rows, 1) for p in processors)
            results.append({"batch": batch, "decoding": name, "tokens_per_second": rate, "mean_steps": steps})
            print(f"| {batch} | {name} | {rate:.1f} | {rate / plain_rate:.2f}x | {steps:.2f} |", flush=True)
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    Path(options.output).write_text(json.dumps(results, indent=2))
    print(f"results written to {options.output}")


if __name__ == "__main__":
    main()
