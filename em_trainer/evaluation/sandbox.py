"""Run model-written code in a sandbox: separate processes with limits, no network, private writable space.

Text a model wrote is untrusted. It never runs in our process (no ``exec`` here): ``run_untrusted`` runs one program
and returns its output; ``run_checked`` runs a candidate and a checker as two processes of different users connected
by two pipes, and the verdict is the checker's alone. Layers, strongest first:

- **Namespaces** (root with ``unshare``, as on this project's CI): a new network namespace (only a downed loopback),
  a new PID namespace with its own ``/proc`` (the candidate sees only its sandbox's processes), and a new mount
  namespace in which the home directories, ``/root``, ``/tmp``, ``/run``, ``/var``, ``/srv``, ``/opt`` and the
  working tree are covered by empty read-only filesystems. Everything the candidate can write (its directory,
  ``/tmp``, ``/dev/shm``) lies on one private tmpfs with a size and an inode limit, gone when the sandbox ends.
- **Unprivileged users**: the candidate runs as ``nobody`` (uid 65534); a checker as uid 65533, so the candidate can
  neither read the checker's files nor signal, trace or open the file descriptors of its process.
- **Resource limits** (always): CPU seconds, address space, file size, open files, processes; a wall-clock timeout
  after which the whole sandbox is killed; output read as a stream and cut (the sandbox killed) past a cap, so the
  caller's memory stays bounded whatever the candidate prints.

Without root or ``unshare`` (a developer's laptop) only the last layer and a clean environment apply, and
``run_checked`` refuses to run (the verdict would not be separated); the ``isolation`` field of each result says
which layers ran. Not protected against: kernel exploits and side channels. See ``docs/sandbox.md``.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

NOBODY = 65534
CHECKER_UID = 65533
HIDDEN_PATHS = ("/root", "/home", "/tmp", "/work", "/srv", "/opt", "/var", "/run", "/media")
SYSTEM_PYTHON = "/usr/bin/python3"  # outside the hidden trees; candidates need only the standard library
BOX = "/mnt"  # where the private tmpfs is mounted inside the sandbox (over the host's /mnt, which it hides)


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandbox run. Defaults fit a unit-test-sized program (HumanEval, LiveCodeBench)."""

    timeout_s: float = field(default=10.0)
    """Wall-clock seconds before the whole sandbox is killed."""
    cpu_s: int = field(default=10)
    """CPU seconds of each process (RLIMIT_CPU)."""
    memory_mb: int = field(default=1024)
    """Address space of each process (RLIMIT_AS), for the interpreter and everything it allocates."""
    file_size_mb: int = field(default=16)
    """Largest file a process may write (RLIMIT_FSIZE)."""
    disk_mb: int = field(default=32)
    """Everything writable together (its directory, /tmp, /dev/shm): one private tmpfs of this size."""
    inodes: int = field(default=2048)
    """Files and directories on that tmpfs."""
    processes: int = field(default=32)
    """Processes of each sandbox user (RLIMIT_NPROC; enforced when it runs as an unprivileged user)."""
    open_files: int = field(default=64)
    """Open file descriptors (RLIMIT_NOFILE)."""
    output_kb: int = field(default=1024)
    """Bytes of stdout and of stderr kept, each; a program that writes more is killed and fails."""


@dataclass
class SandboxResult:
    """How a run ended. ``passed``: exit status 0 within the limits (for ``run_checked``: the checker's verdict)."""

    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    isolation: list[str] = field(default_factory=list)
    output_flood: bool = False


def namespaces_available() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None and sys.platform.startswith("linux")


def _limit(limits: SandboxLimits, as_root_dropping: bool):
    def apply() -> None:
        os.setsid()  # its own process group, killed as a whole
        mb = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mb * mb, limits.file_size_mb * mb))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if not as_root_dropping:  # as root, the limit is set after dropping to the sandbox user (root ignores it)
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))

    return apply


def _prepare(host_dir: Path, owners: dict[str, int]) -> None:
    """Lay out ``host_dir`` as the sandbox will see it (``cp -a`` keeps owners and modes): ``tmp`` and ``shm`` for
    everyone, each of ``owners``' folders private to its user. Done here, so the sandbox runs no chown/chmod/mkdir."""
    for name in ("tmp", "shm"):
        (host_dir / name).mkdir()
        os.chmod(host_dir / name, 0o1777)
    for name, uid in owners.items():
        for path in [host_dir / name, *(host_dir / name).rglob("*")]:
            os.chown(path, uid, uid)
        os.chmod(host_dir / name, 0o700)
    os.chmod(host_dir, 0o755)


