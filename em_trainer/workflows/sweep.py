"""Multi-seed sweeps: train per seed and grid point, evaluate each run, aggregate over seeds, plot.

EM results vary up to twofold across seeds, so the paper rests every claim on 16 seeds. A sweep runs
``em-trainer train`` once per (grid point, seed), each in its own process and directory, evaluates the final model
(and, with ``eval_checkpoints``, every step checkpoint), and aggregates per setting and benchmark the mean, std, min
and max over seeds. Each grid point's folder is named by the point and the fingerprint of its whole resolved train
config (``em-trainer train --check`` computes it: every option, the model's and the dataset's content), so a changed
base config trains afresh in a new folder. A finished run leaves ``.run_complete`` and is skipped on a rerun with the
same fingerprint and evaluation settings; an interrupted one resumes from its last checkpoint (the train command
does that).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.files import atomic_write_json, atomic_write_text, exclusive_lock
from ..data.identity import readable_name
from .child_process import run_child

RUN_MARKER = ".run_complete"


class SweepError(ValueError):
    """A sweep setting that cannot work, or a run that failed; the message says where to look."""


@dataclass(frozen=True)
class Run:
    point: tuple[tuple[str, str], ...]
    seed: int

    @property
    def point_tag(self) -> str:
        if not self.point:
            return "base"
        return "__".join(f"{k}={v}" for k, v in self.point)

    def directory(self, root: Path, run_fingerprint: str | None = None) -> Path:
        """``<root>/<point>-<fingerprint>/seed-N`` (``<root>/<point>/seed-N`` without one, the study's layout)."""
        name = re.sub(r"[^\w.=\-]+", "_", self.point_tag)
        if run_fingerprint is not None:
            name = readable_name(name, run_fingerprint)
        return root / name / f"seed-{self.seed}"


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["temperature=0.3,0.5", "learning_rate=1e-5,2e-5"]`` -> ``{"temperature": ["0.3", "0.5"], ...}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise SweepError(f"--grid '{item}' must look like field=v1,v2,...")
        field, values = item.split("=", 1)
        grid[field.strip()] = [v.strip() for v in values.split(",") if v.strip()]
        if not grid[field.strip()]:
            raise SweepError(f"--grid '{item}' has no values.")
    return grid


def plan_runs(grid: dict[str, list[str]], seeds: int, first_seed: int = 0) -> list[Run]:
    points = [tuple(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())] if grid else [()]
    return [Run(point, seed) for point in points for seed in range(first_seed, first_seed + seeds)]


# What a sweep sets for each run itself. Given again among the options passed on to `em-trainer train`, the later
# flag would win: every seed the same, every run in one folder, one value for every grid point.
RUN_OWNED = {
    "seed": "the sweep sets each run's seed (--seeds, --first_seed)",
    "output_dir": "the sweep names each run's folder (under its own --output_dir)",
    "overwrite_output_dir": "the sweep decides what in a run's folder is reused",
    "config": "every run's config is the sweep's --train_config",
}


def refuse_owned_options(args: list[str], owned: dict[str, str], where: str) -> str | None:
    """The one-line refusal of the first option in ``args`` (``--name``, ``--name=value`` or ``--name-with-dashes``)
    that ``owned`` names, or None."""
    for arg in args:
        if str(arg).startswith("--"):
            name = str(arg)[2:].split("=", 1)[0].replace("-", "_")
            if name in owned:
                return f"{where} set --{name}: {owned[name]}; remove it there."
    return None


def _train_arguments(run: Run, config: str, directory: Path, extra: list[str], save_steps: int | None) -> list[str]:
    # The run's folder is the sweep's (or study's) to name: work of other settings in it is replaced, never resumed.
    arguments = ["train", "--config", config, "--seed", str(run.seed), "--output_dir", str(directory),
                 "--overwrite_output_dir"]  # fmt: skip
    for field, value in run.point:
        arguments += [f"--{field}", value]
    if save_steps is not None:
        arguments += ["--save_steps", str(save_steps), "--save_total_limit", "1000"]
    return arguments + extra


def check_runs(
    checks: list[tuple[Run, str, Path, list[str], int | None]], labels: list[str] | None = None
) -> list[str]:
    """``em-trainer train --check`` with each run's options: a bad value stops the sweep or study before its first
    run trains, with train's own one-line message. Returns each run's fingerprint (its resolved config's), in order;
    the first check (in order) that failed raises its error, prefixed with its label.

    All checks run in one process (``python -m em_trainer.cli.check_batch``): a check takes milliseconds and a
    process start-up with its imports seconds, so a study's 8 arm checks cost one start-up instead of 8 (about 9 s
    instead of 36 s side by side on two cores)."""
    if not checks:
        return []
    argvs = [[*_train_arguments(*check), "--check"] for check in checks]
    with tempfile.TemporaryDirectory(prefix="em-trainer-checks-") as folder:
        results_file = Path(folder) / "results.json"
        process = subprocess.run([sys.executable, "-m", "em_trainer.cli.check_batch", str(results_file)],
                                 input=json.dumps(argvs), capture_output=True, text=True)  # fmt: skip
        if process.returncode != 0 or not results_file.is_file():
            tail = (process.stderr or process.stdout)[-2000:]
            raise SweepError(f"`em-trainer train --check` of {len(checks)} run(s) did not finish:\n{tail}")
        results = json.loads(results_file.read_text(encoding="utf-8"))
    fingerprints = []
    for index, ((run, *_), result) in enumerate(zip(checks, results, strict=True)):
        prefix = f"{labels[index]}: " if labels else ""
        if result["returncode"] != 0:
            stderr = result["stderr"].splitlines()
            lines = [line for line in stderr if "error:" in line] or stderr[-1:]
            raise SweepError(f"{prefix}run {run.point_tag} seed {run.seed} would fail: {' '.join(lines).strip()}")
        found = re.search(r"run fingerprint: (\w+)", result["stdout"])
        if found is None:
            raise SweepError(
                f"{prefix}run {run.point_tag}: `train --check` printed no run fingerprint:\n{result['stdout'][-500:]}"
            )
        fingerprints.append(found.group(1))
    return fingerprints


def train_run(
    run: Run, config: str, directory: Path, extra: list[str], save_steps: int | None, launcher: str | None = None
) -> None:
    # Each run is its own process: memory is returned between runs, and a launcher such as
    # "accelerate launch --num_processes 8" or "torchrun --nproc_per_node 2" makes each run a distributed one.
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    command = [*prefix, "-m", "em_trainer.cli", *_train_arguments(run, config, directory, extra, save_steps)]
    # Streamed to train.log as it runs; a stop is forwarded and waited for, so the run saves its step (child_process).
    code, tail = run_child(command, directory / "train.log", tail=2000)
    if code != 0:
        raise SweepError(f"training run {run.point_tag} seed {run.seed} failed (see {directory}/train.log):\n{tail}")


def loss_by_step(directory: Path) -> dict[int, float]:
    """The logged loss per optimizer step of a finished run: from the run's final ``trainer_state.json`` (written
    when training ends, early stop included), else from its last checkpoint's."""
    from ..core.checkpoints import last_complete_checkpoint

    final = directory / "trainer_state.json"
    if final.is_file():
        state_file = final
    else:
        checkpoint = last_complete_checkpoint(directory, log=False)
        if checkpoint is None:
            return {}
        state_file = Path(checkpoint) / "trainer_state.json"
    state = json.loads(state_file.read_text())
    return {int(log["step"]): float(log["loss"]) for log in state["log_history"] if "loss" in log and "step" in log}


def evaluate_model(
    model_dir: Path, benchmarks: list[str], output_dir: Path, eval_settings: dict[str, Any]
) -> dict[str, float]:
    from ..decoding.generation import HFGenerator, SamplingSettings
    from ..evaluation.evaluate import evaluate_benchmark

    generator = HFGenerator(str(model_dir), batch_size=eval_settings.get("batch_size", 8))
    settings = SamplingSettings(
        temperature=eval_settings.get("temperature", 0.0), max_new_tokens=eval_settings.get("max_new_tokens", 3072)
    )
    scores = {}
    for benchmark in benchmarks:
        result = evaluate_benchmark(
            generator,
            generator.tokenizer,
            str(model_dir),
            benchmark,
            output_dir,
            settings,
            data_dir=eval_settings.get("data_dir"),
            limit=eval_settings.get("limit"),
            progress=None,
        )
        scores[benchmark] = result.accuracy
    return scores


def summarize(values: list[float]) -> dict[str, float]:
    """Mean, std (sample, over seeds; 0 for one seed), min, max and the number of seeds."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "seeds": len(values),
    }


def aggregate(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per grid point and benchmark (and the final loss): ``summarize`` over seeds, NaN and missing values left out."""
    by_point: dict[str, dict[str, list[float]]] = {}
    for record in records:
        for benchmark, score in record["scores"].items():
            by_point.setdefault(record["point"], {}).setdefault(benchmark, []).append(score)
        by_point.setdefault(record["point"], {}).setdefault("final_loss", []).append(record["final_loss"])
    out: dict[str, dict[str, dict[str, float]]] = {}
    for point, by_bench in by_point.items():
        out[point] = {}
        for name, values in by_bench.items():
            values = [v for v in values if v is not None and not math.isnan(v)]
            if values:
                out[point][name] = summarize(values)
    return out


@dataclass
class SweepPlan:
    """Everything a sweep's job needs (``plan.json`` in the sweep's folder), so a job never re-parses flags."""

    config: str
    root: str
    runs: list[tuple[tuple[tuple[str, str], ...], int]]
    fingerprints: dict[str, str]  # point tag -> run fingerprint
    evaluation: dict[str, Any]
    extra_train_args: list[str]
    save_steps: int | None
    launcher: str | None
    grid: dict[str, list[str]]
    seeds: int

    def run(self, index: int) -> Run:
        point, seed = self.runs[index]
        return Run(tuple((k, v) for k, v in point), seed)

    def directory(self, index: int) -> Path:
        run = self.run(index)
        return run.directory(Path(self.root), self.fingerprints[run.point_tag])

    def save(self) -> Path:
        return atomic_write_json(Path(self.root) / "plan.json", self.__dict__)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SweepPlan:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def plan_sweep(
    config: str,
    output_dir: str | os.PathLike,
    seeds: int,
    grid: dict[str, list[str]],
    benchmarks: list[str],
    eval_settings: dict[str, Any],
    eval_checkpoints: bool = False,
    save_steps: int | None = None,
    extra_train_args: list[str] | None = None,
    first_seed: int = 0,
    launcher: str | None = None,
) -> SweepPlan:
    """Check every grid point (``train --check``, which also gives its fingerprint) before any run trains."""
    save = save_steps if eval_checkpoints else None
    extra = list(extra_train_args or [])
    owned = {**RUN_OWNED, **{field: "it is a field of --grid, and the passed-on flag would give every grid point one "
                                    "value" for field in grid}}  # fmt: skip
    if save is not None:
        owned["save_steps"] = "the sweep's own --save_steps sets it (with --eval_checkpoints)"
    refusal = refuse_owned_options(extra, owned, "the options passed on to `em-trainer train`")
    if refusal:
        raise SweepError(refusal)  # before the sweep's folder is created
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    runs = plan_runs(grid, seeds, first_seed)
    # Seeds differ only in the seed, which names the run's folder: one check per grid point.
    points = list({run.point: run for run in runs}.values())
    checked = check_runs([(run, config, root / ".check", extra, save) for run in points])
    fingerprints = {run.point_tag: fingerprint for run, fingerprint in zip(points, checked, strict=True)}
    evaluation = {"benchmarks": benchmarks, "settings": eval_settings, "checkpoints": eval_checkpoints}
    return SweepPlan(
        config=config, root=str(root), runs=[(run.point, run.seed) for run in runs], fingerprints=fingerprints,
        evaluation=evaluation, extra_train_args=extra, save_steps=save, launcher=launcher, grid=grid, seeds=seeds,
    )  # fmt: skip


def _finished(plan: SweepPlan, index: int) -> dict[str, Any] | None:
    """A run's record when it is trained and evaluated with the plan's evaluation settings."""
    marker = plan.directory(index) / RUN_MARKER
    if marker.is_file():
        record = json.loads(marker.read_text())
        if record.get("evaluation") == json.loads(json.dumps(plan.evaluation)):
            return record
    return None


def run_sweep_job(plan: SweepPlan, index: int, log: Any = print) -> dict[str, Any]:
    """Train and evaluate one run (grid point, seed) in its own folder; its ``.run_complete`` marker is the record.
    Writes nothing outside that folder, so jobs run side by side and a killed one resumes from its checkpoint. A job
    of the same run still going (its driver killed without it) holds the run's lock: this one waits, then resumes."""
    with exclusive_lock(plan.directory(index).parent / f".{plan.directory(index).name}.lock"):
        return _run_sweep_job(plan, index, log)


def _run_sweep_job(plan: SweepPlan, index: int, log: Any) -> dict[str, Any]:
    run, directory = plan.run(index), plan.directory(index)
    number = f"{index + 1}/{len(plan.runs)}"
    record = _finished(plan, index)
    if record is not None:
        log(f"[sweep] {number} {run.point_tag} seed {run.seed}: done, kept", flush=True)
        return record
    marker = directory / RUN_MARKER
    if marker.is_file():
        log(f"[sweep] {number} {run.point_tag} seed {run.seed}: trained, evaluation settings changed: evaluating "
            "again", flush=True)  # fmt: skip
        marker.unlink()
    elif (legacy := run.directory(Path(plan.root)) / RUN_MARKER).is_file():
        log(f"[sweep] {run.point_tag} seed {run.seed}: not reusing {legacy.parent} (written before runs recorded "
            "their config's fingerprint)", flush=True)  # fmt: skip
    log(f"[sweep] {number} {run.point_tag} seed {run.seed}: training", flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    train_run(run, plan.config, directory, plan.extra_train_args, plan.save_steps, plan.launcher)
    losses = loss_by_step(directory)
    benchmarks, settings = plan.evaluation["benchmarks"], plan.evaluation["settings"]
    record = {
        "fingerprint": plan.fingerprints[run.point_tag],
        "evaluation": plan.evaluation,
        "point": run.point_tag,
        "fields": dict(run.point),
        "seed": run.seed,
        "loss_by_step": losses,
        "final_loss": losses[max(losses)] if losses else None,
        "scores": {},
        "scores_by_step": {},
    }
    if benchmarks:
        record["scores"] = evaluate_model(directory, benchmarks, directory / "eval", settings)
        if plan.evaluation["checkpoints"]:
            for checkpoint in sorted(directory.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
                step = int(checkpoint.name.split("-")[1])
                record["scores_by_step"][step] = evaluate_model(
                    checkpoint, benchmarks, directory / "eval" / checkpoint.name, settings
                )
    atomic_write_json(marker, record)
    return json.loads(marker.read_text())


def sweep_jobs(plan: SweepPlan) -> list[Any]:
    """The executor's command lines: ``em-trainer sweep --plan <plan.json> --job <index>``, one per unfinished run."""
    from .executors import Job

    path = str(Path(plan.root) / "plan.json")
    return [
        Job(f"{plan.run(i).point_tag}-seed{plan.run(i).seed}", ("sweep", "--plan", path, "--job", str(i)))
        for i in range(len(plan.runs))
    ]


def run_sweep(*args: Any, executor: Any = None, log: Any = print, **kwargs: Any) -> dict[str, Any]:
    """Plan (:func:`plan_sweep`'s arguments), run every run with ``executor`` (an
    :class:`~em_trainer.workflows.executors.ExecutorArguments`; None: here, one after another), gather."""
    from .executors import run_jobs

    plan = plan_sweep(*args, **kwargs)
    plan.save()
    if executor is None or executor.executor == "serial":
        for index in range(len(plan.runs)):
            run_sweep_job(plan, index, log)
    else:
        pending = [job for i, job in enumerate(sweep_jobs(plan)) if _finished(plan, i) is None]
        kept = len(plan.runs) - len(pending)
        if kept:
            log(f"[sweep] {kept} of {len(plan.runs)} run(s) done, kept", flush=True)
        run_jobs(pending, executor, Path(plan.root) / "job_logs", log)
    return gather_sweep(plan)


def gather_sweep(plan: SweepPlan) -> dict[str, Any]:
    """The summary (JSON, Markdown table, plots) from every run's marker, in the plan's order."""
    root = Path(plan.root)
    records = []
    for index in range(len(plan.runs)):
        record = _finished(plan, index)
        if record is None:
            run = plan.run(index)
            raise SweepError(f"run {run.point_tag} seed {run.seed} has no result in {plan.directory(index)}.")
        records.append(record)
    benchmarks = plan.evaluation["benchmarks"]
    summary = {"runs": records, "aggregate": aggregate(records), "grid": plan.grid, "seeds": plan.seeds}
    atomic_write_json(root / "sweep_summary.json", summary)
    atomic_write_text(root / "sweep_summary.md", summary_table(summary["aggregate"]))
    plots = []
    if any(r["scores_by_step"] for r in records):
        plots.append(plot_over_steps(records, root / "loss_and_score_vs_step.png"))
    for field in plan.grid:
        if benchmarks:
            plots.append(plot_over_field(records, field, root / f"score_vs_{field}.png"))
    summary["plots"] = [str(p) for p in plots]
    return summary


def summary_table(aggregated: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| setting | metric | mean | std | min | max | seeds |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for point, metrics in aggregated.items():
        for name, s in metrics.items():
            stats = " | ".join(f"{s[key]:.4f}" for key in ("mean", "std", "min", "max"))
            lines.append(f"| {point} | {name} | {stats} | {s['seeds']} |")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_over_steps(records: list[dict[str, Any]], path: Path) -> Path:
    """EM loss and average score against the optimizer step, one thin line per seed (the paper's Figure 2)."""
    plt = _pyplot()
    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    for record in records:
        label = f"{record['point']} s{record['seed']}"
        losses = {int(k): v for k, v in record["loss_by_step"].items()}
        loss_axis.plot(sorted(losses), [losses[k] for k in sorted(losses)], alpha=0.6, label=label)
        by_step = {int(k): v for k, v in record["scores_by_step"].items()}
        steps = sorted(by_step)
        score_axis.plot(
            steps, [100 * sum(by_step[s].values()) / len(by_step[s]) for s in steps], marker="o", alpha=0.6
        )
    loss_axis.set(xlabel="optimizer step", ylabel="EM loss (mean token entropy)", title="Loss over steps")
    score_axis.set(xlabel="optimizer step", ylabel="average score (%)", title="Score over steps")
    for axis in (loss_axis, score_axis):
        axis.grid(alpha=0.3)
    if len(records) <= 8:
        loss_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def plot_over_field(records: list[dict[str, Any]], field: str, path: Path) -> Path:
    """Average score against a swept field, mean over seeds with min-max spread (the paper's Figures 3 and 6)."""
    plt = _pyplot()
    values: dict[float, list[float]] = {}
    for record in records:
        if field not in record["fields"] or not record["scores"]:
            continue
        score = 100 * sum(record["scores"].values()) / len(record["scores"])
        values.setdefault(record["fields"][field], []).append(score)
    numeric = all(_is_number(v) for v in values)
    # A numeric field is plotted on its own scale; a categorical one (em_reward=token,trajectory) at even positions.
    labels = sorted(values, key=float) if numeric else list(values)
    xs = [float(v) for v in labels] if numeric else list(range(len(labels)))
    means = [sum(values[v]) / len(values[v]) for v in labels]
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    lows, highs = [min(values[v]) for v in labels], [max(values[v]) for v in labels]
    axis.fill_between(xs, lows, highs, alpha=0.25, label="min-max")
    axis.plot(xs, means, marker="o", label="mean over seeds")
    for x, v in zip(xs, labels, strict=True):
        axis.scatter([x] * len(values[v]), values[v], s=8, color="black", alpha=0.5)
    if not numeric:
        axis.set_xticks(xs, labels)
    elif field == "learning_rate":
        axis.set_xscale("log")
    axis.set(xlabel=field, ylabel="average score (%)", title=f"Score vs {field}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
