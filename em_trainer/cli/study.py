"""``em-trainer study``: a study (base model, decoding arms, training arms x seeds) run through an executor.

Parsed with TrlParser like ``train``: ``--config study.yaml`` (the study's definition) plus flags, every key of
:class:`~em_trainer.workflows.study.StudyConfig`, :class:`~em_trainer.workflows.study.StudyRunArguments` and
:class:`~em_trainer.workflows.executors.ExecutorArguments` being both.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HELP = "run a study: base, decoding and training arms x seeds, fanned out locally or on SLURM, then gathered"


def build_parser():
    from ..workflows.study import study_parser

    return study_parser()


def main(argv: list[str]) -> int:
    from ..workflows.executors import describe
    from ..workflows.study import (
        Study,
        StudyError,
        executor_jobs,
        is_submitted,
        parse_study_arguments,
        preparation_job,
        prepare_study,
        resolve_study,
        run_job,
        run_study,
        selected_file,
        study_jobs,
    )
    from ..workflows.study_report import render_report

    definition, run, executor, given = parse_study_arguments(argv)
    if run.job is not None or run.prepare:
        # A job, as an executor runs it: the study comes from the plan the starting process wrote.
        if run.plan is None:
            raise StudyError("--job and --prepare need --plan (the study's plan.json): executors pass both.")
        study = Study.from_plan(json.loads(Path(run.plan).read_text(encoding="utf-8")))
        if run.prepare:
            prepare_study(study)
            return 0
        name, _, seed = run.job.rpartition(":")
        if not name or not seed.isdigit():
            raise StudyError(f"--job {run.job!r}: write <arm>:<seed>, e.g. em_ft:0.")
        if not selected_file(study).is_file():
            raise StudyError(f"job {run.job}: the study is not prepared ({selected_file(study)} is missing).")
        run_job(study, name, int(seed), selected_file(study), launcher=run.launcher)
        return 0
    from ..data.paths import config_file_from_argv, split_config_equals

    config = config_file_from_argv(split_config_equals(argv))
    if config is None:
        raise StudyError("--config is required: the study YAML, e.g. recipes/configs/smollm2-135m-cpu/replication/"
                         "study.yaml.")  # fmt: skip
    study = resolve_study(definition, Path(config), run.quick, given)
    if executor.dry_run:
        pairs = study_jobs(study, run.only_seed, run.only_arm)
        print(f"study {config}{' (quick)' if run.quick else ''}: {len(study.training_arms)} training arm(s) x "
              f"{study.seeds} seed(s), steps {study.steps}; prepared once (pool, select, base and decoding arms), "
              f"then these jobs, then gathered into {study.results_file}")  # fmt: skip
        jobs = executor_jobs(study, pairs, run.launcher)
        if is_submitted(executor):
            print(describe([preparation_job(study)], executor, study.output_dir / "job_logs"))
            print("\nthen, once it has finished:")
        print(describe(jobs, executor, study.output_dir / "job_logs"))
        return 0
    results = run_study(study, only_seed=run.only_seed, only_arm=run.only_arm, report_only=run.report,
                        executor=executor, launcher=run.launcher)  # fmt: skip
    report = render_report(results)
    (study.output_dir / "report.md").write_text(report, encoding="utf-8")
    print(report)
    print(
        f"[em-trainer] study results in {os.path.abspath(study.results_file)}; report in {study.output_dir}/report.md"
    )
    sys.stdout.flush()
    return 0
