"""EM-INF inside vLLM: a V1-engine logits processor, importable by its qualified name.

vLLM runs its engine core in another process and sends it the processor *class*, so the class must live at module
level (``em_trainer.decoding.vllm_em_inf.EMInfLogitsProcessor``). Settings travel with each request, in
``SamplingParams(extra_args={"em_inf": {...}})``: ``True`` for the defaults, or a dict of ``threshold``,
``kl_weight``, ``lr``, ``n_steps``. Requests without the key are left alone. This module imports vLLM, so it is only
imported where vLLM is installed.

vLLM applies processors that are not argmax-invariant (this one) to the float32 logits before temperature, top-k and
top-p, the same place as a transformers ``LogitsProcessor`` in ``generate``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from .em_inf import EMInfSettings, entropy_minimize_logits

REQUEST_KEY = "em_inf"
QUALIFIED_NAME = f"{__name__}:EMInfLogitsProcessor"


def request_settings(value: Any) -> EMInfSettings | None:
    """The EM-INF settings a request's ``extra_args["em_inf"]`` asks for (None: EM-INF off for this request)."""
    if value is None or value is False:
        return None
    if value is True:
        return EMInfSettings()
    if isinstance(value, dict):
        unknown = set(value) - set(asdict(EMInfSettings()))
        if unknown:
            raise ValueError(
                f"extra_args['em_inf'] has unknown key(s) {sorted(unknown)}; use {list(asdict(EMInfSettings()))}."
            )
        return EMInfSettings(**value)
    raise ValueError("extra_args['em_inf'] must be true/false or a dict of EM-INF settings.")


def extra_args(settings: EMInfSettings) -> dict[str, Any]:
    """The ``SamplingParams.extra_args`` that turn EM-INF on for a request, with ``settings``."""
    return {REQUEST_KEY: {k: v for k, v in asdict(settings).items() if k != "temperature"}}


class EMInfLogitsProcessor(LogitsProcessor):
    """Per request (by batch row), a few Adam steps on the logits that lower their entropy; see ``em_inf``."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.rows: dict[int, EMInfSettings] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        request_settings((getattr(sampling_params, "extra_args", None) or {}).get(REQUEST_KEY))

    def is_argmax_invariant(self) -> bool:
        return False  # sharpening under the KL anchor can change the most likely token

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, *_ in batch_update.added:
            settings = request_settings((getattr(params, "extra_args", None) or {}).get(REQUEST_KEY))
            if settings is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = settings
        for source, target, direction in batch_update.moved:
            moving, replaced = self.rows.pop(source, None), self.rows.pop(target, None)
            if moving is not None:
                self.rows[target] = moving
            if replaced is not None and direction == MoveDirectionality.SWAP:
                self.rows[source] = replaced

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        groups: dict[EMInfSettings, list[int]] = {}
        for index, settings in self.rows.items():
            if index < logits.shape[0]:
                groups.setdefault(settings, []).append(index)
        for s, indices in groups.items():
            # Rows are optimised independently (each with its own Adam state), so a group is exact row by row.
            rows = torch.tensor(indices, device=logits.device)
            logits[rows] = entropy_minimize_logits(logits[rows], s.threshold, s.kl_weight, s.lr, s.n_steps)[0]
        return logits
