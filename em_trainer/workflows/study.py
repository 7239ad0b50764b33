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
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..data.files import atomic_write_json, exclusive_lock
from ..data.paths import resolve_config_path
from .child_process import run_child
from .sweep import RUN_MARKER, RUN_OWNED, Run, SweepError, check_runs, refuse_owned_options, summarize, train_run

METRICS = ("greedy_accuracy", "sampled_accuracy", "entropy", "skewness", "mean_length", "cut_share")
# What n samples per problem measure (``measure.samples``; evaluation/sample_metrics, docs/sample_metrics.md).
SPREAD_METRICS = ("pass_at_1", "pass_at_n", "majority_accuracy", "distinct_answers", "answer_entropy", "ece")
TEST_BENCHMARK = "arithmetic"
ARM_KINDS = ("decode", "train")
DECODINGS = ("plain", "em_inf", "adaptive_temperature")


class StudyError(SweepError):
    """A study configuration that cannot work; the message names the key and the fix."""


@dataclass
class StudyConfig:
    """A study's definition: the YAML given to ``em-trainer study --config`` (every key also a flag, TrlParser's way).

    Args:
        model (`str`, defaults to `"smollm2-135m-instruct"`): the base model every arm starts from (Hub id, folder,
            or an embedded name). Every training run gets it as ``--model``, over its config's ``model:`` line (the
            study logs where they differ); ``--model`` in ``train_args`` is refused.
        output_dir (`str`, defaults to `"outputs/study"`): runs, measurements, job logs and the report.
        results_file (`str` or `None`, defaults to `None`): the results JSON; None: ``<output_dir>/results.json``.
        seeds (`int`, defaults to `8`): seeds per training arm (and sampled measurements per decoding arm).
        steps (`list[int]`, defaults to `[0]`): the steps measured; training runs to the last; 0 is the base model.
        test_size (`int`, defaults to `40`): the first ``test_size`` problems of the ``arithmetic`` benchmark.
        pool_size (`int`, defaults to `64`), pool_seed (`int`, defaults to `1`): the training pool, drawn outside
            the test benchmark.
        select (`dict`, defaults to `{}`): ``em-trainer select`` options (k, temperature, max_new_tokens, ...).
        measure (`dict`, defaults to `{}`): measurement settings (max_new_tokens 96, temperature 0.5,
            entropy_problems 4, entropy_samples 4, batch_size 8, temperatures, temperature_steps, histogram_bins,
            and ``samples: {n, problems, temperature}``: pass@k for k = 1 ... n, answer diversity and calibration
            from n samples of each of the first ``problems`` test problems, at every measured step).
        arms (`dict`, defaults to `{}`): name -> ``{kind: decode, decoding: plain|em_inf|adaptive_temperature}`` or
            ``{kind: train, config: <train YAML beside the study>, train_args: [...]}``.
        train_args (`list[str]`, defaults to `[]`): ``em-trainer train`` options every training run gets.
        quick_variant (`dict`, defaults to `{}`): the CI-sized variant, applied with ``--quick`` over the keys above
            (a key given as a flag wins over it). Older files call it ``quick:``; that still works, with a line
            saying so.
    """

    model: str = "smollm2-135m-instruct"
    output_dir: str = "outputs/study"
    results_file: str | None = None
    seeds: int = 8
    steps: list[int] = field(default_factory=lambda: [0])
    test_size: int = 40
    pool_size: int = 64
    pool_seed: int = 1
    select: dict = field(default_factory=dict)
    measure: dict = field(default_factory=dict)
    arms: dict = field(default_factory=dict)
    train_args: list[str] = field(default_factory=list)
    quick_variant: dict = field(default_factory=dict)


