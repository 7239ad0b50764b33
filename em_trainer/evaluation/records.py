"""Progress files of long jobs: append-only JSON lines that survive a crash, resumed record by record."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.files import atomic_write_text


class RecordFile:
    """Append-only JSONL of finished samples; a torn last line (a crash mid-write) is dropped on reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def read(self, repair: bool = True) -> list[dict[str, Any]]:
        """The finished records. ``repair`` rewrites the file without a torn last line, so the next append starts on
        a fresh line: only the process that owns (appends to) the file may do that, never a reader beside it."""
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        records = []
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        if repair and records and not text.endswith("\n"):
            self.rewrite(records)
        return records

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
