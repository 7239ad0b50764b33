"""``em-trainer train``: one-shot EM (EM-FT or EM-RL) through TrlParser; every EMConfig field is a flag or YAML key."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What a training run leaves in its output_dir: a folder with any of it and another identity holds another run.
TRAIN_WORK = ("checkpoint-*", "*.safetensors", "trainer_state.json", "training_args.bin", "README.md",
              "early_stopping.json", "best")  # fmt: skip
HELP = "entropy-minimization fine-tuning (one-shot EM); every EMConfig field is an option"


@dataclass
class TrainScriptArguments:
    """What to train on; every EMConfig field (``--learning_rate``, ``--max_steps``, ...) is also an option."""

    model: str | None = field(
        default=None,
        metadata={"help": "Hub id, local directory, .gguf file, or 'smollm2-135m-instruct' (the default)."},
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local .jsonl/.parquet/.csv file of prompts; default: the paper's one-shot prompt."
        },
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of a Hub dataset."})
    prompt_column: str | None = field(
        default=None, metadata={"help": "Column with the prompts; default: 'prompt', else 'problem'."}
    )
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N rows of the dataset."})
    plain_prompts: str = field(
        default="chat",
        metadata={
            "help": "What a plain-text 'prompt' column means: 'chat' wraps each text as one user message, rendered "
            "with the model's chat template (a chat model answers a bare string by ending at once); 'raw' passes "
            "it as it is (TRL's format, and the Python API's default).",
            "choices": ["chat", "raw"],
        },
    )
    report_entropy_samples: int = field(
        default=0,
        metadata={
            "help": "If > 0, sample this many fresh responses per prompt before and after training and print their "
            "mean token entropy (measured outside the trainer)."
        },
    )
    report_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Response length of those samples; default: max_completion_length."}
    )
    save_at_steps: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated optimizer steps to checkpoint at besides save_steps, e.g. '2,4,10,15'. Their "
            "weights are kept; their optimizer state only until a newer checkpoint is complete (resume needs no more)."
        },
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward functions by name, as in TRL's grpo.py: accuracy (gold `answer` column), "
            "semantic_entropy (EMPO), majority_vote (TTRL), format, random (Spurious Rewards' controls), or a dotted "
            "import path. With objective 'grpo' they are the whole reward; with 'neg_entropy_reward' they add to the "
            "EM reward (weights: em_reward_weight, reward_weights); with 'entropy_loss' they are logged only."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "When output_dir holds a run of other settings, delete it and start afresh instead of refusing "
            "(a run of the same settings resumes either way)."
        },
    )
    check: bool = field(
        default=False,
        metadata={
            "help": "Check the run and stop before loading the model: every option, the model's config, the "
            "dataset and its prompt column, the output folder. `sweep` and the study check each run this way first."
        },
    )

    def __post_init__(self) -> None:
        from ..core.config import EMConfigError

        for name, lowest in (("max_prompts", 1), ("report_entropy_samples", 0), ("report_max_new_tokens", 1)):
            value = getattr(self, name)
            if value is not None and value < lowest:
                raise EMConfigError(f"{name}={value}: must be >= {lowest}.")


def _steps(text: str) -> list[int]:
    from ..core.config import EMConfigError

    try:
        steps = [int(step) for step in text.split(",") if step.strip()]
    except ValueError:
        raise EMConfigError(f"save_at_steps='{text}' must be comma-separated step numbers, e.g. '2,4,10'.") from None
    if any(step < 1 for step in steps):
        raise EMConfigError(f"save_at_steps='{text}' has a step below 1; optimizer steps count from 1.")
    return steps


def run_identity(script_args: Any, config: Any, model_args: Any, model_ref: str | None) -> dict[str, Any]:
    """Everything a training run's result depends on: the whole resolved config (every EMConfig/GRPOConfig field,
    the script and model flags), the model's identity (weights' content, or Hub id and revision) and the dataset's
    (a local file's content digest, or the Hub id and split). Where results go and how they are reported is not."""
    from dataclasses import asdict

    from ..data.identity import file_digest, model_identity
    from ..data.identity import settings_identity as keep

    dataset: dict[str, Any] = {"source": script_args.dataset or "one-shot prompt (pi1)"}
    if script_args.dataset and os.path.isfile(script_args.dataset):
        from pathlib import Path

        dataset["digest"] = file_digest(Path(script_args.dataset))
    return {
        "script": keep(asdict(script_args)),
        "config": keep(config.to_dict()),
        "model_flags": keep(asdict(model_args)),
        "model": model_identity(model_ref or "smollm2-135m-instruct", model_args.model_revision),
        "dataset": dataset,
    }


# Learning-rate schedules that do not depend on max_steps: on them a longer run continues a shorter one exactly.
_LENGTH_FREE_SCHEDULES = ("constant", "constant_with_warmup")


def continues_run(stored: dict[str, Any], identity: dict[str, Any]) -> bool:
    """Whether ``identity`` continues the run ``stored``: the same settings but a larger ``max_steps``, on a schedule
    that does not depend on it (so its first steps are the stored run's)."""
    old, new = stored.get("config", {}), identity.get("config", {})
    if not isinstance(old, dict) or not isinstance(new, dict):
        return False
    rest = {k: v for k, v in identity.items() if k != "config"} == {k: v for k, v in stored.items() if k != "config"}
    same = {k: v for k, v in old.items() if k != "max_steps"} == {k: v for k, v in new.items() if k != "max_steps"}
    schedule = str(new.get("lr_scheduler_type", "")).split(".")[-1].lower()
    longer = isinstance(old.get("max_steps"), int) and isinstance(new.get("max_steps"), int)
    return rest and same and schedule in _LENGTH_FREE_SCHEDULES and longer and new["max_steps"] > old["max_steps"]


# Measured step times, one per kind of device, that --check scales to a run by parameters x response tokens (the step
# time is about proportional to both; longer responses cost somewhat more per token): seconds per step, response
# tokens a step, parameters, and where the figure comes from.
STEP_RATES = {
    "cpu": (7.216, 8 * 64, 134.5e6, "SmolLM2-135M at 8 x 64 on a 2-core AMD EPYC (benchmarks/results/"
            "step_time_fast_8x64.json); slower CPUs take up to 3x longer"),
    "cuda": (16.47, 64 * 512, 1.54e9, "Qwen2.5-1.5B at 64 x 512 on one H200 (benchmarks/results/gpu_check.json); "
             "other GPUs differ"),
}  # fmt: skip


def parameter_count(model_path: str) -> int | None:
    """The number of parameters in a model folder's safetensors files, read from their headers (no weights loaded);
    None when the folder has none."""
    from safetensors import safe_open

    files = sorted(Path(model_path).glob("*.safetensors")) if os.path.isdir(model_path) else []
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                total += math.prod(handle.get_slice(name).get_shape())
    return total


def step_time_estimate(device: str, parameters: int, tokens: int, steps: int) -> str:
    """One line: the seconds a step and a run will take, scaled from the device kind's measured step."""
    seconds, measured_tokens, measured_parameters, source = STEP_RATES[device]
    per_step = seconds * (parameters / measured_parameters) * (tokens / measured_tokens)

    def readable(value: float) -> str:
        if value < 120:
            return f"{value:.0f} s"
        return f"{value / 60:.0f} min" if value < 7200 else f"{value / 3600:.1f} h"

    total = "" if steps < 1 else f", about {readable(per_step * steps)} for {steps} step(s)"
    return (
        f"time: about {readable(per_step)} a step{total} ({parameters / 1e6:,.0f}M parameters x {tokens:,} response "
        f"tokens, scaled from {source}; the first step adds the shared-prompt self-check, at most about one step)"
    )


def run_cost(config: Any, model_path: str) -> list[str]:
    """What a run will cost, for ``--check``: where it runs, how many tokens a step generates, an estimate of its time
    and the disk its checkpoints take (weights, plus the optimizer state unless ``save_only_model``)."""
    import torch

    device = "cuda" if torch.cuda.is_available() and not config.use_cpu else "cpu"
    tokens = config.responses_per_step * config.max_completion_length
    lines = [f"device: {device}; a step generates up to {config.responses_per_step} x "
             f"{config.max_completion_length} = {tokens:,} tokens, {config.max_steps} step(s)"]  # fmt: skip
    parameters = parameter_count(model_path)
    if parameters:
        lines.append(step_time_estimate(device, parameters, tokens, config.max_steps))
    if device == "cpu" and tokens > 8192:
        lines.append(
            f"on a CPU, {tokens:,} tokens a step take tens of minutes to hours per step for any real model; the CPU "
            "demo's shape is 8 x 64 (recipes/configs/smollm2-135m-cpu/em_one_shot.yaml)"
        )
    if os.path.isdir(model_path):
        weights = sum(p.stat().st_size for p in Path(model_path).iterdir()
                      if p.suffix in (".safetensors", ".bin") and not p.name.startswith("optimizer"))  # fmt: skip
        per_checkpoint = weights if config.save_only_model else 3 * weights  # Adam: two moments beside the weights
        saves = config.max_steps // max(1, math.ceil(config.save_steps)) if config.save_strategy != "no" else 0
        kept = saves if config.save_total_limit is None else min(saves, config.save_total_limit)
        # keep_optimizer_state="latest": only the newest checkpoint keeps its optimizer state, the others weights.
        whole = kept if config.keep_optimizer_state == "all" else min(kept, 1)
        total = whole * per_checkpoint + (kept - whole) * weights + weights
        lines.append(
            f"disk: about {per_checkpoint / 1e9:.2f} GB a checkpoint ({weights / 1e9:.2f} GB weights"
            f"{'' if config.save_only_model else ' + optimizer state'}), {kept} checkpoint(s) kept "
            f"({whole} with optimizer state), about {total / 1e9:.1f} GB in all with the final weights "
            "(save_only_model, save_total_limit, save_steps, keep_optimizer_state)"
        )
    return lines


def _reward_funcs(names: list[str], config: Any, dataset: Any) -> list[Any]:
    """The named reward functions (the random control seeded with the run's seed); a reward whose column the dataset
    lacks is refused here, not at the first step."""
    from ..core.config import EMConfigError
    from ..evaluation.reward_names import required_columns, reward_functions

    functions = reward_functions(names, config.seed)
    for name, column in required_columns(names).items():
        if column not in dataset.column_names:
            raise EMConfigError(
                f"reward_funcs: '{name}' needs a '{column}' column and the dataset has {dataset.column_names}; use a "
                f"dataset with gold answers, or a label-free reward (semantic_entropy, majority_vote)."
            )
    return functions


def build_parser() -> Any:
    from trl import ModelConfig, TrlParser

    from ..core.config import EMConfig
    from .common import CONFIG_EPILOG, group_help

    parser = TrlParser(
        (TrainScriptArguments, EMConfig, ModelConfig),
        prog="em-trainer train",
        allow_abbrev=False,  # a misspelt flag is refused, not read as the flag it begins (`--max_step`)
        usage="em-trainer train [--config FILE] [options]",
        description=HELP + ". With no options: the paper's recipe on the embedded SmolLM2-135M-Instruct and the "
        "paper's one-shot prompt. Options below: EM's own first, then this command's, TRL's GRPO options, "
        "transformers' training options, and the model's.",
        epilog=CONFIG_EPILOG,
    )
    group_help(parser, help_sections())
    return parser


def help_sections() -> list[tuple[str, set[str]]]:
    """The sections of `train --help`, in order, with the fields of each: EM's own options before the 180-odd that
    TRL and transformers declare (before, the first EM flag came at line 1,325 of 1,532)."""
    from dataclasses import fields

    from transformers import TrainingArguments
    from trl import GRPOConfig, ModelConfig

    from ..core.config import EMConfig

    def names(cls: type) -> set[str]:
        return {f.name for f in fields(cls)}

    return [
        ("EM options (EMConfig's own fields)", names(EMConfig) - names(GRPOConfig)),
        ("em-trainer train options", names(TrainScriptArguments)),
        ("GRPO options (TRL's GRPOConfig)", names(GRPOConfig) - names(TrainingArguments)),
        ("training options (transformers' TrainingArguments)", names(TrainingArguments)),
        ("model options (TRL's ModelConfig)", names(ModelConfig)),
    ]


def main(argv: list[str]) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import get_peft_config

    from ..core.callbacks import SaveAtSteps, StopOnSignal
    from ..core.checkpoints import last_complete_checkpoint
    from ..core.trainer import EMTrainer
    from ..data.files import check_writable_dir, read_yaml_mapping
    from ..data.identity import fingerprint, readable_name
    from ..data.models import check_causal_lm, resolve_model
    from ..data.paths import config_file_from_argv, resolve_config_path, split_config_equals
    from ..data.prompts import load_prompt_dataset
    from ..data.run_folder import claim_folder
    from ..evaluation.analysis import fresh_sample_entropy
    from ..evaluation.dev_set import build_dev_set_scorer
    from .model_flags import model_loading, tokenizer_kwargs

    argv = split_config_equals(argv)
    config_file = config_file_from_argv(argv)
    if config_file is not None:
        read_yaml_mapping(config_file, "--config")  # a folder, bad YAML or a list: one line, not a parser traceback
    script_args, config, model_args = build_parser().parse_args_and_config(argv)
    save_at_steps = _steps(script_args.save_at_steps) if script_args.save_at_steps else None  # checked before loading
    script_args.dataset = resolve_config_path(script_args.dataset, config_file, "dataset")
    model_ref = resolve_config_path(script_args.model or model_args.model_name_or_path, config_file, "model")
    quantization = model_loading(model_args, config, script_args.model or model_ref)
    model_path = resolve_model(model_ref)
    check_causal_lm(model_path)
    dataset = load_prompt_dataset(
        script_args.dataset,
        script_args.dataset_split,
        script_args.prompt_column,
        limit=script_args.max_prompts,
        plain_prompts=script_args.plain_prompts,
    )
    reward_funcs = _reward_funcs(script_args.reward_funcs or [], config, dataset)
    identity = run_identity(script_args, config, model_args, model_ref)
    # The folder's marker adds the seed: two seeds are two runs, even where a sweep's folder name leaves it out.
    folder_identity = {**identity, "seed": config.seed}
    if config.output_dir in (None, "trainer_output"):
        # Named by the run's fingerprint: two default runs of other settings never share a folder.
        name = readable_name(f"{os.path.basename(model_path.rstrip('/'))}-EM", fingerprint(folder_identity))
        config.output_dir = os.path.join("outputs", name)
    check_writable_dir(config.output_dir)
    # Every process but the first only asks (and refuses alike); the first claims the folder for all.
    first_process = int(os.environ.get("RANK", "0")) == 0
    claimed = claim_folder(config.output_dir, folder_identity, work=TRAIN_WORK,
                           overwrite=script_args.overwrite_output_dir, continues=continues_run,
                           check_only=script_args.check or not first_process)  # fmt: skip
    if script_args.check:
        EMTrainer._check_dataset_fits_batch(dataset, config)
        EMTrainer._reward_setup_check(reward_funcs, config)
        print(f"[em-trainer] check passed: {model_path}, {len(dataset)} prompt(s), output in {config.output_dir}")
        print(f"[em-trainer] run fingerprint: {fingerprint(identity)}")
        for line in run_cost(config, model_path):
            print(f"[em-trainer] {line}")
        return 0

    tokenizer = AutoTokenizer.from_pretrained(
        model_path, padding_side="left", truncation_side="left", **tokenizer_kwargs(config)
    )
    prompts = [dataset[0]["prompt"]]
    length = script_args.report_max_new_tokens or config.max_completion_length

    def report(stage: str, model: Any) -> Any:
        stats = fresh_sample_entropy(
            model, tokenizer, prompts, script_args.report_entropy_samples, config.temperature, length, config.seed
        )
        print(f"[em-trainer] {stage}: {stats}", flush=True)
        return stats

    if script_args.report_entropy_samples > 0:
        before_model = AutoModelForCausalLM.from_pretrained(
            model_path, quantization_config=quantization, **(config.model_init_kwargs or {})
        )
        before = report("entropy of fresh samples BEFORE training", before_model)
        del before_model

    trainer = EMTrainer(
        model=model_path,
        args=config,
        train_dataset=dataset,
        reward_funcs=reward_funcs,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=quantization,
        dev_set_scorer=build_dev_set_scorer(config, tokenizer),
    )
    if save_at_steps:
        trainer.add_callback(SaveAtSteps(save_at_steps))
    stop = StopOnSignal()
    trainer.add_callback(stop)
    checkpoint = config.resume_from_checkpoint
    if checkpoint is None and claimed == "resume":
        checkpoint = last_complete_checkpoint(config.output_dir)
        if checkpoint is not None:
            print(f"[em-trainer] resuming from {checkpoint}", flush=True)
    trainer.train(resume_from_checkpoint=checkpoint)
    if stop.stopped_at is not None and stop.stopped_at < trainer.state.max_steps:
        saved = os.path.join(os.path.abspath(config.output_dir), f"checkpoint-{stop.stopped_at}")
        print(
            f"[em-trainer] stopped by {stop.received} after step {stop.stopped_at} of {trainer.state.max_steps}; "
            f"checkpoint saved in {saved}. Run the same command again to resume from it.",
            file=sys.stderr,
            flush=True,
        )
        return 130
    trainer.save_model(config.output_dir)
    trainer.save_state()  # the whole log history beside the final weights (a sweep's final loss is read from it)
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(dataset_name=script_args.dataset or "one-shot EM prompt (pi1)")
    if config.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset)

    if script_args.report_entropy_samples > 0 and trainer.accelerator.is_main_process:
        trained = trainer.accelerator.unwrap_model(trainer.model)
        if hasattr(trained, "merge_and_unload"):
            trained = trained.merge_and_unload()
        after = report("entropy of fresh samples AFTER training", trained)
        change = after.mean_entropy - before.mean_entropy
        print(f"[em-trainer] entropy change: {change:+.4f} nats ({change / max(before.mean_entropy, 1e-9):+.1%})")
    print(f"[em-trainer] trained model saved to {os.path.abspath(config.output_dir)}", flush=True)
    return 0
