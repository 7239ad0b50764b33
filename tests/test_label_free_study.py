"""The label-free study: its arms differ only in the reward, and its quick variant runs end to end on SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from em_trainer.workflows.study import load_study
from em_trainer.workflows.study_report import render_report

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "recipes" / "configs" / "smollm2-135m-cpu" / "label_free" / "study.yaml"
ARMS = {"em_ft", "em_rl_token", "self_certainty", "semantic_entropy", "majority_vote", "grpo_gold", "random", "format"}
REWARD_KEYS = {"objective", "em_reward", "em_reward_reduction", "reward_funcs"}


def test_the_study_has_every_arm_four_seeds_and_a_quick_variant_that_cuts_only_sizes():
    full, quick = load_study(STUDY), load_study(STUDY, quick=True)
    assert set(full.training_arms) == ARMS and full.seeds >= 4
    assert set(quick.arms) == set(full.arms), "the quick variant cuts sizes, never arms"


def test_the_rl_arms_differ_from_em_rl_token_only_in_the_reward():
    study = load_study(STUDY)
    configs = {name: yaml.safe_load(Path(arm["config"]).read_text()) for name, arm in study.training_arms.items()}
    reference = {k: v for k, v in configs["em_rl_token"].items() if k not in REWARD_KEYS}
    for name, config in configs.items():
        if name == "em_ft":
            continue
        assert {k: v for k, v in config.items() if k not in REWARD_KEYS} == reference, name
    rewards = {name: config.get("reward_funcs") or config.get("em_reward") for name, config in configs.items()}
    assert rewards == {"em_ft": None, "em_rl_token": "token", "self_certainty": "self_certainty",
                       "semantic_entropy": ["semantic_entropy"], "majority_vote": ["majority_vote"],
                       "grpo_gold": ["accuracy"], "random": ["random"], "format": ["format"]}  # fmt: skip


@pytest.mark.slow
def test_quick_label_free_study_runs_every_arm_end_to_end(tiny_model_dir, tmp_path):
    """Cost (about 100 s: 8 training runs, each a process that imports PyTorch and TRL): `study --config
    label_free/study.yaml --quick`: each arm trains through `em-trainer train` with its reward, every arm and step is
    measured, and the report has each arm's peak/collapse row. On the tiny model (`--model`): the rewards' values on
    real text have their own tests (test_label_free_rewards), and SmolLM2 doubled this one's time (its quick run is
    benchmarks/results/label_free_quick.json). Serially (`--executor serial`): the executors have their own tests
    (test_executors), and a job process per arm added a start-up each."""
    out = tmp_path / "study"
    command = [
        sys.executable, "-m", "em_trainer.cli", "study", "--config", str(STUDY), "--quick", "--model", tiny_model_dir,
        "--executor", "serial", "--output_dir", str(out), "--results_file", str(out / "results.json"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env={**os.environ,
                            "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    study = load_study(STUDY, quick=True)
    for name in study.training_arms:
        for step in study.steps:
            assert results["aggregate"][name][str(step)]["greedy_accuracy"]["seeds"] == study.seeds, (name, step)
        identity = json.loads((out / "runs" / name / "seed-0" / "run_identity.json").read_text())
        config = yaml.safe_load(Path(study.arms[name]["config"]).read_text())
        assert identity["config"]["objective"] == config.get("objective", "entropy_loss"), name
        assert identity["script"]["reward_funcs"] == config.get("reward_funcs"), name
        state = json.loads((out / "runs" / name / "seed-0" / "trainer_state.json").read_text())
        logged = {key for log in state["log_history"] for key in log}
        for reward in config.get("reward_funcs") or []:
            function = {"accuracy": "accuracy_reward", "random": "random_reward", "format": "format_reward"}.get(
                reward, f"{reward}_reward"
            )
            assert f"rewards/{function}/mean" in logged, (name, sorted(logged))
    # Each arm's rows: the headline, the peak/collapse table, one per step.
    report = render_report(results)
    for name in study.training_arms:
        assert report.count(f"\n| {name} |") == 1 + 1 + len(study.steps), name
