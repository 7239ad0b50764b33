"""Run model-written code in a sandbox: separate processes with limits, no network, private writable space.

Text a model wrote is untrusted. It never runs in our process (no ``exec`` here): ``run_untrusted`` runs one program
and returns its output; ``run_checked`` runs a candidate and a checker, each in a sandbox of its own, connected by two
pipes, and the verdict is the checker's alone. Every sandbox is a bubblewrap (``bwrap``) container:

- its own user, PID, network, IPC, UTS and mount namespaces; no user namespace, mount, keyring, System V IPC or
  ``memfd`` from inside (``--disable-userns`` and the system-call filter of ``sandbox_seccomp``);
- a root built from an allow-list (``/usr`` and the links or folders of ``/bin``, ``/lib``, ``/lib64``, ``/sbin``),
  read-only, with its own ``/proc`` and a ``/dev`` of five devices; everything writable (its folder ``/box/<name>``,
  ``/tmp``, ``/dev/shm``) lies on one tmpfs of ``disk_mb``, gone when the sandbox ends;
- limits per process (CPU seconds, address space, file size, open files) and per sandbox (processes: the kernel
  counts them per user namespace, so one sandbox's processes never count against another's); a wall-clock timeout
  after which the whole sandbox is killed; output read as a stream and cut (the sandbox killed) past a cap.

Two modes, chosen by ``sandbox_mode()``:

- ``root`` (run as root, e.g. CI): each sandbox also runs as a user id of its own, taken from a pool for its
  lifetime, and its tmpfs is mounted by us with an inode limit in a mount namespace that dies with it;
- ``rootless`` (any user, with unprivileged user namespaces): the sandboxes run as the calling user, mapped.

Without bubblewrap or user namespaces (``none``), ``run_untrusted`` applies only the per-process limits and a clean
environment, and ``run_checked`` refuses to run, since its verdict would not be separated. The ``isolation`` field of
each result says which layers ran. Not protected against: kernel exploits and side channels. See
``docs/sandbox.md``.
"""

from __future__ import annotations

import fcntl
import functools
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import sandbox_seccomp
from .sandbox_cgroup import SandboxCgroup, hierarchies, sandbox_cgroup

SYSTEM_PYTHON = "/usr/bin/python3"  # inside the allow-listed /usr; candidates need only the standard library
BOX = "/box"  # the sandbox's writable tmpfs: its folder, /tmp and /dev/shm
SLOT_UID_BASE = 1_900_000_000  # root mode: sandbox n runs as uid SLOT_UID_BASE + n, unused on any real system
SLOTS = 4096
ALLOWED_ROOTS = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32", "/sbin")
DEVICES = ("null", "zero", "full", "random", "urandom")
MODE_VARIABLE = "EM_TRAINER_SANDBOX"  # auto (default), root, rootless or none


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
    """Everything writable together (its folder, /tmp, /dev/shm): one private tmpfs of this size."""
    inodes: int = field(default=2048)
    """Files and directories on that tmpfs (root mode; bubblewrap alone cannot set it)."""
    processes: int = field(default=32)
    """Processes (and threads) of one sandbox, counted in its own user namespace (RLIMIT_NPROC)."""
    sandbox_memory_mb: int = field(default=2048)
    """Everything one sandbox holds together (its processes, its tmpfs, the kernel memory it uses), where a memory
    cgroup can be made (sandbox_cgroup: cgroup v2 delegated, or v1 as root); past it the kernel kills in the
    sandbox. Without a cgroup the bound is ``processes`` x ``memory_mb`` plus ``disk_mb``."""
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


class SandboxUnavailable(OSError):
    """``run_checked`` needs the namespace layers (bubblewrap with user namespaces); the message says so."""


BASE_LAYERS = ["rlimits", "clean-env", "process-group", "output-cap"]
NAMESPACE_LAYERS = ["bubblewrap", "user-namespace", "net-namespace", "pid-namespace", "ipc-namespace",
                    "uts-namespace", "mount-namespace", "allow-list-root", "private-tmpfs", "no-userns-inside",
                    "seccomp", "processes-per-sandbox"]  # fmt: skip
ROOT_LAYERS = ["uid-per-sandbox", "inode-limit"]


# ----------------------------------------------------------------------------------------------------- the mode
def sandbox_mode() -> str:
    """``root``, ``rootless`` or ``none``: the strongest mode that works here (tried once per process), or the one
    ``EM_TRAINER_SANDBOX`` asks for (an unusable request is an error that says why)."""
    wanted = os.environ.get(MODE_VARIABLE, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "root", "rootless", "none"):
        raise ValueError(f"{MODE_VARIABLE}={wanted!r}: use auto, root, rootless or none")
    if wanted == "none":
        return "none"
    candidates = ["root", "rootless"] if wanted == "auto" else [wanted]
    reasons = []
    for mode in candidates:
        reason = _unusable(mode)
        if reason is None:
            return mode
        reasons.append(f"{mode}: {reason}")
    if wanted != "auto":
        raise SandboxUnavailable(f"{MODE_VARIABLE}={wanted} cannot be used here ({reasons[0]})")
    return "none"


