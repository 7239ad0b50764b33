"""EMTrainer: TRL's GRPOTrainer with the policy-gradient loss swapped for the mean token entropy (EM-FT)."""

from __future__ import annotations

import contextlib
import os
import textwrap
from collections.abc import Iterator
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer import utils as trl_utils
from trl.trainer.utils import add_fused_lm_head, get_config_model_id, pad

from .config import EMConfig, EMConfigError
from .data import is_conversational_prompt, load_one_shot_dataset, messages_to_text
from .model_card import build_model_card
from .models import base_model_id, resolve_model
from .objectives import masked_token_mean_loss, token_entropy_reward, token_normalizer, trajectory_reward

ONE_SHOT_EM_CITATION = textwrap.dedent("""\
    @article{gao2025oneshotem,
        title        = {{One-shot Entropy Minimization}},
        author       = {Zitian Gao and Lynx Chen and Haoming Luo and Joey Zhou and Bryan Dai},
        year         = 2025,
        eprint       = {arXiv:2505.20282},
    }""")
UNREASONABLE_EM_CITATION = textwrap.dedent("""\
    @article{agarwal2025unreasonable,
        title        = {{The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning}},
        author       = {Shivam Agarwal and Zimin Zhang and Lifan Yuan and Jiawei Han and Hao Peng},
        year         = 2025,
        eprint       = {arXiv:2505.15134},
    }""")


def _no_reward(completions: list, **kwargs: Any) -> list[float]:
    """Internal zero reward: TRL needs a reward source to run its sampling loop; EM's loss ignores it."""
    return [0.0] * len(completions)


_PLACEHOLDER_REWARD = _no_reward.__name__
_REWARD_KEYS = ("reward", "reward_std", "frac_reward_zero_std")


@contextlib.contextmanager
def _score_generated_positions_only() -> Iterator[None]:
    """Project only the completion positions through the fused LM head, on every device.

    TRL's fused head gathers the positions with a label (the generated ones) before the vocabulary projection on
    CUDA/XPU only; elsewhere it projects every position, prompt included, to keep tile shapes static for compilers
    such as Neuron's. On CPU that spends most of the LM head on prompt positions whose result is then zeroed.
    Gathering is exact either way (tested), so EMTrainer gathers everywhere except on Neuron.
    """
    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type != "neuron"
    try:
        yield
    finally:
        trl_utils._use_triton = original


