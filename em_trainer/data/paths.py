"""Paths written in a YAML config: relative ones resolve against the config file's folder, then the current one."""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".gguf", ".txt", ".yaml", ".yml")


class ConfigPathError(FileNotFoundError):
    """A relative path in a config found neither beside the config nor in the current directory."""


def looks_local(value: str) -> bool:
    """Whether a string is meant as a local path (not a Hub id such as ``org/name`` or an alias)."""
    return value.startswith((".", "/", "~")) or value.endswith(LOCAL_SUFFIXES)


def resolve_config_path(value: str | None, config_file: str | os.PathLike | None, field: str) -> str | None:
    """``value`` made usable from any working directory.

    An absolute path, a Hub id or an alias is returned unchanged. A relative path is looked up beside the config file
    first, then in the current directory; if it is in neither and looks like a local path, the error names both.
    """
    if value is None or config_file is None or os.path.isabs(os.path.expanduser(value)):
        return value
    beside = (Path(config_file).resolve().parent / value).resolve()
    here = Path.cwd() / value
    if beside.exists():
        return str(beside)
    if here.exists():
        return str(here.resolve())
    if looks_local(value):
        raise ConfigPathError(
            f"{field}: '{value}' is not beside the config ({beside}) nor in the current directory ({here.resolve()}). "
            "Fix the path: relative paths in a config are read from the config file's folder."
        )
    return value


def split_config_equals(argv: list[str]) -> list[str]:
    """``--config=PATH`` as ``--config PATH``: TrlParser reads only the second spelling, and read the first as a flag
    it does not know."""
    out: list[str] = []
    for arg in argv:
        out += ["--config", arg.split("=", 1)[1]] if arg.startswith("--config=") else [arg]
    return out


def config_file_from_argv(argv: list[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config PATH`` or ``--config=PATH``), before any parsing."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None