def namespaces_available() -> bool:
    """Whether sandboxes get their namespaces here (either mode)."""
    return sandbox_mode() != "none"


@functools.cache
def _unusable(mode: str) -> str | None:
    """Why ``mode`` does not work on this machine, or None: the reason comes from a real sandbox running ``true``."""
    if not sys.platform.startswith("linux"):
        return "Linux only"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt install bubblewrap; Fedora: dnf install bubblewrap)"
    if not sandbox_seccomp.supported():
        return "no system-call filter for this architecture"
    if mode == "root" and (os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "setpriv"))):
        return "needs root, unshare and setpriv (util-linux)"
    if mode == "rootless" and os.geteuid() == 0:
        return "runs as root: the root mode applies"
    try:
        limits = SandboxLimits(timeout_s=30)
        with _sandbox(mode, limits, "probe", {}, ["/bin/true"]) as (argv, fds):
            probe = subprocess.run(argv, pass_fds=fds, capture_output=True, timeout=30, env=_ENV, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        return f"{type(error).__name__}: {error}"
    if probe.returncode != 0:
        return (probe.stderr.decode(errors="replace").strip().splitlines() or ["exit status"])[-1][:200] + (
            " (user namespaces may be off: sysctl kernel.unprivileged_userns_clone=1 or user.max_user_namespaces)"
        )
    return None


# ------------------------------------------------------------------------------------------------ the sandboxes
_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


def _root_folder(name: str, mode: int) -> Path:
    """A folder of root mode's, the same for every process on the machine whatever its ``TMPDIR``."""
    folder = Path("/run/lock" if os.path.isdir("/run/lock") else "/var/tmp") / f"em-trainer-sandbox-{name}"
    folder.mkdir(mode=mode, exist_ok=True)
    return folder


@contextmanager
def _uid_slot() -> Iterator[int]:
    """A user id no other sandbox on this machine holds now (root mode): a lock file per id, held while it runs."""
    folder = _root_folder("slots", 0o700)
    start = random.randrange(SLOTS)
    for offset in range(SLOTS):
        slot = (start + offset) % SLOTS
        handle = open(folder / f"{slot}.lock", "a")  # noqa: SIM115 - held until the sandbox ends
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield SLOT_UID_BASE + slot
        finally:
            handle.close()
        return
    raise SandboxUnavailable(f"all {SLOTS} sandbox user ids are in use")


def _allowed_root() -> list[str]:
    """bwrap arguments for the read-only root: the allow-list, links kept as links (merged /usr)."""
    args = []
    for path in ALLOWED_ROOTS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


@contextmanager
def _sandbox(
    mode: str,
    limits: SandboxLimits,
    name: str,
    files: dict[str, str],
    argv: Sequence[str],
    keep_fds: Sequence[int] = (),
) -> Iterator[tuple[list[str], list[int]]]:
    """The command line that runs ``argv`` in ``/box/<name>`` holding ``files``, and the fds it must inherit.

    Files go in through ``bwrap --file`` from descriptors, so the host folder they come from can be anywhere
    (``TMPDIR`` under ``/mnt`` included) and never becomes visible inside.
    """
    with ExitStack() as stack:
        host = Path(tempfile.mkdtemp(prefix="em-sandbox-"))
        stack.callback(shutil.rmtree, host, ignore_errors=True)
        fds = list(keep_fds)

        def descriptor(data: bytes, label: str) -> int:
            path = host / label
            path.write_bytes(data)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            stack.callback(os.close, fd)
            fds.append(fd)
            return fd

        box = f"{BOX}/{name}"
        # --as-pid-1: the program is the namespace's init; with bubblewrap's own init, an orphaned bwrap process
        # stayed a zombie on hosts whose PID 1 does not reap (containers), one per sandbox.
        args = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                "--as-pid-1", "--hostname", "sandbox", *_allowed_root(), "--proc", "/proc",
                "--tmpfs", "/dev"]  # fmt: skip
        for device in DEVICES:
            args += ["--dev-bind", f"/dev/{device}", f"/dev/{device}"]
        args += ["--symlink", "/proc/self/fd", "/dev/fd", "--symlink", f"{BOX}/shm", "/dev/shm",
                 "--symlink", f"{BOX}/tmp", "/tmp"]  # fmt: skip
        if mode == "root":
            uid = stack.enter_context(_uid_slot())
            # A mount point only: each sandbox mounts its own tmpfs on it in a mount namespace of its own. Fixed and
            # traversable, so the sandbox's user reaches it whatever TMPDIR is (our temp folder is private to us).
            mount_point = _root_folder("box", 0o755)
            args += ["--bind", str(mount_point), BOX]
        else:
            args += ["--perms", "0700", "--size", str(limits.disk_mb * 1024 * 1024), "--tmpfs", BOX]
        args += ["--dir", f"{BOX}/tmp", "--dir", f"{BOX}/shm", "--dir", box]
        for index, (file_name, text) in enumerate(files.items()):
            args += ["--file", str(descriptor(text.encode("utf-8"), f"file-{index}")), f"{box}/{file_name}"]
        args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", box]
        args += ["--seccomp", str(descriptor(sandbox_seccomp.filter_program(), "seccomp.bpf"))]
        args += ["--", "prlimit", f"--nproc={limits.processes}", "--", *argv]
        if mode == "root":
            # The tmpfs (with an inode limit, which bwrap cannot set) is mounted in a mount namespace of its own
            # that ends with the sandbox; then the sandbox's own user starts bubblewrap without privileges.
            options = (f"size={limits.disk_mb}m,nr_inodes={limits.inodes},mode=0700,uid={uid},gid={uid},"
                       "nosuid,nodev")  # fmt: skip
            script = f'mount -t tmpfs -o {options} none "$0" && exec setpriv --reuid={uid} --regid={uid} ' \
                     '--clear-groups -- "$@"'  # fmt: skip
            args = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
                    str(mount_point), *args]  # fmt: skip
        yield args, fds


