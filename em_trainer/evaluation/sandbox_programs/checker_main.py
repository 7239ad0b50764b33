"""The checker's side: run the dataset's tests (``test.py``: the task's prompt code and its ``check``) against a
stand-in for the candidate's function that forwards each call over the pipe and returns the plain value that comes
back. Runs as its own user, in its own process: nothing the candidate does (exiting early, hooking exit or exceptions,
tracing, returning objects with a custom ``__eq__``, reading files) reaches this process. Prints one JSON verdict."""

import builtins
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # python -I leaves the script's folder out
import codec  # noqa: E402

answers, requests = codec.channel()  # answers in, requests out
namespace = {"__name__": "checker"}


class CandidateLost(Exception):
    """The candidate ended, or answered with something that is not a message."""


def receive():
    try:
        return codec.loads(answers.readline(codec.LIMIT), namespace)
    except (EOFError, SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as error:
        raise CandidateLost(f"no valid answer from the candidate ({type(error).__name__})") from None


class CandidateRaised(BaseException):
    """The candidate raised an exception the check may not see as itself. A ``BaseException``, so that no
    ``except Exception`` in a check swallows it: it ends the check as a failure."""


# Exceptions that steer control flow rather than report an error: re-raised in the check, StopIteration would end a
# loop over the candidate's results (``map``, ``iter``, ``next`` with a default) early, as if every case had passed.
CONTROL_FLOW = (StopIteration, StopAsyncIteration, GeneratorExit, SystemExit, KeyboardInterrupt)


def exception(name, message):
    """The candidate's exception as the check would see it from a local call: an ordinary built-in error is raised
    as itself (checks test ``raises ValueError``), anything else as ``CandidateRaised``."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, CONTROL_FLOW):
        return cls(message)
    return CandidateRaised(f"{name}: {message}")


class Candidate:
    def __call__(self, *args, **kwargs):
        requests.write(codec.dumps((list(args), kwargs)))
        requests.flush()
        reply = receive()
        if type(reply) is tuple and reply and reply[0] == "ok" and len(reply) == 2:
            return reply[1]
        if type(reply) is tuple and len(reply) == 3 and reply[0] == "raise":
            raise exception(str(reply[1]), str(reply[2]))
        raise CandidateLost(f"the candidate answered {str(reply)[:100]}")


def verdict(passed, reason):
    sys.stdout.write(json.dumps({"passed": passed, "reason": reason[:300]}) + "\n")
    sys.stdout.flush()
    sys.exit(0)


try:
    hello = receive()
    if hello != ("ready",):
        verdict(False, f"the candidate did not load: {str(hello)[:200]}")
    with open("test.py", encoding="utf-8") as handle:
        code = compile(handle.read(), "test.py", "exec")
    exec(code, namespace)  # the dataset's own tests, in the checker's sandboxed process
    candidate = Candidate()
    with open("entry.txt", encoding="utf-8") as handle:
        entry = handle.read().strip()
    if entry.isidentifier():
        namespace[entry] = candidate  # tests that call the function by its name (HumanEval/33) reach the candidate
    namespace["check"](candidate)
except AssertionError:
    where = traceback.extract_tb(sys.exc_info()[2])[-1]
    verdict(False, f"assertion failed: {where.line}")
except (Exception, CandidateRaised) as error:  # noqa: BLE001 - every other failure is a failed test, with its reason
    verdict(False, f"{type(error).__name__}: {error}")
verdict(True, "passed")
