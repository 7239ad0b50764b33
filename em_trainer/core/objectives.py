"""Pure tensor functions of the entropy-minimization objectives.

Nothing here knows about a trainer: every function takes tensors and returns tensors, so each one is tested against
an independent computation from full logits (see ``tests/test_objectives.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def token_entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy ``H = -sum_v p_v log p_v`` of ``p = softmax(logits / temperature)`` along the last dimension.

    This materialises the full distribution; the trainer uses TRL's fused LM head instead, and this function is the
    reference the fused path is checked against and the tool for analysis on small batches.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    log_p = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def token_normalizer(
    num_items_in_batch: torch.Tensor | float,
    num_processes: int,
    gradient_accumulation_steps: int,
    steps_per_generation: int,
    training: bool = True,
) -> torch.Tensor | float:
    """Per-micro-batch divisor that turns a sum of per-token losses into the mean over the optimizer step.

    ``num_items_in_batch`` is the number of generated tokens of the whole generation batch, summed over all processes
    (TRL computes it once per generation). Each micro-batch divides its *local* token sum by this value. Gradients are
    then summed over the ``gradient_accumulation_steps`` micro-batches and averaged over the ``num_processes`` data
    parallel ranks, so the divisor is ``num_items_in_batch / num_processes``, rescaled from the generation batch to one
    optimizer step when the two differ (``steps_per_generation != gradient_accumulation_steps``). The result: one
    optimizer step follows the gradient of ``sum(H over all generated tokens of the step, all ranks) / their count``,
    whatever the split into devices and micro-batches.
    """
    normalizer = num_items_in_batch / num_processes
    if training:
        normalizer = normalizer * gradient_accumulation_steps / steps_per_generation
    if isinstance(normalizer, torch.Tensor):
        return normalizer.clamp(min=1.0)
    return max(float(normalizer), 1.0)


def masked_token_mean_loss(
    per_token: torch.Tensor, mask: torch.Tensor, normalizer: torch.Tensor | float
) -> torch.Tensor:
    """``sum(per_token * mask) / normalizer``: the EM-FT loss of one micro-batch.

    ``per_token`` is the per-position entropy (with gradients) of shape ``(batch, completion_len)``; ``mask`` is 1
    exactly at the positions whose distribution produced a generated token (the first generated token included, the
    EOS token included, padding and anything after EOS excluded).
    """
    if per_token.shape != mask.shape:
        raise ValueError(f"per_token {tuple(per_token.shape)} and mask {tuple(mask.shape)} must have the same shape.")
    return (per_token * mask.to(per_token.dtype)).sum() / normalizer


def sequence_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked positions of each row, shape ``(batch,)``; 0 for a row with no position."""
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def trajectory_reward(per_token_logps: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """EM-RL trajectory reward: the log-probability of the sampled tokens, averaged (or summed) over each response.

    ``-mean log p(y_t)`` is a one-sample estimate of the per-token trajectory entropy, so this reward is minus that
    estimate. Shape ``(batch,)``.
    """
    if reduction == "mean":
        return sequence_mean(per_token_logps, mask)
    if reduction == "sum":
        return (per_token_logps * mask.to(per_token_logps.dtype)).sum(-1)
    raise ValueError(f"reduction must be 'mean' or 'sum', got '{reduction}'.")


def token_entropy_reward(entropies: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """EM-RL token reward: minus the full-vocabulary entropy, averaged (or summed) over each response's positions."""
    return -trajectory_reward(entropies, mask, reduction)


def self_certainty_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Self-certainty (Intuitor, arXiv 2505.19590) per position: ``KL(U || p) = -log V - mean_v log p_v`` with
    ``p = softmax(logits / temperature)`` over the ``V`` entries of the last dimension. 0 for the uniform
    distribution, larger the more peaked ``p`` is; averaged over a response, it is Intuitor's reward."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    log_p = torch.log_softmax(logits.float() / temperature, dim=-1)
    vocab = logits.shape[-1]
    return -log_p.mean(dim=-1) - torch.log(torch.tensor(float(vocab), device=logits.device))


def self_certainty_from_hidden(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    temperature: float = 1.0,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """:func:`self_certainty_from_logits` of ``head(hidden)``, ``chunk_size`` rows at a time.

    ``hidden`` holds final hidden states, ``(..., hidden_size)``; ``head`` is the LM head (a module, LoRA included).
    The logits are scaled by ``logit_scale``, soft-capped (``softcap * tanh(z / softcap)``, Gemma's
    ``final_logit_softcapping``) and divided by ``temperature``, in that order, as the model's own head and TRL's fused
    head do. At most ``chunk_size x vocab`` logits (and their float32 copies) exist at once, whatever the batch and
    length: 256 x 152k float32 is 156 MB, where ``(batch, length, vocab)`` logits of 8 x 2048 x 152k are 10 GB.
    """
    rows = hidden.reshape(-1, hidden.size(-1))
    values = []
    for start in range(0, rows.size(0), chunk_size):
        logits = head(rows[start : start + chunk_size]).float() * logit_scale
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        values.append(self_certainty_from_logits(logits, temperature))
    if not values:
        return rows.new_zeros(hidden.shape[:-1], dtype=torch.float32)
    return torch.cat(values).reshape(hidden.shape[:-1])


# PSR, NSR and W-REINFORCE (Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement in LLM
# Reasoning", arXiv 2506.01347; their verl fork, TianHongZXY/RLVR-Decomposed, compute_psr_nsr_outcome_advantage).
SIGNED_REINFORCE = ("psr", "nsr", "w_reinforce")


def signed_reinforce_advantages(
    correct: torch.Tensor, mode: str, positive_weight: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and kept rows of REINFORCE on a 0/1 verifiable reward, with no baseline and no scaling.

    ``'psr'`` (positive-sample reinforcement): correct responses only, advantage +1. ``'nsr'`` (negative-sample
    reinforcement): wrong responses only, advantage -1. ``'w_reinforce'``: every response, ``positive_weight`` (the
    paper's lambda, 0.1 recommended) for a correct one and -1 for a wrong one. The reference drops the rows PSR and NSR
    do not keep before the loss, so its token mean runs over the kept rows only; ``kept`` says which.
    """
    correct = correct.bool()
    if mode == "psr":
        return correct.float(), correct
    if mode == "nsr":
        return -(~correct).float(), ~correct
    if mode == "w_reinforce":
        return torch.where(correct, positive_weight, -1.0).float(), torch.ones_like(correct)
    raise ValueError(f"mode must be one of {SIGNED_REINFORCE}, got '{mode}'.")


def clip_cov_selection(
    logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ratio: float = 2e-4,
    lower: float = 1.0,
    upper: float = 5.0,
    clipped: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The tokens whose gradient Clip-Cov detaches (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning
    for Reasoning Language Models", arXiv 2505.22617; PRIME-RL/Entropy-Mechanism-of-RL, as in verl's ``clip_cov``).

    Per token, the centred product ``(A - mean A) * (log p - mean log p)`` (means over the ``mask``ed tokens of the
    batch) is its covariance contribution: large positive values are the tokens whose update lowers entropy most.
    ``max(1, int(ratio * tokens))`` of the tokens with ``lower < cov < upper``, drawn at random, are returned; tokens
    the PPO clip already holds (``clipped``) are never drawn. ``advantages`` is ``(batch,)`` or ``(batch, length)``.
    """
    valid = mask.bool()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    advantages = advantages.expand_as(logps).float()
    values = logps.detach().float()
    count = valid.sum()
    mean_a = (advantages * valid).sum() / count.clamp(min=1)
    mean_logp = (values * valid).sum() / count.clamp(min=1)
    cov = (advantages - mean_a) * (values - mean_logp)
    candidates = valid & (cov > lower) & (cov < upper)
    if clipped is not None:
        candidates &= ~clipped.bool()
    where = torch.nonzero(candidates)
    take = min(max(int(ratio * int(count)), 1), len(where))
    selected = torch.zeros_like(valid)
    if take:
        picked = where[torch.randperm(len(where), generator=generator, device="cpu")[:take].to(where.device)]
        selected[picked[:, 0], picked[:, 1]] = True
    return selected
