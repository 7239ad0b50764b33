"""Run under `torchrun --nproc_per_node N` (N = 1 or 2): one training micro-step of every objective and reward.

Every run has one prompt and one group of 4 fixed completions (the same token ids whatever N: generation is scripted,
so that the rewards, loss and gradients can be compared; everything after the rollout is the real trainer). With 2
processes each holds 2 completions, so the group spans the ranks. Rank 0 saves, per configuration, the rewards and
advantages of the whole batch, the loss averaged over ranks (as Trainer logs it) and the gradient after DDP's
averaging, to `<output_dir>/world-<N>.pt`; tests/test_multiprocess.py compares the two files.
"""

from __future__ import annotations

import os
import sys

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoTokenizer

from em_trainer import EMConfig, EMTrainer
from em_trainer.evaluation.reward_names import reward_functions

# name -> (EMConfig fields, reward names)
CONFIGS: dict[str, tuple[dict, list[str]]] = {
    "em_ft": ({"objective": "entropy_loss"}, []),
    "em_rl_token": ({"objective": "neg_entropy_reward", "em_reward": "token"}, []),
    "em_rl_trajectory": ({"objective": "neg_entropy_reward", "em_reward": "trajectory"}, []),
    "self_certainty": ({"objective": "neg_entropy_reward", "em_reward": "self_certainty"}, []),
    "semantic_entropy": ({"objective": "grpo"}, ["semantic_entropy"]),
    "majority_vote": ({"objective": "grpo"}, ["majority_vote"]),
    "format": ({"objective": "grpo"}, ["format"]),
    "random": ({"objective": "grpo"}, ["random"]),
    # The 0/1 gold reward as the advantage: the kept rows differ per rank, the token mean is over all ranks' kept rows.
    "psr": ({"objective": "grpo", "em_advantage": "psr"}, ["accuracy"]),
    "nsr": ({"objective": "grpo", "em_advantage": "nsr"}, ["accuracy"]),
    "w_reinforce": ({"objective": "grpo", "em_advantage": "w_reinforce"}, ["accuracy"]),
}
# Answers 4, 4, 5 and none: split 2 + 2 over two ranks, the second rank alone would see a tie of 5 and nothing.
TEXTS = ["The answer is \\boxed{4}.", "So \\boxed{4}", "I get \\boxed{5} here", "4.0 is it"]
GROUP, LENGTH = 4, 12


def completion_ids(tokenizer) -> torch.Tensor:
    rows = []
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: LENGTH - 1] + [tokenizer.eos_token_id]
        rows.append(ids + [tokenizer.eos_token_id] * (LENGTH - len(ids)))
    return torch.tensor(rows)


def one_step(name: str, lora: bool, model_dir: str, output_dir: str, tokenizer, rank: int, world: int) -> dict:
    fields, rewards = CONFIGS[name]
    args = EMConfig(
        output_dir=os.path.join(output_dir, f"{name}-{lora}"), responses_per_step=GROUP, num_generations=GROUP,
        per_device_train_batch_size=GROUP // world, max_completion_length=LENGTH, gradient_checkpointing=False,
        report_to="none", shuffle_dataset=False, temperature=1.0, seed=5, **fields,
    )  # fmt: skip
    prompt = [{"role": "user", "content": "What is 2 + 2? Put it in \\boxed{}."}]
    dataset = Dataset.from_list([{"prompt": prompt, "answer": "4"}])
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if lora else None
    torch.manual_seed(0)
    trainer = EMTrainer(
        model=model_dir, reward_funcs=reward_functions(rewards, args.seed) or None, args=args,
        train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
    )  # fmt: skip
    if lora:
        torch.manual_seed(1)  # LoRA's B starts at zero; random values make every adapter weight carry a gradient
        for module_name, param in trainer.model.named_parameters():
            if "lora_B" in module_name:
                param.data.normal_(0, 0.1)
    mine = completion_ids(tokenizer)[rank * (GROUP // world) : (rank + 1) * (GROUP // world)]

    def scripted_generate(input_ids, attention_mask=None, **kwargs):
        return torch.cat([input_ids, mine.to(input_ids.dtype)], dim=1)

    trainer.model.generate = scripted_generate
    trainer.model.train()
    batch = trainer._generate_and_score_completions([dataset[0]] * (GROUP // world))
    model = trainer.accelerator.prepare_model(trainer.model)
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grad = torch.cat([p.grad.detach().flatten() for p in trainer.model.parameters() if p.grad is not None])
    advantages: list = [None] * world
    torch.distributed.all_gather_object(advantages, batch["advantages"].tolist())
    return {
        "rewards": {key: list(values) for key, values in trainer._logs["rewards"].items()},
        "advantages": [a for part in advantages for a in part],
        "loss": trainer.accelerator.reduce(loss.detach(), reduction="mean").item(),
        "grad": grad,
        "shared_prompt": trainer.shared_prompt.state,
    }


def main() -> None:
    model_dir, output_dir = sys.argv[1], sys.argv[2]
    only = sys.argv[3].split(",") if len(sys.argv) > 3 else list(CONFIGS)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    results = {}
    for name in only:
        for lora in (False, True):
            results[f"{name}{'+lora' if lora else ''}"] = one_step(
                name, lora, model_dir, output_dir, tokenizer, rank, world
            )
    if rank == 0:
        torch.save(results, os.path.join(output_dir, f"world-{world}.pt"))
        print(f"EQUIVALENCE_DONE world={world} configs={len(results)}", flush=True)


if __name__ == "__main__":
    main()
