"""vLLM engine options that TRL does not pass on when it builds a colocated engine.

TRL's ``VLLMGeneration._init_vllm`` builds ``vllm.LLM`` from a fixed list of keyword arguments; ``enforce_eager`` is
not among them, and vLLM's default compiles the model when the engine starts (about a minute on a CPU for a 135M
model). ``EMConfig.vllm_enforce_eager`` reaches the engine through :func:`engine_options`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def engine_options(**options: Any) -> Iterator[None]:
    """While active, an engine TRL builds gets these ``vllm.LLM`` keyword arguments on top of TRL's own."""
    from trl.generation import vllm_generation

    original = getattr(vllm_generation, "LLM", None)
    if original is None:  # vLLM is not installed: TRL's own error about it comes next
        yield
        return

    def build(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **{**kwargs, **options})

    vllm_generation.LLM = build
    try:
        yield
    finally:
        vllm_generation.LLM = original
