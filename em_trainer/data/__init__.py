"""What goes into a run: model references (Hub id, directory, .gguf, embedded default), prompts and problem pools.

The bottom layer: it imports nothing else from em_trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .models import DEFAULT_MODEL, ModelResolutionError, base_model_id, resolve_model
    from .prompts import (
        BOXED_INSTRUCTION,
        MATH_SYSTEM_PROMPT,
        format_problem,
        is_conversational_prompt,
        load_one_shot_dataset,
        load_prompt_dataset,
        messages_to_text,
        render_chat,
        render_messages,
        render_prompt,
    )
    from .sources import DatasetError, load_pool, read_source

# Imported on first use (em_trainer/_lazy.py): importing one submodule does not import the others.
_EXPORTS = {
    "base_model_id": ".models",
    "BOXED_INSTRUCTION": ".prompts",
    "DatasetError": ".sources",
    "DEFAULT_MODEL": ".models",
    "format_problem": ".prompts",
    "is_conversational_prompt": ".prompts",
    "load_one_shot_dataset": ".prompts",
    "load_pool": ".sources",
    "load_prompt_dataset": ".prompts",
    "MATH_SYSTEM_PROMPT": ".prompts",
    "messages_to_text": ".prompts",
    "ModelResolutionError": ".models",
    "read_source": ".sources",
    "render_chat": ".prompts",
    "render_messages": ".prompts",
    "render_prompt": ".prompts",
    "resolve_model": ".models",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    "BOXED_INSTRUCTION",
    "DEFAULT_MODEL",
    "DatasetError",
    "MATH_SYSTEM_PROMPT",
    "ModelResolutionError",
    "base_model_id",
    "format_problem",
    "is_conversational_prompt",
    "load_one_shot_dataset",
    "load_pool",
    "load_prompt_dataset",
    "messages_to_text",
    "read_source",
    "render_chat",
    "render_messages",
    "render_prompt",
    "resolve_model",
]
