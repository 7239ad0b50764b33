"""Bad inputs at every entry point: exit status 2 and one line that names the problem, never a traceback.

The table in docs/bad_inputs.md lists these cases; each row here is one of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from em_trainer.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def files(tmp_path, tiny_model_dir):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "nocol.jsonl").write_text(json.dumps({"text": "hi"}) + "\n")
    (tmp_path / "nocol_prompt.jsonl").write_text(json.dumps({"prompt": "1+1?"}) + "\n")
    (tmp_path / "noanswer.jsonl").write_text(json.dumps({"problem": "1+1?"}) + "\n")
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "unknown.yaml").write_text("learning_rate: 1e-5\nno_such_option: 3\n")
    bench = tmp_path / "bench" / "math500"
    bench.mkdir(parents=True)
    (bench / "test.jsonl").write_text("")
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    (tmp_path / "study_key.yaml").write_text("arms: {}\ncolour: 1\n")
    (tmp_path / "study_kind.yaml").write_text("arms: {x: {kind: fly}}\n")
    (tmp_path / "study_arm.yaml").write_text("arms: {x: {kind: train, config: missing.yaml}}\n")
    (tmp_path / "tiny.yaml").write_text(f"model: {tiny_model_dir}\n")
    (tmp_path / "hot_arm.yaml").write_text(f"model: {tiny_model_dir}\ntemperature: 0\n")
    (tmp_path / "study_hot.yaml").write_text(
        f"output_dir: {tmp_path / 'study_out'}\npool_size: 4\narms: {{x: {{kind: train, config: hot_arm.yaml}}}}\n"
    )
    return {"dir": tmp_path, "tiny": tiny_model_dir}


def case(*args: str) -> tuple[str, ...]:
    return args


def select_case(*args: str) -> tuple[str, ...]:
    """``em-trainer select`` on the tiny model and the fixture pool, plus ``args``."""
    return case("select", "--model", "{tiny}", "--pool", str(FIXTURES / "arithmetic_pool.jsonl"), *args)


CASES = {
    "train: temperature 0": (case("train", "--temperature", "0"), "temperature"),
    "train: num_generations not dividing the batch": (
        case("train", "--responses_per_step", "8", "--num_generations", "3"),
        "num_generations",
    ),
    "train: zero responses per step": (case("train", "--responses_per_step", "0"), "responses_per_step"),
    "train: zero optimizer steps": (case("train", "--max_steps", "0"), "max_steps"),
    "train: unknown objective": (case("train", "--objective", "maximize"), "objective"),
    "train: unknown EM-RL reward": (case("train", "--em_reward", "bonus"), "em_reward"),
    "train: EM-RL reward under EM-FT": (case("train", "--em_reward", "trajectory"), "no effect"),
    "train: GRPO without a reward": (case("train", "--model", "{tiny}", "--objective", "grpo", "--check"), "grpo"),
    "train: unknown reward name": (case("train", "--model", "{tiny}", "--reward_funcs", "vibes"), "vibes"),
    "train: gold reward without answers": (
        case(
            "train",
            "--model",
            "{tiny}",
            "--objective",
            "grpo",
            "--reward_funcs",
            "accuracy",
            "--dataset",
            "{dir}/nocol_prompt.jsonl",
        ),
        "answer",
    ),  # fmt: skip
    "train: adaptive entropy": (case("train", "--use_adaptive_entropy", "true"), "use_adaptive_entropy"),
    "train: GRPO entropy bonus": (case("train", "--entropy_coef", "0.1"), "entropy_coef"),
    "train: missing dataset file": (case("train", "--dataset", "{dir}/missing.jsonl"), "not found"),
    "train: empty dataset file": (case("train", "--dataset", "{dir}/empty.jsonl"), "empty"),
    "train: dataset without a prompt column": (case("train", "--dataset", "{dir}/nocol.jsonl"), "prompt"),
    "train: model path that does not exist": (case("train", "--model", "{dir}/nowhere/model"), "neither"),
    "train: model file that is not a checkpoint": (case("train", "--model", "{dir}/notes.txt"), ".gguf"),
    "train: model directory that is not a causal LM": (case("train", "--model", "{dir}/encoder"), "causal"),
    "train: output_dir is a file": (case("train", "--model", "{tiny}", "--output_dir", "{dir}/a_file"), "output_dir"),
    "train: unknown YAML key": (case("train", "--config", "{dir}/unknown.yaml"), "no_such_option"),
    "train: save_at_steps that are not numbers": (case("train", "--save_at_steps", "2,x"), "save_at_steps"),
    "train: save_at_steps below 1": (case("train", "--save_at_steps", "0,2"), "below 1"),
    "eval: unknown benchmark": (case("eval", "--benchmarks", "mathh500"), "unknown benchmark"),
    "eval: missing benchmark folder": (case("eval", "--benchmarks", "gsm8k", "--data_dir", "{dir}/bench"), "gsm8k"),
    "eval: empty benchmark file": (case("eval", "--benchmarks", "math500", "--data_dir", "{dir}/bench"), "no rows"),
    "eval: majority of 1": (case("eval", "--benchmarks", "arithmetic", "--majority", "1"), "--majority: 1: must be"),
    "eval: majority without sampling": (case("eval", "--benchmarks", "arithmetic", "--majority", "4"), "temperature"),
    "eval: zero samples": (case("eval", "--model", "{tiny}", "--benchmarks", "arithmetic", "--n", "0"), "--n: 0"),
    "eval: negative temperature": (
        case("eval", "--model", "{tiny}", "--benchmarks", "arithmetic", "--temperature", "-1"),
        "temperature",
    ),
    "eval: top_p of 0": (case("eval", "--model", "{tiny}", "--benchmarks", "arithmetic", "--top_p", "0"), "top_p"),
    "eval: output_dir is a file": (
        case("eval", "--model", "{tiny}", "--benchmarks", "arithmetic", "--output_dir", "{dir}/a_file"),
        "output_dir",
    ),
    "eval: model id that resolves nowhere": (
        case("eval", "--model", "no-such-org/no-such-model", "--benchmarks", "arithmetic"),
        "no-such-org",
    ),
    "select: output that is a folder": (select_case("--output", "{dir}"), "is a directory"),
    "select: output folder that cannot be created": (
        select_case("--output", "/proc/em-trainer/s.jsonl"),
        "cannot write",
    ),
    "select: k of 1": (select_case("--k", "1", "--output", "{dir}/sel.jsonl"), "--k: 1: must be >= 2"),
    "select: missing pool": (case("select", "--pool", "{dir}/missing.jsonl"), "not found"),
    "select: pool where no row has an answer": (
        case("select", "--model", "{tiny}", "--pool", "{dir}/noanswer.jsonl", "--output", "{dir}/s.jsonl"),
        "No usable row",
    ),
    "sweep: evaluation options without --eval": (
        case("sweep", "--train_config", "{dir}/tiny.yaml", "--limit", "5", "--eval_checkpoints"),
        "--eval_checkpoints, --limit would have no effect without --eval",
    ),
    "sweep: grid without values": (
        case("sweep", "--train_config", "{dir}/tiny.yaml", "--grid", "temperature"),
        "field=v1",
    ),
    "sweep: study with an unknown key": (case("sweep", "--config", "{dir}/study_key.yaml"), "unknown key"),
    "sweep: study arm of an unknown kind": (case("sweep", "--config", "{dir}/study_kind.yaml"), "arms.x.kind"),
    "sweep: study arm whose train config is missing": (
        case("sweep", "--config", "{dir}/study_arm.yaml"),
        "arms.x.config",
    ),
    "sweep: grid value that train rejects (checked before the first run)": (
        case(
            "sweep",
            "--train_config",
            "{dir}/tiny.yaml",
            "--grid",
            "temperature=0.5,0",
            "--seeds",
            "1",
            "--output_dir",
            "{dir}/sweep_out",
        ),
        "temperature=0",
    ),  # fmt: skip
    "sweep: study arm whose train config has a bad value (checked before select)": (
        case("sweep", "--config", "{dir}/study_hot.yaml"),
        "arms.x",
    ),
    "sweep: --only_seed outside the study's seeds": (
        case("sweep", "--config", "{dir}/study_hot.yaml", "--only_seed", "9"),
        "--only_seed 9",
    ),
    "sweep: --only_arm that is not a training arm": (
        case("sweep", "--config", "{dir}/study_hot.yaml", "--only_arm", "base"),
        "--only_arm base",
    ),
    "generate: unknown backend": (case("generate", "--prompt", "hi", "--backend", "tpu"), "invalid choice"),
}


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """Every case must stop before training; one that does not fails here at once instead of training."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a bad input reached trainer.train()")

    monkeypatch.setattr("em_trainer.core.trainer.EMTrainer.train", refuse)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clear_line(name, files, capsys):
    """A bad input per case, refused in one line before anything expensive; the sweep cases start the real `train
    --check` subprocess (several seconds)."""
    args, needle = CASES[name]
    argv = [a.format(**files) for a in args]
    with _returns(2) as outcome:
        code = main(argv)
        outcome.code = code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]  # progress bars may share stderr
    assert "Traceback" not in err, err
    assert len(errors) == 1, err
    assert needle.lower() in errors[0].lower(), err


