"""Peak, final and collapse of each training arm of a study, and whether the label-free guard would have stopped.

Label-free rewards are known to rise and then fall below the starting model ("No Free Lunch", arXiv 2506.17219),
so a study reports, per training arm and seed, over the measured steps of one accuracy:

- the peak: the best step (the earliest one on ties) and its accuracy;
- the final accuracy (the last measured step);
- the collapse step: the first step after the peak whose accuracy is below the starting model's (step 0), or none.

Spread over seeds is given as mean, std, min and max (``summarize``), the steps as lists.

The guard check replays the label-free collapse guard (``EMConfig.entropy_floor``, ``collapse_min_length``,
``collapse_max_repetition``, see core/callbacks.CollapseGuard) on the measured curves: the first step at which the
fresh-sample entropy falls below ``entropy_fraction`` of the start, the mean length below ``length_fraction`` of the
start, or the share of repeated word 4-grams rises above ``max_repetition``. The thresholds are relative to each
seed's own step 0, so they are fixed before any accuracy is seen (defaults: half the entropy, half the length,
a repetition share of 0.5). The guard in training reads the training rollouts of the one prompt; the study measures
the test problems, so this is what the guard would see on held-out prompts, not a replay of the training log.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .sweep import summarize

__all__ = ["GuardThresholds", "peak_and_collapse", "render_peak_collapse", "seed_curve_summary"]


@dataclass(frozen=True)
class GuardThresholds:
    """The collapse guard's thresholds, relative to the start: fixed a priori, never fitted to accuracies."""

    entropy_fraction: float | None = 0.5
    length_fraction: float | None = 0.5
    max_repetition: float | None = 0.5


def seed_curve_summary(curve: list[dict[str, Any]], metric: str, guard: GuardThresholds) -> dict[str, Any] | None:
    """Peak, final, collapse and guard stop of one seed's records (any order; step 0 must be among them).

    None when no record has ``metric`` (nothing to summarise)."""
    points = sorted(curve, key=lambda r: r["step"])
    values = [(r["step"], r[metric]) for r in points if r.get(metric) is not None]
    if not values:
        return None
    if points[0]["step"] != 0 or values[0][0] != 0:
        raise ValueError(f"a curve needs its step-0 {metric} (the starting model) to find a collapse")
    start = values[0][1]
    best_step, best = max(values, key=lambda sv: (sv[1], -sv[0]))
    collapse = next((step for step, value in values if step > best_step and value < start), None)
    stop, reason = guard_stop(points, guard)
    return {
        "start": start,
        "best_step": best_step,
        "best": best,
        "final_step": values[-1][0],
        "final": values[-1][1],
        "collapse_step": collapse,
        "guard_step": stop,
        "guard_reason": reason,
        "guard_minus_peak": None if stop is None else stop - best_step,
        "accuracy_at_guard": None if stop is None else dict(values).get(stop),
    }


def guard_stop(points: list[dict[str, Any]], guard: GuardThresholds) -> tuple[int | None, str | None]:
    """The first measured step after 0 at which the guard fires, and why (None, None if it never does)."""
    start = points[0]
    for record in points[1:]:
        reasons = []
        if guard.entropy_fraction is not None and _below(record, start, "entropy", guard.entropy_fraction):
            reasons.append(f"entropy {record['entropy']:.3f} < {guard.entropy_fraction} x {start['entropy']:.3f}")
        if guard.length_fraction is not None and _below(record, start, "mean_length", guard.length_fraction):
            reasons.append(
                f"length {record['mean_length']:.1f} < {guard.length_fraction} x {start['mean_length']:.1f}"
            )
        repetition = record.get("repetition")
        if guard.max_repetition is not None and repetition is not None and repetition > guard.max_repetition:
            reasons.append(f"repetition {repetition:.3f} > {guard.max_repetition}")
        if reasons:
            return record["step"], "; ".join(reasons)
    return None, None


