"""What EMTrainer relies on inside TRL: its call order, its fused head's gather switch, reference-model temperature."""

from __future__ import annotations

import torch
from trl.trainer import utils as trl_utils
from trl.trainer.utils import add_fused_lm_head

from em_trainer import EMConfig, EMTrainer
from em_trainer.core import fused_head

from .conftest import build_tiny_model
from .test_em_rl import rollout
from .test_loss_reference import expected_generated, make_trainer


def _record_calls(trainer, log):
    for name in ("_generate", "_get_per_token_logps_and_entropies", "_calculate_rewards"):
        original = getattr(trainer, name)

        def wrapper(*args, _name=name, _original=original, **kwargs):
            log.append(_name)
            return _original(*args, **kwargs)

        setattr(trainer, name, wrapper)


def test_trl_call_order(tiny_model_dir, tokenizer, tmp_path):
    """The order RolloutStash relies on: rollout, then TRL's no-grad forward if (and only if) the trainer expects one,
    then the rewards. Fails if TRL reorders these calls or changes when it runs the old-log-prob forward."""
    for num_iterations in (1, 2):
        trainer = make_trainer(
            tiny_model_dir, tokenizer, tmp_path / str(num_iterations), objective="neg_entropy_reward",
            num_iterations=num_iterations,
        )  # fmt: skip
        trainer.shared_prompt.state = "on"  # its first-use check calls the plain pass too: not TRL's order
        log: list[str] = []
        _record_calls(trainer, log)
        batch, _, _ = rollout(trainer, tokenizer)
        expected = ["_generate"]
        if trainer._trl_computes_old_logps:
            expected.append("_get_per_token_logps_and_entropies")
        expected.append("_calculate_rewards")
        assert log[: len(expected)] == expected, (num_iterations, log)
        assert (batch.get("old_per_token_logps") is not None) == trainer._trl_computes_old_logps
        assert trainer._trl_computes_old_logps == (num_iterations == 2)


def test_em_rl_leaves_the_callers_config_alone(tiny_model_dir, tokenizer, tmp_path):
    def always_one(completions, **kwargs):
        return [1.0] * len(completions)

    args = EMConfig(
        output_dir=str(tmp_path), responses_per_step=4, num_generations=4, per_device_train_batch_size=4,
        objective="neg_entropy_reward", reward_weights=[2.0], em_reward_weight=0.5, report_to="none",
    )  # fmt: skip
    trainer = EMTrainer(model=tiny_model_dir, args=args, reward_funcs=[always_one], processing_class=tokenizer)
    assert args.reward_weights == [2.0]
    assert trainer.args.reward_weights == [0.5, 2.0]


def test_reference_model_logprobs_use_the_entropy_temperature(tiny_model_dir, tokenizer, tmp_path):
    """beta > 0 without PEFT: TRL's separate reference model must score at the temperature of the policy's loss."""
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, beta=0.1, entropy_temperature=1.3)
    assert trainer.ref_model is not None and trainer.temperature == 0.5
    batch, prompts, completions = rollout(trainer, tokenizer)
    eos = tokenizer.eos_token_id
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        generated = expected_generated(completion, eos)
        with torch.no_grad():
            logits = trainer.ref_model(input_ids=torch.tensor([prompt + generated]), use_cache=False).logits[0]
        start = len(prompt) - 1
        log_p = torch.log_softmax(logits[start : start + len(generated)].double() / 1.3, -1)
        want = log_p[torch.arange(len(generated)), torch.tensor(generated)]
        got = batch["ref_per_token_logps"][row, : len(generated)].double()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_generated_positions_only_patch_still_takes_effect(tokenizer, monkeypatch):
    """If TRL stops consulting ``_use_triton`` (or renames it), the CPU speed-up would vanish silently: fail here."""
    assert hasattr(trl_utils, "_use_triton"), "TRL no longer has _use_triton: revisit core/fused_head.py"
    model = build_tiny_model(tokenizer)
    add_fused_lm_head(model, temperature=0.5, outputs=("log_probs", "entropy"))
    input_ids = torch.randint(0, 100, (2, 12))
    labels = input_ids.clone()
    labels[:, :8] = -100  # a prompt of 8 positions without labels
    projected, consulted = [], []
    original = trl_utils._ChunkedLogProbFunction

    class SpyFunction:
        @staticmethod
        def apply(hidden, *args):
            projected.append(hidden.shape[0])
            return original.apply(hidden, *args)

    def spy_switch(device):
        consulted.append(device.type)
        return device.type != "neuron"

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", SpyFunction)
    monkeypatch.setattr(fused_head, "_gather_except_on_neuron", spy_switch)
    with fused_head.score_generated_positions_only():
        model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    assert consulted == ["cpu"]
    assert projected == [int((labels[:, 1:] != -100).sum())]  # only the labelled positions reach the LM head
    projected.clear()
    model(input_ids=input_ids, labels=labels, fused_lm_head=True)  # outside the context: TRL's own CPU behaviour
    assert projected == [2 * 11]
