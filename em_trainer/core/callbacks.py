"""Early stopping for EM: a labeled dev-set score with best-checkpoint restore, and a label-free collapse guard.

The one-shot EM paper's score peaks near step 10 and then declines while the loss keeps falling, and names early
stopping as future work. ``DevSetEarlyStopping`` scores a small labeled dev set every N optimizer steps, keeps the
best weights, stops after ``patience`` evaluations without improvement and puts the best weights back at the end.
``CollapseGuard`` needs no labels: it stops when the entropy falls below a floor or the completions collapse (too
short, or repeating themselves). Neither knows how a score is computed: the scorer is passed in.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import TrainerCallback

from ..data.files import atomic_write_json

# A scorer maps a model to a number, higher is better (e.g. greedy accuracy on a dev set). The core never builds one:
# em_trainer.evaluation.build_dev_set_scorer does, and the trainer passes it in.
Scorer = Callable[[Any], float]


def repetition_rate(text: str, n: int = 4) -> float:
    """Share of repeated word n-grams in ``text`` (0: none repeated; close to 1: one phrase looping)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


class DevSetEarlyStopping(TrainerCallback):
    """Score every ``eval_steps`` optimizer steps; keep the best weights; stop after ``patience`` non-improvements.

    The best weights are saved to ``<output_dir>/best`` (a ``from_pretrained`` directory) and loaded back into the
    model when training ends, so the trainer's final ``save_model`` writes the best model, not the last one. Each
    evaluation is added to the log history as ``early_stopping/score`` and kept in ``early_stopping.json``.
    """

    def __init__(self, scorer: Scorer, eval_steps: int = 5, patience: int = 2) -> None:
        if eval_steps < 1 or patience < 1:
            raise ValueError("early stopping needs eval_steps >= 1 and patience >= 1.")
        self.scorer = scorer
        self.eval_steps, self.patience = eval_steps, patience
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.bad_evaluations = 0
        self.history: list[dict[str, Any]] = []

    @staticmethod
    def best_dir(args: Any) -> Path:
        return Path(args.output_dir) / "best"

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.eval_steps != 0:
            return control
        model = getattr(model, "module", model)  # a DDP wrapper holds the model as .module
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
                best = self.best_dir(args)
                if best.exists():
                    shutil.rmtree(best)
                model.save_pretrained(best)
                if processing_class is not None:
                    processing_class.save_pretrained(best)
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

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.best_step is None:
            return control
        PartialState().wait_for_everyone()
        from safetensors.torch import load_file

        model = getattr(model, "module", model)
        weights = {}
        for shard in sorted(self.best_dir(args).glob("*.safetensors")):
            weights.update(load_file(str(shard)))
        if hasattr(model, "peft_config"):
            # A LoRA model saved only its adapter (PEFT's key names, without the adapter's name): PEFT puts it back.
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(model, weights)
            if not weights or result.unexpected_keys:
                raise RuntimeError(f"Could not restore the best adapter: unexpected {result.unexpected_keys}.")
        else:
            missing, unexpected = model.load_state_dict(weights, strict=False)
            tied = {k for k in missing if "lm_head" in k}  # tied embeddings are not saved twice
            if set(missing) - tied or unexpected:
                raise RuntimeError(f"Could not restore the best weights: missing {missing}, unexpected {unexpected}.")
        if state.is_world_process_zero:
            summary = {"best_step": self.best_step, "best_score": self.best_score, "history": self.history}
            atomic_write_json(Path(args.output_dir) / "early_stopping.json", summary)
        print(f"[em-trainer] restored the best weights (step {self.best_step}, score {self.best_score:.4f})")
        return control


class CollapseGuard(TrainerCallback):
    """Stop when the logged entropy falls below ``entropy_floor``, or completions collapse.

    Collapse: mean completion length below ``min_length`` tokens, or a mean repetition rate (repeated word 4-grams,
    see :func:`repetition_rate`) above ``max_repetition`` over the step's completions. Any threshold left ``None``
    is not checked. ``completions`` returns the texts logged so far (the trainer passes its completion log). The
    reason is printed and added to the log history as ``collapse_guard/stopped``.
    """

    def __init__(
        self,
        entropy_floor: float | None = None,
        min_length: float | None = None,
        max_repetition: float | None = None,
        completions: Callable[[], list] | None = None,
    ) -> None:
        self.completions = completions or list
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
            texts = [str(c) for c in self.completions()[-args.generation_batch_size :]]
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


