"""``em-trainer sweep``: train once per seed and grid point, evaluate each run, aggregate over seeds, plot."""

from __future__ import annotations

import argparse
import os

from .common import NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_INT, add, config_file_arg, verb_parser

HELP = "train over seeds and a grid, evaluate each run, aggregate mean/std/min/max, plot"


def build_parser() -> argparse.ArgumentParser:
    parser = verb_parser(
        "sweep",
        "Train once per seed and grid point (each run its own process), evaluate, aggregate over seeds. "
        "Options not listed here are passed to every `em-trainer train` run.",
    )
    add(parser, "config", required=True, help="the em-trainer train YAML every run starts from")
    add(parser, "seeds", type=POSITIVE_INT, default=16)
    add(parser, "first_seed", type=NON_NEGATIVE_INT, default=0)
    add(parser, "grid", action="append", default=[], help="field=v1,v2,... (repeat for a product)")
    add(parser, "eval", default="", help="benchmarks to score each run on, e.g. math500,amc23")
    add(parser, "eval_checkpoints", action="store_true", help="also score every step checkpoint (Fig. 2)")
    add(parser, "save_steps", type=POSITIVE_INT, default=1, help="checkpoint spacing with --eval_checkpoints")
    add(parser, "data_dir")
    add(parser, "limit", type=POSITIVE_INT)
    add(parser, "max_new_tokens", type=POSITIVE_INT, default=3072)
    add(parser, "eval_temperature", type=NON_NEGATIVE_FLOAT, default=0.0)
    add(parser, "batch_size", type=POSITIVE_INT, default=8)
    add(parser, "output_dir", default="outputs/sweep")
    add(
        parser,
        "launcher",
        help="prefix that runs `-m em_trainer.cli train`, e.g. 'accelerate launch --num_processes 8'",
    )
    return parser


def build_study_parser() -> argparse.ArgumentParser:
    parser = verb_parser(
        "sweep",
        "Run (or resume) a study: a YAML with `arms`, e.g. recipes/configs/smollm2-135m-cpu/replication/study.yaml.",
    )
    add(parser, "config", required=True, help="the study YAML")
    add(parser, "quick", action="store_true", help="the study's CI-sized variant (its `quick:` block)")
    add(parser, "output_dir", help="default: the study's output_dir")
    add(parser, "results_file", help="default: the study's results_file")
    add(
        parser,
        "only_seed",
        type=NON_NEGATIVE_INT,
        help="train and measure this seed's training arms only (run another seed in a second process); "
        "a final run without it gathers every seed",
    )
    add(
        parser,
        "only_arm",
        help="train and measure this training arm only (with --only_seed: that seed's run of it), so that a second "
        "process can take another arm of the same seed",
    )
    add(parser, "report", action="store_true", help="run nothing: write the results JSON from what is measured so far")
    return parser


def run_study_config(argv: list[str]) -> int:
    from pathlib import Path

    from ..workflows.study import StudyError, load_study, run_study
    from ..workflows.study_report import render_report

    args = build_study_parser().parse_args(argv)
    study = load_study(args.config, quick=args.quick, output_dir=args.output_dir)
    if args.results_file:
        study.results_file = Path(args.results_file)
    if args.only_seed is not None and not 0 <= args.only_seed < study.seeds:
        raise StudyError(f"--only_seed {args.only_seed}: the study has seeds 0 to {study.seeds - 1}.")
    if args.only_arm is not None and args.only_arm not in study.training_arms:
        raise StudyError(
            f"--only_arm {args.only_arm}: the study's training arms are {', '.join(study.training_arms)}."
        )
    results = run_study(study, only_seed=args.only_seed, only_arm=args.only_arm, report_only=args.report)
    report = render_report(results)
    (study.output_dir / "report.md").write_text(report, encoding="utf-8")
    print(report)
    print(
        f"[em-trainer] study results in {os.path.abspath(study.results_file)}; report in {study.output_dir}/report.md"
    )
    return 0


def main(argv: list[str]) -> int:
    from ..data.files import read_yaml_mapping
    from ..workflows.study import is_study_config
    from ..workflows.sweep import parse_grid, run_sweep, summary_table

    config = config_file_arg(argv)
    if config is not None:
        read_yaml_mapping(config, "--config")
    if config is not None and is_study_config(config):
        return run_study_config(argv)
    args, extra = build_parser().parse_known_args(argv)
    summary = run_sweep(
        args.config,
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
        eval_checkpoints=args.eval_checkpoints,
        save_steps=args.save_steps,
        extra_train_args=extra,
        first_seed=args.first_seed,
        launcher=args.launcher,
    )
    print(summary_table(summary["aggregate"]))
    for plot in summary["plots"]:
        print(f"[em-trainer] plot: {plot}")
    print(f"[em-trainer] sweep results in {os.path.abspath(args.output_dir)}/sweep_summary.json")
    return 0
