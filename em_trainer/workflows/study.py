"""The replication study: EM-FT, EM-RL and EM-INF against the base model on held-out arithmetic, over seeds.

Built from the project's own verbs, no parallel path: ``select`` picks the training prompt from the pool, the sweep's
training runs (``em-trainer train``, one process per seed) train each arm, and every measured model goes through the
code that ``eval`` (greedy and sampled accuracy, response length, share cut at the length limit) and ``analyze``
(fresh-sample entropy, raw-logit skewness) use. Each measurement is appended to ``measurements.jsonl`` as it
finishes and a finished training run leaves a marker, so a rerun after an interruption redoes nothing finished.

The study is fixed before any result is seen: the configuration lives in
``recipes/configs/smollm2-135m-cpu/replication/study.yaml`` and its ``quick`` block is the CI-sized variant.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.files import atomic_write_json, read_yaml_mapping
from ..data.paths import resolve_config_path
from .sweep import RUN_MARKER, Run, SweepError, check_run, summarize, train_run

METRICS = ("greedy_accuracy", "sampled_accuracy", "entropy", "skewness", "mean_length", "cut_share")
TEST_BENCHMARK = "arithmetic"
ARM_KINDS = ("decode", "train")
DECODINGS = ("plain", "em_inf", "adaptive_temperature")


class StudyError(SweepError):
    """A study configuration that cannot work; the message names the key and the fix."""


@dataclass
class Study:
    """A study configuration (see ``study.yaml`` for what each key means)."""

    config_path: Path
    output_dir: Path
    results_file: Path
    model: str
    seeds: int
    steps: list[int]
    test_size: int
    pool_size: int
    pool_seed: int
    select: dict[str, Any]
    measure: dict[str, Any]
    arms: dict[str, dict[str, Any]]
    train_args: list[str] = field(default_factory=list)

    @property
    def max_step(self) -> int:
        return max(self.steps)

    @property
    def training_arms(self) -> dict[str, dict[str, Any]]:
        """The arms that train (``kind: train``), in the config's order."""
        return {name: arm for name, arm in self.arms.items() if arm["kind"] == "train"}

    def curve_at(self, step: int) -> bool:
        """Whether the accuracy-against-temperature curve is measured at this step (``measure.temperature_steps``)."""
        return step in self.measure.get("temperature_steps", [])


_TOP_KEYS = {
    "output_dir", "results_file", "model", "seeds", "steps", "test_size", "pool_size", "pool_seed", "select",
    "measure", "arms", "train_args", "quick",
}  # fmt: skip


def is_study_config(path: str | Path) -> bool:
    """Whether a YAML file is a study (it has ``arms``) rather than an ``em-trainer train`` config."""
    import yaml

    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(content, dict) and "arms" in content


def load_study(path: str | Path, quick: bool = False, output_dir: str | None = None) -> Study:
    """Read a study YAML; ``quick`` applies its ``quick:`` block (the CI-sized variant) on top."""

    path = Path(path)
    raw = read_yaml_mapping(path, "study config")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {sorted(unknown)}; the keys a study takes are {sorted(_TOP_KEYS)}.")
    if quick:
        for key, value in (raw.get("quick") or {}).items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict) and key != "arms":
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
    steps = sorted({int(s) for s in raw.get("steps", [0])})
    if steps[0] != 0:
        steps = [0, *steps]
    arms = raw.get("arms") or {}
    for name, arm in arms.items():
        kind = arm.get("kind")
        if kind not in ARM_KINDS:
            raise StudyError(f"arms.{name}.kind is {kind!r}; use one of {ARM_KINDS}.")
        if kind == "decode" and arm.get("decoding", "plain") not in DECODINGS:
            raise StudyError(f"arms.{name}.decoding is {arm.get('decoding')!r}; use one of {DECODINGS}.")
        if kind == "train":
            arm["config"] = resolve_config_path(arm.get("config"), path, f"arms.{name}.config")
            if not arm["config"] or not Path(arm["config"]).is_file():
                raise StudyError(f"arms.{name}.config must name an `em-trainer train` YAML beside the study.")
    seeds = int(raw.get("seeds", 8))
    if seeds < 1 or raw.get("test_size", 1) < 1 or raw.get("pool_size", 1) < 1:
        raise StudyError("seeds, test_size and pool_size must be at least 1.")
    output = Path(output_dir or raw.get("output_dir", "outputs/study"))
    return Study(
        config_path=path,
        output_dir=output,
        results_file=Path(raw.get("results_file", output / "results.json")),
        model=raw.get("model", "smollm2-135m-instruct"),
        seeds=seeds,
        steps=steps,
        test_size=int(raw.get("test_size", 40)),
        pool_size=int(raw.get("pool_size", 64)),
        pool_seed=int(raw.get("pool_seed", 1)),
        select=dict(raw.get("select") or {}),
        measure=dict(raw.get("measure") or {}),
        arms=arms,
        train_args=[str(a) for a in raw.get("train_args") or []],
    )


