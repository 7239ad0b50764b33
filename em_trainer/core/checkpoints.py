"""Which checkpoint a resumed run starts from: the newest one that was written to the end.

``Trainer._save_checkpoint`` writes a checkpoint file by file and ``trainer_state.json`` last, straight into
``checkpoint-N``, so a job killed while saving leaves a folder that looks like a checkpoint but cannot be resumed
from (missing optimizer state, or a truncated ``trainer_state.json``). transformers' ``get_last_checkpoint`` would
pick it and the resume would fail; here it is passed over, and the step it held is trained again.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` was saved to the end: its ``trainer_state.json``, the last file written, parses."""
    try:
        json.loads((Path(folder) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(folder: str | os.PathLike, log: bool = True) -> str | None:
    """The newest complete ``checkpoint-N`` in ``folder`` (None if there is none); incomplete newer ones are named."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted(
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if path.is_dir() and (match := _CHECKPOINT.match(path.name))
    )
    for _, path in reversed(found):
        if is_complete_checkpoint(path):
            return str(path)
        if log:
            print(
                f"[em-trainer] {path} was cut off while saving (no readable trainer_state.json); skipping it",
                flush=True,
            )
    return None