def _below(record: dict[str, Any], start: dict[str, Any], key: str, fraction: float) -> bool:
    value, reference = record.get(key), start.get(key)
    return value is not None and reference is not None and value < fraction * reference


def peak_and_collapse(
    results: dict[str, Any], metric: str = "greedy_accuracy", guard: GuardThresholds | None = None
) -> dict[str, Any]:
    """Per training arm: each seed's summary and the spread over seeds (a study's results JSON in, a dict out).

    A seed enters only once every step the study measures is measured for it: a seed still training would show its
    step 0 as its peak and its final accuracy. ``unfinished_seeds`` lists the seeds left out."""
    guard = guard or GuardThresholds()
    planned = set(results["study"].get("steps") or [])
    arms = [name for name, arm in results["study"]["arms"].items() if arm["kind"] == "train"]
    report: dict[str, Any] = {"metric": metric, "guard": asdict(guard), "arms": {}}
    for arm in arms:
        by_seed: dict[int, list[dict[str, Any]]] = {}
        for record in results["records"]:
            if record["arm"] == arm:
                by_seed.setdefault(record["seed"], []).append(record)
        unfinished = sorted(seed for seed, curve in by_seed.items() if not planned <= {r["step"] for r in curve})
        summaries = {
            seed: seed_curve_summary(curve, metric, guard)
            for seed, curve in sorted(by_seed.items())
            if seed not in unfinished
        }
        seeds = {seed: summary for seed, summary in summaries.items() if summary is not None}
        if not seeds:
            continue
        rows = list(seeds.values())
        report["arms"][arm] = {
            "seeds": seeds,
            "unfinished_seeds": unfinished,
            "start": summarize([r["start"] for r in rows]),
            "best": summarize([r["best"] for r in rows]),
            "final": summarize([r["final"] for r in rows]),
            "best_steps": [r["best_step"] for r in rows],
            "collapse_steps": [r["collapse_step"] for r in rows],
            "collapsed_seeds": sum(r["collapse_step"] is not None for r in rows),
            "guard_steps": [r["guard_step"] for r in rows],
            "guard_minus_peak": [r["guard_minus_peak"] for r in rows],
        }
    return report


def _pct(stats: dict[str, float]) -> str:
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def _steps(values: list[int | None]) -> str:
    return ", ".join("none" if v is None else str(v) for v in values)


def render_peak_collapse(report: dict[str, Any]) -> str:
    """Markdown: one row per training arm; the steps listed seed by seed."""
    guard = report["guard"]
    lines = [
        f"Peak, final and collapse of {report['metric'].replace('_', ' ')} (%), mean ± std over seeds; steps seed by "
        "seed. Collapse: the first step after the peak below the starting model. Guard: the first step at which "
        f"entropy < {guard['entropy_fraction']} x start, length < {guard['length_fraction']} x start or repetition "
        f"> {guard['max_repetition']} (thresholds fixed before the run, relative to each seed's step 0).",
        "",
        "| arm | start | peak | peak step | final | collapse step | collapsed seeds | guard step | guard - peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, row in report["arms"].items():
        lines.append(
            f"| {arm} | {_pct(row['start'])} | {_pct(row['best'])} | {_steps(row['best_steps'])} | "
            f"{_pct(row['final'])} | {_steps(row['collapse_steps'])} | {row['collapsed_seeds']}/{len(row['seeds'])} "
            f"| {_steps(row['guard_steps'])} | {_steps(row['guard_minus_peak'])} |"
        )
    unfinished = {arm: row["unfinished_seeds"] for arm, row in report["arms"].items() if row.get("unfinished_seeds")}
    if unfinished:
        left = "; ".join(f"{arm}: {', '.join(map(str, seeds))}" for arm, seeds in unfinished.items())
        lines += ["", f"Left out, not yet measured at every step: seeds {left}."]
    return "\n".join(lines) + "\n"
