"""Write the study's tables into docs/results.md (and its plots beside it) from benchmarks/results/replication*.json.

    python benchmarks/replication_report.py          # after `em-trainer sweep --config .../study.yaml [--quick]`

The tables are rendered by em_trainer.workflows.study_report; tests/test_results_doc.py checks the page against the
JSON, so an edited number or a rerun without regenerating fails the suite.
"""

from __future__ import annotations

import json
from pathlib import Path

from em_trainer.workflows.study_report import embed, plot_study, render_report

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"


def main() -> None:
    document = DOC.read_text(encoding="utf-8")
    for path in sorted((ROOT / "benchmarks" / "results").glob("replication*.json")):
        results = json.loads(path.read_text(encoding="utf-8"))
        document = embed(document, path.stem, render_report(results))
        plot = plot_study(results, ROOT / "docs" / "img" / f"{path.stem}.png")
        print(f"{path.name}: tables embedded, plot {plot.relative_to(ROOT)}")
    DOC.write_text(document, encoding="utf-8")


if __name__ == "__main__":
    main()
