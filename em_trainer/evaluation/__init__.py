"""Evaluation toolkit: benchmarks, math-verify scoring, resumable evaluation, prompt selection, analysis, rewards.

Builds on decoding, core and data; never imported by them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .benchmarks import BENCHMARKS, DEFAULT_BENCHMARKS, Benchmark, EvaluationError, arithmetic_rows, load_benchmark
    from .dev_set import build_dev_set_scorer, dev_set_scorer, load_dev_rows
    from .evaluate import BenchmarkResult, evaluate_benchmark, model_tag, plot_temperature_sweep, summarize
    from .rewards import accuracy_reward
    from .scoring import grade, parse_gold
    from .selection import SelectionError, select_prompts

# Imported on first use (em_trainer/_lazy.py): importing one submodule does not import the others.
_EXPORTS = {
    "accuracy_reward": ".rewards",
    "arithmetic_rows": ".benchmarks",
    "Benchmark": ".benchmarks",
    "BenchmarkResult": ".evaluate",
    "BENCHMARKS": ".benchmarks",
    "build_dev_set_scorer": ".dev_set",
    "DEFAULT_BENCHMARKS": ".benchmarks",
    "dev_set_scorer": ".dev_set",
    "evaluate_benchmark": ".evaluate",
    "EvaluationError": ".benchmarks",
    "grade": ".scoring",
    "load_benchmark": ".benchmarks",
    "load_dev_rows": ".dev_set",
    "model_tag": ".evaluate",
    "parse_gold": ".scoring",
    "plot_temperature_sweep": ".evaluate",
    "select_prompts": ".selection",
    "SelectionError": ".selection",
    "summarize": ".evaluate",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkResult",
    "DEFAULT_BENCHMARKS",
    "EvaluationError",
    "SelectionError",
    "accuracy_reward",
    "arithmetic_rows",
    "build_dev_set_scorer",
    "dev_set_scorer",
    "evaluate_benchmark",
    "grade",
    "load_benchmark",
    "load_dev_rows",
    "model_tag",
    "parse_gold",
    "plot_temperature_sweep",
    "select_prompts",
    "summarize",
]
