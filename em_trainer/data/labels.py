"""Where a row keeps its problem and its answer: the column names of the common pools, and boxed answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PROBLEM_COLUMNS = ("problem", "question", "prompt")
ANSWER_COLUMNS = ("answer", "final_answer", "ground_truth")
SOLUTION_COLUMNS = ("solution",)  # NuminaMath-style pools: the answer is the last \boxed{} of the solution


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces matched; ``None`` if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        rest = text[start:].split("$")[0].split()
        return rest[1] if len(rest) > 1 else None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i]
    return None


def pick_column(row: dict[str, Any], column: str | None, candidates: Sequence[str]) -> str | None:
    """``column`` if given, else the first of ``candidates`` that the row holds with a non-empty value."""
    names = [column] if column else list(candidates)
    return next((c for c in names if c in row and row[c] not in (None, "", [])), None)


def pool_answer(row: dict[str, Any], answer_column: str | None = None) -> str | None:
    """The label of a pool row: an answer column (DeepScaleR style) or the last boxed of a solution (NuminaMath)."""
    column = pick_column(row, answer_column, ANSWER_COLUMNS)
    if column is not None:
        value = row[column]
        if isinstance(value, dict):  # verl-style {"ground_truth": ...}
            value = value.get("ground_truth")
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return None if value is None else str(value).strip().strip("$")
    if answer_column is None:
        solution = pick_column(row, None, SOLUTION_COLUMNS)
        if solution is not None:
            return last_boxed(str(row[solution]))
    return None
