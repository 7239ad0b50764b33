"""The evaluation loop: grading, records, resume after an interruption, the comparison table and the sweep plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from em_trainer.cli import main
from em_trainer.decoding.generation import Completion, HFGenerator, SamplingSettings
from em_trainer.evaluation import evaluate_benchmark, load_benchmark, model_tag, summarize

FIXTURES = str(Path(__file__).resolve().parent / "fixtures" / "benchmarks")


class ScriptedGenerator:
    """Answers correctly on even problem indices and wrongly on odd ones; counts what it was asked."""

    identity = {"backend": "scripted", "model": {"name": "scripted"}}

    def __init__(self, rows, fail_after_calls=None):
        self.gold = {row["problem"]: (row["index"], row["gold"]) for row in rows}
        self.calls, self.prompts_seen, self.fail_after_calls = 0, [], fail_after_calls

    def generate(self, prompts, settings):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt
        self.calls += 1
        out = []
        for prompt in prompts:
            index, gold = next(v for k, v in self.gold.items() if k in prompt)
            self.prompts_seen.append(index)
            answer = gold if index % 2 == 0 else "-98765"
            out.append([Completion(f"Reasoning. \\boxed{{{answer}}}", [1, 2], "stop") for _ in range(settings.n)])
        return out


class PlainTokenizer:
    chat_template = None


def test_accuracy_records_and_summary(tmp_path):
    rows = load_benchmark("arithmetic", limit=10)
    generator = ScriptedGenerator(rows)
    result = evaluate_benchmark(
        generator, PlainTokenizer(), "my/model", "arithmetic", tmp_path, SamplingSettings(n=2), limit=10,
        chunk_size=4, progress=None,
    )  # fmt: skip
    assert (result.correct, result.total) == (10, 20)
    records = [
        json.loads(x)
        for x in next((tmp_path / "t").parent.rglob("records.jsonl")).read_text().splitlines()
    ]
    assert len(records) == 20
    assert {"prompt", "completion", "extracted", "correct", "gold", "finish_reason"} <= set(records[0])
    assert all(r["correct"] == (r["index"] % 2 == 0) for r in records)
    # Every problem answers one thing twice: one answer, no spread, confidence 1 and half of them wrong.
    assert result.pass_at_k == {1: 0.5, 2: 0.5}
    assert (result.distinct_answers, result.answer_entropy, result.majority_share) == (1.0, 0.0, 1.0)
    assert result.ece == pytest.approx(0.5) and result.reliability == [[0.9, 1.0, 20, 1.0, 0.5]]
    table = summarize([result], tmp_path)
    assert "arithmetic" in table and "50.0 (10/20)" in table
    assert "| 1.00 | 0.000 | 0.500 |" in table
    assert (tmp_path / "summary.md").is_file() and json.loads((tmp_path / "summary.json").read_text())


def test_interrupted_eval_resumes_without_recomputing(tmp_path):
    rows = load_benchmark("arithmetic", limit=12)
    settings = SamplingSettings()
    interrupted = ScriptedGenerator(rows, fail_after_calls=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate_benchmark(
            interrupted, PlainTokenizer(), "m", "arithmetic", tmp_path, settings, limit=12, chunk_size=4
        )
    records_path = next(tmp_path.rglob("records.jsonl"))
    assert len(records_path.read_text().splitlines()) == 8  # two chunks of 4 were written before the interruption
    with records_path.open("a") as handle:
        handle.write('{"index": 8, "sam')  # a torn line from a crash mid-write is dropped, not fatal
    resumed = ScriptedGenerator(rows)
    result = evaluate_benchmark(
        resumed, PlainTokenizer(), "m", "arithmetic", tmp_path, settings, limit=12, chunk_size=4
    )
    assert sorted(resumed.prompts_seen) == list(range(8, 12))  # only the unfinished problems were generated
    straight = evaluate_benchmark(
        ScriptedGenerator(rows), PlainTokenizer(), "m", "arithmetic", tmp_path / "straight", settings, limit=12,
        chunk_size=4,
    )  # fmt: skip
    assert (result.correct, result.total) == (straight.correct, straight.total) == (6, 12)


def test_amc23x8_repeats_each_problem_eight_times():
    rows = load_benchmark("amc23x8", data_dir=FIXTURES)
    assert len(rows) == 8 * len(load_benchmark("amc23", data_dir=FIXTURES))
    assert len({r["index"] for r in rows}) == len(rows)


def test_missing_local_benchmark_names_the_layout(tmp_path, capsys):
    code = main(["eval", "--model", "m", "--benchmarks", "math500", "--data-dir", str(tmp_path)])
    assert code == 2
    assert "test.jsonl" in capsys.readouterr().err
    assert main(["eval", "--benchmarks", "nope"]) == 2


def test_hf_generator_batches_and_finish_reasons(tiny_model_dir, tokenizer):
    generator = HFGenerator(tiny_model_dir, batch_size=2)
    prompts = ["Hi", "A longer prompt than the first", "Third"]
    settings = SamplingSettings(temperature=0.0, max_new_tokens=5, n=2)
    out = generator.generate(prompts, settings)
    assert len(out) == 3 and all(len(samples) == 2 for samples in out)
    for samples in out:
        for completion in samples:
            assert completion.finish_reason in ("stop", "length")
            assert len(completion.token_ids) <= 5
            assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)
    # Greedy decoding of one prompt does not depend on what else is in the batch (left padding is handled).
    alone = generator.generate([prompts[1]], settings)[0][0]
    assert alone.token_ids == out[1][0].token_ids


def test_eval_command_compares_models_and_sweeps_temperature(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        ["eval", "--model", tiny_model_dir, "--model", tiny_model_dir + "/", "--benchmarks", "arithmetic,gsm8k",
         "--data-dir", FIXTURES, "--limit", "3", "--max-new-tokens", "4", "--temperatures", "0,0.7",
         "--output-dir", str(out)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| model | T | arithmetic | gsm8k | average |" in printed
    assert (out / "temperature_sweep.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert {s["temperature"] for s in summary} == {0.0, 0.7}
    assert len(list(out.glob(f"{model_tag(tiny_model_dir)}-*/t0.7/gsm8k-*/records.jsonl"))) == 1


@pytest.mark.parametrize("verb", ["eval", "select", "generate"])
def test_vllm_enforce_eager_flag_reaches_the_engine_settings(verb):
    """`--vllm_enforce_eager` becomes vLLM's ``enforce_eager`` (tests/test_vllm.py runs it on the real engine)."""
    import importlib

    from em_trainer.cli.common import generator_kwargs

    parser = importlib.import_module(f"em_trainer.cli.{verb}").build_parser()
    required = {"eval": [], "select": ["--pool", "p.jsonl"], "generate": ["--prompt", "hi"]}[verb]
    required += ["--backend", "vllm"]
    eager = generator_kwargs(parser.parse_args([*required, "--vllm_enforce_eager"]))["vllm_kwargs"]
    assert eager["enforce_eager"] is True and eager["max_model_len"] == 4096
    assert "enforce_eager" not in generator_kwargs(parser.parse_args(required))["vllm_kwargs"]
