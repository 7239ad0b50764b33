"""Shared-prompt training forward: each distinct prompt of a micro-batch goes through the model once.

In one-shot EM every response of a step continues the same prompt, yet the plain forward feeds ``prompt +
completion`` for each response. Here the prompt (all but its last token) is forwarded once per distinct prompt with
the KV cache on and gradients kept; the cache is expanded to the rows that share it (``index_select``, whose backward
sums the rows' gradients, which is exactly what the G copies of the plain path contribute); then the rows run
``[last prompt token] + completion`` against it through TRL's fused LM head, unchanged. The last prompt token is fed
again so that the position that predicts the first generated token goes through the same fused head as the others.

Positions, masks and padding are those of the plain path: the prompts keep their left padding and the completion pass
continues at cache position ``P - 1``, so every attention score is the plain path's.

Gradient checkpointing: the prompt pass runs without it (transformers drops a KV cache that a checkpointed layer
would write twice; the pass is one row per distinct prompt). The completion pass keeps it: the prefix cache is made
read-only (each layer's ``update`` returns prefix + new keys without storing them), so a recomputed layer reads the
same states, which is the case transformers allows with ``_can_checkpoint_with_cache``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from accelerate.utils import is_peft_model
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer


class ReadOnlyPrefixCache(DynamicCache):
    """A KV cache of the shared prefix that each layer reads (prefix + its new states) and never writes."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


@contextlib.contextmanager
def checkpoint_with_read_only_cache(model: Any) -> Iterator[None]:
    """Let checkpointed layers keep a cache they only read (transformers drops it otherwise)."""
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache  # back to the class attribute


def distinct_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row index of the first occurrence of each distinct (prompt, mask) row, and each row's distinct-prompt index."""
    rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((unique.size(0),), rows.size(0), dtype=torch.long, device=rows.device)
    first = first.scatter_reduce(0, inverse, torch.arange(rows.size(0), device=rows.device), reduce="amin")
    return first, inverse


def repeated_rows(ids: torch.Tensor) -> bool:
    """Whether some row of ``ids`` occurs more than once (then a shared-prompt pass saves work)."""
    return torch.unique(ids, dim=0).size(0) < ids.size(0)


def backbone(model: Any) -> Any:
    """The transformer body (no LM head) of a causal LM, through PEFT and DDP wrappers; LoRA layers stay in it."""
    model = getattr(model, "module", model)
    if is_peft_model(model):
        model = model.get_base_model()
    return model.base_model


def shared_prompt_logps_and_entropies(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    autocast: Callable[[], Any],
    without_checkpointing: Callable[[], Any] = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies of the completions, ``(batch, completion_len)``, as the plain path gives them.

    ``model`` carries TRL's fused LM head (at the entropy temperature). Rows are grouped by identical prompt rows.
    ``without_checkpointing`` is a context in which the model runs without gradient checkpointing (for the prompt).
    """
    first, inverse = distinct_prompts(prompt_ids, prompt_mask)
    with without_checkpointing(), autocast():
        prefix = backbone(model)(
            input_ids=prompt_ids[first, :-1], attention_mask=prompt_mask[first, :-1], use_cache=True
        )
    cache = prefix.past_key_values
    cache.reorder_cache(inverse)  # one copy of each distinct prompt's keys and values per row; backward sums them
    cache.__class__ = ReadOnlyPrefixCache
    input_ids = torch.cat([prompt_ids[:, -1:], completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    labels = input_ids.masked_fill(torch.cat([prompt_mask[:, -1:], completion_mask], dim=1) == 0, -100)
    labels[:, 0] = -100
    with checkpoint_with_read_only_cache(model), autocast():
        outputs = model(
            input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, labels=labels,
            fused_lm_head=True,
        )  # fmt: skip
    return outputs.log_probs, outputs.entropy


# Float32 agrees to ~1e-7 (loss) and ~3e-5 (gradient), so 1e-4 and 1e-3 leave room and nothing else.
FLOAT32_LOSS_TOLERANCE = 1e-4
FLOAT32_GRAD_TOLERANCE = 1e-3


def check_tolerances(compute_dtype: torch.dtype) -> tuple[float, float]:
    """The first-use check's relative (loss, gradient) tolerances for a forward computed in ``compute_dtype``.

    Two bf16 computations of the same loss in a different order part by bf16 rounding, not by a bug: on SmolLM2-135M
    (CPU) the shared and plain paths parted by 1.1e-2 (loss) and 9.2e-2 (gradient), less than the plain bf16 path
    parts from float32 (0.13); on an H200 (Qwen2.5-1.5B shape, bf16) by 1.4e-6 and 1.1e-2. A float32 tolerance
    (1e-3) switched the shared path off on every bf16 run. Real errors stay far above: a prompt attached to the wrong
    rows or one prompt token masked part the gradients by 0.9-1.1 in bf16 as in float32. Half precision therefore
    gets ``4 eps`` (loss) and ``32 eps`` (gradient): 3.1e-2 and 0.25 for bf16, 3.9e-3 and 3.1e-2 for fp16.
    """
    eps = torch.finfo(compute_dtype).eps if compute_dtype.is_floating_point else 0.0
    return max(FLOAT32_LOSS_TOLERANCE, 4 * eps), max(FLOAT32_GRAD_TOLERANCE, 32 * eps)


def gradient_sketch(
    grads: tuple[torch.Tensor | None, ...], projections: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient's norm and its projections on fixed random sign directions (seeded per tensor), summed in float64.

    Each tensor is seen as a matrix ``G`` (rows x the rest) and projected on rank-one sign patterns ``r c^T`` with
    independent Rademacher vectors ``r`` and ``c``: ``r^T G c``. Since ``E[r_i r_k c_j c_l] = [i=k][j=l]``, for two
    gradients sketched alike ``mean((proj_a - proj_b) ** 2)`` is an unbiased estimate of ``||a - b||^2``, as with a
    full sign vector, but it draws rows + columns random signs instead of one per entry and costs one matrix-vector
    product per tensor (SmolLM2-135M: about a second for two sketches of 16 projections, against about 30 s for 4
    full-length sign vectors, which made the first step of every EM-FT run that much slower).
    """
    norm_sq = torch.zeros((), dtype=torch.float64)
    sketch = torch.zeros(projections, dtype=torch.float64)
    for index, grad in enumerate(grads):
        if grad is None:
            continue
        # The product runs where the gradient is (a 1.5B-parameter model's gradient is 6 GB in float32, slow to
        # copy to the CPU and to multiply there); only rows x projections numbers come back.
        matrix = grad.detach().float()
        matrix = matrix.reshape(matrix.shape[0], -1) if matrix.dim() >= 2 else matrix.reshape(1, -1)
        wide = torch.float32 if matrix.device.type == "mps" else torch.float64  # MPS has no float64
        norm_sq += torch.linalg.vector_norm(matrix, dtype=wide).double().cpu().pow(2)
        generator = torch.Generator().manual_seed(index)  # CPU draws: the same signs on every device
        rows = _signs((projections, matrix.shape[0]), generator)
        columns = _signs((matrix.shape[1], projections), generator).to(matrix.device)
        # float32 products: their rounding (~1e-7 of the norm) is far below the check's tolerance (1e-3).
        sketch += (rows.double() * (matrix @ columns).double().cpu().T).sum(dim=1)
    return norm_sq.sqrt(), sketch


def _signs(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).float().mul_(2).sub_(1)
