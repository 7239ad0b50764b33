"""Measurements of what EM did to a model, independent of the trainer's own logs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import is_conversational_prompt
from .objectives import token_entropy_from_logits


@dataclass
class SampleEntropy:
    """Mean token entropy of fresh samples, and what it was averaged over."""

    mean_entropy: float
    num_samples: int
    num_tokens: int
    mean_length: float

    def __str__(self) -> str:
        return (
            f"mean token entropy {self.mean_entropy:.4f} nats over {self.num_tokens} generated tokens "
            f"({self.num_samples} samples, mean length {self.mean_length:.1f})"
        )


def render_prompt(prompt: Any, tokenizer: PreTrainedTokenizerBase) -> str:
    """Plain text of a prompt: chat messages go through the tokenizer's chat template, text is kept."""
    if is_conversational_prompt(prompt):
        if tokenizer.chat_template is None:
            return "\n\n".join(m["content"] for m in prompt)
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt


@torch.no_grad()
def fresh_sample_entropy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Any],
    num_samples: int = 8,
    temperature: float = 0.5,
    max_new_tokens: int = 64,
    seed: int = 0,
) -> SampleEntropy:
    """Sample ``num_samples`` responses per prompt and average the entropy of ``softmax(logits / temperature)``.

    The positions are those whose distribution produced a generated token, up to and including the first EOS. The
    entropy comes from a separate full-logits forward pass, not from the sampler's processed scores.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos_ids = model.generation_config.eos_token_id
    eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [tokenizer.eos_token_id])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    total, count, lengths = 0.0, 0, []
    try:
        for prompt in prompts:
            text = render_prompt(prompt, tokenizer)
            encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
            prompt_len = encoded["input_ids"].shape[1]
            output = model.generate(
                **encoded,
                do_sample=True,
                temperature=temperature,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples,
                pad_token_id=pad_id,
                eos_token_id=eos_ids,
            )
            completions = output[:, prompt_len:]
            is_eos = torch.isin(completions, torch.tensor(eos_ids, device=device))
            first_eos = torch.where(
                is_eos.any(1),
                is_eos.int().argmax(1),
                torch.full_like(is_eos[:, 0], completions.shape[1], dtype=torch.long),
            )
            positions = torch.arange(completions.shape[1], device=device)
            mask = positions.unsqueeze(0) <= first_eos.unsqueeze(1)
            attention = torch.cat([torch.ones_like(output[:, :prompt_len]), mask.long()], dim=1)
            logits = model(input_ids=output, attention_mask=attention).logits
            # The distribution at position p predicts token p + 1: completion token j comes from prompt_len - 1 + j.
            step_logits = logits[:, prompt_len - 1 : -1]
            entropy = token_entropy_from_logits(step_logits, temperature)
            total += float((entropy * mask).sum())
            count += int(mask.sum())
            lengths.extend(mask.sum(1).tolist())
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return SampleEntropy(total / max(count, 1), len(lengths), count, sum(lengths) / max(len(lengths), 1))
