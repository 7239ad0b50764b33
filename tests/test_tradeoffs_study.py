"""The trade-offs study: its RLVR arms differ from GRPO only in the update, and its quick variant measures pass@k,
diversity and calibration end to end on SmolLM2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from em_trainer.workflows.study import StudyError, load_study
from em_trainer.workflows.study_report import plot_pass_at_k, pooled_reliability, render_report

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "recipes" / "configs" / "smollm2-135m-cpu" / "tradeoffs" / "study.yaml"


def test_the_study_has_every_arm_four_seeds_32_samples_and_rlvr_arms_that_differ_only_in_the_update():
    full, quick = load_study(STUDY), load_study(STUDY, quick=True)
    assert full.seeds >= 4 and full.measure["samples"]["n"] >= 32
    assert set(quick.arms) == set(full.arms), "the quick variant cuts sizes, never arms"
    gold = full.arms["grpo_gold"]["config"]
    options = {name: full.arms[name].get("train_args", []) for name in ("psr", "nsr", "w_reinforce", "grpo_clip_cov")}
    assert all(full.arms[name]["config"] == gold for name in options)
    assert options == {
        "psr": ["--em_advantage", "psr"],
        "nsr": ["--em_advantage", "nsr"],
        "w_reinforce": ["--em_advantage", "w_reinforce"],
        "grpo_clip_cov": ["--cov_regularization", "clip_cov", "--clip_cov_ratio", "0.02"],
    }


@pytest.mark.parametrize("samples", [{"n": 1}, {"n": 8, "k": 2}, "32", {"n": "many"}, {"n": 8, "temperature": 0}])
def test_bad_sample_settings_are_refused_in_one_line(tmp_path, samples):
    config = tmp_path / "study.yaml"
    config.write_text(json.dumps({"arms": {"base": {"kind": "decode"}}, "measure": {"samples": samples}}))
    with pytest.raises(StudyError, match="measure.samples"):
        load_study(config)


@pytest.mark.slow
def test_quick_tradeoffs_study_measures_pass_at_k_diversity_and_calibration(tiny_model_dir, tmp_path):
    """Cost: about 50 s (the pool's selection, the base model's measurements, `train --check` of all six arms, one
    arm trained one step and measured with 4 samples of 2 problems): the one end-to-end run of `measure.samples` and
    of an `em_advantage` arm through `em-trainer train` (W-REINFORCE; the other arms' losses have reference tests).
    On the tiny model (`--model`): the measurements' values have reference tests (test_sample_metrics); the real
    model's quick run is benchmarks/results/tradeoffs_quick.json."""
    out = tmp_path / "study"
    command = [
        sys.executable, "-m", "em_trainer.cli", "study", "--config", str(STUDY), "--quick", "--model", tiny_model_dir,
        "--only_arm", "w_reinforce", "--executor", "serial", "--output_dir", str(out),
        "--results_file", str(out / "results.json"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env={**os.environ,
                            "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    n = load_study(STUDY, quick=True).measure["samples"]["n"]
    measured = {(r["arm"], r["step"]): r for r in results["records"]}
    for key in (("base", 0), ("w_reinforce", 0), ("w_reinforce", 1)):
        record = measured[key]
        curve = record["pass_at_k"]
        assert len(curve) == n and curve == sorted(curve) and curve[0] == record["pass_at_1"], key
        assert 0 <= record["ece"] <= 1 and 0 <= record["answer_entropy"] <= math.log(n) + 1e-9, key
        assert sum(row[2] for row in record["reliability"]) == n * 2, key  # every sample of the 2 problems in a bin
    identity = json.loads((out / "runs" / "w_reinforce" / "seed-0" / "run_identity.json").read_text())
    assert identity["config"]["em_advantage"] == "w_reinforce"
    state = json.loads((out / "runs" / "w_reinforce" / "seed-0" / "trainer_state.json").read_text())
    assert any("signed_reinforce/kept_share" in log for log in state["log_history"])
    report = render_report(results)
    assert "**pass@k, answer diversity and calibration**" in report and "\n| w_reinforce | 1 | 1 |" in report
    assert pooled_reliability(results, "w_reinforce", 1)
    assert plot_pass_at_k(results, tmp_path / "pass_at_k.png").stat().st_size > 0
