"""The ordering finding: EM then GRPO against GRPO then EM and GRPO alone, over seeds (docs/results.md).

    python benchmarks/ordering.py [--seeds 3] [--output_dir outputs/ordering] [--report]
    python benchmarks/ordering.py --executor local --max_parallel 2     # two (order, seed) jobs at a time
    python benchmarks/ordering.py --executor slurm --gpus_per_node 1 --slurm_partition gpu --max_parallel 9

Each (order, seed) is one run of ``recipes/em_then_grpo.py --config
recipes/configs/smollm2-135m-cpu/replication/ordering.yaml`` with ``order``, the seeds and the output directory set
on the command line. The EM phase trains on the prompt the replication study's ``select`` picked, GRPO on the
study's training pool, so all three orders see the same data, and every final model is measured on the study's
test set by the study's own ``measure_model``. Rerunning resumes: the recipe skips finished phases and resumes an
interrupted one, and finished measurements are read back. Each (order, seed) is an independent job of the chosen
executor (docs/scale.md): it writes only ``<order>/seed-<N>/`` and ``jobs/<order>-seed<N>.jsonl``, and the gathering
reads every job's file (and ``measurements.jsonl``, where earlier versions appended every record).
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


def run_job(order: str, seed: int, output: Path, prompt: Path, pool: Path, measuring) -> dict:
    """Train one (order, seed) and measure its final model; the record goes to the job's own file."""
    records = RecordFile(output / "jobs" / f"{order}-seed{seed}.jsonl")
    found = [r for r in records.read() if (r["arm"], r["seed"]) == (order, seed)]
    if found:
        return found[-1]
    directory = output / order / f"seed-{seed}"
    train_seconds = train(order, seed, directory, prompt, pool)
    started = time.time()
    values = measure_model(str(directory / FINAL_PHASE[order]), measuring, seed, f"{order}-seed{seed}")
    record = {
        "arm": order, "seed": seed, "step": 20 if order != "grpo" else 10, **values,
        "train_seconds": round(train_seconds, 1), "seconds": round(time.time() - started, 1),
    }  # fmt: skip
    records.append([record])
    print(
        f"[ordering] {order} seed {seed}: greedy {record['greedy_accuracy']:.3f}, "
        f"sampled {record['sampled_accuracy']:.3f}, entropy {record['entropy']:.3f}",
        flush=True,
    )
    for checkpoint in directory.glob("*/checkpoint-*"):
        shutil.rmtree(checkpoint)  # measured; the final weights stay
    return record


def finished(output: Path) -> dict[tuple[str, int], dict]:
    """Every measured (order, seed): the jobs' files and the single file of earlier versions."""
    done = {}
    for path in [output / "measurements.jsonl", *sorted((output / "jobs").glob("*.jsonl"))]:
        for record in RecordFile(path).read(repair=False):
            done[(record["arm"], record["seed"])] = record
    return done


def main() -> None:
    from em_trainer.cli.sweep import add_executor_arguments, executor_arguments
    from em_trainer.workflows.executors import Job, describe, run_jobs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output_dir", default="outputs/ordering")
    parser.add_argument("--results_file", default=str(ROOT / "benchmarks" / "results" / "ordering.json"))
    parser.add_argument("--report", action="store_true", help="run nothing: write the JSON from the runs finished")
    parser.add_argument("--job", help="internal: <order>:<seed>, one job (what the executors run)")
    add_executor_arguments(parser)
    args = parser.parse_args()
    executor = executor_arguments(args)

    # The study's pool and selected prompt: built (or read back) exactly as the study does.
    study = load_study(CONFIGS / "study.yaml")
    output = Path(args.output_dir)
    measuring = dataclasses.replace(study, output_dir=output)
    if args.job is not None:
        order, seed = args.job.rsplit(":", 1)
        run_job(order, int(seed), output, selected_file(study), study.output_dir / "data" / "pool.jsonl", measuring)
        return
    pool = build_pool(study)
    prompt = selected_file(study) if args.report or executor.dry_run else select_prompt(study, pool)
    done = finished(output)
    pending = [(order, seed) for seed in range(0 if args.report else args.seeds) for order in ORDERS
               if (order, seed) not in done]  # fmt: skip
    jobs = [Job(f"{order}-seed{seed}", ("--output_dir", str(output), "--job", f"{order}:{seed}"),
                program=(str(Path(__file__).resolve()),)) for order, seed in pending]  # fmt: skip
    if executor.dry_run:
        print(describe(jobs, executor, output / "job_logs"))
        return
    if executor.executor == "serial":
        for order, seed in pending:
            run_job(order, seed, output, prompt, pool, measuring)
    else:
        run_jobs(jobs, executor, output / "job_logs")
    done = finished(output)

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
