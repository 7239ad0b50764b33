"""What identifies a result: fingerprints of models, settings and data, so that nothing is reused across settings.

A result (an eval record, a select ranking, a sweep run, a study measurement) is stored under a fingerprint of
everything that determines it. Two runs share stored results only when their fingerprints are equal; any changed
input (a weight, a generation setting, the system prompt, the benchmark file) gives a new fingerprint and a fresh
computation. Folder names stay readable: a name plus the first characters of the fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .files import atomic_write_json

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_CHUNK = 1 << 22


def fingerprint(payload: Any, length: int = 16) -> str:
    """A stable hex digest of a JSON-able payload (keys sorted; non-JSON values through ``str``)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def readable_name(name: str, digest: str, length: int = 8) -> str:
    """``name-<first characters of digest>``: a folder name a person can read and that settings cannot share."""
    clean = re.sub(r"[^\w.\-=]+", "--", name).strip("-") or "x"
    return f"{clean}-{digest[:length]}"


def _hash_cache_path() -> Path:
    from .models import cache_dir

    return cache_dir() / "weight_hashes.json"


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes, cached by absolute path, size and modification time (a rewrite changes the
    time, so a stale digest is never used; a 15 GB checkpoint is read once)."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    cache_file = _hash_cache_path()
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    cache[key] = digest.hexdigest()
    try:
        atomic_write_json(cache_file, cache)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return cache[key]


# The files besides the weights that change what a model folder computes: its configs, and its tokenizer with the
# chat template (a template in its own file since transformers 4.43, else inside tokenizer_config.json).
IDENTITY_FILES = (
    "config.json", "adapter_config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json",
    "tokenizer.model", "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json",
)  # fmt: skip


def directory_identity(path: str | os.PathLike) -> dict[str, Any]:
    """A local model folder by content: digests of every weight file, of its configs and of its tokenizer and chat
    template. Not its path: a copy of a folder is the same model, a folder rewritten in place is another."""
    folder = Path(path).resolve()
    weights = {
        p.name: file_digest(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) and not p.name.startswith(("optimizer", "scheduler"))
    }
    configs = {name: file_digest(folder / name) for name in IDENTITY_FILES if (folder / name).is_file()}
    return {"weights": weights, "configs": configs}


@functools.cache
def hub_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit a Hub revision points to: the revision itself when it is a commit hash; else the snapshot that the
    local cache recorded for it (``refs/<revision>``, what offline loading uses); else the Hub's answer when online;
    None when none of these knows. Asked once per process: every identity of a run names the same commit, and a
    run that computes several identities asks the Hub once."""
    import re

    revision = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    try:
        from huggingface_hub import constants

        ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
        if ref.is_file():
            return ref.read_text(encoding="utf-8").strip() or None
        if constants.HF_HUB_OFFLINE:
            return None
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision, timeout=10).sha
    except Exception:  # noqa: BLE001 - no cache, no network, no such repo: the commit is unknown, said as None
        return None


def model_identity(reference: str, revision: str | None = None) -> dict[str, Any]:
    """The identity of a model reference: a local folder by content (see :func:`directory_identity`); a Hub id by
    id, revision and the commit it points to (:func:`hub_commit`: results of two commits of ``main`` are never
    mixed). A LoRA adapter folder's identity includes its base model's."""
    from .models import adapter_base, resolve_model

    resolved = resolve_model(reference)
    if os.path.isdir(resolved):
        identity = directory_identity(resolved)
        base = adapter_base(resolved)
        if base is not None:
            identity["base_model"] = model_identity(base)
        return identity
    return {"hub_id": resolved, "revision": revision or "main", "commit": hub_commit(resolved, revision)}


def object_identity(model: Any) -> dict[str, Any]:
    """A model object's identity: the digest of its parameters' bytes (for models passed in memory)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        # reshape(-1): a 0-dim tensor (a scalar buffer) cannot be viewed as bytes; the bytes are the same.
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"object": type(model).__name__, "parameters": digest.hexdigest()}


def text_digest(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the entries that differ between two identities, for the line that says why a result is
    computed afresh."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changed += changed_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {_short(a)} -> {_short(b)}")
    return changed


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


# Fields that name where a run goes or how it reports, not what it computes: left out of its identity. The seed is
# left out too because a sweep names each seed's folder itself (``seed-N``); a folder's marker adds it back.
NOT_SETTINGS = ("output_dir", "run_name", "seed", "report_to", "disable_tqdm", "resume_from_checkpoint", "check",
                "overwrite_output_dir")  # fmt: skip
NOT_SETTINGS_PREFIXES = ("hub_", "push_to_hub", "logging_", "log_", "save_", "report_")


def settings_identity(values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a config's fields that determine what a run computes (see ``NOT_SETTINGS``)."""
    return {k: v for k, v in values.items() if k not in NOT_SETTINGS and not k.startswith(NOT_SETTINGS_PREFIXES)}
