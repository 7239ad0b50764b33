"""Token ids every component agrees on: the end-of-sequence set, and the padding id."""

from __future__ import annotations

from typing import Any


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a response: the model's generation config (one id or several), then the tokenizer's."""
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def pad_token_id(tokenizer: Any, eos_ids: list[int]) -> int:
    """The tokenizer's pad id, or the first EOS id for tokenizers without one (padding is masked out anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
