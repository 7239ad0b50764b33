"""Hostile candidates in the sandbox: each is contained, scored as a failure, and leaves machine and caller intact."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from em_trainer.evaluation.sandbox import SandboxLimits, run_untrusted

FAST = SandboxLimits(timeout_s=5, cpu_s=3, memory_mb=512, processes=16)

HOSTILE = {
    "infinite loop": "while True:\n    pass\n",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "memory bomb": "x = []\nwhile True:\n    x.append(bytearray(50 * 1024 * 1024))\n",
    "huge file write": "with open('big.bin', 'wb') as f:\n    while True:\n        f.write(b'0' * (1 << 20))\n",
    "open a socket": "import socket\ns = socket.create_connection(('{host}', {port}), timeout=2)\ns.sendall(b'hi')\n",
    "read outside its directory": "print(open('{secret}').read())\n",
    "delete files in the home": "import os, shutil\nshutil.rmtree('{victim}')\nprint(os.path.exists('{victim}'))\n",
    "kill its parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill({caller}, signal.SIGKILL)\n",
}


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    yield server
    server.close()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_candidate_is_contained(name, listener, tmp_path):
    home = Path(os.path.expanduser("~"))
    victim = home / f"em-sandbox-victim-{os.getpid()}"
    victim.mkdir(exist_ok=True)
    (victim / "keep.txt").write_text("precious")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    code = HOSTILE[name].format(host="127.0.0.1", port=listener.getsockname()[1], secret=secret, victim=victim,
                                caller=os.getpid())  # fmt: skip
    started = time.time()
    try:
        result = run_untrusted(code, FAST)
        assert not result.passed, (name, result)
        assert time.time() - started < FAST.timeout_s + 10
        # The machine and the caller are intact.
        assert (victim / "keep.txt").read_text() == "precious"
        assert "TOP SECRET" not in result.stdout
        with pytest.raises(OSError):
            listener.accept()  # nothing reached our server
        assert not list(Path(".").glob("big.bin"))
    finally:
        for path in victim.glob("*"):
            path.unlink()
        victim.rmdir()
    # and the next candidate still runs
    assert run_untrusted("print('ok')", FAST).stdout == "ok\n"


def test_an_honest_candidate_passes_and_a_failing_one_fails():
    assert run_untrusted("assert sum([1, 2]) == 3\n").passed
    failing = run_untrusted("assert 1 == 2\n")
    assert not failing.passed and "AssertionError" in failing.stderr