def _mounts(limits: SandboxLimits, host_dir: Path) -> str:
    """The namespace's mounts: one private tmpfs for all writable space with a copy of ``host_dir`` on it, the
    private trees covered read-only, and /tmp and /dev/shm bound to folders of that tmpfs. The covers and binds are
    one ``mount -a`` over a table written here (one process instead of a dozen: sandbox start-up is most of a
    grade's time)."""
    table = [f"none {path} tmpfs ro,size=4k,nr_inodes=16 0 0" for path in HIDDEN_PATHS if os.path.isdir(path)]
    table.append(f"{BOX}/tmp /tmp none bind 0 0")
    if os.path.isdir("/dev/shm"):
        table.append(f"{BOX}/shm /dev/shm none bind 0 0")
    (host_dir / "fstab").write_text("\n".join(table) + "\n", encoding="utf-8")
    return (
        "set -e; mount --make-rprivate /; "
        f"mount -t tmpfs -o size={limits.disk_mb}m,nr_inodes={limits.inodes},mode=755,nosuid,nodev "
        f"none {BOX}; cp -a {host_dir}/. {BOX}/; mount -a -T {BOX}/fstab; "
    )


def _as_user(uid: int, limits: SandboxLimits, argv: Sequence[str]) -> str:
    return (
        f"prlimit --nproc={limits.processes} setpriv --reuid={uid} --regid={uid} --clear-groups --no-new-privs -- "
        + " ".join(argv)
    )


class _Capped:
    """Reads a stream to its end in a thread, keeping at most ``cap`` bytes; past the cap it calls ``on_flood``."""

    def __init__(self, stream, cap: int, on_flood) -> None:
        self.chunks: list[bytes] = []
        self.kept = 0
        self.flooded = False
        self._thread = threading.Thread(target=self._run, args=(stream, cap, on_flood), daemon=True)
        self._thread.start()

    def _run(self, stream, cap: int, on_flood) -> None:
        while chunk := stream.read1(1 << 16):
            if self.kept < cap:
                self.chunks.append(chunk[: cap - self.kept])
                self.kept += len(self.chunks[-1])
            elif not self.flooded:
                self.flooded = True
                on_flood()
        stream.close()

    def text(self) -> str:
        self._thread.join()
        return b"".join(self.chunks).decode("utf-8", "replace")


def _run(
    command: list[str], cwd: str, limits: SandboxLimits, use_ns: bool, stdin: str
) -> tuple[int | None, bool, bool, str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_limit(limits, use_ns),  # noqa: PLW1509 - limits must be set in the child before exec
    )

    def kill() -> None:
        # In namespaces, kill the namespace's first process: the kernel then kills and reaps every process in it
        # before that process's exit completes, so unshare, and our wait on it, return only once nothing is left.
        # (Killing unshare's group instead would return while the sandbox is still being torn down.)
        children = []
        if use_ns:
            try:
                listed = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
                children = [int(pid) for pid in listed.split()]
            except (OSError, ValueError):
                children = []
        try:
            for child in children:
                os.kill(child, signal.SIGKILL)
            if not children:
                os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    cap = limits.output_kb * 1024
    out, err = _Capped(process.stdout, cap, kill), _Capped(process.stderr, cap, kill)

    def feed() -> None:
        try:
            process.stdin.write(stdin.encode())
            process.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    timed_out = False
    try:
        process.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill()
        process.wait()
    if not use_ns:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever the program left running in its group goes with it
        except ProcessLookupError:
            pass
    stdout, stderr = out.text(), err.text()
    writer.join(timeout=1)
    return process.returncode, timed_out, out.flooded or err.flooded, stdout, stderr


