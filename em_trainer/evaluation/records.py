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

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        if records and not self.path.read_text(encoding="utf-8").endswith("\n"):
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
