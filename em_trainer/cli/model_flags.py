"""TRL's ``ModelConfig`` flags of ``em-trainer train``, forwarded the way ``trl/scripts/grpo.py`` does, or refused.

Every field of ``ModelConfig`` is read here or by TRL's ``get_peft_config``: ``model_revision``, ``dtype`` and
``attn_implementation`` go to ``from_pretrained`` through ``model_init_kwargs``; ``load_in_4bit``/``load_in_8bit`` and
the ``bnb_4bit_*`` fields become TRL's ``get_quantization_config`` (QLoRA), passed to the trainer as
``quantization_config`` (TRL 1.16 places the quantized model itself); the LoRA fields become the PEFT config. A flag
that cannot take effect (4-bit on a machine without CUDA, LoRA settings without ``--use_peft``, a revision of a local
folder) stops the run with one line that says why.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from ..core.config import EMConfigError

QUANTIZATION_DETAILS = ("bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage")
LORA_DETAILS = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_target_parameters",
    "lora_modules_to_save",
    "lora_task_type",
    "use_rslora",
    "use_dora",
)


def _changed(model_args: Any, names: tuple[str, ...]) -> list[str]:
    from trl import ModelConfig

    defaults = ModelConfig()
    return [name for name in names if getattr(model_args, name) != getattr(defaults, name)]


def model_loading(model_args: Any, config: Any, model_ref: str | None, cuda: bool | None = None) -> Any:
    """Forward ``model_args`` into ``config.model_init_kwargs`` and return the quantization config (or ``None``),
    refusing what cannot take effect. ``cuda``: whether a CUDA device is usable (default: ask torch)."""
    from trl import get_quantization_config

    if model_args.model_name_or_path and model_ref and model_args.model_name_or_path != model_ref:
        raise EMConfigError(
            f"--model {model_ref} and --model_name_or_path {model_args.model_name_or_path}: two models; pass one."
        )
    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise EMConfigError("--load_in_4bit and --load_in_8bit: pick one quantization.")
    details = _changed(model_args, QUANTIZATION_DETAILS)
    if details and not model_args.load_in_4bit:
        raise EMConfigError(f"{', '.join('--' + d for d in details)} set without --load_in_4bit, which they tune.")
    lora = _changed(model_args, LORA_DETAILS)
    if lora and not model_args.use_peft:
        raise EMConfigError(f"{', '.join('--' + d for d in lora)} set without --use_peft true; LoRA is off.")
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        which = "--load_in_4bit" if model_args.load_in_4bit else "--load_in_8bit"
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        if not cuda:
            raise EMConfigError(
                f"{which}: bitsandbytes quantization runs on a CUDA GPU and this machine has none; drop {which} "
                "(on a CPU the model trains in full precision)."
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise EMConfigError(f"{which} needs bitsandbytes: pip install bitsandbytes")
        if not model_args.use_peft:
            raise EMConfigError(
                f"{which}: quantized weights cannot be trained directly; add --use_peft true (QLoRA trains LoRA "
                "adapters on top of them)."
            )
    if model_args.model_revision not in (None, "main") and model_ref and os.path.exists(os.path.expanduser(model_ref)):
        raise EMConfigError(
            f"--model_revision {model_args.model_revision}: {model_ref} is a local path; revisions select a commit "
            "of a Hub model."
        )
    kwargs: dict[str, Any] = {"revision": model_args.model_revision, "trust_remote_code": config.trust_remote_code}
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    # Explicit model_init_kwargs in the config win, as in TRL's scripts.
    config.model_init_kwargs = {**kwargs, **(config.model_init_kwargs or {})}
    return quantization


def tokenizer_kwargs(config: Any) -> dict[str, Any]:
    """What the tokenizer load shares with the model's: the revision and trust_remote_code."""
    init = config.model_init_kwargs or {}
    return {k: init[k] for k in ("revision", "trust_remote_code") if k in init}