# ------------------------------------------------------------------------------------------------------------- data
def build_pool(study: Study) -> Path:
    """Training pool: arithmetic problems drawn with ``pool_seed``, none of them in the test benchmark."""
    from ..evaluation.benchmarks import arithmetic_rows, load_benchmark

    test_problems = {row["problem"] for row in load_benchmark(TEST_BENCHMARK)}  # all of it, not only test_size
    pool, seen = [], set()
    for row in arithmetic_rows(size=20 * study.pool_size, seed=study.pool_seed):
        if row["problem"] in test_problems or row["problem"] in seen:
            continue
        seen.add(row["problem"])
        pool.append(row)
        if len(pool) == study.pool_size:
            break
    if len(pool) < study.pool_size:
        raise StudyError(f"pool_size={study.pool_size}: only {len(pool)} distinct problems outside the test set.")
    path = study.output_dir / "data" / "pool.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in pool), encoding="utf-8")
    return path


def selected_file(study: Study) -> Path:
    """Where ``select`` writes the study's training prompt."""
    return study.output_dir / "data" / "selected.jsonl"


def select_prompt(study: Study, pool: Path) -> Path:
    """``em-trainer select`` over the pool (pass@k variance); its output is the training dataset."""
    output = selected_file(study)
    if output.exists():
        return output
    command = [sys.executable, "-m", "em_trainer.cli", "select", "--model", study.model, "--pool", str(pool)]
    command += ["--output", str(output), "--top", "1"]
    for key, value in study.select.items():
        command += [f"--{key}", str(value)]
    result = subprocess.run(command, capture_output=True, text=True)
    (study.output_dir / "data" / "select.log").write_text(result.stdout + "\n" + result.stderr)
    if result.returncode != 0:
        raise StudyError(f"select failed (see {study.output_dir}/data/select.log):\n{result.stderr[-2000:]}")
    return output


# ------------------------------------------------------------------------------------------------------ measurement
def _processors(decoding: str, arm: dict[str, Any]) -> tuple[Any, list[Any], float]:
    """EM-INF settings, extra logits processors and the sampling temperature of a decoding arm."""
    from ..decoding.em_inf import PRESETS, AdaptiveTemperatureLogitsProcessor

    if decoding == "em_inf":
        return PRESETS[arm.get("preset", "default")], [], None
    if decoding == "adaptive_temperature":
        # The processor sets each step's temperature; sampling then runs at 1.
        return None, [AdaptiveTemperatureLogitsProcessor(float(arm.get("target_entropy", 0.3)))], 1.0
    return None, [], None


