"""Peak, final and collapse of a study's training arms, and the collapse-guard replay (workflows/peak_collapse)."""

from __future__ import annotations

import statistics

import pytest

from em_trainer.workflows.peak_collapse import (
    GuardThresholds,
    peak_and_collapse,
    render_peak_collapse,
    seed_curve_summary,
)


def curve(accuracy, entropy=None, length=None, repetition=None, steps=None):
    steps = steps or list(range(len(accuracy)))
    rows = []
    for i, step in enumerate(steps):
        rows.append({
            "step": step,
            "greedy_accuracy": accuracy[i],
            "entropy": None if entropy is None else entropy[i],
            "mean_length": None if length is None else length[i],
            **({} if repetition is None else {"repetition": repetition[i]}),
        })  # fmt: skip
    return rows


def test_peak_final_collapse_and_guard_by_hand():
    rows = curve([0.4, 0.5, 0.6, 0.3, 0.5], entropy=[1.0, 0.8, 0.6, 0.4, 0.3], length=[100, 90, 80, 60, 40])
    got = seed_curve_summary(list(reversed(rows)), "greedy_accuracy", GuardThresholds())  # order does not matter
    assert (got["start"], got["best_step"], got["best"]) == (0.4, 2, 0.6)
    assert (got["final_step"], got["final"]) == (4, 0.5)
    assert got["collapse_step"] == 3, "the first step after the peak below the start (0.3 < 0.4)"
    assert got["guard_step"] == 3 and got["guard_reason"].startswith("entropy 0.400 < 0.5 x 1.000")
    assert got["guard_minus_peak"] == 1 and got["accuracy_at_guard"] == 0.3


def test_ties_take_the_earliest_step_and_a_flat_curve_never_collapses():
    got = seed_curve_summary(curve([0.5, 0.5, 0.5]), "greedy_accuracy", GuardThresholds())
    assert got["best_step"] == 0 and got["collapse_step"] is None and got["guard_step"] is None


def test_a_dip_before_the_peak_is_not_a_collapse():
    got = seed_curve_summary(curve([0.4, 0.1, 0.7, 0.45], steps=[0, 2, 4, 6]), "greedy_accuracy", GuardThresholds())
    assert got["best_step"] == 4 and got["collapse_step"] is None


def test_each_guard_signal_fires_on_its_own():
    length = seed_curve_summary(curve([0.2, 0.2, 0.2], length=[80, 60, 39]), "greedy_accuracy", GuardThresholds())
    assert length["guard_step"] == 2 and "length 39.0 < 0.5 x 80.0" in length["guard_reason"]
    rep = seed_curve_summary(curve([0.2, 0.2, 0.2], repetition=[0.0, 0.6, 0.9]), "greedy_accuracy", GuardThresholds())
    assert rep["guard_step"] == 1 and "repetition 0.600 > 0.5" in rep["guard_reason"]
    off = GuardThresholds(entropy_fraction=None, length_fraction=None, max_repetition=None)
    collapsing = curve([0.2, 0.1], entropy=[1.0, 0.0], length=[9, 0], repetition=[0, 1])
    none = seed_curve_summary(collapsing, "greedy_accuracy", off)
    assert none["guard_step"] is None, "thresholds left None are not checked"


def test_a_curve_without_its_start_is_refused_and_one_without_the_metric_is_skipped():
    with pytest.raises(ValueError, match="step-0"):
        seed_curve_summary(curve([0.3, 0.2], steps=[2, 4]), "greedy_accuracy", GuardThresholds())
    assert seed_curve_summary(curve([0.3, 0.2]), "sampled_accuracy", GuardThresholds()) is None


def test_spread_over_seeds_and_the_rendered_row():
    seeds = {0: [0.2, 0.4, 0.1], 1: [0.2, 0.3, 0.3], 2: [0.3, 0.2, 0.25]}
    records = [
        {"arm": "em_ft", "seed": seed, **row}
        for seed, values in seeds.items()
        for row in curve(values, steps=[0, 5, 10])
    ] + [{"arm": "base", "seed": 0, "step": 0, "greedy_accuracy": 0.2}]
    results = {"study": {"arms": {"base": {"kind": "decode"}, "em_ft": {"kind": "train"}}}, "records": records}
    report = peak_and_collapse(results)
    assert list(report["arms"]) == ["em_ft"], "decoding arms have no steps"
    arm = report["arms"]["em_ft"]
    bests, finals = [0.4, 0.3, 0.3], [0.1, 0.3, 0.25]
    assert arm["best"]["mean"] == pytest.approx(statistics.fmean(bests))
    assert arm["best"]["std"] == pytest.approx(statistics.stdev(bests))
    assert arm["final"]["mean"] == pytest.approx(statistics.fmean(finals))
    assert arm["final"]["min"] == 0.1 and arm["final"]["max"] == 0.3
    assert arm["best_steps"] == [5, 5, 0] and arm["collapse_steps"] == [10, None, 5] and arm["collapsed_seeds"] == 2
    table = render_peak_collapse(report)
    assert "| em_ft | 23.3 ± 5.8 | 33.3 ± 5.8 | 5, 5, 0 | 21.7 ± 10.4 | 10, none, 5 | 2/3 |" in table


def test_a_seed_not_measured_at_every_step_is_left_out():
    records = [{"arm": "em_ft", "seed": 0, **row} for row in curve([0.2, 0.4, 0.1], steps=[0, 5, 10])]
    records += [{"arm": "em_ft", "seed": 1, **row} for row in curve([0.2], steps=[0])]  # still training
    results = {"study": {"steps": [0, 5, 10], "arms": {"em_ft": {"kind": "train"}}}, "records": records}
    arm = peak_and_collapse(results)["arms"]["em_ft"]
    assert list(arm["seeds"]) == [0] and arm["unfinished_seeds"] == [1]
    assert arm["best_steps"] == [5] and arm["final"]["mean"] == pytest.approx(0.1)
    assert "Left out, not yet measured at every step: seeds em_ft: 1." in render_peak_collapse(
        peak_and_collapse(results)
    )
