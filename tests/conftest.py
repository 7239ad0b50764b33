"""Shared fixtures: the real SmolLM2 tokenizer (pad == eos) and tiny random models built with it."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist each worker gets one of the cores: two workers each running PyTorch's default two OpenMP
    # threads oversubscribe them, and spinning threads then made a real-model test five times slower. Subprocesses
    # that the tests start (train, sweep, vLLM) inherit the setting.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from em_trainer.data.models import resolve_model  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The embedded SmolLM2-135M-Instruct, converted once from its GGUF file and cached."""
    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir, padding_side="left")
    assert tok.pad_token_id == tok.eos_token_id, "the tests rely on a pad == eos tokenizer"
    return tok


def build_tiny_model(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Wide enough weights that the next-token distributions differ (a near-uniform model makes ties).
        initializer_range=0.3,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> str:
    """A 2-layer random Llama with the real SmolLM2 tokenizer, saved like a Hub checkpoint."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def straight_run(tiny_model_dir, tmp_path_factory):
    """`em-trainer train` on the tiny model (tests/training_cli.py), never interrupted: the reference for resumes."""
    import subprocess

    from .training_cli import ENV, STEPS, train

    output_dir = tmp_path_factory.mktemp("straight")
    result = subprocess.run(train(tiny_model_dir, output_dir, STEPS), capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    return output_dir


# With `pytest -n 2 --dist loadgroup` (make test), the tests of one group run one after another on one worker:
# - "sandbox": everything that starts sandboxes, because the hostile suite asserts that no sandbox process or file
#   is left once a candidate is graded, which another worker's sandboxes running at that moment would break;
# - "vllm": the real engines, each of which reserves a quarter of the machine's memory for its KV cache;
# - "torchrun": the two-process runs, which share one rendezvous port.
SANDBOX_FILES = {"test_sandbox.py", "test_sandbox_hostile.py", "test_sandbox_isolation.py", "test_code_eval.py"}


def xdist_group(item) -> str | None:
    if item.path.name in SANDBOX_FILES or (item.path.name == "test_pipeline.py" and "code" in item.name):
        return "sandbox"
    if item.get_closest_marker("vllm") is not None:
        return "vllm"
    if item.path.name == "test_multiprocess.py":
        return "torchrun"  # one fixed rendezvous port
    if item.path.name == "test_executors.py" and "study" in item.name and item.get_closest_marker("slow"):
        return "tiny_study"  # one worker computes the serial reference study once for both
    return None


def pytest_itemcollected(item):
    # Marked as each item is collected, so the marker is there whenever pytest-xdist's own modifyitems hook runs.
    group = xdist_group(item)
    if group is not None:
        item.add_marker(pytest.mark.xdist_group(group))


# The longest tests, started first under pytest-xdist so that the other worker fills the time around them (run last,
# the quick study alone kept one worker busy for minutes after the other had finished).
LONGEST_FIRST = ("test_study.py", "test_label_free_study.py", "test_executors.py", "test_vllm.py",
                 "test_fault_injection.py", "test_real_model.py")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)) if item.get_closest_marker("slow") or
                   item.get_closest_marker("vllm") else len(rank))  # fmt: skip
    else:
        # Run the fast tests first so a failure shows up before the slow real-model runs.
        items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


# The suite must fit 45 minutes on the slowest CI machine (about 3x slower than the fastest). A test whose call runs
# longer than this budget must say in its docstring why it needs to (what it proves that a cheaper test cannot);
# one without a docstring fails, naming the budget. `make test` lists the 30 slowest tests at the end of every run.
TEST_BUDGET_S = float(os.environ.get("EM_TRAINER_TEST_BUDGET_S", "30"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not report.passed or report.duration <= TEST_BUDGET_S:
        return
    function = getattr(item, "function", None)
    if function is not None and (function.__doc__ or "").strip():
        return
    report.outcome = "failed"
    report.longrepr = (
        f"{item.nodeid} took {report.duration:.0f} s, over the {TEST_BUDGET_S:.0f} s budget of one test, and has no "
        "docstring saying why it needs that long: say why in its docstring, or make it cheaper (tests/conftest.py, "
        "TEST_BUDGET_S)."
    )


# Seconds per test file and per xdist group (setup, call and teardown), printed at the end of every run: the figures
# docs/performance.md gives for a machine, and the first place to look when the suite grows.
_SECONDS: dict[str, dict[str, float]] = {"file": {}, "group": {}}


def pytest_runtest_logreport(report):
    name, _, group = report.nodeid.partition("@")  # pytest-xdist appends "@<group>" to a grouped test's id
    for kind, key in (("file", name.split("::", 1)[0]), ("group", group or "(ungrouped)")):
        _SECONDS[kind][key] = _SECONDS[kind].get(key, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _SECONDS["file"]:
        return
    for kind, top in (("group", None), ("file", 15)):
        rows = sorted(_SECONDS[kind].items(), key=lambda item: -item[1])[:top]
        terminalreporter.write_sep("=", f"seconds per test {kind} (setup + call + teardown, summed over workers)")
        for key, seconds in rows:
            terminalreporter.write_line(f"{seconds:8.1f}s  {key}")
