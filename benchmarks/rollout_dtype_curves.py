"""Entropy-loss and length curves of one-shot EM with fp32 rollouts against bf16 rollouts (``rollout_dtype``).

SmolLM2-135M-Instruct, the one-shot prompt, 8 responses x 64 tokens per step, 10 steps (the ``make demo`` setting),
seeds 0-2 by default; the policy trains in fp32 either way, only the rollouts' matrix products change precision.
Each run is its own process. Writes benchmarks/results/rollout_dtype_curves.json: per run the logged loss (the mean
token entropy of the step's responses), the mean completion length and the step time; per step the mean and std
over seeds of each, for both precisions.

    python benchmarks/rollout_dtype_curves.py                  # 6 runs, about 10 minutes on 2 cores
    python benchmarks/rollout_dtype_curves.py --seeds 0 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

HERE = Path(__file__).resolve().parent


def run(seed: int, dtype: str, steps: int) -> dict:
    from em_trainer import EMConfig, EMTrainer, load_one_shot_dataset
    from em_trainer.data.models import resolve_model

    args = EMConfig(
        output_dir=f"/tmp/em-rollout-dtype-{dtype}-{seed}", responses_per_step=8, per_device_train_batch_size=8,
        max_completion_length=64, max_steps=steps, temperature=0.5, seed=seed, save_strategy="no", report_to="none",
        rollout_dtype=None if dtype == "float32" else dtype,
    )  # fmt: skip
    trainer = EMTrainer(resolve_model(), args=args, train_dataset=load_one_shot_dataset())
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log and "step" in log]
    return {
        "seed": seed,
        "rollout_dtype": dtype,
        "loss": [log["loss"] for log in logs],
        "mean_length": [log.get("completions/mean_length") for log in logs],
        "step_time": [log.get("step_time") for log in logs],
    }


def spread(runs: list[dict], key: str) -> list[dict[str, float]]:
    steps = len(runs[0][key])
    out = []
    for i in range(steps):
        values = [r[key][i] for r in runs if r[key][i] is not None]
        out.append({"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--output", default=str(HERE / "results" / "rollout_dtype_curves.json"))
    parser.add_argument("--_run", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options._run:
        seed, dtype, steps = options._run
        print("RESULT " + json.dumps(run(int(seed), dtype, int(steps))), flush=True)
        return
    runs = []
    for seed in [int(s) for s in options.seeds.split(",")]:
        for dtype in ("float32", "bfloat16"):
            command = [sys.executable, __file__, "--_run", str(seed), dtype, str(options.steps)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            result = json.loads(next(x for x in output.splitlines() if x.startswith("RESULT "))[len("RESULT ") :])
            runs.append(result)
            print(f"[curves] seed {seed} {dtype}: loss {[round(v, 3) for v in result['loss']]}", flush=True)
    summary = {
        dtype: {key: spread([r for r in runs if r["rollout_dtype"] == dtype], key) for key in ("loss", "mean_length")}
        for dtype in ("float32", "bfloat16")
    }
    results = {
        "setting": "SmolLM2-135M-Instruct fp32 policy, one-shot prompt, 8 x 64 tokens, temperature 0.5, lr 2e-5",
        "runs": runs,
        "summary": summary,
    }
    Path(options.output).write_text(json.dumps(results, indent=2))
    print(f"[curves] wrote {options.output}")


if __name__ == "__main__":
    main()
