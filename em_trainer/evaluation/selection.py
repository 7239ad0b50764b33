"""Data selection for one-shot EM: rank a prompt pool by the variance of pass@k success (paper, section 2.2).

For each prompt the model samples ``k`` responses at the training temperature; each is graded against the label
(``labels="gold"``) or against the majority answer of the ``k`` samples (``labels="none"``). With ``p`` the fraction
graded correct, the prompt's score is the variance ``p (1 - p)`` of the success indicator: highest for prompts the
model sometimes solves and sometimes does not. Ties go to ``p`` closer to 0.5, then to shorter responses.

Per-prompt results are appended to ``<output>.progress.jsonl`` as they are computed, so an interrupted run resumes
without resampling what is done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.files import atomic_write_json, atomic_write_text
from ..data.identity import fingerprint, text_digest
from ..data.labels import PROBLEM_COLUMNS, last_boxed, pick_column, pool_answer
from ..data.prompts import BOXED_INSTRUCTION, format_problem, render_chat
from ..data.sources import load_pool
from ..decoding.generation import Generator, SamplingSettings
from .answer_clusters import cluster_answers
from .records import RecordFile
from .scoring import grade, is_parseable, parse_gold, parse_prediction

__all__ = [
    "PromptStats",
    "SelectionError",
    "SelectionResult",
    "load_pool",
    "majority_agreement",
    "pool_answer",
    "rank",
    "rank_key",
    "select_prompts",
]


class SelectionError(ValueError):
    """A pool or a setting that cannot be used; the message names the fix."""


@dataclass
class PromptStats:
    """What k samples of one prompt gave."""

    index: int
    problem: str
    answer: str | None
    k: int
    num_correct: int
    mean_length: float
    extracted: list[str | None] = field(default_factory=list)

    @property
    def pass_rate(self) -> float:
        return self.num_correct / self.k if self.k else 0.0

    @property
    def variance(self) -> float:
        return self.pass_rate * (1 - self.pass_rate)


def rank_key(stats: PromptStats) -> tuple[float, float, float, int]:
    """Highest variance first; ties: pass rate closer to 0.5, then shorter responses, then pool order."""
    return (-stats.variance, abs(stats.pass_rate - 0.5), stats.mean_length, stats.index)


def rank(stats: Sequence[PromptStats]) -> list[PromptStats]:
    return sorted(stats, key=rank_key)


def majority_agreement(extracted: Sequence[str | None], same: Callable[[str, str], bool] | None = None) -> list[bool]:
    """For each sample, whether its answer equals the most common answer among the samples (label-free mode).

    Answers are grouped by ``same`` (default: math-verify equivalence of the extracted answers). A sample with no
    answer never agrees; if no sample has an answer, none agrees. Ties between equally common answers go to the
    answer seen first.
    """
    clusters = cluster_answers(extracted, same)
    if not clusters:
        return [False] * len(extracted)
    majority = max(clusters, key=len)
    return [i in majority for i in range(len(extracted))]


def _settings_fingerprint(
    generator: Generator,
    tokenizer: Any,
    settings: SamplingSettings,
    labels: str,
    instruction: str | None,
    batch_size: int,
) -> str:
    """Everything a prompt's statistics depend on besides the prompt and its answer (checked per record): the
    generator's identity (model weights, backend, dtype, processors), the sampling settings, the labels mode, the
    instruction, the chat template and the batch size (each batch's seed is ``seed + its first index``)."""
    generator_identity = getattr(generator, "identity", None)
    if generator_identity is None:
        raise SelectionError(f"{type(generator).__name__} has no `identity`; progress is stored under it.")
    return fingerprint(
        {
            "generator": generator_identity,
            "settings": asdict(settings),
            "labels": labels,
            "instruction": instruction,
            "chat_template": text_digest(getattr(tokenizer, "chat_template", None)),
            "batch_size": batch_size,
        }
    )


@dataclass
class SelectionResult:
    ranking: list[PromptStats]
    bad_rows: list[dict[str, Any]]
    output: Path
    report: Path


def select_prompts(
    generator: Generator,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    output: str | Path,
    model: str = "model",
    k: int = 8,
    top: int = 1,
    temperature: float = 0.5,
    max_new_tokens: int = 2048,
    labels: str = "gold",
    problem_column: str | None = None,
    answer_column: str | None = None,
    instruction: str | None = BOXED_INSTRUCTION,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> SelectionResult:
    """Sample ``k`` responses per prompt, rank by pass@k variance, write the ``top`` rows and a report."""
    if labels not in ("gold", "none"):
        raise SelectionError(f"labels must be 'gold' or 'none', got '{labels}'.")
    if k < 2:
        raise SelectionError(f"k={k}: the variance of success needs at least 2 samples per prompt.")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = SamplingSettings(temperature=temperature, n=k, max_new_tokens=max_new_tokens, seed=seed)
    settings_key = _settings_fingerprint(generator, tokenizer, settings, labels, instruction, batch_size)
    progress_file = RecordFile(output.with_name(output.stem + ".progress.jsonl"))
    records_on_disk = progress_file.read()
    stored = [r for r in records_on_disk if r.get("fingerprint") == settings_key]
    other = len(records_on_disk) - len(stored)
    if other and progress:
        print(f"[select] {other} stored prompt results come from other settings (model, sampling, template, ...): "
              "not reused, computed afresh")  # fmt: skip
    done_candidates = {r["index"]: r for r in stored}
    done: dict[int, dict[str, Any]] = {}

    bad_rows: list[dict[str, Any]] = []
    todo: list[tuple[int, str, str | None]] = []
    for index, row in enumerate(rows):
        column = pick_column(row, problem_column, PROBLEM_COLUMNS)
        if column is None:
            bad_rows.append(
                {"index": index, "reason": f"no problem column (looked for {problem_column or PROBLEM_COLUMNS})"}
            )
            continue
        answer = None
        if labels == "gold":
            answer = pool_answer(row, answer_column)
            if answer is None:
                bad_rows.append({"index": index, "reason": "missing answer"})
                continue
            if not is_parseable(answer):
                bad_rows.append({"index": index, "reason": f"unparseable answer {answer!r}"})
                continue
        found = done_candidates.get(index)
        if found is not None and found["problem"] == str(row[column]) and found["answer"] == answer:
            done[index] = found  # the same prompt and label under the same settings: reused
        else:
            todo.append((index, str(row[column]), answer))
    if not todo and not done:
        raise SelectionError(
            f"No usable row in the pool ({len(bad_rows)} bad rows, e.g. {bad_rows[:3]}). Name the columns with "
            "--problem-column/--answer-column, or use --labels none for a pool without answers."
        )

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"pass@{k} of {len(todo)} prompts", unit="prompt")
    start = time.time()
    for offset in range(0, len(todo), batch_size):
        chunk = todo[offset : offset + batch_size]
        prompts = [
            render_chat(tokenizer, format_problem(problem, instruction)[0]["content"]) for _, problem, _ in chunk
        ]
        chunk_settings = SamplingSettings(**{**asdict(settings), "seed": seed + chunk[0][0]})
        outputs = generator.generate(prompts, chunk_settings)
        records = []
        for (index, problem, answer), samples in zip(chunk, outputs, strict=True):
            texts = [s.text for s in samples]
            if labels == "gold":
                gold = parse_gold(answer)
                grades = [grade(gold, t) for t in texts]
                correct = [g.correct for g in grades]
                extracted = [g.extracted for g in grades]
            else:
                extracted = [_answer_text(t) for t in texts]
                correct = majority_agreement(extracted)
            records.append(
                {
                    "index": index,
                    "problem": problem,
                    "answer": answer,
                    "k": len(samples),
                    "num_correct": int(sum(correct)),
                    "mean_length": sum(len(s.token_ids) for s in samples) / len(samples),
                    "extracted": extracted,
                    "fingerprint": settings_key,
                }
            )
        progress_file.append(records)
        for record in records:
            done[record["index"]] = record
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()

    stats = [
        PromptStats(r["index"], r["problem"], r["answer"], r["k"], r["num_correct"], r["mean_length"], r["extracted"])
        for r in done.values()
    ]
    ranking = rank(stats)
    _write_selection(ranking[:top], output, rows)
    report = _write_report(ranking, bad_rows, output, settings, labels, model, len(rows), time.time() - start)
    return SelectionResult(ranking, bad_rows, output, report)


def _answer_text(completion: str) -> str | None:
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed.strip()
    parsed = parse_prediction(completion)
    return str(parsed[-1]) if parsed else None


def _write_selection(selected: Sequence[PromptStats], output: Path, rows: Sequence[dict[str, Any]]) -> None:
    lines = []
    for rank_index, s in enumerate(selected, start=1):
        record = {
            "problem": s.problem,
            "answer": s.answer,
            "pass_rate": s.pass_rate,
            "variance": s.variance,
            "mean_length": s.mean_length,
            "k": s.k,
            "rank": rank_index,
            "pool_index": s.index,
        }
        lines.append(json.dumps(record) + "\n")
    atomic_write_text(output, "".join(lines))


def _write_report(
    ranking: Sequence[PromptStats],
    bad_rows: Sequence[dict[str, Any]],
    output: Path,
    settings: SamplingSettings,
    labels: str,
    model: str,
    pool_size: int,
    seconds: float,
) -> Path:
    report = output.with_name(output.stem + ".report.md")
    lines = [
        f"# Prompt selection: pass@{settings.n} variance",
        "",
        f"model: `{model}`, pool: {pool_size} rows, ranked: {len(ranking)}, bad rows: {len(bad_rows)}, "
        f"labels: {labels}, temperature {settings.temperature:g}, max_new_tokens {settings.max_new_tokens}, "
        f"sampling time this run: {seconds:.0f}s",
        "",
        "| rank | pool index | pass rate | variance | mean length | answer | problem |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, s in enumerate(ranking, start=1):
        problem = s.problem.replace("\n", " ").replace("|", "\\|")[:80]
        lines.append(
            f"| {i} | {s.index} | {s.pass_rate:.3f} | {s.variance:.4f} | {s.mean_length:.1f} | {s.answer} "
            f"| {problem} |"
        )
    if bad_rows:
        lines += ["", f"## Bad rows ({len(bad_rows)}), skipped", "", "| pool index | reason |", "| --- | --- |"]
        lines += [f"| {b['index']} | {b['reason']} |" for b in bad_rows]
    atomic_write_text(report, "\n".join(lines) + "\n")
    payload = {
        "model": model,
        "labels": labels,
        "settings": asdict(settings),
        "ranking": [{**asdict(s), "pass_rate": s.pass_rate, "variance": s.variance} for s in ranking],
        "bad_rows": list(bad_rows),
    }
    atomic_write_json(report.with_suffix(".json"), payload)
    return report
