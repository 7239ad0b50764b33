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

The file is parsed with TrlParser into :class:`RecipeArguments` (every top-level key is also a flag), and each
section becomes a typed phase once: :class:`PhaseData` plus an ``EMConfig`` or ``GRPOConfig``. ``order`` is a row of
the phase table :data:`ORDERS`; it exists for the EM paper's ordering finding (EM before RL helps, RL before EM
hurts): the same phases, the same settings, in either order or without EM. A finished phase leaves
``.phase_complete`` in its directory and is skipped on a rerun; an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from trl import GRPOTrainer

from ..core.model_card import BOTH_CITATIONS, build_model_card
from ..data.files import ConfigFileError, atomic_write_json, read_yaml_mapping
from ..data.paths import ConfigPathError, resolve_config_path
from ..data.sources import DatasetError

PHASE_MARKER = ".phase_complete"
REWARDS = ("accuracy", "code")

EM_THEN_GRPO_DESCRIPTION = (
    "Two phases. (1) Entropy minimization (One-shot EM, Gao et al. 2025): responses sampled from the model for an "
    "unlabeled prompt, loss = mean token entropy over the generated positions, no labels or reward. (2) GRPO "
    "(Shao et al. 2024, TRL's GRPOTrainer) from the phase-1 weights, with a verifiable reward: 1 when the final "
    "answer verifies against the label with math-verify, else 0. The EM paper finds EM before RL helps, RL before "
    "EM hurts."
)


class PipelineConfigError(ValueError):
    """A bad EM-then-GRPO configuration; the message names the key and the fix."""


