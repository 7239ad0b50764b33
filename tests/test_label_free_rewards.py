"""The label-free rewards against independent reference computations, and against completions written to game them."""

from __future__ import annotations

import math

import pytest
import torch

from em_trainer.core.objectives import self_certainty_from_hidden, self_certainty_from_logits
from em_trainer.evaluation.label_free_rewards import (
    format_reward,
    majority_vote_reward,
    make_random_reward,
    semantic_entropy_reward,
)


def boxed(answer: str) -> str:
    return f"The answer is $\\boxed{{{answer}}}$."


def test_self_certainty_is_the_kl_from_uniform_computed_in_float64():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 4
    for temperature in (1.0, 0.5):
        p = torch.softmax(logits.double() / temperature, dim=-1)
        uniform = torch.full_like(p, 1 / 11)
        reference = (uniform * (uniform.log() - p.log())).sum(-1)
        got = self_certainty_from_logits(logits, temperature)
        assert torch.allclose(got.double(), reference, atol=1e-5)
    assert torch.allclose(self_certainty_from_logits(torch.zeros(2, 7)), torch.zeros(2), atol=1e-6), "uniform: 0"
    peaked = torch.tensor([[20.0, 0, 0, 0]])
    assert self_certainty_from_logits(peaked) > self_certainty_from_logits(torch.tensor([[2.0, 0, 0, 0]]))


