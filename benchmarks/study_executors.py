"""Wall time of one study, its training jobs run one after another against N at a time, in one run of this script.

Each executor starts from an empty output folder (the preparation, every job and the gathering are timed together)
and the records of every run are compared with the serial run's (``seconds`` left out). Without ``OMP_NUM_THREADS``
set, the serial run's processes use every core and the parallel run's jobs a 1/N share each (docs/scale.md), which
is what a user gets; with it set, every run uses the same threads and the records must be equal bit for bit.

    python benchmarks/study_executors.py --quick --output benchmarks/results/study_executors.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "recipes/configs/smollm2-135m-cpu/replication/study.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(STUDY))
    parser.add_argument("--quick", action="store_true", help="the study's quick_variant")
    parser.add_argument("--parallel", type=int, default=2, help="jobs at a time for the parallel executors")
    parser.add_argument("--executors", default="serial,local", help="comma-separated; serial first is the reference")
    parser.add_argument("--work_dir", default="outputs/study_executors")
    parser.add_argument("--output", help="JSON file to write")
    args = parser.parse_args()

    runs, reference = {}, None
    for executor in args.executors.split(","):
        out = Path(args.work_dir) / executor
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "em_trainer.cli", "study", "--config", args.config, "--output_dir", str(out),
                   "--results_file", str(out / "results.json"), "--executor", executor]  # fmt: skip
        if executor != "serial":
            command += ["--max_parallel", str(args.parallel)]
        if args.quick:
            command.append("--quick")
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{executor} failed:\n{result.stderr[-3000:]}")
        results = json.loads((out / "results.json").read_text())
        records = [{k: v for k, v in r.items() if k != "seconds"} for r in results["records"]]
        reference = records if reference is None else reference
        runs[executor] = {
            "wall_seconds": round(seconds, 1),
            "parallel": 1 if executor == "serial" else args.parallel,
            "jobs": sum(1 for _ in (out / "jobs").glob("*.jsonl")),
            "wall_by_part": results["wall_seconds"],
            "records_equal_to_first": records == reference,
            "largest_metric_gap": _largest_gap(records, reference),
        }
        print(f"{executor}: {seconds:.1f} s, records equal to the first run's: {records == reference}", flush=True)
    report = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "config": os.path.relpath(args.config, ROOT),
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },  # fmt: skip
        "runs": runs,
    }
    if "serial" in runs:
        for run in runs.values():
            run["speedup_over_serial"] = round(runs["serial"]["wall_seconds"] / run["wall_seconds"], 2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["runs"], indent=2))


def _largest_gap(records: list[dict], reference: list[dict]) -> float | None:
    """The largest absolute difference of any numeric metric between matching records (None if they do not match)."""
    if [(r["arm"], r["seed"], r["step"]) for r in records] != [(r["arm"], r["seed"], r["step"]) for r in reference]:
        return None
    gap = 0.0
    for a, b in zip(records, reference, strict=True):
        for key, value in a.items():
            if isinstance(value, float) and isinstance(b.get(key), float):
                gap = max(gap, abs(value - b[key]))
    return gap


if __name__ == "__main__":
    main()
