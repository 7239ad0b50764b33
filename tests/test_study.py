"""The replication study: configuration checks, data split, aggregation, report, and the quick variant end to end."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from em_trainer.data.paths import ConfigPathError
from em_trainer.evaluation.benchmarks import load_benchmark
from em_trainer.workflows.study import StudyError, aggregate, build_pool, load_study
from em_trainer.workflows.study_report import (
    embed,
    embedded,
    plot_logit_histograms,
    plot_temperature,
    render_ordering,
    render_report,
    temperature_curves,
)

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "recipes/configs/smollm2-135m-cpu/replication/study.yaml"


def test_study_config_loads_full_and_quick():
    full, quick = load_study(STUDY), load_study(STUDY, quick=True)
    # 8 seeds planned, cut evenly to 2 to fit a session, then 3 (the config and docs/results.md say so).
    assert full.seeds >= 2 and full.steps == [0, 2, 4, 6, 8, 10, 15, 20]
    assert {"base", "em_inf", "adaptive_temperature", "em_ft", "em_rl_token", "em_rl_trajectory"} == set(full.arms)
    assert quick.seeds == 2 and quick.steps == [0, 2] and set(quick.arms) == set(full.arms), "quick cuts, never arms"
    assert quick.select["temperature"] == full.select["temperature"], "quick overrides merge into the full settings"
    for arm in full.arms.values():
        if arm["kind"] == "train":
            assert Path(arm["config"]).is_file(), "arm configs resolve beside the study file, from any directory"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": 1}, "unknown key"),
        ({"arms": {"x": {"kind": "fly"}}}, "arms.x.kind"),
        ({"arms": {"x": {"kind": "decode", "decoding": "beam"}}}, "arms.x.decoding"),
        ({"arms": {"x": {"kind": "train", "config": "missing.yaml"}}}, "arms.x.config"),
        ({"seeds": 0, "arms": {}}, "at least 1"),
        ({"train_args": ["--model=other"], "arms": {}}, r"train_args set --model: every arm trains the study's"),
        ({"train_args": ["--seed", "3"], "arms": {}}, r"train_args set --seed: the study sets each job's seed"),
        ({"train_args": ["--max-steps", "3"], "arms": {}}, r"train_args set --max_steps: the study trains to its"),
    ],
)
def test_bad_study_configs_name_the_key(tmp_path, change, message):
    import yaml

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"arms": {}, **change}))
    with pytest.raises((StudyError, ConfigPathError), match=message):
        load_study(path)


def test_pool_never_overlaps_the_test_benchmark(tmp_path):
    study = load_study(STUDY, output_dir=str(tmp_path))
    rows = [json.loads(line) for line in build_pool(study).read_text().splitlines()]
    test = {row["problem"] for row in load_benchmark("arithmetic")}
    assert len(rows) == study.pool_size == len({r["problem"] for r in rows})
    assert not test & {r["problem"] for r in rows}


def test_aggregate_matches_statistics_over_seeds():
    records = [
        {"arm": "a", "seed": s, "step": 2, "greedy_accuracy": v, "entropy": None}
        for s, v in enumerate([0.1, 0.3, 0.2])
    ]
    stats = aggregate(records)["a"]["2"]
    assert stats["greedy_accuracy"]["mean"] == pytest.approx(0.2)
    assert stats["greedy_accuracy"]["std"] == pytest.approx(statistics.stdev([0.1, 0.3, 0.2]))
    assert (stats["greedy_accuracy"]["min"], stats["greedy_accuracy"]["max"], stats["greedy_accuracy"]["seeds"]) == (
        0.1, 0.3, 3,
    )  # fmt: skip
    assert "entropy" not in stats, "a metric an arm does not have is left out, not zero"


def test_report_embeds_and_reads_back():
    document = "intro\n<!-- study-report:begin x -->\nold\n<!-- study-report:end x -->\noutro\n"
    new = embed(document, "x", "| table |\n")
    assert embedded(new, "x") == "| table |\n" and new.startswith("intro\n") and new.endswith("outro\n")


def _curve_record(arm, seed, step, curve):
    edges = [-2.0, 0.0, 2.0]
    return {"arm": arm, "seed": seed, "step": step, "accuracy_by_temperature": curve,
            "logit_histogram": {"edges": edges, "counts": [3, 1]}}  # fmt: skip


def test_temperature_curves_and_their_table_and_plots(tmp_path):
    records = [
        _curve_record("base", 0, 0, {"0.0": 0.2, "1.0": 0.1}),
        _curve_record("base", 1, 0, {"0.0": 0.2, "1.0": 0.3}),
        _curve_record("em_ft", 0, 0, {"0.0": 0.2, "1.0": 0.1}),  # the base copied to step 0: not a row of its own
        _curve_record("em_ft", 0, 10, {"0.0": 0.25, "1.0": 0.15}),
    ]
    curves = temperature_curves({"records": records})
    assert curves[("base", 0)]["1.0"]["mean"] == pytest.approx(0.2)
    assert curves[("base", 0)]["1.0"]["std"] == pytest.approx(statistics.stdev([0.1, 0.3]))
    assert curves[("em_ft", 10)]["0.0"]["seeds"] == 1
    study = {"seeds": 2, "test_size": 4, "pool_size": 4, "pool_seed": 1, "steps": [0, 10],
             "arms": {"base": {"kind": "decode"}, "em_ft": {"kind": "train"}}}  # fmt: skip
    results = {"study": study, "aggregate": {}, "records": records, "selected_prompt": {"problem": "p"},
               "wall_seconds": {}}  # fmt: skip
    table = render_report(results)
    assert "| base | 0 | 20.0 ± 0.0 [20.0, 20.0] | 20.0 ± 14.1 [10.0, 30.0] |" in table
    assert "| em_ft | 10 |" in table and "| em_ft | 0 |" not in table
    assert plot_temperature(results, tmp_path / "t.png").stat().st_size > 0
    assert plot_logit_histograms(results, tmp_path / "h.png").stat().st_size > 0


def test_ordering_table_lists_every_order_beside_the_base():
    records = [
        {"arm": order, "seed": seed, "step": 20, "greedy_accuracy": value, "train_seconds": 60.0, "seconds": 30.0}
        for order, values in (("em_then_grpo", [0.2, 0.3]), ("grpo_then_em", [0.1, 0.1]))
        for seed, value in enumerate(values)
    ]
    base = aggregate([{"arm": "base", "seed": 0, "step": 0, "greedy_accuracy": 0.2}])["base"]
    results = {"seeds": 2, "command": "c", "config": "k", "records": records, "aggregate": aggregate(records),
               "base": base}  # fmt: skip
    table = render_ordering(results)
    assert "| base (no training) | 0 | 1 | 20.0 ± 0.0 [20.0, 20.0] |" in table
    assert "| em_then_grpo | 20 | 2 | 25.0 ± 7.1 [20.0, 30.0] |" in table and "| grpo_then_em | 20 | 2 |" in table
    assert "6.0 min in all (4 runs" in table


@pytest.mark.slow
def test_quick_study_runs_end_to_end_and_resumes(tiny_model_dir, tmp_path):
    """Cost (about 100 s: 3 training jobs, each a process that imports PyTorch and TRL, and the decoding arms):
    `study --config study.yaml --quick --seeds 1` through submitit's local executor (one job at a time: under the
    tests' two workers, two jobs at a time only compete for the cores; tests/test_executors.py runs two at a time):
    every arm and step measured; a rerun recomputes nothing. On the tiny model (`--model`) with one seed: what this
    checks is the workflow, which a real model's numbers and a second seed add nothing to (SmolLM2 tripled its time,
    the quick variant's second seed doubled the jobs; aggregation over seeds has its own test, and the real model's
    quick run is benchmarks/results/replication_quick.json). One arm trains first alone (`--only_arm`), the others in
    the full run."""
    out = tmp_path / "study"
    command = [
        sys.executable, "-m", "em_trainer.cli", "study", "--config", str(STUDY), "--quick", "--model", tiny_model_dir,
        "--seeds", "1", "--output_dir", str(out), "--results_file", str(out / "results.json"),
    ]  # fmt: skip
    submitted = [*command, "--executor", "submitit_local", "--max_parallel", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # One (seed, arm) of the training grid alone, as a second process would take it; the full run then keeps it.
    alone = subprocess.run([*command, "--only_seed", "0", "--only_arm", "em_ft"], capture_output=True, text=True,
                           cwd=tmp_path, env=env)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    # The pre-flight creates and probes every run's folder; only the one run trained has weights.
    weights = out.glob("runs/*/seed-*/model.safetensors")
    trained = sorted(p.parent.relative_to(out / "runs").as_posix() for p in weights)
    assert trained == ["em_ft/seed-0"]
    trained_alone = (out / "runs" / "em_ft" / "seed-0" / "model.safetensors").stat().st_mtime_ns
    first = subprocess.run(submitted, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("[jobs] submitted") == 1 + 2, "the preparation, then every job but the one trained"
    results = json.loads((out / "results.json").read_text())
    study = load_study(STUDY, quick=True, argv=["--seeds", "1"])
    for name, arm in study.arms.items():
        steps = study.steps if arm["kind"] == "train" else [0]
        for step in steps:
            stats = results["aggregate"][name][str(step)]
            assert stats["greedy_accuracy"]["seeds"] == study.seeds, (name, step)
            assert 0 <= stats["cut_share"]["mean"] <= 1
            if arm.get("decoding", "plain") == "plain":
                assert stats["entropy"]["mean"] >= 0 and "skewness" in stats
    assert not list(out.glob("runs/*/seed-*/checkpoint-*")), "measured checkpoints are dropped"
    assert (out / "runs" / "em_ft" / "seed-0" / "model.safetensors").stat().st_mtime_ns == trained_alone
    # Accuracy against temperature: for the base model and at the curve's steps, reusing greedy and T=0.5.
    curve_steps = study.measure["temperature_steps"]
    temperatures = [str(t) for t in study.measure["temperatures"]]
    for record in results["records"]:
        curve = record.get("accuracy_by_temperature")
        if record["arm"] in ("base", "em_ft") and record["step"] in curve_steps:
            assert list(curve) == temperatures
            assert curve["0.0"] == record["greedy_accuracy"] and curve["0.5"] == record["sampled_accuracy"]
        if record["arm"] in ("base", "em_ft"):
            histogram = record["logit_histogram"]
            assert len(histogram["edges"]) == len(histogram["counts"]) + 1 and sum(histogram["counts"]) > 0
    # em_ft rows: the headline, one in the peak/collapse table, one per step, and one in the temperature table.
    assert render_report(results).count("\n| em_ft |") == 1 + 1 + len(study.steps) + 1
    measured = lambda: sorted(p.read_text() for p in [out / "measurements.jsonl", *out.glob("jobs/*.jsonl")])  # noqa: E731
    lines = measured()

    second = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert measured() == lines, "a rerun measures nothing again"
    assert "[study] training" not in second.stdout

    # --report runs nothing and writes the same results from the measurements.
    (out / "results.json").unlink()
    report = subprocess.run([*command, "--report"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["records"] == results["records"]


@pytest.mark.parametrize("text, message", [("2,x", "comma-separated"), ("0,2", "below 1")])
def test_save_at_steps_rejects_bad_steps(text, message):
    from em_trainer.cli.train import _steps
    from em_trainer.core.config import EMConfigError

    with pytest.raises(EMConfigError, match=message):
        _steps(text)
    assert _steps("2, 4,10") == [2, 4, 10]


def test_arms_measured_under_their_settings_are_not_checked_again(tmp_path, monkeypatch):
    from em_trainer.workflows import study as study_module
    from em_trainer.workflows.study import Measurements, arm_identities, check_training_arms

    study = load_study(STUDY, quick=True, output_dir=str(tmp_path))
    seen = []
    monkeypatch.setattr(study_module, "check_runs", lambda checks, labels=None: seen.append(labels) or [])
    measurements = Measurements(tmp_path / "measurements.jsonl", arm_identities(study))
    for seed in range(study.seeds):
        for step in study.steps[1:]:
            measurements.add({"arm": "em_ft", "seed": seed, "step": step})
    measurements.add({"arm": "em_rl_token", "seed": 0, "step": study.steps[-1]})  # one seed of two: not finished
    check_training_arms(study, tmp_path / "pool.jsonl", measurements)
    assert [label.split(" ")[0] for label in seen[0]] == ["arms.em_rl_token", "arms.em_rl_trajectory"]
    check_training_arms(study, tmp_path / "pool.jsonl")
    assert len(seen[1]) == 3, "without measurements every arm is checked"


def test_record_keys_hold_settings_only_so_a_driver_on_other_hardware_gathers_its_jobs(monkeypatch):
    """Before, the keys held the matmul kernel of the process computing them ("aten" where CUDA is visible,
    "onednn-packed-float32" on a CPU): a CPU login node dropped every record its GPU jobs wrote as stale, wrote empty
    results and resubmitted every job. Now the keys are settings only; the kernel is in each record (produced_by)."""
    from em_trainer.core import cpu_decoding
    from em_trainer.workflows.study import arm_identities

    study = load_study(STUDY, quick=True)
    keys = {}
    for kernel in ("aten", "onednn-packed-float32"):
        monkeypatch.setattr(cpu_decoding, "default_matmul_kernel", lambda kernel=kernel: kernel)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0" if kernel == "aten" else "")
        keys[kernel] = arm_identities(study)
    assert keys["aten"] == keys["onednn-packed-float32"]
