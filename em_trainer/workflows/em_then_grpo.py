"""EM then GRPO: one-shot EM (phase 1), then TRL's GRPOTrainer with a math-verify accuracy reward (phase 2).

One YAML file holds both phases::

    model: Qwen/Qwen2.5-Math-7B
    output_dir: outputs/qwen-em-grpo      # phase 1 in <output_dir>/em, phase 2 in <output_dir>/grpo
    push_to_hub: false
    hub_model_id: null                    # pushes <id>-em and <id>-em-grpo
    peft: null                            # or LoRA settings, e.g. {r: 16, lora_alpha: 32, target_modules: all-linear}
    merge_on_save: true                   # LoRA: save merged full weights (phase 2 needs full weights anyway)
    order: em_then_grpo                   # or grpo_then_em (EM from the GRPO weights), or grpo (no EM phase)
    em:   {dataset: null, <EMConfig fields>}
    grpo: {dataset: <Hub id or file>, dataset_split: train, problem_column: null, answer_column: null,
           max_prompts: null, <GRPOConfig fields>}

``order`` exists for the EM paper's ordering finding (EM before RL helps, RL before EM hurts): the same phases,
the same settings, in either order or without EM. A finished phase leaves ``.phase_complete`` in its directory and
is skipped on a rerun; an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import yaml
from trl import GRPOTrainer

from ..core.model_card import BOTH_CITATIONS, build_model_card
from ..data.files import ConfigFileError, atomic_write_json, read_yaml_mapping
from ..data.paths import ConfigPathError, resolve_config_path
from ..data.sources import DatasetError

PHASE_MARKER = ".phase_complete"
DATA_KEYS = ("dataset", "dataset_split", "problem_column", "answer_column", "max_prompts", "reward", "data_dir")
REWARDS = ("accuracy", "code")
TOP_KEYS = ("model", "output_dir", "push_to_hub", "hub_model_id", "peft", "merge_on_save", "order", "em", "grpo")
ORDERS = ("em_then_grpo", "grpo_then_em", "grpo")

EM_THEN_GRPO_DESCRIPTION = (
    "Two phases. (1) Entropy minimization (One-shot EM, Gao et al. 2025): responses sampled from the model for an "
    "unlabeled prompt, loss = mean token entropy over the generated positions, no labels or reward. (2) GRPO "
    "(Shao et al. 2024, TRL's GRPOTrainer) from the phase-1 weights, with a verifiable reward: 1 when the final "
    "answer verifies against the label with math-verify, else 0. The EM paper finds EM before RL helps, RL before "
    "EM hurts."
)


class PipelineConfigError(ValueError):
    """A bad EM-then-GRPO configuration; the message names the key and the fix."""


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read the YAML and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    try:
        config = read_yaml_mapping(path, "recipe config")
    except ConfigFileError as error:
        raise PipelineConfigError(str(error)) from None
    for item in overrides or []:
        if "=" not in item:
            raise PipelineConfigError(f"Override '{item}' must look like key=value or section.key=value.")
        key, value = item.split("=", 1)
        target = config
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = yaml.safe_load(value)
    unknown = [k for k in config if k not in TOP_KEYS]
    if unknown:
        raise PipelineConfigError(f"Unknown top-level key(s) {unknown}; allowed: {list(TOP_KEYS)}.")
    if config.setdefault("order", "em_then_grpo") not in ORDERS:
        raise PipelineConfigError(f"order: {config['order']!r}; use one of {list(ORDERS)}.")
    for phase in ("em", "grpo"):
        if config.get(phase) is not None and not isinstance(config[phase], dict):
            raise PipelineConfigError(f"'{phase}' must be a mapping of settings, got {config[phase]!r}.")
    try:
        config["model"] = resolve_config_path(config.get("model"), path, "model")
        for phase, key in (("em", "dataset"), ("grpo", "dataset"), ("grpo", "data_dir")):
            section = config.get(phase) or {}
            if key in section:
                section[key] = resolve_config_path(section[key], path, f"{phase}.{key}")
    except ConfigPathError as error:
        raise PipelineConfigError(str(error)) from error
    if "output_dir" not in config:
        raise PipelineConfigError("The config needs an output_dir (phase 1 goes to <output_dir>/em, 2 to /grpo).")
    return config


def _peft_config(settings: dict[str, Any] | None):
    if not settings:
        return None
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **settings)


def _last_checkpoint(directory: Path) -> str | None:
    from ..core.checkpoints import last_complete_checkpoint

    return last_complete_checkpoint(directory)


def _save_final(trainer: Any, directory: Path, merge: bool) -> None:
    """Save weights, config, generation config and tokenizer; LoRA adapters merged into full weights if asked."""
    from accelerate.utils import is_peft_model

    model = trainer.accelerator.unwrap_model(trainer.model)
    if merge and is_peft_model(model):
        config = model.peft_config.get("default")
        trainer._merged_lora = f"{type(config).__name__}(r={config.r}, alpha={config.lora_alpha}), merged"
        merged = model.merge_and_unload()
        # merge_and_unload emptied the adapter the trainer still holds; whatever saves from the trainer next
        # (push_to_hub saves before it uploads) must save the merged model, not that empty adapter.
        trainer.model = trainer.model_wrapped = merged
        if trainer.accelerator.is_main_process:
            merged.save_pretrained(directory)
            trainer.processing_class.save_pretrained(directory)
        trainer.accelerator.wait_for_everyone()
    else:
        trainer.save_model(str(directory))


def _mark_complete(trainer: Any, directory: Path, summary: dict[str, Any]) -> None:
    if trainer.accelerator.is_main_process:
        atomic_write_json(directory / PHASE_MARKER, summary)
    trainer.accelerator.wait_for_everyone()


def _hub_id(config: dict[str, Any], suffix: str) -> str | None:
    hub = config.get("hub_model_id")
    return f"{hub}-{suffix}" if hub else None


def _phase_settings(config: dict[str, Any], phase: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The phase's directory, its trainer-config fields, and its data keys (split off the config fields)."""
    settings = copy.deepcopy(config.get(phase) or {})
    data = {k: settings.pop(k) for k in DATA_KEYS if k in settings}
    settings.setdefault("push_to_hub", False)  # the top-level push_to_hub decides, after the card is written
    return Path(config["output_dir"]) / phase, settings, data


