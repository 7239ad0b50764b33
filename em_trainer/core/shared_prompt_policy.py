"""When the shared-prompt forward (core/shared_prompt) runs: one predicate, one first-use check, one state per run.

The same rules govern the training forward of EM-FT and the no-grad passes (TRL's old-log-prob and reference passes,
the EM-RL reward), which call the same function. The check runs once, at the first pass of a run that could use the
path, on a slice of that micro-batch (a few rows, the first completion tokens) with gradients, and every process
takes the decision together: if any process's check fails, the path is off on all of them (ranks that disagreed
would run different computations for one step). A process whose micro-batch cannot be checked (one-token prompts,
multimodal inputs) abstains; if all abstain, the check waits for the next pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .shared_prompt import distinct_prompts

# The slice of a micro-batch that the first-use check runs on: two rows of each of two prompts (a shared prompt, and a
# prefix on the wrong rows would show), and the first completion tokens, small enough to cost less than a plain step.
# On SmolLM2 at the CPU demo's shape (8 x 64, one prompt) the check took 10.3 s at 4 rows x 64 tokens and 5.6 s at
# 2 x 32; the first step, check included, 20.3 s against 21.1 s with the shared path off (and 32.9 s when the check
# ran on the whole micro-batch).
CHECK_ROWS = 2
CHECK_TOKENS = 32
ABSTAIN = "abstain"


@dataclass
class SharedPromptPolicy:
    """The run's decision about the shared-prompt forward.

    ``state`` is ``"unchecked"`` until the first-use check (``"checking"`` while it runs), then ``"on"`` or
    ``"off"``; ``reason`` says why it is off (for the whole run: ``shared_prompt_forward=False``, FSDP/DeepSpeed, an
    auxiliary loss; or the check's outcome); ``check`` holds the check's figures (gaps, tolerances, seconds, slice).
    """

    run_reason: str | None
    state: str = "unchecked"
    reason: str | None = None
    check: dict[str, Any] | None = None
    _said: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.run_reason is not None:
            self.state, self.reason = "off", self.run_reason

    def batch_reason(self, prompt_ids: torch.Tensor, other_inputs: bool, loss_reason: str | None = None) -> str | None:
        """Why these inputs take the plain path (None: the shared path may run, once checked).

        ``loss_reason`` is a reason that holds for the training loss only (e.g. its tie-sensitive token selection).
        """
        if self.state == "off":
            return self.reason
        if loss_reason is not None:
            return loss_reason
        if other_inputs:
            return "multimodal, token-type or auxiliary-loss inputs"
        if prompt_ids.size(1) < 2:
            return "one-token prompts"
        return None

    def first_time(self, reason: str) -> bool:
        """Whether ``reason`` is new to this run (each reason is said once)."""
        if reason in self._said:
            return False
        self._said.add(reason)
        return True

    def decide(self, outcomes: list[str | None]) -> None:
        """Take the decision from every process's check outcome (None: agreed; ``ABSTAIN``; else why it failed)."""
        failures = [outcome for outcome in outcomes if outcome not in (None, ABSTAIN)]
        if failures:
            self.state, self.reason = "off", failures[0]
        elif any(outcome is None for outcome in outcomes):
            self.state, self.reason = "on", None


def check_slice(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The check's inputs: ``CHECK_ROWS`` rows of each of the micro-batch's first two distinct prompts (two prompts, so
    that a prefix attached to the wrong rows shows; a one-prompt batch gives ``CHECK_ROWS`` rows), and the first
    ``CHECK_TOKENS`` completion tokens."""
    _, inverse = distinct_prompts(inputs["prompt_ids"], inputs["prompt_mask"])
    order = list(dict.fromkeys(inverse.tolist()))[:2]  # distinct prompts in order of first occurrence
    rows = torch.cat([(inverse == group).nonzero().flatten()[:CHECK_ROWS] for group in order])
    tokens = slice(0, CHECK_TOKENS)
    return {
        "prompt_ids": inputs["prompt_ids"][rows],
        "prompt_mask": inputs["prompt_mask"][rows],
        "completion_ids": inputs["completion_ids"][rows, tokens],
        "completion_mask": inputs["completion_mask"][rows, tokens],
    }


def relative_gap(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).abs() / reference.abs().clamp(min=1e-8))
