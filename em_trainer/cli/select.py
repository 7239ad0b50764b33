"""``em-trainer select``: rank a prompt pool by pass@k variance and write the one-shot training set."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..data.models import DEFAULT_MODEL
from .common import (
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    BackendArguments,
    Bounded,
    check_models,
    generator_kwargs,
    option,
    parse_verb_args,
    verb_parser,
)

HELP = "rank a prompt pool by pass@k variance and write the one-shot training set"


@dataclass
class _SelectOptions:
    model: str = option(DEFAULT_MODEL)
    pool: str | None = option(None, "Hub id or local .jsonl/.parquet/.csv with problems (+answers)", required=True)
    split: str = option("train")
    k: int = option(8, "samples per prompt", domain=Bounded(int, 2))
    top: int = option(1, "prompts to write", domain=POSITIVE_INT)
    output: str = option("outputs/selected.jsonl")
    labels: str = option("gold", "'none': agreement with majority", choices=["gold", "none"])
    temperature: float = option(0.5, "the training temperature", domain=POSITIVE_FLOAT)
    max_new_tokens: int = option(2048, domain=POSITIVE_INT)
    problem_column: str | None = option(None, "default: problem, question or prompt")
    answer_column: str | None = option(None, "default: answer, final_answer, or the boxed answer of solution")
    limit: int | None = option(None, "first N rows of the pool", domain=POSITIVE_INT)
    batch_size: int = option(8, "prompts per generate call", domain=POSITIVE_INT)


@dataclass
class SelectArguments(BackendArguments, _SelectOptions):
    """The options of ``em-trainer select`` (flags, or keys of its ``--config`` YAML).

    Args:
        model (`str`, defaults to the embedded SmolLM2-135M-Instruct): the model that samples.
        pool (`str`, required): the prompt pool, a Hub id or a local file with problems and answers.
        split (`str`, defaults to `"train"`): the pool's split.
        k (`int`, defaults to `8`): samples per prompt (at least 2: a variance needs two).
        top (`int`, defaults to `1`): prompts written.
        output (`str`, defaults to `"outputs/selected.jsonl"`): the training set `train --dataset` reads.
        labels (`str`, defaults to `"gold"`): ``gold`` grades against the answers; ``none`` against the majority.
        temperature (`float`, defaults to `0.5`): the sampling temperature, the training one.
        max_new_tokens (`int`, defaults to `2048`): the response budget.
        problem_column (`str` or `None`, defaults to `None`): the pool's problem column, when not the usual.
        answer_column (`str` or `None`, defaults to `None`): the pool's answer column, when not the usual.
        limit (`int` or `None`, defaults to `None`): the first N rows of the pool.
        batch_size (`int`, defaults to `8`): prompts per generate call.
        seed (`int`, defaults to `0`): the sampling seed.

    The backend fields are :class:`~em_trainer.cli.common.BackendArguments`.
    """

    seed: int = option(0, domain=NON_NEGATIVE_INT)


def build_parser() -> argparse.ArgumentParser:
    return verb_parser(
        "select",
        "Rank a prompt pool by the variance of pass@k success (one-shot EM paper, section 2.2) and write "
        "the top prompts in the format `em-trainer train --dataset` reads.",
        SelectArguments,
    )


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
