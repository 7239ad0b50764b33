"""Evaluation toolkit: benchmarks, math-verify scoring, resumable evaluation, prompt selection, analysis, rewards.

Builds on decoding, core and data; never imported by them.
"""

from .benchmarks import BENCHMARKS, DEFAULT_BENCHMARKS, Benchmark, EvaluationError, arithmetic_rows, load_benchmark
from .dev_set import build_dev_set_scorer, dev_set_scorer, load_dev_rows
from .evaluate import BenchmarkResult, evaluate_benchmark, model_tag, plot_temperature_sweep, summarize
from .rewards import accuracy_reward
from .scoring import grade, parse_gold
from .selection import SelectionError, select_prompts

__all__ = [
    "BENCHMARKS",
    "DEFAULT_BENCHMARKS",
    "Benchmark",
    "BenchmarkResult",
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
