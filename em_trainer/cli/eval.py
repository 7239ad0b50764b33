"""``em-trainer eval``: score models on math benchmarks, resumably, with a comparison table."""

from __future__ import annotations

import argparse
import os

from ..data.models import describe_model
from ..data.prompts import MATH_SYSTEM_PROMPT
from ..evaluation.benchmarks import BENCHMARKS, DEFAULT_BENCHMARKS
from . import common
from .common import add, parse_verb_args, verb_parser

DEFAULT_MAX_NEW_TOKENS = {"math": 3072, "physics": 3072, "code": 512}
HELP = "score models on math (MATH500, Minerva, OlympiadBench, AMC23, AIME24, GSM8K, arithmetic) and code benchmarks"


def _floats(text: str) -> list[float]:
    return [common.NON_NEGATIVE_FLOAT(x.strip()) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = verb_parser("eval", HELP + "; resumable, with a comparison table.")
    add(parser, "model", action="append", help="Hub id, local dir, .gguf or alias; repeat to compare")
    add(parser, "benchmarks", default=",".join(DEFAULT_BENCHMARKS), help=f"any of {', '.join(BENCHMARKS)}")
    add(parser, "data_dir", help="local benchmark files: <dir>/<benchmark>/test.jsonl (default: the Hub)")
    add(parser, "output_dir", default="outputs/eval")
    common.add_sampling_arguments(
        parser,
        "0 = greedy (the paper's setting; the default, or the EM-INF preset's)",
        None,
        "response budget in tokens; default 3072 for math, 512 for code benchmarks",
    )
    add(parser, "temperatures", type=_floats, help="comma list: a sweep, plotted to temperature_sweep.png")
    add(parser, "limit", type=common.POSITIVE_INT, help="first N problems of each benchmark")
    add(parser, "batch_size", type=common.POSITIVE_INT, default=8, help="prompts per generate call (HF backend)")
    common.add_backend_argument(parser)
    add(parser, "system_prompt", default=MATH_SYSTEM_PROMPT, help="'' for none")
    majority_help = "self-consistency: K samples per problem, score the majority answer (maj@K)"
    add(parser, "majority", type=common.Bounded(int, 2), help=majority_help)
    common.add_em_inf_arguments(parser)
    return parser


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
