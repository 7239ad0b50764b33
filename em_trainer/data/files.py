"""Files that progress and reports live in, written atomically: a kill in the middle of a write leaves the old
version or the new one, never half of either."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2))


class OutputDirError(ValueError):
    """An output directory that cannot be written; the message names the field and the fix."""


def check_writable_dir(path: str | os.PathLike, field: str = "output_dir") -> None:
    """Fail now, not after training, if ``path`` is a file or cannot be written: the folder is created (the run
    would create it anyway) and a probe file written and removed, which also catches read-only mounts for root."""
    absolute = os.path.abspath(path)
    if os.path.exists(absolute) and not os.path.isdir(absolute):
        raise OutputDirError(f"{field}={path} is a file; pass a directory (it is created if missing).")
    try:
        os.makedirs(absolute, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-check.", dir=absolute)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputDirError(
            f"{field}={path}: cannot write there ({reason}); pass a directory you can write to."
        ) from None


class ConfigFileError(ValueError):
    """A config file that cannot be used: missing, a folder, not YAML, or not a mapping. The message says which."""


def read_yaml_mapping(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """A YAML file's top-level mapping (empty file: ``{}``), or one line that names the file and what is wrong."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise ConfigFileError(f"{what} {path} is a directory; pass a YAML file (e.g. {path}/config.yaml).")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(f"{what} {path} not found; check the path.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigFileError(f"{what} {path} cannot be read as text ({error}).") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        reason = getattr(error, "problem", None) or type(error).__name__
        raise ConfigFileError(f"{what} {path} is not valid YAML{line} ({reason}); fix the syntax.") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigFileError(
            f"{what} {path} holds a YAML {type(content).__name__}, not a mapping; write `key: value` lines."
        )
    return content


@contextmanager
def exclusive_lock(path: str | os.PathLike):
    """Hold an exclusive ``flock`` on ``path`` (created if missing) while the block runs; another process asking for
    it waits. The kernel drops the lock when the holder dies, so a killed process never leaves it taken."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
