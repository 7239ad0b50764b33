"""Our math verdicts against the graders the papers and TRL users rely on, on the same completions.

- ``ours``: ``em_trainer.evaluation.scoring.grade`` (an anchored answer, else the last number written).
- ``previous``: our grader before version 3 (math-verify's default extraction, which also evaluates an unanchored
  expression: "We need to compute 43 - 15" graded as 28).
- ``qwen``: the Qwen2.5-Math evaluation the one-shot EM paper used: the last ``\\boxed{}``, else the last number;
  compared with math-verify so that only the extraction differs.
- ``open-r1``: open-r1's ``accuracy_reward`` (LaTeX with an anchor, ``try_extract_without_anchor=False``, first match,
  boxed answers first).

Inputs: the hand-labelled corpus (``tests/data/math_grading_corpus.jsonl``: gold, completion, the verdict a person
gave) and any eval ``records.jsonl`` files (the completions our evaluations stored). Prints and writes a table of
verdicts per grader, agreement with the hand verdicts, and disagreements between graders.

    python benchmarks/grader_agreement.py --records outputs/eval/**/records.jsonl \\
        --output benchmarks/results/grader_agreement.json
"""

from __future__ import annotations

import argparse
import glob
import json
import re
from collections import Counter
from itertools import combinations
from pathlib import Path

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.parser import NormalizationConfig

from em_trainer.data.labels import last_boxed
from em_trainer.evaluation.scoring import grade, parse_gold

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "math_grading_corpus.jsonl"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _verify(gold: list, predicted: list) -> bool:
    if not gold or not predicted:
        return False
    try:
        return bool(verify(gold, predicted))
    except Exception:  # noqa: BLE001 - a pathological expression is a wrong answer
        return False


def previous(gold: str, completion: str) -> bool:
    config = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=True), ExprExtractionConfig()]
    return _verify(parse_gold(gold), parse(completion, extraction_config=config))


def qwen(gold: str, completion: str) -> bool:
    boxed = last_boxed(completion)
    if boxed is None:
        numbers = _NUMBER.findall(completion)
        if not numbers:
            return False
        boxed = numbers[-1].replace(",", "")
    return _verify(parse_gold(gold), parse_gold(boxed))


def open_r1(gold: str, completion: str) -> bool:
    # open-r1 also sets equations=True, which math-verify now ignores (with a warning per call).
    normalization = NormalizationConfig(
        nits=False, malformed_operators=False, basic_latex=True, boxed="all", units=True
    )
    config = [LatexExtractionConfig(normalization_config=normalization, boxed_match_priority=0,
                                    try_extract_without_anchor=False)]  # fmt: skip
    gold_parsed = parse(f"${gold}$", extraction_mode="first_match")
    return _verify(gold_parsed, parse(completion, extraction_config=config, extraction_mode="first_match"))


GRADERS = {"ours": lambda g, c: grade(g, c).correct, "previous": previous, "qwen": qwen, "open-r1": open_r1}


def table(rows: list[dict], hand_labelled: bool = False) -> dict:
    verdicts = [{name: bool(fn(row["gold"], row["completion"])) for name, fn in GRADERS.items()} for row in rows]
    report = {"completions": len(rows), "credited": {name: sum(v[name] for v in verdicts) for name in GRADERS}}
    if hand_labelled:
        report["agrees_with_hand_verdict"] = {
            name: sum(v[name] == row["correct"] for v, row in zip(verdicts, rows, strict=True)) for name in GRADERS
        }
        report["wrong_cases"] = {
            name: [row["case"] for v, row in zip(verdicts, rows, strict=True) if v[name] != row["correct"]]
            for name in GRADERS
        }
    report["disagreements"] = {f"{a} vs {b}": sum(v[a] != v[b] for v in verdicts) for a, b in combinations(GRADERS, 2)}
    examples: Counter = Counter()
    report["examples_ours_vs_previous"] = []
    for v, row in zip(verdicts, rows, strict=True):
        if v["ours"] != v["previous"] and examples[v["ours"]] < 3:
            examples[v["ours"]] += 1
            report["examples_ours_vs_previous"].append(
                {
                    "gold": row["gold"],
                    "ours": v["ours"],
                    "previous": v["previous"],
                    "completion_tail": row["completion"][-160:],
                }  # fmt: skip
            )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", nargs="*", default=[], help="eval records.jsonl files (globs allowed)")
    parser.add_argument("--output", help="JSON file to write")
    args = parser.parse_args()
    corpus = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    stored = []
    for pattern in args.records:
        for path in sorted(glob.glob(pattern, recursive=True)):
            stored += [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    report = {"hand-labelled corpus": table(corpus, hand_labelled=True)}
    if stored:
        report["stored completions"] = table([r for r in stored if isinstance(r.get("completion"), str)])
        report["stored completions"]["files"] = sorted({p for pat in args.records for p in glob.glob(pat)})
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
