"""HF ``generate`` with each distinct prompt prefilled once: the no-grad counterpart of the shared-prompt forward.

When ``n`` samples continue the same prompt (one-shot EM's rollouts, ``eval``/``select`` with ``n > 1``), plain
``generate`` prefills every copy of the prompt. Here ``prompt[:, :-1]`` runs once per distinct (prompt, mask) row,
its KV cache is expanded to the rows that share it, and ``generate`` continues from it: it feeds only the last prompt
token, then samples as usual. Positions follow ``generate``'s own rule (from the attention mask), so each row sees the
keys, values and positions the plain prefill would give it, and sampling draws the same random numbers in the same
order; the samples differ from plain ``generate`` only where float rounding flips a near-tie.

vLLM needs none of this: its prefix cache already shares the prompt.

On a CPU the same call can also decode faster (core/cpu_decoding): ``growing_cache`` keeps the KV cache in buffers
reserved once (equal outputs, bit for bit) and ``packs`` routes the linears through oneDNN-packed weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from .cpu_decoding import GrowingCache, PackedLinears
from .shared_prompt import backbone, distinct_prompts

# Inputs the prefix pass would have to slice per row and hand to the backbone; the plain path handles them.
_UNSHARED_INPUTS = ("pixel_values", "token_type_ids", "mm_token_type_ids", "inputs_embeds", "image_grid_thw")


def generation_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids as ``generate`` derives them from a left-padded mask (padding at 0)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


@torch.no_grad()
def prefill_shared_prompts(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: DynamicCache | None = None
) -> DynamicCache | None:
    """The KV cache of ``input_ids[:, :-1]`` for every row, computed once per distinct row; None if no row repeats.

    ``cache``: an empty cache to fill (default a new ``DynamicCache``)."""
    if input_ids.size(1) < 2:
        return None
    first, inverse = distinct_prompts(input_ids, attention_mask)
    if first.numel() == input_ids.size(0):
        return None
    mask = attention_mask[first]
    outputs = backbone(model)(
        input_ids=input_ids[first, :-1],
        attention_mask=mask[:, :-1],
        position_ids=generation_positions(mask)[:, :-1],
        past_key_values=cache if cache is not None else DynamicCache(config=model.config),
        use_cache=True,
    )
    cache = outputs.past_key_values
    cache.reorder_cache(inverse)
    return cache


def shared_prefill_unsupported(model: Any, generate_kwargs: dict[str, Any]) -> str | None:
    """Why ``generate`` must prefill the usual way here (None: the shared prefill applies)."""
    config = generate_kwargs.get("generation_config") or getattr(model, "generation_config", None)
    if generate_kwargs.get("past_key_values") is not None:
        return "a cache was passed"
    if getattr(config, "cache_implementation", None) not in (None, "dynamic"):
        return f"cache_implementation={config.cache_implementation!r}"
    if getattr(model.config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    if any(generate_kwargs.get(key) is not None for key in _UNSHARED_INPUTS):
        return "multimodal, token-type or embedding inputs"
    if generate_kwargs.get("use_cache") is False or getattr(config, "use_cache", True) is False:
        return "use_cache=False"
    return None


def generate_with_shared_prefill(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    generate: Callable[..., Any] | None = None,
    shared_prefill: bool = True,
    growing_cache: bool = False,
    packs: PackedLinears | None = None,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """``model.generate(input_ids, attention_mask, **generate_kwargs)`` with each distinct prompt prefilled once.

    Returns what ``generate`` returns (prompt and completion ids). Falls back to plain ``generate`` when no prompt
    repeats or :func:`shared_prefill_unsupported` gives a reason. ``num_return_sequences`` must be 1: repeat the rows
    instead (``input_ids.repeat_interleave(n, 0)``), which is what ``generate`` does internally. ``generate`` is the
    generate method to call (default ``model.generate``); ``shared_prefill=False`` prefills every row. On a CPU,
    ``growing_cache`` decodes into a :class:`~em_trainer.core.cpu_decoding.GrowingCache` (same outputs, no copy of
    the cache per token) and ``packs`` computes the linears of every no-grad forward from packed weights (same
    tokens up to float rounding).
    """
    routed = packs.applied(model, rows=input_ids.size(0)) if packs is not None else contextlib.nullcontext()
    with routed:
        if shared_prefill_unsupported(model, generate_kwargs) is None:
            cache = None
            if growing_cache and input_ids.device.type == "cpu":
                reserve = input_ids.size(1) + _max_new_tokens(model, generate_kwargs)
                cache = GrowingCache(model.config, reserve=reserve)
            shared = prefill_shared_prompts(model, input_ids, attention_mask, cache) if shared_prefill else None
            if shared is not None or cache is not None:
                generate_kwargs["past_key_values"] = shared if shared is not None else cache
        generate = generate or model.generate
        return generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)


def _max_new_tokens(model: Any, generate_kwargs: dict[str, Any]) -> int:
    """The number of new tokens ``generate`` may add (0 when only a total ``max_length`` is known)."""
    config = generate_kwargs.get("generation_config") or getattr(model, "generation_config", None)
    value = generate_kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    return int(value or 0)
