"""``em-trainer sweep``: train once per seed and grid point, evaluate each run, aggregate over seeds, plot."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..data.paths import config_file_from_argv, resolve_config_path
from .common import NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_INT, add, option, verb_parser

HELP = "train over seeds and a grid, evaluate each run, aggregate mean/std/min/max, plot"


@dataclass
class SweepArguments:
    """The options of ``em-trainer sweep`` (flags, or keys of its ``--config`` YAML); the executor's are
    :class:`~em_trainer.workflows.executors.ExecutorArguments`, and any other option goes to every training run.

    Args:
        train_config (`str`, required): the ``em-trainer train`` YAML every run starts from.
        seeds (`int`, defaults to `16`): the seeds of each grid point.
        first_seed (`int`, defaults to `0`): the first of them.
        grid (`list[str]`, defaults to `[]`): ``field=v1,v2,...``, repeated for a product.
        eval (`str`, defaults to `""`): benchmarks to score each run on (a comma list); empty evaluates nothing.
        eval_checkpoints (`bool`, defaults to `False`): also score every step's checkpoint; needs ``eval``, as do
            the five below.
        save_steps (`int`, defaults to `1`): the checkpoint spacing with ``eval_checkpoints``.
        data_dir (`str` or `None`, defaults to `None`): local benchmark files.
        limit (`int` or `None`, defaults to `None`): the first N problems of each benchmark.
        max_new_tokens (`int`, defaults to `3072`): the response budget of the evaluation.
        eval_temperature (`float`, defaults to `0.0`): the evaluation's sampling temperature (0 is greedy).
        batch_size (`int`, defaults to `8`): prompts per generate call.
        output_dir (`str`, defaults to `"outputs/sweep"`): runs, evaluations and the summary.
        launcher (`str` or `None`, defaults to `None`): the prefix that runs ``-m em_trainer.cli train``.
        plan (`str` or `None`, defaults to `None`): internal, the planned sweep's ``plan.json``.
        job (`int` or `None`, defaults to `None`): internal, the run of the plan an executor runs.
    """

    train_config: str | None = option(None, "the em-trainer train YAML every run starts from (required)")
    seeds: int = option(16, domain=POSITIVE_INT)
    first_seed: int = option(0, domain=NON_NEGATIVE_INT)
    grid: list[str] = option([], "field=v1,v2,... (repeat for a product)", repeatable=True)
    eval: str = option("", "benchmarks to score each run on, e.g. math500,amc23")
    eval_checkpoints: bool = option(False, "also score every step checkpoint (Fig. 2)")
    save_steps: int = option(1, "checkpoint spacing with --eval_checkpoints", domain=POSITIVE_INT)
    data_dir: str | None = option(None)
    limit: int | None = option(None, domain=POSITIVE_INT)
    max_new_tokens: int = option(3072, domain=POSITIVE_INT)
    eval_temperature: float = option(0.0, domain=NON_NEGATIVE_FLOAT)
    batch_size: int = option(8, domain=POSITIVE_INT)
    output_dir: str = option("outputs/sweep")
    launcher: str | None = option(
        None, "prefix that runs `-m em_trainer.cli train`, e.g. 'accelerate launch --num_processes 8'"
    )
    plan: str | None = option(None, "internal: a planned sweep's plan.json, which --job reads")
    job: int | None = option(
        None, "internal: run this run of the plan (what the executors run)", domain=NON_NEGATIVE_INT
    )


def build_parser() -> argparse.ArgumentParser:
    parser = verb_parser(
        "sweep",
        "Train once per seed and grid point (each run its own process), evaluate, aggregate over seeds. "
        "Options not listed here are passed to every `em-trainer train` run. `--config` is a YAML of these "
        "options (TrlParser's dialect).",
        SweepArguments,
    )
    add_executor_arguments(parser)
    return parser


# Options that act only on the evaluation of each run (--eval): without it they would be parsed and dropped.
EVAL_ONLY = ("eval_checkpoints", "save_steps", "data_dir", "limit", "max_new_tokens", "eval_temperature", "batch_size")


def _refuse_evaluation_flags_without_eval(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, in one line, evaluation options given without ``--eval`` (from flags or the YAML)."""
    from ..workflows.sweep import SweepError

    if args.eval:
        return
    given = [name for name in EVAL_ONLY if getattr(args, name) != parser.get_default(name)]
    if given:
        raise SweepError(
            f"{', '.join('--' + name for name in given)} would have no effect without --eval: they set how each run "
            "is evaluated (add --eval arithmetic, or another benchmark), or leave them out."
        )


