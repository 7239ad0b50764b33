import math

import numpy as np
import pytest
import torch

from em_trainer.core.objectives import (
    masked_token_mean_loss,
    sequence_mean,
    token_entropy_from_logits,
    token_normalizer,
)


def numpy_entropy(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    return -plogp.sum(axis=-1)


@pytest.mark.parametrize("temperature", [0.3, 0.5, 1.0, 2.0])
def test_entropy_matches_numpy(temperature):
    logits = torch.randn(3, 5, 101) * 4
    got = token_entropy_from_logits(logits, temperature)
    want = numpy_entropy(logits.numpy(), temperature)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_entropy_limits():
    uniform = torch.zeros(1, 64)
    assert token_entropy_from_logits(uniform).item() == pytest.approx(math.log(64), rel=1e-6)
    peaked = torch.tensor([[1000.0, 0.0, 0.0]])
    assert token_entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        token_entropy_from_logits(uniform, 0.0)


def test_masked_loss_is_mean_over_masked_positions():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_token_mean_loss(per_token, mask, mask.sum()).item() == pytest.approx((1 + 2 + 4) / 3)
    np.testing.assert_allclose(sequence_mean(per_token, mask).numpy(), [1.5, 4.0])
    with pytest.raises(ValueError, match="same shape"):
        masked_token_mean_loss(per_token, mask[:, :2], 1.0)


@pytest.mark.parametrize("processes,accumulation", [(1, 1), (1, 4), (2, 1), (2, 4), (8, 2)])
def test_normalizer_gives_global_token_mean(processes, accumulation):
    """Summing micro-batch losses over accumulation and averaging over ranks (DDP) gives the global token mean."""
    torch.manual_seed(0)
    micro = [
        [(torch.rand(3, 7), (torch.rand(3, 7) > 0.4).float()) for _ in range(accumulation)] for _ in range(processes)
    ]
    total_tokens = sum(m.sum() for rank in micro for _, m in rank)
    global_mean = sum((h * m).sum() for rank in micro for h, m in rank) / total_tokens
    normalizer = token_normalizer(total_tokens, processes, accumulation, accumulation, training=True)
    per_rank = [sum(masked_token_mean_loss(h, m, normalizer) for h, m in rank) for rank in micro]
    ddp_average = sum(per_rank) / processes
    assert ddp_average.item() == pytest.approx(global_mean.item(), rel=1e-6)
    assert token_normalizer(torch.tensor(0.0), processes, accumulation, accumulation).item() == 1.0
