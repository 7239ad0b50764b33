"""Measurements of what EM did to a model, independent of the trainer's own logs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.objectives import token_entropy_from_logits
from ..data.prompts import render_prompt
from ..data.tokens import eos_token_ids, pad_token_id


@dataclass
class SampleEntropy:
    """Mean token entropy of fresh samples, and what it was averaged over."""

    mean_entropy: float
    num_samples: int
    num_tokens: int
    mean_length: float

    def __str__(self) -> str:
        return (
            f"mean token entropy {self.mean_entropy:.4f} nats over {self.num_tokens} generated tokens "
            f"({self.num_samples} samples, mean length {self.mean_length:.1f})"
        )


@torch.no_grad()
def fresh_sample_entropy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Any],
    num_samples: int = 8,
    temperature: float = 0.5,
    max_new_tokens: int = 64,
    seed: int = 0,
) -> SampleEntropy:
    """Sample ``num_samples`` responses per prompt and average the entropy of ``softmax(logits / temperature)``.

    The positions are those whose distribution produced a generated token, up to and including the first EOS. The
    entropy comes from a separate full-logits forward pass, not from the sampler's processed scores.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, eos_ids)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    total, count, lengths = 0.0, 0, []
    try:
        for prompt in prompts:
            text = render_prompt(prompt, tokenizer)
            encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
            prompt_len = encoded["input_ids"].shape[1]
            output = model.generate(
                **encoded,
                do_sample=True,
                temperature=temperature,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples,
                pad_token_id=pad_id,
                eos_token_id=eos_ids,
            )
            completions = output[:, prompt_len:]
            is_eos = torch.isin(completions, torch.tensor(eos_ids, device=device))
            first_eos = torch.where(
                is_eos.any(1),
                is_eos.int().argmax(1),
                torch.full_like(is_eos[:, 0], completions.shape[1], dtype=torch.long),
            )
            positions = torch.arange(completions.shape[1], device=device)
            mask = positions.unsqueeze(0) <= first_eos.unsqueeze(1)
            attention = torch.cat([torch.ones_like(output[:, :prompt_len]), mask.long()], dim=1)
            logits = model(input_ids=output, attention_mask=attention).logits
            # The distribution at position p predicts token p + 1: completion token j comes from prompt_len - 1 + j.
            step_logits = logits[:, prompt_len - 1 : -1]
            entropy = token_entropy_from_logits(step_logits, temperature)
            total += float((entropy * mask).sum())
            count += int(mask.sum())
            lengths.extend(mask.sum(1).tolist())
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return SampleEntropy(total / max(count, 1), len(lengths), count, sum(lengths) / max(len(lengths), 1))


class StreamingMoments:
    """Mean, standard deviation and skewness of a stream of values, in float64, without keeping the values.

    Keeps sums of x, x^2 and x^3 shifted by the first batch's mean (to keep the cancellation in the third moment
    small), plus a bounded uniform sample of the values for a histogram.
    """

    def __init__(self, sample_size: int = 200_000, seed: int = 0) -> None:
        self.count = 0
        self.shift: float | None = None
        self.s1 = self.s2 = self.s3 = 0.0
        self.sample_size = sample_size
        self.generator = torch.Generator().manual_seed(seed)
        self.sample = torch.empty(0, dtype=torch.float32)
        self.seen_for_sample = 0

    def update(self, values: torch.Tensor) -> None:
        x = values.detach().reshape(-1).double().cpu()
        if x.numel() == 0:
            return
        if self.shift is None:
            self.shift = float(x.mean())
        y = x - self.shift
        self.count += x.numel()
        self.s1 += float(y.sum())
        self.s2 += float((y * y).sum())
        self.s3 += float((y * y * y).sum())
        # Bottom-k by random keys keeps a uniform sample of everything seen, whatever the batch sizes.
        keys = torch.rand(x.numel(), generator=self.generator)
        candidates = torch.cat([self.sample, x.float()])
        candidate_keys = torch.cat([getattr(self, "_keys", torch.empty(0)), keys])
        if candidates.numel() > self.sample_size:
            keep = torch.topk(candidate_keys, self.sample_size, largest=False).indices
            candidates, candidate_keys = candidates[keep], candidate_keys[keep]
        self.sample, self._keys = candidates, candidate_keys

    @property
    def mean(self) -> float:
        return (self.shift or 0.0) + self.s1 / max(self.count, 1)

    @property
    def std(self) -> float:
        m1 = self.s1 / max(self.count, 1)
        return max(self.s2 / max(self.count, 1) - m1 * m1, 0.0) ** 0.5

    @property
    def skewness(self) -> float:
        """Population (biased) skewness E[(x - mean)^3] / std^3, like ``scipy.stats.skew``."""
        n = max(self.count, 1)
        m1, m2, m3 = self.s1 / n, self.s2 / n, self.s3 / n
        variance = m2 - m1 * m1
        if variance <= 0:
            return 0.0
        return (m3 - 3 * m1 * m2 + 2 * m1**3) / variance**1.5