def run_em_phase(config: dict[str, Any], start: Path | None = None) -> Path:
    """The EM phase, from ``start`` (a previous phase's weights) or the config's model. Returns its final weights."""
    from ..core.trainer import EMTrainer
    from ..data.models import resolve_model
    from ..data.prompts import load_prompt_dataset
    from ..evaluation.dev_set import build_dev_set_scorer

    directory, settings, data = _phase_settings(config, "em")
    if (directory / PHASE_MARKER).is_file():
        print(f"[em-trainer] EM phase already complete in {directory}; skipping", flush=True)
        return directory
    push = bool(config.get("push_to_hub"))
    args = _em_args(config)
    dataset = load_prompt_dataset(
        data.get("dataset"),
        data.get("dataset_split", "train"),
        data.get("problem_column"),
        limit=data.get("max_prompts"),
    )
    model_path = str(start) if start is not None else resolve_model(config.get("model"))
    scorer = None
    if args.early_stopping_dev_set:
        from transformers import AutoTokenizer

        scorer = build_dev_set_scorer(args, AutoTokenizer.from_pretrained(model_path, padding_side="left"))
    trainer = EMTrainer(
        model=model_path,
        args=args,
        train_dataset=dataset,
        peft_config=_peft_config(config.get("peft")),
        dev_set_scorer=scorer,
    )
    trainer.train(resume_from_checkpoint=_last_checkpoint(directory))
    _save_final(trainer, directory, bool(config.get("merge_on_save", True)))
    dataset_name = data.get("dataset") or "one-shot EM prompt (pi1)"
    trainer.create_model_card(dataset_name=dataset_name)
    if push:
        trainer.push_to_hub(dataset_name=dataset_name)
    _mark_complete(trainer, directory, {"phase": "em", "steps": trainer.state.global_step, "dataset": dataset_name})
    return directory


