"""What goes into a run: model references (Hub id, directory, .gguf, embedded default), prompts and problem pools.

The bottom layer: it imports nothing else from em_trainer.
"""

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

__all__ = [
    "BOXED_INSTRUCTION",
    "DEFAULT_MODEL",
    "MATH_SYSTEM_PROMPT",
    "DatasetError",
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
