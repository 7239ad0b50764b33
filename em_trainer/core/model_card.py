"""Model cards for EM checkpoints: what was trained, on what, with which settings, citing both EM papers."""

from __future__ import annotations

import platform
import textwrap
from importlib import metadata, resources
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

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
BOTH_CITATIONS = ONE_SHOT_EM_CITATION + "\n\n" + UNREASONABLE_EM_CITATION

EM_FT_DESCRIPTION = (
    "Entropy minimization (One-shot EM, Gao et al. 2025): responses are sampled from the model itself for unlabeled "
    "prompts, and the loss is the mean token entropy `H_t = -sum_v p(v) log p(v)` of `p = softmax(logits / T)` over "
    "every generated position, with gradients straight through the entropy. No labels, reward model or reference "
    "model are used."
)
BASE_TAGS = ["em-trainer", "entropy-minimization", "trl", "text-generation"]


def _versions() -> dict[str, str]:
    versions = {"Python": platform.python_version()}
    for name in ("em-trainer", "trl", "transformers", "torch", "datasets", "accelerate", "peft"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_model_card(
    *,
    model_name: str,
    model_id: str,
    base_model: str | None,
    dataset_name: str | None,
    hyperparameters: dict[str, Any],
    results: dict[str, Any] | None = None,
    method_description: str = EM_FT_DESCRIPTION,
    tags: list[str] | None = None,
    citation: str,
) -> ModelCard:
    """A model card (YAML metadata + markdown) for a checkpoint trained with em-trainer."""
    all_tags = list(dict.fromkeys([*BASE_TAGS, *(tags or [])]))
    card_data = ModelCardData(
        base_model=base_model,
        datasets=[dataset_name] if dataset_name and "/" in dataset_name else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        model_name=model_name,
        tags=all_tags,
    )
    template = resources.files("em_trainer").joinpath("resources/model_card.md").read_text(encoding="utf-8")
    hyper = {"training data": dataset_name or "unknown", **hyperparameters}
    return ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=model_name,
        model_id=model_id,
        base_model=base_model,
        method_description=method_description,
        hyperparameters={k: v for k, v in hyper.items() if v is not None},
        results={k: (round(v, 4) if isinstance(v, float) else v) for k, v in (results or {}).items()},
        versions=_versions(),
        citation=citation,
    )
