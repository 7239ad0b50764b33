"""Every option a verb accepts takes effect or is refused in one line: TRL's ModelConfig reaches from_pretrained,
every flag of every verb is read, every numeric flag has a domain and refuses what lies outside it, and every config
entry point refuses a file that is not a YAML mapping."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

from em_trainer.cli import VERBS, main
from em_trainer.cli.common import Bounded

ROOT = Path(__file__).resolve().parents[1]
ARGPARSE_VERBS = [v for v in VERBS if v not in ("train", "study")]  # those two parse dataclasses with TrlParser


def one_error_line(capsys, needle: str) -> None:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err, err
    assert len(errors) == 1, err
    assert needle.lower() in errors[0].lower(), err


# ------------------------------------------------------------------------------------------------ TRL ModelConfig
def test_attn_implementation_reaches_the_loaded_model(tiny_model_dir, tmp_path, monkeypatch):
    seen = {}

    def capture(self, *args, **kwargs):
        seen["attn"] = self.model.config._attn_implementation
        seen["dtype"] = next(self.model.parameters()).dtype

    monkeypatch.setattr("em_trainer.core.trainer.EMTrainer.train", capture)
    monkeypatch.setattr("em_trainer.core.trainer.EMTrainer.save_model", lambda *a, **k: None)
    monkeypatch.setattr("em_trainer.core.trainer.EMTrainer.save_state", lambda *a, **k: None)
    monkeypatch.setattr("em_trainer.core.trainer.EMTrainer.create_model_card", lambda *a, **k: None)
    common = ["train", "--model", tiny_model_dir, "--responses_per_step", "2", "--per_device_train_batch_size", "2",
              "--max_completion_length", "4", "--report_to", "none"]  # fmt: skip
    for attn in ("eager", "sdpa"):
        assert main([*common, "--output_dir", str(tmp_path / attn), "--attn_implementation", attn]) == 0
        assert seen["attn"] == attn
    assert main([*common, "--output_dir", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert str(seen["dtype"]) == "torch.bfloat16"


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--load_in_4bit", "true", "--use_peft", "true"], "--load_in_4bit: bitsandbytes quantization runs on a CUDA"),
        (["--load_in_8bit", "true", "--use_peft", "true"], "--load_in_8bit"),
        (["--load_in_4bit", "true", "--load_in_8bit", "true"], "8 bit and 4 bit"),  # TRL's own refusal
        (["--bnb_4bit_quant_type", "fp4"], "without --load_in_4bit"),
        (["--lora_r", "8"], "without --use_peft"),
        (["--model_revision", "v1"], "local path"),
    ],
)
def test_model_flags_that_cannot_take_effect_are_refused(flags, needle, tiny_model_dir, tmp_path, capsys):
    code = main(["train", "--model", tiny_model_dir, "--output_dir", str(tmp_path / "o"), "--check", *flags])
    assert code == 2
    one_error_line(capsys, needle)


def test_quantization_on_a_gpu_needs_lora_and_is_forwarded(monkeypatch):
    """Where CUDA exists, 4-bit becomes TRL's BitsAndBytesConfig (what the trainer receives as quantization_config)."""
    from trl import ModelConfig

    from em_trainer.cli.model_flags import model_loading
    from em_trainer.core.config import EMConfig, EMConfigError

    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())  # as if bitsandbytes were installed
    config = EMConfig("o")
    with pytest.raises(EMConfigError, match="--use_peft"):
        model_loading(ModelConfig(load_in_4bit=True), config, "org/model", cuda=True)
    quantization = model_loading(
        ModelConfig(load_in_4bit=True, use_peft=True, bnb_4bit_quant_type="fp4", model_revision="abc"),
        config,
        "org/model",
        cuda=True,
    )
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "fp4"
    assert config.model_init_kwargs["revision"] == "abc"


def test_every_model_config_field_is_read():
    """The flags of TRL's ModelConfig are all read by the model loading or TRL's get_peft_config."""
    from trl import ModelConfig, get_peft_config

    from em_trainer.cli.model_flags import model_loading
    from em_trainer.core.config import EMConfig

    read: set[str] = set()

    class Recorder:
        def __init__(self, wrapped):
            object.__setattr__(self, "_wrapped", wrapped)

        def __getattr__(self, name):
            read.add(name)
            return getattr(self._wrapped, name)

    args = Recorder(ModelConfig(use_peft=True))
    model_loading(args, EMConfig("o"), "org/model", cuda=False)
    get_peft_config(args)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert fields - read == set(), f"ModelConfig fields parsed but never read: {fields - read}"


# ------------------------------------------------------------------------------------------ every flag of every verb
def _reads(module) -> set[str]:
    """Attribute names read from ``args`` in a module's source."""
    tree = ast.parse(inspect.getsource(module))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "args"
    }


