"""Package attributes imported on first use (PEP 562), as transformers and TRL do for theirs.

A package ``__init__`` that imported its submodules eagerly made every ``em-trainer`` process pay for TRL, and TRL
for vLLM when vLLM is installed, about 9 s of start-up, including processes that only schedule jobs, read results
or unpickle a submitit job. With these exports ``from em_trainer import EMTrainer`` works as before and imports the
trainer at that line, not when the package is first touched.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps each public name to the submodule (relative,
    e.g. ``".trainer"``) that defines it. An unknown name raises AttributeError as a plain module would."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__
