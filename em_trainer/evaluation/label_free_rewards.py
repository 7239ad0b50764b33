"""Label-free answer-level rewards and the controls of "Spurious Rewards", in TRL's reward signature.

Each is a plain function ``f(prompts, completions, **kwargs) -> list[float]``, so it works with EMTrainer's EM-RL and
with TRL's own ``GRPOTrainer(reward_funcs=[...])``. The answer-level rewards compare the completions of one prompt
with each other: a group is the completions whose prompt is the same (TRL repeats each prompt ``num_generations``
times in a row). With several processes TRL hands each process a slice of the generation batch, and a group is
often spread over them (EMConfig's one-shot layout always spreads it: one prompt, ``num_generations`` = the whole
step). Called by a trainer (TRL passes ``trainer_state``) in a distributed run, these rewards therefore gather the
batch from every process (accelerate's ``gather_object``; every process calls the reward at the same point) and
return this process's slice of what one process holding the whole batch would return. Called on its own, a reward
sees only what it is given.

- :func:`semantic_entropy_reward` (EMPO, arXiv 2504.05812): the G answers of a group clustered by math-verify
  equivalence; each completion is rewarded with its cluster's share of the group; no answer, 0. Maximising it
  lowers the entropy of the answer distribution (its semantic entropy).
- :func:`majority_vote_reward` (TTRL, arXiv 2504.16084): 1 when the completion's answer equals the group's majority
  answer (the pseudo-label), else 0; ties go to the answer seen first; no answer, 0.
- :func:`random_reward` and :func:`format_reward` (Spurious Rewards, arXiv 2506.10947): the controls. Random: 1 with
  probability ``gamma`` (0.5), independent of the text, reproducible from a seed; a coin is drawn for each position
  of the whole batch (so processes draw different coins, and N processes draw one process's coins) and each call of
  a step (several generation batches per optimizer step draw new coins). Format: 1 when the completion has
  a non-empty ``\\boxed{}``, whatever is in it.

RENT (arXiv 2505.22660) is EM-RL's ``token`` reward (minus the mean token entropy): ``em_reward="token"``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..data.labels import last_boxed
from .answer_clusters import cluster_answers, extract_answer
from .rewards import completion_text


@dataclass
class _BatchView:
    """The batch a reward call is part of: every process's completions and prompts, and where this call's are."""

    completions: list
    prompts: list | None
    offset: int  # index of this call's first completion in the whole batch

    def local(self, values: list[float], count: int) -> list[float]:
        return values[self.offset : self.offset + count]


def _whole_batch(completions: list, prompts: list | None, trainer_state: Any) -> _BatchView:
    """The whole batch across processes when a trainer calls the reward in a distributed run, else this call's."""
    if trainer_state is None:
        return _BatchView(list(completions), None if prompts is None else list(prompts), 0)
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1:
        return _BatchView(list(completions), None if prompts is None else list(prompts), 0)
    from accelerate.utils import gather_object

    parts = gather_object([(list(completions), None if prompts is None else list(prompts))])
    offset = sum(len(part[0]) for part in parts[: state.process_index])
    all_prompts = None if any(part[1] is None for part in parts) else [p for part in parts for p in part[1]]
    return _BatchView([c for part in parts for c in part[0]], all_prompts, offset)


def _groups(prompts: Sequence[Any] | None, count: int) -> list[list[int]]:
    """Indices of the completions of each prompt, in order; without prompts, one group of all."""
    if prompts is None:
        return [list(range(count))]
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(repr(prompt), []).append(i)
    return list(groups.values())


def semantic_entropy_reward(
    completions: list, prompts: list | None = None, trainer_state: Any = None, **kwargs: Any
) -> list[float]:
    """Each completion's answer cluster's share of its prompt's group (EMPO); 0 without an answer."""
    batch = _whole_batch(completions, prompts, trainer_state)
    return batch.local(_semantic_entropy(batch.completions, batch.prompts), len(completions))


def _semantic_entropy(completions: list, prompts: list | None) -> list[float]:
    answers = [extract_answer(completion_text(c)) for c in completions]
    rewards = [0.0] * len(completions)
    for group in _groups(prompts, len(completions)):
        for cluster in cluster_answers([answers[i] for i in group]):
            for member in cluster:
                rewards[group[member]] = len(cluster) / len(group)
    return rewards


def majority_vote_reward(
    completions: list, prompts: list | None = None, trainer_state: Any = None, **kwargs: Any
) -> list[float]:
    """1 when the completion's answer equals its group's majority answer (TTRL's pseudo-label), else 0."""
    batch = _whole_batch(completions, prompts, trainer_state)
    return batch.local(_majority_vote(batch.completions, batch.prompts), len(completions))


def _majority_vote(completions: list, prompts: list | None) -> list[float]:
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
    """A reward that is 1 with probability ``gamma``, drawn from a hash of (seed, optimizer step, call within the
    step, position in the whole batch): independent of the completion's text, reproducible from the seed (a resumed
    run starts a step afresh and draws that step's coins again), different at every step, at every generation batch
    of a step and at every position, whichever process holds it."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma}: a probability, in [0, 1].")
    calls = {"step": None, "count": 0}  # generation batches seen in the current step

    def random_reward(completions: list, trainer_state: Any = None, **kwargs: Any) -> list[float]:
        step = getattr(trainer_state, "global_step", 0)
        calls["count"] = calls["count"] + 1 if calls["step"] == step else 0
        calls["step"] = step
        # Only the positions are needed from the other processes: gathering the texts would cost for nothing.
        offset = _whole_batch([None] * len(completions), None, trainer_state).offset
        # The first call of a step keys its coins as before calls were counted, so one-process results stay as
        # they were measured.
        call = "" if calls["count"] == 0 else f"{calls['count']}:"
        rewards = []
        for i in range(offset, offset + len(completions)):
            digest = hashlib.sha256(f"{seed}:{step}:{call}{i}".encode()).digest()
            rewards.append(1.0 if int.from_bytes(digest[:8], "big") / 2**64 < gamma else 0.0)
        return rewards

    random_reward.__name__ = "random_reward"
    return random_reward


random_reward = make_random_reward()
