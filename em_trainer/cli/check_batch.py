"""``python -m em_trainer.cli.check_batch RESULTS.json < ARGVS.json``: several ``em-trainer train --check`` in one
process (what a sweep or study runs before its first training run).

A check itself takes milliseconds; the interpreter's start-up and imports take seconds (about 9 s on a 2-core CPU),
so N checks as N processes cost N start-ups where this costs one. Each check runs through ``em-trainer``'s own
``main`` with its output captured, exactly as the command would print it; the results (return code, stdout, stderr
per check, in order) go to the file named on the command line, not to stdout, which the checks themselves print to.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys


def run_checks(argvs: list[list[str]]) -> list[dict[str, object]]:
    from . import main

    results = []
    for argv in argvs:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except Exception as error:  # noqa: BLE001 - reported as that check's failure, the others still run
                print(f"em-trainer train: error: {type(error).__name__}: {error}", file=sys.stderr)
                code = 1
        results.append({"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
    return results


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m em_trainer.cli.check_batch RESULTS.json < ARGVS.json")
    argvs = json.load(sys.stdin)
    with open(sys.argv[1], "w", encoding="utf-8") as handle:
        json.dump(run_checks(argvs), handle)
