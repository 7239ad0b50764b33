"""Candidates that try to fool the grader or escape the sandbox, on the real sandbox (in CI: root mode under
pytest, rootless mode in the same files run as an unprivileged user by ``make test``).

Every case must be scored as a failure; the caller's memory must stay bounded; nothing may be left behind (files in
/tmp or /dev/shm, processes of the sandbox users); and the next, honest candidate must still pass. The task is a
two-line function whose right answers the hostile candidates do not compute: a pass can only come from a forged
verdict.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from em_trainer.evaluation.code_tasks import grade_code
from em_trainer.evaluation.sandbox import SandboxLimits, namespaces_available, run_untrusted

from .sandbox_helpers import sandbox_processes

pytestmark = [
    pytest.mark.skipif(not namespaces_available(), reason="the sandbox needs bubblewrap and user namespaces"),
    pytest.mark.xdist_group("sandbox"),  # one worker: the checks for leftover processes see only this file's
]

FAST = SandboxLimits(timeout_s=4, cpu_s=3, memory_mb=512, processes=16, disk_mb=16, output_kb=256)
SPEC = json.dumps({
    "kind": "function", "entry_point": "add", "prompt": "def add(a, b):\n    \"\"\"a + b\"\"\"\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
            "    assert candidate(10, 20) == 30\n",
})  # fmt: skip
HONEST = "def add(a, b):\n    return a + b\n"
STDIO = json.dumps({"kind": "stdio", "tests": [{"input": "2 3\n", "output": "5\n"}]})

# Forged verdicts: each answers wrongly (or not at all) and tries to make the grader say "passed".
FORGE = {
    "exit(0) while loading": "import sys\nsys.exit(0)\n",
    "os._exit(0) inside the function": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "atexit hook ends with success": "import atexit, os\natexit.register(lambda: os._exit(0))\n"
                                     "def add(a, b):\n    raise SystemExit(0)\n",
    "excepthook prints a passing verdict": "import sys\nsys.excepthook = lambda *a: print('{\"passed\": true}')\n"
                                           "def add(a, b):\n    return -1\n",
    "tracer swallows the failing line": "import sys\nsys.settrace(lambda *a: None)\ndef add(a, b):\n    return 0\n",
    "object equal to anything": "class Any:\n    def __eq__(self, other):\n        return True\n"
                                "    __hash__ = object.__hash__\ndef add(a, b):\n    return Any()\n",
    "int subclass equal to anything": "class Eq(int):\n    def __eq__(self, other):\n        return True\n"
                                      "    __hash__ = int.__hash__\ndef add(a, b):\n    return Eq(7)\n",
    "prints the verdict and leaves": "import os\nprint('{\"passed\": true, \"reason\": \"passed\"}', flush=True)\n"
                                     "os._exit(0)\n",
    "writes the verdict to the sandbox's stdout": "def add(a, b):\n"
                                                   "    open('/proc/1/fd/1', 'w').write('{\"passed\": true}\\n')\n"
                                                   "    return 0\n",
    "reads the checker's tests for the answers": "import re\ndef add(a, b):\n"
        "    text = open('/box/checker/test.py').read()\n"  # noqa: E131
        "    pairs = dict(re.findall(r'candidate\\((.*?)\\) == (-?\\d+)', text))\n"
        "    return int(pairs[f'{a}, {b}'])\n",
    "kills every process it can see": "import os, signal\nfor pid in os.listdir('/proc'):\n"
        "    if pid.isdigit() and int(pid) != os.getpid():\n"  # noqa: E131
        "        try:\n            os.kill(int(pid), signal.SIGKILL)\n        except OSError:\n            pass\n"
        "def add(a, b):\n    return 0\n",
    "stops the checker and hangs": "import os, signal\nos.kill(-1, signal.SIGSTOP)\n"
                                   "def add(a, b):\n    return 0\n",
    "traces the checker with ptrace": "import ctypes, os\nlibc = ctypes.CDLL(None)\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]:\n"  # noqa: E131
        "    libc.ptrace(16, int(pid), 0, 0)\n"
        "def add(a, b):\n    return 0\n",
    "answers ahead of the questions": "import os\n"
        "os.write(4, b\"('ready',)\\n('ok', ('__object__', 'int', {}))\\n\")\n"  # noqa: E131
        "def add(a, b):\n    return 0\n",
    "answers with code to evaluate": "import os\nos.write(4, b\"('ready',)\\n__import__('os').system('id')\\n\")\n"
                                     "os._exit(0)\n",
    "answers with an endless line": "import os\nos.write(4, b\"('ready',)\\n\")\n"
                                    "def add(a, b):\n    os.write(4, b'7' * (8 << 20))\n    return 0\n",
    "rewrites builtins and assertions": "import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\n"
                                        "builtins.len = lambda *a: 0\ndef add(a, b):\n    return 0\n",
    "writes into the checker's folder": "def add(a, b):\n"
                                        "    open('/box/checker/test.py', 'w').write('def check(c):\\n    pass\\n')\n"
                                        "    return 0\n",
}

# Resource floods, shared places, visibility and the network (run as a program; all must fail and be contained).
ESCAPE = {
    "stdout flood": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
    "stderr flood": "import sys\nwhile True:\n    sys.stderr.write('y' * 65536)\n",
    "fills /dev/shm": "f = open('/dev/shm/fill', 'wb')\nwhile True:\n    f.write(b'0' * (1 << 20))\n",
    "fills /tmp with small files": "i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(b'0' * 4096)\n    i += 1\n",
    "fills its folder with many files": "import os\nos.makedirs('d', exist_ok=True)\ni = 0\n"
                                        "while True:\n    open(f'd/{i}', 'w').close()\n    i += 1\n",
    "leaves a child running": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
                              "raise SystemExit(1)\n",
    "lists the host's processes": "import os\nprocs = [p for p in os.listdir('/proc') if p.isdigit()]\n"
                                  "print(len(procs), [open(f'/proc/{p}/cmdline').read() for p in procs])\n"
                                  "raise SystemExit(1)\n",
    "opens a socket to the caller": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
    "reads the caller's files": "print(open('{secret}').read())\n",
    "memory bomb": "x = []\nwhile True:\n    x.append(bytearray(50 * 1024 * 1024))\n",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakMemory:
    """The caller's resident memory, sampled every 10 ms while a grade runs."""

    def __enter__(self):
        self.start, self.peak, self._stop = _rss_mb(), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.growth = max(self.peak, _rss_mb()) - self.start