class EMTrainer(GRPOTrainer):
    """
    Trainer for entropy minimization (EM-FT): the One-shot EM recipe of Gao et al. (2025).

    It samples `num_generations` responses per prompt with TRL's generation (HF `generate`, or vLLM with
    `use_vllm=True`), and its loss is the mean token entropy over the generated positions,
    `L = (1/|I|) sum_{t in I} H_t` with `H_t` the entropy of `softmax(logits_t / T)`, computed by TRL's fused LM head
    (no `batch x length x vocab` logits) with gradients straight through the entropy. No labels, reward model,
    advantage or reference model are involved.

    `I` holds exactly the positions whose distribution produced a generated token: the first generated token's, up to
    and including the EOS token's; never prompt, padding or anything after EOS (so a tokenizer whose pad token is its
    EOS token loses nothing). The loss is normalised by the number of generated tokens of the whole optimizer step
    over all processes, so gradient accumulation and data parallelism give the same step as one large batch.

    Args:
        model: A Hub id, a local directory, a `.gguf` file, the alias `"smollm2-135m-instruct"`, or a
            `PreTrainedModel`.
        reward_funcs: Optional reward functions (TRL's signature), computed and logged for monitoring only, e.g.
            accuracy on datasets with an answer column. They never change the loss.
        args: An [`EMConfig`]; defaults to the paper's recipe.
        train_dataset: Prompts in TRL's format; defaults to the paper's one-shot prompt.
        **kwargs: Everything else `GRPOTrainer` accepts (`processing_class`, `peft_config`, `callbacks`, ...).
    """

    _tag_names = ["trl", "em-trainer", "entropy-minimization"]
    _name = "EM"
    _paper = {
        "title": "One-shot Entropy Minimization",
        "id": "2505.20282",
        "citation": ONE_SHOT_EM_CITATION + "\n\n" + UNREASONABLE_EM_CITATION,
    }

    def __init__(
        self,
        model: Any = None,
        reward_funcs: Any = None,
        args: EMConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(model, str) or model is None:
            self._base_model_id = base_model_id(model)
            model = resolve_model(model)
        else:
            self._base_model_id = base_model_id(get_config_model_id(model.config))
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = EMConfig(f"{model_name.rstrip('/').split('/')[-1]}-EM")
        elif not isinstance(args, EMConfig):
            raise TypeError(
                f"EMTrainer needs an EMConfig, got {type(args).__name__}. Build one with EMConfig(output_dir=...): "
                "its defaults are the paper's recipe and it validates EM-specific settings."
            )
        if train_dataset is None:
            train_dataset = load_one_shot_dataset()
        self._check_dataset_fits_batch(train_dataset, args)

        if reward_funcs is None:
            reward_funcs = []
        elif not isinstance(reward_funcs, list):
            reward_funcs = [reward_funcs]
        self._em_rl = args.objective == "neg_entropy_reward"
        self._em_rollout: tuple[list, list] | None = None
        self._em_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._has_placeholder_reward = not reward_funcs and not self._em_rl
        if self._em_rl:
            user_weights = args.reward_weights
            if user_weights is not None and len(user_weights) == len(reward_funcs):
                args.reward_weights = [args.em_reward_weight, *user_weights]
            elif user_weights is None and reward_funcs:
                args.reward_weights = [args.em_reward_weight] + [1.0] * len(reward_funcs)
            elif user_weights is None:
                args.reward_weights = [args.em_reward_weight]
            reward_funcs = [self._make_em_reward(args.em_reward, args.em_reward_reduction), *reward_funcs]
        elif not reward_funcs:
            reward_funcs = [_no_reward]

        processing_class = kwargs.get("processing_class")
        if isinstance(train_dataset, Dataset) and processing_class is not None:
            train_dataset = self._match_chat_template(train_dataset, processing_class)

        super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset, **kwargs)

        if isinstance(train_dataset, Dataset) and processing_class is None:
            # The tokenizer is only known now; a base model without chat template cannot render messages.
            self.train_dataset = self._match_chat_template(self.train_dataset, self._tokenizer)

        self._add_stopping_callbacks(args)

        self.entropy_temperature = args.entropy_temperature or args.temperature
        if self.entropy_temperature != self.temperature:
            # GRPOTrainer patched the head at the sampling temperature; patching again makes this one the active one.
            add_fused_lm_head(
                self.model.get_base_model() if is_peft_model(self.model) else self.model,
                temperature=self.entropy_temperature,
                cast_lm_head_to_fp32=args.cast_lm_head_to_fp32,
                outputs=("log_probs", "entropy"),
            )

    def _add_stopping_callbacks(self, args: EMConfig) -> None:
        from .callbacks import CollapseGuard, DevSetEarlyStopping, dev_set_scorer, load_dev_rows

        if args.early_stopping_dev_set:
            rows = load_dev_rows(args.early_stopping_dev_set, args.early_stopping_data_dir, args.early_stopping_limit)
            scorer = dev_set_scorer(rows, self._tokenizer, args.early_stopping_max_new_tokens)
            self.add_callback(
                DevSetEarlyStopping(self, scorer, args.early_stopping_eval_steps, args.early_stopping_patience)
            )
        if any(v is not None for v in (args.entropy_floor, args.collapse_min_length, args.collapse_max_repetition)):
            self.add_callback(
                CollapseGuard(self, args.entropy_floor, args.collapse_min_length, args.collapse_max_repetition)
            )

    @staticmethod
    def _check_dataset_fits_batch(dataset: Dataset | IterableDataset, args: EMConfig) -> None:
        if not isinstance(dataset, Dataset):
            return
        needed = args.prompts_per_step
        if len(dataset) == 0:
            raise EMConfigError("train_dataset is empty: EM needs at least one prompt.")
        if len(dataset) < needed:
            raise EMConfigError(
                f"train_dataset has {len(dataset)} prompt(s), but each generation batch of "
                f"{args.generation_batch_size} responses takes {needed} distinct prompts "
                f"(generation_batch_size / num_generations = {args.generation_batch_size} / {args.num_generations}). "
                "TRL's sampler would drop the incomplete batch and train 0 steps. Fix: set num_generations="
                f"{args.generation_batch_size} (all responses from one prompt, the one-shot recipe), or add prompts."
            )

    @staticmethod
    def _match_chat_template(dataset: Dataset, processing_class: Any) -> Dataset:
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if not isinstance(tokenizer, PreTrainedTokenizerBase) or tokenizer.chat_template is not None:
            return dataset
        if is_conversational_prompt(dataset[0]["prompt"]):
            return messages_to_text(dataset)
        return dataset

    # ------------------------------------------------------------------------------------------------ EM-RL
    def _make_em_reward(self, kind: str, reduction: str):
        def reward(completions: list, **kwargs: Any) -> list[float]:
            logps, entropies, mask = self._em_token_statistics()
            if kind == "trajectory":
                values = trajectory_reward(logps, mask, reduction)
            else:
                values = token_entropy_reward(entropies, mask, reduction)
            return values.float().cpu().tolist()

        reward.__name__ = f"neg_entropy_{kind}"
        return reward

    def _generate(self, prompts: list):
        output = super()._generate(prompts)
        if self._em_rl:
            # The EM reward needs the token ids of this rollout; TRL calls the rewards right after generating.
            self._em_rollout = (output[0], output[1])
            self._em_cache = None
        return output

    @property
    def _trl_computes_old_logps(self) -> bool:
        """Whether TRL runs a no-grad policy forward on each rollout before the rewards (its own condition)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or (
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        # Only TRL's old-log-probs pass qualifies: the first no-grad policy forward after a rollout, when TRL runs one
        # (with PEFT, the reference pass is the same module with its adapter off, and must not be taken).
        reusable = self._em_rl and self._trl_computes_old_logps and self._em_cache is None
        if not (reusable and not torch.is_grad_enabled() and model is self.model):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        # A no-grad forward of the policy on a fresh rollout (TRL's old log-probs, when it needs them): take the
        # entropies too, so the EM reward reuses this pass instead of running its own.
        compute_entropy = kwargs.pop("compute_entropy", False)
        with _score_generated_positions_only():
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, compute_entropy=True, **kwargs
            )
        self._em_cache = (input_ids, attention_mask, logps, entropies)
        return logps, entropies if compute_entropy else None, aux

    def _em_token_statistics(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token log-probs and entropies of the current rollout, and its mask of generated positions."""
        if self._em_rollout is None:
            raise RuntimeError("The EM reward was called before any rollout was generated.")
        prompt_ids_list, completion_ids_list = self._em_rollout
        device = self.accelerator.device
        pad_id = self._tokenizer.pad_token_id
        prompts = [torch.tensor(ids) for ids in prompt_ids_list]
        completions = [torch.tensor(ids) for ids in completion_ids_list]
        kwargs = {"padding_side": "left", "pad_to_multiple_of": self.pad_to_multiple_of}
        prompt_ids = pad(prompts, padding_value=pad_id, **kwargs).to(device)
        prompt_mask = pad([torch.ones_like(t) for t in prompts], padding_value=0, **kwargs).to(device)
        kwargs["padding_side"] = "right"
        completion_ids = pad(completions, padding_value=pad_id, **kwargs).to(device)
        completion_mask = pad([torch.ones_like(t) for t in completions], padding_value=0, **kwargs).to(device)
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        cache = self._em_cache
        self._em_cache = None
        if cache is not None and torch.equal(cache[0], input_ids) and torch.equal(cache[1], attention_mask):
            return cache[2], cache[3], completion_mask
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, entropies, _ = self._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention_mask,
                completion_ids.size(1),
                batch_size=self.args.per_device_train_batch_size,
                compute_entropy=True,
            )
        self._em_cache = None
        return logps, entropies, completion_mask

    # ------------------------------------------------------------------------------------------------ loss
    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        if self._em_rl:
            if self.args.em_advantage == "rloo" and self.model.training:
                # Leave-one-out: r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_j r_j).
                group = self.num_generations
                inputs = {**inputs, "advantages": inputs["advantages"] * group / (group - 1)}
            with _score_generated_positions_only():
                return super()._compute_loss(model, inputs)
        return self._entropy_loss(model, inputs)

    def _entropy_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

        with _score_generated_positions_only():
            per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                compute_entropy=True,
                compute_aux_loss=self.aux_loss_enabled,
                pixel_values=inputs.get("pixel_values"),
                image_grid_thw=inputs.get("image_grid_thw"),
                num_images=inputs.get("num_images"),
                pixel_attention_mask=inputs.get("pixel_attention_mask"),
                spatial_shapes=inputs.get("spatial_shapes"),
                num_tiles=inputs.get("num_tiles"),
                image_sizes=inputs.get("image_sizes"),
                token_type_ids=inputs.get("token_type_ids"),
                mm_token_type_ids=inputs.get("mm_token_type_ids"),
                image_position_ids=inputs.get("image_position_ids"),
            )

        loss_mask = mask
        if self.top_entropy_quantile < 1.0:
            # Like TRL's token-level losses: only the highest-entropy tokens carry gradient, the normaliser still
            # counts every generated token.
            loss_mask = mask * self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)

        per_token = entropies
        if self.beta != 0.0:
            ref = inputs["ref_per_token_logps"]
            per_token_kl = torch.exp(ref - per_token_logps) - (ref - per_token_logps) - 1
            per_token = per_token + self.beta * per_token_kl

        mode = "train" if self.model.training else "eval"
        normalizer = token_normalizer(
            inputs["num_items_in_batch"],
            self.accelerator.num_processes,
            self.current_gradient_accumulation_steps,
            self.args.steps_per_generation,
            training=mode == "train",
        )
        loss = masked_token_mean_loss(per_token, loss_mask, normalizer)
        if self.aux_loss_enabled:
            accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        def global_masked_mean(x: torch.Tensor) -> float:
            totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        entropies = entropies.detach()
        self._metrics[mode]["entropy"].append(global_masked_mean(entropies))
        self._metrics[mode]["mean_token_logprob"].append(global_masked_mean(per_token_logps.detach()))
        if self.beta != 0.0:
            self._metrics[mode]["kl"].append(global_masked_mean(per_token_kl.detach()))
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._has_placeholder_reward:
            # The placeholder reward is TRL plumbing, not a measurement: keep it out of the logs.
            prefix = f"rewards/{_PLACEHOLDER_REWARD}/"
            for metrics in self._metrics.values():
                for key in [k for k in metrics if k.startswith(prefix) or k in _REWARD_KEYS]:
                    del metrics[key]
            self._logs["rewards"].pop(_PLACEHOLDER_REWARD, None)
            self._logs["advantages"].clear()
        super().log(logs, start_time)

    def _card_hyperparameters(self) -> dict[str, Any]:
        args = self.args
        peft = None
        if is_peft_model(self.model):
            config = self.model.peft_config.get("default")
            peft = (
                f"{type(config).__name__}(r={getattr(config, 'r', '?')}, alpha={getattr(config, 'lora_alpha', '?')})"
            )
        schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        return {
            "objective": "EM-FT: mean token entropy over generated positions",
            "optimizer steps": self.state.global_step or args.max_steps,
            "responses per optimizer step": args.responses_per_step,
            "responses per prompt (num_generations)": args.num_generations,
            "sampling temperature": args.temperature,
            "entropy temperature": self.entropy_temperature,
            "top_p / top_k": f"{args.top_p} / {args.top_k}",
            "max response length (tokens)": args.max_completion_length,
            "learning rate": f"{args.learning_rate:g} ({schedule})",
            "KL weight (beta)": args.beta,
            "top_entropy_quantile": args.top_entropy_quantile,
            "adapter": peft,
            "seed": args.seed,
        }

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
    ) -> None:
        """Write ``README.md`` in ``output_dir``: base model, data, EM settings, last metrics, both papers cited."""
        if not self.is_world_process_zero():
            return
        model_name = model_name or os.path.basename(os.path.normpath(self.args.output_dir))
        last = next((log for log in reversed(self.state.log_history) if "entropy" in log), {})
        results = {k: v for k, v in last.items() if k in ("loss", "entropy", "completions/mean_length", "grad_norm")}
        card = build_model_card(
            model_name=model_name,
            model_id=self.hub_model_id or self.args.hub_model_id or model_name,
            base_model=self._base_model_id,
            dataset_name=dataset_name,
            hyperparameters=self._card_hyperparameters(),
            results=results,
            tags=[tags] if isinstance(tags, str) else tags,
            citation=self._paper["citation"],
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))
