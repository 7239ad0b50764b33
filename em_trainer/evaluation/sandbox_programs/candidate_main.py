"""The candidate's side: load ``solution.py``, then answer each call request with the plain value its function
returns (or the exception it raised). Runs as the candidate's user; everything here is in the candidate's power,
which is why the verdict is not taken here."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # python -I leaves the script's folder out
import codec  # noqa: E402

requests, answers = codec.channel()  # requests in, answers out
namespace = {"__name__": "solution"}


def send(message):
    answers.write(codec.dumps(message))
    answers.flush()


try:
    with open("solution.py", encoding="utf-8") as handle:
        code = compile(handle.read(), "solution.py", "exec")
    exec(code, namespace)  # inside the sandbox, as the candidate's user: this is the candidate running
    with open("entry.txt", encoding="utf-8") as handle:
        target = eval(handle.read(), namespace)
except BaseException as error:  # noqa: BLE001 - any failure to load is reported to the checker, then we stop
    send(("setup-error", type(error).__name__, str(error)[:300]))
    sys.exit(1)
send(("ready",))
while True:
    line = requests.readline(codec.LIMIT)
    if not line:
        break
    args, kwargs = codec.loads(line, namespace)
    try:
        result = ("ok", target(*args, **kwargs))
    except Exception as error:  # noqa: BLE001 - the checker decides what an exception means for the test
        result = ("raise", type(error).__name__, str(error)[:300])
    try:
        send(result)
    except (TypeError, ValueError, RecursionError) as error:
        send(("unsendable", type(error).__name__, str(error)[:300]))
