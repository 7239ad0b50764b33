"""Final answers grouped by mathematical equivalence: what label-free selection and the answer-level rewards share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .scoring import grade, parse_prediction


def extract_answer(completion: str) -> str | None:
    """The completion's final answer (its last ``\\boxed{}``, else its last expression), or None."""
    parsed = parse_prediction(completion)
    return str(parsed[-1]) if parsed else None


def same_answer(a: str, b: str) -> bool:
    """Whether two extracted answers are the same mathematical object (math-verify), e.g. ``1/2`` and ``0.5``."""
    return a == b or grade(f"{a}", f"$\\boxed{{{b}}}$").correct


def cluster_answers(
    extracted: Sequence[str | None], same: Callable[[str, str], bool] | None = None
) -> list[list[int]]:
    """The indices of equal answers, one list per distinct answer, in order of first appearance; a sample with no
    answer (None) is in no cluster. Each answer joins the first cluster whose first answer it equals."""
    same = same or same_answer
    clusters: list[tuple[str, list[int]]] = []
    for i, answer in enumerate(extracted):
        if answer is None:
            continue
        for representative, members in clusters:
            if same(representative, answer):
                members.append(i)
                break
        else:
            clusters.append((answer, [i]))
    return [members for _, members in clusters]
