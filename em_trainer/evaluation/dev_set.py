"""Scorers for early stopping: greedy accuracy on a small labeled dev set, handed to the trainer's callback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.callbacks import Scorer
from ..data.labels import PROBLEM_COLUMNS, pool_answer
from ..data.prompts import MATH_SYSTEM_PROMPT, render_chat
from ..data.sources import DatasetError, load_pool
from ..decoding.generation import HFGenerator, SamplingSettings
from .benchmarks import BENCHMARKS, load_benchmark
from .scoring import grade, parse_gold


def load_dev_rows(source: str, data_dir: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows ``{"problem", "gold"}`` of a dev set: a benchmark name (see evaluation) or a file with problem/answer."""
    if source in BENCHMARKS:
        return [{"problem": r["problem"], "gold": r["gold"]} for r in load_benchmark(source, data_dir, limit)]
    rows = []
    for row in load_pool(source, limit=limit):
        column = next((c for c in PROBLEM_COLUMNS if row.get(c)), None)
        answer = pool_answer(row)
        if column and answer is not None:
            rows.append({"problem": str(row[column]), "gold": answer})
    if not rows:
        raise DatasetError(f"Dev set '{source}' has no row with both a problem and an answer.")
    return rows


def dev_set_scorer(
    rows: Sequence[dict[str, Any]],
    tokenizer: Any,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    system_prompt: str | None = MATH_SYSTEM_PROMPT,
) -> Scorer:
    """A scorer: greedy accuracy of a model on ``rows`` (graded by em_trainer.evaluation.scoring)."""
    golds = [parse_gold(r["gold"]) for r in rows]
    prompts = [render_chat(tokenizer, r["problem"], system_prompt) for r in rows]
    settings = SamplingSettings(temperature=0.0, max_new_tokens=max_new_tokens)

    def score(model: Any) -> float:
        generator = HFGenerator(model, tokenizer=tokenizer, batch_size=batch_size)
        outputs = generator.generate(prompts, settings)
        correct = [grade(gold, samples[0].text).correct for gold, samples in zip(golds, outputs, strict=True)]
        return sum(correct) / len(correct)

    return score


def build_dev_set_scorer(args: Any, tokenizer: Any) -> Scorer | None:
    """The scorer an EMConfig asks for with ``early_stopping_dev_set`` (and its limit, length, data dir); or None."""
    if not args.early_stopping_dev_set:
        return None
    rows = load_dev_rows(args.early_stopping_dev_set, args.early_stopping_data_dir, args.early_stopping_limit)
    return dev_set_scorer(rows, tokenizer, args.early_stopping_max_new_tokens)
