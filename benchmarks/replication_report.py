"""Write the study's tables into docs/results.md (and its plots into docs/img/) from benchmarks/results/*.json.

    python benchmarks/replication_report.py   # after `em-trainer study --config .../study.yaml [--quick]` (the
                                              # replication, label-free and trade-offs studies),
                                              # `python benchmarks/ordering.py`

The tables are rendered by em_trainer.workflows.study_report; tests/test_results_doc.py checks the page against the
JSON, so an edited number or a rerun without regenerating fails the suite.
"""

from __future__ import annotations

import json
from pathlib import Path

from em_trainer.workflows.study_report import (
    embed,
    plot_logit_histograms,
    plot_pass_at_k,
    plot_study,
    plot_temperature,
    render,
)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
STUDIES = ("replication", "label_free", "tradeoffs")


def result_files() -> dict[str, Path]:
    """The results that docs/results.md shows: the three studies' (full and quick) and the ordering runs'."""
    folder = ROOT / "benchmarks" / "results"
    studies = [path for study in STUDIES for path in folder.glob(f"{study}*.json")]
    return {path.stem: path for path in sorted([*studies, *folder.glob("ordering.json")])}


def main() -> None:
    document = DOC.read_text(encoding="utf-8")
    for name, path in result_files().items():
        results = json.loads(path.read_text(encoding="utf-8"))
        document = embed(document, name, render(name, results))
        print(f"{path.name}: tables embedded")
        if name.startswith(STUDIES):
            for plot, draw in (
                ("", plot_study),
                ("_temperature", plot_temperature),
                ("_logits", plot_logit_histograms),
                ("_pass_at_k", plot_pass_at_k),
            ):
                written = draw(results, ROOT / "docs" / "img" / f"{name}{plot}.png")
                if written:
                    print(f"  plot {written.relative_to(ROOT)}")
    DOC.write_text(document, encoding="utf-8")


if __name__ == "__main__":
    main()