def load_code_dataset(settings: dict[str, Any]):
    """The GRPO phase's code prompts with a ``gold`` column of tests: a code benchmark by name (local or Hub)."""
    from datasets import Dataset

    from ..data.prompts import format_problem
    from ..evaluation.benchmarks import BENCHMARKS, EvaluationError, load_benchmark

    name = settings.get("dataset")
    if name not in BENCHMARKS or BENCHMARKS[name].kind != "code":
        code = [n for n, b in BENCHMARKS.items() if b.kind == "code"]
        raise PipelineConfigError(
            f"grpo.reward: code needs grpo.dataset to be a code benchmark ({code}), got {name!r}."
        )
    try:
        rows = load_benchmark(name, settings.get("data_dir"), settings.get("max_prompts"))
    except EvaluationError as error:
        raise PipelineConfigError(f"grpo.dataset {name!r}: {error}") from error
    return Dataset.from_list([{"prompt": format_problem(r["problem"], None), "gold": r["gold"]} for r in rows])


def load_labeled_dataset(settings: dict[str, Any]):
    """The GRPO phase's prompts with an ``answer`` column, from a Hub id or a local file."""
    from datasets import Dataset

    from ..data.labels import PROBLEM_COLUMNS, pool_answer
    from ..data.prompts import format_problem
    from ..data.sources import load_pool

    source = settings.get("dataset")
    if not source:
        raise PipelineConfigError("grpo.dataset is required: a Hub id or a local file of problems with answers.")
    rows = load_pool(source, settings.get("dataset_split", "train"), settings.get("max_prompts"))
    column = settings.get("problem_column")
    records = []
    for row in rows:
        name = column or next((c for c in PROBLEM_COLUMNS if row.get(c)), None)
        answer = pool_answer(row, settings.get("answer_column"))
        if name is None or answer is None:
            continue
        problem = row[name]
        prompt = format_problem(problem) if isinstance(problem, str) else problem
        records.append({"prompt": prompt, "answer": answer})
    if not records:
        raise PipelineConfigError(
            f"No row of '{source}' has both a problem and an answer; set grpo.problem_column / grpo.answer_column."
        )
    return Dataset.from_list(records)


class GRPOAfterEMTrainer(GRPOTrainer):
    """TRL's GRPOTrainer for the GRPO phase, whose model card tells both phases apart and cites the EM papers."""

    _tag_names = ["trl", "grpo", "em-trainer", "entropy-minimization"]

    def __init__(
        self,
        *args: Any,
        em_dir: Path | None,
        base_model: str | None,
        dataset_name: str | None,
        reward_description: str = "accuracy (math-verify against the answer column)",
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.reward_description = reward_description
        self.em_dir, self.base_model, self.dataset_name = em_dir, base_model, dataset_name
        marker = em_dir / PHASE_MARKER if em_dir is not None else None
        self.em_summary = json.loads(marker.read_text()) if marker is not None and marker.is_file() else {}

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        if not self.is_world_process_zero():
            return
        directory = Path(self.args.output_dir)
        last = next((log for log in reversed(self.state.log_history) if "reward" in log), {})
        card = build_model_card(
            model_name=model_name or directory.name,
            model_id=self.args.hub_model_id or str(directory),
            base_model=self.base_model,
            dataset_name=dataset_name or self.dataset_name,
            hyperparameters={
                **(
                    {
                        "EM (before GRPO) data": self.em_summary.get("dataset"),
                        "EM (before GRPO) optimizer steps": self.em_summary.get("steps"),
                        "EM (before GRPO) settings": f"see {self.em_dir / 'README.md'}",
                    }
                    if self.em_dir is not None
                    else {"EM before GRPO": "none: GRPO from the base model"}
                ),
                # Named by method, not by phase number: with `order: grpo_then_em` GRPO is the first phase.
                "GRPO data": self.dataset_name,
                "GRPO optimizer steps": self.state.global_step,
                "GRPO reward": self.reward_description,
                "GRPO learning rate": self.args.learning_rate,
                "GRPO generations per prompt": self.args.num_generations,
                "GRPO sampling temperature": self.args.temperature,
                "GRPO KL weight (beta)": self.args.beta,
                "GRPO max response length": self.args.max_completion_length,
                "GRPO loss": self.args.loss_type,
            },
            results={k: v for k, v in last.items() if k == "reward" or k == "entropy" or k.startswith("rewards/")},
            method_description=EM_THEN_GRPO_DESCRIPTION,
            tags=["grpo", "em-then-grpo"],
            citation=BOTH_CITATIONS,
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))