@dataclass
class LogitReport:
    """Statistics of the raw logits a model produced at the positions of its own sampled responses."""

    name: str
    mean: float
    std: float
    skewness: float
    mean_entropy: float
    mean_top1_probability: float
    num_positions: int
    num_values: int


@torch.no_grad()
def collect_logit_statistics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Any],
    name: str = "model",
    num_samples: int = 2,
    temperature: float = 0.5,
    max_new_tokens: int = 256,
    seed: int = 0,
    sample_size: int = 200_000,
) -> tuple[LogitReport, torch.Tensor]:
    """Sample responses, then score them with a plain forward pass and stream statistics of the *raw* logits.

    The logits are the model's outputs before any temperature, top-k or top-p (``generate``'s ``scores`` are the
    processed ones), over the full vocabulary at every generated position. Memory stays bounded: one forward's logits
    at a time, and a fixed-size uniform sample of the values for the histogram. Entropy and top-1 probability are
    of ``softmax(raw logits)``. Returns the report and the sample of values.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos_ids = eos_token_ids(model, tokenizer)
    moments = StreamingMoments(sample_size, seed)
    entropy_sum = top1_sum = 0.0
    positions = 0
    torch.manual_seed(seed)
    try:
        for prompt in prompts:
            encoded = tokenizer(render_prompt(prompt, tokenizer), return_tensors="pt", add_special_tokens=False)
            encoded = encoded.to(device)
            prompt_len = encoded["input_ids"].shape[1]
            output = model.generate(
                **encoded,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None if temperature == 0 else 1.0,
                top_k=None if temperature == 0 else 0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples if temperature > 0 else 1,
                pad_token_id=pad_token_id(tokenizer, eos_ids),
                eos_token_id=eos_ids,
            )
            for row in output:
                completion = row[prompt_len:].tolist()
                stop = next((i for i, t in enumerate(completion) if t in eos_ids), None)
                length = len(completion) if stop is None else stop + 1
                ids = row[: prompt_len + length].unsqueeze(0)
                logits = model(input_ids=ids).logits[0, prompt_len - 1 : prompt_len - 1 + length].float()
                moments.update(logits)
                log_p = torch.log_softmax(logits, dim=-1)
                entropy_sum += float(-(log_p.exp() * log_p).sum(-1).sum())
                top1_sum += float(log_p.max(-1).values.exp().sum())
                positions += length
    finally:
        model.train(was_training)
    report = LogitReport(
        name=name,
        mean=moments.mean,
        std=moments.std,
        skewness=moments.skewness,
        mean_entropy=entropy_sum / max(positions, 1),
        mean_top1_probability=top1_sum / max(positions, 1),
        num_positions=positions,
        num_values=moments.count,
    )
    return report, moments.sample


def plot_logit_histograms(samples: dict[str, torch.Tensor], reports: dict[str, LogitReport], path: str) -> str:
    """Histograms of the raw logits per model, side by side on shared axes (the paper's Figure 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(samples)
    figure, axes = plt.subplots(
        1, len(names), figsize=(4.5 * len(names), 3.6), sharex=True, sharey=True, squeeze=False
    )
    low = min(float(s.quantile(0.001)) for s in samples.values())
    high = max(float(s.quantile(0.999)) for s in samples.values())
    for axis, name in zip(axes[0], names, strict=True):
        r = reports[name]
        axis.hist(samples[name].numpy(), bins=120, range=(low, high), density=True, color="tab:blue", alpha=0.8)
        axis.axvline(r.mean, color="black", linewidth=1)
        axis.set_title(f"{name}\nmean {r.mean:.2f}, std {r.std:.2f}, skew {r.skewness:.3f}", fontsize=9)
        axis.set_xlabel("raw logit")
    axes[0][0].set_ylabel("density")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
