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


def test_check_runs_keeps_order_runs_side_by_side_and_names_the_first_failure(monkeypatch):
    import time

    from em_trainer.workflows import sweep
    from em_trainer.workflows.sweep import Run, SweepError, check_runs

    running, most = set(), []

    def fake_check(run, config, directory, extra, save_steps):
        running.add(config)
        most.append(len(running))
        time.sleep(0.2)
        running.discard(config)
        if config.startswith("bad"):
            raise SweepError(f"{config} would fail")
        return f"fp-{config}"

    monkeypatch.setattr(sweep, "check_run", fake_check)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 2)
    checks = [(Run((), 0), name, None, [], None) for name in ("a", "b", "c")]
    assert check_runs(checks) == ["fp-a", "fp-b", "fp-c"]
    assert max(most) == 2, "two at a time on two cores"
    bad = [(Run((), 0), name, None, [], None) for name in ("a", "bad-1", "bad-2")]
    with pytest.raises(SweepError, match=r"^arm b: bad-1 would fail$"):
        check_runs(bad, ["arm a", "arm b", "arm c"])
    assert check_runs([]) == []