@pytest.mark.parametrize("verb", ARGPARSE_VERBS)
def test_every_flag_of_every_verb_is_read(verb):
    module = importlib.import_module(f"em_trainer.cli.{verb}")
    common = importlib.import_module("em_trainer.cli.common")
    read = _reads(module) | _reads(common)
    parsers = [module.build_parser()]
    if "executor_arguments(" in Path(module.__file__).read_text():
        # The executor flags are read together, field by field, into ExecutorArguments (checked in its own tests).
        from dataclasses import fields

        from em_trainer.workflows.executors import ExecutorArguments

        read |= {f.name for f in fields(ExecutorArguments)}
    for parser in parsers:
        dests = {a.dest for a in parser._actions if a.dest != "help"}
        assert dests - read == set(), f"{verb}: flags parsed but never read: {dests - read}"


def test_every_train_script_flag_and_em_field_is_read():
    from trl import GRPOConfig

    from em_trainer.cli.train import TrainScriptArguments
    from em_trainer.core.config import EMConfig

    train_source = (ROOT / "em_trainer" / "cli" / "train.py").read_text()
    for f in dataclasses.fields(TrainScriptArguments):
        assert f"script_args.{f.name}" in train_source, f"--{f.name} is parsed but never read"
    sources = "\n".join(p.read_text() for p in (ROOT / "em_trainer").rglob("*.py") if p.name != "config.py")
    own = {f.name for f in dataclasses.fields(EMConfig)} - {f.name for f in dataclasses.fields(GRPOConfig)}
    unread = {name for name in own if f".{name}" not in sources}
    assert not unread, f"EMConfig fields never read outside their definition: {unread}"


def _numeric_actions():
    for verb in ARGPARSE_VERBS:
        module = importlib.import_module(f"em_trainer.cli.{verb}")
        parsers = [("", module.build_parser())]
        for kind, parser in parsers:
            for action in parser._actions:
                if action.type in (int, float) or isinstance(action.type, Bounded) or action.dest == "temperatures":
                    yield verb, kind, action


NUMERIC = list(_numeric_actions())


def test_the_walk_finds_the_numeric_flags():
    assert len(NUMERIC) >= 30


@pytest.mark.parametrize(
    "verb, kind, action", NUMERIC, ids=[f"{v}{'-' + k if k else ''}:{a.dest}" for v, k, a in NUMERIC]
)
def test_numeric_flag_refuses_negative_and_zero_outside_its_domain(verb, kind, action, capsys, tmp_path):
    """-1 and 0 for every numeric flag: accepted only inside the flag's declared domain, else one line naming it."""
    assert isinstance(action.type, Bounded) or action.dest == "temperatures", (
        f"{verb} --{action.dest}: numeric flags declare their domain (cli.common.Bounded)"
    )
    domain = action.type if isinstance(action.type, Bounded) else Bounded(float, 0)
    prefix = {"analyze": ["logits", "--model", "m"], "generate": ["--prompt", "x"], "select": ["--pool", "p"],
              "sweep": ["--train_config", str(tmp_path / "c.yaml")]}.get(verb, [])  # fmt: skip
    (tmp_path / "c.yaml").write_text("learning_rate: 1.0e-5\n")
    if kind == "study":
        return  # the study parser is reached through a study YAML; its flags are walked by the unit below
    flag = action.option_strings[0]
    for value in ("-1", "0"):
        inside = not (
            (domain.minimum is not None and float(value) < domain.minimum)
            or (domain.above and float(value) == domain.minimum)
        )
        if inside:
            assert domain(value) == float(value)
            continue
        # A refusal happens while parsing, before anything loads.
        assert main([verb, *prefix, flag, value]) == 2
        one_error_line(capsys, flag)


STUDY_NUMBERS = {  # every numeric field of `em-trainer study` (StudyConfig, StudyRunArguments, ExecutorArguments)
    "seeds": ["-1", "0"], "test_size": ["-1", "0"], "pool_size": ["-1", "0"], "pool_seed": ["-1"], "steps": ["-1"],
    "only_seed": ["-1"], "max_parallel": ["-1", "0"], "timeout_min": ["-1", "0"], "gpus_per_node": ["-1"],
    "gpus_per_job": ["-1"],
    "cpus_per_task": ["-1", "0"], "mem_gb": ["-1", "0"],
}  # fmt: skip


def test_the_study_walk_covers_every_numeric_field():
    import typing
    from dataclasses import fields

    from em_trainer.workflows.executors import ExecutorArguments
    from em_trainer.workflows.study import StudyConfig, StudyRunArguments

    numeric = set()
    for kind in (StudyConfig, StudyRunArguments, ExecutorArguments):
        hints = typing.get_type_hints(kind)
        numeric |= {f.name for f in fields(kind) if any(t in str(hints[f.name]) for t in ("int", "float"))}
    assert numeric == set(STUDY_NUMBERS)


