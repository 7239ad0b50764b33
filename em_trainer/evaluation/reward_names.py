"""Reward functions by name, for ``em-trainer train --reward_funcs`` (TRL's ``grpo.py`` takes names the same way).

A name is one of :data:`REWARD_NAMES` or a dotted import path (``my_lib.rewards.custom``), as in TRL's script. The
random control is seeded with the run's seed, so two seeds of a study draw different coins and a rerun draws the same.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .label_free_rewards import format_reward, majority_vote_reward, make_random_reward, semantic_entropy_reward
from .rewards import accuracy_reward

# name -> (what it rewards, the dataset column it needs or None)
REWARD_NAMES: dict[str, tuple[str, str | None]] = {
    "accuracy": ("1 when the answer verifies against the row's gold `answer` (math-verify)", "answer"),
    "semantic_entropy": ("the share of the group whose answer is equivalent (EMPO)", None),
    "majority_vote": ("1 when the answer equals the group's majority answer (TTRL)", None),
    "format": ("1 when the completion has a non-empty \\boxed{} (Spurious Rewards' control)", None),
    "random": ("1 with probability 0.5, independent of the text, seeded (Spurious Rewards' control)", None),
}


class RewardNameError(ValueError):
    """A reward name that names nothing; the message lists the names."""


def reward_functions(names: list[str], seed: int) -> list[Callable[..., Any]]:
    """The functions of ``names``, in order; a name that is neither known nor importable is refused in one line."""
    if len(set(names)) != len(names):
        raise RewardNameError(f"reward_funcs={names} names a reward twice; weight it with reward_weights instead.")
    functions = []
    for name in names:
        if name == "accuracy":
            functions.append(accuracy_reward)
        elif name == "semantic_entropy":
            functions.append(semantic_entropy_reward)
        elif name == "majority_vote":
            functions.append(majority_vote_reward)
        elif name == "format":
            functions.append(format_reward)
        elif name == "random":
            functions.append(make_random_reward(seed=seed))
        elif "." in name:
            functions.append(_imported(name))
        else:
            raise RewardNameError(
                f"reward_funcs: unknown reward '{name}'; use one of {', '.join(REWARD_NAMES)} or a dotted import "
                "path (my_lib.rewards.custom_reward)."
            )
    return functions


def required_columns(names: list[str]) -> dict[str, str]:
    """The dataset column each named reward needs: ``{name: column}``."""
    return {name: REWARD_NAMES[name][1] for name in names if name in REWARD_NAMES and REWARD_NAMES[name][1]}


def _imported(path: str) -> Callable[..., Any]:
    module_path, attribute = path.rsplit(".", 1)
    try:
        function = getattr(importlib.import_module(module_path), attribute)
    except (ImportError, AttributeError) as error:
        raise RewardNameError(f"reward_funcs: cannot import '{path}' ({error}).") from None
    if not callable(function):
        raise RewardNameError(f"reward_funcs: '{path}' is not a function.")
    return function
