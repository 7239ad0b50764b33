"""EM-INF and the adaptive-temperature baseline, against torch.optim.Adam with autograd as the reference."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from em_trainer.decoding.em_inf import (
    PRESETS,
    AdaptiveTemperatureLogitsProcessor,
    EntropyMinimizingLogitsProcessor,
    entropy_minimize_logits,
    masked_entropy,
    temperature_for_entropy,
)


def reference_em_inf(z0: torch.Tensor, threshold, kl_weight, lr, n_steps):
    """One row, autograd + torch.optim.Adam, the entropy checked before each step."""
    z = z0.clone().double().requires_grad_(True)
    p0 = torch.softmax(z0.double(), -1)
    optimizer = torch.optim.Adam([z], lr=lr)
    steps = 0
    for _ in range(n_steps):
        log_q = torch.log_softmax(z, -1)
        entropy = -(log_q.exp() * log_q).sum()
        if entropy.item() < threshold:
            break
        kl = (p0 * (torch.log(p0) - log_q)).sum()
        optimizer.zero_grad()
        (entropy + kl_weight * kl).backward()
        optimizer.step()
        steps += 1
    return z.detach(), steps


def batch(seed=0, rows=6, vocab=50):
    torch.manual_seed(seed)
    logits = torch.randn(rows, vocab, dtype=torch.float64) * torch.linspace(0.5, 6, rows).unsqueeze(1)
    logits[-1] = torch.tensor([30.0] + [0.0] * (vocab - 1), dtype=torch.float64)  # already confident
    return logits


@pytest.mark.parametrize("preset", list(PRESETS))
def test_matches_adam_reference_row_by_row(preset):
    s = PRESETS[preset]
    logits = batch()
    out, steps = entropy_minimize_logits(logits, s.threshold, s.kl_weight, s.lr, s.n_steps)
    for i in range(logits.shape[0]):
        ref, ref_steps = reference_em_inf(logits[i], s.threshold, s.kl_weight, s.lr, s.n_steps)
        assert steps[i].item() == ref_steps
        torch.testing.assert_close(out[i], ref, rtol=1e-6, atol=1e-8)


def test_each_row_reaches_threshold_or_runs_its_budget():
    logits = batch(1)
    before = masked_entropy(logits)
    out, steps = entropy_minimize_logits(logits, threshold=0.3, n_steps=5)
    after = masked_entropy(out)
    for i in range(logits.shape[0]):
        if before[i] < 0.3:
            assert steps[i] == 0
        else:
            assert after[i] < before[i]
            assert steps[i] == 5 or after[i] < 0.3


def test_confident_rows_come_out_unchanged_and_batch_equals_rows():
    logits = batch(2).float()
    out, steps = entropy_minimize_logits(logits, n_steps=5)
    assert steps[-1] == 0 and torch.equal(out[-1], logits[-1])
    one_by_one = torch.cat([entropy_minimize_logits(logits[i : i + 1], n_steps=5)[0] for i in range(len(logits))])
    torch.testing.assert_close(out, one_by_one, rtol=0, atol=0)


def test_filtered_tokens_stay_filtered():
    logits = batch(3)[:2].clone()
    logits[:, 5:20] = float("-inf")
    out, steps = entropy_minimize_logits(logits, n_steps=5)
    assert torch.isinf(out[:, 5:20]).all() and torch.isfinite(out[:, :5]).all() and (steps > 0).all()
    assert torch.softmax(out, -1)[:, 5:20].sum() == 0


def test_processor_presets_and_errors():
    processor = EntropyMinimizingLogitsProcessor(preset="paper-scripts")
    assert (processor.kl_weight, processor.n_steps) == (0.05, 3) and PRESETS["paper-scripts"].temperature == 0.1
    assert EntropyMinimizingLogitsProcessor(n_steps=2).n_steps == 2
    with pytest.raises(ValueError, match="preset"):
        EntropyMinimizingLogitsProcessor(preset="nope")


@pytest.mark.parametrize("target", [0.1, 0.3, 1.0, 2.5])
def test_adaptive_temperature_hits_its_target(target):
    logits = batch(4)[:-1]
    temperature = temperature_for_entropy(logits, target)
    entropy = masked_entropy(logits / temperature.unsqueeze(-1))
    torch.testing.assert_close(entropy, torch.full_like(entropy, target), atol=1e-3, rtol=0)
    out = AdaptiveTemperatureLogitsProcessor(target)(None, logits.float())
    torch.testing.assert_close(masked_entropy(out.double()), torch.full_like(entropy, target), atol=1e-3, rtol=0)


def test_generate_with_em_inf_on_a_batch(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    encoded = tokenizer(["Hello there", "What is 2 + 2? Answer:"], return_tensors="pt", padding=True)
    processor = EntropyMinimizingLogitsProcessor()
    for sampling in (dict(do_sample=False), dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=20)):
        out = model.generate(
            **encoded, max_new_tokens=6, logits_processor=[processor], pad_token_id=tokenizer.pad_token_id, **sampling
        )
        assert out.shape == (2, encoded["input_ids"].shape[1] + 6) or out.shape[1] <= encoded["input_ids"].shape[1] + 6
        assert processor.last_steps is not None and processor.last_steps.shape == (2,)
