"""Each sandbox its own kernel state and its own limits: hostile candidates of the classes an attacker found in the
sandbox before bubblewrap (System V IPC and keyrings carried from one grade to the next, user namespaces, limits
counted per user, memory in memfd files, paths visible by deny-list, a TMPDIR under /mnt, exceptions that steer a
check). Each would have passed, or broken an honest grade, before; each is a failure now. Runs in both modes (root
under pytest; rootless as an unprivileged user, from ``make test``)."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import pytest

from em_trainer.evaluation.code_tasks import grade_code, grade_many
from em_trainer.evaluation.sandbox import SandboxLimits, namespaces_available, run_untrusted
from em_trainer.evaluation.sandbox_cgroup import hierarchies

from .sandbox_helpers import sandbox_processes, sysv_ipc_objects

pytestmark = [
    pytest.mark.skipif(not namespaces_available(), reason="the sandbox needs bubblewrap and user namespaces"),
    pytest.mark.xdist_group("sandbox"),
]

FAST = SandboxLimits(timeout_s=8, cpu_s=4, memory_mb=512, processes=16, disk_mb=16, output_kb=256)
SPEC = json.dumps({
    "kind": "function", "entry_point": "add", "prompt": "def add(a, b):\n    \"\"\"a + b\"\"\"\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(10, 20) == 30\n",
})  # fmt: skip
HONEST = "def add(a, b):\n    return a + b\n"
LIBC = "import ctypes, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"

# Information carried from one grade to the next: the writer leaves it, the reader passes only if it finds it.
CARRIERS = {
    "System V shared memory": (
        LIBC + "libc.shmat.restype = ctypes.c_void_p\nshm = libc.shmget(0x5EED, 4096, 0o1666)\n"
        "sys.exit(1) if shm < 0 else ctypes.memmove(libc.shmat(shm, None, 0), b'CARRIED', 7)\n",
        LIBC + "libc.shmat.restype = ctypes.c_void_p\nshm = libc.shmget(0x5EED, 0, 0)\nif shm < 0:\n    sys.exit(1)\n"
        "sys.exit(0 if ctypes.string_at(libc.shmat(shm, None, 0), 7) == b'CARRIED' else 1)\n",
    ),
    "System V message queue": (
        LIBC + "sys.exit(0 if libc.msgget(0x5EEE, 0o1666) >= 0 else 1)\n",
        LIBC + "sys.exit(0 if libc.msgget(0x5EEE, 0) >= 0 else 1)\n",
    ),
    "System V semaphore set": (
        LIBC + "sys.exit(0 if libc.semget(0x5EEF, 1, 0o1666) >= 0 else 1)\n",
        LIBC + "sys.exit(0 if libc.semget(0x5EEF, 0, 0) >= 0 else 1)\n",
    ),
    "the user's kernel keyring": (
        LIBC + "SYS_ADD_KEY = {'x86_64': 248, 'aarch64': 217}[__import__('platform').machine()]\n"
        "sys.exit(0 if libc.syscall(SYS_ADD_KEY, b'user', b'em-carry', b'CARRIED', 7, -4) >= 0 else 1)\n",
        LIBC + "SYS_REQUEST_KEY = {'x86_64': 249, 'aarch64': 218}[__import__('platform').machine()]\n"
        "sys.exit(0 if libc.syscall(SYS_REQUEST_KEY, b'user', b'em-carry', None, -4) >= 0 else 1)\n",
    ),
}

# Programs that pass only if they got past a limit or saw what they should not.
BREAKOUTS = {
    "becomes root in a user namespace of its own": LIBC + "sys.exit(0 if libc.unshare(0x10000000) == 0 else 1)\n",
    "mounts its own tmpfs past the disk limit": (
        "import subprocess, sys\nrun = subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c',"
        " 'mount -t tmpfs none /tmp && head -c 64000000 /dev/zero > /tmp/big && echo WROTE'],"
        " capture_output=True, text=True)\nsys.exit(0 if 'WROTE' in run.stdout else 1)\n"
    ),
    "holds memory in memfd files past memory_mb": (
        "import os, sys\nheld = 0\nfiles = []\ntry:\n    for i in range(48):\n"
        "        fd = os.memfd_create(f'hold{i}')\n        files.append(fd)\n"
        "        for _ in range(15):\n            os.write(fd, b'0' * (1 << 20))\n            held += 1\n"
        "except OSError as error:\n    print(held, error)\nsys.exit(0 if held > 512 else 1)\n"
    ),
    "sees top-level folders that are not on the allow-list": (
        "import os, sys\nallowed = {'bin', 'box', 'dev', 'lib', 'lib32', 'lib64', 'libx32', 'proc', 'sbin', 'tmp',"
        " 'usr'}\nextra = sorted(set(os.listdir('/')) - allowed)\nprint(extra)\n"
        "readable = os.path.exists('/etc/passwd') or os.path.exists('/work') or os.path.exists('{secret}')\n"
        "sys.exit(0 if extra or readable else 1)\n"
    ),
}


@pytest.fixture
def host_unchanged():
    """Nothing a grade did is left on the host: no sandbox process, no System V IPC object."""
    before = sysv_ipc_objects()
    yield
    time.sleep(0.2)
    assert sandbox_processes() == [], "a sandbox process outlived its run"
    assert sysv_ipc_objects() - before == set(), "a System V IPC object was left on the host"
    left = [folder for parent in hierarchies()[1] for folder in parent.glob("em-sandbox-*")]
    assert left == [], f"sandbox cgroups left behind: {left}"


@pytest.mark.parametrize("name", list(CARRIERS))
def test_a_grade_carries_nothing_to_the_next(name, host_unchanged):
    writer, reader = CARRIERS[name]
    run_untrusted(writer, FAST)
    found = run_untrusted(reader, FAST)
    assert not found.passed, f"{name}: the next grade read what the previous one left"


@pytest.mark.parametrize("name", list(BREAKOUTS))
def test_a_breakout_fails(name, host_unchanged):
    """The visibility case also looks for a secret in a top-level folder that was never on a deny-list (as root; as
    another user, in the temp folder)."""
    made = Path(f"/em-sandbox-visible-{os.getpid()}") if os.geteuid() == 0 else Path(tempfile.mkdtemp())
    made.mkdir(exist_ok=True)
    secret = made / "secret.txt"
    secret.write_text("TOP SECRET")
    try:
        result = run_untrusted(BREAKOUTS[name].replace("{secret}", str(secret)), FAST)
    finally:
        secret.unlink()
        made.rmdir()
    assert not result.passed, (name, result.stdout[-300:], result.stderr[-300:])
    assert "TOP SECRET" not in result.stdout


def test_a_candidate_cannot_end_a_check_early_with_stop_iteration(host_unchanged):
    """A check that loops over the candidate's results with ``map``: StopIteration re-raised from the candidate's
    call ended the loop, and ``all`` of nothing passed."""
    for test in (
        "def check(candidate):\n    assert all(map(lambda case: candidate(*case[0]) == case[1], "
        "[((2, 3), 5), ((10, 20), 30)]))\n",
        "def check(candidate):\n    for got, want in zip(map(lambda c: candidate(*c), [(2, 3), (1, 1)]), [5, 2]):\n"
        "        assert got == want\n",
    ):
        spec = json.dumps({"kind": "function", "entry_point": "add", "prompt": "def add(a, b):\n    pass\n",
                           "test": test})  # fmt: skip
        assert grade_code(spec, HONEST, FAST) == (True, "passed")
        for name in ("StopIteration", "StopAsyncIteration", "GeneratorExit"):
            passed, reason = grade_code(spec, f"def add(a, b):\n    raise {name}\n", FAST)
            assert passed is False, (name, reason)
            assert "CandidateRaised" in reason or name == "GeneratorExit"  # not an Exception: the candidate ends
    raising = json.dumps({"kind": "function", "entry_point": "div", "prompt": "def div(a, b):\n    pass\n",
                          "test": "def check(candidate):\n    try:\n        candidate(1, 0)\n"
                                  "    except ZeroDivisionError:\n        return\n    assert False\n"})  # fmt: skip
    assert grade_code(raising, "def div(a, b):\n    return a / b\n", FAST) == (True, "passed")  # ordinary: as is


def test_the_sandbox_works_wherever_tmpdir_points(monkeypatch, host_unchanged):
    """/mnt is a resource disk on many cloud machines; the old sandbox mounted its tmpfs over /mnt and every run
    failed there (code benchmarks then reported 0% without an error)."""
    try:
        folder = Path(tempfile.mkdtemp(prefix="em-tmpdir-", dir="/mnt"))
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="em-tmpdir-"))  # rootless: /mnt is not ours; any other folder then
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    try:
        assert run_untrusted("print(6 * 7)", FAST).stdout == "42\n"
        assert grade_code(SPEC, HONEST, FAST) == (True, "passed")
        assert list(folder.iterdir()) == []
    finally:
        os.rmdir(folder)


HOLDER = "import os, time\nfor _ in range(64):\n    try:\n        if os.fork() == 0:\n" \
         "            time.sleep(4)\n            os._exit(0)\n    except OSError:\n        break\n" \
         "time.sleep(4)\nraise SystemExit(1)\n"  # fmt: skip
NEEDS_PROCESSES = "import os\npids = [os.fork() or os._exit(0) for _ in range(8)]\nfor pid in pids:\n" \
                  "    os.waitpid(pid, 0)\nprint('ok')\n"  # fmt: skip


def test_a_sandbox_holding_its_process_limit_does_not_stop_another(host_unchanged):
    """Limits were per user: two candidates holding the process limit stopped a third, honest one from starting
    processes (under GRPO, failing your siblings raises your own score)."""
    results = {}

    def hold(index: int) -> None:
        results[index] = run_untrusted(HOLDER, FAST)

    holders = [threading.Thread(target=hold, args=(index,)) for index in range(2)]
    for thread in holders:
        thread.start()
    time.sleep(1.5)  # both hold their 16 processes now
    honest = run_untrusted(NEEDS_PROCESSES, FAST)
    for thread in holders:
        thread.join()
    assert honest.passed and honest.stdout == "ok\n", honest.stderr[-300:]
    assert not results[0].passed and not results[1].passed


def test_many_hostile_and_honest_candidates_at_once(host_unchanged):
    """Cost: about 10 s: 24 function grades at once through grade_many, eight hostile kinds run to their limits
    (process holders, memory and memfd bombs, IPC and keyring writers, a user namespace, a busy loop, a flood)."""
    hostile = [
        HOLDER,
        HOLDER,
        "x = []\nwhile True:\n    x.append(bytearray(50 << 20))\n",
        BREAKOUTS["holds memory in memfd files past memory_mb"],
        CARRIERS["System V shared memory"][0],
        CARRIERS["the user's kernel keyring"][0],
        BREAKOUTS["mounts its own tmpfs past the disk limit"],
        "while True:\n    pass\n",
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        "import os\nos.kill(-1, 9)\n",
        "def add(a, b):\n    return a - b\n",
        "import os\nos._exit(0)\n",
    ]
    honest = [HONEST, "def add(a, b):\n    return sum([a, b])\n"] * 6
    cases = [(SPEC, code) for pair in zip(hostile, honest, strict=True) for code in pair]
    limits = SandboxLimits(timeout_s=20, cpu_s=4, memory_mb=512, processes=16, disk_mb=16, output_kb=256)
    verdicts = grade_many(cases, limits, workers=len(cases))
    assert [passed for passed, _ in verdicts[1::2]] == [True] * len(honest), verdicts[1::2]
    assert [passed for passed, _ in verdicts[0::2]] == [False] * len(hostile), verdicts[0::2]


HOLD_TOGETHER = """
import os, sys, time
children = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        block = bytearray(300 << 20)  # within the 512 MiB address space of each process
        for offset in range(0, len(block), 4096):
            block[offset] = 1
        time.sleep(2)
        os._exit(0)
    children.append(pid)
held = all(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 for pid in children)
sys.exit(0 if held else 1)
"""


@pytest.mark.skipif(hierarchies()[0] == "none", reason="no memory cgroup can be made here (rootless, no delegation)")
def test_a_sandbox_cannot_hold_more_than_its_memory_across_processes(host_unchanged):
    """Cost: about 5 s (6 x 300 MiB touched, twice). The address-space limit is per process: six processes held
    1.8 GiB with memory_mb 512. The sandbox's cgroup counts them together (sandbox_memory_mb), and with room for
    them the same program passes, so it is the limit that stops it."""
    limits = SandboxLimits(timeout_s=20, memory_mb=512, sandbox_memory_mb=1024, processes=16)
    result = run_untrusted(HOLD_TOGETHER, limits)
    assert not result.passed and any(layer.startswith("cgroup-") for layer in result.isolation)
    roomy = SandboxLimits(timeout_s=20, memory_mb=512, sandbox_memory_mb=4096, processes=16)
    assert run_untrusted(HOLD_TOGETHER, roomy).passed
