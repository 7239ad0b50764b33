"""pass@k for every k, answer diversity and calibration (evaluation/sample_metrics) against independent computations:
subsets enumerated, entropies and ECE by hand, answers clustered by plain string equality."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from em_trainer.evaluation.sample_metrics import (
    NO_ANSWER,
    answer_confidences,
    answer_diversity,
    answer_outcomes,
    calibration,
    pass_at_k_curve,
    sample_metrics,
)


def _by_string(extracted):
    """Clusters by exact string equality: an independent stand-in for math-verify equivalence on plain integers."""
    groups: dict[str, list[int]] = {}
    for i, answer in enumerate(extracted):
        if answer is not None:
            groups.setdefault(answer, []).append(i)
    return list(groups.values())


def test_the_pass_at_k_curve_is_the_mean_share_of_k_subsets_with_a_pass_for_every_k():
    rng = random.Random(0)
    n = 7
    problems = [[rng.random() < p for _ in range(n)] for p in (0.0, 0.2, 0.5, 0.9, 1.0)]
    curve = pass_at_k_curve([sum(p) for p in problems], n)
    assert len(curve) == n
    for k in range(1, n + 1):
        shares = [
            sum(any(outcomes[i] for i in subset) for subset in itertools.combinations(range(n), k)) / math.comb(n, k)
            for outcomes in problems
        ]
        assert curve[k - 1] == pytest.approx(sum(shares) / len(shares))
    assert curve == sorted(curve)  # pass@k never falls with k
    assert curve[0] == pytest.approx(sum(map(sum, problems)) / (n * len(problems)))  # pass@1 = mean accuracy


def test_diversity_counts_distinct_answers_and_the_entropy_of_outcomes_with_no_answer_as_one_outcome():
    extracted = ["4", "4", "5", None, "4", None, "6", "5"]
    outcomes = answer_outcomes(extracted, _by_string)
    assert outcomes == [0, 0, 1, NO_ANSWER, 0, NO_ANSWER, 2, 1]
    distinct, entropy = answer_diversity(outcomes)
    shares = [3 / 8, 2 / 8, 2 / 8, 1 / 8]  # "4", "5", no answer, "6"
    assert distinct == 3
    assert entropy == pytest.approx(-sum(p * math.log(p) for p in shares))
    assert answer_diversity([0] * 5) == (1, 0.0)  # collapse: one answer, zero entropy
    assert answer_diversity([NO_ANSWER] * 3) == (0, 0.0)


def test_confidence_is_the_share_of_samples_with_the_same_outcome():
    assert answer_confidences([0, 0, 1, NO_ANSWER]) == [0.5, 0.5, 0.25, 0.25]


def test_ece_matches_a_hand_computation_and_the_reliability_bins_hold_what_they_say():
    confidences = [0.1, 0.15, 0.5, 0.55, 0.95, 1.0, 1.0, 0.0]
    correct = [False, True, True, False, True, True, False, False]
    fit = calibration(confidences, correct, bins=4)
    # Bins (0, .25] with 0: {0.1, 0.15, 0.0}; (.25, .5]: {0.5}; (.5, .75]: {0.55}; (.75, 1]: {0.95, 1, 1}.
    by_hand = (
        3 / 8 * abs(1 / 3 - (0.1 + 0.15 + 0.0) / 3)
        + 1 / 8 * abs(1 - 0.5)
        + 1 / 8 * abs(0 - 0.55)
        + 3 / 8 * abs(2 / 3 - (0.95 + 1 + 1) / 3)
    )
    assert fit.ece == pytest.approx(by_hand)
    assert [row[2] for row in fit.reliability] == [3, 1, 1, 3]
    assert fit.reliability[3][3] == pytest.approx((0.95 + 2) / 3) and fit.reliability[3][4] == pytest.approx(2 / 3)
    assert calibration([1.0, 1.0], [True, True]).ece == 0.0  # confident and right: perfectly calibrated
    with pytest.raises(ValueError, match="outside"):
        calibration([1.5], [True])


def test_sample_metrics_of_graded_records_puts_the_pieces_together():
    def records(answers, gold):
        return [{"extracted": a, "correct": a == gold} for a in answers]

    groups = [records(["4", "4", "4", "4"], "4"), records(["1", "2", None, "2"], "3")]
    metrics = sample_metrics(groups, bins=10, clusters=_by_string)
    assert metrics.problems == 2 and metrics.samples_per_problem == 4
    assert metrics.pass_at_k == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert metrics.distinct_answers == pytest.approx((1 + 2) / 2)
    second = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    assert metrics.answer_entropy == pytest.approx(second / 2)
    assert metrics.majority_share == pytest.approx((1.0 + 0.5) / 2)
    # Confidences: four 1.0 (right), then 0.25, 0.5, 0.25, 0.5 (all wrong).
    by_hand = 4 / 8 * 0 + 2 / 8 * 0.25 + 2 / 8 * 0.5
    assert metrics.ece == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="same number of samples"):
        sample_metrics([groups[0], groups[1][:3]], clusters=_by_string)


def test_math_equivalent_answers_are_one_outcome_with_the_default_clustering():
    assert answer_outcomes(["1/2", "0.5", "\\frac{1}{2}", "3"]) == [0, 0, 0, 1]