def _em_args(config: dict[str, Any]) -> Any:
    """The EM phase's EMConfig; an unknown key or a bad value is named as ``em.<key>``."""
    from ..core.config import EMConfig

    directory, settings, _ = _phase_settings(config, "em")
    return _build(EMConfig, "em", settings, output_dir=str(directory), hub_model_id=_hub_id(config, "em"))


def _grpo_args(config: dict[str, Any]) -> Any:
    """The GRPO phase's GRPOConfig, with this machine's defaults (no bf16 on CPU; gloo for several CPU processes)."""
    from trl import GRPOConfig

    directory, settings, _ = _phase_settings(config, "grpo")
    if "bf16" not in settings and not _cuda():
        settings["bf16"] = False  # GRPOConfig defaults to bf16, which a CPU cannot train in
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ and not _cuda():
        settings.setdefault("use_cpu", True)  # several CPU processes: gloo, as EMConfig does
    return _build(GRPOConfig, "grpo", settings, output_dir=str(directory), hub_model_id=_hub_id(config, "em-grpo"))


def _build(cls: Any, phase: str, settings: dict[str, Any], **fixed: Any) -> Any:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise PipelineConfigError(
            f"{phase}.{unknown[0]}: not a field of {cls.__name__} (unknown: {unknown}); see the {cls.__name__} "
            "docs for the settings this section takes."
        )
    try:
        return cls(**fixed, **settings)
    except (ValueError, TypeError) as error:
        raise PipelineConfigError(f"{phase}: {str(error).strip()}".replace("\n", " ")) from error


