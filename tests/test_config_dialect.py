"""One config dialect: every verb and the recipe read a YAML `--config` whose keys are their flags (TrlParser), flags
win over the file, a value in the file meets the flag's domain, and the old dashed spellings still work with one
deprecation line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from em_trainer.cli import VERBS, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_parses_with_trl_parser(verb):
    import importlib

    from trl import TrlParser

    assert isinstance(importlib.import_module(f"em_trainer.cli.{verb}").build_parser(), TrlParser)


OPTION_CLASSES = {
    "eval": ("EvalArguments", []),
    "select": ("SelectArguments", ["--pool", "pool.jsonl"]),
    "generate": ("GenerateArguments", ["--prompt", "Hi", "--prompt", "Hello"]),
    "analyze": ("AnalyzeArguments", ["logits", "--model", "a=x", "--model", "b=y"]),
    "sweep": ("SweepArguments", ["--train_config", "t.yaml", "--grid", "a=1,2", "--grid", "b=3"]),
}


@pytest.mark.parametrize("verb", sorted(OPTION_CLASSES))
def test_every_verb_parses_into_its_options_dataclass_every_field_documented(verb):
    """Before, eval, select, generate, analyze and sweep declared flags one by one and parsed into a Namespace; now
    each verb's options are a dataclass (as `train` and `study` have), documented field by field, which TrlParser
    fills; repeatable flags still repeat."""
    import dataclasses
    import importlib

    module = importlib.import_module(f"em_trainer.cli.{verb}")
    name, argv = OPTION_CLASSES[verb]
    options = module.build_parser().parse_args_and_config(argv, return_remaining_strings=True)[0]
    assert type(options) is getattr(module, name) and dataclasses.is_dataclass(options)
    docs = " ".join(c.__doc__ or "" for c in type(options).__mro__)  # the verb's and its shared groups' docstrings
    for item in dataclasses.fields(options):
        assert f"{item.name} (`" in docs, f"{name}.{item.name} is documented in no docstring of its classes"
    repeated = {"generate": "prompt", "analyze": "model", "sweep": "grid"}.get(verb)
    if repeated:
        assert len(getattr(options, repeated)) == 2


def test_eval_reads_its_options_from_a_yaml_and_flags_win(tiny_model_dir, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    out = tmp_path / "eval"
    config.write_text(yaml.safe_dump({"model": [tiny_model_dir], "benchmarks": "arithmetic", "limit": 3,
                                      "max_new_tokens": 4, "output_dir": str(out)}))  # fmt: skip
    assert main(["eval", "--config", str(config), "--limit", "2"]) == 0
    assert "arithmetic T=0: 2/2 problems" in capsys.readouterr().out, "the flag (2) wins over the file (3)"
    assert "arithmetic" in json.dumps(json.loads((out / "summary.json").read_text()))


def test_the_shipped_eval_configs_parse():
    from em_trainer.cli.common import parse_verb_args
    from em_trainer.cli.eval import build_parser

    for path in [
        ROOT / "recipes/configs/eval/paper_table.yaml",
        ROOT / "recipes/configs/smollm2-135m-cpu/eval_arithmetic.yaml",
    ]:
        args = parse_verb_args(build_parser(), ["--config", str(path)])
        assert args.benchmarks and args.model and args.max_new_tokens > 0


@pytest.mark.parametrize(
    "content, needle",
    [
        ({"benchmarks": "arithmetic", "limit": -1}, "--config key limit: -1: must be >= 1"),
        ({"benchmarks": "arithmetic", "colour": "red"}, "['colour'] that are not options of em-trainer eval"),
        ({"benchmarks": "arithmetic", "temperature": "hot"}, "--config key temperature: 'hot' is not a number"),
    ],
)
def test_a_bad_value_in_a_verb_yaml_is_refused_in_one_line(content, needle, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump(content))
    assert main(["eval", "--config", str(config)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0], errors


def test_dashed_spelling_still_works_with_one_deprecation_line(capsys):
    from em_trainer.cli.common import parse_verb_args
    from em_trainer.cli.eval import build_parser

    args = parse_verb_args(build_parser(), ["--benchmarks", "arithmetic", "--max-new-tokens", "7"])
    assert args.max_new_tokens == 7
    err = capsys.readouterr().err
    assert err.count("deprecated: --max-new-tokens is now --max_new_tokens") == 1


# ------------------------------------------------------------------------------------------------ the recipe, typed
def test_recipe_sections_are_typed_once_and_the_order_is_a_table(tmp_path):
    from trl import GRPOConfig

    from em_trainer.core.config import EMConfig
    from em_trainer.workflows.em_then_grpo import ORDERS, PhaseData, load_config

    path = ROOT / "recipes/configs/smollm2-135m-cpu/em_then_grpo.yaml"
    recipe = load_config(path, ["grpo.max_steps=3"], argv=["--output_dir", str(tmp_path / "r")])
    assert recipe.order == ORDERS["em_then_grpo"] == ("em", "grpo")
    assert isinstance(recipe.phases["em"].args, EMConfig) and isinstance(recipe.phases["grpo"].args, GRPOConfig)
    assert isinstance(recipe.phases["grpo"].data, PhaseData) and recipe.phases["grpo"].args.max_steps == 3
    assert recipe.phases["em"].directory == tmp_path / "r" / "em"
    flipped = load_config(path, argv=["--order", "grpo_then_em", "--output_dir", str(tmp_path / "f")])
    assert flipped.order == ("grpo", "em")
    alone = load_config(path, argv=["--order", "grpo", "--output_dir", str(tmp_path / "g")])
    assert list(alone.phases) == ["grpo"]


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["train", "--check", "--max_step", "5"], "--max_step"),  # was read as --max_steps
        (["study", "--config", str(ROOT / "recipes/configs/smollm2-135m-cpu/replication/study.yaml"), "--seed", "3",
          "--dry_run"], "--seed"),  # was read as --seeds 3
        (["eval", "--bench", "arithmetic", "--limit", "1"], "--bench"),  # was read as --benchmarks
    ],
)
def test_a_flag_is_never_read_as_a_longer_one_it_begins(argv, flag, capsys):
    """argparse's prefix matching read `--seed 3` as `--seeds 3`: three jobs where one seed was meant. Every verb now
    refuses an unknown flag in one line instead."""
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and flag in errors[0], errors


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--set", "em.learnin_rate=1"], "em.learnin_rate: not a field of EMConfig"),
        (["--set", "grpo.reward=vibes"], "grpo.reward: 'vibes'; use one of"),
        (["--order", "sideways"], "order: 'sideways'"),
        (["--set", "colour.x=1"], "'colour' is not a key"),
    ],
)
def test_recipe_refuses_bad_flags_and_sections_in_one_line(argv, needle, capsys, tmp_path):
    import runpy

    recipe = runpy.run_path(str(ROOT / "recipes" / "em_then_grpo.py"))
    config = str(ROOT / "recipes/configs/smollm2-135m-cpu/em_then_grpo.yaml")
    assert recipe["main"](["--config", config, "--output_dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    ours = [line for line in err if line.startswith("em_then_grpo: error")]
    assert len(ours) == 1 and needle in ours[0], err


def test_repeated_set_flags_each_apply_in_both_spellings():
    from em_trainer.workflows.em_then_grpo import load_config, split_set

    argv = ["--set=em.max_steps=4", "--order", "grpo_then_em", "--set", "grpo.max_steps=5", "--set=em.seed=3"]
    flags, overrides = split_set(argv)
    assert flags == ["--order", "grpo_then_em"] and overrides == ["em.max_steps=4", "grpo.max_steps=5", "em.seed=3"]
    recipe = load_config(ROOT / "recipes/configs/smollm2-135m-cpu/em_then_grpo.yaml", overrides, argv=flags)
    assert (recipe.phases["em"].args.max_steps, recipe.phases["em"].args.seed) == (4, 3)
    assert recipe.phases["grpo"].args.max_steps == 5 and recipe.order == ("grpo", "em")


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_prints_its_help(verb, capsys):
    assert main([verb, "--help"]) == 0
    assert "usage:" in capsys.readouterr().out


def test_sweep_reads_a_yaml_of_its_own_options_and_the_old_train_yaml_spelling_still_works(tmp_path, capsys):
    """`--config` is the sweep's own YAML (with `train_config`, beside it); a train YAML given as `--config`, the old
    spelling, runs as `--train_config` with one deprecation line. Both stop at the same refusal here (a bad grid)."""
    train = tmp_path / "train.yaml"
    train.write_text("max_steps: 1\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"train_config": "train.yaml", "seeds": 2, "grid": ["temperature"]}))
    assert main(["sweep", "--config", str(sweep), "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert "field=v1" in err and "deprecated" not in err
    assert main(["sweep", "--config", str(train), "--grid", "temperature", "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert err.count("deprecated: `em-trainer sweep --config <train YAML>` is now `--train_config") == 1
    assert "field=v1" in err
    sweep.write_text(yaml.safe_dump({"train_config": "train.yaml", "seeds": 0}))
    assert main(["sweep", "--config", str(sweep)]) == 2
    assert "--config key seeds: 0: must be >= 1" in capsys.readouterr().err


def test_yaml_lists_scalars_choices_and_config_equals_read_as_the_flags_do(tiny_model_dir, tmp_path, capsys):
    """Before: `benchmarks: [a, b]` was a traceback, `temperatures: [0, 0.5]` a TypeError after the model loaded,
    `model: path` was iterated by character, `choices` were not enforced and `--config=path` was an unknown flag."""
    from em_trainer.cli.common import parse_verb_args
    from em_trainer.cli.eval import build_parser

    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"model": tiny_model_dir, "benchmarks": ["arithmetic", "gsm8k"],
                                      "temperatures": [0, 0.5], "backend": "hf"}))  # fmt: skip
    args = parse_verb_args(build_parser(), [f"--config={config}"])
    assert args.model == [tiny_model_dir] and args.benchmarks == "arithmetic,gsm8k"
    assert args.temperatures == [0.0, 0.5]
    config.write_text(yaml.safe_dump({"benchmarks": "arithmetic", "backend": "tpu"}))
    assert main(["eval", f"--config={config}"]) == 2
    assert "--config key backend: 'tpu' is not one of auto, hf, vllm" in capsys.readouterr().err
    out = tmp_path / "ev"
    config.write_text(yaml.safe_dump({"model": tiny_model_dir, "benchmarks": ["arithmetic"], "limit": 2,
                                      "temperatures": [0, 0.5], "max_new_tokens": 2, "output_dir": str(out)}))
    assert main(["eval", f"--config={config}"]) == 0
    assert main(["train", f"--config={ROOT / 'recipes/configs/smollm2-135m-cpu/em_one_shot.yaml'}", "--model",
                 tiny_model_dir, "--output_dir", str(tmp_path / "t"), "--check"]) == 0  # fmt: skip


def test_every_shipped_yaml_parses_through_its_verb(tmp_path):
    """Every YAML under recipes/ read by the verb (or recipe) that docs tell users to run it with; the shipped
    sweep_lr.yaml did not parse before (its grid, unquoted, was split at the commas by YAML)."""
    from em_trainer.cli.common import parse_verb_args
    from em_trainer.cli.eval import build_parser as eval_parser
    from em_trainer.cli.sweep import build_parser as sweep_parser
    from em_trainer.cli.train import build_parser as train_parser
    from em_trainer.workflows.em_then_grpo import load_config
    from em_trainer.workflows.study import is_study_config, parse_study_arguments
    from em_trainer.workflows.sweep import parse_grid

    paths = sorted((ROOT / "recipes" / "configs").rglob("*.yaml"))
    assert len(paths) > 20
    cpu = ["--bf16", "false", "--use_vllm", "false"]  # the GPU configs' switches, off on this CPU
    cpu_phases = [f"{phase}.{key}=false" for phase in ("em", "grpo") for key in ("bf16", "use_vllm")]
    for path in paths:
        keys = set(yaml.safe_load(path.read_text()) or {})
        if path.name.startswith("em_then_grpo") or {"em", "grpo"} & keys:  # the recipe (ordering.yaml: its order)
            load_config(path, cpu_phases, argv=["--output_dir", str(tmp_path / "r")])
        elif "train_config" in keys:
            args, *_ = sweep_parser().parse_args_and_config(["--config", str(path)], return_remaining_strings=True)
            assert parse_grid(args.grid), path
        elif is_study_config(path):
            parse_study_arguments(["--config", str(path)])
        elif "benchmarks" in keys:
            assert parse_verb_args(eval_parser(), ["--config", str(path)]).benchmarks
        else:
            train_parser().parse_args_and_config(["--config", str(path), "--output_dir", str(tmp_path / "t"), *cpu])
