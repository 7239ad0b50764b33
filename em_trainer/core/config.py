"""EMConfig: the configuration of entropy-minimization fine-tuning, as a subclass of TRL's GRPOConfig."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import GRPOConfig

from .objectives import SIGNED_REINFORCE

PAPER_RESPONSES_PER_STEP = 64
# EM-FT, EM-RL, and GRPO on the reward functions alone (the label-free family's answer-level rewards and controls).
OBJECTIVES = ("entropy_loss", "neg_entropy_reward", "grpo")


def _documented(doc: str | None, name: str, default: Any) -> Any:
    """A dataclass field whose ``help`` is its entry in the class docstring, so the two never drift apart."""
    if doc is None:  # python -OO strips docstrings; the fields still work, without help texts
        return field(default=default)
    match = re.search(rf"^ {{8}}{name} \(`[^\n]*\):\n((?: {{12}}.*\n)+)", doc, re.M)
    if match is None:
        raise RuntimeError(f"EMConfig field '{name}' has no entry in the docstring.")
    return field(default=default, metadata={"help": " ".join(match.group(1).split())})


class EMConfigError(ValueError):
    """An EMConfig setting that cannot work; the message names the field, the value and the fix."""


@dataclass
class EMConfig(GRPOConfig):
    r"""
    Configuration of [`EMTrainer`]: one-shot entropy minimization (EM-FT, Gao et al. 2025), and EM-RL.

    Every field of TRL's `GRPOConfig` (and so of `transformers.TrainingArguments`) is available. The defaults listed
    below differ from GRPOConfig's and reproduce the paper's recipe: sample 64 responses of one prompt at temperature
    0.5, minimise their mean token entropy at that temperature with a constant learning rate of 2e-5 for 10 optimizer
    steps, responses of up to 2048 tokens, no KL term and one gradient step per generation.

    One optimizer step consumes `per_device_train_batch_size * num_processes * gradient_accumulation_steps`
    responses. Leave `gradient_accumulation_steps` unset and it is derived from `responses_per_step`: on one device
    with the default `per_device_train_batch_size=8`, 64 responses are 8 micro-batches of 8; on 8 GPUs, one
    micro-batch of 8 per GPU. Generation covers one optimizer step at a time, so every step trains on fresh samples
    of the current policy.

    Refused settings, each with a message that says why and what to set instead: `use_adaptive_entropy=True` (its
    controller clamps the entropy coefficient to [0, 1], a bonus, the opposite of minimisation); a non-zero
    `entropy_coef` (GRPO's entropy bonus; the EM loss is already the entropy); `vllm_importance_sampling_correction`
    with `objective="entropy_loss"`; `temperature <= 0`; `entropy_temperature <= 0`; `max_steps` of 0 or below -1;
    an unknown `objective`, `em_reward`, `em_reward_reduction` or `em_advantage`; `em_advantage="rloo"` without
    `scale_rewards="none"`; early-stopping steps or patience below 1; and batch shapes whose numbers do not divide.

    The paper's EM-RL settings are `EMConfig.em_rl_paper_defaults()`: 4 samples per prompt, lr 1e-6, KL 0.001,
    sampling temperature 1.0.

    Parameters:
        > One-shot EM (EM-FT): what is minimised, and over how many responses

        objective (`str`, *optional*, defaults to `"entropy_loss"`):
            'entropy_loss': EM-FT, the loss is the mean token entropy over the generated positions (one-shot EM).
            'neg_entropy_reward': EM-RL, GRPO whose only reward is the negative entropy (see em_reward).
            'grpo': TRL's GRPO loss on the reward_funcs passed to the trainer and nothing else (no EM reward): the
            label-free answer-level rewards (EMPO's semantic entropy, TTRL's majority vote), the controls of
            "Spurious Rewards" (random, format) and gold-label GRPO, through the same rollouts as EM-FT and EM-RL so
            that a comparison differs only in the reward. Needs at least one reward function.
        responses_per_step (`int` or `None`, *optional*, defaults to `None`):
            Sampled responses per optimizer step, over all devices; None means 64, the paper's. It sets
            gradient_accumulation_steps when that is unset (when both are set they must agree); if it is smaller than
            per_device_train_batch_size x processes, the per-device batch is reduced to fit.
        num_generations (`int` or `None`, *optional*, defaults to `None`):
            Responses sampled per prompt; None means responses_per_step, so all responses of a step continue one
            prompt, as in one-shot EM, and a one-prompt dataset just works. With a prompt pool, e.g. 8 trains on
            responses_per_step / 8 prompts per step; the dataset then needs at least that many rows.
        shared_prompt_forward (`bool`, *optional*, defaults to `True`):
            Forward each distinct prompt of a micro-batch once (with the KV cache and gradients) and its completions
            against it, instead of prompt + completion per response; exact, checked against the plain forward on the
            first micro-batch of a run, and off (with the reason logged once) for multimodal inputs, MoE auxiliary
            losses, FSDP/DeepSpeed, top_entropy_quantile < 1, or a model that fails the check. The same switch
            prefills each distinct prompt once in HF generation and shares it in the no-grad passes (reference,
            old log-probs, EM-RL reward), each checked once against the plain path.
        entropy_temperature (`float` or `None`, *optional*, defaults to `None`):
            Temperature T of the distribution softmax(logits / T) whose entropy is minimised; None means the sampling
            temperature, as in the paper. The KL term, when beta > 0, is computed at the same temperature. EM-FT
            only: EM-RL (``objective="neg_entropy_reward"``) refuses a second temperature, since its policy log-probs
            must be taken at the temperature the samples were drawn at.

        > Rollouts on a CPU (HF generation; see core/cpu_decoding.py and docs/performance.md)

        cpu_fast_rollouts (`bool`, *optional*, defaults to `True`):
            On a CPU, HF rollouts decode into a KV cache reserved once (no copy of the cache per token; equal outputs
            bit for bit) and compute the linears from oneDNN-packed weights, packed again after every optimizer step
            (about 2x faster token steps on SmolLM2-135M; logits equal to float rounding, the sampled tokens equal in
            the tests). False decodes exactly as TRL does. No effect on a GPU or with vLLM.
        rollout_dtype (`str` or `None`, *optional*, defaults to `None`):
            Precision of the rollouts' matrix products: None means the model's own. 'bfloat16' packs a bf16 copy of
            the weights for every rollout (kept in step with the trained weights) and runs every linear of the
            rollout in bf16, as vLLM's CPU engine does, while the policy trains in its own precision. The samples
            then come from a slightly different distribution than the trained policy's. CPU HF rollouts only: needs
            cpu_fast_rollouts and a CPU with native bf16 (AVX512-BF16 or AMX); refused otherwise.
        vllm_enforce_eager (`bool`, *optional*, defaults to `False`):
            Build the colocated vLLM engine (use_vllm=True, vllm_mode='colocate') with vLLM's enforce_eager: no
            torch.compile and no CUDA graphs, the option TRL does not pass on. vLLM's default (False) compiles the
            model when the engine starts: on a GPU its graphs make generation faster; on a CPU the compile takes
            about a minute for SmolLM2-135M (55 s on an AVX512-BF16 EPYC, 106 s with AVX2 kernels) against 5 s for
            the eager engine. Refused without use_vllm and in server mode (start `trl vllm-serve --enforce_eager`).

        > The paper's recipe: GRPOConfig fields whose defaults EMConfig changes

        learning_rate (`float`, *optional*, defaults to `2e-5`):
            Learning rate; the paper's 2e-5, held constant.
        lr_scheduler_type (`str`, *optional*, defaults to `"constant"`):
            Learning-rate schedule; the paper's is constant, without warmup.
        max_steps (`int`, *optional*, defaults to `10`):
            Optimizer steps. The paper's score peaks near step 10 and then declines while the loss keeps falling, so
            more steps is not better.
        temperature (`float`, *optional*, defaults to `0.5`):
            Sampling temperature, the paper's; it must be > 0 because EM samples. Lower values give less diverse
            responses (the paper sweeps 0.3 to 1.0).
        max_completion_length (`int` or `None`, *optional*, defaults to `2048`):
            Longest sampled response in tokens, the paper's. A response cut at this length keeps all its positions in
            the loss.
        gradient_accumulation_steps (`int` or `None`, *optional*, defaults to `None`):
            Micro-batches per optimizer step; None derives it from responses_per_step, per_device_train_batch_size and
            the number of processes.
        beta (`float`, *optional*, defaults to `0.0`):
            Weight of the KL term to a frozen reference model (TRL's k3 estimator, added per token to the entropy). The
            paper uses none, so no reference model is loaded.
        num_iterations (`int`, *optional*, defaults to `1`):
            Gradient steps per generation batch. EM needs one: its gradient is exact for the sampled responses, with no
            importance ratio.
        vllm_importance_sampling_correction (`bool`, *optional*, defaults to `False`):
            TRL's correction for the mismatch between vLLM's sampler and the trained model. It costs a forward pass per
            batch; with objective='entropy_loss' it is refused, because the entropy loss has no policy ratio to
            correct. EM-RL may turn it on.
        logging_steps (`float`, *optional*, defaults to `1`):
            Log every N optimizer steps; a run has only 10.
        save_steps (`float`, *optional*, defaults to `5`):
            Checkpoint every N optimizer steps, so an interrupted run resumes from its last checkpoint.
        keep_optimizer_state (`str`, *optional*, defaults to `"latest"`):
            'latest': older checkpoints lose their optimizer and scheduler state (AdamW's moments: twice the weights
            in float32) and keep their weights; while training the newest two stay whole (a save cut off by a kill
            falls back on the one before), once training ends the newest only. The 10-step CPU demo writes 2.6 GiB
            instead of 3.6 GiB. 'all': every checkpoint whole (Trainer's behaviour), e.g. to resume from an older one.
        bf16 (`bool` or `None`, *optional*, defaults to `None`):
            bf16 mixed precision. None means on a GPU that supports bf16, float32 elsewhere (CPU autocast to bf16 is
            slow and imprecise).

        > EM-RL (objective='neg_entropy_reward'): TRL's GRPO loss with a reward from the model's own distribution.
        > The em_reward* fields apply to EM-RL only and em_advantage to both GRPO losses; set under another objective
        > they are refused rather than ignored.

        em_reward (`str`, *optional*, defaults to `"token"`):
            'trajectory': the mean log-probability of the sampled tokens, a one-sample estimate of minus the trajectory
            entropy per token; 'token': minus the mean full-vocabulary entropy over the generated positions (RENT's
            reward, arXiv 2505.22660: 'rent' is accepted as its name); 'self_certainty': Intuitor's reward (arXiv
            2505.19590), the mean over the response of KL(U || p), the divergence of the next-token distribution
            from uniform, computed from the logits of the generated positions (one more no-grad forward per rollout).
            All at entropy_temperature.
        em_reward_reduction (`str`, *optional*, defaults to `"mean"`):
            'mean' over a response's tokens (the authors' code) or 'sum' (the paper's formulas, which favour longer
            confident responses).
        em_reward_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the EM reward when reward_funcs are passed too; theirs come from reward_weights (one per
            function), and the total reward is the weighted sum.
        em_advantage (`str`, *optional*, defaults to `"grpo"`):
            'grpo': TRL's group-mean baseline; 'rloo': the leave-one-out baseline, which needs scale_rewards='none' and
            is then the group-mean advantage times G/(G-1). With objective='grpo' and a 0/1 verifiable reward (gold
            labels), the RLVR reference points of "The Surprising Effectiveness of Negative Reinforcement" (arXiv
            2506.01347): 'psr' trains on the correct responses only (advantage +1), 'nsr' on the wrong ones only
            (advantage -1), 'w_reinforce' on all (positive_advantage_weight for a correct one, -1 for a wrong one);
            REINFORCE with no baseline and no scaling, the token mean taken over the responses kept, as in the
            authors' code.
        positive_advantage_weight (`float`, *optional*, defaults to `0.1`):
            W-REINFORCE's lambda, the advantage of a correct response (the paper recommends 0.1); only with
            em_advantage='w_reinforce'.

        cov_regularization (`str` or `None`, *optional*, defaults to `None`):
            'clip_cov': Clip-Cov ("The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models",
            arXiv 2505.22617), the entropy-preserving change of the GRPO loss: in each micro-batch, a random
            clip_cov_ratio of the generated tokens whose covariance term (A - mean A)(log p - mean log p) lies between
            clip_cov_lower and clip_cov_upper get no gradient, the tokens through which an update collapses entropy.
            Applies to both GRPO losses (objective 'neg_entropy_reward' and 'grpo'). None: TRL's loss unchanged.
        clip_cov_ratio (`float`, *optional*, defaults to `0.0002`):
            Share of a micro-batch's generated tokens Clip-Cov detaches (at least one), the paper's 2e-4.
        clip_cov_lower (`float`, *optional*, defaults to `1.0`):
            Lower bound of the covariance term of the tokens Clip-Cov may detach, the paper's 1.
        clip_cov_upper (`float`, *optional*, defaults to `5.0`):
            Upper bound of that term, the paper's 5.

        > Early stopping and collapse guard (the paper's stated future work), all off by default

        early_stopping_dev_set (`str` or `None`, *optional*, defaults to `None`):
            A labeled dev set (a benchmark name such as 'arithmetic' or 'math500', or a file with problem and answer
            columns) scored greedily every early_stopping_eval_steps; the best weights are kept in <output_dir>/best
            and restored at the end. `em-trainer train` builds the scorer; in Python pass
            dev_set_scorer=build_dev_set_scorer(args, tokenizer) to EMTrainer.
        early_stopping_data_dir (`str` or `None`, *optional*, defaults to `None`):
            Folder of local benchmark files for early_stopping_dev_set (the layout of `em-trainer eval --data_dir`).
        early_stopping_eval_steps (`int`, *optional*, defaults to `5`):
            Score the dev set every N optimizer steps; must be >= 1.
        early_stopping_patience (`int`, *optional*, defaults to `2`):
            Stop after N dev-set evaluations without improvement; must be >= 1.
        early_stopping_limit (`int` or `None`, *optional*, defaults to `None`):
            Score only the first N rows of the dev set; None scores all.
        early_stopping_max_new_tokens (`int`, *optional*, defaults to `512`):
            Response budget in tokens of each dev-set answer.
        entropy_floor (`float` or `None`, *optional*, defaults to `None`):
            Label-free guard: stop when a step's mean entropy falls below this value (nats).
        collapse_min_length (`float` or `None`, *optional*, defaults to `None`):
            Label-free guard: stop when the mean completion length falls below this many tokens.
        collapse_max_repetition (`float` or `None`, *optional*, defaults to `None`):
            Label-free guard: stop when the completions' share of repeated word 4-grams rises above this value.
    """

    # One-shot EM (EM-FT): what is minimised, and over how many responses
    objective: str = _documented(__doc__, "objective", "entropy_loss")
    responses_per_step: int | None = _documented(__doc__, "responses_per_step", None)
    num_generations: int | None = _documented(__doc__, "num_generations", None)
    shared_prompt_forward: bool = _documented(__doc__, "shared_prompt_forward", True)
    entropy_temperature: float | None = _documented(__doc__, "entropy_temperature", None)

    # Rollouts on a CPU
    cpu_fast_rollouts: bool = _documented(__doc__, "cpu_fast_rollouts", True)
    rollout_dtype: str | None = _documented(__doc__, "rollout_dtype", None)
    vllm_enforce_eager: bool = _documented(__doc__, "vllm_enforce_eager", False)

    # The paper's recipe: GRPOConfig fields whose defaults EMConfig changes
    learning_rate: float = _documented(__doc__, "learning_rate", 2e-5)
    lr_scheduler_type: str = _documented(__doc__, "lr_scheduler_type", "constant")
    max_steps: int = _documented(__doc__, "max_steps", 10)
    temperature: float = _documented(__doc__, "temperature", 0.5)
    max_completion_length: int | None = _documented(__doc__, "max_completion_length", 2048)
    gradient_accumulation_steps: int | None = _documented(__doc__, "gradient_accumulation_steps", None)
    beta: float = _documented(__doc__, "beta", 0.0)
    num_iterations: int = _documented(__doc__, "num_iterations", 1)
    vllm_importance_sampling_correction: bool = _documented(__doc__, "vllm_importance_sampling_correction", False)
    logging_steps: float = _documented(__doc__, "logging_steps", 1)
    save_steps: float = _documented(__doc__, "save_steps", 5)
    bf16: bool | None = _documented(__doc__, "bf16", None)

    # EM-RL (objective='neg_entropy_reward'): TRL's GRPO loss with a reward from the model's own distribution
    em_reward: str = _documented(__doc__, "em_reward", "token")
    em_reward_reduction: str = _documented(__doc__, "em_reward_reduction", "mean")
    em_reward_weight: float = _documented(__doc__, "em_reward_weight", 1.0)
    em_advantage: str = _documented(__doc__, "em_advantage", "grpo")
    positive_advantage_weight: float = _documented(__doc__, "positive_advantage_weight", 0.1)
    cov_regularization: str | None = _documented(__doc__, "cov_regularization", None)
    clip_cov_ratio: float = _documented(__doc__, "clip_cov_ratio", 0.0002)
    clip_cov_lower: float = _documented(__doc__, "clip_cov_lower", 1.0)
    clip_cov_upper: float = _documented(__doc__, "clip_cov_upper", 5.0)

    # Early stopping and collapse guard (the paper's stated future work), all off by default
    early_stopping_dev_set: str | None = _documented(__doc__, "early_stopping_dev_set", None)
    early_stopping_data_dir: str | None = _documented(__doc__, "early_stopping_data_dir", None)
    early_stopping_eval_steps: int = _documented(__doc__, "early_stopping_eval_steps", 5)
    early_stopping_patience: int = _documented(__doc__, "early_stopping_patience", 2)
    early_stopping_limit: int | None = _documented(__doc__, "early_stopping_limit", None)
    early_stopping_max_new_tokens: int = _documented(__doc__, "early_stopping_max_new_tokens", 512)
    entropy_floor: float | None = _documented(__doc__, "entropy_floor", None)
    collapse_min_length: float | None = _documented(__doc__, "collapse_min_length", None)
    collapse_max_repetition: float | None = _documented(__doc__, "collapse_max_repetition", None)
    keep_optimizer_state: str = _documented(__doc__, "keep_optimizer_state", "latest")

    def __post_init__(self) -> None:
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ
        if launched and not torch.cuda.is_available() and not self.use_cpu:
            # Without a GPU, accelerate treats torchrun's processes as independent single runs unless told to use
            # the CPU backend (gloo); EM must then see the real world size for its batch shape and normalisation.
            self.use_cpu = True
        if self.bf16 is None:
            self.bf16 = (not self.fp16) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        self._check_domains()
        self._resolve_batch_shape()
        try:
            super().__post_init__()
        except ValueError:
            # A batch shape derived for the wrong number of processes makes GRPOConfig fail first; say why (when
            # TrainingArguments got far enough to know the world size).
            if hasattr(self, "distributed_state"):
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
            responses = PAPER_RESPONSES_PER_STEP if self.responses_per_step is None else self.responses_per_step
            if responses < 1:
                raise EMConfigError(f"responses_per_step={responses}: set at least 1 (the paper samples 64 per step).")
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

    # Numeric fields and the values they take; a value outside takes no effect or breaks the run, so it is refused.
    # (name, lowest value, whether the lowest is excluded, what the field is for)
    _DOMAINS = (
        ("learning_rate", 0, True, "a step size"),
        ("gradient_accumulation_steps", 1, False, "micro-batches per optimizer step"),
        ("num_iterations", 1, False, "updates per generated batch"),
        ("per_device_train_batch_size", 1, False, "responses per micro-batch and process"),
        ("num_generations", 1, False, "responses per prompt"),
        ("steps_per_generation", 1, False, "micro-batches each generation serves"),
        ("generation_batch_size", 1, False, "responses generated at once"),
        ("top_entropy_quantile", 0, True, "the share of highest-entropy tokens kept; 1.0 keeps all"),
        ("max_completion_length", 1, False, "tokens per response"),
        ("beta", 0, False, "the KL weight (0 = no KL)"),
        ("logging_steps", 0, True, "steps between logs"),
        ("save_steps", 0, True, "steps between checkpoints"),
        ("em_reward_weight", 0, True, "EM-RL's reward weight; 0 would drop the reward"),
        ("early_stopping_limit", 1, False, "dev-set problems"),
        ("early_stopping_max_new_tokens", 1, False, "tokens per dev-set answer"),
        ("entropy_floor", 0, True, "an entropy in nats; unset it to turn the floor off"),
        ("collapse_min_length", 0, True, "a mean length in tokens; unset it to turn the check off"),
        ("collapse_max_repetition", 0, True, "a share of repeated n-grams; unset it to turn the check off"),
    )

    def _check_domains(self) -> None:
        for name, lowest, excluded, meaning in self._DOMAINS:
            value = getattr(self, name)
            if value is None:
                continue
            if value < lowest or (excluded and value == lowest):
                raise EMConfigError(f"{name}={value}: must be {'>' if excluded else '>='} {lowest} ({meaning}).")

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
        if self.keep_optimizer_state not in ("latest", "all"):
            raise EMConfigError(
                f"keep_optimizer_state={self.keep_optimizer_state!r}: use 'latest' (older checkpoints keep their "
                "weights only) or 'all' (every checkpoint whole)."
            )
        if self.objective not in OBJECTIVES:
            raise EMConfigError(
                f"objective='{self.objective}': use 'entropy_loss' (EM-FT), 'neg_entropy_reward' (EM-RL) or 'grpo' "
                "(GRPO on the reward functions passed)."
            )
        self._refuse_fields_of_other_objectives()
        if self.rollout_dtype not in (None, "float32", "bfloat16"):
            raise EMConfigError(
                f"rollout_dtype='{self.rollout_dtype}': use 'bfloat16', 'float32' or None (the model's)."
            )
        if self.rollout_dtype is not None and not self.cpu_fast_rollouts:
            raise EMConfigError(
                f"rollout_dtype='{self.rollout_dtype}' needs cpu_fast_rollouts=True: the packed rollout weights are "
                "what carry that precision."
            )
        if self.rollout_dtype is not None and self.use_vllm:
            raise EMConfigError(
                f"rollout_dtype='{self.rollout_dtype}' sets the precision of CPU HF rollouts; vLLM has its own "
                "(TRL's vllm_model_impl / the engine's dtype). Drop one."
            )
        if self.vllm_enforce_eager and not (self.use_vllm and self.vllm_mode == "colocate"):
            raise EMConfigError(
                "vllm_enforce_eager=True sets up the colocated vLLM engine and would have no effect "
                + ("in server mode: start the server with `trl vllm-serve --enforce_eager`." if self.use_vllm
                   else "without use_vllm=True (vllm_mode='colocate').")
            )  # fmt: skip
        if self.em_reward not in ("trajectory", "token", "self_certainty"):
            raise EMConfigError(f"em_reward='{self.em_reward}': use 'trajectory', 'token' or 'self_certainty'.")
        if self.em_reward_reduction not in ("mean", "sum"):
            raise EMConfigError(f"em_reward_reduction='{self.em_reward_reduction}': use 'mean' or 'sum'.")
        if self.em_advantage not in ("grpo", "rloo", *SIGNED_REINFORCE):
            raise EMConfigError(
                f"em_advantage='{self.em_advantage}': use 'grpo', 'rloo', 'psr', 'nsr' or 'w_reinforce'."
            )
        if self.em_advantage in SIGNED_REINFORCE:
            if self.objective != "grpo":
                raise EMConfigError(
                    f"em_advantage='{self.em_advantage}' reinforces responses by a 0/1 verifiable reward (gold "
                    f"labels): use objective='grpo' with reward_funcs such as 'accuracy', not '{self.objective}'."
                )
            if self.scale_rewards != "group" or self.multi_objective_aggregation != "sum_then_normalize":
                raise EMConfigError(
                    f"em_advantage='{self.em_advantage}' uses the reward itself as the advantage (no baseline, no "
                    "scaling): leave scale_rewards and multi_objective_aggregation at their defaults."
                )
        if self.positive_advantage_weight != 0.1 and self.em_advantage != "w_reinforce":
            raise EMConfigError(
                f"positive_advantage_weight={self.positive_advantage_weight} is W-REINFORCE's lambda and has no "
                f"effect with em_advantage='{self.em_advantage}'; unset it or set em_advantage='w_reinforce'."
            )
        if self.cov_regularization not in (None, "clip_cov"):
            raise EMConfigError(f"cov_regularization='{self.cov_regularization}': use 'clip_cov' or leave it unset.")
        clip_cov = {"clip_cov_ratio": 0.0002, "clip_cov_lower": 1.0, "clip_cov_upper": 5.0}
        changed = [name for name, default in clip_cov.items() if getattr(self, name) != default]
        if changed and self.cov_regularization != "clip_cov":
            raise EMConfigError(
                f"{', '.join(changed)} tune Clip-Cov and have no effect without cov_regularization='clip_cov'."
            )
        if self.cov_regularization is not None and self.objective == "entropy_loss":
            raise EMConfigError(
                "cov_regularization='clip_cov' changes the GRPO loss; objective='entropy_loss' (EM-FT) has none. Use "
                "objective='grpo' or 'neg_entropy_reward', or unset it."
            )
        if not 0 < self.clip_cov_ratio <= 1 or self.clip_cov_lower >= self.clip_cov_upper:
            raise EMConfigError(
                f"clip_cov_ratio={self.clip_cov_ratio}, clip_cov_lower={self.clip_cov_lower}, clip_cov_upper="
                f"{self.clip_cov_upper}: the ratio must be in (0, 1] and lower < upper (the paper: 2e-4, 1, 5)."
            )
        if self.positive_advantage_weight < 0:
            raise EMConfigError(
                f"positive_advantage_weight={self.positive_advantage_weight}: W-REINFORCE's lambda must be >= 0 "
                "(0.1 recommended)."
            )
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
        if (
            self.objective != "entropy_loss"
            and self.entropy_temperature is not None
            and self.entropy_temperature != self.temperature
        ):
            # One forward gives EM-RL both the policy log-probs and the entropy reward; a second temperature there
            # would take GRPO's log-probs at a temperature the samples were not drawn at.
            raise EMConfigError(
                f"entropy_temperature={self.entropy_temperature} with objective='{self.objective}': GRPO's policy "
                f"log-probs must come from the sampling temperature ({self.temperature}); unset entropy_temperature "
                "(it applies to EM-FT's loss)."
            )
        if self.temperature <= 0:
            raise EMConfigError(
                f"temperature={self.temperature}: EM samples responses, so the temperature must be > 0 (paper: 0.5)."
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise EMConfigError(f"max_steps={self.max_steps}: set a positive number of optimizer steps (paper: 10).")

    def _refuse_fields_of_other_objectives(self) -> None:
        """An EM-RL setting under EM-FT or plain GRPO would be parsed and dropped: refuse it in one line."""
        if self.em_reward == "rent":
            self.em_reward = "token"  # RENT's reward is EM-RL's token reward: one name for one computation
        applies = {
            "em_reward": ("token", ("neg_entropy_reward",)),
            "em_reward_reduction": ("mean", ("neg_entropy_reward",)),
            "em_reward_weight": (1.0, ("neg_entropy_reward",)),
            "em_advantage": ("grpo", ("neg_entropy_reward", "grpo")),
        }
        for name, (default, objectives) in applies.items():
            value = getattr(self, name)
            if self.objective not in objectives and value != default:
                raise EMConfigError(
                    f"{name}={value!r} has no effect with objective='{self.objective}': it applies to "
                    f"objective={' or '.join(repr(o) for o in objectives)}. Unset it or change the objective."
                )

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
