"""How EMTrainer drives TRL's fused LM head: scoring only the generated positions, at the entropy temperature.

TRL's fused head (``trl.trainer.utils.add_fused_lm_head``) computes per-token log-probabilities and entropies in
chunks, with gradients, without materialising ``batch x length x vocab`` logits. Two things about it matter to EM:

- It gathers the positions that have a label (the generated ones) before the vocabulary projection only where
  ``trl.trainer.utils._use_triton(device)`` says so (CUDA/XPU); elsewhere it projects every position, prompt
  included, to keep tile shapes static for compilers such as Neuron's. On CPU that spends most of the LM head on
  prompt positions whose result is then zeroed. Gathering is exact either way, so EMTrainer gathers on every device
  but Neuron. ``tests/test_fused_head.py`` fails if TRL stops consulting ``_use_triton`` and the gain disappears.
- Its temperature is fixed when the head is patched; EM may minimise the entropy at another temperature than it
  samples at, and then every model whose log-probabilities enter the loss (the policy, and TRL's reference model for
  the KL term) is re-patched at that temperature, so the KL compares log-probabilities at one temperature.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from accelerate.utils import is_peft_model
from trl.trainer import utils as trl_utils
from trl.trainer.utils import add_fused_lm_head


def _gather_except_on_neuron(device: torch.device) -> bool:
    return device.type != "neuron"


@contextlib.contextmanager
def score_generated_positions_only() -> Iterator[None]:
    """Inside this context, TRL's fused head projects only the positions with a label, on every device but Neuron."""
    original = trl_utils._use_triton
    trl_utils._use_triton = _gather_except_on_neuron
    try:
        yield
    finally:
        trl_utils._use_triton = original


def patch_entropy_temperature(model: Any, temperature: float, cast_lm_head_to_fp32: bool, with_entropy: bool) -> None:
    """Re-patch ``model``'s fused head at ``temperature`` (the last patch is the active one)."""
    add_fused_lm_head(
        model.get_base_model() if is_peft_model(model) else model,
        temperature=temperature,
        cast_lm_head_to_fp32=cast_lm_head_to_fp32,
        outputs=("log_probs", "entropy") if with_entropy else ("log_probs",),
    )


def head_logit_transform(config: Any) -> tuple[float, float | None]:
    """The ``(logit_scale, final_logit_softcapping)`` a model applies after its LM head, read from its config as TRL's
    ``add_fused_lm_head`` reads them (a computation that projects hidden states itself must apply them too)."""
    text_config = config.get_text_config()
    softcap = getattr(text_config, "final_logit_softcapping", None)
    scale = getattr(text_config, "logit_scale", None)
    if scale is None:
        scale = getattr(text_config, "output_multiplier", None)
    if scale is None:
        scale = getattr(text_config, "lm_head_multiplier", None)
    if scale is None and getattr(text_config, "logits_scaling", None) is not None:
        scaling = text_config.logits_scaling
        scale = scaling if text_config.model_type == "hyperclovax" else 1 / scaling
    return (1.0 if scale is None else float(scale)), softcap