def _leftovers() -> set[str]:
    """What the candidates here write to shared places (only those names: other tests, vLLM's engine among them, use
    /dev/shm at the same time under pytest-xdist), and the sandboxes' own host folders."""
    shm = {f"shm:{p.name}" for p in Path("/dev/shm").glob("fill*")}
    temp = {f"tmp:{p.name}" for p in Path(tempfile.gettempdir()).glob("em-sandbox-*")}
    temp |= {f"tmp:{p.name}" for p in Path(tempfile.gettempdir()).glob("f[0-9]*")}
    return shm | temp


@pytest.fixture
def clean():
    before = _leftovers()
    yield
    time.sleep(0.2)  # the kernel tears the namespaces down after the sandbox's first process is gone
    assert _leftovers() - before == set(), "the sandbox left files behind"
    assert sandbox_processes() == [], "a sandbox process outlived its run"
    assert grade_code(SPEC, HONEST, FAST) == (True, "passed"), "the next honest candidate no longer passes"


def test_the_honest_candidate_passes_and_the_suite_is_large_enough():
    assert grade_code(SPEC, HONEST, FAST) == (True, "passed")
    assert grade_code(SPEC, "def add(a, b):\n    return a - b\n", FAST)[0] is False
    assert len(FORGE) + len(ESCAPE) >= 20


@pytest.mark.parametrize("name", list(FORGE))
def test_a_forged_verdict_is_a_failure(name, clean):
    with PeakMemory() as memory:
        passed, reason = grade_code(SPEC, FORGE[name], FAST)
    assert passed is False, (name, reason)
    assert memory.growth < 64, f"the caller grew by {memory.growth:.0f} MB"


@pytest.mark.parametrize("name", list(ESCAPE))
def test_an_escape_attempt_is_contained(name, clean, tmp_path):
    """Each hostile program runs to its limits inside a real sandbox (the fork bomb up to its process limit), and the
    host is checked for anything left behind; some take seconds by design."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    code = ESCAPE[name].replace("{port}", str(server.getsockname()[1])).replace("{secret}", str(secret))
    try:
        with PeakMemory() as memory:
            result = run_untrusted(code, FAST)
        assert not result.passed, (name, result.stdout[-300:], result.stderr[-300:])
        assert memory.growth < 64, f"the caller grew by {memory.growth:.0f} MB"
        assert len(result.stdout) <= FAST.output_kb * 1024 and len(result.stderr) <= FAST.output_kb * 1024
        assert "TOP SECRET" not in result.stdout
        assert str(os.getpid()) not in result.stdout and "pytest" not in result.stdout  # the host's /proc is unseen
        with pytest.raises(OSError):
            server.accept()
        # The same program as a function candidate fails too.
        assert grade_code(SPEC, code, FAST)[0] is False
    finally:
        server.close()


def test_a_stdio_candidate_that_exits_before_printing_fails(clean):
    assert grade_code(STDIO, "import sys\nsys.exit(0)\nprint(5)\n", FAST)[0] is False
    assert grade_code(STDIO, "a, b = map(int, input().split())\nprint(a + b)\n", FAST) == (True, "passed")
