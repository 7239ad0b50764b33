"""Faster HF decoding on a CPU: a KV cache that grows in place, and matrix products on weights packed once.

Measured on SmolLM2-135M, 8 rows, fp32, 2 cores (benchmarks/decoding_speed.py, docs/performance.md): a token step
of HF ``generate`` spends about 44 ms in ``aten::mm`` (MKL re-packs every weight on every call, so the 540 MB of
weights stream at about 12 GB/s against the 74 GB/s the machine reads) and about 11 ms in ``aten::cat``
(``DynamicCache`` copies every layer's whole cache to append one position). Two changes, neither touching how
``generate`` samples:

- :class:`GrowingCache`: a ``DynamicCache`` whose layers write each new position into a buffer with room reserved
  ahead and hand attention a view of the filled part. The keys and values attention sees are the same numbers in
  the same positions, so the outputs are equal bit for bit.
- :class:`PackedLinears`: each ``nn.Linear``'s weight reordered once into oneDNN's blocked layout
  (``torch.ops.mkldnn._reorder_linear_weight``, what inductor's CPU freezing does), and the no-grad forward computed
  by ``torch.ops.mkldnn._linear_pointwise``. Same products, another summation order: logits agree to float
  rounding (about 1e-6 relative), so sampled tokens are the same except where a draw falls within that distance
  of a boundary (tested on SmolLM2, greedy and sampled). Optionally the packed copy is bf16 (``dtype``): then
  every matrix product of the rollout runs in bf16, from weights rounded to bf16 at each packing, while norms,
  attention and sampling stay in the model's precision; the samples come from a slightly different distribution.

Everything here applies only to no-grad forwards on CPU tensors; a forward with gradients goes the usual way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = [
    "GrowingCache",
    "GrowingLayer",
    "PackedLinears",
    "bf16_matmul_supported",
    "cpu_decoding_unavailable",
    "default_matmul_kernel",
    "matmul_kernel",
]

_PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


def bf16_matmul_supported() -> bool:
    """Whether oneDNN runs bf16 matrix products natively here (AVX512-BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_decoding_unavailable(model: Any, dtype: torch.dtype | None = None) -> str | None:
    """Why packed matrix products cannot serve this model's decoding (None: they can)."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn)"
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cpu":
        return "the model is not on the CPU"
    if parameter.dtype not in _PACKABLE_DTYPES:
        return f"the model's dtype is {parameter.dtype} (packed products need float32 or bfloat16)"
    if dtype is not None and dtype not in _PACKABLE_DTYPES:
        return f"rollout dtype {dtype} is not float32 or bfloat16"
    if torch.bfloat16 in (dtype, parameter.dtype) and not bf16_matmul_supported():
        return "this CPU has no native bf16 matrix products (AVX512-BF16 or AMX)"
    return None


def matmul_kernel(model: Any, enabled: bool, dtype: torch.dtype | None = None) -> str:
    """The name of the kernel that will compute the decoding's matrix products (recorded in results' identity)."""
    if not enabled or cpu_decoding_unavailable(model, dtype) is not None:
        return "aten"
    parameter_dtype = next(model.parameters()).dtype
    return f"onednn-packed-{str(dtype or parameter_dtype).removeprefix('torch.')}"


def default_matmul_kernel() -> str:
    """The kernel an fp32 ``HFGenerator`` with its defaults uses on this machine, known before any model loads (for
    the identity of results measured later): packed on a CPU with oneDNN, ``"aten"`` where a GPU takes the model."""
    if torch.cuda.is_available() or not torch.backends.mkldnn.is_available():
        return "aten"
    return "onednn-packed-float32"


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends in place into a buffer grown by doubling, instead of concatenating."""

    def __init__(self, reserve: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reserve = reserve
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def _adopt(self, extra: int) -> None:
        """Copy the current keys/values into buffers with room for ``extra`` more positions (and the reserve)."""
        length = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        capacity = max(length + extra, self.reserve, 2 * length)
        for name in ("keys", "values"):
            current = getattr(self, name)
            shape = (*self._template.shape[:2], capacity, self._template.shape[-1])
            buffer = torch.empty(shape, dtype=self._template.dtype, device=self._template.device)
            if length:
                buffer[:, :, :length].copy_(current)
            setattr(self, f"_{name[:-1]}_buffer", buffer)
            setattr(self, name, buffer[:, :, :length])

    def _views_are_ours(self) -> bool:
        """Whether keys/values are still views of our buffers (reorder, crop or select replace them)."""
        buffer = self._key_buffer
        return (
            buffer is not None
            and self.keys.dim() == 4
            and self.keys.data_ptr() == buffer.data_ptr()
            and self.keys.stride() == buffer.stride()
            and self.keys.shape[:2] == buffer.shape[:2]
            and self.values.data_ptr() == self._value_buffer.data_ptr()
            and self.values.shape == self.keys.shape
        )

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._template = key_states
        new = key_states.shape[-2]
        if not self._views_are_ours() or self.keys.shape[-2] + new > self._key_buffer.shape[-2]:
            self._adopt(new)
        start = self.keys.shape[-2]
        end = start + new
        self._key_buffer[:, :, start:end].copy_(key_states)
        self._value_buffer[:, :, start:end].copy_(value_states)
        self.keys = self._key_buffer[:, :, :end]
        self.values = self._value_buffer[:, :, :end]
        return self.keys, self.values


class GrowingCache(DynamicCache):
    """``DynamicCache(config=...)`` whose full-attention layers are :class:`GrowingLayer` with ``reserve`` positions.

    Sliding-window and other special layers keep their own class. ``reserve`` is the total length the generation
    will reach (prompt plus new tokens): the buffers are allocated once at that size.
    """

    def __init__(self, config: Any, reserve: int = 0) -> None:
        super().__init__(config=config)
        self.layers = [
            GrowingLayer(reserve=reserve) if type(layer) is DynamicLayer else layer for layer in self.layers
        ]


class PackedLinears:
    """oneDNN-packed copies of a model's ``nn.Linear`` weights, reused while a weight is unchanged.

    ``with packs.applied(model, rows):`` routes every plain ``nn.Linear`` on the CPU through its packed weight for
    no-grad forwards; ``rows`` is the number of rows a decoding step multiplies (oneDNN picks the layout for it).
    A weight is packed again only when it changed (its storage or its version counter: an optimizer step bumps
    it), so an evaluator keeps its packs across batches and a trainer repacks once per rollout. Holding packs costs
    a copy of the weights (half of it in bf16).
    """

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype
        self._packs: dict[int, tuple[tuple, torch.Tensor, torch.Tensor | None]] = {}

    def _packed(self, module: torch.nn.Linear, rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = module.weight, module.bias
        dtype = self.dtype or weight.dtype
        key = (weight.data_ptr(), weight._version, None if bias is None else (bias.data_ptr(), bias._version), dtype)
        held = self._packs.get(id(module))
        if held is None or held[0] != key:
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype), rows)
                packed_bias = None if bias is None else bias.detach().to(dtype)
            held = (key, packed, packed_bias)
            self._packs[id(module)] = held
        return held[1], held[2]

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module, rows: int) -> Iterator[int]:
        """Route the model's linears through packed weights; yields how many were routed."""
        if cpu_decoding_unavailable(model, self.dtype) is not None:
            yield 0
            return
        routed: list[tuple[torch.nn.Module, Any]] = []
        try:
            for module in model.modules():
                if type(module) is not torch.nn.Linear or module.weight.device.type != "cpu":
                    continue
                if module.weight.dtype not in _PACKABLE_DTYPES:
                    continue
                packed, bias = self._packed(module, rows)
                routed.append((module, vars(module).get("forward")))
                module.forward = _packed_forward(module.forward, packed, bias)
            yield len(routed)
        finally:
            for module, own_forward in routed:
                if own_forward is None:
                    del module.forward
                else:
                    module.forward = own_forward

    def clear(self) -> None:
        self._packs.clear()


def _packed_forward(plain: Any, packed: torch.Tensor, bias: torch.Tensor | None) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype not in _PACKABLE_DTYPES:
            return plain(x)
        out = torch.ops.mkldnn._linear_pointwise(x.to(packed.dtype), packed, bias, "none", [], "")
        return out.to(x.dtype)

    return forward
