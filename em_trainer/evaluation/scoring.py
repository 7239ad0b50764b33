"""Answer extraction and grading with math-verify, with per-benchmark normalisation of the gold answers.

Gold answers come in many shapes: bare LaTeX (MATH500), a boxed expression inside a worked solution (Minerva), a list
of answers with units (OlympiadBench), floats such as ``27.0`` (AMC23), or text after ``####`` with thousands commas
(GSM8K). Each is turned into one LaTeX string and parsed *as a boxed answer*: parsing a bare ``3\\sqrt{13}`` would
stop at the first number (3).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from ..data.labels import last_boxed

DEFAULT_TIMEOUT_SECONDS = 5
# Raise it whenever a change to extraction, normalisation or grading (here, in data/labels or in the code sandbox's
# checker) can change a verdict: it is part of every eval record's identity, so records graded the old way are
# graded afresh instead of being mixed with new ones.
GRADER_VERSION = 4  # 3: predictions need an anchor, else the last number; 4: an unevaluated sum is no answer


def grader_identity() -> dict[str, Any]:
    """What grades a record: this module's grader version and the math-verify release it calls."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        math_verify = version("math-verify")
    except PackageNotFoundError:
        math_verify = None
    return {"em_trainer": GRADER_VERSION, "math_verify": math_verify}

# A prediction needs an anchor (a \boxed{}, "the final answer is", ...), as in open-r1's accuracy reward: without one,
# math-verify evaluates whatever expression it finds, so "We need to compute 43 - 15" graded as 28.
_PRED_CONFIG = [
    LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
    ExprExtractionConfig(try_extract_without_anchor=False),
]
# Without an anchor, the last number of the completion is the answer (the Qwen2.5-Math evaluation the one-shot paper
# used): a number written, never an expression evaluated.
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?")
_GOLD_CONFIG = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
# An answer is a value: an unboxed anchored match that is arithmetic on written numbers ("... the question of what
# 43 + 17 equals") restates the question, and math-verify would evaluate it. A lone fraction is a value.
_ARITHMETIC = re.compile(r"^[\s\d.,+\-*/()]+$")
_OPERATION = re.compile(r"\d\s*[-+*/]\s*[\d(]")
_FRACTION = re.compile(r"^\s*-?\d+\s*/\s*\d+\s*$")
_LATEX_OPERATORS = {"\\times": "*", "\\cdot": "*", "\\div": "/", "×": "*", "÷": "/"}


def _timeout() -> int | None:
    # math-verify times out with SIGALRM, which only the main thread may use; elsewhere (dataloader workers, TRL's
    # async reward loop, thread pools) the timeout is dropped rather than crashing.
    return DEFAULT_TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def _strip_dollars(text: str) -> str:
    text = text.strip()
    while text.startswith("$") and text.endswith("$") and len(text) > 1:
        text = text[1:-1].strip()
    return text


def _number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_SCI = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
_TRAILING_DOT_FRACTION = re.compile(r"(\d)\.(?=\s*/)")
_BARE_PERCENT = re.compile(r"(?<!\\)%")


def normalize_minerva_gold(answer: str) -> str:
    """Minerva's gold quirks: ``4.5e33`` is ``4.5\\times 10^{33}``, ``-1./3`` is ``-1/3``, a bare ``%`` is ``\\%``."""
    answer = _SCI.sub(lambda m: f"{m.group(1)}\\times 10^{{{int(m.group(2))}}}", answer)
    answer = _TRAILING_DOT_FRACTION.sub(r"\1", answer)
    return _BARE_PERCENT.sub(r"\\%", answer)


def normalize_gsm8k_gold(answer: str) -> str:
    """The number after ``####``, without thousands commas."""
    final = answer.split("####")[-1].strip()
    return final.replace(",", "").replace("$", "").strip()


