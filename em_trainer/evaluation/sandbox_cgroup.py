"""A cgroup per sandbox: its memory and its processes limited as a whole.

An address-space limit is per process. Several processes of one sandbox, together with its tmpfs and the kernel
memory it makes the kernel hold, add up to many times ``memory_mb``. A memory cgroup counts all of it. The sandbox's
first process joins the cgroup before it starts bubblewrap, and everything the sandbox starts inherits the cgroup.

Where this works:

- **cgroup v2**: our own cgroup must have ``memory`` and ``pids`` in its ``cgroup.subtree_control`` (a delegated
  subtree, e.g. a systemd unit with ``Delegate=yes``) and must be writable.
- **cgroup v1**: a writable ``memory`` hierarchy, with ``pids`` if it is there (root on a hybrid host, like this
  project's CI).
- Elsewhere it is skipped, and the result's ``isolation`` says so.

The v2 path follows the kernel's interface (``memory.max``, ``memory.swap.max``, ``pids.max``), but the machines this
project runs on have none to delegate, so it is untested. The v1 path is tested.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _own_paths() -> dict[str, str]:
    """Our cgroup per hierarchy from /proc/self/cgroup: ``{"": path}`` for v2, ``{"memory": path, ...}`` for v1."""
    paths = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


@functools.cache
def hierarchies() -> tuple[str, tuple[Path, ...]]:
    """``("v2", (parent,))``, ``("v1", (memory parent[, pids parent]))`` or ``("none", ())``: where sandbox cgroups
    can be made here."""
    own = _own_paths()
    unified = ROOT / own.get("", "/").lstrip("/")
    controls = unified / "cgroup.subtree_control"
    if (ROOT / "cgroup.controllers").is_file() and controls.is_file() and os.access(unified, os.W_OK):
        enabled = set(controls.read_text().split())
        if {"memory", "pids"} <= enabled:
            return "v2", (unified,)
    if "memory" in own:
        memory = ROOT / "memory" / own["memory"].lstrip("/")
        if (memory / "memory.limit_in_bytes").is_file() and os.access(memory, os.W_OK):
            parents = [memory]
            pids = ROOT / "pids" / own.get("pids", "/").lstrip("/")
            if "pids" in own and (pids / "cgroup.procs").is_file() and os.access(pids, os.W_OK):
                parents.append(pids)
            return "v1", tuple(parents)
    return "none", ()


class SandboxCgroup:
    """The cgroup (one folder per hierarchy) of one sandbox; ``join()`` runs in the sandbox's first process."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders

    def join(self) -> None:
        for folder in self.folders:
            (folder / "cgroup.procs").write_text("0")  # "0": the writing process itself

    def out_of_memory(self) -> bool:
        """Whether the kernel killed a process of the sandbox for its memory limit."""
        for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
            path = self.folders[0] / name
            if path.is_file():
                for line in path.read_text().splitlines():
                    field, _, value = line.partition(" ")
                    if field == key and value.strip().isdigit():
                        return int(value) > 0
        return False


@contextmanager
def sandbox_cgroup(memory_mb: int, processes: int) -> Iterator[SandboxCgroup | None]:
    """A fresh cgroup with these limits for the length of the block (``None`` where none can be made); removed after,
    once its processes are gone."""
    kind, parents = hierarchies()
    if kind == "none":
        yield None
        return
    name = f"em-sandbox-{uuid.uuid4().hex[:12]}"
    folders = [parent / name for parent in parents]
    limit = str(memory_mb * 1024 * 1024)
    try:
        for folder in folders:
            folder.mkdir()
        if kind == "v2":
            (folders[0] / "memory.max").write_text(limit)
            (folders[0] / "memory.swap.max").write_text("0")
            (folders[0] / "pids.max").write_text(str(processes))
        else:
            (folders[0] / "memory.limit_in_bytes").write_text(limit)
            swap = folders[0] / "memory.memsw.limit_in_bytes"
            if swap.is_file():  # memory plus swap: no swapping past the limit either
                swap.write_text(limit)
            if len(folders) > 1:
                (folders[1] / "pids.max").write_text(str(processes))
    except OSError:
        _remove(folders)
        yield None
        return
    try:
        yield SandboxCgroup(folders)
    finally:
        _remove(folders)


def _remove(folders: list[Path]) -> None:
    # A cgroup can be removed once its last process has been reaped, which the kernel finishes just after our wait
    # on the sandbox returns: retry for a moment.
    for folder in folders:
        for _ in range(50):
            try:
                folder.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