def measure_model(
    model_path: str,
    study: Study,
    seed: int,
    label: str,
    decoding: str = "plain",
    arm: dict[str, Any] | None = None,
    greedy_label: str | None = None,
    curve: bool = False,
) -> dict[str, Any]:
    """Greedy and sampled accuracy, fresh-sample entropy, raw-logit skewness, length and cut share of one model.

    ``greedy_label``: where the greedy records go when they do not depend on the seed (the same model and decoding
    for every seed), so that later seeds read them instead of decoding again. ``curve``: also measure accuracy at
    each of ``measure.temperatures`` (the papers' accuracy-against-temperature plot). A plain-decoding measurement
    also keeps a histogram of the raw logits it sampled (the papers' logit-distribution plot).
    """
    import numpy as np

    from ..decoding.generation import SamplingSettings, make_generator
    from ..evaluation.analysis import collect_logit_statistics, fresh_sample_entropy
    from ..evaluation.benchmarks import load_benchmark
    from ..evaluation.evaluate import evaluate_benchmark

    settings = study.measure
    length = int(settings.get("max_new_tokens", 96))
    temperature = float(settings.get("temperature", 0.5))
    em_inf, processors, sample_temperature = _processors(decoding, arm or {})
    batch_size = int(settings.get("batch_size", 8))
    generator = make_generator(model_path, "hf", em_inf=em_inf, batch_size=batch_size, logits_processors=processors)
    out = study.output_dir / "eval"

    def accuracy(temp: float, sample_seed: int, suffix: str = ""):
        name = (greedy_label or label if temp == 0 else label) + suffix
        return evaluate_benchmark(
            generator, generator.tokenizer, name, TEST_BENCHMARK, out,
            SamplingSettings(temperature=temp, max_new_tokens=length, seed=sample_seed), limit=study.test_size,
            progress=None, chunk_size=batch_size,
        )  # fmt: skip

    greedy = accuracy(0.0, 0)
    sampled = accuracy(sample_temperature or temperature, seed)
    result: dict[str, Any] = {
        "greedy_accuracy": greedy.accuracy,
        "sampled_accuracy": sampled.accuracy,
        "mean_length": sampled.mean_length,
        "cut_share": sampled.cut_share,
        "entropy": None,
        "skewness": None,
    }
    if curve:
        # The two points already measured are reused rather than decoded again.
        known = {0.0: greedy.accuracy, float(sample_temperature or temperature): sampled.accuracy}
        result["accuracy_by_temperature"] = {
            str(t): known[float(t)] if float(t) in known else accuracy(float(t), seed, f"-T{t}").accuracy
            for t in settings.get("temperatures", [])
        }
    if decoding == "plain":
        # Entropy and logit shape describe the model; a decoding arm leaves the model as it is (the base's).
        from ..data.prompts import MATH_SYSTEM_PROMPT, chat_messages

        problems = load_benchmark(TEST_BENCHMARK, limit=int(settings.get("entropy_problems", 4)))
        prompts = [chat_messages(row["problem"], MATH_SYSTEM_PROMPT) for row in problems]
        model, tokenizer = generator.model, generator.tokenizer
        entropy = fresh_sample_entropy(
            model, tokenizer, prompts, int(settings.get("entropy_samples", 4)), temperature, length, seed
        )
        logits, values = collect_logit_statistics(
            model, tokenizer, prompts, label, num_samples=1, temperature=temperature, max_new_tokens=length,
            seed=seed, sample_size=20_000,
        )  # fmt: skip
        counts, edges = np.histogram(
            np.asarray(values, dtype=np.float64), bins=int(settings.get("histogram_bins", 40))
        )
        result.update(
            entropy=entropy.mean_entropy,
            skewness=logits.skewness,
            logit_histogram={"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]},
        )
    return result


# ------------------------------------------------------------------------------------------------------------ runs
def arm_identities(study: Study) -> dict[str, str]:
    """A fingerprint per arm (and for ``base``) of everything its measurements depend on: the model's identity, the
    steps, the test set, pool and selection settings, the measurement settings, the arm's own entry, and for a
    training arm its train config file's content and the extra train options. Changing one arm's config leaves the
    other arms' measurements valid."""
    from ..data.identity import file_digest, fingerprint, model_identity

    common = {
        "model": model_identity(study.model),
        "steps": study.steps,
        "test_size": study.test_size,
        "pool": [study.pool_size, study.pool_seed],
        "select": study.select,
        "measure": study.measure,
    }
    keys = {"base": fingerprint(common)}
    for name, arm in study.arms.items():
        entry: dict[str, Any] = {**arm}
        if arm["kind"] == "train":
            entry["config"] = file_digest(Path(arm["config"]))
            entry["train_args"] = study.train_args
        keys[name] = fingerprint({**common, "arm": entry})
    return keys


class Measurements:
    """``measurements.jsonl``: one line per (arm, seed, step), appended as each finishes, stamped with its arm's
    fingerprint (:func:`arm_identities`); a record of other settings is never read back as this study's."""

    def __init__(self, path: Path, keys: dict[str, str]) -> None:
        from ..evaluation.records import RecordFile

        self.file = RecordFile(path)
        self.keys = keys
        records = self.file.read()
        self.done = {(r["arm"], r["seed"], r["step"]): r for r in records if r.get("identity") == keys.get(r["arm"])}
        self.stale = len(records) - len(self.done)

    def get(self, arm: str, seed: int, step: int) -> dict[str, Any] | None:
        return self.done.get((arm, seed, step))

    def add(self, record: dict[str, Any]) -> None:
        record = {**record, "identity": self.keys[record["arm"]]}
        self.file.append([record])
        self.done[(record["arm"], record["seed"], record["step"])] = record


def _measure_once(
    study: Study, measurements: Measurements, name: str, seed: int, step: int, model_path: str, log: Any, **kwargs: Any
) -> dict[str, Any]:
    """The (arm ``name``, seed, step) measurement: read back if already taken, else taken, recorded and logged."""
    found = measurements.get(name, seed, step)
    if found is not None:
        return found
    started = time.time()
    values = measure_model(model_path, study, seed, f"{name}-seed{seed}-step{step}", **kwargs)
    record = {"arm": name, "seed": seed, "step": step, **values, "seconds": round(time.time() - started, 1)}
    measurements.add(record)
    shown = ", ".join(f"{k} {record[k]:.3f}" for k in METRICS if record.get(k) is not None)
    log(f"[study] {name} seed {seed} step {step}: {shown}", flush=True)
    return record


def _train_extra(study: Study, dataset: Path) -> list[str]:
    """The options every training run of the study gets on top of its arm's config."""
    saved = ",".join(str(step) for step in study.steps if step > 0)
    extra = ["--dataset", str(dataset), "--max_steps", str(study.max_step), "--save_steps", "100000"]
    return [*extra, "--save_at_steps", saved, "--report_to", "none", *study.train_args]


def check_training_arms(study: Study, dataset: Path) -> None:
    """``em-trainer train --check`` for every training arm before ``select`` and the first measurement: a bad value
    in an arm's config stops the study in seconds instead of after the base model's measurements."""
    for name, arm in study.training_arms.items():
        directory = study.output_dir / "runs" / name / "seed-0"
        try:
            check_run(Run((), 0), arm["config"], directory, _train_extra(study, dataset), save_steps=None)
        except SweepError as error:
            raise StudyError(f"arms.{name} ({arm['config']}): {error}") from None


def run_training_arm(study: Study, name: str, arm: dict[str, Any], dataset: Path, measurements: Measurements,
                     log: Any, seed: int) -> None:  # fmt: skip
    """Train one seed of an arm (``em-trainer train`` via the sweep's runner), measure its checkpoints, drop them."""
    saved = [step for step in study.steps if step > 0]
    directory = study.output_dir / "runs" / name / f"seed-{seed}"
    if all(measurements.get(name, seed, step) for step in saved):
        return
    marker = directory / RUN_MARKER
    key = measurements.keys[name]
    if marker.exists() and marker.read_text(encoding="utf-8").strip() != key:
        log(f"[study] {name} seed {seed}: the run in {directory} was trained with other settings; retraining")
        shutil.rmtree(directory)
    if not marker.exists():
        directory.mkdir(parents=True, exist_ok=True)
        log(f"[study] training {name} seed {seed} ({study.max_step} steps)", flush=True)
        train_run(Run((), seed), arm["config"], directory, _train_extra(study, dataset), save_steps=None)
        marker.write_text(key + "\n")
    for step in saved:
        checkpoint = str(directory / f"checkpoint-{step}")
        _measure_once(study, measurements, name, seed, step, checkpoint, log, curve=study.curve_at(step))
    for checkpoint in directory.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)  # measured; 0.5 GB of weights each (the newest also keeps 1.1 GB of optimizer state)


