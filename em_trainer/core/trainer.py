"""EMTrainer: TRL's GRPOTrainer with the policy-gradient loss swapped for the mean token entropy (EM-FT)."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id, pad

from ..data.models import BASE_SIDECAR, base_model_id, resolve_model
from ..data.prompts import is_conversational_prompt, load_one_shot_dataset, messages_to_text
from .callbacks import CollapseGuard, DevSetEarlyStopping, PruneOptimizerState, Scorer
from .config import EMConfig, EMConfigError
from .cpu_decoding import PackedLinears, cpu_decoding_unavailable
from .fused_head import head_logit_transform, patch_entropy_temperature, score_generated_positions_only
from .model_card import BOTH_CITATIONS, build_model_card
from .objectives import (
    SIGNED_REINFORCE,
    clip_cov_selection,
    masked_token_mean_loss,
    self_certainty_from_hidden,
    signed_reinforce_advantages,
    token_entropy_reward,
    token_normalizer,
    trajectory_reward,
)
from .rollout import PolicyForward, RolloutStash
from .shared_prefill import generate_with_shared_prefill
from .shared_prompt import (
    backbone,
    check_tolerances,
    gradient_sketch,
    repeated_rows,
    shared_prompt_logps_and_entropies,
)
from .shared_prompt_policy import ABSTAIN, CHECK_ROWS, CHECK_TOKENS, SharedPromptPolicy, check_slice, relative_gap
from .vllm_cpu_sync import keep_linear_weights, repack_after_sync, vllm_runs_on_cpu
from .vllm_engine_options import engine_options


def _no_reward(completions: list, **kwargs: Any) -> list[float]:
    """Internal zero reward: TRL needs a reward source to run its sampling loop; EM's loss ignores it."""
    return [0.0] * len(completions)


