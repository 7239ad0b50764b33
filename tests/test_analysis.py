"""Logit statistics against numpy/scipy, raw (not processed) logits, early stopping, the collapse guard, sweeps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import AutoModelForCausalLM

from em_trainer import EMConfig, EMConfigError, EMTrainer
from em_trainer.core.callbacks import CollapseGuard, DevSetEarlyStopping, repetition_rate
from em_trainer.evaluation.analysis import StreamingMoments, collect_logit_statistics
from em_trainer.evaluation.dev_set import build_dev_set_scorer, dev_set_scorer


def test_streaming_moments_match_scipy():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.gamma(2.0, 3.0, 50_000) - 4, rng.normal(8, 2, 20_000)])
    moments = StreamingMoments(sample_size=1000)
    for chunk in np.array_split(values, 17):  # uneven batches, as positions of different responses
        moments.update(torch.from_numpy(chunk))
    assert moments.count == values.size
    assert moments.mean == pytest.approx(values.mean(), rel=1e-9)
    assert moments.std == pytest.approx(values.std(), rel=1e-9)
    assert moments.skewness == pytest.approx(stats.skew(values), rel=1e-7)
    assert moments.sample.numel() == 1000  # bounded memory
    assert abs(float(moments.sample.double().mean()) - values.mean()) < 0.5  # a uniform sample


def test_logits_collected_are_raw(tiny_model_dir, tokenizer):
    """Statistics come from the model's raw logits, not from generate's temperature/top-p processed scores."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = [{"role": "user", "content": "Say something."}]
    report, sample = collect_logit_statistics(
        model, tokenizer, [prompt], num_samples=2, temperature=0.3, max_new_tokens=5
    )

    # Independent reference: regenerate the same samples, then take the raw logits with a plain forward.
    torch.manual_seed(0)
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**encoded, do_sample=True, temperature=0.3, top_p=1.0, top_k=0, max_new_tokens=5,
                         num_return_sequences=2, pad_token_id=tokenizer.pad_token_id,
                         output_scores=True, return_dict_in_generate=True)  # fmt: skip
    n = encoded["input_ids"].shape[1]
    raw = []
    for row in out.sequences:
        completion = row[n:].tolist()
        stop = next((i for i, t in enumerate(completion) if t == tokenizer.eos_token_id), None)
        length = len(completion) if stop is None else stop + 1
        with torch.no_grad():
            raw.append(model(input_ids=row[: n + length].unsqueeze(0)).logits[0, n - 1 : n - 1 + length].double())
    raw = torch.cat(raw).numpy().ravel()
    assert report.mean == pytest.approx(raw.mean(), rel=1e-6)
    assert report.std == pytest.approx(raw.std(), rel=1e-6)
    assert report.skewness == pytest.approx(stats.skew(raw), rel=1e-5)
    # The processed scores differ (temperature 0.3 scales them): a collector reading them would report other numbers.
    processed = torch.stack(out.scores, 1)[0, 0].double()
    assert not np.isclose(processed[torch.isfinite(processed)].std().item(), raw.std(), rtol=1e-2)


def make_trainer(tiny_model_dir, tokenizer, tmp_path, **overrides):
    args = EMConfig(
        output_dir=str(tmp_path / "out"), responses_per_step=4, per_device_train_batch_size=4, max_completion_length=6,
        learning_rate=1e-2, gradient_checkpointing=False, report_to="none", save_strategy="no", **overrides,
    )  # fmt: skip
    return EMTrainer(model=tiny_model_dir, args=args, processing_class=tokenizer)


def test_early_stopping_stops_and_restores_the_best_weights(tiny_model_dir, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, max_steps=10)
    scores = iter([0.1, 0.6, 0.4, 0.3, 0.9])  # a dev set built to peak at the second evaluation (step 4)
    snapshots = {}

    def scripted_scorer(model):
        snapshots[trainer.state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return next(scores)

    callback = DevSetEarlyStopping(scripted_scorer, eval_steps=2, patience=2)
    trainer.add_callback(callback)
    trainer.train()
    assert trainer.state.global_step == 8  # evaluations at 2, 4 (best), 6, 8: two without improvement -> stop
    assert callback.best_step == 4 and callback.best_score == 0.6
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, snapshots[4][name], msg=lambda m, n=name: f"{n}: {m}")
    saved = json.loads((tmp_path / "out" / "early_stopping.json").read_text())
    assert saved["best_step"] == 4 and [h["step"] for h in saved["history"]] == [2, 4, 6, 8]
    assert any("early_stopping/score" in log for log in trainer.state.log_history)
    AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "best")


def test_dev_set_scorer_grades_greedy_answers(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    scorer = dev_set_scorer([{"problem": "1+1?", "gold": "2"}, {"problem": "2+2?", "gold": "4"}], tokenizer, 4)
    assert scorer(model) == 0.0  # a random tiny model does not answer; the point is that it runs end to end


def test_config_wires_early_stopping_and_guard(tiny_model_dir, tokenizer, tmp_path):
    args = EMConfig(
        output_dir=str(tmp_path / "out"), responses_per_step=4, per_device_train_batch_size=4, max_completion_length=6,
        gradient_checkpointing=False, report_to="none", save_strategy="no", max_steps=1,
        early_stopping_dev_set="arithmetic", early_stopping_limit=2, early_stopping_max_new_tokens=4,
        early_stopping_eval_steps=1, entropy_floor=0.01,
    )  # fmt: skip
    with pytest.raises(EMConfigError, match="build_dev_set_scorer"):  # the core never builds a scorer itself
        EMTrainer(model=tiny_model_dir, args=args, processing_class=tokenizer)
    trainer = EMTrainer(
        model=tiny_model_dir, args=args, processing_class=tokenizer,
        dev_set_scorer=build_dev_set_scorer(args, tokenizer),
    )  # fmt: skip
    kinds = {type(c).__name__ for c in trainer.callback_handler.callbacks}
    assert {"DevSetEarlyStopping", "CollapseGuard"} <= kinds
    trainer.train()
    assert any("early_stopping/score" in log for log in trainer.state.log_history)


def test_collapse_guard_stops_on_an_entropy_floor(tiny_model_dir, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, max_steps=6, entropy_floor=100.0)
    trainer.train()
    assert trainer.state.global_step == 1  # the first logged entropy is below a floor of 100 nats
    assert any("collapse_guard/stopped" in log for log in trainer.state.log_history)
    guard = CollapseGuard(max_repetition=0.5, completions=lambda: list(trainer._logs["completion"]))
    control = type("C", (), {"should_training_stop": False})()
    trainer._logs["completion"].extend(["the cat the cat the cat the cat the cat the cat"] * 4)
    guard.on_log(trainer.args, trainer.state, control, logs={"entropy": 1.0})
    assert control.should_training_stop and "repetition" in guard.reason


def test_repetition_rate():
    assert repetition_rate("a b c d e f g h") == 0.0
    assert repetition_rate("x y z w " * 20) > 0.9
    assert repetition_rate("short") == 0.0
