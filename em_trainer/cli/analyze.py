"""``em-trainer analyze logits``: raw-logit statistics (mean, std, skewness), entropy and top-1 probability."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .common import NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_INT, add, parse_verb_args, verb_parser

HELP = "`analyze logits`: raw-logit mean/std/skewness, entropy and top-1 probability per model, with histograms"


def build_parser() -> argparse.ArgumentParser:
    parser = verb_parser("analyze", HELP + ".")
    parser.add_argument("what", choices=["logits"], help="what to analyse")
    add(parser, "model", action="append", required=True, help="NAME=PATH (or PATH); repeat to compare")
    add(parser, "prompts", help=".txt (one per line) or .jsonl/.parquet/.csv; default: the one-shot prompt")
    add(parser, "limit", type=POSITIVE_INT, help="first N prompts")
    add(parser, "samples", type=POSITIVE_INT, default=2, help="sampled responses per prompt")
    add(parser, "temperature", type=NON_NEGATIVE_FLOAT, default=0.5, help="sampling temperature (0 = greedy)")
    add(parser, "max_new_tokens", type=POSITIVE_INT, default=256)
    add(parser, "histogram_sample", type=POSITIVE_INT, default=200_000, help="logit values kept for the histogram")
    add(parser, "output_dir", default="outputs/analysis")
    add(parser, "seed", type=NON_NEGATIVE_INT, default=0)
    return parser


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
