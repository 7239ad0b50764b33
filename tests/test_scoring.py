"""Grading: a correct boxed answer verifies on every row of every official benchmark file; a wrong one does not."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from em_trainer.evaluation import BENCHMARKS, load_benchmark
from em_trainer.evaluation.scoring import gold_answer, grade, last_boxed, normalize_minerva_gold, parse_gold

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "benchmarks"
DATA_DIR = DATA if DATA.exists() else FIXTURES
FILE_BENCHMARKS = ["math500", "minerva_math", "olympiadbench", "amc23", "aime24", "gsm8k"]


def wrong_answer(gold: str, other_golds: list[str]) -> str:
    """A different row's gold that is not the same value, else the gold with a digit changed."""
    gold_parsed = parse_gold(gold)
    for other in other_golds:
        if other.replace(" ", "") != gold.replace(" ", "") and not grade(gold_parsed, f"$\\boxed{{{other}}}$").correct:
            return other
    raise AssertionError(f"no distinct wrong answer for {gold!r}")


@pytest.mark.parametrize("benchmark", FILE_BENCHMARKS)
def test_boxed_gold_verifies_and_a_wrong_answer_does_not(benchmark):
    """Cost (up to 30 s for Minerva, some of whose golds make math-verify's comparison time out): every gold answer of
    the official benchmark files is graded against itself and against a wrong answer; a subset would miss the
    one gold that fails to parse."""
    rows = load_benchmark(benchmark, data_dir=str(DATA_DIR))
    assert rows, benchmark
    golds = [row["gold"] for row in rows]
    failures, false_positives = [], []
    for i, row in enumerate(rows):
        gold = parse_gold(row["gold"])
        assert gold, f"{benchmark} row {i}: gold {row['gold']!r} does not parse"
        if not grade(gold, f"Some reasoning first. The final answer is $\\boxed{{{row['gold']}}}$.").correct:
            failures.append((i, row["gold"]))
        # Another row's answer (skipping any with the same value): must not verify.
        others = golds[i + 1 :] + golds[:i]
        wrong = wrong_answer(row["gold"], others[:20])
        if grade(gold, f"The final answer is $\\boxed{{{wrong}}}$.").correct:
            false_positives.append((i, row["gold"], wrong))
    assert not failures, f"{benchmark}: {len(failures)} correct answers rejected, e.g. {failures[:5]}"
    assert not false_positives, f"{benchmark}: wrong answers accepted: {false_positives[:5]}"


def test_gold_quirks():
    # Bare gold would parse to its first number; wrapped as boxed it keeps the whole expression.
    assert grade("3\\sqrt{13}", "$\\boxed{3\\sqrt{13}}$").correct
    assert not grade("3\\sqrt{13}", "$\\boxed{3}$").correct
    assert normalize_minerva_gold("4.5e33") == "4.5\\times 10^{33}"
    assert grade(normalize_minerva_gold("4.5e33"), "$\\boxed{4.5 \\times 10^{33}}$").correct
    assert normalize_minerva_gold("-1./3") == "-1/3"
    assert normalize_minerva_gold("50%") == "50\\%"
    assert gold_answer("amc23", {"answer": 27.0}) == "27"
    assert gold_answer("gsm8k", {"answer": "so 1,234 in all\n#### 1,234"}) == "1234"
    assert grade(gold_answer("gsm8k", {"answer": "#### 1,234"}), "The answer is \\boxed{1,234}").correct
    assert gold_answer("olympiadbench", {"final_answer": ["$3$", "$5$"]}) == "3, 5"
    assert last_boxed("a \\boxed{x^{2}} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert last_boxed("nothing here") is None


def test_grading_works_off_the_main_thread():
    results = []
    thread = threading.Thread(target=lambda: results.append(grade("\\frac{1}{2}", "so $\\boxed{0.5}$").correct))
    thread.start()
    thread.join()
    assert results == [True]


def test_arithmetic_benchmark_is_deterministic_and_exact():
    rows = load_benchmark("arithmetic")
    assert len(rows) == 100 and rows == load_benchmark("arithmetic")
    for row in rows[:20]:
        numbers = [int(x) for x in __import__("re").findall(r"\d+", row["problem"])]
        a, b = numbers
        assert int(row["gold"]) in (a + b, a - b) and int(row["gold"]) >= 0
        assert grade(row["gold"], f"\\boxed{{{row['gold']}}}").correct


def test_fixtures_match_the_official_layout():
    for name in FILE_BENCHMARKS:
        path = FIXTURES / name / "test.jsonl"
        assert path.is_file(), path
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows and BENCHMARKS[name].hub_id


@pytest.mark.parametrize(
    "gold, completion, correct",
    [
        ("28", "We need to compute 43 - 15", False),  # restating the question is not answering it
        ("28", "43 - 15 = 28", True),  # no anchor: the last number written
        ("28", "The final answer is 28.", True),
        ("28", "\\boxed{28}, not 43 - 15", True),
        ("1000", "The total is 1,000 dollars", True),
        ("3", "x = 3 and then 4 apples", False),
    ],
)
def test_a_prediction_needs_an_anchor_or_is_the_last_number(gold, completion, correct):
    """Before, math-verify evaluated any expression it found: "We need to compute 43 - 15" graded as 28. Now as in
    open-r1 (an anchor) and the Qwen2.5-Math evaluation (else the last number)."""
    assert grade(gold, completion).correct is correct


def test_every_hand_labelled_completion_gets_the_verdict_a_person_gave():
    """tests/data/math_grading_corpus.jsonl: restated questions, several boxes, truncation, units, thousands
    separators, trailing text, each with the verdict written by hand. The previous grader credited three of them
    (it evaluated "We need to compute 43 - 15" as 28); benchmarks/grader_agreement.py compares the other graders."""
    corpus = Path(__file__).parent / "data" / "math_grading_corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 25 and {row["correct"] for row in rows} == {True, False}
    wrong = [row["case"] for row in rows if grade(row["gold"], row["completion"]).correct != row["correct"]]
    assert wrong == []