@dataclass
class StudyRunArguments:
    """How this invocation runs the study (not part of the study's identity).

    Args:
        quick (`bool`, defaults to `False`): apply the study's ``quick_variant`` (the CI-sized study).
        only_seed (`int` or `None`, defaults to `None`), only_arm (`str` or `None`, defaults to `None`): run only
            that seed's / arm's training jobs (the preparation is shared, under a lock); a later plain run gathers.
        report (`bool`, defaults to `False`): run nothing; write the results JSON from what is measured so far.
        launcher (`str` or `None`, defaults to `None`): prefix of every training run, e.g. ``accelerate launch
            --num_processes 8`` for one multi-GPU run per job.
        job (`str` or `None`, defaults to `None`): ``<arm>:<seed>``, one prepared job (what the executors run).
        prepare (`bool`, defaults to `False`): run the preparation only (what a submitted executor runs first).
        plan (`str` or `None`, defaults to `None`): the study's ``plan.json`` that ``job`` and ``prepare`` read.
    """

    quick: bool = field(default=False, metadata={"help": "the study's CI-sized variant (its quick_variant block)"})
    only_seed: int | None = field(default=None, metadata={"help": "train and measure this seed's jobs only"})
    only_arm: str | None = field(default=None, metadata={"help": "train and measure this arm's jobs only"})
    report: bool = field(default=False, metadata={"help": "run nothing: write the results JSON from what is measured"})
    launcher: str | None = field(default=None, metadata={"help": "prefix of each training run (accelerate launch)"})
    job: str | None = field(default=None, metadata={"help": "internal: <arm>:<seed>, one prepared job"})
    prepare: bool = field(default=False, metadata={"help": "internal: run the preparation of the plan's study"})
    plan: str | None = field(default=None, metadata={"help": "internal: the prepared study's plan.json"})


@dataclass
class Study:
    """A study configuration, resolved (paths, the quick variant, flags) and checked."""

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

    def to_plan(self) -> dict[str, Any]:
        """Everything a job needs to rebuild this study (``plan.json``), so jobs never re-read the YAML or flags."""
        return {**asdict(self), "config_path": str(self.config_path), "output_dir": str(self.output_dir),
                "results_file": str(self.results_file)}  # fmt: skip

    @classmethod
    def from_plan(cls, plan: dict[str, Any]) -> Study:
        paths = {key: Path(plan[key]) for key in ("config_path", "output_dir", "results_file")}
        return cls(**{**plan, **paths})


def is_study_config(path: str | Path) -> bool:
    """Whether a YAML file is a study (it has ``arms``) rather than an ``em-trainer train`` config."""
    import yaml

    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(content, dict) and "arms" in content


def study_parser() -> Any:
    """TrlParser over the study's definition, how to run it, and the executor: one ``--config`` YAML plus flags."""
    from trl import TrlParser

    from .executors import ExecutorArguments

    class StudyParser(TrlParser):
        def set_defaults_with_config(self, **kwargs: Any) -> list[str]:
            if isinstance(kwargs.get("quick"), dict):
                # The block's old name; `quick` is now only the flag that applies it.
                print("[em-trainer] deprecated: the study YAML's `quick:` block is now `quick_variant:` (read as "
                      "such).", file=sys.stderr)  # fmt: skip
                kwargs["quick_variant"] = kwargs.pop("quick")
            return super().set_defaults_with_config(**kwargs)

        def error(self, message: str):  # one line, like every other verb
            self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")

    return StudyParser(
        (StudyConfig, StudyRunArguments, ExecutorArguments),
        prog="em-trainer study",
        allow_abbrev=False,  # `--seed 3` was read as `--seeds 3`
        description="Run (or resume) a study: the base model, decoding arms and training arms x seeds, measured on "
        "held-out problems; the training jobs fan out through an executor (local processes or SLURM).",
        epilog="--config FILE: the study's YAML (its keys are these options' names); flags given on the command line "
        "win over it. `--config=FILE` works too.",
    )


def parse_study_arguments(argv: list[str]) -> tuple[StudyConfig, StudyRunArguments, Any, set[str]]:
    """The three dataclasses of ``em-trainer study`` argv, and the names given as flags (they win over --quick)."""
    from ..data.files import read_yaml_mapping
    from ..data.paths import config_file_from_argv, split_config_equals
    from .executors import ExecutorArguments

    argv = split_config_equals(argv)
    config = config_file_from_argv(argv)
    if config is not None:
        content = read_yaml_mapping(config, "study config")  # a folder, bad YAML or a list: one line
        known = {f.name for kind in (StudyConfig, StudyRunArguments, ExecutorArguments) for f in fields(kind)}
        unknown = set(content) - known - {"quick", "env"}
        if unknown:
            raise StudyError(f"{config}: unknown key(s) {sorted(unknown)}; the keys a study takes are "
                             f"{sorted(known)}.")  # fmt: skip
    definition, run, executor = study_parser().parse_args_and_config(argv)
    given = {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}
    return definition, run, executor, given