def _limit(limits: SandboxLimits, cgroup: SandboxCgroup | None = None):
    def apply() -> None:
        if cgroup is not None:
            cgroup.join()  # before anything else: every process of the sandbox counts against its cgroup
        os.setsid()  # its own process group, killed as a whole
        mb = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mb * mb, limits.file_size_mb * mb))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


class _Capped:
    """Reads a stream to its end in a thread, keeping at most ``cap`` bytes; past the cap it calls ``on_flood``."""

    def __init__(self, stream, cap: int, on_flood) -> None:
        self.chunks: list[bytes] = []
        self.kept = 0
        self.flooded = False
        self._thread = threading.Thread(target=self._read, args=(stream, cap, on_flood), daemon=True)
        self._thread.start()

    def _read(self, stream, cap: int, on_flood) -> None:
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


def _kill(process: subprocess.Popen, sandboxed: bool) -> None:
    """Kill a sandbox: its namespace's first process (bubblewrap's child), so that the kernel kills and reaps every
    process in it before that process's exit completes, and bubblewrap, and our wait on it, return only once nothing
    is left. Before that child exists (or without namespaces), the process group."""
    children = []
    if sandboxed:
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
    except (ProcessLookupError, PermissionError):
        pass


def _supervise(
    main: subprocess.Popen, others: list[subprocess.Popen], streams: tuple, limits: SandboxLimits, sandboxed: bool,
    stdin: str = "",
) -> tuple[int | None, bool, bool, str, str]:  # fmt: skip
    """Wait for ``main`` within the timeout, reading ``streams`` (stdout, stderr) capped; then end every process."""
    everyone = [main, *others]

    def kill_all() -> None:
        for process in everyone:
            _kill(process, sandboxed)

    cap = limits.output_kb * 1024
    out, err = _Capped(streams[0], cap, kill_all), _Capped(streams[1], cap, kill_all)
    writer = None
    if main.stdin is not None:

        def feed() -> None:
            try:
                main.stdin.write(stdin.encode())
                main.stdin.close()
            except (BrokenPipeError, OSError):
                pass

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
    timed_out = False
    try:
        main.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    for process in everyone:
        if timed_out or process is not main:
            _kill(process, sandboxed)
        process.wait()
        if not sandboxed:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # whatever the program left running in its group goes with it
            except ProcessLookupError:
                pass
    stdout, stderr = out.text(), err.text()
    if writer is not None:
        writer.join(timeout=1)
    return main.returncode, timed_out, out.flooded or err.flooded, stdout, stderr


def _layers(mode: str, *extra: str) -> list[str]:
    return BASE_LAYERS + NAMESPACE_LAYERS + (ROOT_LAYERS if mode == "root" else []) + [f"mode-{mode}", *extra]


def _cgroup(limits: SandboxLimits) -> Any:
    """This sandbox's cgroup (or None): memory for the whole sandbox, processes plus bubblewrap's own."""
    return sandbox_cgroup(limits.sandbox_memory_mb, limits.processes + 4)


def _cgroup_layer() -> list[str]:
    kind = hierarchies()[0]
    return [] if kind == "none" else [f"cgroup-{kind}"]


