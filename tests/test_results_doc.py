"""docs/results.md shows exactly what benchmarks/results/{replication*,label_free*,ordering}.json hold (regenerate with
`python benchmarks/replication_report.py`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from em_trainer.workflows.study_report import embedded, render

ROOT = Path(__file__).resolve().parents[1]


def test_results_page_matches_the_json():
    document = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    folder = ROOT / "benchmarks" / "results"
    studies = [*folder.glob("replication*.json"), *folder.glob("label_free*.json"), *folder.glob("ordering.json")]
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
