"""Weight sync into a colocated vLLM engine on vLLM's CPU build, where TRL's sync alone does not reach the engine.

On a CPU, vLLM repacks every linear layer's weight for oneDNN (or AMX) once the checkpoint is loaded
(``UnquantizedLinearMethod.process_weights_after_loading`` -> ``dispatch_cpu_unquantized_gemm(remove_weight=True)``):
the packed copy is what the engine multiplies with, and the layer's ``weight`` is replaced by an empty tensor without
its ``weight_loader``. TRL's colocate sync (``model.load_weights`` with the trained tensors) then fails with
``AttributeError: 'Parameter' object has no attribute 'weight_loader'``; and the LM head, which keeps its weight,
would take the new values while the engine keeps projecting with the packed copy of the old ones.

Two small interventions, both in the training process (colocate mode runs the engine in-process):

1. while TRL builds the engine, linear layers keep their weights (``remove_weight=False``), so ``load_weights`` works;
2. after each of TRL's syncs, every layer that vLLM packed is repacked from its (now updated) weight.

Nothing happens on a GPU or in server mode, where vLLM does not repack.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any


def vllm_runs_on_cpu() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


@contextlib.contextmanager
def keep_linear_weights() -> Iterator[None]:
    """While active, vLLM's CPU weight packing keeps each layer's weight (and its loader) next to the packed copy."""
    from vllm.model_executor.layers import utils as vllm_layer_utils

    original = vllm_layer_utils.dispatch_cpu_unquantized_gemm

    def dispatch_keeping_weight(layer: Any, remove_weight: bool) -> None:
        original(layer, remove_weight=False)

    vllm_layer_utils.dispatch_cpu_unquantized_gemm = dispatch_keeping_weight
    try:
        yield
    finally:
        vllm_layer_utils.dispatch_cpu_unquantized_gemm = original


def repack_cpu_layers(model: Any) -> int:
    """Rebuild vLLM's packed CPU GEMM copy of every packed layer from its current weight; returns how many."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    count = 0
    for module in model.modules():
        if hasattr(module, "cpu_linear") and getattr(module, "weight", None) is not None:
            if module.weight.numel() == 0:
                raise RuntimeError(
                    f"vLLM dropped the weight of {type(module).__name__} after packing it, so trained weights cannot "
                    "reach the engine. Build the trainer's engine inside em_trainer's keep_linear_weights()."
                )
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
            count += 1
    return count


def engine_model(llm: Any) -> Any:
    """The ``nn.Module`` a colocated ``vllm.LLM`` runs (where TRL's colocate sync loads weights)."""
    return llm.llm_engine.model_executor.driver_worker.model_runner.model


def repack_after_sync(vllm_generation: Any) -> Callable[[], None]:
    """``vllm_generation.sync_weights`` followed by a repack of the engine's packed layers."""
    sync = vllm_generation.sync_weights

    def sync_and_repack() -> None:
        sync()
        repack_cpu_layers(engine_model(vllm_generation.llm))

    return sync_and_repack
