"""Prompt selection by pass@k variance: statistics against a reference, ranking, resume, bad rows, label-free mode."""

from __future__ import annotations

import json

import pytest

from em_trainer.cli import main
from em_trainer.decoding.generation import Completion
from em_trainer.evaluation.selection import SelectionError, majority_agreement, select_prompts


class PlainTokenizer:
    chat_template = None


class FakeGenerator:
    """Returns scripted answers per problem (cycled), with a scripted response length."""

    identity = {"backend": "scripted", "model": {"name": "scripted"}}

    def __init__(self, answers: dict[str, list[str]], lengths: dict[str, int] | None = None, fail_after=None):
        self.answers, self.lengths = answers, lengths or {}
        self.calls, self.fail_after, self.problems_seen = 0, fail_after, []

    def generate(self, prompts, settings):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        out = []
        for prompt in prompts:
            problem = next(p for p in self.answers if p in prompt)
            self.problems_seen.append(problem)
            script = self.answers[problem]
            length = self.lengths.get(problem, 10)
            out.append(
                [Completion(f"so \\boxed{{{script[i % len(script)]}}}", [0] * length) for i in range(settings.n)]
            )
        return out


POOL = [
    {"problem": "P0: 1+1?", "answer": "2"},  # 4/4 right: variance 0
    {"problem": "P1: 2+2?", "answer": "4"},  # 2/4: variance 0.25, long responses
    {"problem": "P2: 3+3?", "answer": "6"},  # 1/4: variance 0.1875
    {"problem": "P3: 4+4?", "answer": "8"},  # 2/4: variance 0.25, short responses -> rank 1
    {"problem": "P4: 5+5?", "answer": "10"},  # 0/4: variance 0
    {"problem": "P5: 6+6?", "answer": "12"},  # 3/4: variance 0.1875, tie with P2 broken by length
]
SCRIPT = {
    "P0": ["2"],
    "P1": ["4", "5"],
    "P2": ["6", "0", "0", "0"],
    "P3": ["8", "1"],
    "P4": ["0"],
    "P5": ["12", "12", "12", "1"],
}
LENGTHS = {"P1": 30, "P3": 5, "P2": 20, "P5": 8}


def fake(**kwargs):
    answers = {row["problem"]: SCRIPT[row["problem"][:2]] for row in POOL}
    lengths = {row["problem"]: LENGTHS.get(row["problem"][:2], 10) for row in POOL}
    return FakeGenerator(answers, lengths, **kwargs)


def reference_ranking(k: int = 4) -> list[int]:
    stats = []
    for index, row in enumerate(POOL):
        script = SCRIPT[row["problem"][:2]]
        samples = [script[i % len(script)] for i in range(k)]
        p = sum(s == row["answer"] for s in samples) / k
        stats.append((-(p * (1 - p)), abs(p - 0.5), LENGTHS.get(row["problem"][:2], 10), index))
    return [s[3] for s in sorted(stats)]


def test_variance_and_ranking_match_reference(tmp_path):
    result = select_prompts(fake(), PlainTokenizer(), POOL, tmp_path / "sel.jsonl", k=4, top=2, progress=False)
    assert [s.index for s in result.ranking] == reference_ranking() == [3, 1, 5, 2, 0, 4]
    by_index = {s.index: s for s in result.ranking}
    assert by_index[3].pass_rate == 0.5 and by_index[3].variance == 0.25
    assert by_index[2].pass_rate == 0.25 and by_index[2].variance == pytest.approx(0.1875)
    written = [json.loads(x) for x in (tmp_path / "sel.jsonl").read_text().splitlines()]
    assert [w["pool_index"] for w in written] == [3, 1]
    assert written[0]["problem"] == "P3: 4+4?" and written[0]["answer"] == "8" and written[0]["variance"] == 0.25
    report = (tmp_path / "sel.report.md").read_text()
    assert report.count("\n| ") >= 7  # header + 6 ranked rows


def test_resume_gives_the_same_result(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        select_prompts(
            fake(fail_after=2), PlainTokenizer(), POOL, tmp_path / "a.jsonl", k=4, batch_size=2, progress=False
        )
    resumed_generator = fake()
    resumed = select_prompts(
        resumed_generator, PlainTokenizer(), POOL, tmp_path / "a.jsonl", k=4, batch_size=2, progress=False
    )
    assert sorted(resumed_generator.problems_seen) == ["P4: 5+5?", "P5: 6+6?"]  # only what was not done
    straight = select_prompts(fake(), PlainTokenizer(), POOL, tmp_path / "b.jsonl", k=4, batch_size=2, progress=False)
    assert [(s.index, s.num_correct) for s in resumed.ranking] == [(s.index, s.num_correct) for s in straight.ranking]
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_bad_rows_are_reported_not_fatal(tmp_path):
    pool = POOL + [{"problem": "no answer here"}, {"problem": "odd", "answer": "???"}, {"question_text": "x"}]
    result = select_prompts(fake(), PlainTokenizer(), pool, tmp_path / "s.jsonl", k=4, progress=False)
    reasons = {b["index"]: b["reason"] for b in result.bad_rows}
    assert set(reasons) == {6, 7, 8}
    assert reasons[6] == "missing answer" and "unparseable" in reasons[7] and "no problem column" in reasons[8]
    assert "Bad rows (3)" in result.report.read_text()
    assert len(result.ranking) == 6
    with pytest.raises(SelectionError, match="labels none"):
        select_prompts(fake(), PlainTokenizer(), [{"problem": "x"}], tmp_path / "t.jsonl", k=4, progress=False)


def test_label_free_mode_uses_majority_agreement(tmp_path):
    unlabeled = [{"problem": row["problem"]} for row in POOL]
    result = select_prompts(
        fake(), PlainTokenizer(), unlabeled, tmp_path / "s.jsonl", k=4, labels="none", progress=False
    )
    by_index = {s.index: s for s in result.ranking}
    assert by_index[0].pass_rate == 1.0  # all four agree
    assert by_index[2].pass_rate == 0.75  # majority "0": 3 of 4
    assert by_index[1].pass_rate == 0.5  # 4,5,4,5: tie, first-seen answer wins
    assert majority_agreement(["1", None, "1.0", "2"]) == [True, False, True, False]  # 1 and 1.0 are one answer
    assert majority_agreement([None, None]) == [False, False]


def test_selected_file_trains(tmp_path, tiny_model_dir):
    select_prompts(fake(), PlainTokenizer(), POOL, tmp_path / "sel.jsonl", k=4, top=1, progress=False)
    code = main(
        ["train", "--model", tiny_model_dir, "--dataset", str(tmp_path / "sel.jsonl"),
         "--output_dir", str(tmp_path / "m"), "--max_steps", "1", "--responses_per_step", "2",
         "--max_completion_length", "4", "--report_to", "none"]
    )  # fmt: skip
    assert code == 0 and (tmp_path / "m" / "model.safetensors").is_file()