def run_untrusted(
    code: str,
    limits: SandboxLimits | None = None,
    stdin: str = "",
    python: str | None = None,
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox; return how it ended (never raises for what the code did)."""
    limits = limits or SandboxLimits()
    root = Path(tempfile.mkdtemp(prefix="em-sandbox-"))
    isolation = ["rlimits", "clean-env", "process-group", "temp-dir", "output-cap"]
    try:
        (root / "run").mkdir()
        (root / "run" / "candidate.py").write_text(code, encoding="utf-8")
        use_ns = namespaces_available() and (python is not None or os.path.exists(SYSTEM_PYTHON))
        python = python or (SYSTEM_PYTHON if use_ns else sys.executable)
        run = [python, "-I", "-S", "candidate.py"]
        if use_ns:
            _prepare(root, {"run": NOBODY})
            script = _mounts(limits, root) + f"cd {BOX}/run; exec " + _as_user(NOBODY, limits, run)
            command = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
                       "sh", "-c", script]  # fmt: skip
            cwd = "/"
            isolation += ["net-namespace", "pid-namespace", "own-proc", "mount-namespace", "private-tmpfs",
                          "uid-nobody"]  # fmt: skip
        else:
            command, cwd = run, str(root / "run")
        code_, timed_out, flood, stdout, stderr = _run(command, cwd, limits, use_ns, stdin)
        ok = code_ == 0 and not timed_out and not flood
        return SandboxResult(ok, code_, timed_out, stdout, stderr, isolation, flood)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class SandboxUnavailable(OSError):
    """``run_checked`` needs the namespace layers (root and ``unshare``); the message says so."""


def run_checked(
    candidate_files: dict[str, str],
    checker_files: dict[str, str],
    limits: SandboxLimits | None = None,
    python: str | None = None,
) -> SandboxResult:
    """Run ``candidate/main.py`` (as ``nobody``) and ``checker/main.py`` (as uid 65533) side by side in one sandbox.

    The two talk over two pipes only (FIFOs that only the sandbox's root can open): the checker writes requests on
    its fd 4 and reads answers on fd 3; the candidate reads requests on fd 3 and writes answers on fd 4. The
    candidate's stdout and stderr go to the result's ``stderr``; the checker's stdout is the result's ``stdout``,
    which the candidate cannot reach. ``passed`` is the checker's exit status 0 within the limits; what the checker
    printed is for the caller to read.
    """
    limits = limits or SandboxLimits()
    python = python or SYSTEM_PYTHON
    if not namespaces_available() or not os.path.exists(python):
        raise SandboxUnavailable(
            "Grading a function separates the checker from the candidate with Linux namespaces and two users, "
            "which needs root and `unshare` (util-linux), and /usr/bin/python3. Run grading as root (a container "
            "or a CI machine), or leave code benchmarks out."
        )
    root = Path(tempfile.mkdtemp(prefix="em-sandbox-"))
    isolation = ["rlimits", "clean-env", "process-group", "temp-dir", "output-cap", "net-namespace", "pid-namespace",
                 "own-proc", "mount-namespace", "private-tmpfs", "uid-nobody", "checker-uid"]  # fmt: skip
    try:
        for folder, files in (("candidate", candidate_files), ("checker", checker_files)):
            (root / folder).mkdir()
            for name, text in files.items():
                (root / folder / name).write_text(text, encoding="utf-8")
        for name in ("request", "answer"):
            os.mkfifo(root / name, 0o600)  # root's: neither sandbox user can open them
        _prepare(root, {"candidate": NOBODY, "checker": CHECKER_UID})
        run = [python, "-I", "-S", "main.py"]
        # The two pipes are FIFOs made inside the sandbox (root's, mode 600: neither program can open them), opened
        # by bash alone, so that when one program ends the other reads end-of-file. Opening each read-write first
        # keeps the one-way opens from blocking; those read-write ends are closed before either program starts.
        ends = "22<&- 23>&- 24<&- 25>&-"
        script = (
            _mounts(limits, root)
            + f"exec 20<>{BOX}/request 21<>{BOX}/answer; "
            + f"exec 22<{BOX}/request 23>{BOX}/request 24<{BOX}/answer 25>{BOX}/answer; exec 20<&- 21<&-; "
            + f"cd {BOX}/candidate; {_as_user(NOBODY, limits, run)} 3<&22 4>&25 {ends} 0</dev/null 1>&2 & "
            + f"cd {BOX}/checker; {_as_user(CHECKER_UID, limits, run)} 3<&24 4>&23 {ends} 0</dev/null & "
            + f"checker=$!; exec {ends}; wait $checker"
        )
        command = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
                   "bash", "-c", script]  # fmt: skip
        code_, timed_out, flood, stdout, stderr = _run(command, "/", limits, True, "")
        ok = code_ == 0 and not timed_out and not flood
        return SandboxResult(ok, code_, timed_out, stdout, stderr, isolation, flood)
    finally:
        shutil.rmtree(root, ignore_errors=True)
