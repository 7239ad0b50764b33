"""What the sandbox tests look for on the host after a grade: sandbox processes still alive, System V IPC objects."""

from __future__ import annotations

import os
from pathlib import Path

from em_trainer.evaluation.sandbox import SLOT_UID_BASE


def _status(pid_dir: Path) -> dict[str, str]:
    try:
        text = (pid_dir / "status").read_text()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def sandbox_processes() -> list[str]:
    """Processes of a sandbox: a root-mode sandbox user's (uid from the pool), or, in rootless mode, ours in a PID
    namespace below ours (bubblewrap's and its program's)."""
    own_depth = len(_status(Path("/proc/self")).get("NSpid", "").split())
    found = []
    for pid_dir in Path("/proc").glob("[0-9]*"):
        status = _status(pid_dir)
        if not status:
            continue
        uid = int(status.get("Uid", "-1 0").split()[0])
        deeper = len(status.get("NSpid", "").split()) > own_depth
        if uid >= SLOT_UID_BASE or (deeper and uid == os.getuid()):
            found.append(f"{pid_dir.name}:{status.get('Name', '').strip()}")
    return found


def sysv_ipc_objects() -> set[str]:
    """The host's System V shared memory segments, message queues and semaphore sets (their ids)."""
    found = set()
    for kind in ("shm", "msg", "sem"):
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        except OSError:
            continue
        found |= {f"{kind}:{line.split()[1]}" for line in lines if line.split()}
    return found