def run_grpo_phase(config: dict[str, Any], em_dir: Path | None) -> Path:
    """GRPO with the accuracy reward, from the EM phase's weights ``em_dir`` or, when None, the config's model."""

    from ..data.models import base_model_id, resolve_model
    from ..evaluation.rewards import accuracy_reward

    directory, settings, data = _phase_settings(config, "grpo")
    if (directory / PHASE_MARKER).is_file():
        print(f"[em-trainer] GRPO phase already complete in {directory}; skipping", flush=True)
        return directory
    reward_name = data.get("reward", "accuracy")
    args = _grpo_args(config)
    if reward_name == "code":
        from ..evaluation.code_tasks import code_reward

        dataset, reward = load_code_dataset(data), code_reward
    else:
        dataset, reward = load_labeled_dataset(data), accuracy_reward

    model: Any = str(em_dir) if em_dir is not None else resolve_model(config.get("model"))
    processing_class = None
    if em_dir is not None and (em_dir / "adapter_config.json").is_file():
        # Phase 1 kept its LoRA adapter unmerged: fold it into the base weights so GRPO starts from the EM model.
        from peft import AutoPeftModelForCausalLM
        from transformers import AutoTokenizer

        model = AutoPeftModelForCausalLM.from_pretrained(str(em_dir)).merge_and_unload()
        processing_class = AutoTokenizer.from_pretrained(str(em_dir), padding_side="left")
    trainer = GRPOAfterEMTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=dataset,
        processing_class=processing_class,
        peft_config=_peft_config(config.get("peft")),
        em_dir=em_dir,
        base_model=base_model_id(config.get("model")),
        dataset_name=data.get("dataset"),
        reward_description="tests pass in the sandbox" if reward_name == "code" else "accuracy (math-verify)",
    )
    trainer.train(resume_from_checkpoint=_last_checkpoint(directory))
    _save_final(trainer, directory, bool(config.get("merge_on_save", True)))
    trainer.create_model_card(dataset_name=data.get("dataset"))
    if config.get("push_to_hub"):
        trainer.push_to_hub(dataset_name=data.get("dataset"))
    _mark_complete(trainer, directory, {"phase": "grpo", "steps": trainer.state.global_step})
    return directory


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def check_grpo_data(config: dict[str, Any]) -> None:
    """Load phase 2's dataset before phase 1 trains: a wrong path or reward must not cost the whole EM phase."""
    _, _, data = _phase_settings(config, "grpo")
    if (Path(config["output_dir"]) / "grpo" / PHASE_MARKER).is_file():
        return
    reward_name = data.get("reward", "accuracy")
    if reward_name not in REWARDS:
        raise PipelineConfigError(f"grpo.reward: {reward_name!r}; use one of {list(REWARDS)}.")
    try:
        load_code_dataset(data) if reward_name == "code" else load_labeled_dataset(data)
    except DatasetError as error:
        raise PipelineConfigError(f"grpo.dataset: {error}") from error


def preflight(config: dict[str, Any]) -> None:
    """Check everything the unfinished phases need before either trains, so a bad value costs seconds, not a phase:
    the output directory is writable, the model resolves to a causal LM, each phase's settings build a valid config,
    and each phase's dataset loads with the columns it needs."""
    from ..core.trainer import EMTrainer
    from ..data.files import check_writable_dir
    from ..data.models import check_causal_lm, resolve_model
    from ..data.prompts import load_prompt_dataset

    check_writable_dir(config["output_dir"], "output_dir")
    check_causal_lm(resolve_model(config.get("model")))
    order = config.get("order", "em_then_grpo")
    em_dir, _, em_data = _phase_settings(config, "em")
    if order != "grpo" and not (em_dir / PHASE_MARKER).is_file():
        args = _em_args(config)
        try:
            dataset = load_prompt_dataset(
                em_data.get("dataset"), em_data.get("dataset_split", "train"), em_data.get("problem_column"),
                limit=em_data.get("max_prompts"),
            )  # fmt: skip
            EMTrainer._check_dataset_fits_batch(dataset, args)
        except (DatasetError, ValueError) as error:
            raise PipelineConfigError(f"em.dataset: {error}") from error
    if not (Path(config["output_dir"]) / "grpo" / PHASE_MARKER).is_file():
        _grpo_args(config)
        check_grpo_data(config)


def run_em_then_grpo(config: dict[str, Any]) -> tuple[Path | None, Path]:
    """Run the config's phases in its ``order``; returns the EM and GRPO phases' directories (EM None if skipped)."""
    preflight(config)
    order = config.get("order", "em_then_grpo")
    em_dir: Path | None = None
    if order == "em_then_grpo":
        em_dir = run_em_phase(config)
        grpo_dir = run_grpo_phase(config, em_dir)
        print(f"[em-trainer] EM model: {em_dir}\n[em-trainer] EM then GRPO model: {grpo_dir}", flush=True)
    elif order == "grpo_then_em":
        grpo_dir = run_grpo_phase(config, None)
        em_dir = run_em_phase(config, start=grpo_dir)
        print(f"[em-trainer] GRPO model: {grpo_dir}\n[em-trainer] GRPO then EM model: {em_dir}", flush=True)
    else:
        grpo_dir = run_grpo_phase(config, None)
        print(f"[em-trainer] GRPO model: {grpo_dir}", flush=True)
    return em_dir, grpo_dir