def main(argv: list[str]) -> int:
    from ..data.files import read_yaml_mapping
    from ..workflows.executors import describe
    from ..workflows.study import is_study_config
    from ..workflows.sweep import (
        SweepError,
        SweepPlan,
        parse_grid,
        plan_sweep,
        run_sweep,
        run_sweep_job,
        summary_table,
        sweep_jobs,
    )

    config = config_file_from_argv(argv)
    if config is not None and is_study_config(config):
        from . import study

        print("[em-trainer] deprecated: `em-trainer sweep --config <study YAML>` is now `em-trainer study --config "
              "<study YAML>` (run as such).", file=sys.stderr)  # fmt: skip
        return study.main(argv)
    parser = build_parser()
    if config is not None and not _is_sweep_config(read_yaml_mapping(config, "--config")):
        # Before the one dialect, --config named the train YAML each run starts from.
        print("[em-trainer] deprecated: `em-trainer sweep --config <train YAML>` is now `--train_config <train "
              "YAML>` (run as such); --config is a YAML of the sweep's own options.", file=sys.stderr)  # fmt: skip
        argv = _renamed(argv, "--config", "--train_config")
        config = None
    args, executor_flags, extra = parser.parse_args_and_config(argv, return_remaining_strings=True)
    if config is not None and args.train_config is not None:
        args.train_config = resolve_config_path(args.train_config, config, "train_config")
    if args.job is not None:
        if args.plan is None:
            raise SweepError("--job needs --plan (the sweep's plan.json): the executors pass both.")
        plan = SweepPlan.load(args.plan)
        if args.job >= len(plan.runs):
            raise SweepError(f"--job {args.job}: the plan has runs 0 to {len(plan.runs) - 1}.")
        run_sweep_job(plan, args.job)
        return 0
    if args.train_config is None:
        raise SweepError("--train_config is required: the `em-trainer train` YAML every run starts from.")
    _refuse_evaluation_flags_without_eval(build_parser(), args)  # fresh: the YAML set this parser's defaults
    executor = executor_arguments(executor_flags)
    planned = (
        args.train_config,
        args.output_dir,
        args.seeds,
        parse_grid(args.grid),
        [b for b in args.eval.split(",") if b],
        {
            "data_dir": args.data_dir,
            "limit": args.limit,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.eval_temperature,
            "batch_size": args.batch_size,
        },
    )
    options = {
        "eval_checkpoints": args.eval_checkpoints,
        "save_steps": args.save_steps,
        "extra_train_args": extra,
        "first_seed": args.first_seed,
        "launcher": args.launcher,
    }
    if executor.dry_run:
        plan = plan_sweep(*planned, **options)
        plan.save()
        print(describe(sweep_jobs(plan), executor, Path(plan.root) / "job_logs"))
        return 0
    summary = run_sweep(*planned, executor=executor, **options)
    print(summary_table(summary["aggregate"]))
    for plot in summary["plots"]:
        print(f"[em-trainer] plot: {plot}")
    print(f"[em-trainer] sweep results in {os.path.abspath(args.output_dir)}/sweep_summary.json")
    return 0


def _is_sweep_config(content: dict) -> bool:
    """A YAML of the sweep's own options (it names ``train_config``), rather than a train YAML."""
    return "train_config" in content


def _renamed(argv: list[str], old: str, new: str) -> list[str]:
    return [new if a == old else new + a[len(old) :] if a.startswith(old + "=") else a for a in argv]


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """Every field of :class:`~em_trainer.workflows.executors.ExecutorArguments` as a flag."""
    import dataclasses
    import typing

    from ..workflows.executors import EXECUTORS, ExecutorArguments

    group = parser.add_argument_group("executor (how the runs are run: docs/scale.md)")
    hints = typing.get_type_hints(ExecutorArguments)
    for item in dataclasses.fields(ExecutorArguments):
        help_text = item.metadata.get("help")
        hint = str(hints[item.name])
        if item.name == "executor":
            add(group, item.name, choices=EXECUTORS, default=item.default, help=help_text)
        elif hints[item.name] is bool:
            add(group, item.name, action="store_true", help=help_text)
        elif hint.startswith("list"):
            # As TrlParser reads a list field (the study's flags): several values after one flag.
            add(group, item.name, nargs="+", default=[], help=help_text)
        else:
            kind = float if "float" in hint else int if "int" in hint else str
            domain = {int: NON_NEGATIVE_INT, float: NON_NEGATIVE_FLOAT}.get(kind, kind)
            if item.name in ("max_parallel", "timeout_min"):
                domain = POSITIVE_INT
            add(group, item.name, type=domain, default=item.default, help=help_text)


def executor_arguments(args: argparse.Namespace):
    import dataclasses

    from ..workflows.executors import ExecutorArguments

    return ExecutorArguments(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ExecutorArguments)})
