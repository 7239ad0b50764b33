"""The ordering finding: EM then GRPO against GRPO then EM and GRPO alone, over seeds (docs/results.md).

    python benchmarks/ordering.py [--seeds 3] [--output_dir outputs/ordering] [--report]

Each (order, seed) is one run of ``recipes/em_then_grpo.py --config
recipes/configs/smollm2-135m-cpu/replication/ordering.yaml`` with ``order``, the seeds and the output directory set
on the command line. The EM phase trains on the prompt the replication study's ``select`` picked, GRPO on the
study's training pool, so all three orders see the same data, and every final model is measured on the study's
test set by the study's own ``measure_model``. Rerunning resumes: the recipe skips finished phases and resumes an
interrupted one, and finished measurements are read back from ``measurements.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from em_trainer.data.files import atomic_write_json
from em_trainer.evaluation.records import RecordFile
from em_trainer.workflows.study import (
    aggregate,
    build_pool,
    load_study,
    measure_model,
    select_prompt,
    selected_file,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs" / "smollm2-135m-cpu" / "replication"
ORDERS = ("em_then_grpo", "grpo_then_em", "grpo")
FINAL_PHASE = {"em_then_grpo": "grpo", "grpo_then_em": "em", "grpo": "grpo"}


def train(order: str, seed: int, directory: Path, prompt: Path, pool: Path) -> float:
    """One recipe run (skipped phase by phase when already complete); returns its wall seconds."""
    started = time.time()
    command = [
        sys.executable, str(ROOT / "recipes" / "em_then_grpo.py"), "--config", str(CONFIGS / "ordering.yaml"),
        "--set", f"order={order}", "--set", f"output_dir={directory}", "--set", f"em.dataset={prompt.resolve()}",
        "--set", f"grpo.dataset={pool.resolve()}", "--set", f"em.seed={seed}", "--set", f"grpo.seed={seed}",
    ]  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "recipe.log").open("a", encoding="utf-8") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"recipe failed for {order} seed {seed}; see {directory / 'recipe.log'}")
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output_dir", default="outputs/ordering")
    parser.add_argument("--results_file", default=str(ROOT / "benchmarks" / "results" / "ordering.json"))
    parser.add_argument("--report", action="store_true", help="run nothing: write the JSON from the runs finished")
    args = parser.parse_args()

    # The study's pool and selected prompt: built (or read back) exactly as the study does.
    study = load_study(CONFIGS / "study.yaml")
    pool = build_pool(study)
    prompt = selected_file(study) if args.report else select_prompt(study, pool)
    output = Path(args.output_dir)
    measuring = dataclasses.replace(study, output_dir=output)
    records = RecordFile(output / "measurements.jsonl")
    done = {(r["arm"], r["seed"]): r for r in records.read()}

    for seed in range(0 if args.report else args.seeds):
        for order in ORDERS:
            if (order, seed) in done:
                continue
            directory = output / order / f"seed-{seed}"
            train_seconds = train(order, seed, directory, prompt, pool)
            started = time.time()
            final = directory / FINAL_PHASE[order]
            values = measure_model(str(final), measuring, seed, f"{order}-seed{seed}")
            record = {
                "arm": order, "seed": seed, "step": 20 if order != "grpo" else 10, **values,
                "train_seconds": round(train_seconds, 1), "seconds": round(time.time() - started, 1),
            }  # fmt: skip
            records.append([record])
            done[(order, seed)] = record
            print(
                f"[ordering] {order} seed {seed}: greedy {record['greedy_accuracy']:.3f}, "
                f"sampled {record['sampled_accuracy']:.3f}, entropy {record['entropy']:.3f}",
                flush=True,
            )
            for checkpoint in directory.glob("*/checkpoint-*"):
                shutil.rmtree(checkpoint)  # measured; the final weights stay

    kept = sorted((r for r in done.values() if r["seed"] < args.seeds), key=lambda r: (r["arm"], r["seed"]))
    base = json.loads(Path(study.results_file).read_text()) if Path(study.results_file).is_file() else None
    results = {
        "command": "python benchmarks/ordering.py",
        "config": str((CONFIGS / "ordering.yaml").relative_to(ROOT)),
        "seeds": args.seeds,
        "selected_prompt": json.loads(prompt.read_text(encoding="utf-8").splitlines()[0]),
        "records": kept,
        "aggregate": aggregate(kept),
        "base": base["aggregate"].get("base") if base else None,
    }
    atomic_write_json(Path(args.results_file), results)
    print(f"[ordering] wrote {args.results_file}")


if __name__ == "__main__":
    main()
