"""Seconds per graded candidate: the canonical solutions of the first HumanEval problems through ``grade_code``.

Each solution is graded one after another (``--workers 1``) or by a pool of grader threads (each grade is a separate
sandboxed process group, so threads only wait). Every canonical solution must pass: a grader that fails a correct
program is broken, whatever its speed.

    python benchmarks/sandbox_grading.py                     # 20 problems, one grader at a time
    python benchmarks/sandbox_grading.py --workers 2 --output benchmarks/results/sandbox_grading.json
    python benchmarks/sandbox_grading.py --module legacy_code_tasks   # another grade_code, e.g. an earlier version
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--module", default="em_trainer.evaluation.code_tasks", help="where grade_code comes from")
    parser.add_argument("--output", help="JSON file to write")
    args = parser.parse_args()

    from em_trainer.evaluation.code_tasks import humaneval_path, humaneval_row, read_jsonl_any

    grade_code = importlib.import_module(args.module).grade_code
    rows = read_jsonl_any(humaneval_path())[: args.problems]
    cases = [(humaneval_row(row)["gold"], f"```python\n{row['prompt']}{row['canonical_solution']}```") for row in rows]
    runs = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            verdicts = list(pool.map(lambda case: grade_code(*case), cases))
        seconds = time.perf_counter() - started
        failed = [(i, reason) for i, (passed, reason) in enumerate(verdicts) if not passed]
        if failed:
            raise SystemExit(f"correct solutions failed: {failed}")
        runs.append(seconds / len(cases))
    report = {
        "module": args.module,
        "problems": len(cases),
        "workers": args.workers,
        "seconds_per_candidate": runs,
        "median": statistics.median(runs),
    }
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
