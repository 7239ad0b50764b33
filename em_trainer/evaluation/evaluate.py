"""A resumable evaluation loop over models, benchmarks and temperatures, and its reports.

Results layout (``output_dir``)::

    <model-tag>-<model hash>/t<temperature>/<benchmark>-<settings hash>/identity.json  everything the results depend on
    <model-tag>-<model hash>/t<temperature>/<benchmark>-<settings hash>/records.jsonl  one line per sample, appended
    <model-tag>-<model hash>/t<temperature>/<benchmark>-<settings hash>/summary.json   accuracy and counts
    summary.json, summary.md                               every model x benchmark, with the average

The hashes are fingerprints (``data/identity``): the model's by its weights' content (or Hub id and revision), the
settings' by the model, backend, dtype, batch size, logits processors (EM-INF), every sampling setting, the system
prompt, the chat template, the benchmark's rows and the limit. An interrupted evaluation with the same identity
resumes from ``records.jsonl``: finished samples are neither regenerated nor lost. Any change gives another folder, a
fresh computation and a line that names what changed.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.callbacks import repetition_rate
from ..data.files import atomic_write_json, atomic_write_text
from ..data.identity import changed_fields, fingerprint, readable_name, text_digest
from ..data.prompts import MATH_SYSTEM_PROMPT, render_chat
from ..decoding.generation import Generator, SamplingSettings
from .benchmarks import BENCHMARKS, DEFAULT_BENCHMARKS, EvaluationError, load_benchmark
from .code_tasks import CODE_SYSTEM_PROMPT, grade_many
from .records import RecordFile
from .sample_metrics import pass_at_k, sample_metrics
from .scoring import Grade, grade, grade_with_tolerance, grader_identity, parse_gold
from .selection import majority_agreement

__all__ = [
    "BENCHMARKS",
    "DEFAULT_BENCHMARKS",
    "BenchmarkResult",
    "EvaluationError",
    "RecordFile",
    "evaluate_benchmark",
    "load_benchmark",
    "model_tag",
    "plot_temperature_sweep",
    "summarize",
]


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


@dataclass
class BenchmarkResult:
    model: str
    benchmark: str
    temperature: float
    correct: int
    total: int
    num_problems: int
    samples_per_problem: int
    pass_at_k: dict[int, float] = field(default_factory=dict)
    tokens_per_problem: float = 0.0
    majority_accuracy: float | None = None  # maj@n (self-consistency), math benchmarks with n > 1
    mean_length: float = 0.0  # tokens per response
    cut_share: float = 0.0  # share of responses cut at max_new_tokens (no end-of-sequence token)
    repetition: float = 0.0  # mean share of repeated word 4-grams per response (the collapse guard's measure)
    # With n > 1 samples of a math benchmark (evaluation/sample_metrics, docs/sample_metrics.md): mean distinct final
    # answers and outcome entropy (nats) per problem, the expected calibration error of the self-consistency
    # confidence with its reliability bins, and the mean majority share.
    distinct_answers: float | None = None
    answer_entropy: float | None = None
    ece: float | None = None
    reliability: list[list[float]] | None = None
    majority_share: float | None = None

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
    system_prompt: str | None = MATH_SYSTEM_PROMPT,
    chunk_size: int = 8,
    progress: Callable[[str], None] | None = print,
) -> BenchmarkResult:
    """Generate, grade and record ``settings.n`` samples for every problem not already in ``records.jsonl``."""
    rows = load_benchmark(benchmark, data_dir, limit)
    is_code = BENCHMARKS[benchmark].kind == "code"
    if is_code and system_prompt == MATH_SYSTEM_PROMPT:
        system_prompt = CODE_SYSTEM_PROMPT  # the math default asks for a boxed answer, which code tasks cannot give
    identity = evaluation_identity(generator, tokenizer, benchmark, rows, settings, system_prompt, limit, chunk_size)
    folder = result_folder(output_dir, model, identity, benchmark, settings.temperature, progress)
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
        code_verdicts: dict[tuple[int, int], tuple[bool, str]] = {}
        if is_code:  # every sandbox of the chunk at once: grading waits on process start-up, not on the CPU
            pairs = [(row, i, c) for row, samples in zip(chunk, outputs, strict=True) for i, c in enumerate(samples)
                     if (row["index"], i) not in done]  # fmt: skip
            verdicts = grade_many([(row["gold"], c.text) for row, _, c in pairs])
            code_verdicts = {(row["index"], i): v for (row, i, _), v in zip(pairs, verdicts, strict=True)}
        new = []
        for row, prompt, samples in zip(chunk, prompts, outputs, strict=True):
            if not is_code:
                gold = gold_cache.setdefault(row["gold"], parse_gold(row["gold"]))
            for sample_index, completion in enumerate(samples):
                if (row["index"], sample_index) in done:
                    continue
                if is_code:
                    passed, reason = code_verdicts[(row["index"], sample_index)]
                    result = Grade(reason, passed)
                elif BENCHMARKS[benchmark].kind == "physics":
                    result = grade_with_tolerance(gold, completion.text)
                else:
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
    per_problem: dict[int, list[dict[str, Any]]] = {}
    for record in kept:
        per_problem.setdefault(record["index"], []).append(record)
    complete = [group for group in per_problem.values() if len(group) == settings.n]
    spread = sample_metrics(complete) if settings.n > 1 and not is_code and complete else None
    result = BenchmarkResult(
        model=model,
        benchmark=benchmark,
        temperature=settings.temperature,
        correct=sum(bool(r["correct"]) for r in kept),
        total=len(kept),
        num_problems=len(rows),
        samples_per_problem=settings.n,
        pass_at_k={  # every k = 1 ... n (the pass@k curve)
            k: sum(pass_at_k(settings.n, sum(bool(r["correct"]) for r in g), k) for g in complete) / len(complete)
            for k in range(1, settings.n + 1)
        }
        if complete
        else {},
        tokens_per_problem=sum(r["num_tokens"] for r in kept) / max(len(per_problem), 1),
        majority_accuracy=majority_vote_accuracy(complete) if settings.n > 1 and not is_code and complete else None,
        mean_length=sum(r["num_tokens"] for r in kept) / max(len(kept), 1),
        cut_share=sum(r["finish_reason"] == "length" for r in kept) / max(len(kept), 1),
        repetition=sum(repetition_rate(r.get("completion", "")) for r in kept) / max(len(kept), 1),
    )
    if spread is not None:
        result.distinct_answers, result.answer_entropy = spread.distinct_answers, spread.answer_entropy
        result.ece, result.reliability, result.majority_share = spread.ece, spread.reliability, spread.majority_share
    atomic_write_json(folder / "summary.json", {**asdict(result), "accuracy": result.accuracy})
    return result


def evaluation_identity(
    generator: Generator,
    tokenizer: Any,
    benchmark: str,
    rows: Sequence[dict[str, Any]],
    settings: SamplingSettings,
    system_prompt: str | None,
    limit: int | None,
    chunk_size: int,
) -> dict[str, Any]:
    """Everything an evaluation's records depend on. The chunk size is in it because each chunk's sampling seed is
    ``seed + its first index`` and its left padding depends on its prompts."""
    generator_identity = getattr(generator, "identity", None)
    if generator_identity is None:
        raise TypeError(
            f"{type(generator).__name__} has no `identity` (a dict of everything that determines its samples); "
            "results are stored under it, so a generator must say what it is."
        )
    return {
        "generator": generator_identity,
        "sampling": asdict(settings),
        "system_prompt": system_prompt,
        "chat_template": text_digest(getattr(tokenizer, "chat_template", None)),
        "benchmark": benchmark,
        "data": fingerprint([[r["index"], r["problem"], r["gold"]] for r in rows]),
        "limit": limit,
        "chunk_size": chunk_size,
        "grader": grader_identity(),
    }


def result_folder(
    output_dir: str | Path,
    model: str,
    identity: dict[str, Any],
    benchmark: str,
    temperature: float,
    progress: Callable[[str], None] | None = print,
) -> Path:
    """The folder of this identity's records (created, with ``identity.json``). Records of other settings for the
    same model, temperature and benchmark are left where they are, and a line says what differs from them."""
    say = progress or (lambda _line: None)
    model_folder = readable_name(model_tag(model), fingerprint(identity["generator"]["model"]))
    parent = Path(output_dir) / model_folder / temperature_tag(temperature)
    folder = parent / readable_name(benchmark, fingerprint(identity))
    if not (folder / "identity.json").is_file():
        for other in sorted(parent.glob(f"{benchmark}-*/identity.json")):
            if other.parent.name.rsplit("-", 1)[0] != benchmark:
                continue
            try:
                changes = changed_fields(json.loads(other.read_text(encoding="utf-8")), identity)
            except ValueError:
                continue
            say(f"[eval] {benchmark}: not reusing {other.parent} (other settings: {'; '.join(changes[:4])}); "
                "computing afresh")  # fmt: skip
        legacy = Path(output_dir) / model_tag(model) / temperature_tag(temperature) / benchmark / "records.jsonl"
        if legacy.is_file():
            say(f"[eval] {benchmark}: not reusing {legacy.parent}: written before results recorded their settings, "
                "so they cannot be matched to these; computing afresh")  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "identity.json", identity)
    return folder


def majority_vote_accuracy(groups: Sequence[Sequence[dict[str, Any]]]) -> float:
    """Self-consistency: the share of problems whose most common answer (math-verify equivalence) is correct.

    Samples without an answer do not vote; a problem where none has one counts as wrong; ties go to the answer seen
    first (``selection.majority_agreement``).
    """
    correct = 0
    for records in groups:
        agrees = majority_agreement([r["extracted"] for r in records])
        winners = [r for r, agree in zip(records, agrees, strict=True) if agree]
        correct += bool(winners) and bool(winners[0]["correct"])
    return correct / len(groups) if groups else math.nan


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
    lines += ["", "| model | T | benchmark | samples | pass@k (%) | maj@n (%) | distinct answers | answer entropy | "
              "ECE | tokens/problem |", "|" + " --- |" * 10]  # fmt: skip
    for (model, temperature), by_bench in rows.items():
        for b, r in by_bench.items():
            shown = {1, 2, 4, 8, 16, 32, 64, r.samples_per_problem}  # the JSON has every k
            passes = ", ".join(f"@{k}: {100 * v:.1f}" for k, v in sorted(r.pass_at_k.items()) if k in shown) or "-"
            majority = "-" if r.majority_accuracy is None else f"{100 * r.majority_accuracy:.1f}"
            spread = [
                "-" if v is None else f"{v:.{digits}f}"
                for v, digits in ((r.distinct_answers, 2), (r.answer_entropy, 3), (r.ece, 3))
            ]
            lines.append(f"| {model_tag(model)} | {temperature:g} | {b} | {r.samples_per_problem} | {passes} | "
                         f"{majority} | {' | '.join(spread)} | {r.tokens_per_problem:.1f} |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    atomic_write_text(output_dir / "summary.md", "Accuracy in % (correct/total samples).\n\n" + table)
    atomic_write_json(output_dir / "summary.json", payload)
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
