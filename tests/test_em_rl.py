"""EM-RL: each negative-entropy reward equals a reference from full logits; weights combine; RLOO scaling."""

from __future__ import annotations

import pytest
import torch

from em_trainer import EMConfig
from em_trainer.core.objectives import token_entropy_from_logits

from .test_loss_reference import expected_generated, inject_generate, make_trainer, scripted_completions


def reference_rewards(model, prompts, completions, temperature, eos, kind, reduction):
    rewards = []
    for prompt, completion in zip(prompts, completions, strict=True):
        generated = expected_generated(completion, eos)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + generated]), use_cache=False).logits[0].double()
        start = len(prompt) - 1
        step_logits = logits[start : start + len(generated)]
        if kind == "trajectory":
            log_p = torch.log_softmax(step_logits / temperature, -1)
            values = log_p[torch.arange(len(generated)), torch.tensor(generated)]
        elif kind == "self_certainty":
            # KL(U || p) written out over the vocabulary, in float64.
            p = torch.softmax(step_logits / temperature, -1)
            vocab = p.shape[-1]
            values = ((1.0 / vocab) * (torch.log(torch.tensor(1.0 / vocab, dtype=p.dtype)) - p.log())).sum(-1)
        else:
            values = -token_entropy_from_logits(step_logits, temperature)
        rewards.append(values.mean().item() if reduction == "mean" else values.sum().item())
    return rewards


def rollout(trainer, tokenizer):
    completions = scripted_completions(tokenizer)
    inject_generate(trainer, completions)
    rows = [trainer.train_dataset[0]] * 2 + [trainer.train_dataset[1]] * 2
    trainer.model.train()
    batch = trainer._generate_and_score_completions(rows)
    prompts = [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)]
    return batch, prompts, completions


