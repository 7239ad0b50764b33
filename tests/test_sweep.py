"""`em-trainer sweep` on a tiny model: 2 seeds x 2 learning rates, evaluation, aggregation, resume and plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from em_trainer.cli import main
from em_trainer.workflows.sweep import aggregate, parse_grid, plan_runs


def test_grid_and_plan():
    grid = parse_grid(["temperature=0.3,0.5", "learning_rate=1e-5"])
    assert grid == {"temperature": ["0.3", "0.5"], "learning_rate": ["1e-5"]}
    runs = plan_runs(grid, seeds=3)
    assert len(runs) == 6 and {r.seed for r in runs} == {0, 1, 2}
    with pytest.raises(ValueError, match="field=v1"):
        parse_grid(["temperature"])


def test_aggregate_matches_numpy():
    records = [
        {"point": "lr=1", "scores": {"a": s}, "final_loss": loss} for s, loss in [(0.1, 1.0), (0.4, 2.0), (0.7, 4.0)]
    ]
    result = aggregate(records)["lr=1"]
    values = np.array([0.1, 0.4, 0.7])
    assert result["a"]["mean"] == pytest.approx(values.mean())
    assert result["a"]["std"] == pytest.approx(values.std(ddof=1)), "sample std over seeds, as the study reports"
    assert (result["a"]["min"], result["a"]["max"], result["a"]["seeds"]) == (0.1, 0.7, 3)
    assert result["final_loss"]["mean"] == pytest.approx(7 / 3)


def test_sweep_end_to_end_and_resume(tiny_model_dir, tmp_path, capsys):
    """Cost (about 90 s): a sweep's training runs, evaluations and aggregation as separate processes, then a rerun that
    must reuse them all; the resume across processes is what this proves."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\nresponses_per_step: 2\nper_device_train_batch_size: 2\nmax_completion_length: 4\n"
        "max_steps: 2\nreport_to: none\ngradient_checkpointing: false\n"
    )
    out = tmp_path / "sweep"
    argv = ["sweep", "--train_config", str(config), "--seeds", "2", "--grid", "learning_rate=1e-3,1e-2", "--eval",
            "arithmetic", "--limit", "2", "--max-new-tokens", "4", "--eval-checkpoints",
            "--output-dir", str(out), "--executor", "serial"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "sweep_summary.json").read_text())
    assert len(summary["runs"]) == 4
    for run in summary["runs"]:
        assert sorted(int(k) for k in run["loss_by_step"]) == [1, 2]
        assert sorted(int(k) for k in run["scores_by_step"]) == [1, 2]
        assert 0.0 <= run["scores"]["arithmetic"] <= 1.0
    for point in ("learning_rate=1e-3", "learning_rate=1e-2"):
        losses = [r["final_loss"] for r in summary["runs"] if r["point"] == point]
        assert summary["aggregate"][point]["final_loss"]["mean"] == pytest.approx(np.mean(losses))
        assert summary["aggregate"][point]["arithmetic"]["seeds"] == 2
    assert (out / "loss_and_score_vs_step.png").stat().st_size > 1000
    assert (out / "score_vs_learning_rate.png").stat().st_size > 1000

    # Resume: finished runs are kept; only the run whose marker is gone trains again.
    (next(out.glob("learning_rate=1e-2-*")) / "seed-1" / ".run_complete").unlink()
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # Serially, here (the executors run the same jobs: tests/test_executors.py).
    assert printed.count(": training") == 1 and printed.count("done, kept") == 3

    # A change to the base config is a new fingerprint: every run trains again, in new folders, the old ones kept.
    config.write_text(config.read_text().replace("max_completion_length: 4", "max_completion_length: 3"))
    argv[argv.index("--seeds") + 1] = "1"
    argv[argv.index("--grid") + 1] = "learning_rate=1e-2"
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count(": training") == 1 and "done, kept" not in printed
    assert len(list(out.glob("learning_rate=1e-2-*"))) == 2


def test_check_runs_in_one_process_give_each_runs_own_check_and_name_the_first_failure(tiny_model_dir, tmp_path,
                                                                                         capsys):
    """All checks in one process: each fingerprint equals what that run's own `em-trainer train --check` prints, in
    order, and the first failing check (not a later one) is reported with its label and train's own message."""
    import re

    from em_trainer.workflows.sweep import Run, SweepError, check_runs

    config = tmp_path / "config.yaml"
    config.write_text(f"model: {tiny_model_dir}\nresponses_per_step: 2\nper_device_train_batch_size: 2\n"
                      "max_completion_length: 4\nmax_steps: 1\nreport_to: none\n")  # fmt: skip
    runs = [Run((("learning_rate", lr),), seed) for lr, seed in (("1e-3", 0), ("2e-3", 0), ("1e-3", 1))]
    checks = [(run, str(config), tmp_path / f"run{i}", [], None) for i, run in enumerate(runs)]
    reference = []
    for run, _, directory, _, _ in checks:
        argv = ["train", "--config", str(config), "--seed", str(run.seed), "--output_dir", str(directory),
                "--learning_rate", run.point[0][1], "--check"]  # fmt: skip
        assert main(argv) == 0
        reference.append(re.search(r"run fingerprint: (\w+)", capsys.readouterr().out).group(1))
    assert reference[0] != reference[1] and reference[0] == reference[2], "the point's, not the seed's (seed-N/)"
    assert check_runs(checks) == reference
    bad = [checks[0], (Run((("temperature", "0"),), 0), str(config), tmp_path / "b", [], None),
           (Run((("max_steps", "-5"),), 0), str(config), tmp_path / "c", [], None)]  # fmt: skip
    with pytest.raises(SweepError, match=r"^arm b: run temperature=0 seed 0 would fail: em-trainer train: error:"):
        check_runs(bad, ["arm a", "arm b", "arm c"])
    assert check_runs([]) == []


@pytest.mark.parametrize(
    "flags, message",
    [
        # `--seed 7` was read as `--seeds 7` (argparse's prefix matching): seven runs instead of one with seed 7.
        (["--seed", "7"], "set --seed: the sweep sets each run's seed"),
        (["--output_dir=elsewhere", "--seeds", "1"], None),  # the sweep's own option: allowed
        (["--grid", "learning_rate=1e-3,1e-2", "--learning_rate", "1e-4"], "set --learning_rate: it is a field of"),
        (["--overwrite-output-dir"], "set --overwrite_output_dir"),
    ],
)
def test_train_options_a_sweep_sets_itself_are_refused_in_one_line(tmp_path, capsys, monkeypatch, flags, message):
    """Passed on to every run after the sweep's own, these would silently win: every seed the same, or every grid
    point one value. Refused before anything trains (`train --check` never starts: the check is replaced here)."""
    from em_trainer.workflows import sweep

    checked = []
    fingerprints = lambda checks, labels=None: checked.append(checks) or ["0" * 8] * len(checks)  # noqa: E731
    monkeypatch.setattr(sweep, "check_runs", fingerprints)
    config = tmp_path / "train.yaml"
    config.write_text("max_steps: 1\n")
    monkeypatch.chdir(tmp_path)
    code = main(["sweep", "--train_config", str(config), "--executor", "serial", "--dry_run", *flags])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    if message is None:
        assert code == 0 and checked and not errors
    else:
        assert code == 2 and not checked and len(errors) == 1 and message in errors[0], errors
        assert not list(tmp_path.glob("outputs")) and not (tmp_path / "elsewhere").exists(), "no folder created"