def load_study(path: str | Path | None, quick: bool = False, output_dir: str | None = None,
               argv: list[str] | None = None) -> Study:  # fmt: skip
    """Read a study YAML (with optional extra flags); ``quick`` applies its ``quick_variant`` on top."""
    args = [*(["--config", str(path)] if path is not None else []), *(argv or [])]
    if output_dir is not None:
        args += ["--output_dir", str(output_dir)]
    definition, _, _, given = parse_study_arguments(args)
    return resolve_study(definition, Path(path) if path is not None else None, quick, given)


def resolve_study(definition: StudyConfig, path: Path | None, quick: bool, given: set[str]) -> Study:
    """Apply the quick variant (where no flag set the key), resolve the arms' configs beside the YAML, check."""
    raw = asdict(definition)
    if quick:
        known = set(raw) - {"quick_variant"}
        unknown = set(definition.quick_variant) - known
        if unknown:
            raise StudyError(f"quick_variant: unknown key(s) {sorted(unknown)}; it overrides {sorted(known)}.")
        for key, value in definition.quick_variant.items():
            if key in given:
                continue
            if isinstance(value, dict) and isinstance(raw.get(key), dict) and key != "arms":
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
    steps = sorted({int(s) for s in raw["steps"] or [0]})
    if steps[0] != 0:
        steps = [0, *steps]
    arms = {name: dict(arm or {}) for name, arm in (raw["arms"] or {}).items()}
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
            if "train_args" in arm:
                if not isinstance(arm["train_args"], list):
                    raise StudyError(f"arms.{name}.train_args must be a list of `em-trainer train` options.")
                arm["train_args"] = [str(a) for a in arm["train_args"]]
    every_arm = f"every arm trains the study's `model` ({raw['model']}); set it there"
    owned = {
        **RUN_OWNED,
        "seed": "the study sets each job's seed (seeds)",
        "output_dir": "the study names each job's folder (under its own output_dir)",
        "config": "each arm's config is its `config:` entry",
        "model": every_arm,
        "model_name_or_path": every_arm,
        "dataset": "the study trains on the prompt `select` picked from its pool",
        "max_steps": "the study trains to its last measured step (steps)",
        "save_steps": "the study saves its measured steps itself",
        "save_at_steps": "the study saves its measured steps itself",
    }
    for where, args in [("train_args", raw["train_args"] or []),
                        *((f"arms.{n}.train_args", a.get("train_args", [])) for n, a in arms.items())]:  # fmt: skip
        refusal = refuse_owned_options(args, owned, where)
        if refusal:
            raise StudyError(refusal)
    for key in ("seeds", "test_size", "pool_size"):
        if raw[key] < 1:
            raise StudyError(f"{key} {raw[key]}: must be at least 1 (seeds, test_size and pool_size).")
    if raw["pool_seed"] < 0:
        raise StudyError(f"pool_seed {raw['pool_seed']}: must be >= 0.")
    if any(int(step) < 0 for step in raw["steps"] or []):
        raise StudyError(f"steps {raw['steps']}: steps are optimizer steps, >= 0.")
    _check_samples((raw["measure"] or {}).get("samples"))
    output = Path(raw["output_dir"])
    return Study(
        config_path=path if path is not None else Path("."),
        output_dir=output,
        results_file=Path(raw["results_file"] or output / "results.json"),
        model=raw["model"],
        seeds=int(raw["seeds"]),
        steps=steps,
        test_size=int(raw["test_size"]),
        pool_size=int(raw["pool_size"]),
        pool_seed=int(raw["pool_seed"]),
        select=dict(raw["select"] or {}),
        measure=dict(raw["measure"] or {}),
        arms=arms,
        train_args=[str(a) for a in raw["train_args"] or []],
    )