@pytest.mark.parametrize("scale, softcap", [(1.0, None), (0.5, 3.0)])
def test_self_certainty_from_hidden_states_matches_full_logits_in_chunks(scale, softcap):
    """The trainer's path: hidden states through the head a few rows at a time, scaled and soft-capped as the model's
    own head; against the full logits' self-certainty, and with chunks that do not divide the rows."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True)
    hidden = torch.randn(3, 7, 8) * 3
    logits = head(hidden) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    want = self_certainty_from_logits(logits, 0.7)
    with torch.no_grad():
        got = self_certainty_from_hidden(hidden, head, 0.7, scale, softcap, chunk_size=4)
    assert got.shape == (3, 7)
    torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=1e-5)
    assert self_certainty_from_hidden(hidden[:0], head).shape == (0, 7)


def test_semantic_entropy_reward_is_each_answers_cluster_share_per_prompt():
    # Prompt A: 1/2 and 0.5 are one answer (3 of 4 with 2/4), 3 alone; prompt B: no answer, then two equal answers.
    prompts = ["A"] * 4 + ["B"] * 3
    completions = [boxed("1/2"), boxed("0.5"), boxed("3"), boxed("2/4"), "I do not know.", boxed("7"), boxed("7")]
    assert semantic_entropy_reward(completions, prompts=prompts) == [0.75, 0.75, 0.25, 0.75, 0.0, 2 / 3, 2 / 3]
    # Chat-format completions (lists of messages), as TRL passes them for conversational datasets.
    chat = [[{"role": "assistant", "content": c}] for c in completions]
    assert semantic_entropy_reward(chat, prompts=prompts) == semantic_entropy_reward(completions, prompts=prompts)


def test_majority_vote_reward_matches_the_groups_majority_answer():
    prompts = ["A"] * 5 + ["B"] * 2
    completions = [boxed("4"), boxed("5"), boxed("4.0"), "no answer", boxed("5"), boxed("1"), boxed("2")]
    # A: 4 (twice, 4.0 counts) ties 5 (twice): the first seen wins; B: a tie of singletons goes to the first.
    assert majority_vote_reward(completions, prompts=prompts) == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    "completion, reward",
    [
        (boxed("3"), 1.0),
        ("\\boxed{}", 0.0),  # an empty box is not the format
        ("\\boxed{   }", 0.0),
        ("the answer is 3", 0.0),
        ("\\boxed{2} then \\boxed{}", 0.0),  # the last box counts, as the graders read it
        ("\\boxed{\\frac{1}{2}}", 1.0),
    ],
)
def test_format_reward_needs_a_non_empty_box(completion, reward):
    assert format_reward([completion]) == [reward]


def test_answer_rewards_are_not_fooled_by_many_boxes_or_unparseable_answers():
    """Listing every candidate answer does not join every cluster: only the last box is the answer."""
    prompts = ["A"] * 3
    completions = [boxed("2"), "\\boxed{1} \\boxed{2} \\boxed{3} and finally \\boxed{9}", boxed("2")]
    assert majority_vote_reward(completions, prompts=prompts) == [1.0, 0.0, 1.0]
    assert semantic_entropy_reward(completions, prompts=prompts) == [2 / 3, 1 / 3, 2 / 3]
    # Whitespace and padding do not make a new answer; text without any answer earns nothing.
    assert semantic_entropy_reward(["\\boxed{ 2 }", boxed("2"), ""], prompts=prompts) == [2 / 3, 2 / 3, 0.0]


def test_random_reward_is_reproducible_independent_of_the_text_and_near_gamma():
    class State:
        global_step = 3

    reward = make_random_reward(seed=1, gamma=0.5)
    texts = [f"completion {i}" for i in range(2000)]
    first = reward(texts, trainer_state=State())
    assert first == make_random_reward(seed=1)(["x"] * 2000, trainer_state=State()), "the text never changes it"
    # A second generation batch in the same optimizer step draws new coins; a fresh run replays the same sequence.
    second = reward(texts, trainer_state=State())
    assert second != first
    replay = make_random_reward(seed=1)
    assert [replay(texts, trainer_state=State()), replay(texts, trainer_state=State())] == [first, second]
    State.global_step = 4
    assert reward(texts, trainer_state=State())[:50] == make_random_reward(seed=1)(texts, trainer_state=State())[:50]
    State.global_step = 3
    assert first != make_random_reward(seed=2)(texts, trainer_state=State())
    mean = sum(first) / len(first)
    assert abs(mean - 0.5) < 4 * math.sqrt(0.25 / len(first))
    assert sum(make_random_reward(seed=1, gamma=0.1)(texts)) / len(texts) < 0.15
    with pytest.raises(ValueError, match="gamma"):
        make_random_reward(gamma=1.5)


@pytest.mark.slow
def test_the_rewards_train_with_trls_own_grpo_trainer(tiny_model_dir, tmp_path):
    """Plain functions in TRL's signature: TRL's GRPOTrainer takes them as they are and logs each one."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from em_trainer.evaluation.label_free_rewards import random_reward

    dataset = Dataset.from_list([{"prompt": "What is 2 + 3? Put the answer in \\boxed{}."}] * 4)
    args = GRPOConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=8, report_to="none", bf16=False, use_cpu=True, logging_steps=1, save_strategy="no",
    )  # fmt: skip
    rewards = [semantic_entropy_reward, majority_vote_reward, format_reward, random_reward]
    trainer = GRPOTrainer(model=tiny_model_dir, reward_funcs=rewards, args=args, train_dataset=dataset)
    trainer.train()
    logged = {k for log in trainer.state.log_history for k in log}
    for name in ("semantic_entropy_reward", "majority_vote_reward", "format_reward", "random_reward"):
        assert f"rewards/{name}/mean" in logged, (name, sorted(logged))


# ------------------------------------------------------------------------------------ EMTrainer(objective="grpo")
def _one_step(trainer_class, config_class, model_dir, output_dir, rewards, **extra):
    from datasets import Dataset

    torch.manual_seed(0)
    dataset = Dataset.from_list([{"prompt": "What is 2 + 3? Put the answer in \\boxed{}."}] * 4)
    args = config_class(
        output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=8, report_to="none", bf16=False, use_cpu=True, logging_steps=1, save_strategy="no",
        learning_rate=1e-2, lr_scheduler_type="constant", temperature=1.0, beta=0.0, seed=3, **extra,
    )  # fmt: skip
    trainer = trainer_class(model=model_dir, reward_funcs=rewards, args=args, train_dataset=dataset)
    trainer.train()
    return trainer


