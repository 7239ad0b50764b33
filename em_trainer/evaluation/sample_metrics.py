"""What n samples per problem say beyond accuracy: pass@k for every k, answer diversity, and calibration.

Pure functions of graded samples (no model, no files), so each is tested against an independent computation
(``tests/test_sample_metrics.py``). Definitions, sources and how to read them: docs/sample_metrics.md.

- **pass@k** (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): the unbiased estimator
  ``1 - C(n - c, k) / C(n, k)`` of the chance that at least one of k samples is correct, from n >= k samples of
  which c are, averaged over problems; computed for every k = 1 ... n.
- **Answer diversity** per problem: the number of distinct final answers (math-verify equivalence) and the entropy
  (nats) of the distribution of outcomes, where "no answer" is one outcome of its own.
- **Calibration**: each sample's confidence is the share of the problem's n samples that give its answer (the
  self-consistency confidence: the majority share for a majority answer); a sample without an answer has the share
  of samples without one, and is wrong. Expected calibration error over equal-width confidence bins,
  ``ECE = sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|`` (Guo et al. 2017), and the bins themselves for a
  reliability plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import comb

NO_ANSWER = -1  # the outcome of a sample without a final answer


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n - c, k) / C(n, k), for n samples of which c passed."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}.")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_at_k_curve(correct_counts: Sequence[int], n: int) -> list[float]:
    """Mean pass@k over problems for k = 1 ... n (entry k - 1), from each problem's number of correct samples."""
    if not correct_counts:
        return []
    return [sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts) for k in range(1, n + 1)]


def answer_outcomes(
    extracted: Sequence[str | None], clusters: Callable[[Sequence[str | None]], list[list[int]]] | None = None
) -> list[int]:
    """Each sample's outcome: the index of its answer's equivalence class, or ``NO_ANSWER``."""
    if clusters is None:
        from .answer_clusters import cluster_answers as clusters
    outcome = [NO_ANSWER] * len(extracted)
    for label, members in enumerate(clusters(extracted)):
        for i in members:
            outcome[i] = label
    return outcome


def answer_diversity(outcomes: Sequence[int]) -> tuple[int, float]:
    """(distinct answers, entropy in nats of the outcome distribution) of one problem's samples."""
    counts: dict[int, int] = {}
    for o in outcomes:
        counts[o] = counts.get(o, 0) + 1
    total = len(outcomes)
    entropy = -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0
    return sum(1 for o in counts if o != NO_ANSWER), entropy + 0.0  # + 0.0: no "-0.0" in the records


def answer_confidences(outcomes: Sequence[int]) -> list[float]:
    """Each sample's confidence: the share of the problem's samples with the same outcome."""
    total = len(outcomes)
    return [sum(1 for other in outcomes if other == o) / total for o in outcomes]


@dataclass
class Calibration:
    """Expected calibration error and the reliability bins it is computed from (empty bins left out)."""

    ece: float
    bins: int
    # One entry per non-empty bin: [lower edge, upper edge, samples, mean confidence, accuracy].
    reliability: list[list[float]] = field(default_factory=list)


def calibration(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> Calibration:
    """ECE over ``bins`` equal-width bins of [0, 1]; bin b holds confidences in (b / bins, (b + 1) / bins], the first
    also 0."""
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences and {len(correct)} verdicts: one each per sample.")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}.")
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, p in enumerate(confidences):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"confidence {p} is outside [0, 1].")
        members[max(0, math.ceil(p * bins) - 1)].append(i)
    total, ece, table = len(confidences), 0.0, []
    for b, indices in enumerate(members):
        if not indices:
            continue
        mean_confidence = sum(confidences[i] for i in indices) / len(indices)
        accuracy = sum(bool(correct[i]) for i in indices) / len(indices)
        ece += len(indices) / total * abs(accuracy - mean_confidence)
        table.append([b / bins, (b + 1) / bins, len(indices), mean_confidence, accuracy])
    return Calibration(ece=ece if total else math.nan, bins=bins, reliability=table)


@dataclass
class SampleMetrics:
    """What ``n`` samples of each problem say: pass@k for k = 1 ... n, diversity and calibration."""

    problems: int
    samples_per_problem: int
    pass_at_k: list[float]  # entry k - 1 is pass@k
    distinct_answers: float  # mean over problems
    answer_entropy: float  # mean over problems, nats
    ece: float
    reliability: list[list[float]]
    majority_share: float  # mean over problems of the largest outcome's share (the majority answer's confidence)


def sample_metrics(
    groups: Sequence[Sequence[dict]],
    bins: int = 10,
    clusters: Callable[[Sequence[str | None]], list[list[int]]] | None = None,
) -> SampleMetrics:
    """The metrics of graded samples, one group per problem, each sample a dict with ``extracted`` (str or None) and
    ``correct`` (bool), as ``evaluate_benchmark`` records them. Every group must hold the same number of samples."""
    sizes = {len(g) for g in groups}
    if len(sizes) > 1:
        raise ValueError(f"every problem needs the same number of samples, got sizes {sorted(sizes)}.")
    n = sizes.pop() if sizes else 0
    confidences: list[float] = []
    verdicts: list[bool] = []
    distinct, entropy, majority = [], [], []
    for group in groups:
        outcomes = answer_outcomes([r["extracted"] for r in group], clusters)
        kinds, h = answer_diversity(outcomes)
        distinct.append(kinds)
        entropy.append(h)
        shares = answer_confidences(outcomes)
        majority.append(max(shares))
        confidences += shares
        verdicts += [bool(r["correct"]) and o != NO_ANSWER for r, o in zip(group, outcomes, strict=True)]
    fit = calibration(confidences, verdicts, bins)

    def mean(values: list) -> float:
        return sum(values) / len(values) if values else math.nan

    return SampleMetrics(
        problems=len(groups),
        samples_per_problem=n,
        pass_at_k=pass_at_k_curve([sum(bool(r["correct"]) for r in g) for g in groups], n),
        distinct_answers=mean(distinct),
        answer_entropy=mean(entropy),
        ece=fit.ece,
        reliability=fit.reliability,
        majority_share=mean(majority),
    )
