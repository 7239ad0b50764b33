"""``em-trainer select``: rank a prompt pool by pass@k variance and write the one-shot training set."""

from __future__ import annotations

import argparse

from ..data.models import DEFAULT_MODEL
from .common import (
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    Bounded,
    add,
    add_backend_argument,
    check_models,
    generator_kwargs,
    parse_verb_args,
    verb_parser,
)

HELP = "rank a prompt pool by pass@k variance and write the one-shot training set"


def build_parser() -> argparse.ArgumentParser:
    parser = verb_parser(
        "select",
        "Rank a prompt pool by the variance of pass@k success (one-shot EM paper, section 2.2) and write "
        "the top prompts in the format `em-trainer train --dataset` reads.",
    )
    add(parser, "model", default=DEFAULT_MODEL)
    add(parser, "pool", required=True, help="Hub id or local .jsonl/.parquet/.csv with problems (+answers)")
    add(parser, "split", default="train")
    add(parser, "k", type=Bounded(int, 2), default=8, help="samples per prompt")
    add(parser, "top", type=POSITIVE_INT, default=1, help="prompts to write")
    add(parser, "output", default="outputs/selected.jsonl")
    add(parser, "labels", choices=["gold", "none"], default="gold", help="'none': agreement with majority")
    add(parser, "temperature", type=POSITIVE_FLOAT, default=0.5, help="the training temperature")
    add(parser, "max_new_tokens", type=POSITIVE_INT, default=2048)
    add(parser, "problem_column", help="default: problem, question or prompt")
    add(parser, "answer_column", help="default: answer, final_answer, or the boxed answer of solution")
    add(parser, "limit", type=POSITIVE_INT, help="first N rows of the pool")
    add(parser, "batch_size", type=POSITIVE_INT, default=8, help="prompts per generate call")
    add_backend_argument(parser)
    add(parser, "seed", type=NON_NEGATIVE_INT, default=0)
    return parser


def main(argv: list[str]) -> int:
    from pathlib import Path

    from ..data.files import check_writable_dir
    from ..data.sources import load_pool
    from ..decoding.generation import make_generator
    from ..evaluation.selection import SelectionError, select_prompts

    args = parse_verb_args(build_parser(), argv)
    rows = load_pool(args.pool, args.split, args.limit)
    output = Path(args.output)
    if output.is_dir():
        raise SelectionError(f"--output {args.output} is a directory; pass a .jsonl file name, e.g. selected.jsonl.")
    check_writable_dir(output.parent, "--output's folder")
    check_models([args.model])
    generator = make_generator(args.model, backend=args.backend, **generator_kwargs(args, args.batch_size))
    result = select_prompts(
        generator,
        generator.tokenizer,
        rows,
        args.output,
        model=args.model,
        k=args.k,
        top=args.top,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        labels=args.labels,
        problem_column=args.problem_column,
        answer_column=args.answer_column,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    best = result.ranking[0]
    print(
        f"[em-trainer] top prompt (pool index {best.index}): pass rate {best.pass_rate:.3f}, variance "
        f"{best.variance:.4f}, mean length {best.mean_length:.0f} tokens"
    )
    if result.bad_rows:
        print(f"[em-trainer] {len(result.bad_rows)} bad row(s) skipped; listed in {result.report}")
    print(
        f"[em-trainer] wrote {min(args.top, len(result.ranking))} prompt(s) to {result.output}; "
        f"ranking in {result.report}"
    )
    print(f"[em-trainer] train on it: em-trainer train --dataset {result.output}")
    return 0
