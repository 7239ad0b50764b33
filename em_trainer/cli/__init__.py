"""The ``em-trainer`` command: one module per verb (like ``trl/scripts/``), one error handler, a generated usage.

Each verb module has ``HELP`` (one line), ``build_parser()`` and ``main(argv) -> int``.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
import threading

VERBS = ("train", "select", "generate", "eval", "analyze", "sweep", "study", "env")


def _verb(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def usage() -> str:
    """The top-level usage, generated from the verbs' own help lines."""
    lines = ["usage: em-trainer <command> [options]   (em-trainer --version: the installed version)", "",
             "commands:"]
    lines += [f"  {name:<9} {_verb(name).HELP}" for name in VERBS]
    lines += ["", "`em-trainer <command> --help` lists a command's options: snake_case flags, or the same keys in a",
              "YAML given with --config (TrlParser's dialect, flags winning over the file). With no options,",
              "`em-trainer train` runs the paper's recipe on the embedded default model (SmolLM2-135M-Instruct) and",
              "the paper's one-shot prompt."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("--version", "-V"):
        print(f"em-trainer {__version__()}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in VERBS:
        print(f"em-trainer: unknown command '{command}'.\n\n{usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    from .common import USER_ERRORS

    previous = signal.signal(signal.SIGTERM, _interrupt) if _in_main_thread() else None
    try:
        return _verb(command).main(rest)
    except USER_ERRORS as error:
        print(f"em-trainer {command}: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:
        # argparse refuses a flag in one line and exits; the status is returned like every other refusal's.
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    except KeyboardInterrupt:
        # Progress files are appended unit by unit and checkpoints written atomically: nothing finished is lost.
        print(
            f"em-trainer {command}: interrupted. Finished work is saved; run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def __version__() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("em-trainer")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "unknown (not installed)"


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (what schedulers and `kill` send) stops a job like Ctrl-C does."""
    raise KeyboardInterrupt


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


__all__ = ["VERBS", "main", "usage"]