class _returns:
    def __init__(self, expected: int) -> None:
        self.expected, self.code = expected, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            assert self.code == self.expected, f"exit status {self.code}"
        return False


def test_the_docs_table_lists_every_case():
    table = (Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md").read_text()
    for name in CASES:
        assert f"| {name} |" in table, name


# The EM-then-GRPO recipe: every case stops in the pre-flight, before either phase trains (``no_training`` and
# ``no_grpo`` refuse it). ``{tiny}`` is the tiny model, ``{dir}`` this test's folder.
RECIPE_CASES = {
    "recipe em_then_grpo: unknown EM setting": (["em.bogus=1"], "em.bogus"),
    "recipe em_then_grpo: unknown GRPO setting": (["grpo.bogus=1"], "grpo.bogus"),
    "recipe em_then_grpo: GRPO num_generations not dividing the batch": (
        ["grpo.num_generations=3"],
        "num_generations",
    ),
    "recipe em_then_grpo: EM temperature 0": (["em.temperature=0"], "temperature"),
    "recipe em_then_grpo: model id that resolves nowhere": (["model=no-such-org/no-such-model"], "no-such-org"),
    "recipe em_then_grpo: output_dir is a file": (["output_dir={dir}/a_file"], "output_dir"),
    "recipe em_then_grpo: output_dir that cannot be created": (["output_dir=/proc/em-trainer"], "output_dir"),
    "recipe em_then_grpo: EM dataset not found": (["em.dataset={dir}/missing.jsonl"], "em.dataset"),
    "recipe em_then_grpo: EM dataset without a prompt column": (["em.dataset={dir}/nocol.jsonl"], "em.dataset"),
}


@pytest.fixture
def no_grpo(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("a bad input reached GRPOTrainer.train()")

    monkeypatch.setattr("trl.GRPOTrainer.train", refuse)


@pytest.mark.parametrize("name", list(RECIPE_CASES))
def test_recipe_bad_input_stops_before_either_phase(name, files, no_grpo, monkeypatch, capsys):
    import runpy

    import yaml

    overrides, needle = RECIPE_CASES[name]
    config = files["dir"] / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "model": files["tiny"], "output_dir": str(files["dir"] / "run"),
        "em": {"responses_per_step": 4, "per_device_train_batch_size": 4, "max_completion_length": 6},
        "grpo": {"dataset": str(FIXTURES / "arithmetic_pool.jsonl"), "num_generations": 2,
                 "per_device_train_batch_size": 4, "max_completion_length": 6},
    }))  # fmt: skip
    argv = ["em_then_grpo.py", "--config", str(config)]
    for override in overrides:
        argv += ["--set", override.format(**files)]
    monkeypatch.setattr("sys.argv", argv)
    recipe = runpy.run_path(str(Path(__file__).resolve().parents[1] / "recipes" / "em_then_grpo.py"))
    assert recipe["main"]() == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(errors) == 1, err
    assert needle.lower() in errors[0].lower(), err


