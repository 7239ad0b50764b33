"""Tables and plots of a study's results JSON: the text of ``docs/results.md`` is generated here, never typed.

``render(name, results)`` gives the Markdown tables; ``tests/test_results_doc.py`` fails when the tables in
``docs/results.md`` are not what this renders from ``benchmarks/results/{replication*,ordering}.json``.
``plot_study`` draws accuracy and entropy against the step with a band of one standard deviation over seeds,
``plot_temperature`` accuracy against the sampling temperature, ``plot_logit_histograms`` the raw-logit
distribution of the base model and of each training arm at step 10.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .peak_collapse import peak_and_collapse, render_peak_collapse
from .study import METRICS, SPREAD_METRICS, summarize

LABELS = {
    "greedy_accuracy": "greedy acc. (%)",
    "sampled_accuracy": "sampled acc. (%)",
    "entropy": "entropy (nats)",
    "skewness": "logit skewness",
    "mean_length": "length (tokens)",
    "cut_share": "cut at limit (%)",
}
SPREAD_LABELS = {
    "pass_at_1": "pass@1 (%)",
    "pass_at_n": "pass@n (%)",
    "majority_accuracy": "maj@n (%)",
    "distinct_answers": "distinct answers",
    "answer_entropy": "answer entropy (nats)",
    "ece": "ECE",
}
PERCENT = {"greedy_accuracy", "sampled_accuracy", "cut_share", "pass_at_1", "pass_at_n", "majority_accuracy"}
BEGIN, END = "<!-- study-report:begin {name} -->", "<!-- study-report:end {name} -->"


def _cell(stats: dict[str, float] | None, metric: str) -> str:
    if not stats:
        return "n/a"
    scale = 100.0 if metric in PERCENT else 1.0
    digits = 1 if metric in PERCENT or metric == "mean_length" else 3
    mean, std, low, high = (stats[k] * scale for k in ("mean", "std", "min", "max"))
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _row(label: str, steps: dict[str, dict[str, Any]], step: str) -> str:
    stats = steps.get(step, {})
    seeds = max((s["seeds"] for s in stats.values()), default=0)
    cells = " | ".join(_cell(stats.get(metric), metric) for metric in METRICS)
    return f"| {label} | {step} | {seeds} | {cells} |"


def _header() -> list[str]:
    names = " | ".join(LABELS[m] for m in METRICS)
    return [f"| arm | step | seeds | {names} |", "| --- " * (3 + len(METRICS)) + "|"]


def render_report(results: dict[str, Any]) -> str:
    """Markdown: set-up, a headline table (every arm) and one table per training arm over the steps."""
    study, aggregate = results["study"], results["aggregate"]
    train_arms = [name for name, arm in study["arms"].items() if arm["kind"] == "train"]
    decode_arms = [name for name, arm in study["arms"].items() if arm["kind"] == "decode"]
    prompt = results["selected_prompt"]
    text = prompt.get("problem") or prompt.get("prompt")
    if isinstance(text, list):
        text = text[-1]["content"]
    lines = [
        f"Seeds: {study['seeds']}. Test set: the first {study['test_size']} problems of `arithmetic`. Training pool: "
        f"{study['pool_size']} problems (seed {study['pool_seed']}), disjoint from the test set. Selected training "
        f"prompt: “{text}”. Cells: mean ± standard deviation over seeds [min, max].",
        "",
        "**Every arm** (training arms at the paper's step 10 and at the last step):"
        if 10 in study["steps"] and max(study["steps"]) != 10
        else f"**Every arm** (training arms at the last step, {max(study['steps'])}):",
        "",
        *_header(),
    ]
    last = str(max(study["steps"]))
    for name in decode_arms:
        lines.append(_row(name, aggregate.get(name, {}), "0"))
    for name in train_arms:
        for step in dict.fromkeys(s for s in ("10", last) if s in aggregate.get(name, {})):
            lines.append(_row(name, aggregate[name], step))
    if train_arms:
        lines += ["", render_peak_collapse(peak_and_collapse(results)).rstrip("\n")]
    for name in train_arms:
        lines += ["", f"**{name}** over the steps:", "", *_header()]
        steps = aggregate.get(name, {})
        for step in sorted(steps, key=int):
            lines.append(_row(name, steps, step))
    lines += _temperature_table(results)
    lines += _spread_table(results)
    wall = ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in results["wall_seconds"].items())
    lines += ["", f"Wall time (summed over resumed runs): {wall}."]
    measuring: dict[str, float] = {}
    for record in results["records"]:
        measuring[record["arm"]] = measuring.get(record["arm"], 0.0) + record.get("seconds", 0.0)
    if measuring:
        # Each record's own seconds are exact whatever happened to the process around it; training is not in them.
        spent = ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in measuring.items())
        lines += ["", f"Measuring alone (the sum of every measurement's own `seconds`): {spent}."]
    return "\n".join(lines) + "\n"


def temperature_curves(results: dict[str, Any]) -> dict[tuple[str, int], dict[str, dict[str, float]]]:
    """Per (arm, step) with an accuracy-against-temperature curve: per temperature, mean/std/min/max over seeds."""
    gathered: dict[tuple[str, int], dict[str, list[float]]] = {}
    for record in results["records"]:
        for temperature, value in (record.get("accuracy_by_temperature") or {}).items():
            gathered.setdefault((record["arm"], record["step"]), {}).setdefault(temperature, []).append(value)
    return {key: {t: summarize(v) for t, v in by_temperature.items()} for key, by_temperature in gathered.items()}


def _temperature_table(results: dict[str, Any]) -> list[str]:
    # Step 0 of a training arm is the base model: one row for it, not one per arm.
    curves = {k: v for k, v in temperature_curves(results).items() if k[0] == "base" or k[1] > 0}
    if not curves:
        return []
    temperatures = sorted({t for curve in curves.values() for t in curve}, key=float)
    lines = [
        "",
        "**Accuracy against sampling temperature** (T = 0 is greedy; %):",
        "",
        "| arm | step | " + " | ".join(f"T = {t}" for t in temperatures) + " |",
        "| --- " * (2 + len(temperatures)) + "|",
    ]
    for (arm, step), curve in sorted(curves.items(), key=lambda item: (item[0][0] != "base", item[0])):
        cells = " | ".join(_cell(curve.get(t), "greedy_accuracy") for t in temperatures)
        lines.append(f"| {arm} | {step} | {cells} |")
    return lines


def _spread_table(results: dict[str, Any]) -> list[str]:
    """pass@1 against pass@n, answer diversity and calibration per arm and measured step (``measure.samples``)."""
    samples = (results["study"].get("measure") or {}).get("samples")  # results written before it have no measure
    if not samples or not any(r.get("pass_at_k") for r in results["records"]):
        return []
    aggregate, arms = results["aggregate"], results["study"]["arms"]
    n = int(samples.get("n", 32))
    lines = [
        "",
        f"**pass@k, answer diversity and calibration** (n = {n} samples of each of the first "
        f"{samples.get('problems')} test problems; pass@n is pass@{n}; ECE of the self-consistency confidence, "
        "docs/sample_metrics.md):",
        "",
        "| arm | step | seeds | " + " | ".join(SPREAD_LABELS[m] for m in SPREAD_METRICS) + " |",
        "| --- " * (3 + len(SPREAD_METRICS)) + "|",
    ]
    for name, arm in arms.items():
        steps = aggregate.get(name, {})
        shown = ["0"] if arm["kind"] == "decode" else [s for s in sorted(steps, key=int) if s != "0"]
        for step in shown:
            stats = steps.get(step, {})
            if "pass_at_1" not in stats:
                continue
            cells = " | ".join(_cell(stats.get(metric), metric) for metric in SPREAD_METRICS)
            lines.append(f"| {name} | {step} | {stats['pass_at_1']['seeds']} | {cells} |")
    return lines


def pass_at_k_curves(results: dict[str, Any]) -> dict[tuple[str, int], list[dict[str, float]]]:
    """Per (arm, step) measured with ``measure.samples``: for k = 1 ... n, pass@k's mean/std/min/max over seeds."""
    gathered: dict[tuple[str, int], list[list[float]]] = {}
    for record in results["records"]:
        if record.get("pass_at_k"):
            gathered.setdefault((record["arm"], record["step"]), []).append(record["pass_at_k"])
    return {key: [summarize(list(at_k)) for at_k in zip(*curves, strict=True)] for key, curves in gathered.items()}


