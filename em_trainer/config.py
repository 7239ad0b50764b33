"""EMConfig: the configuration of entropy-minimization fine-tuning, as a subclass of TRL's GRPOConfig."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

PAPER_RESPONSES_PER_STEP = 64


class EMConfigError(ValueError):
    """An EMConfig setting that cannot work; the message names the field, the value and the fix."""


@dataclass
class EMConfig(GRPOConfig):
    r"""
    Configuration of [`EMTrainer`]: one-shot entropy minimization (EM-FT, Gao et al. 2025).

    Every field of TRL's `GRPOConfig` (and so of `transformers.TrainingArguments`) is available. The defaults below
    differ from GRPOConfig's and reproduce the paper's recipe: sample 64 responses of one prompt at temperature 0.5,
    minimise their mean token entropy at that temperature, with a constant learning rate of 2e-5, for 10 optimizer
    steps, with responses of up to 2048 tokens, no KL term and one gradient step per generation.

    How "64 responses per optimizer step" maps onto hardware: one optimizer step consumes
    `per_device_train_batch_size * num_processes * gradient_accumulation_steps` responses. Leave
    `gradient_accumulation_steps` unset and it is derived from `responses_per_step`: on one device with the default
    `per_device_train_batch_size=8`, 64 responses are 8 micro-batches of 8; on 8 GPUs, one micro-batch of 8 per GPU.
    Set `per_device_train_batch_size` to what fits in memory; the number of responses per step (and so the result)
    does not change. Generation covers one optimizer step at a time (`steps_per_generation =
    gradient_accumulation_steps`), so every step trains on fresh samples of the current policy, with no importance
    ratio and no extra forward pass.

    Parameters:
        responses_per_step (`int` or `None`, *optional*, defaults to `None`, meaning 64):
            Number of sampled responses per optimizer step, over all devices. The paper uses 64. Used to derive
            `gradient_accumulation_steps` when that is not set; when both are set they must agree. If it is smaller
            than `per_device_train_batch_size * num_processes`, the per-device batch is reduced to fit.
        num_generations (`int` or `None`, *optional*, defaults to `None`, meaning `responses_per_step`):
            Responses sampled per prompt. By default all responses of a step come from one prompt, as in one-shot EM,
            so a one-prompt dataset just works. With a larger prompt pool, set e.g. `num_generations=8` to train on
            8 prompts per step; the dataset then needs at least `responses_per_step / num_generations` rows.
        entropy_temperature (`float` or `None`, *optional*, defaults to `None`, meaning `temperature`):
            Temperature T of the distribution whose entropy is minimised, `softmax(logits / T)`. The paper uses the
            sampling temperature; set another value to decouple the objective from sampling.
        temperature (`float`, *optional*, defaults to `0.5`):
            Sampling temperature, the paper's. Lower values give less diverse responses and a weaker signal; higher
            values more diverse ones (the paper sweeps 0.3 to 1.0).
        learning_rate (`float`, *optional*, defaults to `2e-5`):
            The paper's learning rate, held constant (`lr_scheduler_type="constant"`, no warmup).
        max_steps (`int`, *optional*, defaults to `10`):
            Optimizer steps. The paper's score peaks near step 10 and then declines while the loss keeps falling, so
            more steps is not better.
        max_completion_length (`int`, *optional*, defaults to `2048`):
            Longest sampled response, in tokens. A response cut at this length keeps all its positions in the loss.
        beta (`float`, *optional*, defaults to `0.0`):
            Weight of the KL term to a frozen reference model. EM uses none, so no reference model is loaded. A
            positive value adds `beta * KL` per token (TRL's k3 estimator) to the entropy.
        num_iterations (`int`, *optional*, defaults to `1`):
            Gradient steps per generation batch. EM needs no more: its gradient is exact for the sampled responses.
        vllm_importance_sampling_correction (`bool`, *optional*, defaults to `False`):
            TRL's correction for the mismatch between vLLM's sampler and the trained model. The EM loss does not
            weight tokens by a policy ratio, so the correction would only cost a forward pass; it is refused.
        logging_steps (`float`, *optional*, defaults to `1`):
            Log every optimizer step: a run has only 10.
        save_steps (`float`, *optional*, defaults to `5`):
            Checkpoint every 5 steps so an interrupted run resumes (`resume_from_checkpoint=True`).
        bf16 (`bool` or `None`, *optional*, defaults to `None`):
            `None` means bf16 mixed precision on a GPU that supports it, float32 elsewhere (CPU autocast to bf16 is
            slow and imprecise).
        gradient_checkpointing (`bool`, *optional*, defaults to `True`):
            TRL's default: recompute activations in the backward pass to save memory, which long responses of large
            models need. Measured on CPU with SmolLM2-135M it was also faster than keeping activations (35.5 vs
            41.2 s per step, benchmarks/step_time.py): the step is bound by memory traffic, not arithmetic.

    EM-RL (Agarwal et al. 2025), with `objective="neg_entropy_reward"`: TRL's GRPO loss, advantages and optional KL,
    with a reward computed from the model's own distribution on each sampled response.

        objective (`str`, *optional*, defaults to `"entropy_loss"`):
            `"entropy_loss"` is EM-FT (the loss is the entropy); `"neg_entropy_reward"` is EM-RL.
        em_reward (`str`, *optional*, defaults to `"token"`):
            `"trajectory"`: the mean log-probability of the sampled tokens, a one-sample estimate of minus the
            per-token trajectory entropy; `"token"`: minus the mean full-vocabulary entropy over the generated
            positions. Both at the sampling temperature (or `entropy_temperature`).
        em_reward_reduction (`str`, *optional*, defaults to `"mean"`):
            `"mean"` over the response's tokens (the authors' code) or `"sum"` (the paper's formulas, which then
            favour longer confident responses).
        em_reward_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the EM reward when user `reward_funcs` are added; theirs come from `reward_weights`
            (one per user function), and the total reward is the weighted sum.
        em_advantage (`str`, *optional*, defaults to `"grpo"`):
            `"grpo"`: TRL's group-mean baseline; `"rloo"`: the leave-one-out baseline, which with
            `scale_rewards="none"` is the group-mean advantage times G/(G-1).

    Early stopping (the paper's stated future work), both logged and both off by default:

        early_stopping_dev_set (`str` or `None`, *optional*, defaults to `None`):
            A labeled dev set (a benchmark name such as `"math500"` or `"arithmetic"`, or a file with problem and
            answer columns), scored greedily every `early_stopping_eval_steps` (5) optimizer steps. The best weights
            are kept in `<output_dir>/best` and restored at the end; training stops after
            `early_stopping_patience` (2) evaluations without improvement. `early_stopping_limit` rows,
            `early_stopping_max_new_tokens` (512) tokens per answer, `early_stopping_data_dir` for local files.
        entropy_floor, collapse_min_length, collapse_max_repetition (`float` or `None`, default `None`):
            Label-free guard: stop when the step's mean entropy falls below the floor, the mean completion length
            below the minimum, or the completions' repeated-4-gram rate above the maximum.

    The paper's EM-RL settings are `EMConfig.em_rl_paper_defaults()`: 4 samples per prompt, lr 1e-6, KL 0.001,
    sampling temperature 1.0.

    Refused settings, each with a message that says why: `use_adaptive_entropy` (its controller clamps the entropy
    coefficient to [0, 1], a bonus, the opposite of minimisation), a non-zero `entropy_coef` (GRPO's entropy bonus; the
    EM loss is already the entropy), and `vllm_importance_sampling_correction`.
    """

    objective: str = field(
        default="entropy_loss",
        metadata={
            "help": "'entropy_loss': EM-FT, the loss is the mean token entropy (one-shot EM). 'neg_entropy_reward': "
            "EM-RL, GRPO whose reward is the negative entropy (em_reward)."
        },
    )
    em_reward: str = field(
        default="token",
        metadata={
            "help": "EM-RL reward: 'trajectory' (mean log-prob of the sampled tokens) or 'token' (minus mean entropy)."
        },
    )
    em_reward_reduction: str = field(
        default="mean",
        metadata={"help": "EM-RL reward over a response: 'mean' (the authors' code) or 'sum' (the paper's formulas)."},
    )
    em_reward_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the EM-RL reward when user reward functions are added (their weights: reward_weights)."
        },
    )
    em_advantage: str = field(
        default="grpo",
        metadata={
            "help": "EM-RL baseline: 'grpo' (group mean, TRL's) or 'rloo' (leave-one-out; needs scale_rewards='none')."
        },
    )
    early_stopping_dev_set: str | None = field(
        default=None,
        metadata={"help": "Labeled dev set scored every early_stopping_eval_steps: a benchmark name or a file."},
    )
    early_stopping_data_dir: str | None = field(
        default=None, metadata={"help": "Local benchmark files (eval layout)."}
    )
    early_stopping_eval_steps: int = field(default=5, metadata={"help": "Score the dev set every N optimizer steps."})
    early_stopping_patience: int = field(default=2, metadata={"help": "Stop after N evaluations without improvement."})
    early_stopping_limit: int | None = field(default=None, metadata={"help": "Use the first N dev rows."})
    early_stopping_max_new_tokens: int = field(default=512, metadata={"help": "Response budget of dev-set scoring."})
    entropy_floor: float | None = field(
        default=None, metadata={"help": "Label-free guard: stop when the step's mean entropy falls below this."}
    )
    collapse_min_length: float | None = field(
        default=None, metadata={"help": "Label-free guard: stop when the mean completion length falls below this."}
    )
    collapse_max_repetition: float | None = field(
        default=None, metadata={"help": "Label-free guard: stop when completions repeat their 4-grams more than this."}
    )
    responses_per_step: int | None = field(
        default=None,
        metadata={"help": "Sampled responses per optimizer step over all devices (default 64, the paper's)."},
    )
    entropy_temperature: float | None = field(
        default=None,
        metadata={"help": "Temperature of the minimised entropy; defaults to the sampling temperature."},
    )

    # Overridden defaults: the paper's recipe.
    learning_rate: float = field(default=2e-5, metadata={"help": "Learning rate (paper: 2e-5, constant)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule (paper: constant)."})
    max_steps: int = field(default=10, metadata={"help": "Optimizer steps (paper: 10)."})
    temperature: float = field(default=0.5, metadata={"help": "Sampling temperature (paper: 0.5)."})
    max_completion_length: int | None = field(default=2048, metadata={"help": "Longest response in tokens."})
    num_generations: int | None = field(
        default=None, metadata={"help": "Responses per prompt; defaults to responses_per_step (one prompt per step)."}
    )
    gradient_accumulation_steps: int | None = field(
        default=None, metadata={"help": "Micro-batches per optimizer step; derived from responses_per_step if unset."}
    )
    beta: float = field(default=0.0, metadata={"help": "KL weight to a reference model (paper: 0, no reference)."})
    num_iterations: int = field(default=1, metadata={"help": "Gradient steps per generation batch."})
    vllm_importance_sampling_correction: bool = field(
        default=False, metadata={"help": "Not used by the EM loss; must stay False."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every N optimizer steps."})
    save_steps: float = field(default=5, metadata={"help": "Checkpoint every N optimizer steps."})
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision; default: on a bf16-capable GPU only."}
    )

    def __post_init__(self) -> None:
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ
        if launched and not torch.cuda.is_available() and not self.use_cpu:
            # Without a GPU, accelerate treats torchrun's processes as independent single runs unless told to use
            # the CPU backend (gloo); EM must then see the real world size for its batch shape and normalisation.
            self.use_cpu = True
        if self.bf16 is None:
            self.bf16 = (not self.fp16) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        self._resolve_batch_shape()
        try:
            super().__post_init__()
        except ValueError:
            # A batch shape derived for the wrong number of processes makes GRPOConfig fail first; say why.
            self._check_world_size()
            raise
        self._check_world_size()
        self._validate()

    def _resolve_batch_shape(self) -> None:
        # TrainingArguments has not set up the distributed state yet; every launcher (accelerate, torchrun,
        # deepspeed) exports WORLD_SIZE, and the value is checked against the real one after set-up.
        self._assumed_world_size = int(os.environ.get("WORLD_SIZE", "1"))
        world = self._assumed_world_size
        if self.gradient_accumulation_steps is None:
            responses = self.responses_per_step or PAPER_RESPONSES_PER_STEP
            if responses < 1:
                raise EMConfigError(f"responses_per_step must be >= 1, got {responses}.")
            if responses < self.per_device_train_batch_size * world and responses % world == 0:
                self.per_device_train_batch_size = responses // world
            per_step = self.per_device_train_batch_size * world
            if responses % per_step != 0:
                raise EMConfigError(
                    f"responses_per_step={responses} is not a multiple of per_device_train_batch_size "
                    f"({self.per_device_train_batch_size}) x processes ({world}) = {per_step}. Pick a "
                    "per_device_train_batch_size that divides it, or set gradient_accumulation_steps yourself."
                )
            self.gradient_accumulation_steps = responses // per_step
        else:
            per_step = self.per_device_train_batch_size * world * self.gradient_accumulation_steps
            if self.responses_per_step is not None and self.responses_per_step != per_step:
                raise EMConfigError(
                    f"responses_per_step={self.responses_per_step} disagrees with per_device_train_batch_size "
                    f"({self.per_device_train_batch_size}) x processes ({world}) x gradient_accumulation_steps "
                    f"({self.gradient_accumulation_steps}) = {per_step}. Set only one of responses_per_step and "
                    "gradient_accumulation_steps."
                )
        self.responses_per_step = self.per_device_train_batch_size * world * self.gradient_accumulation_steps
        if self.num_generations is None:
            self.num_generations = self.responses_per_step
        if self.responses_per_step % self.num_generations != 0:
            raise EMConfigError(
                f"num_generations={self.num_generations} must divide the {self.responses_per_step} responses per "
                "optimizer step, so that each step holds whole groups of responses to the same prompt."
            )

    def _check_world_size(self) -> None:
        if self.world_size != self._assumed_world_size:
            raise EMConfigError(
                f"The batch shape was derived for {self._assumed_world_size} process(es) (the WORLD_SIZE environment "
                f"variable) but training runs on {self.world_size}. Launch with accelerate or torchrun, which set "
                "WORLD_SIZE, or set gradient_accumulation_steps explicitly."
            )

    def _validate(self) -> None:
        if self.use_adaptive_entropy:
            raise EMConfigError(
                "use_adaptive_entropy=True is incompatible with entropy minimization: TRL's adaptive controller "
                "clamps the entropy coefficient to [0, 1], i.e. it can only add an entropy bonus. EMTrainer already "
                "minimises the entropy; set use_adaptive_entropy=False."
            )
        if self.entropy_coef != 0.0:
            raise EMConfigError(
                f"entropy_coef={self.entropy_coef}: GRPO's entropy bonus does not apply to EMTrainer, whose loss "
                "is the entropy itself. Set entropy_coef=0 (to weight the loss, change learning_rate)."
            )
        if self.objective not in ("entropy_loss", "neg_entropy_reward"):
            raise EMConfigError(
                f"objective='{self.objective}': use 'entropy_loss' (EM-FT) or 'neg_entropy_reward' (EM-RL)."
            )
        if self.em_reward not in ("trajectory", "token"):
            raise EMConfigError(f"em_reward='{self.em_reward}': use 'trajectory' or 'token'.")
        if self.em_reward_reduction not in ("mean", "sum"):
            raise EMConfigError(f"em_reward_reduction='{self.em_reward_reduction}': use 'mean' or 'sum'.")
        if self.em_advantage not in ("grpo", "rloo"):
            raise EMConfigError(f"em_advantage='{self.em_advantage}': use 'grpo' or 'rloo'.")
        if self.em_advantage == "rloo" and self.scale_rewards != "none":
            raise EMConfigError(
                "em_advantage='rloo' is the leave-one-out baseline without reward scaling; set scale_rewards='none'."
            )
        if self.vllm_importance_sampling_correction and self.objective == "entropy_loss":
            raise EMConfigError(
                "vllm_importance_sampling_correction=True is not needed for EM: the entropy loss has no policy ratio "
                "to correct, and the correction costs a forward pass per batch. Set "
                "vllm_importance_sampling_correction=False."
            )
        if self.early_stopping_eval_steps < 1 or self.early_stopping_patience < 1:
            raise EMConfigError("early_stopping_eval_steps and early_stopping_patience must be >= 1.")
        if self.entropy_temperature is not None and self.entropy_temperature <= 0:
            raise EMConfigError(f"entropy_temperature must be > 0, got {self.entropy_temperature}.")
        if self.temperature <= 0:
            raise EMConfigError(
                f"temperature={self.temperature}: EM samples responses, so the temperature must be > 0 (paper: 0.5)."
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise EMConfigError(f"max_steps={self.max_steps}: set a positive number of optimizer steps (paper: 10).")

    @classmethod
    def em_rl_paper_defaults(cls, **overrides) -> EMConfig:
        """EM-RL as in Agarwal et al.: 4 samples per prompt, lr 1e-6, KL 0.001, sampling temperature 1.0."""
        values = dict(
            objective="neg_entropy_reward",
            num_generations=4,
            learning_rate=1e-6,
            beta=0.001,
            temperature=1.0,
            max_steps=-1,
            num_train_epochs=1,
        )
        values.update(overrides)
        return cls(**values)

    @property
    def prompts_per_step(self) -> int:
        """Distinct prompts each generation batch draws from the dataset."""
        return self.generation_batch_size // self.num_generations
