"""The ``em-trainer`` command: ``em-trainer train [--config FILE.yaml] [--field value ...]``."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

USAGE = """usage: em-trainer <command> [options]

commands:
  train     entropy-minimization fine-tuning (one-shot EM); `em-trainer train --help` lists every option
  select    rank a prompt pool by pass@k variance and write the one-shot training set
  generate  sample completions for a prompt, optionally with EM-INF (entropy minimization at decoding time)
  analyze   `analyze logits`: raw-logit mean/std/skewness, entropy and top-1 probability per model, with histograms
  sweep     train over seeds and a grid, evaluate each run, aggregate mean/std/min/max, plot
  eval      score models on math benchmarks (MATH500, Minerva, OlympiadBench, AMC23, AIME24, GSM8K, arithmetic)

With no options, `em-trainer train` runs the paper's recipe on the embedded default model
(SmolLM2-135M-Instruct) and the paper's one-shot prompt.
"""


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


def _train(argv: list[str]) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint
    from trl import ModelConfig, TrlParser, get_peft_config

    from .analysis import fresh_sample_entropy
    from .config import EMConfig, EMConfigError
    from .data import DatasetError, load_prompt_dataset
    from .models import ModelResolutionError, resolve_model
    from .trainer import EMTrainer

    parser = TrlParser((TrainScriptArguments, EMConfig, ModelConfig), prog="em-trainer train")
    try:
        script_args, config, model_args = parser.parse_args_and_config(argv)
        model_ref = script_args.model or model_args.model_name_or_path
        model_path = resolve_model(model_ref)
        dataset = load_prompt_dataset(
            script_args.dataset, script_args.dataset_split, script_args.prompt_column, limit=script_args.max_prompts
        )
    except (EMConfigError, DatasetError, ModelResolutionError) as error:
        print(f"em-trainer train: error: {error}", file=sys.stderr)
        return 2

    if config.output_dir in (None, "trainer_output"):
        config.output_dir = os.path.join("outputs", f"{os.path.basename(model_path.rstrip('/'))}-EM")
    if model_args.dtype not in (None, "auto"):
        config.model_init_kwargs = {**(config.model_init_kwargs or {}), "dtype": model_args.dtype}

    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left", truncation_side="left")
    prompts = [dataset[0]["prompt"]]
    length = script_args.report_max_new_tokens or config.max_completion_length

    def report(stage: str, model) -> None:
        stats = fresh_sample_entropy(
            model, tokenizer, prompts, script_args.report_entropy_samples, config.temperature, length, config.seed
        )
        print(f"[em-trainer] {stage}: {stats}", flush=True)
        return stats

    if script_args.report_entropy_samples > 0:
        before_model = AutoModelForCausalLM.from_pretrained(model_path, **(config.model_init_kwargs or {}))
        before = report("entropy of fresh samples BEFORE training", before_model)
        del before_model

    try:
        trainer = EMTrainer(
            model=model_path,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=get_peft_config(model_args),
        )
    except EMConfigError as error:
        print(f"em-trainer train: error: {error}", file=sys.stderr)
        return 2

    checkpoint = config.resume_from_checkpoint
    if checkpoint is None and os.path.isdir(config.output_dir):
        checkpoint = get_last_checkpoint(config.output_dir)
        if checkpoint is not None:
            print(f"[em-trainer] resuming from {checkpoint}", flush=True)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(config.output_dir)
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


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _eval(argv: list[str]) -> int:
    import argparse

    from .evaluation import (
        BENCHMARKS,
        DEFAULT_BENCHMARKS,
        QWEN_MATH_SYSTEM_PROMPT,
        EvaluationError,
        evaluate_benchmark,
        load_benchmark,
        plot_temperature_sweep,
        summarize,
    )
    from .generation import SamplingSettings, make_generator
    from .models import ModelResolutionError

    parser = argparse.ArgumentParser(
        prog="em-trainer eval",
        description="Score one or more models on math benchmarks; resumable, with a comparison table.",
    )
    parser.add_argument("--model", action="append", help="Hub id, local dir, .gguf or alias; repeat to compare")
    parser.add_argument("--benchmarks", default=",".join(DEFAULT_BENCHMARKS), help=f"any of {', '.join(BENCHMARKS)}")
    parser.add_argument("--data-dir", help="local benchmark files: <dir>/<benchmark>/test.jsonl (default: the Hub)")
    parser.add_argument("--output-dir", default="outputs/eval")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the paper's setting)")
    parser.add_argument("--temperatures", type=_floats, help="comma list: a sweep, plotted to temperature_sweep.png")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--n", type=int, default=1, help="samples per problem")
    parser.add_argument("--max-new-tokens", type=int, default=3072)
    parser.add_argument("--limit", type=int, help="first N problems of each benchmark")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (HF backend)")
    parser.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto")
    parser.add_argument("--system-prompt", default=QWEN_MATH_SYSTEM_PROMPT, help="'' for none")
    parser.add_argument("--seed", type=int, default=0)
    _add_em_inf_arguments(parser)
    args = parser.parse_args(argv)

    models = args.model or ["smollm2-135m-instruct"]
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        print(
            f"em-trainer eval: error: unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr
        )
        return 2
    temperatures = args.temperatures or [args.temperature]
    results = []
    try:
        for benchmark in benchmarks:  # fail on a missing benchmark before loading any model
            load_benchmark(benchmark, args.data_dir, limit=1)
        processors, preset_temperature = _em_inf_processors(args)
        if preset_temperature is not None and args.temperatures is None and args.temperature == 0.0:
            temperatures = [preset_temperature]
        for model in models:
            generator = make_generator(
                model, backend=args.backend, batch_size=args.batch_size, logits_processors=processors
            )
            tokenizer = getattr(generator, "tokenizer", None) or generator.llm.get_tokenizer()
            label = f"{model}+em-inf-{args.em_inf_preset}" if args.em_inf else model
            for temperature in temperatures:
                settings = SamplingSettings(
                    temperature=temperature,
                    top_p=args.top_p,
                    top_k=args.top_k,
                    n=args.n,
                    max_new_tokens=args.max_new_tokens,
                    seed=args.seed,
                )
                for benchmark in benchmarks:
                    results.append(
                        evaluate_benchmark(
                            generator,
                            tokenizer,
                            label,
                            benchmark,
                            args.output_dir,
                            settings,
                            data_dir=args.data_dir,
                            limit=args.limit,
                            system_prompt=args.system_prompt or None,
                            chunk_size=args.batch_size,
                        )
                    )
    except (EvaluationError, ModelResolutionError, ValueError, ImportError, OSError) as error:
        print(f"em-trainer eval: error: {error}", file=sys.stderr)
        return 2
    table = summarize(results, args.output_dir)
    print(table)
    if len(temperatures) > 1:
        path = plot_temperature_sweep(results, os.path.join(args.output_dir, "temperature_sweep.png"))
        print(f"[em-trainer] temperature sweep plot: {path}")
    print(f"[em-trainer] results in {os.path.abspath(args.output_dir)} (summary.md, summary.json, per-sample records)")
    return 0


def _add_em_inf_arguments(parser) -> None:
    from .inference import PRESETS

    group = parser.add_argument_group("EM-INF (entropy minimization at decoding time)")
    group.add_argument("--em-inf", action="store_true", help="minimise each step's entropy before sampling")
    group.add_argument("--em-inf-preset", "--preset", default="default", choices=list(PRESETS))
    group.add_argument("--em-inf-threshold", type=float, help="override the preset's entropy threshold")
    group.add_argument("--em-inf-kl-weight", type=float)
    group.add_argument("--em-inf-lr", type=float)
    group.add_argument("--em-inf-steps", type=int)


def _em_inf_processors(args) -> tuple[list, float | None]:
    """The logits processors asked for, and the sampling temperature the preset recommends."""
    if not args.em_inf:
        return [], None
    from .generation import vllm_usable
    from .inference import PRESETS, EMInfSettings, EntropyMinimizingLogitsProcessor, make_vllm_logits_processor

    preset = PRESETS[args.em_inf_preset]
    overrides = {
        "threshold": args.em_inf_threshold,
        "kl_weight": args.em_inf_kl_weight,
        "lr": args.em_inf_lr,
        "n_steps": args.em_inf_steps,
    }
    settings = EMInfSettings(**{**preset.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    if getattr(args, "backend", "hf") == "vllm" or (getattr(args, "backend", "hf") == "auto" and vllm_usable()):
        return [make_vllm_logits_processor(settings, all_requests=True)], preset.temperature
    processor = EntropyMinimizingLogitsProcessor(
        settings.threshold, settings.kl_weight, settings.lr, settings.n_steps, preset=args.em_inf_preset
    )
    return [processor], preset.temperature


def _generate(argv: list[str]) -> int:
    import argparse

    from .generation import SamplingSettings, make_generator, render_chat
    from .models import ModelResolutionError

    parser = argparse.ArgumentParser(prog="em-trainer generate", description="Sample completions for a prompt.")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    parser.add_argument("--system-prompt", default=None)
    parser.add_argument("--raw", action="store_true", help="do not apply the chat template")
    parser.add_argument("--temperature", type=float, help="0 = greedy; default: the EM-INF preset's, else 0")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    _add_em_inf_arguments(parser)
    args = parser.parse_args(argv)
    try:
        processors, preset_temperature = _em_inf_processors(args)
        temperature = args.temperature if args.temperature is not None else (preset_temperature or 0.0)
        generator = make_generator(args.model, backend=args.backend, logits_processors=processors)
        tokenizer = getattr(generator, "tokenizer", None) or generator.llm.get_tokenizer()
        prompts = [p if args.raw else render_chat(tokenizer, p, args.system_prompt) for p in args.prompt]
        settings = SamplingSettings(
            temperature=temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            n=args.n,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
        )
        outputs = generator.generate(prompts, settings)
    except (ModelResolutionError, ValueError, ImportError, OSError) as error:
        print(f"em-trainer generate: error: {error}", file=sys.stderr)
        return 2
    mode = f"EM-INF ({args.em_inf_preset})" if args.em_inf else "plain decoding"
    for prompt, samples in zip(args.prompt, outputs, strict=True):
        for i, completion in enumerate(samples):
            print(f"=== {prompt[:60]!r} sample {i} | {mode}, T={temperature:g} | {completion.finish_reason}, "
                  f"{len(completion.token_ids)} tokens")  # fmt: skip
            print(completion.text)
    return 0


def _read_prompts(path: str | None, limit: int | None) -> list:
    from .data import load_one_shot_dataset, load_prompt_dataset

    if path is None:
        return [load_one_shot_dataset()[0]["prompt"]]
    if path.endswith(".txt"):
        lines = [line.strip() for line in open(path, encoding="utf-8") if line.strip()]
        return [[{"role": "user", "content": line}] for line in lines][:limit]
    return list(load_prompt_dataset(path, limit=limit)["prompt"])


def _analyze(argv: list[str]) -> int:
    import argparse
    import json

    from .data import DatasetError
    from .models import ModelResolutionError

    if not argv or argv[0] != "logits":
        print("usage: em-trainer analyze logits --model NAME=PATH [--model ...] [--prompts FILE]", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="em-trainer analyze logits", description="Raw-logit statistics per model.")
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH (or PATH); repeat to compare")
    parser.add_argument("--prompts", help=".txt (one per line) or .jsonl/.parquet/.csv; default: the one-shot prompt")
    parser.add_argument("--limit", type=int, help="first N prompts")
    parser.add_argument("--samples", type=int, default=2, help="sampled responses per prompt")
    parser.add_argument("--temperature", type=float, default=0.5, help="sampling temperature (0 = greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--histogram-sample", type=int, default=200_000, help="logit values kept for the histogram")
    parser.add_argument("--output-dir", default="outputs/analysis")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv[1:])

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .analysis import collect_logit_statistics, plot_logit_histograms
    from .models import resolve_model

    try:
        prompts = _read_prompts(args.prompts, args.limit)
        reports, samples = {}, {}
        for item in args.model:
            name, _, ref = item.partition("=") if "=" in item else (item, "", item)
            path = resolve_model(ref)
            model = AutoModelForCausalLM.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
            report, sample = collect_logit_statistics(
                model, tokenizer, prompts, name, args.samples, args.temperature, args.max_new_tokens, args.seed,
                args.histogram_sample,
            )  # fmt: skip
            reports[name], samples[name] = report, sample
            del model
    except (ModelResolutionError, DatasetError, OSError) as error:
        print(f"em-trainer analyze: error: {error}", file=sys.stderr)
        return 2
    os.makedirs(args.output_dir, exist_ok=True)
    lines = ["| model | mean | std | skewness | mean entropy | mean top-1 prob | positions |", "|" + " --- |" * 7]
    for r in reports.values():
        lines.append(
            f"| {r.name} | {r.mean:.4f} | {r.std:.4f} | {r.skewness:.4f} | {r.mean_entropy:.4f} | "
            f"{r.mean_top1_probability:.4f} | {r.num_positions} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    with open(os.path.join(args.output_dir, "logit_stats.json"), "w") as handle:
        json.dump([r.__dict__ for r in reports.values()], handle, indent=2)
    with open(os.path.join(args.output_dir, "logit_stats.md"), "w") as handle:
        handle.write(table)
    png = plot_logit_histograms(samples, reports, os.path.join(args.output_dir, "logit_histograms.png"))
    print(f"[em-trainer] histograms: {png}; statistics: {args.output_dir}/logit_stats.json")
    return 0


def _sweep(argv: list[str]) -> int:
    import argparse

    from .sweep import parse_grid, run_sweep

    parser = argparse.ArgumentParser(
        prog="em-trainer sweep",
        description="Train once per seed and grid point (each run its own process), evaluate, aggregate over seeds.",
    )
    parser.add_argument("--config", required=True, help="the em-trainer train YAML every run starts from")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--grid", action="append", default=[], help="field=v1,v2,... (repeat for a product)")
    parser.add_argument("--eval", default="", help="benchmarks to score each run on, e.g. math500,amc23")
    parser.add_argument("--eval-checkpoints", action="store_true", help="also score every step checkpoint (Fig. 2)")
    parser.add_argument("--save-steps", type=int, default=1, help="checkpoint spacing with --eval-checkpoints")
    parser.add_argument("--data-dir")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--max-new-tokens", type=int, default=3072)
    parser.add_argument("--eval-temperature", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output-dir", default="outputs/sweep")
    parser.add_argument(
        "--launcher", help="prefix that runs `-m em_trainer.cli train`, e.g. 'accelerate launch --num_processes 8'"
    )
    args, extra = parser.parse_known_args(argv)
    try:
        grid = parse_grid(args.grid)
        summary = run_sweep(
            args.config,
            args.output_dir,
            args.seeds,
            grid,
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
    except (ValueError, RuntimeError, OSError) as error:
        print(f"em-trainer sweep: error: {error}", file=sys.stderr)
        return 2
    from .sweep import summary_table

    print(summary_table(summary["aggregate"]))
    for plot in summary["plots"]:
        print(f"[em-trainer] plot: {plot}")
    print(f"[em-trainer] sweep results in {os.path.abspath(args.output_dir)}/sweep_summary.json")
    return 0


def _select(argv: list[str]) -> int:
    import argparse

    from .generation import make_generator
    from .models import ModelResolutionError
    from .selection import SelectionError, load_pool, select_prompts

    parser = argparse.ArgumentParser(
        prog="em-trainer select",
        description="Rank a prompt pool by the variance of pass@k success (one-shot EM paper, section 2.2) and write "
        "the top prompts in the format `em-trainer train --dataset` reads.",
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pool", required=True, help="Hub id or local .jsonl/.parquet/.csv with problems (+answers)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--k", type=int, default=8, help="samples per prompt")
    parser.add_argument("--top", type=int, default=1, help="prompts to write")
    parser.add_argument("--output", default="outputs/selected.jsonl")
    parser.add_argument("--labels", choices=["gold", "none"], default="gold", help="'none': agreement with majority")
    parser.add_argument("--temperature", type=float, default=0.5, help="the training temperature")
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--problem-column", help="default: problem, question or prompt")
    parser.add_argument("--answer-column", help="default: answer, final_answer, or the boxed answer of solution")
    parser.add_argument("--limit", type=int, help="first N rows of the pool")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    parser.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        rows = load_pool(args.pool, args.split, args.limit)
        generator = make_generator(args.model, backend=args.backend, batch_size=args.batch_size)
        tokenizer = getattr(generator, "tokenizer", None) or generator.llm.get_tokenizer()
        result = select_prompts(
            generator,
            tokenizer,
            rows,
            args.output,
            model=args.model,
            k=args.k,
            top=args.top,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            labels=args.labels,
            problem_column=args.problem_column,
            answer_column=args.answer_column,
            batch_size=args.batch_size,
            seed=args.seed,
        )
    except (SelectionError, ModelResolutionError, ImportError, OSError) as error:
        print(f"em-trainer select: error: {error}", file=sys.stderr)
        return 2
    best = result.ranking[0]
    print(
        f"[em-trainer] top prompt (pool index {best.index}): pass rate {best.pass_rate:.3f}, variance "
        f"{best.variance:.4f}, mean length {best.mean_length:.0f} tokens"
    )
    if result.bad_rows:
        print(f"[em-trainer] {len(result.bad_rows)} bad row(s) skipped; listed in {result.report}")
    print(
        f"[em-trainer] wrote {min(args.top, len(result.ranking))} prompt(s) to {result.output}; "
        f"ranking in {result.report}"
    )
    print(f"[em-trainer] train on it: em-trainer train --dataset {result.output}")
    return 0


COMMANDS = {
    "train": _train,
    "eval": _eval,
    "select": _select,
    "generate": _generate,
    "analyze": _analyze,
    "sweep": _sweep,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"em-trainer: unknown command '{command}'.\n\n{USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