_PLACEHOLDER_REWARD = _no_reward.__name__
# Model inputs besides ids and masks that TRL forwards for multimodal models; the shared-prompt path takes none.
_EXTRA_MODEL_INPUTS = (
    "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
    "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids",
)  # fmt: skip
logger = logging.get_logger(__name__)
_REWARD_KEYS = ("reward", "reward_std", "frac_reward_zero_std")


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
        args: An [`EMConfig`]; defaults to the paper's recipe. It is not modified.
        train_dataset: Prompts in TRL's format; defaults to the paper's one-shot prompt.
        eval_dataset: Prompts evaluated at `args.eval_strategy`, as in `GRPOTrainer`.
        processing_class: The tokenizer; defaults to the model's (`AutoTokenizer`, left padding).
        reward_processing_classes: Tokenizers of model-based reward functions, as in `GRPOTrainer`.
        callbacks: `TrainerCallback`s; EM adds its own after them (the entropy floor, collapse guard, early stop).
        optimizers: `(optimizer, lr_scheduler)`; default `(None, None)`: AdamW and `args.lr_scheduler_type`.
        quantization_config: A `BitsAndBytesConfig` for a model given by reference (QLoRA with `peft_config`).
        peft_config: A PEFT config (LoRA): trains an adapter; with `args.merge_on_save` (recipes) saved merged.
        dev_set_scorer: For early stopping on a labeled dev set: a function of the model that returns its score
            (higher is better), called every `args.early_stopping_eval_steps` optimizer steps. Build one with
            `em_trainer.evaluation.build_dev_set_scorer(args, tokenizer)`, which reads `args.early_stopping_dev_set`.
        **kwargs: What else `GRPOTrainer` accepts (`tools`, `rollout_func`, `environment_factory`), passed on.

    What it overrides in TRL's `GRPOTrainer` (everything else, generation, batching, accumulation, PEFT, accelerate,
    checkpoints, the Hub, is TRL's own; `tests/test_layout.py` fails if this list and the class part):

    - `__init__`: resolves model references, defaults to the one-shot prompt, adds the EM-RL reward (or hides TRL's
      need for a reward under EM-FT), the stopping callbacks, the entropy temperature and the shared-prompt policy.
    - `_generate`: keeps the rollout's token ids for the EM-RL reward (core/rollout).
    - `_generate_single_turn`: where TRL runs HF `generate`, prefills each prompt once and decodes fast on a CPU.
    - `_get_per_token_logps_and_entropies`: TRL's no-grad passes through the shared-prompt forward, and TRL's
      old-log-prob pass kept for the EM-RL reward.
    - `_calculate_rewards`: keeps the gathered rewards for PSR, NSR and W-REINFORCE.
    - `_generate_and_score_completions`: PSR, NSR and W-REINFORCE replace TRL's group advantages
      (`em_advantage`).
    - `_get_per_token_logps_and_entropies` also hands TRL's loss Clip-Cov's detached tokens (`cov_regularization`).
    - `_compute_loss`: the mean token entropy (EM-FT); for EM-RL and GRPO, TRL's loss scored on generated positions
      only (and RLOO's leave-one-out scale).
    - `log`: keeps EM-FT's internal zero reward out of the logs.
    - `create_model_card`: the card names the base model, the data, the EM settings and both papers.
    - `_save`: a LoRA adapter names its base by Hub id where one is known, not this machine's cache folder.
    """

    _tag_names = ["trl", "em-trainer", "entropy-minimization"]
    _name = "EM"
    _paper = {
        "title": "One-shot Entropy Minimization",
        "id": "2505.20282",
        "citation": BOTH_CITATIONS,
    }

    def __init__(
        self,
        model: str | PreTrainedModel | None = None,
        reward_funcs: Any = None,
        args: EMConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: list[Any] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
        dev_set_scorer: Scorer | None = None,
        **kwargs: Any,
    ) -> None:
        model, self._base_model_id = self._resolve_model(model)
        args = self._resolve_args(args, model)
        if args.early_stopping_dev_set and dev_set_scorer is None:
            raise EMConfigError(
                f"early_stopping_dev_set='{args.early_stopping_dev_set}' needs a scorer: pass "
                "dev_set_scorer=em_trainer.evaluation.build_dev_set_scorer(args, tokenizer) to EMTrainer "
                "(`em-trainer train` does this for you), or unset early_stopping_dev_set."
            )
        self._dataset_description = self._describe_dataset(train_dataset)
        if train_dataset is None:
            train_dataset = load_one_shot_dataset()
        self._check_dataset_fits_batch(train_dataset, args)
        self._em_rl = args.objective == "neg_entropy_reward"
        self._grpo_loss = args.objective in ("neg_entropy_reward", "grpo")
        self._rollout = RolloutStash()
        self._first_rollout_checked = False
        self._clip_cov_batch: dict[str, Any] | None = None  # the micro-batch whose loss Clip-Cov is changing
        reward_funcs, args = self._reward_setup(reward_funcs, args)
        self._has_placeholder_reward = reward_funcs == [_no_reward]

        with self._vllm_engine_build_context(args):
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                reward_processing_classes=reward_processing_classes,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
                **kwargs,
            )
        self._route_weight_sync_through_cpu_repack()
        self._say_when_fsdp_was_not_applied()
        #: The shared-prompt forward's state for this run (core/shared_prompt_policy): its decision, why, its check.
        self.shared_prompt = SharedPromptPolicy(self._shared_prompt_run_reason())
        self._check_rollout_dtype(args)

        if isinstance(self.train_dataset, Dataset):
            self.train_dataset = self._match_chat_template(self.train_dataset, self._tokenizer)
        self._add_stopping_callbacks(args, dev_set_scorer)
        self.entropy_temperature = args.entropy_temperature or args.temperature
        self._patch_entropy_temperature(args)

    # ------------------------------------------------------------------------------------------------ set-up steps
    @staticmethod
    def _resolve_model(model: str | PreTrainedModel | None) -> tuple[str | PreTrainedModel, str | None]:
        """The model (a reference becomes a loadable Hub id or directory) and the Hub id to cite as its base."""
        if isinstance(model, str) or model is None:
            return resolve_model(model), base_model_id(model)
        return model, base_model_id(get_config_model_id(model.config))

    @staticmethod
    def _describe_dataset(dataset: Any) -> str:
        """What the model card names as the training data when the caller names none."""
        if dataset is None:
            return "one-shot EM prompt (pi1)"
        info = getattr(dataset, "info", None)
        name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
        if name:
            return str(name)
        size = f"{len(dataset)} prompt(s)" if hasattr(dataset, "__len__") else "prompts"
        return f"{size} given in Python (name them: create_model_card(dataset_name=...))"

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        """Trainer's save, then a LoRA adapter made shareable: PEFT names the base by the path it was loaded from,
        which for the embedded model is this machine's cache; ``adapter_config.json`` gets the base's Hub id where
        one is known, and ``em_trainer_base.json`` keeps the local path, which em-trainer loads when it exists."""
        super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        config_path = os.path.join(output_dir, "adapter_config.json")
        if self._base_model_id is None or not os.path.isfile(config_path):
            return
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
        local = config.get("base_model_name_or_path")
        if not local or local == self._base_model_id:
            return
        config["base_model_name_or_path"] = self._base_model_id
        Path(config_path).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        sidecar = {"hub_id": self._base_model_id, "local_base": os.path.abspath(local)}
        Path(output_dir, BASE_SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")

    @staticmethod
    def _resolve_args(args: EMConfig | None, model: str | PreTrainedModel) -> EMConfig:
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            return EMConfig(f"{model_name.rstrip('/').split('/')[-1]}-EM")
        if not isinstance(args, EMConfig):
            raise TypeError(
                f"EMTrainer needs an EMConfig, got {type(args).__name__}. Build one with EMConfig(output_dir=...): "
                "its defaults are the paper's recipe and it validates EM-specific settings."
            )
        return args

    def _reward_setup(self, reward_funcs: Any, args: EMConfig) -> tuple[list, EMConfig]:
        """TRL's reward functions: the EM-RL reward first (with its weight), the user's for monitoring, else a zero.

        EM-RL puts its own weight in front of the user's ``reward_weights``; that happens on a copy of ``args``.
        """
        if reward_funcs is None:
            reward_funcs = []
        elif not isinstance(reward_funcs, list):
            reward_funcs = [reward_funcs]
        self._reward_setup_check(reward_funcs, args)
        if args.objective == "grpo":
            return reward_funcs, args
        if not self._em_rl:
            return (reward_funcs or [_no_reward]), args
        user_weights = args.reward_weights
        if user_weights is not None and len(user_weights) != len(reward_funcs):
            raise EMConfigError(
                f"reward_weights has {len(user_weights)} value(s) for {len(reward_funcs)} reward function(s). With "
                "EM-RL, give one weight per reward function you pass; the EM reward's weight is em_reward_weight."
            )
        args = copy.copy(args)
        args.reward_weights = [args.em_reward_weight, *(user_weights or [1.0] * len(reward_funcs))]
        return [self._make_em_reward(args.em_reward, args.em_reward_reduction), *reward_funcs], args

    @staticmethod
    def _reward_setup_check(reward_funcs: list, args: EMConfig) -> None:
        """The reward functions an objective needs (`em-trainer train --check` calls this before loading)."""
        if args.objective == "grpo" and not reward_funcs:
            raise EMConfigError(
                "objective='grpo' trains on the reward functions passed and there are none: pass reward_funcs "
                "(`em-trainer train --reward_funcs majority_vote`, ...), or use objective='entropy_loss' or "
                "'neg_entropy_reward', whose reward is the model's own entropy."
            )

    def _add_stopping_callbacks(self, args: EMConfig, dev_set_scorer: Scorer | None) -> None:
        if args.keep_optimizer_state == "latest":
            self.add_callback(PruneOptimizerState())
        if dev_set_scorer is not None:
            self.add_callback(
                DevSetEarlyStopping(dev_set_scorer, args.early_stopping_eval_steps, args.early_stopping_patience)
            )
        if any(v is not None for v in (args.entropy_floor, args.collapse_min_length, args.collapse_max_repetition)):
            self.add_callback(
                CollapseGuard(
                    args.entropy_floor,
                    args.collapse_min_length,
                    args.collapse_max_repetition,
                    completions=lambda: list(self._logs["completion"]),
                )
            )

    @staticmethod
    def _colocated_cpu_vllm(args: EMConfig) -> bool:
        return args.use_vllm and args.vllm_mode == "colocate" and vllm_runs_on_cpu()

    def _vllm_engine_build_context(self, args: EMConfig) -> contextlib.AbstractContextManager:
        """While TRL builds the colocated engine: vLLM's CPU build must keep the weights it packs, or trained weights
        never reach it (core/vllm_cpu_sync); and `vllm_enforce_eager`, which TRL does not pass on, reaches vLLM."""
        stack = contextlib.ExitStack()
        if self._colocated_cpu_vllm(args):
            stack.enter_context(keep_linear_weights())
        if args.vllm_enforce_eager:
            stack.enter_context(engine_options(enforce_eager=True))
        return stack

    def _say_when_fsdp_was_not_applied(self) -> None:
        """accelerate applies FSDP on accelerators only: `accelerate launch --use_fsdp` on CPUs trains plain data
        parallel, every process holding the whole model, and says nothing. One line says so here."""
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not self.is_fsdp_enabled:
            logger.warning(
                "em-trainer: FSDP was asked for (ACCELERATE_USE_FSDP, `accelerate launch --use_fsdp`), but accelerate "
                f"applies it on accelerators only ({self.accelerator.distributed_type}): this run is plain data "
                "parallel, each process holding the whole model."
            )

    def _route_weight_sync_through_cpu_repack(self) -> None:
        if self._colocated_cpu_vllm(self.args):
            self.vllm_generation.sync_weights = repack_after_sync(self.vllm_generation)

    def _patch_entropy_temperature(self, args: EMConfig) -> None:
        """GRPOTrainer patched the heads at the sampling temperature; EM's loss (and KL) use the entropy one."""
        if self.entropy_temperature == self.temperature:
            return
        patch_entropy_temperature(self.model, self.entropy_temperature, args.cast_lm_head_to_fp32, with_entropy=True)
        if self.ref_model is not None:
            # With PEFT the reference is the policy with its adapter off, already re-patched above.
            patch_entropy_temperature(
                self.ref_model, self.entropy_temperature, args.cast_lm_head_to_fp32, with_entropy=False
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
        if len(dataset) and is_conversational_prompt(dataset[0]["prompt"]):
            return messages_to_text(dataset)
        return dataset

    # ------------------------------------------------------------------------------------------------ EM-RL
    def _make_em_reward(self, kind: str, reduction: str) -> Callable[..., list[float]]:
        def reward(completions: list, **kwargs: Any) -> list[float]:
            if kind == "self_certainty":
                per_token, mask = self._self_certainty_statistics()
                # Self-certainty is already "higher is more confident": reduced like the trajectory reward.
                return trajectory_reward(per_token, mask, reduction).float().cpu().tolist()
            logps, entropies, mask = self._em_token_statistics()
            if kind == "trajectory":
                values = trajectory_reward(logps, mask, reduction)
            else:
                values = token_entropy_reward(entropies, mask, reduction)
            return values.float().cpu().tolist()

        reward.__name__ = "self_certainty" if kind == "self_certainty" else f"neg_entropy_{kind}"
        return reward

    def _generate(self, prompts: list):
        output = super()._generate(prompts)
        if self.model.training and self.state.global_step == 0 and not self._first_rollout_checked:
            self._first_rollout_checked = True
            self._refuse_empty_responses(output[1])
        if self._em_rl:
            # TRL calls the rewards after this rollout (see core/rollout.py for the order relied on).
            self._rollout.new_rollout(output[0], output[1])
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func  # every process's rows, as TRL gathered them for the advantages
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if self.args.em_advantage in SIGNED_REINFORCE:
            output = self._signed_reinforce(output)
        return output

    def _signed_reinforce(self, output: dict[str, Any]) -> dict[str, Any]:
        """PSR, NSR or W-REINFORCE in place of TRL's group advantages: the 0/1 reward itself decides each response's
        advantage, and the responses PSR and NSR leave out are masked, so the token mean (and TRL's
        ``num_items_in_batch``) runs over the kept ones, as the authors' code drops them before the loss."""
        rewards = (self._rewards_per_func * self.reward_weights.to(self._rewards_per_func.device)).nansum(dim=1)
        if not bool(((rewards == 0) | (rewards == 1)).all()):
            raise EMConfigError(
                f"em_advantage='{self.args.em_advantage}' needs a 0/1 verifiable reward (a response is right or "
                f"wrong), and the weighted reward took the values {sorted(set(rewards.tolist()))[:6]}; use one "
                "correctness reward such as 'accuracy' with weight 1, or em_advantage='grpo'."
            )
        advantages, kept = signed_reinforce_advantages(
            rewards, self.args.em_advantage, self.args.positive_advantage_weight
        )
        rows = output["completion_mask"].size(0)
        local = slice(self.accelerator.process_index * rows, (self.accelerator.process_index + 1) * rows)
        device = output["completion_mask"].device
        mask = output["completion_mask"] * kept[local].to(device, output["completion_mask"].dtype).unsqueeze(1)
        tokens = mask * output.get("tool_mask", 1)  # what TRL's num_items_in_batch counts, as _clip_cov masks
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["signed_reinforce/kept_share"].append(kept.float().mean().item())
        return {
            **output,
            "advantages": advantages[local].to(device),
            "completion_mask": mask,
            "num_items_in_batch": self.accelerator.gather(tokens.sum()).sum(),
        }

    def _refuse_empty_responses(self, completion_ids: list) -> None:
        """The first rollout of a run: if most responses (all processes) end at once, stop and say why.

        A chat model given a plain-text prompt often answers it with its end-of-sequence token alone; EM then
        minimises the entropy of that one token and nothing else, silently."""
        counts = torch.tensor([sum(len(ids) <= 1 for ids in completion_ids), len(completion_ids)],
                              device=self.accelerator.device)  # fmt: skip
        short, total = (int(x) for x in self.accelerator.reduce(counts, reduction="sum"))
        if total >= 2 and 2 * short > total:
            raise EMConfigError(
                f"{short} of {total} responses of the first step are one token long (the end-of-sequence token "
                "alone): EM would minimise the entropy of that token and nothing else. The usual cause is a "
                "plain-text prompt on a chat model, which answers a bare string by ending at once. Fix: give "
                "conversational prompts ([{'role': 'user', 'content': ...}], which TRL renders with the model's chat "
                "template; `em-trainer train --dataset` does this for a 'problem' column), or a base model."
            )

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        with self._hf_generation(images, multimodal_fields):
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )

    def _hf_generation_untouched(self, images: Any, multimodal_fields: dict) -> bool:
        """Whether TRL's generation runs as it is: vLLM, continuous batching, multimodal, FSDP or DeepSpeed."""
        return bool(
            self.use_vllm
            or self.use_transformers_continuous_batching
            or images
            or multimodal_fields
            or self.is_fsdp_enabled
            or self.is_deepspeed_enabled
        )

    def _check_rollout_dtype(self, args: EMConfig) -> None:
        if args.rollout_dtype is None:
            return
        reason = cpu_decoding_unavailable(self.model, getattr(torch, args.rollout_dtype))
        if reason is None and self._hf_generation_untouched(None, {}):
            reason = "TRL generates here without HF generate on the policy (vLLM, continuous batching, FSDP/DeepSpeed)"
        if reason is not None:
            raise EMConfigError(
                f"rollout_dtype='{args.rollout_dtype}' applies to HF rollouts on a CPU, and here {reason}; drop "
                "rollout_dtype."
            )

    @contextlib.contextmanager
    def _hf_generation(self, images: Any, multimodal_fields: dict) -> Iterator[None]:
        """Where TRL runs HF ``generate``: each distinct prompt prefilled once (core/shared_prefill) when
        ``shared_prompt_forward``, and on a CPU the fast decoding of core/cpu_decoding when ``cpu_fast_rollouts``."""
        shared, fast = self.args.shared_prompt_forward, self.args.cpu_fast_rollouts
        if not (shared or fast) or self._hf_generation_untouched(images, multimodal_fields):
            yield
            return
        model = self.accelerator.unwrap_model(self.model_wrapped)  # what TRL's generation context yields
        dtype = getattr(torch, self.args.rollout_dtype) if self.args.rollout_dtype else None
        fast = fast and cpu_decoding_unavailable(model, dtype) is None
        own_generate = vars(model).get("generate")  # an instance attribute to put back, if any
        # Packs are made for this rollout and dropped after it: the weights change at every optimizer step.
        model.generate = functools.partial(
            generate_with_shared_prefill,
            model,
            generate=model.generate,
            shared_prefill=shared,
            growing_cache=fast,
            packs=PackedLinears(dtype) if fast else None,
        )
        try:
            yield
        finally:
            if own_generate is None:
                del model.generate  # back to the class's method
            else:
                model.generate = own_generate

    @property
    def _trl_computes_old_logps(self) -> bool:
        """Whether TRL runs a no-grad policy forward on each rollout before the rewards.

        This mirrors the condition in ``GRPOTrainer._generate_and_score_completions``;
        ``tests/test_em_rl.py::test_trl_call_order`` fails if TRL's behaviour stops matching it.
        """
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or (
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, **kwargs
    ):
        # Only TRL's old-log-probs pass qualifies for reuse as EM-RL's reward: the first no-grad policy forward after
        # a rollout, when TRL runs one (with PEFT, the reference pass is the same module with its adapter off, and
        # comes after it).
        reusable = (
            self._em_rl
            and self.args.em_reward != "self_certainty"  # which reads hidden states, not this forward
            and self._rollout.awaiting_forward
            and self._trl_computes_old_logps
            and not torch.is_grad_enabled()
            and model is self.model
        )
        if not reusable:
            result = self._scored_forward(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, **kwargs
            )
            if self._clip_cov_batch is not None and torch.is_grad_enabled():
                result = (self._clip_cov(result[0]), *result[1:])
            return result
        with score_generated_positions_only():
            logps, entropies, aux = self._scored_forward(
                model, input_ids, attention_mask, logits_to_keep, batch_size, True, **kwargs
            )
        self._rollout.keep_forward(PolicyForward(input_ids, attention_mask, logps, entropies))
        return logps, entropies if compute_entropy else None, aux

    def _scored_forward(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, **kwargs
    ):
        """TRL's per-token pass; without gradients (old log-probs, reference, EM-RL reward), prompts shared where the
        run's shared-prompt policy allows."""
        prompt_length = input_ids.size(1) - logits_to_keep
        if not torch.is_grad_enabled():
            inputs = {
                "prompt_ids": input_ids[:, :prompt_length], "prompt_mask": attention_mask[:, :prompt_length],
                "completion_ids": input_ids[:, prompt_length:], "completion_mask": attention_mask[:, prompt_length:],
            }  # fmt: skip
            other_inputs = any(value is not None and value is not False for value in kwargs.values())
            if self._use_shared_prompt(inputs, other_inputs):
                logps, entropies = self._shared_no_grad(model, input_ids, attention_mask, prompt_length, batch_size)
                return logps, entropies if compute_entropy else None, None
        return super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, **kwargs
        )

    def _without_checkpointing(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """A context in which ``model`` runs without gradient checkpointing (the shared prompt's pass)."""
        unwrapped = self.accelerator.unwrap_model(model)
        # transformers >= 5.23 renamed it is_activation_checkpointing and warns on the old name at every read.
        new = hasattr(unwrapped, "is_activation_checkpointing")  # reading the new name does not warn
        if getattr(unwrapped, "is_activation_checkpointing" if new else "is_gradient_checkpointing", False):
            return disable_gradient_checkpointing(unwrapped, self.args.gradient_checkpointing_kwargs)
        return contextlib.nullcontext()

    def _shared_no_grad(self, model, input_ids, attention_mask, prompt_length: int, batch_size: int | None):
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            rows = slice(start, start + batch_size)
            chunk = shared_prompt_logps_and_entropies(
                model,
                input_ids[rows, :prompt_length],
                attention_mask[rows, :prompt_length],
                input_ids[rows, prompt_length:],
                attention_mask[rows, prompt_length:],
                self.accelerator.autocast,
                functools.partial(self._without_checkpointing, model),
            )
            logps.append(chunk[0])
            entropies.append(chunk[1])
        # A head patched for log-probs only (TRL's reference model) gives no entropies.
        return torch.cat(logps), None if entropies[0] is None else torch.cat(entropies)

    def _rollout_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The current rollout as one padded batch: input ids, attention mask, completion ids and completion mask
        (prompts left-padded, completions right-padded, as TRL lays them out)."""
        prompt_ids_list, completion_ids_list = self._rollout.ids()
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
        return input_ids, attention_mask, completion_ids, completion_mask

    def _em_token_statistics(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token log-probs and entropies of the current rollout, and its mask of generated positions."""
        input_ids, attention_mask, completion_ids, completion_mask = self._rollout_batch()
        kept = self._rollout.take_forward(input_ids, attention_mask)
        if kept is not None:
            return kept.logps, kept.entropies, completion_mask
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            with score_generated_positions_only():
                logps, entropies, _ = self._scored_forward(
                    self.model,
                    input_ids,
                    attention_mask,
                    completion_ids.size(1),
                    batch_size=self.args.per_device_train_batch_size,
                    compute_entropy=True,
                )
        return logps, entropies, completion_mask

    def _self_certainty_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token self-certainty ``KL(U || p)`` of the current rollout at the sampling temperature, and its mask.

        TRL's fused head gives log-probs, entropies and the mean logit but not the log-normaliser this needs. So the
        model's body runs once per micro-batch without gradients, and only the generated positions' hidden states
        are projected through the LM head, a few hundred positions at a time (``self_certainty_from_hidden``): no
        ``(batch, length, vocab)`` tensor exists, as in TRL's fused head."""
        input_ids, attention_mask, completion_ids, completion_mask = self._rollout_batch()
        length, size = completion_ids.size(1), self.args.per_device_train_batch_size
        model = self.accelerator.unwrap_model(self.model)
        causal_lm = model.get_base_model() if is_peft_model(model) else model
        head = causal_lm.get_output_embeddings()
        logit_scale, softcap = head_logit_transform(causal_lm.config)
        values = torch.zeros(completion_mask.shape, dtype=torch.float32, device=completion_mask.device)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            for start in range(0, input_ids.size(0), size):
                rows = slice(start, start + size)
                hidden = backbone(model)(
                    input_ids=input_ids[rows], attention_mask=attention_mask[rows], use_cache=False
                ).last_hidden_state
                # The last prompt position predicts the first generated token; the last position predicts nothing.
                hidden = hidden[:, -(length + 1) : -1]
                generated = completion_mask[rows].bool()
                values[rows][generated] = self_certainty_from_hidden(
                    hidden[generated], head, self.args.temperature, logit_scale, softcap
                ).to(values.device)
        return values, completion_mask

    # ------------------------------------------------------------------------------------------------ loss
    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        if self._grpo_loss:
            if self.args.em_advantage == "rloo" and self.model.training:
                # Leave-one-out: r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_j r_j).
                group = self.num_generations
                inputs = {**inputs, "advantages": inputs["advantages"] * group / (group - 1)}
            self._clip_cov_batch = inputs if self.args.cov_regularization == "clip_cov" else None
            try:
                with score_generated_positions_only():
                    return super()._compute_loss(model, inputs)
            finally:
                self._clip_cov_batch = None
        return self._entropy_loss(model, inputs)

    def _clip_cov(self, logps: torch.Tensor) -> torch.Tensor:
        """Clip-Cov: the selected tokens' log-probs enter TRL's loss detached, so they carry no gradient (the
        reference multiplies their loss term by 0; the gradients are the same)."""
        inputs = self._clip_cov_batch
        mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
        advantages = inputs["advantages"]
        advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
        old = inputs.get("old_per_token_logps")
        ratio = torch.exp(logps.detach() - (logps.detach() if old is None else old))
        low, high = 1 - self.epsilon_low, 1 + self.epsilon_high
        clipped = (-advantages * ratio.clamp(low, high)) > (-advantages * ratio)  # where PPO's clip already acts
        selected = clip_cov_selection(
            logps, advantages, mask, self.args.clip_cov_ratio, self.args.clip_cov_lower, self.args.clip_cov_upper,
            clipped,
        )  # fmt: skip
        mode = "train" if self.model.training else "eval"
        share = selected.sum() / mask.sum().clamp(min=1)
        self._metrics[mode]["clip_cov/detached_share"].append(self.accelerator.gather(share).mean().item())
        return torch.where(selected, logps.detach(), logps)

    def _plain_logps_and_entropies(self, model: torch.nn.Module, inputs: dict[str, Any]):
        completion_ids = inputs["completion_ids"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        with score_generated_positions_only():
            return self._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                completion_ids.size(1),
                compute_entropy=True,
                compute_aux_loss=self.aux_loss_enabled,
                **{key: inputs.get(key) for key in _EXTRA_MODEL_INPUTS},
            )

    def _shared_logps_and_entropies(self, model: torch.nn.Module, inputs: dict[str, Any]):
        with score_generated_positions_only():
            logps, entropies = shared_prompt_logps_and_entropies(
                model,
                inputs["prompt_ids"],
                inputs["prompt_mask"],
                inputs["completion_ids"],
                inputs["completion_mask"],
                self.accelerator.autocast,
                functools.partial(self._without_checkpointing, model),
            )
        return logps, entropies, None

    def _shared_prompt_run_reason(self) -> str | None:
        """Why the shared-prompt forward is off for the whole run (None: it may run, once checked)."""
        if not self.args.shared_prompt_forward:
            return "shared_prompt_forward=False"
        if self.aux_loss_enabled:
            return "a mixture-of-experts auxiliary loss"
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            # The prompt pass calls the model's body directly, outside the root module that FSDP/DeepSpeed gather
            # the sharded parameters for.
            return "FSDP/DeepSpeed (the prompt pass would bypass the engine's sharded forward; not supported yet)"
        return None

    def _use_shared_prompt(self, inputs: dict[str, Any], other_inputs: bool, loss_reason: str | None = None) -> bool:
        """The one predicate: whether this pass runs through the shared-prompt forward (checked on first use)."""
        policy = self.shared_prompt
        if policy.state == "checking":
            return False  # a pass the first-use check itself runs (its plain side): never through the shared path
        if policy.state == "unchecked" and loss_reason is None:
            # Every process reaches this point at the same pass, so all take part in the decision.
            local = policy.batch_reason(inputs["prompt_ids"], other_inputs)
            self._check_shared_prompt(None if local is not None else inputs)
        reason = policy.batch_reason(inputs["prompt_ids"], other_inputs, loss_reason)
        if reason is not None:
            if policy.first_time(reason):
                logger.info("em-trainer: plain forward (shared-prompt forward off: %s).", reason)
            return False
        # Without a repeated prompt there is nothing to share, and the plain path is as fast.
        return policy.state == "on" and repeated_rows(inputs["prompt_ids"])

    def _per_token_logps_and_entropies(self, model: torch.nn.Module, inputs: dict[str, Any]):
        """The EM-FT loss's per-token statistics: through the shared-prompt forward where the policy allows."""
        other_inputs = self.aux_loss_enabled or any(inputs.get(key) is not None for key in _EXTRA_MODEL_INPUTS)
        loss_reason = None
        if self.top_entropy_quantile < 1.0:
            # The high-entropy selection thresholds exact ties (rows that share a prefix); the shared path agrees to
            # ~1e-6, which is enough to flip a tie, so the selected tokens could differ from the plain path's.
            loss_reason = "top_entropy_quantile < 1 (its tie-sensitive token selection)"
        if self._use_shared_prompt(inputs, other_inputs, loss_reason):
            return self._shared_logps_and_entropies(model, inputs)
        return self._plain_logps_and_entropies(model, inputs)

    def _compute_dtype(self, model: torch.nn.Module) -> torch.dtype:
        """The precision the forward runs in: the weights', or bf16/fp16 when mixed precision autocasts to it."""
        weights = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        candidates = [weights] + [half for on, half in ((self.args.bf16, torch.bfloat16),
                                                         (self.args.fp16, torch.float16)) if on]  # fmt: skip
        return max(candidates, key=lambda dtype: torch.finfo(dtype).eps)

    def _check_shared_prompt(self, inputs: dict[str, Any] | None) -> None:
        """First use in a run: on a slice of this micro-batch, the shared path must give the plain path's loss, mean
        log-prob and gradient; every process's outcome counts (``inputs=None``: this process abstains).

        The gradients are compared through random projections (16 rank-one sign patterns per parameter tensor, the
        same for both paths), which estimate ``||g_shared - g_plain||`` without holding two copies of the gradient.
        """
        from accelerate.utils import gather_object

        if self.accelerator.is_main_process:
            logger.warning(
                "em-trainer: checking the shared-prompt forward against the plain one on a slice of the first "
                "micro-batch (%d rows of each of 2 prompts at most, %d tokens; once per run).",
                CHECK_ROWS, CHECK_TOKENS,
            )  # fmt: skip
        # While it runs, the check's own no-grad plain pass must not start the check again (it recursed until Python's
        # limit, each level a forward, and then switched the path off).
        self.shared_prompt.state = "checking"
        try:
            outcome = ABSTAIN if inputs is None else self._shared_prompt_check_outcome(check_slice(inputs))
        finally:
            self.shared_prompt.state = "unchecked"
        self.shared_prompt.decide(gather_object([outcome]))
        if not self.accelerator.is_main_process:
            return
        if self.shared_prompt.state == "on":
            check = self.shared_prompt.check or {}
            logger.warning(
                "em-trainer: shared-prompt forward on (loss gap %.1e, gradient gap %.1e, checked in %.1f s).",
                check.get("loss_relative_gap", 0.0), check.get("grad_relative_gap", 0.0), check.get("seconds", 0.0),
            )  # fmt: skip
        elif self.shared_prompt.state == "off":
            logger.warning("em-trainer: shared-prompt forward off: %s.", self.shared_prompt.reason)

    def _shared_prompt_check_outcome(self, inputs: dict[str, Any]) -> str | None:
        """None when the two paths agree on ``inputs``, else why the shared path must stay off.

        The gradient is compared only where a loss is computed through the shared path (EM-FT); for EM-RL and GRPO,
        whose loss is TRL's plain forward, only the values of the no-grad passes come from it, and a forward
        comparison is the whole check (in the CPU label-free study the backward had cost seconds per training run).
        """
        model = self.accelerator.unwrap_model(self.model)  # gradients taken here must not trigger DDP's reducer
        with_gradient = not self._grpo_loss
        params = [p for p in model.parameters() if p.requires_grad]
        mask = inputs["completion_mask"]
        started = time.perf_counter()
        results = []
        try:
            # The first use may be a no-grad pass (TRL's old log-probs, the EM reward): gradients are switched on.
            with torch.enable_grad() if with_gradient else torch.no_grad():
                for compute in (self._plain_logps_and_entropies, self._shared_logps_and_entropies):
                    logps, entropies, _ = compute(model, inputs)
                    total = mask.sum().clamp(min=1)
                    loss = (entropies * mask).sum() / total
                    mean_logp = (logps.detach() * mask).sum() / total
                    sketch = None
                    if with_gradient:
                        sketch = gradient_sketch(torch.autograd.grad(loss, params, allow_unused=True))
                    results.append((loss.detach(), mean_logp, sketch))
                    del logps, entropies, loss
        except Exception as error:  # noqa: BLE001 - every failure is reported, by kind
            if isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error):
                return (
                    f"out of memory in its first-use check ({type(error).__name__}); the plain path needs less "
                    "memory for this check, not for training: lower per_device_train_batch_size, or set "
                    "shared_prompt_forward=False to skip the check"
                )
            return f"the model does not support it ({type(error).__name__}: {error})"
        (plain_loss, plain_logp, plain_sketch), (shared_loss, shared_logp, shared_sketch) = results
        loss_gap = max(relative_gap(shared_loss, plain_loss), relative_gap(shared_logp, plain_logp))
        grad_gap = 0.0  # not compared where no loss goes through the shared path
        if with_gradient:
            (plain_norm, plain_proj), (_, shared_proj) = plain_sketch, shared_sketch
            grad_gap = float((shared_proj - plain_proj).pow(2).mean().sqrt() / plain_norm.clamp(min=1e-12))
        dtype = self._compute_dtype(model)
        loss_tolerance, grad_tolerance = check_tolerances(dtype)
        self.shared_prompt.check = {
            "loss_relative_gap": loss_gap, "grad_relative_gap": grad_gap, "compute_dtype": str(dtype).split(".")[-1],
            "loss_tolerance": loss_tolerance, "grad_tolerance": grad_tolerance,
            "rows": int(mask.size(0)), "tokens": int(mask.size(1)), "gradient_compared": with_gradient,
            "seconds": round(time.perf_counter() - started, 3),
        }  # fmt: skip
        if loss_gap > loss_tolerance or grad_gap > grad_tolerance:
            return (
                f"it disagreed with the plain path on the first micro-batch (loss gap {loss_gap:.2e}, gradient gap "
                f"{grad_gap:.2e}); please report this with your model and transformers version"
            )
        return None

    def _entropy_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        mask = (
            inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
        )
        per_token_logps, entropies, aux_loss = self._per_token_logps_and_entropies(model, inputs)

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
            # EM-FT has no advantage; the column stays aligned with the logged prompts and completions (TRL's
            # completions table indexes them together), filled with NaN rather than the placeholder's zeros.
            advantages = self._logs["advantages"]
            count = len(advantages)
            advantages.clear()
            advantages.extend([math.nan] * count)
        super().log(logs, start_time)

    def _objective_description(self) -> str:
        """What this run minimised or rewarded, for its model card."""
        names = ", ".join(self.reward_func_names)
        if self.args.objective == "entropy_loss":
            return "EM-FT: mean token entropy over generated positions"
        if self.args.objective == "neg_entropy_reward":
            return f"EM-RL: GRPO on {names} ({self.args.em_reward_reduction} over the response)"
        return f"GRPO on {names}, no EM reward"

    def _card_hyperparameters(self) -> dict[str, Any]:
        args = self.args
        peft = getattr(self, "_merged_lora", None)  # set when a recipe merged the adapter into the weights
        if is_peft_model(self.model):
            config = self.model.peft_config.get("default")
            peft = (
                f"{type(config).__name__}(r={getattr(config, 'r', '?')}, alpha={getattr(config, 'lora_alpha', '?')})"
            )
        schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        return {
            "objective": self._objective_description(),
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
            dataset_name=dataset_name or self._dataset_description,
            hyperparameters=self._card_hyperparameters(),
            results=results,
            tags=[tags] if isinstance(tags, str) else tags,
            citation=self._paper["citation"],
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))