class PruneOptimizerState(TrainerCallback):
    """Older checkpoints lose their optimizer and scheduler state; their weights stay
    (``EMConfig.keep_optimizer_state="latest"``).

    While training, the newest two checkpoints stay whole: a kill can cut off the newest one's save, or leave its
    state file unreadable, and the resume then falls back on the one before, which must still hold its state. Once
    training has ended, only the newest stays whole: resuming, or continuing to a longer ``max_steps``, needs no more.
    """

    PRUNED = ("optimizer.pt", "scheduler.pt")

    @staticmethod
    def _prune(output_dir: str, keep: int) -> None:
        folders = [f for f in Path(output_dir).glob("checkpoint-*") if f.name.removeprefix("checkpoint-").isdigit()]
        folders.sort(key=lambda f: int(f.name.removeprefix("checkpoint-")))
        for folder in folders[:-keep] if keep else folders:
            for name in PruneOptimizerState.PRUNED:
                (folder / name).unlink(missing_ok=True)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # Called after the checkpoint at global_step is written whole (trainer_state.json included).
        if state.is_world_process_zero:
            self._prune(args.output_dir, keep=2)
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.is_world_process_zero:
            self._prune(args.output_dir, keep=1)
        return control


class SaveAtSteps(TrainerCallback):
    """Checkpoint at the listed optimizer steps too (e.g. 2, 4, 6, 8, 10, 15, 20), besides ``save_steps``.

    Studies that measure a run at irregular steps need those checkpoints' weights, not their optimizer state: a
    135M model's checkpoint is 0.5 GB of weights and 1.1 GB of AdamW moments, so a 20-step run saved at 8 steps held
    12 GB, and two such runs side by side filled this machine's disk. Once a newer checkpoint is complete, the
    optimizer and scheduler state of the older listed ones is deleted (about 4.6 GB for that run). Resuming needs only
    the newest complete checkpoint's state, which is kept until a newer one is complete, so a save cut off half way
    still resumes from the one before it. Checkpoints at ``save_steps`` are left whole.
    """

    PRUNED = PruneOptimizerState.PRUNED  # the same files: what resuming needs beyond the weights

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step in self.steps:
            control.should_save = True
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # Called after the checkpoint at global_step is written whole (trainer_state.json included).
        if state.is_world_process_zero:
            for step in self.steps:
                if step < state.global_step:
                    for name in self.PRUNED:
                        (Path(args.output_dir) / f"checkpoint-{step}" / name).unlink(missing_ok=True)
        return control


class StopOnSignal(TrainerCallback):
    """SIGINT or SIGTERM during training: finish the optimizer step, save a checkpoint there, and stop.

    A rerun of the same command resumes from that checkpoint with nothing lost. A second signal stops at once (the
    last checkpoint stays). With several processes the flag is combined across them at each step end, so that all
    save the same step.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: str | None = None
        self.stopped_at: int | None = None
        self._received_at = 0.0
        self._previous: dict[int, Any] = {}

    # A stop can arrive twice within moments: from a scheduler that signals every process of a job, and from the
    # job forwarding it (workflows/child_process). Within this window a repeat is the same stop, not a second one.
    REPEAT_WINDOW_S = 2.0

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            if time.monotonic() - self._received_at < self.REPEAT_WINDOW_S:
                return
            raise KeyboardInterrupt
        self._received_at = time.monotonic()
        self.received = signal.Signals(signum).name
        print(
            f"[em-trainer] {self.received}: finishing this optimizer step, then saving a checkpoint and stopping "
            "(send it again to stop now).",
            file=sys.stderr,
            flush=True,
        )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        flag = torch.tensor(float(self.received is not None))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = flag.to(args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0:
            self.received = self.received or "a signal in another process"
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