def _check_samples(samples: Any) -> None:
    """``measure.samples`` is off (absent) or ``{n >= 2, problems >= 1, temperature > 0}``, in one line if not."""
    if samples is None:
        return
    allowed = {"n", "problems", "temperature"}
    if not isinstance(samples, dict) or set(samples) - allowed:
        raise StudyError(f"measure.samples is {samples!r}; write {{n: 32, problems: 10}} (keys: {sorted(allowed)}).")
    try:
        n, problems = int(samples.get("n", 32)), int(samples.get("problems", 1))
        temperature = float(samples.get("temperature", 1.0))
    except (TypeError, ValueError):
        raise StudyError(f"measure.samples {samples!r}: n and problems are integers, temperature a number.") from None
    if n < 2 or problems < 1 or temperature <= 0:
        raise StudyError(f"measure.samples {samples!r}: pass@k needs n >= 2 samples of problems >= 1 problems at a "
                         "temperature > 0.")  # fmt: skip


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
    from ..data.identity import file_digest, model_identity
    from ..data.run_folder import claim_folder

    output = selected_file(study)
    # A selection made by another model, other select settings or another pool is made again, never reused.
    identity = {"model": model_identity(study.model), "select": study.select, "pool": file_digest(pool)}
    claimed = claim_folder(
        output.parent, identity, work=[output.name], overwrite=True, marker="selected.identity.json",
        log=lambda line: print(line.replace("[em-trainer]", "[study] selection:"), flush=True),
    )  # fmt: skip
    if claimed == "resume" and output.exists():
        return output
    command = [sys.executable, "-m", "em_trainer.cli", "select", "--model", study.model, "--pool", str(pool)]
    command += ["--output", str(output), "--top", "1"]
    for key, value in study.select.items():
        command += [f"--{key}", str(value)]
    code, tail = run_child(command, study.output_dir / "data" / "select.log", tail=2000)
    if code != 0:
        raise StudyError(f"select failed (see {study.output_dir}/data/select.log):\n{tail}")
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
    identity = generator.identity
    result: dict[str, Any] = {
        # What computed this record, read from the generator that did (not from the process that reads it).
        "produced_by": {"matmul": identity.get("matmul"), "dtype": identity.get("dtype"),
                        "device": str(next(generator.model.parameters()).device)},  # fmt: skip
        "greedy_accuracy": greedy.accuracy,
        "sampled_accuracy": sampled.accuracy,
        "mean_length": sampled.mean_length,
        "cut_share": sampled.cut_share,
        "repetition": sampled.repetition,
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
    if settings.get("samples"):
        result.update(_sample_spread(generator, study, settings["samples"], label, seed, out, length,
                                     sample_temperature or temperature, batch_size))  # fmt: skip
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


def _sample_spread(
    generator: Any, study: Study, samples: dict[str, Any], label: str, seed: int, out: Path, length: int,
    temperature: float, batch_size: int,
) -> dict[str, Any]:  # fmt: skip
    """pass@k for k = 1 ... n, answer diversity and calibration from ``samples.n`` samples of each of the first
    ``samples.problems`` test problems, at ``samples.temperature`` (default: the sampling temperature)."""
    from ..decoding.generation import SamplingSettings
    from ..evaluation.evaluate import evaluate_benchmark

    n = int(samples.get("n", 32))
    problems = min(int(samples.get("problems", study.test_size)), study.test_size)
    settings = SamplingSettings(
        temperature=float(samples.get("temperature", temperature)), n=n, max_new_tokens=length, seed=seed
    )
    spread = evaluate_benchmark(
        generator, generator.tokenizer, f"{label}-n{n}", TEST_BENCHMARK, out, settings, limit=problems,
        progress=None, chunk_size=max(1, batch_size // n),
    )  # fmt: skip
    curve = [spread.pass_at_k[k] for k in range(1, n + 1)]
    return {
        "pass_at_k": curve,
        "pass_at_1": curve[0],
        "pass_at_n": curve[-1],
        "majority_accuracy": spread.majority_accuracy,
        "distinct_answers": spread.distinct_answers,
        "answer_entropy": spread.answer_entropy,
        "ece": spread.ece,
        "majority_share": spread.majority_share,
        "reliability": spread.reliability,
    }


# ------------------------------------------------------------------------------------------------------------ runs
def arm_identities(study: Study) -> dict[str, str]:
    """A fingerprint per arm (and for ``base``) of everything its measurements depend on: the model's identity, the
    steps, the test set, pool and selection settings, the measurement settings, the arm's own entry, and for a
    training arm its train config file's content and the extra train options. Changing one arm's config leaves the
    other arms' measurements valid.

    Only settings: nothing of the process that computes the keys. A study's driver (a CPU login node) and its jobs
    (GPU nodes) compute the same keys, so the driver gathers what the jobs measured; the hardware a measurement ran
    on (device, matmul kernel) is recorded in the record itself (``produced_by``), where a reader can see it."""
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
    """The study's measurements, one JSON line per (arm, seed, step), appended as each finishes and stamped with its
    arm's fingerprint (:func:`arm_identities`); a record of other settings is never read back as this study's.

    The preparation (base model, decoding arms) appends to ``measurements.jsonl``; each training job (arm, seed) to
    ``jobs/<arm>-seed<N>.jsonl``, so no two processes ever write one file. ``writes`` is the file this process owns;
    only that one is repaired when its last line was cut off by a kill.
    """

    def __init__(self, path: Path, keys: dict[str, str], writes: Path | None = None) -> None:
        from ..evaluation.records import RecordFile

        self.file = RecordFile(writes or path)
        self.keys = keys
        sources = [path, *sorted((path.parent / "jobs").glob("*.jsonl"))]
        records = []
        for source in dict.fromkeys([*sources, self.file.path]):
            records += RecordFile(source).read(repair=source == self.file.path)
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


def _train_extra(study: Study, dataset: Path, arm: dict[str, Any]) -> list[str]:
    """The options every training run of the study gets on top of its arm's config (then the arm's own)."""
    saved = ",".join(str(step) for step in study.steps if step > 0)
    # The study's model, not the arm config's `model:` line: step 0 of every arm is the study's model measured, and
    # a config written for standalone `em-trainer train` must not make one arm train another model.
    extra = ["--model", study.model, "--dataset", str(dataset), "--max_steps", str(study.max_step),
             "--save_steps", "100000"]  # fmt: skip
    return [*extra, "--save_at_steps", saved, "--report_to", "none", *study.train_args, *arm.get("train_args", [])]


def job_measured(study: Study, measurements: Measurements, name: str, seed: int) -> bool:
    """Whether the (arm, seed) job has every training step measured under its current settings."""
    return all(measurements.get(name, seed, step) for step in study.steps if step > 0)


def check_training_arms(study: Study, dataset: Path, measurements: Measurements | None = None) -> None:
    """``em-trainer train --check`` for every training arm before ``select`` and the first measurement: a bad value
    in an arm's config stops the study in seconds instead of after the base model's measurements. The checks run
    in one process (:func:`~em_trainer.workflows.sweep.check_runs`); an arm whose every job is already measured under
    its current settings has nothing left to run and is not checked again."""
    arms = {
        name: arm
        for name, arm in study.training_arms.items()
        if measurements is None
        or study.max_step == 0  # a study without training steps still refuses a bad arm config
        or not all(job_measured(study, measurements, name, seed) for seed in range(study.seeds))
    }
    checks = [(Run((), 0), arm["config"], study.output_dir / "runs" / name / "seed-0",
               _train_extra(study, dataset, arm), None) for name, arm in arms.items()]  # fmt: skip
    try:
        check_runs(checks, [f"arms.{name} ({arm['config']})" for name, arm in arms.items()])
    except SweepError as error:
        raise StudyError(str(error)) from None


def job_name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def run_training_arm(study: Study, name: str, arm: dict[str, Any], dataset: Path, measurements: Measurements,
                     log: Any, seed: int, launcher: str | None = None) -> None:  # fmt: skip
    """Train one seed of an arm (``em-trainer train`` via the sweep's runner), measure its checkpoints, drop them."""
    saved = [step for step in study.steps if step > 0]
    directory = study.output_dir / "runs" / name / f"seed-{seed}"
    if job_measured(study, measurements, name, seed):
        return
    marker = directory / RUN_MARKER
    key = measurements.keys[name]
    if marker.exists() and marker.read_text(encoding="utf-8").strip() != key:
        log(f"[study] {name} seed {seed}: the run in {directory} was trained with other settings; retraining")
        shutil.rmtree(directory)
    if not marker.exists():
        directory.mkdir(parents=True, exist_ok=True)
        log(f"[study] training {name} seed {seed} ({study.max_step} steps)", flush=True)
        train_run(Run((), seed), arm["config"], directory, _train_extra(study, dataset, arm), None, launcher)
        marker.write_text(key + "\n")
    for step in saved:
        checkpoint = str(directory / f"checkpoint-{step}")
        _measure_once(study, measurements, name, seed, step, checkpoint, log, curve=study.curve_at(step))
    for checkpoint in directory.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)  # measured; 0.5 GB of weights each (the newest also keeps 1.1 GB of optimizer state)


def _wall_files(study: Study) -> list[Path]:
    return [study.output_dir / "wall_seconds.json", *sorted((study.output_dir / "jobs").glob("*.wall.json"))]


def _read_wall(study: Study) -> dict[str, float]:
    """Seconds per part of the study, summed over reruns and jobs: the preparation's ``wall_seconds.json`` and one
    ``jobs/<arm>-seed<N>.wall.json`` per training job (each written by one process only)."""
    wall: dict[str, float] = {}
    for path in _wall_files(study):
        if path.is_file():
            for part, seconds in json.loads(path.read_text(encoding="utf-8")).items():
                wall[part] = wall.get(part, 0.0) + seconds
    return wall


def _add_wall(path: Path, part: str, started: float) -> None:
    wall = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    wall[part] = wall.get(part, 0.0) + time.time() - started
    atomic_write_json(path, wall)


def prepare_study(study: Study, log: Any = print) -> Path:
    """The shared part, once: pool, ``select``, the base model's and the decoding arms' measurements, each training
    arm's step 0 (the base sampled with its seed). Returns the training dataset."""
    # One preparation at a time: a second process (--only_seed by hand, or two submissions) waits, then finds the
    # pool, the selected prompt and the base measurements done instead of computing them again.
    with exclusive_lock(study.output_dir / ".prepare.lock"):
        measurements = Measurements(study.output_dir / "measurements.jsonl", arm_identities(study))
        if measurements.stale:
            log(f"[study] {measurements.stale} stored measurement(s) come from other settings (model, config, "
                "measurement settings): not reused")  # fmt: skip
        for name, arm in study.training_arms.items():
            named = (yaml.safe_load(Path(arm["config"]).read_text(encoding="utf-8")) or {}).get("model")
            if named is not None and str(named) != study.model:
                log(f"[study] arms.{name}: trains {study.model} (the study's model), not {named} from its config")
        wall_file = study.output_dir / "wall_seconds.json"
        started = time.time()
        pool = build_pool(study)
        check_training_arms(study, pool, measurements)  # the pool has the selected prompt's columns; select: minutes
        dataset = select_prompt(study, pool)
        _add_wall(wall_file, "data_and_select", started)

        # Step 0 of every training arm is the base model sampled with that seed: measured once, shared.
        started = time.time()
        base = {
            seed: _measure_once(
                study, measurements, "base", seed, 0, study.model, log, greedy_label="base", curve=study.curve_at(0)
            )
            for seed in range(study.seeds)
        }
        _add_wall(wall_file, "base", started)
        for name, arm in study.arms.items():
            if arm["kind"] == "decode" and arm.get("decoding", "plain") != "plain":
                started = time.time()
                for seed in range(study.seeds):
                    _measure_once(
                        study, measurements, name, seed, 0, study.model, log,
                        decoding=arm["decoding"], arm=arm, greedy_label=name,
                    )  # fmt: skip
                _add_wall(wall_file, name, started)
        for name in study.training_arms:
            for seed in range(study.seeds):
                if measurements.get(name, seed, 0) is None:
                    measurements.add({**base[seed], "arm": name, "seed": seed, "step": 0, "seconds": 0.0})
    return dataset


def plan_file(study: Study) -> Path:
    return study.output_dir / "plan.json"


def run_job(study: Study, name: str, seed: int, dataset: Path, log: Any = print, launcher: str | None = None) -> None:
    """One training job: train ``name`` with ``seed``, measure its steps; writes only ``jobs/<name>-seed<N>.*`` and
    ``runs/<name>/seed-<N>/``. Killed, it resumes from its last checkpoint and its last finished measurement."""
    if name not in study.training_arms:
        raise StudyError(f"job {name}:{seed}: the study's training arms are {', '.join(study.training_arms)}.")
    if not 0 <= seed < study.seeds:
        raise StudyError(f"job {name}:{seed}: the study has seeds 0 to {study.seeds - 1}.")
    jobs = study.output_dir / "jobs"
    measurements = Measurements(
        study.output_dir / "measurements.jsonl", arm_identities(study), writes=jobs / f"{job_name(name, seed)}.jsonl"
    )
    # A job still running (a driver killed without its jobs, a second submission) holds the lock: this one waits for
    # it, then finds its work done, instead of training the same run beside it.
    with exclusive_lock(jobs / f"{job_name(name, seed)}.lock"):
        started = time.time()
        run_training_arm(study, name, study.training_arms[name], dataset, measurements, log, seed, launcher)
        _add_wall(jobs / f"{job_name(name, seed)}.wall.json", name, started)


def study_jobs(study: Study, only_seed: int | None = None, only_arm: str | None = None) -> list[tuple[str, int]]:
    """(arm, seed) of every training job, seed by seed across the arms (a study stopped early has every arm over the
    same seeds)."""
    if only_seed is not None and not 0 <= only_seed < study.seeds:
        raise StudyError(f"--only_seed {only_seed}: the study has seeds 0 to {study.seeds - 1}.")
    if only_arm is not None and only_arm not in study.training_arms:
        raise StudyError(f"--only_arm {only_arm}: the study's training arms are {', '.join(study.training_arms)}.")
    seeds = range(study.seeds) if only_seed is None else [only_seed]
    return [(name, seed) for seed in seeds for name in study.training_arms if only_arm in (None, name)]


def write_plan(study: Study) -> Path:
    """``plan.json``: the resolved study, which the executors' jobs read instead of the YAML and the flags."""
    return atomic_write_json(plan_file(study), study.to_plan())


def preparation_job(study: Study) -> Any:
    """The preparation as a job of its own (``em-trainer study --plan <plan.json> --prepare``): on SLURM it runs on
    a compute node, not on the node the study was started from."""
    from .executors import Job

    return Job("prepare", ("study", "--plan", str(plan_file(study)), "--prepare"))


def executor_jobs(study: Study, pairs: list[tuple[str, int]], launcher: str | None = None) -> list[Any]:
    """The executor's command lines: ``em-trainer study --plan <plan.json> --job <arm>:<seed>``."""
    from .executors import Job

    extra = ["--launcher", launcher] if launcher else []
    return [
        Job(job_name(name, seed), ("study", "--plan", str(plan_file(study)), "--job", f"{name}:{seed}", *extra))
        for name, seed in pairs
    ]


def is_submitted(executor: Any) -> bool:
    """Whether the executor runs jobs elsewhere (submitit), so the preparation is a job too."""
    return executor is not None and executor.executor in ("slurm", "submitit_local")


def run_study(
    study: Study,
    log: Any = print,
    only_seed: int | None = None,
    only_arm: str | None = None,
    report_only: bool = False,
    executor: Any = None,
    launcher: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the whole study and write its results JSON; returns that JSON's content.

    Prepare once (:func:`prepare_study`), run the training jobs (arm x seed) with ``executor`` (an
    :class:`~em_trainer.workflows.executors.ExecutorArguments`; None runs them here, one after another), gather.
    ``only_seed`` / ``only_arm``: run only those jobs (a later plain run gathers every seed). ``report_only``: run
    nothing; write the results JSON from the measurements taken so far (an unfinished study's JSON shows, per arm
    and step, how many seeds it holds).
    """
    from .executors import run_jobs

    if report_only:
        return write_results(study, selected_file(study))
    requested = study_jobs(study, only_seed, only_arm)
    write_plan(study)
    logs = study.output_dir / "job_logs"
    if is_submitted(executor):
        run_jobs([preparation_job(study)], executor, logs, log)
        dataset = selected_file(study)
    else:
        dataset = prepare_study(study, log)
    measured = Measurements(study.output_dir / "measurements.jsonl", arm_identities(study))
    pairs = [(arm, seed) for arm, seed in requested if not job_measured(study, measured, arm, seed)]
    if len(pairs) < len(requested):
        log(f"[study] {len(requested) - len(pairs)} of {len(requested)} training job(s) done, kept", flush=True)
    if executor is None or executor.executor == "serial":
        for name, seed in pairs:
            run_job(study, name, seed, dataset, log, launcher)
    else:
        run_jobs(executor_jobs(study, pairs, launcher), executor, logs, log)
    return write_results(study, dataset)


def write_results(study: Study, dataset: Path) -> dict[str, Any]:
    """The results JSON from every measurement file (the preparation's and each job's) and the wall-time files."""
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
        for metric in (*METRICS, *SPREAD_METRICS):
            value = record.get(metric)
            if value is not None and not math.isnan(value):
                by_metric.setdefault(metric, []).append(float(value))
    return {
        arm: {
            step: {metric: summarize(values) for metric, values in metrics.items()} for step, metrics in steps.items()
        }
        for arm, steps in grouped.items()
    }
