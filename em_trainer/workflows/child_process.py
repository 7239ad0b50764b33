"""Every child process a job starts (a training run, a selection, a SLURM job's command): one helper.

- Output goes to the child's log file as it comes (the child runs unbuffered), so a job killed at its time limit
  leaves a log that holds everything up to the kill.
- A stop (SIGTERM from a scheduler or ``kill``, which ``em-trainer`` turns into KeyboardInterrupt, or Ctrl-C) is
  forwarded to the child as SIGTERM, and the job waits for it: a training child finishes its optimizer step, saves
  a checkpoint and exits, and the rerun resumes there with nothing trained twice. A second stop while waiting kills
  the child at once. (``subprocess.run`` killed the child 0.25 s after the stop, before it could save.)
- The child dies with its parent, however the parent died (Linux's parent-death signal), so no child trains on
  unsupervised.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

# How long a stopped job waits for its child to finish the step and save (a 7B optimizer step plus its checkpoint
# takes minutes); a scheduler's grace period (SLURM's KillWait, submitit's signal delay) should leave this much.
STOP_GRACE_S = float(os.environ.get("EM_TRAINER_STOP_GRACE_S", "600"))


def stop_with_parent() -> None:
    """In a child, before it starts: SIGTERM when the process that started it dies, however it died (even SIGKILL);
    SIGTERM stops an ``em-trainer`` process the way Ctrl-C does (Linux only; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: this process's, unbuffered output (so its log fills as it runs), and ``extra``."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}


def run_child(
    command: Sequence[str], log_path: str | Path | None, env: Mapping[str, str] | None = None, tail: int = 3000
) -> tuple[int, str]:
    """Run ``command`` to its end; returns its exit status and the last ``tail`` characters of its log.

    ``log_path``: the file its stdout and stderr stream into (created or truncated); None: they stream into this
    process's own (a SLURM job's log). The child gets its own session, so a Ctrl-C in a terminal reaches it once,
    forwarded by this process, not twice.
    """
    out = None
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = log_path.open("w", encoding="utf-8")
    try:
        process = subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT if out is not None else None,
            env=child_env(env), preexec_fn=stop_with_parent, start_new_session=True,
        )  # fmt: skip
        try:
            code = process.wait()
        except KeyboardInterrupt:
            _stop(process)
            raise
    finally:
        if out is not None:
            out.close()
    text = ""
    if log_path is not None:
        with log_path.open("rb") as handle:
            handle.seek(max(0, log_path.stat().st_size - 4 * tail))
            text = handle.read().decode("utf-8", errors="replace")[-tail:]
    return code, text


def _stop(process: subprocess.Popen) -> None:
    """Forward the stop and wait for the child to save; a second stop, or the grace period running out, kills it."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        process.kill()
        process.wait()