def pooled_reliability(results: dict[str, Any], arm: str, step: int) -> list[list[float]]:
    """The reliability bins of (arm, step) pooled over seeds: [lower, upper, samples, mean confidence, accuracy]."""
    pooled: dict[float, list[float]] = {}
    for record in results["records"]:
        if record["arm"] != arm or record["step"] != step:
            continue
        for low, high, count, confidence, accuracy in record.get("reliability") or []:
            total = pooled.setdefault(low, [low, high, 0.0, 0.0, 0.0])
            total[2] += count
            total[3] += count * confidence
            total[4] += count * accuracy
    return [[low, high, c, conf / c, acc / c] for low, high, c, conf, acc in sorted(pooled.values()) if c]


def plot_pass_at_k(results: dict[str, Any], path: str | Path) -> Path | None:
    """Two panels: pass@k against k (log scale) for the base model and every training arm at its last step, with
    a band of one standard deviation over seeds; and the reliability diagram of the same models, pooled over seeds
    (accuracy against confidence per bin; the diagonal is perfect calibration; dot area: samples in the bin)."""
    curves = pass_at_k_curves(results)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = max(results["study"]["steps"])
    chosen = [key for key in sorted(curves) if key == ("base", 0) or key[1] == last]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, (arm, step) in enumerate(chosen):
        curve = curves[(arm, step)]
        ks = list(range(1, len(curve) + 1))
        mean = [100 * c["mean"] for c in curve]
        low = [max(0.0, 100 * (c["mean"] - c["std"])) for c in curve]
        high = [min(100.0, 100 * (c["mean"] + c["std"])) for c in curve]
        colour = f"C{index % 10}"
        label = "base" if arm == "base" else f"{arm}, step {step}"
        left.plot(ks, mean, color=colour, label=label)
        left.fill_between(ks, low, high, color=colour, alpha=0.12)
        bins = pooled_reliability(results, arm, step)
        if bins:
            total = sum(b[2] for b in bins)
            right.plot([b[3] for b in bins], [100 * b[4] for b in bins], color=colour, marker=None, linewidth=0.8)
            right.scatter([b[3] for b in bins], [100 * b[4] for b in bins], s=[400 * b[2] / total for b in bins],
                          color=colour, alpha=0.6)  # fmt: skip
    left.set_xscale("log", base=2)
    n = max(len(c) for c in curves.values())
    left.set_xticks([k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= n])
    left.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    left.set_xlabel("k (samples per problem)")
    left.set_ylabel("pass@k (%)")
    left.set_ylim(max(0.0, left.get_ylim()[0]), min(100.0, left.get_ylim()[1]))
    left.set_title("pass@k")
    right.plot([0, 1], [0, 100], color="grey", linestyle=":", linewidth=1)
    right.set_xlim(0, 1.02)
    right.set_ylim(0, 100)
    right.set_xlabel("confidence (share of samples with the same answer)")
    right.set_ylabel("accuracy in the bin (%)")
    right.set_title("reliability (pooled over seeds)")
    handles, labels = left.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.07 + 0.05 * ((len(labels) - 1) // 5), 1, 1))
    return _figure(path, figure)


def render_ordering(results: dict[str, Any]) -> str:
    """Markdown table of the ordering runs (EM then GRPO, GRPO then EM, GRPO alone) beside the base model."""
    lines = [
        f"Seeds: {results['seeds']}. Command: `{results['command']}` (config `{results['config']}`). Cells: mean ± "
        "standard deviation over seeds [min, max]; the base model's row is the study's.",
        "",
        "| order | steps | seeds | " + " | ".join(LABELS[m] for m in METRICS) + " |",
        "| --- " * (3 + len(METRICS)) + "|",
    ]
    if results.get("base"):
        lines.append(_row("base (no training)", results["base"], "0"))
    for order, steps in results["aggregate"].items():
        for step in steps:
            lines.append(_row(order, steps, step))
    seconds = [r["train_seconds"] + r["seconds"] for r in results["records"]]
    if seconds:
        lines += ["", f"Wall time: {sum(seconds) / 60:.1f} min in all ({len(seconds)} runs, training and measuring)."]
    return "\n".join(lines) + "\n"


def render(name: str, results: dict[str, Any]) -> str:
    """The block of ``docs/results.md`` for the results file ``benchmarks/results/<name>.json``."""
    return render_ordering(results) if name.startswith("ordering") else render_report(results)


def embed(document: str, name: str, report: str) -> str:
    """``document`` with the block between its ``name`` markers replaced by ``report``."""
    begin, end = BEGIN.format(name=name), END.format(name=name)
    if begin not in document or end not in document:
        raise ValueError(f"the document has no '{begin}' ... '{end}' block")
    head, rest = document.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{report}{end}{tail}"


def embedded(document: str, name: str) -> str | None:
    """The block between ``name``'s markers, or None."""
    begin, end = BEGIN.format(name=name), END.format(name=name)
    if begin not in document or end not in document:
        return None
    return document.split(begin, 1)[1].split(end, 1)[0].removeprefix("\n")


def plot_study(results: dict[str, Any], path: str | Path) -> Path:
    """Greedy accuracy, sampled accuracy and entropy against the step, per training arm (see :func:`study_figure`)."""
    return _figure(path, study_figure(results))


def study_figure(results: dict[str, Any]) -> Any:
    """One panel per question (greedy accuracy, sampled accuracy, entropy against the optimizer step): each training
    arm's mean over seeds with a bar of one standard deviation, the arms side by side at each measured step (with
    eight arms, overlapping bands hid each other), percentages kept inside [0, 100], ticks at the measured steps only,
    the decoding arms as level lines, and one legend below the panels, off the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study, aggregate = results["study"], results["aggregate"]
    train_arms = [name for name, arm in study["arms"].items() if arm["kind"] == "train"]
    decode_arms = [n for n, a in study["arms"].items() if a["kind"] == "decode"]
    panels = ("greedy_accuracy", "sampled_accuracy", "entropy")
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    measured: set[int] = set()
    for axis, metric in zip(axes, panels, strict=True):
        percent = metric in PERCENT
        scale = 100.0 if percent else 1.0  # the panel titles say %, as the tables do
        steps_all = sorted({int(s) for name in train_arms for s in aggregate.get(name, {})})
        spacing = min((b - a for a, b in zip(steps_all, steps_all[1:], strict=False)), default=1)
        width = 0.6 * spacing / max(1, len(train_arms))
        for index, name in enumerate(train_arms):
            xs = [int(s) for s in sorted(aggregate.get(name, {}), key=int) if metric in aggregate[name][s]]
            if not xs:
                continue
            measured |= set(xs)
            stats = [aggregate[name][str(x)][metric] for x in xs]
            mean = [scale * s["mean"] for s in stats]
            low = [scale * (s["mean"] - s["std"]) for s in stats]
            high = [scale * (s["mean"] + s["std"]) for s in stats]
            if percent:
                low, high = [max(0.0, v) for v in low], [min(100.0, v) for v in high]
            shifted = [x + (index - (len(train_arms) - 1) / 2) * width for x in xs]
            errors = [
                [m - lo for m, lo in zip(mean, low, strict=True)],
                [hi - m for m, hi in zip(mean, high, strict=True)],
            ]
            axis.errorbar(shifted, mean, yerr=errors, marker="o", markersize=4, capsize=2, linewidth=1.2, label=name)
        for index, name in enumerate(decode_arms):
            stats = aggregate.get(name, {}).get("0", {}).get(metric)
            if stats:
                # axhline does not advance the colour cycle: colours after the training arms', and a style each.
                colour, style = f"C{(len(train_arms) + index) % 10}", ("--", ":", "-.")[index % 3]
                axis.axhline(scale * stats["mean"], color=colour, linestyle=style, label=f"{name} (decoding)")
        axis.set_xticks(sorted(measured))
        axis.set_xlabel("optimizer step")
        axis.set_title(LABELS[metric])
        if percent:
            low_limit, high_limit = axis.get_ylim()
            axis.set_ylim(max(0.0, low_limit), min(100.0, high_limit))
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.06 + 0.05 * ((len(labels) - 1) // 5), 1, 1))
    return figure


def _figure(path: str | Path, figure: Any) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not figure.legends:  # a figure-level legend has its room reserved by the figure's own layout
        figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_temperature(results: dict[str, Any], path: str | Path) -> Path | None:
    """Accuracy against sampling temperature for the base model and each training arm, with seed bands."""
    curves = {k: v for k, v in temperature_curves(results).items() if k[0] == "base" or k[1] > 0}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 3.8))
    for (arm, step), curve in sorted(curves.items(), key=lambda item: (item[0][0] != "base", item[0])):
        temperatures = sorted(curve, key=float)
        xs = [float(t) for t in temperatures]
        mean = [100 * curve[t]["mean"] for t in temperatures]
        line = axis.plot(xs, mean, marker="o", label=f"{arm}, step {step}")[0]
        low = [max(0.0, 100 * (curve[t]["mean"] - curve[t]["std"])) for t in temperatures]
        high = [min(100.0, 100 * (curve[t]["mean"] + curve[t]["std"])) for t in temperatures]
        axis.fill_between(xs, low, high, color=line.get_color(), alpha=0.15)
    axis.set_xlabel("sampling temperature (0 = greedy)")
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(max(0.0, axis.get_ylim()[0]), min(100.0, axis.get_ylim()[1]))
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the data
    return _figure(path, figure)


def plot_logit_histograms(results: dict[str, Any], path: str | Path, step: int | None = None) -> Path | None:
    """Raw-logit densities of the base model and of each training arm at ``step`` (default: the paper's step 10, or
    the last step if the study stops earlier), one thin line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if step is None:
        step = min(10, max(results["study"]["steps"]))
    chosen = [
        r
        for r in results["records"]
        if r.get("logit_histogram") and ((r["arm"] == "base" and r["step"] == 0) or r["step"] == step)
    ]
    if not chosen:
        return None
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    colors: dict[str, str] = {}
    for record in sorted(chosen, key=lambda r: (r["arm"] != "base", r["arm"], r["seed"])):
        edges, counts = record["logit_histogram"]["edges"], record["logit_histogram"]["counts"]
        widths = [b - a for a, b in zip(edges, edges[1:], strict=False)]
        total = sum(counts) or 1
        # Empty bins are left out: a log axis has no zero.
        density = [c / total / w if c else float("nan") for c, w in zip(counts, widths, strict=True)]
        centres = [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
        name = "base" if record["arm"] == "base" else f"{record['arm']}, step {step}"
        line = axis.plot(
            centres, density, linewidth=1, color=colors.get(name), label=None if name in colors else name
        )[0]
        colors.setdefault(name, line.get_color())
    axis.set_yscale("log")
    axis.set_xlabel("raw logit")
    axis.set_ylabel("density")
    axis.legend(fontsize=7)
    return _figure(path, figure)
