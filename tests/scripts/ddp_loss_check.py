"""Run under `torchrun --nproc_per_node 2`: the EM gradient of a 2-process step equals the 1-process reference.

Each rank generates (scripted) completions for its own prompt; TRL gathers the token count across ranks; each rank
backpropagates its local loss through DDP, which averages the gradients. The result must equal the gradient of the
global mean token entropy over both ranks' completions, computed in one process from full logits.
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_loss_reference import expected_generated, reference_loss  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from em_trainer import EMConfig, EMTrainer  # noqa: E402


def main() -> None:
    model_dir, output_dir = sys.argv[1], sys.argv[2]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    eos = tokenizer.eos_token_id
    a, b, c, d = tokenizer.convert_tokens_to_ids(["the", "Ġa", "Ġb", "Ġc"])
    # Different lengths on the two ranks, so a per-rank mean would differ from the global one.
    completions = {
        0: [[a, b, eos, eos, eos], [c, d, a, b, c]],
        1: [[eos, eos, eos, eos, eos], [d, eos, eos, eos, eos]],
    }
    prompts = {0: "Hi", 1: "A much longer prompt, so that the two ranks differ."}

    args = EMConfig(
        output_dir=output_dir, responses_per_step=4, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=5, gradient_checkpointing=False, report_to="none", shuffle_dataset=False,
    )  # fmt: skip
    assert args.gradient_accumulation_steps == 1 and args.world_size == world == 2
    from datasets import Dataset

    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": prompts[r]}]} for r in range(world)])
    trainer = EMTrainer(model=model_dir, args=args, train_dataset=dataset, processing_class=tokenizer)

    def fake_generate(input_ids, attention_mask=None, **kwargs):
        return torch.cat([input_ids, torch.tensor(completions[rank], dtype=input_ids.dtype)], dim=1)

    trainer.model.generate = fake_generate
    trainer.model.train()
    rows = [dataset[rank]] * 2
    batch = trainer._generate_and_score_completions(rows)
    total = sum(len(expected_generated(comp, eos)) for r in range(world) for comp in completions[r])
    assert int(batch["num_items_in_batch"]) == total, (int(batch["num_items_in_batch"]), total)

    ddp_model = trainer.accelerator.prepare_model(trainer.model)
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.compute_loss(ddp_model, batch)
    loss.backward()
    assert trainer.shared_prompt.state == "on", "the shared-prompt forward ran (and passed its check) under DDP"
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    # Reference in one process: the same initial weights, both ranks' rows, full logits, one global mean.
    reference = AutoModelForCausalLM.from_pretrained(model_dir)
    reference.train()
    # The prompt token ids each rank actually trained on (unpadded), gathered to every rank.
    local_prompts = [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)]
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, local_prompts)
    all_prompts = [p for rank_prompts in gathered for p in rank_prompts]
    assert all_prompts[0] != all_prompts[2], "the two ranks must train on different prompts"
    all_completions = [c for r in range(world) for c in completions[r]]
    ref_loss, count = reference_loss(reference, all_prompts, all_completions, args.temperature, eos)
    assert count == total
    ref_loss.backward()
    # Relative error of each gradient tensor: a per-rank instead of a global normalisation would be off by the ratio
    # of the ranks' token counts (here 8 vs 3 tokens), far beyond padded-vs-unpadded float noise (~1e-5).
    worst = 0.0
    for name, param in reference.named_parameters():
        error = float((grads[name] - param.grad).norm() / param.grad.norm().clamp(min=1e-12))
        worst = max(worst, error)
        assert error < 1e-3, f"{name}: relative gradient error {error:.2e}"
    # The logged loss, averaged over ranks as Trainer does, is the global mean entropy.
    mean_loss = trainer.accelerator.reduce(loss.detach(), reduction="mean")
    assert abs(mean_loss.item() - ref_loss.item()) < 1e-4 * max(1.0, abs(ref_loss.item())), (mean_loss, ref_loss)
    if rank == 0:
        print(
            f"DDP_OK world={world} tokens={total} loss={mean_loss.item():.6f} ref={ref_loss.item():.6f} "
            f"worst relative gradient error {worst:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
