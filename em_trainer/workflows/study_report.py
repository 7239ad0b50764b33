"""Tables and plots of a study's results JSON: the text of ``docs/results.md`` is generated here, never typed.

``render_report(results)`` gives the Markdown tables; ``tests/test_results_doc.py`` fails when the tables in
``docs/results.md`` are not what this renders from ``benchmarks/results/replication*.json``. ``plot_study`` draws
accuracy and entropy against the step with a band of one standard deviation over seeds, and min/max whiskers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .study import METRICS

LABELS = {
    "greedy_accuracy": "greedy acc. (%)",
    "sampled_accuracy": "sampled acc. (%)",
    "entropy": "entropy (nats)",
    "skewness": "logit skewness",
    "mean_length": "length (tokens)",
    "cut_share": "cut at limit (%)",
}
PERCENT = {"greedy_accuracy", "sampled_accuracy", "cut_share"}
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
        "**Every arm** (training arms at the paper's step 10 and at the last step):",
        "",
        *_header(),
    ]
    last = str(max(study["steps"]))
    for name in decode_arms:
        lines.append(_row(name, aggregate.get(name, {}), "0"))
    for name in train_arms:
        for step in dict.fromkeys(s for s in ("10", last) if s in aggregate.get(name, {})):
            lines.append(_row(name, aggregate[name], step))
    for name in train_arms:
        lines += ["", f"**{name}** over the steps:", "", *_header()]
        steps = aggregate.get(name, {})
        for step in sorted(steps, key=int):
            lines.append(_row(name, steps, step))
    wall = ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in results["wall_seconds"].items())
    lines += ["", f"Wall time (summed over resumed runs): {wall}."]
    return "\n".join(lines) + "\n"


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
    """Greedy accuracy, sampled accuracy and entropy against the step, per training arm, with seed bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study, aggregate = results["study"], results["aggregate"]
    train_arms = [name for name, arm in study["arms"].items() if arm["kind"] == "train"]
    panels = ("greedy_accuracy", "sampled_accuracy", "entropy")
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for axis, metric in zip(axes, panels, strict=True):
        for name in train_arms:
            steps = sorted(aggregate.get(name, {}), key=int)
            xs = [int(s) for s in steps if metric in aggregate[name][s]]
            stats = [aggregate[name][str(x)][metric] for x in xs]
            if not xs:
                continue
            mean = [s["mean"] for s in stats]
            low = [s["mean"] - s["std"] for s in stats]
            high = [s["mean"] + s["std"] for s in stats]
            line = axis.plot(xs, mean, marker="o", label=name)[0]
            axis.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
        for name in [n for n, a in study["arms"].items() if a["kind"] == "decode"]:
            stats = aggregate.get(name, {}).get("0", {}).get(metric)
            if stats:
                axis.axhline(stats["mean"], linestyle="--", linewidth=1, label=f"{name} (decoding)")
        axis.set_xlabel("optimizer step")
        axis.set_title(LABELS[metric])
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
