"""Benchmark registry and a resumable evaluation loop over models, benchmarks and temperatures.

Results layout (``output_dir``)::

    <model-tag>/t<temperature>/<benchmark>/records.jsonl   one line per sample, appended as produced
    <model-tag>/t<temperature>/<benchmark>/summary.json    accuracy and counts once the benchmark is complete
    summary.json, summary.md                               every model x benchmark, with the average

An interrupted evaluation resumes from ``records.jsonl``: finished samples are neither regenerated nor lost.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .generation import Generator, SamplingSettings, render_chat
from .scoring import gold_answer, grade, parse_gold

QWEN_MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
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


# ------------------------------------------------------------------------------------------------------- records
def model_tag(model: str) -> str:
    """A folder name for a model reference (``org/name`` -> ``org--name``; a path -> its last parts)."""
    path = Path(model)
    if path.exists():
        parts = [p for p in path.resolve().parts[-2:] if p not in ("/",)]
        model = "--".join(parts)
    return re.sub(r"[^\w.\-]+", "--", model).strip("-")


def temperature_tag(temperature: float) -> str:
    return f"t{temperature:g}"


class RecordFile:
    """Append-only JSONL of finished samples; a torn last line (a crash mid-write) is dropped on reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        if records and not self.path.read_text(encoding="utf-8").endswith("\n"):
            self.rewrite(records)
        return records

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, self.path)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


@dataclass
class BenchmarkResult:
    model: str
    benchmark: str
    temperature: float
    correct: int
    total: int
    num_problems: int
    samples_per_problem: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else math.nan


def evaluate_benchmark(
    generator: Generator,
    tokenizer: Any,
    model: str,
    benchmark: str,
    output_dir: str | Path,
    settings: SamplingSettings,
    data_dir: str | None = None,
    limit: int | None = None,
    system_prompt: str | None = QWEN_MATH_SYSTEM_PROMPT,
    chunk_size: int = 8,
    progress: Callable[[str], None] | None = print,
) -> BenchmarkResult:
    """Generate, grade and record ``settings.n`` samples for every problem not already in ``records.jsonl``."""
    rows = load_benchmark(benchmark, data_dir, limit)
    folder = Path(output_dir) / model_tag(model) / temperature_tag(settings.temperature) / benchmark
    records = RecordFile(folder / "records.jsonl")
    done = {(r["index"], r["sample"]) for r in records.read()}
    todo = [row for row in rows if any((row["index"], s) not in done for s in range(settings.n))]
    started, finished = time.time(), 0
    gold_cache: dict[str, list] = {}
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        prompts = [render_chat(tokenizer, row["problem"], system_prompt) for row in chunk]
        chunk_settings = SamplingSettings(**{**asdict(settings), "seed": settings.seed + chunk[0]["index"]})
        outputs = generator.generate(prompts, chunk_settings)
        new = []
        for row, prompt, samples in zip(chunk, prompts, outputs, strict=True):
            gold = gold_cache.setdefault(row["gold"], parse_gold(row["gold"]))
            for sample_index, completion in enumerate(samples):
                if (row["index"], sample_index) in done:
                    continue
                result = grade(gold, completion.text)
                new.append(
                    {
                        "index": row["index"],
                        "sample": sample_index,
                        "prompt": prompt,
                        "completion": completion.text,
                        "finish_reason": completion.finish_reason,
                        "num_tokens": len(completion.token_ids),
                        "gold": row["gold"],
                        "extracted": result.extracted,
                        "correct": result.correct,
                    }
                )
        records.append(new)
        finished += len(chunk)
        if progress is not None:
            elapsed = time.time() - started
            eta = elapsed / finished * (len(todo) - finished)
            progress(f"[eval] {model_tag(model)} {benchmark} T={settings.temperature:g}: "
                     f"{len(rows) - len(todo) + finished}/{len(rows)} problems, ~{eta:.0f}s left")  # fmt: skip

    all_records = {(r["index"], r["sample"]): r for r in records.read()}
    kept = [
        all_records[(row["index"], s)] for row in rows for s in range(settings.n) if (row["index"], s) in all_records
    ]
    result = BenchmarkResult(
        model=model,
        benchmark=benchmark,
        temperature=settings.temperature,
        correct=sum(bool(r["correct"]) for r in kept),
        total=len(kept),
        num_problems=len(rows),
        samples_per_problem=settings.n,
    )
    (folder / "summary.json").write_text(json.dumps({**asdict(result), "accuracy": result.accuracy}, indent=2))
    return result


# ------------------------------------------------------------------------------------------------------- reports
def summarize(results: Sequence[BenchmarkResult], output_dir: str | Path) -> str:
    """Write ``summary.json`` and ``summary.md`` (accuracy per model x benchmark and average); return the table."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    benchmarks = list(dict.fromkeys(r.benchmark for r in results))
    rows: dict[tuple[str, float], dict[str, BenchmarkResult]] = {}
    for r in results:
        rows.setdefault((r.model, r.temperature), {})[r.benchmark] = r
    lines = ["| model | T | " + " | ".join(benchmarks) + " | average |", "|" + " --- |" * (len(benchmarks) + 3)]
    payload = []
    for (model, temperature), by_bench in rows.items():
        accuracies = [by_bench[b].accuracy for b in benchmarks if b in by_bench]
        average = sum(accuracies) / len(accuracies) if accuracies else math.nan
        cells = [
            f"{100 * by_bench[b].accuracy:.1f} ({by_bench[b].correct}/{by_bench[b].total})" if b in by_bench else "-"
            for b in benchmarks
        ]
        lines.append(f"| {model_tag(model)} | {temperature:g} | " + " | ".join(cells) + f" | {100 * average:.1f} |")
        payload.append(
            {
                "model": model,
                "temperature": temperature,
                "average_accuracy": average,
                "benchmarks": {b: {**asdict(r), "accuracy": r.accuracy} for b, r in by_bench.items()},
            }
        )
    table = "\n".join(lines) + "\n"
    (output_dir / "summary.md").write_text("Accuracy in % (correct/total samples).\n\n" + table)
    (output_dir / "summary.json").write_text(json.dumps(payload, indent=2))
    return table


def plot_temperature_sweep(results: Sequence[BenchmarkResult], path: str | Path) -> Path:
    """Average accuracy against evaluation temperature, one line per model (the paper's Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_model: dict[str, dict[float, list[float]]] = {}
    for r in results:
        by_model.setdefault(r.model, {}).setdefault(r.temperature, []).append(r.accuracy)
    figure, axis = plt.subplots(figsize=(6, 4))
    for model, points in by_model.items():
        temps = sorted(points)
        axis.plot(temps, [100 * sum(points[t]) / len(points[t]) for t in temps], marker="o", label=model_tag(model))
    axis.set_xlabel("evaluation temperature")
    axis.set_ylabel("average accuracy (%)")
    axis.set_title("Accuracy vs. evaluation temperature")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
