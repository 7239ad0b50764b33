"""What the EM-RL reward reads: the token ids of the current rollout, and the policy forward TRL already ran on it.

TRL's ``GRPOTrainer._generate_and_score_completions`` calls, in this order: ``_generate`` (the rollout), then, when
it needs old log-probabilities, one no-grad forward of the policy on the rollout, then the reference forward when
``beta != 0``, then the reward functions. The EM reward needs the policy's log-probabilities and entropies on the
rollout; when TRL's old-log-prob forward runs, the reward reuses it instead of running its own. This object holds
that state between the calls; ``tests/test_em_rl.py::test_trl_call_order`` pins the order it relies on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PolicyForward:
    """The inputs and outputs of one no-grad policy forward over a rollout."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    logps: torch.Tensor
    entropies: torch.Tensor


class RolloutStash:
    """The current rollout's token ids, and at most one reusable policy forward over it."""

    def __init__(self) -> None:
        self.prompt_ids: list | None = None
        self.completion_ids: list | None = None
        self.forward: PolicyForward | None = None
        self._open = False  # between a rollout and the reward that reads it

    def new_rollout(self, prompt_ids: list, completion_ids: list) -> None:
        """Called right after generation: forget the previous rollout and its forward."""
        self.prompt_ids, self.completion_ids, self.forward = prompt_ids, completion_ids, None
        self._open = True

    @property
    def awaiting_forward(self) -> bool:
        """Whether a rollout is held and no policy forward was kept for it yet."""
        return self._open and self.forward is None

    def keep_forward(self, forward: PolicyForward) -> None:
        self.forward = forward

    def ids(self) -> tuple[list, list]:
        if self.prompt_ids is None or self.completion_ids is None:
            raise RuntimeError("The EM reward was called before any rollout was generated.")
        return self.prompt_ids, self.completion_ids

    def take_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PolicyForward | None:
        """The kept forward if it was run on exactly these inputs; the stash is emptied either way (used once)."""
        forward, self.forward, self._open = self.forward, None, False
        if forward is None:
            return None
        same = torch.equal(forward.input_ids, input_ids) and torch.equal(forward.attention_mask, attention_mask)
        return forward if same else None