def test_grpo_objective_is_trls_grpo_on_the_rewards_passed(tiny_model_dir, tmp_path):
    """objective='grpo' on TRL's own rollout path gives TRL's GRPOTrainer's update, weight for weight; a different
    reward gives a different update (the reward is what trains)."""
    from trl import GRPOConfig, GRPOTrainer

    from em_trainer import EMConfig, EMTrainer

    def length_reward(completions, **kwargs):  # varies within the group, so the advantages are not all zero
        return [float(len(c)) for c in completions]

    def shortness_reward(completions, **kwargs):
        return [-float(len(c)) for c in completions]

    reference = _one_step(GRPOTrainer, GRPOConfig, tiny_model_dir, tmp_path / "trl", [length_reward])
    exact = dict(objective="grpo", responses_per_step=4, shared_prompt_forward=False, cpu_fast_rollouts=False)
    ours = _one_step(EMTrainer, EMConfig, tiny_model_dir, tmp_path / "em", [length_reward], **exact)
    other = _one_step(EMTrainer, EMConfig, tiny_model_dir, tmp_path / "em2", [shortness_reward], **exact)
    from transformers import AutoModelForCausalLM

    base = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    theirs = dict(reference.model.named_parameters())
    gaps, moved, differs = 0.0, 0.0, 0.0
    for name, parameter in ours.model.named_parameters():
        gaps = max(gaps, (parameter - theirs[name]).abs().max().item())
        moved = max(moved, (parameter - base[name]).abs().max().item())
        differs = max(differs, (dict(other.model.named_parameters())[name] - parameter).abs().max().item())
    assert moved > 1e-4, "the step did not move the weights"
    assert gaps < 1e-6, f"objective='grpo' differs from TRL's GRPOTrainer by {gaps}"
    assert differs > 1e-4, "a different reward gave the same update"
    logged = {k for log in ours.state.log_history for k in log}
    assert "rewards/length_reward/mean" in logged and "rewards/_no_reward/mean" not in logged


def test_grpo_objective_trains_with_label_free_rewards_through_the_fast_rollouts(tiny_model_dir, tmp_path):
    from em_trainer import EMConfig, EMTrainer

    trainer = _one_step(
        EMTrainer, EMConfig, tiny_model_dir, tmp_path, [majority_vote_reward, make_random_reward(seed=1)],
        objective="grpo", responses_per_step=4,
    )  # fmt: skip
    logged = {k for log in trainer.state.log_history for k in log}
    assert {"rewards/majority_vote_reward/mean", "rewards/random_reward/mean"} <= logged
    assert "GRPO on majority_vote_reward, random_reward" in trainer._objective_description()


def test_train_cli_takes_rewards_by_name_and_they_enter_the_run_identity(tiny_model_dir, tmp_path):
    import json

    from em_trainer.cli import main
    from em_trainer.evaluation.reward_names import REWARD_NAMES, reward_functions

    dataset = tmp_path / "gold.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                               for i in range(2)))  # fmt: skip
    config = tmp_path / "arm.yaml"
    config.write_text(f"model: {tiny_model_dir}\nobjective: grpo\nreward_funcs: [accuracy, format]\n")
    common = ["--dataset", str(dataset), "--responses_per_step", "4", "--num_generations", "2",
              "--per_device_train_batch_size", "4", "--max_completion_length", "4", "--max_steps", "1",
              "--report_to", "none"]  # fmt: skip
    assert main(["train", "--config", str(config), "--output_dir", str(tmp_path / "a"), *common]) == 0
    state = json.loads((tmp_path / "a" / "trainer_state.json").read_text())
    logged = {k for log in state["log_history"] for k in log}
    assert {"rewards/accuracy_reward/mean", "rewards/format_reward/mean"} <= logged, sorted(logged)
    identity = json.loads((tmp_path / "a" / "run_identity.json").read_text())
    assert identity["script"]["reward_funcs"] == ["accuracy", "format"]
    assert "GRPO on accuracy_reward, format_reward" in (tmp_path / "a" / "README.md").read_text()
    # Every documented name resolves; the random control is seeded by the run's seed.
    assert len(reward_functions(list(REWARD_NAMES), seed=0)) == len(REWARD_NAMES)
    coin = [reward_functions(["random"], seed=s)[0](completions=["x"] * 64) for s in (0, 0, 1)]
    assert coin[0] == coin[1] != coin[2]
