"""Write the study's tables into docs/results.md (and its plots into docs/img/) from benchmarks/results/*.json.

    python benchmarks/replication_report.py   # after `em-trainer study --config .../study.yaml [--quick]` (the
                                              # replication and the label-free study), `python benchmarks/ordering.py`

The tables are rendered by em_trainer.workflows.study_report; tests/test_results_doc.py checks the page against the
JSON, so an edited number or a rerun without regenerating fails the suite.
"""

from __future__ import annotations

import json
from pathlib import Path

from em_trainer.workflows.study_report import embed, plot_logit_histograms, plot_study, plot_temperature, render

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"


def result_files() -> dict[str, Path]:
    """The results that docs/results.md shows: the two studies' (full and quick) and the ordering runs'."""
    folder = ROOT / "benchmarks" / "results"
    studies = [*folder.glob("replication*.json"), *folder.glob("label_free*.json")]
    return {path.stem: path for path in sorted([*studies, *folder.glob("ordering.json")])}


def main() -> None:
    document = DOC.read_text(encoding="utf-8")
    for name, path in result_files().items():
        results = json.loads(path.read_text(encoding="utf-8"))
        document = embed(document, name, render(name, results))
        print(f"{path.name}: tables embedded")
        if name.startswith(("replication", "label_free")):
            for plot, draw in (
                ("", plot_study),
                ("_temperature", plot_temperature),
                ("_logits", plot_logit_histograms),
            ):
                written = draw(results, ROOT / "docs" / "img" / f"{name}{plot}.png")
                if written:
                    print(f"  plot {written.relative_to(ROOT)}")
    DOC.write_text(document, encoding="utf-8")


if __name__ == "__main__":
    main()
