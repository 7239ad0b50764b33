"""``em-trainer analyze logits``: raw-logit statistics (mean, std, skewness), entropy and top-1 probability."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any

from .common import NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_INT, option, parse_verb_args, verb_parser

HELP = "`analyze logits`: raw-logit mean/std/skewness, entropy and top-1 probability per model, with histograms"


@dataclass
class AnalyzeArguments:
    """The options of ``em-trainer analyze`` (flags, or keys of its ``--config`` YAML).

    Args:
        what (`str`): the analysis, ``logits``.
        model (`list[str]`, required): ``NAME=PATH`` (or ``PATH``), repeated to compare.
        prompts (`str` or `None`, defaults to `None`): a ``.txt`` (one per line) or a dataset file; None is the
            one-shot prompt.
        limit (`int` or `None`, defaults to `None`): the first N prompts.
        samples (`int`, defaults to `2`): sampled responses per prompt.
        temperature (`float`, defaults to `0.5`): the sampling temperature (0 is greedy).
        max_new_tokens (`int`, defaults to `256`): the response budget.
        histogram_sample (`int`, defaults to `200000`): logit values kept for the histogram.
        output_dir (`str`, defaults to `"outputs/analysis"`): statistics and plots.
        seed (`int`, defaults to `0`): the sampling seed.
    """

    what: str | None = option(None, "what to analyse", choices=["logits"], positional=True)
    model: list[str] | None = option(None, "NAME=PATH (or PATH); repeat to compare", repeatable=True, required=True)
    prompts: str | None = option(None, ".txt (one per line) or .jsonl/.parquet/.csv; default: the one-shot prompt")
    limit: int | None = option(None, "first N prompts", domain=POSITIVE_INT)
    samples: int = option(2, "sampled responses per prompt", domain=POSITIVE_INT)
    temperature: float = option(0.5, "sampling temperature (0 = greedy)", domain=NON_NEGATIVE_FLOAT)
    max_new_tokens: int = option(256, domain=POSITIVE_INT)
    histogram_sample: int = option(200_000, "logit values kept for the histogram", domain=POSITIVE_INT)
    output_dir: str = option("outputs/analysis")
    seed: int = option(0, domain=NON_NEGATIVE_INT)


def build_parser() -> argparse.ArgumentParser:
    return verb_parser("analyze", HELP + ".", AnalyzeArguments)


def _read_prompts(path: str | None, limit: int | None) -> list[Any]:
    from ..data.prompts import chat_messages, load_one_shot_dataset, load_prompt_dataset

    if path is None:
        return [load_one_shot_dataset()[0]["prompt"]]
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle if line.strip()]
        return [chat_messages(line) for line in lines][:limit]
    return list(load_prompt_dataset(path, limit=limit)["prompt"])


def main(argv: list[str]) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..data.models import resolve_model
    from ..evaluation.analysis import collect_logit_statistics, plot_logit_histograms

    args = parse_verb_args(build_parser(), argv)
    if args.what != "logits":  # the only analysis so far; argparse's choices already refuse others
        raise ValueError(f"analyze {args.what}: only `analyze logits` exists.")
    prompts = _read_prompts(args.prompts, args.limit)
    reports, samples = {}, {}
    for item in args.model:
        name, _, ref = item.partition("=") if "=" in item else (item, "", item)
        path = resolve_model(ref)
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        report, sample = collect_logit_statistics(
            model, tokenizer, prompts, name, args.samples, args.temperature, args.max_new_tokens, args.seed,
            args.histogram_sample,
        )  # fmt: skip
        reports[name], samples[name] = report, sample
        del model
    os.makedirs(args.output_dir, exist_ok=True)
    lines = ["| model | mean | std | skewness | mean entropy | mean top-1 prob | positions |", "|" + " --- |" * 7]
    for r in reports.values():
        lines.append(
            f"| {r.name} | {r.mean:.4f} | {r.std:.4f} | {r.skewness:.4f} | {r.mean_entropy:.4f} | "
            f"{r.mean_top1_probability:.4f} | {r.num_positions} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    with open(os.path.join(args.output_dir, "logit_stats.json"), "w") as handle:
        json.dump([r.__dict__ for r in reports.values()], handle, indent=2)
    with open(os.path.join(args.output_dir, "logit_stats.md"), "w") as handle:
        handle.write(table)
    png = plot_logit_histograms(samples, reports, os.path.join(args.output_dir, "logit_histograms.png"))
    print(f"[em-trainer] histograms: {png}; statistics: {args.output_dir}/logit_stats.json")
    return 0
