"""EM-INF: entropy minimization at decoding time (Agarwal et al., 2025), and its adaptive-temperature baseline.

At every decoding step, before temperature, top-k and top-p, each row's logits ``z`` start from the model's ``z0``
and take a few Adam steps on ``H(softmax z) + kl_weight * KL(softmax z0 || softmax z)``; a row stops as soon as its
entropy is below ``threshold`` (checked before each step). No weights change.

The optimisation is written out in closed form (the gradient of the entropy is ``-p (log p + H)``, that of the KL
is ``q - p0``), row by row with its own Adam state, so a batch gives exactly the result of its rows one at a time and
a row that stopped is never moved by momentum. Tokens an earlier processor filtered out (``-inf``) stay filtered: no
probability clamp puts mass back on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor


@dataclass(frozen=True)
class EMInfSettings:
    """EM-INF hyper-parameters; ``temperature`` is the sampling temperature a preset recommends (None: unchanged)."""

    threshold: float = 0.3
    kl_weight: float = 0.001
    lr: float = 0.1
    n_steps: int = 5
    temperature: float | None = None


PRESETS: dict[str, EMInfSettings] = {
    # The defaults of the authors' code.
    "default": EMInfSettings(threshold=0.3, kl_weight=0.001, lr=0.1, n_steps=5),
    # What the authors' released evaluation scripts ran: a stronger KL anchor, 3 steps, sampling at T=0.1.
    "paper-scripts": EMInfSettings(threshold=0.3, kl_weight=0.05, lr=0.1, n_steps=3, temperature=0.1),
}


def masked_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per row, with ``-inf`` entries counting as probability 0."""
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)


def entropy_minimize_logits(
    logits: torch.Tensor,
    threshold: float = 0.3,
    kl_weight: float = 0.001,
    lr: float = 0.1,
    n_steps: int = 5,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EM-INF on a ``(batch, vocab)`` tensor of logits. Returns the new logits and the Adam steps each row took.

    Adam matches ``torch.optim.Adam`` (default betas and eps), one optimiser per row.
    """
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape (batch, vocab), got {tuple(logits.shape)}")
    dtype = logits.dtype
    z0 = logits.to(torch.promote_types(dtype, torch.float32))  # bf16/fp16 logits are optimised in fp32
    finite = torch.isfinite(z0)
    z = torch.where(finite, z0, torch.zeros_like(z0))  # optimise finite entries only; -inf is restored at the end
    neg_inf = torch.full_like(z0, float("-inf"))
    p0 = torch.softmax(torch.where(finite, z0, neg_inf), dim=-1)
    m = torch.zeros_like(z)
    v = torch.zeros_like(z)
    steps = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    active = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
    b1, b2 = betas
    for _ in range(n_steps):
        masked = torch.where(finite, z, neg_inf)
        entropy = masked_entropy(masked)
        active = active & (entropy >= threshold)
        if not bool(active.any()):
            break
        log_q = torch.log_softmax(masked, dim=-1)
        q = log_q.exp()
        safe_log_q = torch.where(finite, log_q, torch.zeros_like(log_q))
        grad = -q * (safe_log_q + entropy.unsqueeze(-1)) + kl_weight * (q - p0)
        grad = torch.where(finite & active.unsqueeze(-1), grad, torch.zeros_like(grad))
        row = active.unsqueeze(-1)
        m = torch.where(row, b1 * m + (1 - b1) * grad, m)
        v = torch.where(row, b2 * v + (1 - b2) * grad * grad, v)
        t = (steps + 1).unsqueeze(-1).to(z.dtype)
        update = lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        z = torch.where(row & finite, z - update, z)
        steps = steps + active.long()
    out = torch.where(finite, z, neg_inf)
    # Rows that never moved come back bit for bit.
    out = torch.where((steps == 0).unsqueeze(-1), z0, out)
    return out.to(dtype), steps


class EntropyMinimizingLogitsProcessor(LogitsProcessor):
    """EM-INF as a transformers ``LogitsProcessor``, for ``model.generate(..., logits_processor=[processor])``.

    Works with any model, greedy or sampling, any batch size. Custom processors run before generate's temperature,
    top-k and top-p warpers, so those apply to the entropy-minimised logits, as in the paper.

    Args:
        threshold: stop a row once its entropy (nats) is below this (authors' code: 0.3).
        kl_weight: weight of ``KL(p0 || q)`` anchoring to the model's distribution (0.001).
        lr: Adam learning rate on the logits (0.1).
        n_steps: at most this many Adam steps per decoding step (5).
        preset: ``"default"`` or ``"paper-scripts"`` (kl_weight 0.05, 3 steps; sample at temperature 0.1);
            explicit arguments override it.
    """

    def __init__(
        self,
        threshold: float | None = None,
        kl_weight: float | None = None,
        lr: float | None = None,
        n_steps: int | None = None,
        preset: str = "default",
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"Unknown EM-INF preset '{preset}'. Choose from: {', '.join(PRESETS)}.")
        base = PRESETS[preset]
        self.threshold = base.threshold if threshold is None else threshold
        self.kl_weight = base.kl_weight if kl_weight is None else kl_weight
        self.lr = base.lr if lr is None else lr
        self.n_steps = base.n_steps if n_steps is None else n_steps
        if self.n_steps < 0 or self.lr <= 0 or self.kl_weight < 0:
            raise ValueError("EM-INF needs n_steps >= 0, lr > 0 and kl_weight >= 0.")
        self.last_steps: torch.Tensor | None = None
        self.total_steps = 0  # Adam steps summed over rows and decoding steps, for monitoring
        self.total_rows = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out, self.last_steps = entropy_minimize_logits(scores, self.threshold, self.kl_weight, self.lr, self.n_steps)
        self.total_steps += int(self.last_steps.sum())
        self.total_rows += self.last_steps.numel()
        return out


def temperature_for_entropy(
    logits: torch.Tensor,
    target: float,
    low: float = 1e-3,
    high: float = 10.0,
    iterations: int = 40,
) -> torch.Tensor:
    """Per row, the temperature ``T`` at which ``H(softmax(logits / T))`` equals ``target`` (bisection in log T).

    The entropy grows monotonically with the temperature; rows whose target is out of reach get ``low`` or ``high``.
    """
    z = logits.float()
    lo = torch.full((z.shape[0],), float(low), device=z.device).log()
    hi = torch.full((z.shape[0],), float(high), device=z.device).log()
    for _ in range(iterations):
        mid = (lo + hi) / 2
        entropy = masked_entropy(z / mid.exp().unsqueeze(-1))
        too_high = entropy > target
        hi = torch.where(too_high, mid, hi)
        lo = torch.where(too_high, lo, mid)
    return ((lo + hi) / 2).exp()


class AdaptiveTemperatureLogitsProcessor(LogitsProcessor):
    """The paper's baseline: per row and step, scale the logits by the temperature that gives ``target_entropy``.

    Use with greedy decoding or ``temperature=1.0`` in ``generate`` (the temperature is chosen here).
    """

    def __init__(self, target_entropy: float = 0.3, low: float = 1e-3, high: float = 10.0, iterations: int = 40):
        if target_entropy < 0:
            raise ValueError(f"target_entropy must be >= 0, got {target_entropy}.")
        self.target_entropy, self.low, self.high, self.iterations = target_entropy, low, high, iterations

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        temperature = temperature_for_entropy(scores, self.target_entropy, self.low, self.high, self.iterations)
        return (scores.float() / temperature.unsqueeze(-1)).to(scores.dtype)
