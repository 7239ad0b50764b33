"""Peak memory of the self-certainty reward against the entropy reward's path, on a large vocabulary, on the CPU.

Each path runs in a fresh process (a process's peak resident memory only grows), on a 2-layer Llama with
Qwen2.5's vocabulary (151,936) and a small hidden size, so that the vocabulary dominates:

- ``logits``: the former self-certainty path, full ``(batch, length + 1, vocab)`` logits and their float32
  log-softmax (what ``em_reward="self_certainty"`` did before);
- ``hidden``: the current one, the body's hidden states projected a few hundred positions at a time
  (``em_trainer.core.objectives.self_certainty_from_hidden``);
- ``entropy``: TRL's fused head computing log-probs and entropies (the token reward's path), for comparison.

The figure is the peak resident memory above what the process held once the model and inputs were built.

    python benchmarks/self_certainty_memory.py --batch 4 --length 1024
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VOCAB = 151_936


def measure(path: str, batch: int, length: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from em_trainer.core.objectives import self_certainty_from_hidden, self_certainty_from_logits
    from em_trainer.core.shared_prompt import backbone

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    prompt = 32
    input_ids = torch.randint(0, VOCAB, (batch, prompt + length))
    mask = torch.ones_like(input_ids)
    if path == "entropy":
        add_fused_lm_head(model, temperature=0.5, outputs=("log_probs", "entropy"))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with torch.no_grad():
        if path == "logits":
            logits = model(input_ids=input_ids, attention_mask=mask, logits_to_keep=length + 1).logits
            values = self_certainty_from_logits(logits[:, :-1, :], 0.5)
        elif path == "hidden":
            hidden = backbone(model)(input_ids=input_ids, attention_mask=mask).last_hidden_state[:, -(length + 1) : -1]
            values = self_certainty_from_hidden(hidden, model.get_output_embeddings(), 0.5)
        else:
            labels = input_ids.clone()
            labels[:, :prompt] = -100
            values = model(input_ids=input_ids, attention_mask=mask, labels=labels, fused_lm_head=True).entropy
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"path": path, "batch": batch, "length": length, "vocab": VOCAB, "seconds": round(seconds, 2),
            "peak_above_model_mib": round((peak - base) / 1024, 1), "mean": float(values.float().mean())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--path", choices=["logits", "hidden", "entropy"], help="run one path in this process")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()
    if args.path:
        print(json.dumps(measure(args.path, args.batch, args.length)))
        return
    results = []
    for path in ("logits", "hidden", "entropy"):
        command = [sys.executable, __file__, "--path", path, "--batch", str(args.batch), "--length", str(args.length)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
