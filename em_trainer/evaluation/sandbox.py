"""Run model-written code in a sandbox: a separate process with limits, no network, a throwaway directory.

Text a model wrote is untrusted. It never runs in our process (no ``exec``); ``run_untrusted`` writes it to a file
in a fresh temporary directory and runs it with a clean environment under these layers, strongest first:

- **Namespaces** (when running as root with ``unshare``, as on this project's CI): a new network namespace (no
  interface but a downed loopback: no network), a new PID namespace (the candidate cannot see or signal our
  processes), and a new mount namespace in which the home directories, ``/root``, ``/tmp`` and the working tree are
  covered by empty read-only filesystems, except the candidate's own directory.
- **An unprivileged user**: the candidate runs as ``nobody`` (uid 65534), so it cannot write or delete our files,
  and the process-count limit applies to it (root ignores ``RLIMIT_NPROC``).
- **Resource limits** (``setrlimit``, always): CPU seconds, address space, file size, open files, processes; a
  wall-clock timeout after which the whole process group is killed.

Without root or ``unshare`` (a developer's laptop), only the last layer and the clean environment apply; the
``isolation`` field of each result says which layers ran. What this does *not* protect against: kernel exploits, and
without namespaces, reading world-readable files and using the network. See ``docs/sandbox.md``.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

NOBODY = 65534
HIDDEN_PATHS = ("/root", "/home", "/tmp", "/work", "/srv", "/opt", "/var")
SYSTEM_PYTHON = "/usr/bin/python3"  # outside the hidden trees; candidates need only the standard library


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one candidate run. Defaults fit a unit-test-sized program (HumanEval, LiveCodeBench)."""

    timeout_s: float = field(default=10.0)
    """Wall-clock seconds before the whole process group is killed."""
    cpu_s: int = field(default=10)
    """CPU seconds (RLIMIT_CPU)."""
    memory_mb: int = field(default=1024)
    """Address space (RLIMIT_AS), for the interpreter and everything the candidate allocates."""
    file_size_mb: int = field(default=16)
    """Largest file the candidate may write (RLIMIT_FSIZE)."""
    processes: int = field(default=32)
    """Processes of the sandbox user (RLIMIT_NPROC; enforced when the candidate runs as nobody)."""
    open_files: int = field(default=64)
    """Open file descriptors (RLIMIT_NOFILE)."""


@dataclass
class SandboxResult:
    """How a candidate run ended. ``passed``: exit status 0 within the limits."""

    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    isolation: list[str] = field(default_factory=list)


def _namespaces_available() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None and sys.platform.startswith("linux")


def _limit(limits: SandboxLimits, as_root_dropping: bool):
    def apply() -> None:
        os.setsid()  # its own process group, killed as a whole on timeout
        mb = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mb * mb, limits.file_size_mb * mb))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if not as_root_dropping:  # as root, the limit is set after dropping to nobody (root ignores it)
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))

    return apply


def run_untrusted(
    code: str,
    limits: SandboxLimits | None = None,
    stdin: str = "",
    python: str | None = None,
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox; return how it ended (never raises for what the code did)."""
    limits = limits or SandboxLimits()
    root = Path(tempfile.mkdtemp(prefix="em-sandbox-"))
    isolation = ["rlimits", "clean-env", "process-group", "temp-dir"]
    try:
        workdir = root / "run"
        workdir.mkdir()
        (workdir / "candidate.py").write_text(code, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        use_ns = _namespaces_available() and (python is not None or os.path.exists(SYSTEM_PYTHON))
        python = python or (SYSTEM_PYTHON if use_ns else sys.executable)
        run = [python, "-I", "-S", "candidate.py"]
        if use_ns:
            os.chown(workdir, NOBODY, NOBODY)
            os.chown(workdir / "candidate.py", NOBODY, NOBODY)
            os.chmod(root, 0o755)
            # Inside new mount/net/pid namespaces: cover the private trees with empty read-only tmpfs, bind the
            # candidate's directory back, drop to nobody with the process limit, then run.
            hidden = " ".join(HIDDEN_PATHS)
            script = (
                "set -e; mount --make-rprivate /; mount -t tmpfs -o size=64k none /mnt; mkdir /mnt/box; "
                f"mount --bind {workdir} /mnt/box; "
                f"for p in {hidden}; do if [ -d $p ]; then mount -t tmpfs -o ro,size=4k none $p; fi; done; "
                "cd /mnt/box; "
                f"exec prlimit --nproc={limits.processes} setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "
                f"--no-new-privs -- {' '.join(run)}"
            )
            command = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "sh", "-c", script]
            cwd = "/"
            isolation += ["net-namespace", "pid-namespace", "mount-namespace", "uid-nobody"]
        else:
            command, cwd = run, str(workdir)
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_limit(limits, use_ns),  # noqa: PLW1509 - limits must be set in the child before exec
        )
        timed_out = False
        try:
            out, err = process.communicate(stdin.encode(), timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = process.communicate()
        stdout, stderr = out.decode("utf-8", "replace")[-20000:], err.decode("utf-8", "replace")[-20000:]
        code_ok = process.returncode == 0 and not timed_out
        return SandboxResult(code_ok, process.returncode, timed_out, stdout, stderr, isolation)
    finally:
        shutil.rmtree(root, ignore_errors=True)
