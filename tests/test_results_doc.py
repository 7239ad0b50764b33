"""docs/results.md shows exactly what benchmarks/results/{replication*,label_free*,tradeoffs*,ordering}.json hold
(regenerate with `python benchmarks/replication_report.py`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from em_trainer.workflows.study_report import embedded, render

ROOT = Path(__file__).resolve().parents[1]


def test_results_page_matches_the_json():
    document = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    folder = ROOT / "benchmarks" / "results"
    studies = [*folder.glob("ordering.json")]
    for study in ("replication", "label_free", "tradeoffs"):
        studies += folder.glob(f"{study}*.json")
    files = {path.stem: path for path in studies}
    assert {"replication_quick", "label_free_quick", "label_free"} <= set(files), "the studies' JSON is committed"
    blocks = re.findall(r"<!-- study-report:begin (\S+) -->", document)
    for name in blocks:
        text = embedded(document, name)
        if name not in files:
            assert text == "", f"docs/results.md shows a '{name}' table with no JSON behind it"
            continue
        results = json.loads(files[name].read_text(encoding="utf-8"))
        assert text == render(name, results), f"docs/results.md's '{name}' tables differ from {files[name].name}"
    assert set(files) <= set(blocks), "every results JSON has its block in docs/results.md"


def test_study_plots_have_integer_steps_bands_inside_0_100_and_the_legend_off_the_data():
    """Before: fractional step ticks, seed bands below 0%, the legend over the lines (docs/img/label_free.png)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import LineCollection

    from em_trainer.workflows.study_report import study_figure

    results = json.loads((ROOT / "benchmarks" / "results" / "label_free.json").read_text())
    figure = study_figure(results)
    steps = {int(s) for arm in results["aggregate"].values() for s in arm}
    for axis in figure.axes:
        assert {float(x) for x in axis.get_xticks()} <= {float(s) for s in steps}, axis.get_title()
        if "%" in axis.get_title():
            for bars in (c for c in axis.collections if isinstance(c, LineCollection)):
                for segment in bars.get_segments():
                    assert all(0.0 <= y <= 100.0 for _, y in segment), axis.get_title()
    assert not any(axis.get_legend() for axis in figure.axes) and len(figure.legends) == 1
    figure.canvas.draw()
    legend = figure.legends[0].get_window_extent()
    assert not any(legend.overlaps(axis.get_window_extent()) for axis in figure.axes), "the legend covers a panel"
