"""Reading rows from where users keep them: a local jsonl/parquet/csv file or directory, or a Hub dataset id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the problem and the fix."""


def read_source(source: str, split: str = "train") -> Dataset:
    """A dataset from a local file (by suffix), a local dataset directory, or a Hub id (``split`` of it)."""
    path = Path(source).expanduser()
    if path.is_file():
        fmt = LOCAL_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DatasetError(
                f"Cannot read {path}: unknown file type '{path.suffix}'. Use one of {', '.join(LOCAL_FORMATS)}."
            )
        if path.stat().st_size == 0:
            raise DatasetError(f"Dataset file {path} is empty: EM needs at least one prompt.")
        try:
            return load_dataset(fmt, data_files=str(path), split="train")
        except Exception as error:  # pyarrow and pandas raise many types for a malformed file
            raise DatasetError(
                f"Could not read {path} as {fmt}: {error}. Check that the file is valid {fmt}."
            ) from error
    if path.is_dir():
        return load_dataset(str(path), split=split)
    if source.startswith((".", "/", "~")) or source.endswith(tuple(LOCAL_FORMATS)):
        raise DatasetError(f"Dataset file not found: {path}. Check the path.")
    try:
        return load_dataset(source, split=split)
    except Exception as error:  # the Hub raises many types; the user needs the id and the reason
        raise DatasetError(
            f"Could not load dataset '{source}' (split '{split}') from the Hugging Face Hub: {error}. "
            "Pass a local .jsonl/.parquet/.csv file instead, or check the id, the split and your connection."
        ) from error


def load_pool(source: str, split: str = "train", limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a problem pool (for selection, dev sets and GRPO) from a Hub id or a local jsonl/parquet/csv file."""
    rows = list(read_source(source, split))
    if not rows:
        raise DatasetError(f"Pool '{source}' is empty.")
    return rows[:limit] if limit is not None else rows
