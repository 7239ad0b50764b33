"""Code benchmarks: pass@k against a brute-force reference, programs graded in the sandbox, fixtures in Hub layouts,
the code reward, and self-consistency (majority vote)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from em_trainer.evaluation.benchmarks import load_benchmark
from em_trainer.evaluation.code_tasks import (
    code_reward,
    extract_code,
    grade_code,
    humaneval_path,
    read_jsonl_any,
)
from em_trainer.evaluation.evaluate import majority_vote_accuracy
from em_trainer.evaluation.sample_metrics import pass_at_k

FIXTURES = str(Path(__file__).parent / "fixtures" / "benchmarks")


@pytest.mark.parametrize(("n", "c", "k"), [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 3, 6), (8, 1, 4), (4, 4, 2)])
def test_pass_at_k_equals_the_share_of_k_subsets_with_a_pass(n, c, k):
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    reference = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(reference)


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    raw = read_jsonl_any(humaneval_path())
    rows = load_benchmark("humaneval", limit=4)
    assert len(read_jsonl_any(humaneval_path())) == 164 and len(rows) == 4
    for source, row in zip(raw, rows, strict=False):
        body_only = source["canonical_solution"]  # what a completion of the prompt looks like
        whole = f"```python\n{source['prompt']}{source['canonical_solution']}```"  # a chat model's whole function
        assert grade_code(row["gold"], body_only)[0], source["task_id"]
        assert grade_code(row["gold"], whole)[0], source["task_id"]
        assert not grade_code(row["gold"], "    return None\n")[0], source["task_id"]


def test_livecodebench_and_leetcode_fixtures_in_hub_layout():
    lcb = load_benchmark("livecodebench", FIXTURES)
    assert len(lcb) == 2 and json.loads(lcb[0]["gold"])["kind"] == "stdio"
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert grade_code(lcb[0]["gold"], good)[0]
    assert not grade_code(lcb[0]["gold"], "print(3)")[0]  # passes the first test only
    assert grade_code(lcb[1]["gold"], "print(input()[::-1])")[0]
    leet = load_benchmark("leetcode", FIXTURES)
    solution = json.loads((Path(FIXTURES) / "leetcode" / "test.jsonl").read_text().splitlines()[0])["completion"]
    assert grade_code(leet[0]["gold"], f"```python\n{solution}```")[0]
    wrong = "class Solution:\n    def twoSum(self, nums, target):\n        return []\n"
    assert not grade_code(leet[0]["gold"], wrong)[0]


def test_code_reward_runs_tests_in_the_sandbox():
    gold = load_benchmark("livecodebench", FIXTURES)[1]["gold"]
    rewards = code_reward(["print(input()[::-1])", [{"role": "assistant", "content": "print('x')"}], "x"],
                          [gold, gold, None])  # fmt: skip
    assert rewards == [1.0, 0.0, None]


def test_extract_code_takes_the_last_block():
    assert extract_code("a\n```python\nx = 1\n```\ntext\n```python\ny = 2\n```") == "y = 2\n"
    assert extract_code("plain") == "plain"


def test_majority_vote_accuracy_against_a_hand_count():
    def rec(answer, correct):
        return {"extracted": answer, "correct": correct}

    groups = [
        [rec("4", True), rec("4", True), rec("5", False)],  # majority 4: right
        [rec("7", False), rec("7", False), rec("6", True)],  # majority 7: wrong, though one sample was right
        [rec(None, False), rec(None, False), rec("2", True)],  # only one voter: right
        [rec(None, False), rec(None, False)],  # no answer: wrong
    ]
    assert majority_vote_accuracy(groups) == pytest.approx(2 / 4)


def test_ugphysics_fixture_in_hub_layout_with_numeric_tolerance():
    from em_trainer.evaluation.scoring import grade_with_tolerance

    rows = load_benchmark("ugphysics", FIXTURES)
    assert [r["gold"] for r in rows] == ["19.6", "3", "C", "\\frac{1}{2} m v^{2}"]
    assert "units of $\\mathrm{m}$" in rows[0]["problem"]
    assert grade_with_tolerance(rows[0]["gold"], "The ball falls \\boxed{19.6} m.").correct
    assert grade_with_tolerance(rows[0]["gold"], "So h = \\boxed{19.62}").correct  # within 1% (rounding)
    assert not grade_with_tolerance(rows[0]["gold"], "\\boxed{21}").correct
    assert grade_with_tolerance(rows[1]["gold"], "\\boxed{3.0 \\, \\mathrm{m/s^2}}").correct
    assert grade_with_tolerance(rows[2]["gold"], "The answer is \\boxed{C}").correct
    assert grade_with_tolerance(rows[3]["gold"], "\\boxed{\\frac{m v^2}{2}}").correct


def test_eval_cli_runs_humaneval_and_majority_vote(tiny_model_dir, tmp_path, capsys):
    from em_trainer.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", tiny_model_dir, "--benchmarks", "humaneval", "--limit", "2",
                 "--max_new_tokens", "8", "--output_dir", str(out)]) == 0  # fmt: skip
    result = json.loads((out / "summary.json").read_text())[0]["benchmarks"]["humaneval"]
    assert result["total"] == 2 and result["pass_at_k"] == {"1": 0.0}  # a random tiny model passes nothing
    assert "pass@k" in capsys.readouterr().out
    assert main(["eval", "--model", tiny_model_dir, "--benchmarks", "arithmetic", "--limit", "2", "--majority", "3",
                 "--temperature", "0.7", "--max_new_tokens", "6", "--output_dir", str(out)]) == 0  # fmt: skip
    majority = json.loads((out / "summary.json").read_text())[0]["benchmarks"]["arithmetic"]
    assert majority["samples_per_problem"] == 3 and majority["majority_accuracy"] is not None
    assert majority["tokens_per_problem"] > 0
    assert main(["eval", "--model", tiny_model_dir, "--benchmarks", "arithmetic", "--majority", "3"]) == 2
    assert "--temperature > 0" in capsys.readouterr().err