def gold_answer(benchmark: str, row: dict[str, Any]) -> str:
    """The gold answer of a benchmark row as one LaTeX string (not yet boxed)."""
    if benchmark == "gsm8k":
        return normalize_gsm8k_gold(str(row["answer"]))
    if benchmark == "minerva_math":
        answer = row.get("answer")
        if answer in (None, ""):
            answer = last_boxed(str(row["solution"]))
        if answer is None:
            raise ValueError("Minerva row has no answer and no \\boxed{} in its solution.")
        return normalize_minerva_gold(answer)
    if benchmark == "olympiadbench":
        answers = row.get("final_answer") or row.get("answer")
        if isinstance(answers, str):
            answers = [answers]
        # Some answers hold several math spans ("$f(n)=n$, $g(n)=1$"): drop every dollar, not only the outer ones.
        return ", ".join(str(a).replace("$", "").strip() for a in answers)
    answer = row.get("answer")
    if answer is None:
        raise ValueError(f"{benchmark} row has no 'answer'.")
    return _strip_dollars(_number_text(answer))


def parse_gold(gold: str) -> list:
    """Parse a gold LaTeX answer as a boxed expression (never as free text, which stops at the first number)."""
    parsed = parse(f"$\\boxed{{{gold}}}$", extraction_config=_GOLD_CONFIG, parsing_timeout=_timeout())
    if not parsed:
        parsed = parse(gold, extraction_config=_GOLD_CONFIG, parsing_timeout=_timeout())
    return parsed


def is_parseable(answer: str) -> bool:
    """Whether math-verify turns the answer into a math object (not only its raw text as a fallback)."""
    return any(not isinstance(x, str) for x in parse_gold(answer))


def parse_prediction(completion: str) -> list:
    """Extract the model's final answer: the last ``\\boxed{}`` or another anchored answer ("the answer is ..."),
    else the last number written in the completion; never an unanchored expression evaluated."""
    parsed = parse(completion, extraction_config=_PRED_CONFIG, parsing_timeout=_timeout())
    # A boxed answer is the model's own final answer, kept as written: benchmark golds include unevaluated products
    # (OlympiadBench: "2021 \\cdot 505 \\cdot 337"). Outside a box, arithmetic still to be done is no answer.
    if parsed and (last_boxed(completion) is not None or not _unevaluated(str(parsed[-1]))):
        return parsed
    numbers = _LAST_NUMBER.findall(completion)
    if not numbers:
        return []
    return parse(f"${numbers[-1].replace(',', '')}$", extraction_config=_GOLD_CONFIG, parsing_timeout=_timeout())


def _unevaluated(text: str) -> bool:
    """Whether an extracted answer is arithmetic on numbers still to be done (``43 + 17``), not a value."""
    for operator, plain in _LATEX_OPERATORS.items():
        text = text.replace(operator, plain)
    return bool(_ARITHMETIC.match(text) and _OPERATION.search(text) and not _FRACTION.match(text))


@dataclass
class Grade:
    """The answer extracted from a completion and whether it matches the gold answer."""

    extracted: str | None
    correct: bool


def grade(gold: str | list, completion: str) -> Grade:
    """Grade ``completion`` against a gold LaTeX answer (or an already parsed gold)."""
    gold_parsed = parse_gold(gold) if isinstance(gold, str) else gold
    pred = parse_prediction(completion)
    extracted = str(pred[-1]) if pred else None
    if not gold_parsed or not pred:
        return Grade(extracted, False)
    try:
        ok = verify(gold_parsed, pred, timeout_seconds=_timeout())
    except Exception:  # a pathological expression is a wrong answer, never a crash of a long evaluation
        ok = False
    return Grade(extracted, bool(ok))


def _as_number(expression: object) -> float | None:
    try:
        value = complex(expression)  # sympy numbers convert; symbols and sets raise
    except (TypeError, ValueError):
        return None
    return value.real if abs(value.imag) < 1e-12 else None


def grade_with_tolerance(gold: str | list, completion: str, relative_tolerance: float = 1e-2) -> Grade:
    """``grade``, then for numeric answers a relative tolerance (physics answers are rounded measurements).

    Used for UGPhysics, whose own grader accepts numerically close values; units are not compared (the prompt names
    the unit, and math-verify drops ``\\text{...}`` around a number).
    """
    result = grade(gold, completion)
    if result.correct:
        return result
    gold_parsed = parse_gold(gold) if isinstance(gold, str) else gold
    pred = parse_prediction(completion)
    if not gold_parsed or not pred:
        return result
    want, got = _as_number(gold_parsed[0]), _as_number(pred[0])
    if want is None or got is None:
        return result
    close = abs(got - want) <= relative_tolerance * max(abs(want), 1e-12)
    return Grade(result.extracted, close)
