"""Shared-prompt training forward: each distinct prompt of a micro-batch goes through the model once.

In one-shot EM every response of a step continues the same prompt, yet the plain forward feeds ``prompt +
completion`` for each response. Here the prompt (all but its last token) is forwarded once per distinct prompt with
the KV cache on and gradients kept; the cache is expanded to the rows that share it (``index_select``, whose backward
sums the rows' gradients, which is exactly what the G copies of the plain path contribute); then the rows run
``[last prompt token] + completion`` against it through TRL's fused LM head, unchanged. The last prompt token is fed
again so that the position that predicts the first generated token goes through the same fused head as the others.

Positions, masks and padding are those of the plain path: the prompts keep their left padding and the completion pass
continues at cache position ``P - 1``, so every attention score is the plain path's. Gradient checkpointing is off
inside this path (transformers drops a KV cache under checkpointing); the prompt's activations are kept once per
distinct prompt instead of once per response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import is_peft_model


def distinct_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row index of the first occurrence of each distinct (prompt, mask) row, and each row's distinct-prompt index."""
    rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((unique.size(0),), rows.size(0), dtype=torch.long, device=rows.device)
    first = first.scatter_reduce(0, inverse, torch.arange(rows.size(0), device=rows.device), reduce="amin")
    return first, inverse


def backbone(model: Any) -> Any:
    """The transformer body (no LM head) of a causal LM, through PEFT and DDP wrappers; LoRA layers stay in it."""
    model = getattr(model, "module", model)
    if is_peft_model(model):
        model = model.get_base_model()
    return model.base_model


def shared_prompt_logps_and_entropies(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    autocast: Callable[[], Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies of the completions, ``(batch, completion_len)``, as the plain path gives them.

    ``model`` carries TRL's fused LM head (at the entropy temperature). Rows are grouped by identical prompt rows.
    """
    first, inverse = distinct_prompts(prompt_ids, prompt_mask)
    with autocast():
        prefix = backbone(model)(
            input_ids=prompt_ids[first, :-1], attention_mask=prompt_mask[first, :-1], use_cache=True
        )
    cache = prefix.past_key_values
    cache.reorder_cache(inverse)  # one copy of each distinct prompt's keys and values per row; backward sums them
    input_ids = torch.cat([prompt_ids[:, -1:], completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    labels = input_ids.masked_fill(torch.cat([prompt_mask[:, -1:], completion_mask], dim=1) == 0, -100)
    labels[:, 0] = -100
    with autocast():
        outputs = model(
            input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, labels=labels,
            fused_lm_head=True,
        )  # fmt: skip
    return outputs.log_probs, outputs.entropy