@dataclass
class RecipeArguments:
    """The recipe's own keys (the YAML's top level; each also a flag of ``recipes/em_then_grpo.py``).

    Args:
        model (`str` or `None`, defaults to `None`): the starting model (Hub id, folder, GGUF or an embedded name;
            None: the embedded default).
        output_dir (`str` or `None`, defaults to `None`): required; phase EM in ``<output_dir>/em``, GRPO in
            ``<output_dir>/grpo``.
        push_to_hub (`bool`, defaults to `False`): push each finished phase, with its model card.
        hub_model_id (`str` or `None`, defaults to `None`): pushes ``<id>-em`` and ``<id>-em-grpo``.
        peft (`dict` or `None`, defaults to `None`): LoRA settings for both phases (``LoraConfig`` fields).
        merge_on_save (`bool`, defaults to `True`): LoRA: save merged full weights (the next phase needs them).
        order (`str`, defaults to `"em_then_grpo"`): a row of :data:`ORDERS`: ``em_then_grpo``, ``grpo_then_em``
            (EM from the GRPO weights) or ``grpo`` (no EM phase), for the EM paper's ordering finding.
        em (`dict`, defaults to `{}`): the EM phase: :class:`PhaseData` keys and :class:`EMConfig` fields.
        grpo (`dict`, defaults to `{}`): the GRPO phase: :class:`PhaseData` keys and TRL ``GRPOConfig`` fields.
        overwrite_output_dir (`bool`, defaults to `False`): a phase folder holding work of other settings (another
            config, order, data or starting model) is refused unless this is set; then that work is deleted and the
            phase starts afresh. A phase of the same settings resumes, or is skipped when complete, either way.

    ``--set section.key=value`` (repeatable; values read as YAML) changes a key of a section: see :func:`split_set`.
    """

    model: str | None = field(
        default=None,
        metadata={
            "help": "The starting model: Hub id, folder, GGUF or an embedded name (default: the "
            "embedded SmolLM2-135M-Instruct)."
        },
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Required: phase EM in <output_dir>/em, GRPO in <output_dir>/grpo."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Push each finished phase, with its model card."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Pushes <id>-em and <id>-em-grpo."})
    peft: dict | None = field(
        default=None, metadata={"help": "LoRA settings for both phases (LoraConfig fields; a YAML mapping)."}
    )
    merge_on_save: bool = field(
        default=True, metadata={"help": "LoRA: save merged full weights (the next phase starts from them)."}
    )
    order: str = field(
        default="em_then_grpo",
        metadata={"help": "em_then_grpo, grpo_then_em (EM from the GRPO weights) or grpo (no EM phase)."},
    )
    em: dict = field(
        default_factory=dict, metadata={"help": "The EM phase: dataset keys and EMConfig fields (a YAML mapping)."}
    )
    grpo: dict = field(
        default_factory=dict, metadata={"help": "The GRPO phase: dataset keys and GRPOConfig fields (a YAML mapping)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "A phase folder holding work of other settings is refused unless this is set; then that "
            "work is deleted and the phase starts afresh."
        },
    )


@dataclass
class PhaseData:
    """What a phase trains on (split off its section; the rest are the trainer config's fields).

    Args:
        dataset (`str` or `None`): Hub id or local file (EM: None is the paper's one-shot prompt; GRPO: required).
        dataset_split (`str`, defaults to `"train"`): the dataset's split.
        problem_column (`str` or `None`): the problem column, when not the usual.
        answer_column (`str` or `None`): the answer column, when not the usual.
        max_prompts (`int` or `None`): the first N rows.
        reward (`str`, defaults to `"accuracy"`): GRPO's reward, ``accuracy`` (math-verify) or ``code`` (sandbox).
        data_dir (`str` or `None`): where a code benchmark's files are (GRPO with ``reward: code``).
    """

    dataset: str | None = None
    dataset_split: str = "train"
    problem_column: str | None = None
    answer_column: str | None = None
    max_prompts: int | None = None
    reward: str = "accuracy"
    data_dir: str | None = None


DATA_KEYS = tuple(f.name for f in fields(PhaseData))


@dataclass
class Phase:
    """One phase, typed once when the recipe is loaded: its directory, trainer config and data."""

    name: str
    directory: Path
    args: Any  # EMConfig or GRPOConfig
    data: PhaseData


@dataclass
class Recipe:
    """A loaded recipe: its own arguments and each phase of its order, in order."""

    args: RecipeArguments
    phases: dict[str, Phase]

    @property
    def order(self) -> tuple[str, ...]:
        return ORDERS[self.args.order]


# The phase table: each order is the phases it runs, in sequence; each phase starts from the previous one's weights.
ORDERS: dict[str, tuple[str, ...]] = {
    "em_then_grpo": ("em", "grpo"),
    "grpo_then_em": ("grpo", "em"),
    "grpo": ("grpo",),
}
TOP_KEYS = tuple(f.name for f in fields(RecipeArguments))


def split_set(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` without its ``--set KEY=VALUE`` / ``--set=KEY=VALUE`` flags, and their values in order (each one
    applies; the TrlParser flags of :class:`RecipeArguments` are the rest)."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--set":
            if i + 1 >= len(argv):
                raise PipelineConfigError("--set needs a value: section.key=value, e.g. grpo.max_steps=5.")
            overrides.append(argv[i + 1])
            i += 2
            continue
        if argv[i].startswith("--set="):
            overrides.append(argv[i][len("--set=") :])
        else:
            rest.append(argv[i])
        i += 1
    return rest, overrides


def recipe_parser() -> Any:
    """TrlParser over :class:`RecipeArguments`: ``--config`` YAML, flags (``--order grpo``, ``--set em.seed=3``)."""
    from trl import TrlParser

    class RecipeParser(TrlParser):
        def error(self, message: str):
            raise PipelineConfigError(message)

    return RecipeParser((RecipeArguments,), prog="em_then_grpo", allow_abbrev=False)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None, argv: list[str] | None = None) -> Recipe:
    """Read the recipe YAML, then flags (``argv``) and ``section.key=value`` overrides; type every phase."""
    try:
        raw = read_yaml_mapping(path, "recipe config")
    except ConfigFileError as error:
        raise PipelineConfigError(str(error)) from None
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise PipelineConfigError(f"Unknown top-level key(s) {unknown}; allowed: {list(TOP_KEYS)}.")
    for phase in ("em", "grpo"):
        if raw.get(phase) is not None and not isinstance(raw[phase], dict):
            raise PipelineConfigError(f"'{phase}' must be a mapping of settings, got {raw[phase]!r}.")
    try:
        (args,) = recipe_parser().parse_args_and_config(["--config", str(path), *(argv or [])])
    except (ValueError, TypeError) as error:
        raise PipelineConfigError(str(error)) from None
    args.em, args.grpo = copy.deepcopy(args.em or {}), copy.deepcopy(args.grpo or {})
    for item in overrides or []:
        if "=" not in item:
            raise PipelineConfigError(f"Override '{item}' must look like key=value or section.key=value.")
        key, value = item.split("=", 1)
        parts = key.split(".")
        if parts[0] not in TOP_KEYS:
            raise PipelineConfigError(f"Override '{item}': {parts[0]!r} is not a key; allowed: {list(TOP_KEYS)}.")
        if len(parts) == 1:
            setattr(args, key, yaml.safe_load(value))
        else:
            target = getattr(args, parts[0])
            for part in parts[1:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = yaml.safe_load(value)
    if args.order not in ORDERS:
        raise PipelineConfigError(f"order: {args.order!r}; use one of {list(ORDERS)}.")
    try:
        args.model = resolve_config_path(args.model, path, "model")
        for phase, key in (("em", "dataset"), ("grpo", "dataset"), ("grpo", "data_dir")):
            section = getattr(args, phase)
            if key in section:
                section[key] = resolve_config_path(section[key], path, f"{phase}.{key}")
    except ConfigPathError as error:
        raise PipelineConfigError(str(error)) from error
    if not args.output_dir:
        raise PipelineConfigError("The config needs an output_dir (phase 1 goes to <output_dir>/em, 2 to /grpo).")
    phases = {name: _typed_phase(args, name) for name in ORDERS[args.order]}
    return Recipe(args=args, phases=phases)


def _typed_phase(args: RecipeArguments, name: str) -> Phase:
    """A section split into its :class:`PhaseData` and its trainer config (EMConfig or GRPOConfig), built once."""
    settings = dict(getattr(args, name))
    data = PhaseData(**{k: settings.pop(k) for k in DATA_KEYS if k in settings})
    settings.setdefault("push_to_hub", False)  # the top-level push_to_hub decides, after the card is written
    directory = Path(args.output_dir) / name
    hub = f"{args.hub_model_id}-{'em' if name == 'em' else 'em-grpo'}" if args.hub_model_id else None
    if name == "em":
        from ..core.config import EMConfig

        config = _build(EMConfig, "em", settings, output_dir=str(directory), hub_model_id=hub)
    else:
        from trl import GRPOConfig

        if "bf16" not in settings and not _cuda():
            settings["bf16"] = False  # GRPOConfig defaults to bf16, which a CPU cannot train in
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ and not _cuda():
            settings.setdefault("use_cpu", True)  # several CPU processes: gloo, as EMConfig does
        config = _build(GRPOConfig, "grpo", settings, output_dir=str(directory), hub_model_id=hub)
    if data.reward not in REWARDS:
        raise PipelineConfigError(f"{name}.reward: {data.reward!r}; use one of {list(REWARDS)}.")
    return Phase(name=name, directory=directory, args=config, data=data)


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


# What a phase leaves in its folder: with any of it and another identity, the folder holds a phase of other settings.
PHASE_WORK = ("checkpoint-*", "*.safetensors", PHASE_MARKER, "trainer_state.json", "README.md", "adapter_config.json")


def phase_identity(recipe: Recipe, name: str, start: Path | None) -> dict[str, Any]:
    """Everything a phase's weights depend on: its settings and data, the recipe's LoRA and merge settings, the
    phases before it in the order, and the weights it starts from (the previous phase's identity, read from its
    folder's marker, or the recipe model's identity)."""
    from dataclasses import asdict

    from ..data.identity import model_identity, settings_identity
    from ..data.run_folder import MARKER

    phase = recipe.phases[name]
    if start is not None and (start / MARKER).is_file():
        origin: Any = json.loads((start / MARKER).read_text(encoding="utf-8"))
    elif start is not None:
        origin = model_identity(str(start))
    else:
        origin = model_identity(recipe.args.model or "smollm2-135m-instruct")
    return {
        "phase": name,
        "order": list(recipe.order[: recipe.order.index(name) + 1]),
        "start": origin,
        "config": settings_identity(phase.args.to_dict()),
        "data": asdict(phase.data),
        "peft": recipe.args.peft,
        "merge_on_save": recipe.args.merge_on_save,
    }


def claim_phase(recipe: Recipe, name: str, start: Path | None, check_only: bool = False) -> str:
    """``"resume"`` (same settings: resume, or skip when complete) or ``"fresh"``; other settings are refused, or
    replaced with ``overwrite_output_dir``. Every process but the first only asks."""
    from ..data.run_folder import claim_folder

    first_process = int(os.environ.get("RANK", "0")) == 0
    return claim_folder(
        recipe.phases[name].directory, phase_identity(recipe, name, start), work=PHASE_WORK,
        overwrite=recipe.args.overwrite_output_dir, flag="overwrite_output_dir: true",
        field=f"the {name} phase's folder", check_only=check_only or not first_process,
    )  # fmt: skip


def _mark_complete(trainer: Any, directory: Path, summary: dict[str, Any]) -> None:
    if trainer.accelerator.is_main_process:
        atomic_write_json(directory / PHASE_MARKER, summary)
    trainer.accelerator.wait_for_everyone()


def run_em_phase(recipe: Recipe, start: Path | None = None) -> Path:
    """The EM phase, from ``start`` (a previous phase's weights) or the recipe's model. Returns its final weights."""
    from ..core.trainer import EMTrainer
    from ..data.models import resolve_model
    from ..data.prompts import load_prompt_dataset
    from ..evaluation.dev_set import build_dev_set_scorer

    phase = recipe.phases["em"]
    directory, args, data = phase.directory, phase.args, phase.data
    resume = claim_phase(recipe, "em", start) == "resume"
    if resume and (directory / PHASE_MARKER).is_file():
        print(f"[em-trainer] EM phase already complete in {directory}; skipping", flush=True)
        return directory
    dataset = load_prompt_dataset(data.dataset, data.dataset_split, data.problem_column, limit=data.max_prompts)
    model_path = str(start) if start is not None else resolve_model(recipe.args.model)
    scorer = None
    if args.early_stopping_dev_set:
        from transformers import AutoTokenizer

        scorer = build_dev_set_scorer(args, AutoTokenizer.from_pretrained(model_path, padding_side="left"))
    trainer = EMTrainer(
        model=model_path,
        args=args,
        train_dataset=dataset,
        peft_config=_peft_config(recipe.args.peft),
        dev_set_scorer=scorer,
    )
    trainer.train(resume_from_checkpoint=_last_checkpoint(directory) if resume else None)
    _save_final(trainer, directory, recipe.args.merge_on_save)
    dataset_name = data.dataset or "one-shot EM prompt (pi1)"
    trainer.create_model_card(dataset_name=dataset_name)
    if recipe.args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset_name)
    _mark_complete(trainer, directory, {"phase": "em", "steps": trainer.state.global_step, "dataset": dataset_name})
    return directory


def load_code_dataset(data: PhaseData):
    """The GRPO phase's code prompts with a ``gold`` column of tests: a code benchmark by name (local or Hub)."""
    from datasets import Dataset

    from ..data.prompts import format_problem
    from ..evaluation.benchmarks import BENCHMARKS, EvaluationError, load_benchmark

    name = data.dataset
    if name not in BENCHMARKS or BENCHMARKS[name].kind != "code":
        code = [n for n, b in BENCHMARKS.items() if b.kind == "code"]
        raise PipelineConfigError(
            f"grpo.reward: code needs grpo.dataset to be a code benchmark ({code}), got {name!r}."
        )
    try:
        rows = load_benchmark(name, data.data_dir, data.max_prompts)
    except EvaluationError as error:
        raise PipelineConfigError(f"grpo.dataset {name!r}: {error}") from error
    return Dataset.from_list([{"prompt": format_problem(r["problem"], None), "gold": r["gold"]} for r in rows])


def load_labeled_dataset(data: PhaseData):
    """The GRPO phase's prompts with an ``answer`` column, from a Hub id or a local file."""
    from datasets import Dataset

    from ..data.labels import PROBLEM_COLUMNS, pool_answer
    from ..data.prompts import format_problem
    from ..data.sources import load_pool

    source = data.dataset
    if not source:
        raise PipelineConfigError("grpo.dataset is required: a Hub id or a local file of problems with answers.")
    rows = load_pool(source, data.dataset_split, data.max_prompts)
    column = data.problem_column
    records = []
    for row in rows:
        name = column or next((c for c in PROBLEM_COLUMNS if row.get(c)), None)
        answer = pool_answer(row, data.answer_column)
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


def run_grpo_phase(recipe: Recipe, start: Path | None = None) -> Path:
    """GRPO with the phase's reward, from ``start`` (the EM phase's weights) or, when None, the recipe's model."""

    from ..data.models import base_model_id, resolve_model
    from ..evaluation.rewards import accuracy_reward

    phase = recipe.phases["grpo"]
    directory, args, data = phase.directory, phase.args, phase.data
    resume = claim_phase(recipe, "grpo", start) == "resume"
    if resume and (directory / PHASE_MARKER).is_file():
        print(f"[em-trainer] GRPO phase already complete in {directory}; skipping", flush=True)
        return directory
    if data.reward == "code":
        from ..evaluation.code_tasks import code_reward

        dataset, reward = load_code_dataset(data), code_reward
    else:
        dataset, reward = load_labeled_dataset(data), accuracy_reward

    model: Any = str(start) if start is not None else resolve_model(recipe.args.model)
    processing_class = None
    if start is not None and (start / "adapter_config.json").is_file():
        # The EM phase kept its LoRA adapter unmerged: fold it into the base weights so GRPO starts from the EM model.
        from peft import AutoPeftModelForCausalLM
        from transformers import AutoTokenizer

        model = AutoPeftModelForCausalLM.from_pretrained(str(start)).merge_and_unload()
        processing_class = AutoTokenizer.from_pretrained(str(start), padding_side="left")
    trainer = GRPOAfterEMTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=dataset,
        processing_class=processing_class,
        peft_config=_peft_config(recipe.args.peft),
        em_dir=start,
        base_model=base_model_id(recipe.args.model),
        dataset_name=data.dataset,
        reward_description="tests pass in the sandbox" if data.reward == "code" else "accuracy (math-verify)",
    )
    trainer.train(resume_from_checkpoint=_last_checkpoint(directory) if resume else None)
    _save_final(trainer, directory, recipe.args.merge_on_save)
    trainer.create_model_card(dataset_name=data.dataset)
    if recipe.args.push_to_hub:
        trainer.push_to_hub(dataset_name=data.dataset)
    _mark_complete(trainer, directory, {"phase": "grpo", "steps": trainer.state.global_step})
    return directory


# Each phase of the table, as a function of the recipe and the previous phase's weights (None: the recipe's model).
PHASES = {"em": run_em_phase, "grpo": run_grpo_phase}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def check_grpo_data(recipe: Recipe) -> None:
    """Load the GRPO phase's dataset before anything trains: a wrong path or reward must not cost the EM phase."""
    phase = recipe.phases["grpo"]
    if (phase.directory / PHASE_MARKER).is_file():
        return
    try:
        load_code_dataset(phase.data) if phase.data.reward == "code" else load_labeled_dataset(phase.data)
    except DatasetError as error:
        raise PipelineConfigError(f"grpo.dataset: {error}") from error


def preflight(recipe: Recipe) -> None:
    """Check everything the unfinished phases need before any trains, so a bad value costs seconds, not a phase:
    the output directory is writable, the model resolves to a causal LM (each phase's config was built when the
    recipe was loaded), and each phase's dataset loads with the columns it needs."""
    from ..core.trainer import EMTrainer
    from ..data.files import check_writable_dir
    from ..data.models import check_causal_lm, resolve_model
    from ..data.prompts import load_prompt_dataset

    check_writable_dir(recipe.args.output_dir, "output_dir")
    check_causal_lm(resolve_model(recipe.args.model))
    claim_phase(recipe, recipe.order[0], None, check_only=True)  # a first phase of other settings: refused now
    em = recipe.phases.get("em")
    if em is not None and not (em.directory / PHASE_MARKER).is_file():
        data = em.data
        try:
            dataset = load_prompt_dataset(data.dataset, data.dataset_split, data.problem_column,
                                          limit=data.max_prompts)  # fmt: skip
            EMTrainer._check_dataset_fits_batch(dataset, em.args)
        except (DatasetError, ValueError) as error:
            raise PipelineConfigError(f"em.dataset: {error}") from error
    if "grpo" in recipe.phases:
        check_grpo_data(recipe)


def run_em_then_grpo(recipe: Recipe) -> tuple[Path | None, Path | None]:
    """Run the recipe's phases in its order (a row of :data:`ORDERS`), each from the previous one's weights;
    returns the EM and GRPO phases' directories (None for a phase the order leaves out)."""
    preflight(recipe)
    done: dict[str, Path] = {}
    previous: Path | None = None
    for name in recipe.order:
        previous = done[name] = PHASES[name](recipe, previous)
    names = {"em": "EM", "grpo": "GRPO"}
    print(f"[em-trainer] {' then '.join(names[n] for n in recipe.order)} model: {previous}", flush=True)
    return done.get("em"), done.get("grpo")