def test_the_docs_table_lists_every_recipe_case():
    table = (Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md").read_text()
    for name in RECIPE_CASES:
        assert f"| {name} |" in table, name


def test_train_check_validates_and_stops_before_loading(files, capsys):
    out = files["dir"] / "checked"
    assert main(["train", "--model", files["tiny"], "--check", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "check passed" in printed
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
    # Its cost: the device, the tokens a step, an estimate of the time (scaled from a measured step) and the disk.
    assert "device: cpu; a step generates up to" in printed and "time: about" in printed and "disk: about" in printed


def test_the_time_estimate_counts_parameters_from_the_headers_and_scales_with_them_and_the_tokens(files):
    from transformers import AutoModelForCausalLM

    from em_trainer.cli.train import STEP_RATES, parameter_count, step_time_estimate

    model = AutoModelForCausalLM.from_pretrained(files["tiny"])
    # The tiny model ties its head to its embedding: safetensors stores the tensor once, as the model counts it.
    assert parameter_count(files["tiny"]) == sum(p.numel() for p in model.parameters())
    assert parameter_count(str(Path(files["tiny"]) / "missing")) is None
    seconds, tokens, parameters, _ = STEP_RATES["cpu"]
    assert step_time_estimate("cpu", int(parameters), tokens, 10).startswith(f"time: about {seconds:.0f} s a step")
    assert "about 58 s a step, about 10 min" in step_time_estimate("cpu", int(parameters), 8 * tokens, 10)
    assert "about 5 min a step, about 54 min" in step_time_estimate("cuda", 7_600_000_000, 64 * 2048, 10)


def test_plain_prompts_is_raw_or_chat(tmp_path):
    from em_trainer.data.prompts import load_prompt_dataset
    from em_trainer.data.sources import DatasetError

    source = tmp_path / "plain.jsonl"
    source.write_text('{"prompt": "What is 2 + 2?"}\n')
    assert load_prompt_dataset(str(source))[0]["prompt"] == "What is 2 + 2?"  # the Python API keeps TRL's format
    with pytest.raises(DatasetError, match="plain_prompts='chats': use 'raw'"):
        load_prompt_dataset(str(source), plain_prompts="chats")
