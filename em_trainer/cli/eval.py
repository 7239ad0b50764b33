"""``em-trainer eval``: score models on math benchmarks, resumably, with a comparison table."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from ..data.models import describe_model
from ..data.prompts import MATH_SYSTEM_PROMPT
from ..evaluation.benchmarks import BENCHMARKS, DEFAULT_BENCHMARKS
from . import common
from .common import option, parse_verb_args, verb_parser

DEFAULT_MAX_NEW_TOKENS = {"math": 3072, "physics": 3072, "code": 512}
HELP = "score models on math (MATH500, Minerva, OlympiadBench, AMC23, AIME24, GSM8K, arithmetic) and code benchmarks"


def _floats(text: str) -> list[float]:
    return [common.NON_NEGATIVE_FLOAT(x.strip()) for x in text.split(",") if x.strip()]


@dataclass
class _EvalOptions:
    model: list[str] | None = option(
        None, "Hub id, local dir, .gguf or alias; repeat to compare (default: smollm2-135m-instruct)", repeatable=True
    )
    benchmarks: str = option(",".join(DEFAULT_BENCHMARKS), f"any of {', '.join(BENCHMARKS)}")
    data_dir: str | None = option(None, "local benchmark files: <dir>/<benchmark>/test.jsonl (default: the Hub)")
    output_dir: str = option("outputs/eval")
    temperatures: list[float] | None = option(
        None, "comma list: a sweep, plotted to temperature_sweep.png", domain=_floats
    )
    limit: int | None = option(None, "first N problems of each benchmark", domain=common.POSITIVE_INT)
    batch_size: int = option(8, "prompts per generate call (HF backend)", domain=common.POSITIVE_INT)
    system_prompt: str = option(MATH_SYSTEM_PROMPT, "'' for none")
    majority: int | None = option(
        None,
        "self-consistency: K samples per problem, score the majority answer (maj@K)",
        domain=common.Bounded(int, 2),
    )


@dataclass
class EvalArguments(common.EMInfArguments, common.BackendArguments, common.SamplingArguments, _EvalOptions):
    """The options of ``em-trainer eval`` (flags, or keys of its ``--config`` YAML).

    Args:
        model (`list[str]` or `None`, defaults to `None`): models to score, each a Hub id, folder, ``.gguf`` or
            alias; None is the embedded SmolLM2-135M-Instruct.
        benchmarks (`str`): a comma list of benchmark names; defaults to the paper's six.
        data_dir (`str` or `None`, defaults to `None`): local benchmark files instead of the Hub.
        output_dir (`str`, defaults to `"outputs/eval"`): records, summaries and plots.
        temperatures (`list[float]` or `None`, defaults to `None`): a temperature sweep (a comma list).
        limit (`int` or `None`, defaults to `None`): the first N problems of each benchmark.
        batch_size (`int`, defaults to `8`): prompts per generate call.
        system_prompt (`str`): the math system prompt; '' for none.
        majority (`int` or `None`, defaults to `None`): maj@K, K samples per problem.

    The sampling (:class:`~em_trainer.cli.common.SamplingArguments`), backend and EM-INF fields are the other
    verbs'; ``temperature`` defaults to greedy (or the EM-INF preset's), ``max_new_tokens`` to 3072 for math and 512
    for code.
    """

    temperature: float | None = option(
        None, "0 = greedy (the paper's setting; the default, or the EM-INF preset's)", domain=common.NON_NEGATIVE_FLOAT
    )
    max_new_tokens: int | None = option(
        None, "response budget in tokens; default 3072 for math, 512 for code benchmarks", domain=common.POSITIVE_INT
    )


def build_parser() -> argparse.ArgumentParser:
    return verb_parser("eval", HELP + "; resumable, with a comparison table.", EvalArguments)


def main(argv: list[str]) -> int:
    from ..data.files import check_writable_dir
    from ..decoding.generation import make_generator
    from ..evaluation.benchmarks import EvaluationError, load_benchmark
    from ..evaluation.evaluate import evaluate_benchmark, plot_temperature_sweep, summarize

    args = parse_verb_args(build_parser(), argv)
    models = args.model or ["smollm2-135m-instruct"]
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise EvaluationError(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    for benchmark in benchmarks:  # fail on a missing benchmark before loading any model
        load_benchmark(benchmark, args.data_dir, limit=1)
    if args.temperature is not None and args.temperatures:
        raise EvaluationError("--temperature and --temperatures both given: pass one (a sweep lists every T).")
    if args.majority is not None:
        if args.n not in (1, args.majority):
            raise EvaluationError(f"--n {args.n} and --majority {args.majority}: maj@K samples K per problem; "
                                  "pass only --majority.")  # fmt: skip
        args.n = args.majority
        if not (args.temperature or args.temperatures):
            raise EvaluationError(
                "--majority samples K answers: set --temperature > 0 (e.g. 0.7); greedy repeats one."
            )
    check_writable_dir(args.output_dir, "output_dir")
    common.check_models(models)
    em_inf = common.em_inf_settings(args)
    default_temperature = em_inf.temperature if em_inf is not None and em_inf.temperature is not None else 0.0
    temperatures = args.temperatures or [default_temperature if args.temperature is None else args.temperature]
    results = []
    for model in models:
        generator = make_generator(
            model, backend=args.backend, em_inf=em_inf, **common.generator_kwargs(args, args.batch_size)
        )
        label = describe_model(model) + (f"+em-inf-{args.em_inf_preset}" if args.em_inf else "")
        for temperature in temperatures:
            for benchmark in benchmarks:
                results.append(
                    evaluate_benchmark(
                        generator,
                        generator.tokenizer,
                        label,
                        benchmark,
                        args.output_dir,
                        common.sampling_settings(
                            args, temperature, DEFAULT_MAX_NEW_TOKENS[BENCHMARKS[benchmark].kind]
                        ),
                        data_dir=args.data_dir,
                        limit=args.limit,
                        system_prompt=args.system_prompt or None,
                        chunk_size=args.batch_size,
                    )
                )
    print(summarize(results, args.output_dir))
    if len(temperatures) > 1:
        path = plot_temperature_sweep(results, os.path.join(args.output_dir, "temperature_sweep.png"))
        print(f"[em-trainer] temperature sweep plot: {path}")
    print(f"[em-trainer] results in {os.path.abspath(args.output_dir)} (summary.md, summary.json, per-sample records)")
    return 0