# ------------------------------------------------------------------------------------------------ the interface
def run_untrusted(
    code: str,
    limits: SandboxLimits | None = None,
    stdin: str = "",
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox; return how it ended (never raises for what the code did)."""
    limits = limits or SandboxLimits()
    mode = sandbox_mode()
    with ExitStack() as stack:
        if mode == "none":
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="em-sandbox-")))
            (folder / "candidate.py").write_text(code, encoding="utf-8")
            argv, fds, cwd = [sys.executable, "-I", "-S", "candidate.py"], [], str(folder)
            isolation = [*BASE_LAYERS, "temp-dir", "mode-none"]
        else:
            argv, fds = stack.enter_context(
                _sandbox(mode, limits, "run", {"candidate.py": code}, [SYSTEM_PYTHON, "-I", "-S", "candidate.py"])
            )
            cwd, isolation = "/", _layers(mode)
        cgroup = stack.enter_context(_cgroup(limits))
        isolation += _cgroup_layer() if cgroup is not None else []
        process = subprocess.Popen(
            argv, cwd=cwd, env=_ENV, pass_fds=fds, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, preexec_fn=_limit(limits, cgroup),  # noqa: PLW1509 - set in the child before exec
        )  # fmt: skip
        code_, timed_out, flood, stdout, stderr = _supervise(
            process, [], (process.stdout, process.stderr), limits, mode != "none", stdin
        )
    ok = code_ == 0 and not timed_out and not flood
    return SandboxResult(ok, code_, timed_out, stdout, stderr, isolation, flood)


def run_checked(
    candidate_files: dict[str, str],
    checker_files: dict[str, str],
    limits: SandboxLimits | None = None,
) -> SandboxResult:
    """Run ``candidate/main.py`` and ``checker/main.py``, each in a sandbox of its own, side by side.

    The two talk over two pipes only, made here: the checker writes requests and reads answers, the candidate the
    reverse; each program gets its two ends as ``main.py READ_FD WRITE_FD``. The candidate cannot see the checker at
    all (other namespaces: no process, file or socket in common; in root mode another user too). The candidate's
    stdout and stderr go to the result's ``stderr``; the checker's stdout is the result's ``stdout``. ``passed`` is
    the checker's exit status 0 within the limits; what the checker printed is for the caller to read.
    """
    limits = limits or SandboxLimits()
    mode = sandbox_mode()
    if mode == "none":
        reasons = "; ".join(f"{m}: {_unusable(m)}" for m in ("root", "rootless"))
        raise SandboxUnavailable(
            "Grading a function runs the checker and the candidate in separate sandboxes, which needs bubblewrap and "
            f"user namespaces ({reasons}). Install bubblewrap, or leave code benchmarks out."
        )
    request_read, request_write = os.pipe()
    answer_read, answer_write = os.pipe()
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    ends = [request_read, request_write, answer_read, answer_write, out_write, err_write]
    processes: list[subprocess.Popen] = []
    try:
        with ExitStack() as stack:
            python = [SYSTEM_PYTHON, "-I", "-S", "main.py"]
            cand_argv, cand_fds = stack.enter_context(_sandbox(
                mode, limits, "candidate", candidate_files, [*python, str(request_read), str(answer_write)],
                keep_fds=[request_read, answer_write]))  # fmt: skip
            check_argv, check_fds = stack.enter_context(_sandbox(
                mode, limits, "checker", checker_files, [*python, str(answer_read), str(request_write)],
                keep_fds=[answer_read, request_write]))  # fmt: skip
            check_group, cand_group = stack.enter_context(_cgroup(limits)), stack.enter_context(_cgroup(limits))
            common = {"cwd": "/", "env": _ENV, "stdin": subprocess.DEVNULL, "stderr": err_write}
            processes.append(subprocess.Popen(check_argv, pass_fds=check_fds, stdout=out_write,
                                              preexec_fn=_limit(limits, check_group), **common))  # fmt: skip # noqa: PLW1509
            processes.append(subprocess.Popen(cand_argv, pass_fds=cand_fds, stdout=err_write,
                                              preexec_fn=_limit(limits, cand_group), **common))  # fmt: skip # noqa: PLW1509
            for fd in ends:  # only the sandboxes hold them now: when one side ends, the other reads end-of-file
                os.close(fd)
            ends = []
            streams = (os.fdopen(out_read, "rb"), os.fdopen(err_read, "rb"))
            out_read = err_read = -1
            code_, timed_out, flood, stdout, stderr = _supervise(processes[0], processes[1:], streams, limits, True)
    finally:
        for fd in [*ends, out_read, err_read]:
            if fd >= 0:
                os.close(fd)
        for process in processes:
            if process.poll() is None:
                _kill(process, True)
                process.wait()
    ok = code_ == 0 and not timed_out and not flood
    layers = _layers(mode, "checker-sandbox") + (_cgroup_layer() if cand_group is not None else [])
    return SandboxResult(ok, code_, timed_out, stdout, stderr, layers, flood)
