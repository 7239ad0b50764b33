"""The flat module paths of em-trainer 0.1 (``em_trainer.trainer``, ``em_trainer.models``, ...) as aliases.

Each old path imports the module that now holds the code, with a DeprecationWarning naming the new path, so
documented imports such as ``from em_trainer.models import resolve_model`` keep working.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED = {
    "em_trainer.config": "em_trainer.core.config",
    "em_trainer.trainer": "em_trainer.core.trainer",
    "em_trainer.objectives": "em_trainer.core.objectives",
    "em_trainer.callbacks": "em_trainer.core.callbacks",
    "em_trainer.model_card": "em_trainer.core.model_card",
    "em_trainer.models": "em_trainer.data.models",
    "em_trainer.generation": "em_trainer.decoding.generation",
    "em_trainer.inference": "em_trainer.decoding.em_inf",
    "em_trainer.scoring": "em_trainer.evaluation.scoring",
    "em_trainer.selection": "em_trainer.evaluation.selection",
    "em_trainer.analysis": "em_trainer.evaluation.analysis",
    "em_trainer.rewards": "em_trainer.evaluation.rewards",
    "em_trainer.pipeline": "em_trainer.workflows.em_then_grpo",
    "em_trainer.sweep": "em_trainer.workflows.sweep",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.target}; import it from there.", DeprecationWarning, stacklevel=3)
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """The target module is already executed."""


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(MOVED[fullname]))


def install() -> None:
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