def _read_wall(study: Study) -> dict[str, float]:
    """``wall_seconds.json``: seconds per part of the study, summed over reruns and parallel processes."""
    wall_file = study.output_dir / "wall_seconds.json"
    return json.loads(wall_file.read_text()) if wall_file.exists() else {}


def run_study(
    study: Study,
    log: Any = print,
    only_seed: int | None = None,
    only_arm: str | None = None,
    report_only: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the whole study and write its results JSON; returns that JSON's content.

    ``only_seed``: train and measure the training arms for that seed alone, so that a second process can work
    on another seed at the same time (measurements are appended line by line; a final plain run gathers them all).
    ``only_arm``: the same for one training arm, so that processes can split one seed's arms between them.
    ``report_only``: run nothing; write the results JSON from the measurements taken so far (an unfinished study's
    JSON shows, per arm and step, how many seeds it holds).
    """
    study.output_dir.mkdir(parents=True, exist_ok=True)
    measurements = Measurements(study.output_dir / "measurements.jsonl", arm_identities(study))
    if measurements.stale:
        log(f"[study] {measurements.stale} stored measurement(s) come from other settings (model, config, "
            "measurement settings): not reused")  # fmt: skip
    wall_file = study.output_dir / "wall_seconds.json"

    def timed(part: str, started: float) -> None:
        # Summed over reruns (and over processes working on different seeds), so the time is the time spent in all.
        wall = _read_wall(study)
        wall[part] = wall.get(part, 0.0) + time.time() - started
        atomic_write_json(wall_file, wall)

    if report_only:
        return write_results(study, selected_file(study))
    started = time.time()
    pool = build_pool(study)
    check_training_arms(study, pool)  # the pool has the selected prompt's columns; select takes minutes
    dataset = select_prompt(study, pool)
    timed("data_and_select", started)

    # Step 0 of every training arm is the base model sampled with that seed: measured once, shared.
    started = time.time()
    base = {
        seed: _measure_once(
            study, measurements, "base", seed, 0, study.model, log, greedy_label="base", curve=study.curve_at(0)
        )
        for seed in range(study.seeds)
    }
    timed("base", started)
    for name, arm in study.arms.items():
        if arm["kind"] == "decode" and arm.get("decoding", "plain") != "plain":
            started = time.time()
            for seed in range(study.seeds):
                _measure_once(
                    study, measurements, name, seed, 0, study.model, log,
                    decoding=arm["decoding"], arm=arm, greedy_label=name,
                )  # fmt: skip
            timed(name, started)
    training = study.training_arms
    for name in training:
        for seed in range(study.seeds):
            if measurements.get(name, seed, 0) is None:
                measurements.add({**base[seed], "arm": name, "seed": seed, "step": 0, "seconds": 0.0})
    # Seed by seed across the arms, so a study stopped early has every arm over the same seeds.
    for seed in range(study.seeds) if only_seed is None else [only_seed]:
        for name, arm in training.items():
            if only_arm is not None and name != only_arm:
                continue
            started = time.time()
            run_training_arm(study, name, arm, dataset, measurements, log, seed=seed)
            timed(name, started)

    return write_results(study, dataset)


def write_results(study: Study, dataset: Path) -> dict[str, Any]:
    """The results JSON from ``measurements.jsonl`` (every process's) and ``wall_seconds.json``."""
    if not dataset.is_file():
        raise StudyError(f"{dataset} does not exist: run the study (without --report) first.")
    selected = json.loads(dataset.read_text(encoding="utf-8").splitlines()[0])
    measurements = Measurements(study.output_dir / "measurements.jsonl", arm_identities(study))
    wall = _read_wall(study)
    # Only the configured seeds: a study rerun with fewer seeds reports those, not leftovers of a larger run.
    kept = [r for r in measurements.done.values() if r["seed"] < study.seeds and r["step"] in study.steps]
    records = sorted(kept, key=lambda r: (r["arm"], r["step"], r["seed"]))

    def portable(path: Any) -> str:
        return os.path.relpath(path) if os.path.isabs(str(path)) else str(path)

    arms = {name: {**arm, **({"config": portable(arm["config"])} if "config" in arm else {})}
            for name, arm in study.arms.items()}  # fmt: skip
    results = {
        "study": {**asdict(study), "config_path": portable(study.config_path), "output_dir": str(study.output_dir),
                  "results_file": str(study.results_file), "arms": arms},  # fmt: skip
        "selected_prompt": selected,
        "wall_seconds": {k: round(v, 1) for k, v in wall.items()},
        "records": records,
        "aggregate": aggregate(records),
    }  # fmt: skip
    study.results_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(study.results_file, results)
    return results


# ---------------------------------------------------------------------------------------------------- aggregation
def aggregate(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per arm, step and metric: mean, std (sample, over seeds), min, max and the number of seeds."""
    grouped: dict[str, dict[str, dict[str, list[float]]]] = {}
    for record in records:
        by_metric = grouped.setdefault(record["arm"], {}).setdefault(str(record["step"]), {})
        for metric in METRICS:
            value = record.get(metric)
            if value is not None and not math.isnan(value):
                by_metric.setdefault(metric, []).append(float(value))
    return {
        arm: {
            step: {metric: summarize(values) for metric, values in metrics.items()} for step, metrics in steps.items()
        }
        for arm, steps in grouped.items()
    }
