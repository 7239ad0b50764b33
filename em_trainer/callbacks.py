"""Early stopping for EM: a labeled dev-set score with best-checkpoint restore, and a label-free collapse guard.

The one-shot EM paper's score peaks near step 10 and then declines while the loss keeps falling, and names early
stopping as future work. ``DevSetEarlyStopping`` scores a small labeled dev set every N optimizer steps, keeps the
best weights, stops after ``patience`` evaluations without improvement and puts the best weights back at the end.
``CollapseGuard`` needs no labels: it stops when the entropy falls below a floor or the completions collapse (too
short, or repeating themselves).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from .generation import HFGenerator, SamplingSettings, render_chat
from .scoring import grade, parse_gold

Scorer = Callable[[Any], float]


def repetition_rate(text: str, n: int = 4) -> float:
    """Share of repeated word n-grams in ``text`` (0: none repeated; close to 1: one phrase looping)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def load_dev_rows(source: str, data_dir: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows ``{"problem", "gold"}`` of a dev set: a benchmark name (see evaluation) or a file with problem/answer."""
    from .evaluation import BENCHMARKS, load_benchmark
    from .selection import PROBLEM_COLUMNS, load_pool, pool_answer

    if source in BENCHMARKS:
        return [{"problem": r["problem"], "gold": r["gold"]} for r in load_benchmark(source, data_dir, limit)]
    rows = []
    for row in load_pool(source, limit=limit):
        column = next((c for c in PROBLEM_COLUMNS if row.get(c)), None)
        answer = pool_answer(row)
        if column and answer is not None:
            rows.append({"problem": str(row[column]), "gold": answer})
    if not rows:
        raise ValueError(f"Dev set '{source}' has no row with both a problem and an answer.")
    return rows


def dev_set_scorer(
    rows: Sequence[dict[str, Any]],
    tokenizer: Any,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    system_prompt: str | None = "Please reason step by step, and put your final answer within \\boxed{}.",
) -> Scorer:
    """A scorer: greedy accuracy of a model on ``rows`` (graded by em_trainer.scoring)."""
    golds = [parse_gold(r["gold"]) for r in rows]
    prompts = [render_chat(tokenizer, r["problem"], system_prompt) for r in rows]
    settings = SamplingSettings(temperature=0.0, max_new_tokens=max_new_tokens)

    def score(model: Any) -> float:
        generator = HFGenerator(model, tokenizer=tokenizer, batch_size=batch_size)
        outputs = generator.generate(prompts, settings)
        correct = [grade(gold, samples[0].text).correct for gold, samples in zip(golds, outputs, strict=True)]
        return sum(correct) / len(correct)

    return score


class DevSetEarlyStopping(TrainerCallback):
    """Score every ``eval_steps`` optimizer steps; keep the best weights; stop after ``patience`` non-improvements.

    The best weights are saved to ``<output_dir>/best`` (a ``from_pretrained`` directory) and loaded back into the
    model when training ends, so the trainer's final ``save_model`` writes the best model, not the last one. Each
    evaluation is added to the log history as ``early_stopping/score`` and kept in ``early_stopping.json``.
    """

    def __init__(self, trainer: Any, scorer: Scorer, eval_steps: int = 5, patience: int = 2) -> None:
        if eval_steps < 1 or patience < 1:
            raise ValueError("early stopping needs eval_steps >= 1 and patience >= 1.")
        self.trainer, self.scorer = trainer, scorer
        self.eval_steps, self.patience = eval_steps, patience
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.bad_evaluations = 0
        self.history: list[dict[str, Any]] = []

    @property
    def best_dir(self) -> Path:
        return Path(self.trainer.args.output_dir) / "best"

    def _model(self) -> Any:
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.eval_steps != 0:
            return control
        model = self._model()
        was_training = model.training
        with torch.no_grad():
            score = float(self.scorer(model))
        model.train(was_training)
        improved = self.best_score is None or score > self.best_score
        entry = {"step": state.global_step, "early_stopping/score": score, "early_stopping/improved": improved}
        self.history.append(entry)
        state.log_history.append(dict(entry))
        if improved:
            self.best_score, self.best_step, self.bad_evaluations = score, state.global_step, 0
            if state.is_world_process_zero:
                if self.best_dir.exists():
                    shutil.rmtree(self.best_dir)
                model.save_pretrained(self.best_dir)
                self.trainer.processing_class.save_pretrained(self.best_dir)
        else:
            self.bad_evaluations += 1
            if self.bad_evaluations >= self.patience:
                control.should_training_stop = True
        print(
            f"[em-trainer] step {state.global_step}: dev score {score:.4f} (best {self.best_score:.4f} at step "
            f"{self.best_step}){'; stopping' if control.should_training_stop else ''}",
            flush=True,
        )
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.best_step is None:
            return control
        self.trainer.accelerator.wait_for_everyone()
        from safetensors.torch import load_file

        model = self._model()
        weights = {}
        for shard in sorted(self.best_dir.glob("*.safetensors")):
            weights.update(load_file(str(shard)))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        tied = {k for k in missing if "lm_head" in k}  # tied embeddings are not saved twice
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"Could not restore the best weights: missing {missing}, unexpected {unexpected}.")
        if state.is_world_process_zero:
            summary = {"best_step": self.best_step, "best_score": self.best_score, "history": self.history}
            (Path(args.output_dir) / "early_stopping.json").write_text(json.dumps(summary, indent=2))
        print(f"[em-trainer] restored the best weights (step {self.best_step}, score {self.best_score:.4f})")
        return control


class CollapseGuard(TrainerCallback):
    """Stop when the logged entropy falls below ``entropy_floor``, or completions collapse.

    Collapse: mean completion length below ``min_length`` tokens, or a mean repetition rate (repeated word 4-grams,
    see :func:`repetition_rate`) above ``max_repetition`` over the step's completions. Any threshold left ``None``
    is not checked. The reason is printed and added to the log history as ``collapse_guard/stopped``.
    """

    def __init__(
        self,
        trainer: Any,
        entropy_floor: float | None = None,
        min_length: float | None = None,
        max_repetition: float | None = None,
    ) -> None:
        self.trainer = trainer
        self.entropy_floor, self.min_length, self.max_repetition = entropy_floor, min_length, max_repetition
        self.reason: str | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        reasons = []
        if self.entropy_floor is not None and "entropy" in logs and logs["entropy"] < self.entropy_floor:
            reasons.append(f"entropy {logs['entropy']:.4f} < floor {self.entropy_floor}")
        length = logs.get("completions/mean_length")
        if self.min_length is not None and length is not None and length < self.min_length:
            reasons.append(f"mean completion length {length:.1f} < {self.min_length}")
        if self.max_repetition is not None:
            texts = [str(c) for c in list(self.trainer._logs["completion"])[-args.generation_batch_size :]]
            if texts:
                rate = sum(repetition_rate(t) for t in texts) / len(texts)
                if state.log_history:
                    state.log_history[-1]["collapse_guard/repetition"] = rate
                if rate > self.max_repetition:
                    reasons.append(f"repetition rate {rate:.3f} > {self.max_repetition}")
        if reasons and not control.should_training_stop:
            self.reason = "; ".join(reasons)
            control.should_training_stop = True
            state.log_history.append({"step": state.global_step, "collapse_guard/stopped": self.reason})
            print(f"[em-trainer] collapse guard: stopping at step {state.global_step}: {self.reason}", flush=True)
        return control
