"""Relative paths in YAML configs: beside the config first, then the current directory; errors name both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from em_trainer.data.paths import ConfigPathError, resolve_config_path
from em_trainer.workflows.em_then_grpo import PipelineConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_resolution_order_and_the_error(tmp_path, monkeypatch):
    config = tmp_path / "cfg" / "run.yaml"
    config.parent.mkdir()
    (config.parent / "data.jsonl").write_text("{}\n")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "only_here.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path / "cwd")
    assert resolve_config_path("data.jsonl", config, "dataset") == str(config.parent / "data.jsonl")
    assert resolve_config_path("only_here.jsonl", config, "dataset") == str(tmp_path / "cwd" / "only_here.jsonl")
    assert resolve_config_path("org/model-name", config, "model") == "org/model-name"  # a Hub id stays
    with pytest.raises(ConfigPathError) as error:
        resolve_config_path("missing.jsonl", config, "grpo.dataset")
    assert str(config.parent / "missing.jsonl") in str(error.value) and "cwd" in str(error.value)


def test_the_shipped_cpu_recipe_resolves_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(ROOT / "recipes/configs/smollm2-135m-cpu/em_then_grpo.yaml")
    assert Path(config.phases["grpo"].data.dataset).is_file()


def test_a_wrong_grpo_dataset_stops_the_recipe_in_seconds_before_em(tmp_path):
    config = yaml.safe_load((ROOT / "recipes/configs/smollm2-135m-cpu/em_then_grpo.yaml").read_text())
    config["grpo"]["dataset"] = "no/such/pool.jsonl"
    config["output_dir"] = str(tmp_path / "out")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "recipes/em_then_grpo.py"), "--config", str(path)],
                            capture_output=True, text=True, cwd="/", env=env, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert "grpo.dataset" in result.stderr and "Traceback" not in result.stderr
    # One line from us (vLLM's CPU build may log its own Triton notice on import, which is not ours to silence).
    ours = [line for line in result.stderr.strip().splitlines() if not line.startswith("Triton is installed")]
    assert len(ours) == 1, result.stderr
    assert not (tmp_path / "out" / "em").exists()


def test_malformed_yaml_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("em: [unclosed\n")
    with pytest.raises(PipelineConfigError, match="not valid YAML"):
        load_config(path)


def test_unknown_top_level_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: out\nmodle: x\n")
    with pytest.raises(PipelineConfigError, match="Unknown top-level key"):
        load_config(path)
