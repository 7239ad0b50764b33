"""The EM loss and its gradient equal an independent computation from full logits.

Completions are injected through the model's `generate`, so TRL's own post-processing (EOS truncation, padding,
masks) runs on them: one ends with EOS followed by padding (pad == eos here), one is cut at the length limit, one is
EOS alone, one has tokens after its EOS. Prompts differ in length, so they are left-padded. The reference runs each
row on its own, unpadded, through the plain model forward and `softmax(logits / T)`.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl.trainer.utils import split_tensor_dict

from em_trainer import EMConfig, EMTrainer
from em_trainer.core.config import EMConfigError
from em_trainer.core.objectives import clip_cov_selection, token_entropy_from_logits

MAX_LEN = 6


def make_trainer(tiny_model_dir, tokenizer, tmp_path, reward_funcs=None, **overrides):
    args = EMConfig(
        output_dir=str(tmp_path),
        responses_per_step=4,
        num_generations=2,
        per_device_train_batch_size=2,
        max_completion_length=MAX_LEN,
        report_to="none",
        shuffle_dataset=False,
        **{"gradient_checkpointing": False, **overrides},
    )
    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": "Hi"}]},
            {"prompt": [{"role": "user", "content": "A much longer prompt, so the other one is left-padded."}]},
        ]
    )
    return EMTrainer(
        model=tiny_model_dir, reward_funcs=reward_funcs, args=args, train_dataset=dataset, processing_class=tokenizer
    )


def scripted_completions(tokenizer):
    eos = tokenizer.eos_token_id
    a, b, c, d, e, f = tokenizer.convert_tokens_to_ids(["the", "Ġa", "Ġb", "Ġc", "Ġd", "Ġe"])
    return [
        [a, b, eos, eos, eos, eos],  # ends with EOS, then padding that equals EOS
        [a, b, c, d, e, f],  # cut at max_completion_length
        [eos, eos, eos, eos, eos, eos],  # EOS as the first token
        [c, eos, a, b, eos, eos],  # tokens after the EOS must not count
    ]


def expected_generated(completion, eos):
    return completion[: completion.index(eos) + 1] if eos in completion else completion


def inject_generate(trainer, completions):
    def fake_generate(input_ids, attention_mask=None, **kwargs):
        generated = torch.tensor(completions, dtype=input_ids.dtype, device=input_ids.device)
        return torch.cat([input_ids, generated], dim=1)

    trainer.model.generate = fake_generate


def scripted_batch(trainer, tokenizer):
    """The scripted completions as one generation batch of the trainer (two prompts, two completions each)."""
    completions = scripted_completions(tokenizer)
    inject_generate(trainer, completions)
    rows = [trainer.train_dataset[0]] * 2 + [trainer.train_dataset[1]] * 2
    trainer.model.train()
    return completions, trainer._generate_and_score_completions(rows)


def accumulated_step(trainer, batch):
    """The loss summed over two micro-batches of gradient accumulation, as Trainer.training_step runs them, and the
    gradients it leaves."""
    model = trainer.model
    trainer.current_gradient_accumulation_steps = 2
    model.zero_grad()
    total = 0.0
    for micro in split_tensor_dict(batch, 2):
        loss = trainer.compute_loss(model, micro)
        loss.backward()
        total += loss.item()
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_gradients_match(ours, model):
    """``ours`` against the gradients a reference left in ``model``, norm-based per tensor (elementwise tolerances
    trip on tiny entries whose last digits differ across CPUs)."""
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        error = (ours[name] - param.grad).norm().item()
        assert error <= 1e-4 * param.grad.norm().item() + 1e-9, f"{name}: |g - g_ref| = {error:.3g}"


def reference_loss(model, prompt_rows, completions, temperature, eos):
    """Sum of entropies over all generated positions / their count, one unpadded row at a time."""
    total, count = 0.0, 0
    for prompt, completion in zip(prompt_rows, completions, strict=True):
        generated = expected_generated(completion, eos)
        ids = torch.tensor([prompt + generated])
        logits = model(input_ids=ids, use_cache=False).logits[0]
        # Position p's distribution produced token p + 1: the first generated token's is the last prompt position's.
        start = len(prompt) - 1
        entropy = token_entropy_from_logits(logits[start : start + len(generated)], temperature)
        total = total + entropy.sum()
        count += len(generated)
    return total / count, count


@pytest.mark.parametrize("entropy_temperature", [None, 1.0])
@pytest.mark.parametrize("top_entropy_quantile", [1.0, 0.5])
def test_loss_and_gradient_match_full_logits(
    tiny_model_dir, tokenizer, tmp_path, entropy_temperature, top_entropy_quantile
):
    trainer = make_trainer(
        tiny_model_dir,
        tokenizer,
        tmp_path,
        entropy_temperature=entropy_temperature,
        top_entropy_quantile=top_entropy_quantile,
    )
    completions, batch = scripted_batch(trainer, tokenizer)
    model = trainer.model

    eos = tokenizer.eos_token_id
    # The mask TRL built keeps exactly the generated positions, EOS included.
    lengths = [len(expected_generated(c, eos)) for c in completions]
    assert batch["completion_mask"].sum(1).tolist() == lengths
    assert int(batch["num_items_in_batch"]) == sum(lengths)
    prompts = [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)]
    assert len(prompts[0]) < len(prompts[2]), "the prompts must differ in length to exercise left padding"

    ours, our_grads = accumulated_step(trainer, batch)
    # The default shared-prompt forward is what is checked here (top_entropy_quantile < 1 takes the plain path).
    assert trainer.shared_prompt.state == ("on" if top_entropy_quantile == 1.0 else "unchecked")

    temperature = entropy_temperature or trainer.args.temperature
    model.zero_grad()
    if top_entropy_quantile == 1.0:
        ref, _ = reference_loss(model, prompts, completions, temperature, eos)
    else:
        # TRL picks the high-entropy tokens per micro-batch (over all ranks); only they carry gradient, while the
        # normaliser still counts every generated token of the step.
        per_row = []
        for prompt, completion in zip(prompts, completions, strict=True):
            generated = expected_generated(completion, eos)
            logits = model(input_ids=torch.tensor([prompt + generated]), use_cache=False).logits[0]
            start = len(prompt) - 1
            per_row.append(token_entropy_from_logits(logits[start : start + len(generated)], temperature))
        ref = 0.0
        for micro_rows in (per_row[:2], per_row[2:]):
            flat = torch.cat(micro_rows)
            threshold = torch.quantile(flat.detach(), 1 - top_entropy_quantile)
            # Rows of one prompt share their first distribution: exact ties, which TRL keeps together. The unpadded
            # reference computes them in separate forwards (last-digit differences), hence the tolerance.
            ref = ref + (flat * (flat.detach() >= threshold - 1e-4)).sum()
        ref = ref / sum(lengths)
    ref.backward()

    assert ours == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)
    assert_gradients_match(our_grads, model)


def test_a_first_step_of_one_token_responses_is_refused_with_its_cause(tiny_model_dir, tokenizer, tmp_path):
    """A chat model answering a plain-text prompt with EOS alone: before, EM trained on the entropy of that one token
    without a word; now the first rollout stops the run with the cause and the fix. One short row in four (the
    scripted rollout above) is not refused."""
    eos = tokenizer.eos_token_id
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path / "a")
    inject_generate(trainer, [[eos] * MAX_LEN] * 3 + [scripted_completions(tokenizer)[0]])
    trainer.model.train()
    rows = [trainer.train_dataset[0]] * 2 + [trainer.train_dataset[1]] * 2
    with pytest.raises(EMConfigError, match=r"3 of 4 responses of the first step are one token long.*plain-text"):
        trainer._generate_and_score_completions(rows)
    fine = make_trainer(tiny_model_dir, tokenizer, tmp_path / "b")
    inject_generate(fine, scripted_completions(tokenizer))
    fine.model.train()
    fine._generate_and_score_completions(rows)


@pytest.mark.parametrize("mode", ["psr", "nsr", "w_reinforce"])
def test_psr_nsr_and_w_reinforce_match_reinforce_on_the_kept_responses_from_full_logits(
    tiny_model_dir, tokenizer, tmp_path, mode
):
    """The RLVR reference points of arXiv 2506.01347 against their definition: REINFORCE with advantage +1 on the
    correct responses only (PSR), -1 on the wrong ones only (NSR), or lambda / -1 on all (W-REINFORCE), the token
    mean over the kept responses, log-probs at the sampling temperature from full logits, one unpadded row at a time.
    """
    verdicts = [1.0, 0.0, 0.0, 1.0]

    def accuracy(completions, **kwargs):
        return verdicts[: len(completions)]

    weight = 0.25
    extra = {"positive_advantage_weight": weight} if mode == "w_reinforce" else {}
    trainer = make_trainer(
        tiny_model_dir, tokenizer, tmp_path, reward_funcs=[accuracy], objective="grpo", em_advantage=mode, **extra
    )
    completions, batch = scripted_batch(trainer, tokenizer)
    model = trainer.model
    eos = tokenizer.eos_token_id
    lengths = [len(expected_generated(c, eos)) for c in completions]
    advantage = {
        "psr": [1.0, 0.0, 0.0, 1.0],
        "nsr": [0.0, -1.0, -1.0, 0.0],
        "w_reinforce": [weight, -1.0, -1.0, weight],
    }[mode]
    kept = [a != 0 for a in advantage]
    assert batch["advantages"].tolist() == advantage
    assert batch["completion_mask"].sum(1).tolist() == [n if k else 0 for n, k in zip(lengths, kept, strict=True)]
    tokens = sum(n for n, k in zip(lengths, kept, strict=True) if k)
    assert int(batch["num_items_in_batch"]) == tokens

    ours, our_grads = accumulated_step(trainer, batch)

    prompts = [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)]
    model.zero_grad()
    ref = 0.0
    for prompt, completion, a, keep in zip(prompts, completions, advantage, kept, strict=True):
        if not keep:
            continue
        generated = expected_generated(completion, eos)
        logits = model(input_ids=torch.tensor([prompt + generated]), use_cache=False).logits[0]
        start = len(prompt) - 1
        logps = torch.log_softmax(logits[start : start + len(generated)].float() / trainer.args.temperature, -1)
        ref = ref - a * logps.gather(-1, torch.tensor(generated).unsqueeze(-1)).sum()
    (ref / tokens).backward()
    # On-policy the ratio is 1: the loss value is -sum(A_i * |y_i|) / tokens, its gradient that of the reference.
    by_value = -sum(a * n for a, n, k in zip(advantage, lengths, kept, strict=True) if k) / tokens
    assert ours == pytest.approx(by_value, rel=1e-5, abs=1e-6)
    assert_gradients_match(our_grads, model)


def test_signed_reinforce_refuses_a_reward_that_is_not_right_or_wrong(tiny_model_dir, tokenizer, tmp_path):
    trainer = make_trainer(
        tiny_model_dir, tokenizer, tmp_path, reward_funcs=[lambda completions, **kw: [0.5] * len(completions)],
        objective="grpo", em_advantage="psr",
    )  # fmt: skip
    with pytest.raises(EMConfigError, match=r"em_advantage='psr' needs a 0/1 verifiable reward.*0\.5"):
        scripted_batch(trainer, tokenizer)


def test_clip_cov_selection_is_the_covariance_band_drawn_at_the_ratio():
    """Clip-Cov's token choice against a per-token loop: centred products, the band, the count, the PPO-clipped
    tokens left alone."""
    torch.manual_seed(0)
    logps = -torch.rand(3, 5) * 4
    advantages = torch.tensor([1.5, -0.5, -1.0])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    cells = [(i, t) for i in range(3) for t in range(5) if mask[i, t]]
    mean_a = sum(float(advantages[i]) for i, _ in cells) / len(cells)
    mean_l = sum(float(logps[i, t]) for i, t in cells) / len(cells)
    band = {(i, t) for i, t in cells if 0.2 < (float(advantages[i]) - mean_a) * (float(logps[i, t]) - mean_l) < 3}
    assert 0 < len(band) < len(cells)
    everything = clip_cov_selection(logps, advantages, mask, ratio=1.0, lower=0.2, upper=3)
    assert {tuple(x) for x in torch.nonzero(everything).tolist()} == band
    some = clip_cov_selection(logps, advantages, mask, ratio=0.1, lower=0.2, upper=3)
    chosen = {tuple(x) for x in torch.nonzero(some).tolist()}
    assert chosen <= band and len(chosen) == min(max(int(0.1 * len(cells)), 1), len(band))
    held = torch.zeros_like(everything)
    first = sorted(band)[0]
    held[first] = True
    assert first not in {tuple(x) for x in torch.nonzero(clip_cov_selection(
        logps, advantages, mask, ratio=1.0, lower=0.2, upper=3, clipped=held)).tolist()}  # fmt: skip


def test_clip_cov_detaches_exactly_the_band_tokens_of_the_grpo_loss_from_full_logits(
    tiny_model_dir, tokenizer, tmp_path
):
    """The GRPO loss with Clip-Cov (ratio 1: every token in the band) has the gradient of TRL's loss without the band's
    tokens, computed from full logits with each micro-batch's own means; without Clip-Cov the gradient differs."""
    verdicts = [1.0, 0.0, 0.0, 1.0]

    def accuracy(completions, **kwargs):
        return verdicts[: len(completions)]

    band = (0.0, 100.0)
    grads, selected_count = {}, 0
    for cov in ("clip_cov", None):
        extra = {"cov_regularization": cov, "clip_cov_ratio": 1.0, "clip_cov_lower": band[0]} if cov else {}
        trainer = make_trainer(
            tiny_model_dir, tokenizer, tmp_path / str(cov), reward_funcs=[accuracy], objective="grpo", **extra
        )
        completions, batch = scripted_batch(trainer, tokenizer)
        model = trainer.model
        _, grads[cov] = accumulated_step(trainer, batch)

    eos = tokenizer.eos_token_id
    prompts = [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)]
    advantages = batch["advantages"].tolist()
    model.zero_grad()
    ref = 0.0
    for micro in ((0, 1), (2, 3)):
        per_row = {}
        for i in micro:
            generated = expected_generated(completions[i], eos)
            logits = model(input_ids=torch.tensor([prompts[i] + generated]), use_cache=False).logits[0]
            start = len(prompts[i]) - 1
            logps = torch.log_softmax(logits[start : start + len(generated)].float() / trainer.args.temperature, -1)
            per_row[i] = logps.gather(-1, torch.tensor(generated).unsqueeze(-1)).squeeze(-1)
        cells = [(i, t) for i in micro for t in range(len(per_row[i]))]
        mean_a = sum(advantages[i] for i, _ in cells) / len(cells)
        mean_l = sum(per_row[i][t].item() for i, t in cells) / len(cells)
        for i, t in cells:
            if band[0] < (advantages[i] - mean_a) * (per_row[i][t].item() - mean_l) < band[1]:
                selected_count += 1
            else:
                ref = ref - advantages[i] * per_row[i][t]
    (ref / int(batch["num_items_in_batch"])).backward()
    assert 0 < selected_count < int(batch["num_items_in_batch"])
    assert_gradients_match(grads["clip_cov"], model)
    differs = any(
        (grads[None][name] - param.grad).norm().item() > 1e-3 * param.grad.norm().item()
        for name, param in model.named_parameters()
        if param.grad is not None
    )
    assert differs, "the band's tokens carried gradient: the reference cannot tell Clip-Cov from plain GRPO"
