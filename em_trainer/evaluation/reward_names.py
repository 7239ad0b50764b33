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

# name -> (the function, built with the run's seed; the dataset column it needs, or None)
REWARD_NAMES: dict[str, tuple[Callable[[int], Callable[..., Any]], str | None]] = {
    "accuracy": (lambda seed: accuracy_reward, "answer"),  # gold answer, math-verify
    "semantic_entropy": (lambda seed: semantic_entropy_reward, None),  # EMPO
    "majority_vote": (lambda seed: majority_vote_reward, None),  # TTRL
    "format": (lambda seed: format_reward, None),  # Spurious Rewards' control
    "random": (lambda seed: make_random_reward(seed=seed), None),  # Spurious Rewards' control, seeded
}


class RewardNameError(ValueError):
    """A reward name that names nothing; the message lists the names."""


def reward_functions(names: list[str], seed: int) -> list[Callable[..., Any]]:
    """The functions of ``names``, in order; a name that is neither known nor importable is refused in one line."""
    if len(set(names)) != len(names):
        raise RewardNameError(f"reward_funcs={names} names a reward twice; weight it with reward_weights instead.")
    functions = []
    for name in names:
        if name in REWARD_NAMES:
            functions.append(REWARD_NAMES[name][0](seed))
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
