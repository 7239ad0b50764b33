"""The one rule for reusing a folder of work: resume only work of the same settings, never mix.

A folder that holds work (training checkpoints, a phase's weights, a selection, records) carries a marker file with
the identity of the settings that produced it. Before new work goes into the folder, :func:`claim_folder` compares:

- no marker and nothing of ours in it: the work starts fresh, and the marker is written;
- the same identity: the work resumes;
- another identity (or work without a marker): refused in one line that names what differs and the two ways on
  (a new folder, or the explicit overwrite), unless the caller owns the folder's name (a study's run folder, a
  sweep's), in which case the old work is deleted and the new starts fresh, with a line saying so.

Train, the EM-then-GRPO recipe's phases, study runs, the study's prompt selection and sweep runs use it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .files import atomic_write_json
from .identity import changed_fields

MARKER = "run_identity.json"


class FolderOfOtherSettingsError(ValueError):
    """A folder holds work of other settings (or of unknown ones), and the caller may not replace it."""


def claim_folder(
    folder: str | Path,
    identity: Mapping[str, Any],
    *,
    work: Iterable[str] = ("checkpoint-*",),
    overwrite: bool = False,
    flag: str = "--overwrite_output_dir",
    field: str = "output_dir",
    marker: str = MARKER,
    check_only: bool = False,
    continues: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Claim ``folder`` for work of ``identity``: ``"resume"`` (same settings) or ``"fresh"`` (nothing to resume).

    ``work`` are glob patterns of what this kind of work leaves in the folder (checkpoints by default): a folder with
    such files but no marker holds work of unknown settings. ``overwrite`` deletes work of other settings instead of
    refusing (the user's explicit ``flag``, or a caller that owns the folder's name). The marker is written before
    the work starts, so an interrupted run is recognised when it resumes. ``check_only`` answers (and refuses) the
    same way and changes nothing: for ``--check``, and for every process of a distributed run but the first, which
    claims the folder for all. ``continues(stored, identity)`` says when other settings are a continuation of the
    stored work (a longer run on a schedule that does not depend on its length): then the work resumes under the new
    identity.
    """
    folder = Path(folder)
    path = folder / marker
    identity = json.loads(json.dumps(identity, default=str))  # as it will read back from the marker
    stored = _read(path)
    if not isinstance(stored, dict):
        stored = None
    if stored == identity:
        return "resume"
    if stored is not None and continues is not None and continues(stored, identity):
        if not check_only:
            atomic_write_json(path, identity)
        return "resume"
    existing = [item for pattern in work for item in folder.glob(pattern)] if folder.is_dir() else []
    if stored is None and not existing:
        if check_only:
            return "fresh"
        if folder.is_dir() and path.exists():  # an unreadable marker with nothing else: start over
            path.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, identity)
        return "fresh"
    differs = (
        "; ".join(changed_fields(stored, identity)[:6]) if stored is not None else "no record of its settings"
    )
    if not overwrite:
        raise FolderOfOtherSettingsError(
            f"{field}={folder} holds work of other settings ({differs}): use a new {field}, or pass {flag} to "
            "delete that work and start afresh."
        )
    if check_only:
        return "fresh"
    log(f"[em-trainer] {folder}: replacing work of other settings ({differs})")
    for item in existing:
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, identity)
    return "fresh"


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
