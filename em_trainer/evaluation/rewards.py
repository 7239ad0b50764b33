"""Reward functions in TRL's signature, for GRPO after EM and for monitoring an EM run."""

from __future__ import annotations

from typing import Any

from .scoring import grade


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a list of chat messages (the last one's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        return content if isinstance(content, str) else str(content)
    return str(completion)


def accuracy_reward(completions: list, answer: list, **kwargs: Any) -> list[float | None]:
    """1.0 when the completion's final answer verifies against the row's ``answer`` with math-verify, else 0.0.

    Rows without an answer get ``None`` (TRL leaves them out of the reward statistics instead of counting a zero).
    """
    rewards: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        if gold is None or str(gold).strip() == "":
            rewards.append(None)
            continue
        rewards.append(1.0 if grade(str(gold), completion_text(completion)).correct else 0.0)
    return rewards