@pytest.mark.parametrize("name, value", [(n, v) for n, values in STUDY_NUMBERS.items() for v in values])
def test_study_numbers_outside_their_domain_are_refused_in_one_line(name, value, capsys, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("arms: {base: {kind: decode}}\n")
    executor = ["--executor", "slurm"] if name in ("gpus_per_node", "cpus_per_task", "mem_gb") else []
    assert main(["study", "--config", str(study), f"--{name}", value, *executor, "--dry_run"]) == 2
    one_error_line(capsys, name)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["eval", "--benchmarks", "arithmetic", "--limit", "-1"], "--limit"),
        (["eval", "--benchmarks", "arithmetic", "--temperature", "0.5", "--temperatures", "0,1"], "--temperatures"),
        (["eval", "--benchmarks", "arithmetic", "--majority", "4", "--temperature", "0.7", "--n", "3"], "--majority"),
        (["eval", "--benchmarks", "arithmetic", "--em_inf_lr", "0.2"], "--em_inf_lr"),
        (["generate", "--prompt", "x", "--em_inf_preset", "adaptive"], "--em_inf_preset"),
        (["generate", "--prompt", "x", "--raw", "--system_prompt", "s"], "--system_prompt"),
        (["generate", "--prompt", "x", "--backend", "hf", "--vllm_enforce_eager"], "--vllm_enforce_eager"),
        (["eval", "--benchmarks", "arithmetic", "--backend", "hf", "--vllm_max_model_len", "512"], "vllm_max_model"),
        (["generate", "--prompt", "x", "--backend", "vllm", "--cpu_decoding", "plain"], "--cpu_decoding"),
    ],
)
def test_options_that_would_be_ignored_are_refused(argv, needle, capsys):
    assert main(argv) == 2
    one_error_line(capsys, needle)


# ------------------------------------------------------------------------------------------- config entry points
@pytest.fixture
def bad_configs(tmp_path):
    (tmp_path / "broken.yaml").write_text("learning_rate: [1, 2\nmodel: x\n")
    (tmp_path / "list.yaml").write_text("- learning_rate: 1\n- model: x\n")
    (tmp_path / "folder.yaml").mkdir()
    return {"not YAML": (tmp_path / "broken.yaml", "not valid YAML"), "a YAML list": (tmp_path / "list.yaml", "list"),
            "a directory": (tmp_path / "folder.yaml", "directory")}  # fmt: skip


@pytest.mark.parametrize("case", ["not YAML", "a YAML list", "a directory"])
@pytest.mark.parametrize("entry", ["train", "sweep", "study", "recipe"])
def test_config_entry_points_refuse_files_that_are_not_yaml_mappings(entry, case, bad_configs, capsys, monkeypatch):
    path, needle = bad_configs[case]
    if entry == "recipe":
        import runpy

        monkeypatch.setattr("sys.argv", ["em_then_grpo.py", "--config", str(path)])
        recipe = runpy.run_path(str(ROOT / "recipes" / "em_then_grpo.py"))
        assert recipe["main"]() == 2
    elif entry == "study":
        from em_trainer.workflows.study import StudyError, load_study

        with pytest.raises(StudyError, match=needle):
            try:
                load_study(path)
            except ValueError as error:
                raise StudyError(str(error)) from None
        return
    else:
        assert main([entry, "--config", str(path)]) == 2
    one_error_line(capsys, needle)


# ------------------------------------------------------------------------------------------------ train's numbers
# Values at the edge that mean something: each is documented where its field is.
TRAIN_ACCEPTS = {
    ("report_entropy_samples", "0"): "no entropy report (the default)",
    ("max_steps", "-1"): "TrainingArguments' 'train by num_train_epochs'",
    ("beta", "0"): "no KL term (the paper's default)",
}


def _train_numeric_fields() -> list[str]:
    from trl import GRPOConfig

    from em_trainer.cli.train import TrainScriptArguments
    from em_trainer.core.config import EMConfig

    grpo = {f.name for f in dataclasses.fields(GRPOConfig)}
    changed_defaults = {"learning_rate", "max_steps", "temperature", "max_completion_length", "beta",
                        "gradient_accumulation_steps", "num_iterations", "logging_steps", "save_steps"}  # fmt: skip
    fields = list(dataclasses.fields(TrainScriptArguments)) + [
        f for f in dataclasses.fields(EMConfig) if f.name not in grpo or f.name in changed_defaults
    ]
    return [f.name for f in fields if any(kind in str(f.type) for kind in ("int", "float"))]


def test_train_walk_covers_the_em_fields():
    assert {"responses_per_step", "entropy_floor", "max_prompts", "learning_rate"} <= set(_train_numeric_fields())


@pytest.mark.parametrize("name", _train_numeric_fields())
def test_train_numeric_field_refuses_negative_and_zero(name, tiny_model_dir, tmp_path, capsys):
    """Every numeric field of the train script and every EMConfig field (its own, and the GRPO fields whose
    defaults it changes) with -1 and 0: refused in one line naming it, unless the value means something."""
    for value in ("-1", "0"):
        code = main(["train", "--model", tiny_model_dir, "--check", "--output_dir", str(tmp_path / "o"),
                     f"--{name}", value])  # fmt: skip
        if (name, value) in TRAIN_ACCEPTS:
            assert code == 0
            capsys.readouterr()
            continue
        assert code == 2, f"--{name} {value} was accepted"
        one_error_line(capsys, name)