@pytest.mark.parametrize("kind", ["trajectory", "token", "self_certainty"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_rewards_match_full_logits(tiny_model_dir, tokenizer, tmp_path, kind, reduction):
    trainer = make_trainer(
        tiny_model_dir,
        tokenizer,
        tmp_path,
        objective="neg_entropy_reward",
        em_reward=kind,
        em_reward_reduction=reduction,
    )
    batch, prompts, completions = rollout(trainer, tokenizer)
    name = "self_certainty" if kind == "self_certainty" else f"neg_entropy_{kind}"
    got = list(trainer._logs["rewards"][name])
    want = reference_rewards(trainer.model, prompts, completions, 0.5, tokenizer.eos_token_id, kind, reduction)
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    # GRPO's group advantages come from these rewards: the two groups are rows (0, 1) and (2, 3).
    advantages = batch["advantages"]
    assert advantages[0] * advantages[1] <= 0 and advantages[2] * advantages[3] <= 0


def test_reward_reuses_trls_old_logprob_pass(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """When TRL runs its no-grad old-log-prob pass, the EM reward takes its entropies instead of a second forward."""
    trainer = make_trainer(
        tiny_model_dir, tokenizer, tmp_path, objective="neg_entropy_reward", em_reward="token", num_iterations=2
    )
    assert trainer._trl_computes_old_logps
    trainer.shared_prompt.state = "on"  # its one-time check against the plain pass would add forwards
    calls = []
    original = trainer.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "forward", counting_forward)
    batch, prompts, completions = rollout(trainer, tokenizer)
    # One no-grad pass over the 4 rollouts, in chunks of per_device_train_batch_size=2: no second pass for the reward.
    assert calls == [False, False]
    assert "old_per_token_logps" in batch
    want = reference_rewards(trainer.model, prompts, completions, 0.5, tokenizer.eos_token_id, "token", "mean")
    assert list(trainer._logs["rewards"]["neg_entropy_token"]) == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_em_reward_combines_with_user_rewards_by_weight(tiny_model_dir, tokenizer, tmp_path):
    def always_one(completions, **kwargs):
        return [1.0] * len(completions)

    trainer = make_trainer(
        tiny_model_dir, tokenizer, tmp_path, objective="neg_entropy_reward", em_reward_weight=0.5,
        reward_weights=[2.0], reward_funcs=[always_one],
    )  # fmt: skip
    assert trainer.reward_func_names == ["neg_entropy_token", "always_one"]
    assert trainer.reward_weights.tolist() == [0.5, 2.0]
    rollout(trainer, tokenizer)
    em = torch.tensor(list(trainer._logs["rewards"]["neg_entropy_token"]))
    assert trainer._metrics["train"]["reward"][-1] == pytest.approx((0.5 * em + 2.0).mean().item(), rel=1e-5)


def test_rloo_is_leave_one_out_scaling(tiny_model_dir, tokenizer, tmp_path):
    losses = {}
    for advantage in ("grpo", "rloo"):
        trainer = make_trainer(
            tiny_model_dir, tokenizer, tmp_path / advantage, objective="neg_entropy_reward", em_advantage=advantage,
            scale_rewards="none",
        )  # fmt: skip
        batch, _, _ = rollout(trainer, tokenizer)
        trainer.current_gradient_accumulation_steps = 1
        losses[advantage] = trainer.compute_loss(trainer.model, batch).item()
    group = 2
    assert losses["rloo"] == pytest.approx(losses["grpo"] * group / (group - 1), rel=1e-5)


def test_em_rl_config_errors_and_preset(tmp_path):
    from em_trainer import EMConfigError

    with pytest.raises(EMConfigError, match="scale_rewards='none'"):
        EMConfig(output_dir=str(tmp_path), objective="neg_entropy_reward", em_advantage="rloo")
    with pytest.raises(EMConfigError, match="objective"):
        EMConfig(output_dir=str(tmp_path), objective="entropy")
    # PSR/NSR/W-REINFORCE: a 0/1 reward under objective='grpo', the reward itself as the advantage.
    with pytest.raises(EMConfigError, match="use objective='grpo'"):
        EMConfig(output_dir=str(tmp_path), objective="neg_entropy_reward", em_advantage="psr")
    with pytest.raises(EMConfigError, match="no baseline, no scaling"):
        EMConfig(output_dir=str(tmp_path), objective="grpo", em_advantage="nsr", scale_rewards="none")
    with pytest.raises(EMConfigError, match="positive_advantage_weight=0.3 is W-REINFORCE's lambda"):
        EMConfig(output_dir=str(tmp_path), objective="grpo", em_advantage="psr", positive_advantage_weight=0.3)
    with pytest.raises(EMConfigError, match="'psr', 'nsr' or 'w_reinforce'"):
        EMConfig(output_dir=str(tmp_path), objective="grpo", em_advantage="reinforce")
    # Clip-Cov: a change of the GRPO loss; its knobs only with it.
    with pytest.raises(EMConfigError, match="objective='entropy_loss' \\(EM-FT\\) has none"):
        EMConfig(output_dir=str(tmp_path), cov_regularization="clip_cov")
    with pytest.raises(EMConfigError, match="clip_cov_ratio tune Clip-Cov"):
        EMConfig(output_dir=str(tmp_path), objective="grpo", clip_cov_ratio=0.01)
    with pytest.raises(EMConfigError, match="lower < upper"):
        EMConfig(output_dir=str(tmp_path), objective="grpo", cov_regularization="clip_cov", clip_cov_lower=6.0)
    with pytest.raises(EMConfigError, match="use 'clip_cov'"):
        EMConfig(output_dir=str(tmp_path), objective="grpo", cov_regularization="kl_cov")
    preset = EMConfig.em_rl_paper_defaults(output_dir=str(tmp_path))
    assert (preset.num_generations, preset.learning_rate, preset.beta, preset.temperature) == (4, 1e-6, 0.001, 1.0)
    assert preset.objective == "neg_entropy_reward"


def test_rent_is_the_token_reward_by_name_and_unknown_rewards_are_named(tmp_path):
    from em_trainer import EMConfigError

    config = EMConfig(output_dir=str(tmp_path), objective="neg_entropy_reward", em_reward="rent")
    assert config.em_reward == "token"
    with pytest.raises(EMConfigError, match="'trajectory', 'token' or 'self_certainty'"):
        EMConfig(output_dir=str(tmp_path), objective="neg_entropy_reward", em_reward="confidence")
