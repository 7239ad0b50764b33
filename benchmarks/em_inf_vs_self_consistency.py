"""EM-INF against self-consistency on the embedded model: accuracy and tokens generated per problem.

Four `em-trainer eval` runs on the same arithmetic problems (greedy, greedy with EM-INF, maj@4 and maj@8 sampled at
T=0.7), each through the CLI a user would type. Writes benchmarks/results/em_inf_vs_self_consistency.json.

    python benchmarks/em_inf_vs_self_consistency.py --problems 40
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODES = {
    "greedy": [],
    "EM-INF (greedy)": ["--em_inf"],
    "maj@4 (T=0.7)": ["--majority", "4", "--temperature", "0.7"],
    "maj@8 (T=0.7)": ["--majority", "8", "--temperature", "0.7"],
}


def main() -> None:
    from em_trainer.cli import main as cli

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--output", default="benchmarks/results/em_inf_vs_self_consistency.json")
    args = parser.parse_args()
    results = {}
    for mode, flags in MODES.items():
        out = Path("outputs/bench-sc") / mode.split()[0].replace("@", "-").lower()
        common = ["--benchmarks", "arithmetic", "--limit", str(args.problems), "--max_new_tokens",
                  str(args.max_new_tokens), "--batch_size", "16", "--output_dir", str(out)]  # fmt: skip
        if cli(["eval", *common, *flags]) != 0:
            raise SystemExit(f"eval failed for {mode}")
        run = json.loads((out / "summary.json").read_text())[0]["benchmarks"]["arithmetic"]
        results[mode] = {
            "accuracy": run["majority_accuracy"] if run["majority_accuracy"] is not None else run["accuracy"],
            "tokens_per_problem": run["tokens_per_problem"],
            "samples_per_problem": run["samples_per_problem"],
        }
    greedy_tokens = results["greedy"]["tokens_per_problem"]
    for run in results.values():
        run["cost_vs_greedy"] = run["tokens_per_problem"] / greedy_tokens
    payload = {"problems": args.problems, "max_new_tokens": args.max_new_tokens, "seed": 0, "results": results}
    Path(args.output).write_text(json.dumps(payload, indent=2))
    for mode, run in results.items():
        print(f"{mode:18s} accuracy {100 * run['accuracy']:.1f}%  tokens/problem {run['tokens_per_problem']:.0f}")


if __name__ == "__main__":
    main()
