"""Label-free answer-level rewards and the controls of "Spurious Rewards", in TRL's reward signature.

Each is a plain function ``f(prompts, completions, **kwargs) -> list[float]``, so it works with EMTrainer's EM-RL and
with TRL's own ``GRPOTrainer(reward_funcs=[...])``. The answer-level rewards compare the completions of one prompt
with each other: a group is the completions whose prompt is the same (TRL repeats each prompt ``num_generations``
times in a row). With several processes, a group must not be split between them: TRL's sampler keeps a prompt's
generations on one process when ``num_generations`` divides each process's generation batch.

- :func:`semantic_entropy_reward` (EMPO, arXiv 2504.05812): the G answers of a group clustered by math-verify
  equivalence; each completion is rewarded with its cluster's share of the group; no answer, 0. Maximising it
  lowers the entropy of the answer distribution (its semantic entropy).
- :func:`majority_vote_reward` (TTRL, arXiv 2504.16084): 1 when the completion's answer equals the group's majority
  answer (the pseudo-label), else 0; ties go to the answer seen first; no answer, 0.
- :func:`random_reward` and :func:`format_reward` (Spurious Rewards, arXiv 2506.10947): the controls. Random: 1 with
  probability ``gamma`` (0.5), independent of the text, reproducible from a seed. Format: 1 when the completion has
  a non-empty ``\\boxed{}``, whatever is in it.

RENT (arXiv 2505.22660) is EM-RL's ``token`` reward (minus the mean token entropy): ``em_reward="token"``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ..data.labels import last_boxed
from .answer_clusters import cluster_answers, extract_answer
from .rewards import completion_text


def _groups(prompts: Sequence[Any] | None, count: int) -> list[list[int]]:
    """Indices of the completions of each prompt, in order; without prompts, one group of all."""
    if prompts is None:
        return [list(range(count))]
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(repr(prompt), []).append(i)
    return list(groups.values())


def semantic_entropy_reward(completions: list, prompts: list | None = None, **kwargs: Any) -> list[float]:
    """Each completion's answer cluster's share of its prompt's group (EMPO); 0 without an answer."""
    answers = [extract_answer(completion_text(c)) for c in completions]
    rewards = [0.0] * len(completions)
    for group in _groups(prompts, len(completions)):
        for cluster in cluster_answers([answers[i] for i in group]):
            for member in cluster:
                rewards[group[member]] = len(cluster) / len(group)
    return rewards


def majority_vote_reward(completions: list, prompts: list | None = None, **kwargs: Any) -> list[float]:
    """1 when the completion's answer equals its group's majority answer (TTRL's pseudo-label), else 0."""
    answers = [extract_answer(completion_text(c)) for c in completions]
    rewards = [0.0] * len(completions)
    for group in _groups(prompts, len(completions)):
        clusters = cluster_answers([answers[i] for i in group])
        if clusters:
            for member in max(clusters, key=len):  # max keeps the first of equally large clusters
                rewards[group[member]] = 1.0
    return rewards


def format_reward(completions: list, **kwargs: Any) -> list[float]:
    """1 when the completion has a ``\\boxed{...}`` with something in it (the last one counts), else 0."""
    rewards = []
    for completion in completions:
        boxed = last_boxed(completion_text(completion))
        rewards.append(1.0 if boxed is not None and boxed.strip() else 0.0)
    return rewards


def make_random_reward(seed: int = 0, gamma: float = 0.5):
    """A reward that is 1 with probability ``gamma``, drawn from a hash of (seed, optimizer step, position in the
    batch): independent of the completion's text, reproducible, different at every step."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma}: a probability, in [0, 1].")

    def random_reward(completions: list, trainer_state: Any = None, **kwargs: Any) -> list[float]:
        step = getattr(trainer_state, "global_step", 0)
        rewards = []
        for i in range(len(completions)):
            digest = hashlib.sha256(f"{seed}:{step}:{i}".encode()).digest()
            rewards.append(1.0 if int.from_bytes(digest[:8], "big") / 2**64 < gamma else 0.0)
        return rewards

    random_reward.__name__ = "random_reward"
    return random_reward


random_reward = make_random_reward()
