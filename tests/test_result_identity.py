"""One identity per result: eval records, select progress, sweep runs and study measurements are stored under a
fingerprint of all that determines them; a changed setting recomputes and says so, an identical rerun resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from em_trainer.cli import main
from em_trainer.data.identity import changed_fields, directory_identity, fingerprint, model_identity

FIXTURES = Path(__file__).parent / "fixtures"


def _eval(model: str, out: Path, *extra: str) -> int:
    return main(["eval", "--model", model, "--benchmarks", "arithmetic", "--limit", "2", "--output_dir", str(out),
                 "--batch_size", "2", *extra])  # fmt: skip


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())[0]["benchmarks"]["arithmetic"]


def test_eval_rerun_with_another_max_new_tokens_recomputes_and_an_identical_one_resumes(tiny_model_dir, tmp_path,
                                                                                        capsys):  # fmt: skip
    out = tmp_path / "ev"
    assert _eval(tiny_model_dir, out, "--max_new_tokens", "2") == 0
    assert _summary(out)["tokens_per_problem"] <= 2
    capsys.readouterr()
    assert _eval(tiny_model_dir, out, "--max_new_tokens", "6") == 0
    printed = capsys.readouterr().out
    assert "not reusing" in printed and "max_new_tokens: 2 -> 6" in printed
    # The tiny random model never stops early, so the budget shows in the numbers: nothing came from the first run.
    assert _summary(out)["tokens_per_problem"] == 6
    folders = sorted(out.glob("*/t0/arithmetic-*"))
    assert len(folders) == 2 and all((f / "identity.json").is_file() for f in folders)

    records = next(f for f in folders if json.loads((f / "identity.json").read_text())["sampling"]["max_new_tokens"]
                   == 6) / "records.jsonl"  # fmt: skip
    before = records.read_text()
    assert _eval(tiny_model_dir, out, "--max_new_tokens", "6") == 0
    assert "not reusing" not in capsys.readouterr().out
    assert records.read_text() == before  # resumed: nothing generated again


@pytest.mark.parametrize(
    "flag",
    [["--top_k", "5", "--temperature", "0.7"], ["--system_prompt", ""], ["--dtype", "bfloat16"], ["--seed", "3"]],
)
def test_each_setting_enters_the_identity(tiny_model_dir, tmp_path, flag):
    out = tmp_path / "ev"
    base = ["--max_new_tokens", "2"] + (["--temperature", "0.7"] if "--top_k" in flag else [])
    assert _eval(tiny_model_dir, out, *base) == 0
    assert _eval(tiny_model_dir, out, "--max_new_tokens", "2", *flag) == 0
    assert len(list(out.glob("*/t*/arithmetic-*/identity.json"))) == 2


def test_models_whose_paths_end_alike_do_not_share_records(tiny_model_dir, tmp_path):
    for name, seed in (("a", 1), ("b", 2)):
        target = tmp_path / name / "outputs" / "run"
        shutil.copytree(tiny_model_dir, target)
        model = AutoModelForCausalLM.from_pretrained(target)
        torch.manual_seed(seed)
        with torch.no_grad():
            model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
        model.save_pretrained(target)
    out = tmp_path / "ev"
    for name in ("a", "b"):
        assert _eval(str(tmp_path / name / "outputs" / "run"), out, "--max_new_tokens", "2") == 0
    assert len(list(out.glob("outputs--run-*"))) == 2


def test_model_identity_follows_the_weights_not_the_name(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert directory_identity(copy)["weights"] == directory_identity(tiny_model_dir)["weights"]
    model = AutoModelForCausalLM.from_pretrained(copy)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1.0  # one weight in the middle of the file
    model.save_pretrained(copy)
    assert directory_identity(copy)["weights"] != directory_identity(tiny_model_dir)["weights"]
    assert directory_identity(copy) != directory_identity(tiny_model_dir)
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert model_identity("Qwen/Qwen2.5-Math-7B", commit)["commit"] == commit
    assert changed_fields({"a": {"b": 1}, "c": 2}, {"a": {"b": 3}, "c": 2}) == ["a.b: 1 -> 3"]


def _check_fingerprint(capsys, *args: str) -> str:
    assert main(["train", "--check", *args]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "run fingerprint:" in x)
    return line.rsplit(" ", 1)[1]


def test_train_fingerprint_covers_the_resolved_config_but_not_where_it_goes(tiny_model_dir, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {tiny_model_dir}\nlearning_rate: 1.0e-5\n")
    common = ["--config", str(config), "--output_dir"]
    first = _check_fingerprint(capsys, *common, str(tmp_path / "a"), "--seed", "1")
    assert _check_fingerprint(capsys, *common, str(tmp_path / "b"), "--seed", "2") == first
    config.write_text(f"model: {tiny_model_dir}\nlearning_rate: 2.0e-5\n")  # the base config changed
    assert _check_fingerprint(capsys, *common, str(tmp_path / "a")) != first
    assert _check_fingerprint(capsys, *common, str(tmp_path / "a"), "--max_completion_length", "7") != first


def test_select_progress_of_another_model_is_not_reused(tmp_path):
    from em_trainer.evaluation.selection import select_prompts

    from .test_selection import POOL, PlainTokenizer, fake

    output = tmp_path / "sel.jsonl"
    first = fake()
    select_prompts(first, PlainTokenizer(), POOL, output, k=4, progress=False)
    again = fake()
    select_prompts(again, PlainTokenizer(), POOL, output, k=4, progress=False)
    assert again.calls == 0  # identical settings: resumed
    other = fake()
    other.identity = {"backend": "scripted", "model": {"name": "another model"}}
    select_prompts(other, PlainTokenizer(), POOL, output, k=4, progress=False)
    assert len(other.problems_seen) == len(POOL)  # another model: every prompt sampled again
    changed = fake()
    rows = [dict(row) for row in POOL]
    rows[0]["answer"] = "3"  # a changed label at the same index
    select_prompts(changed, PlainTokenizer(), rows, tmp_path / "sel.jsonl", k=4, progress=False)
    assert changed.problems_seen == [POOL[0]["problem"]]


def test_study_measurements_are_read_back_only_under_their_arms_fingerprint(tmp_path):
    from em_trainer.workflows.study import Measurements

    path = tmp_path / "measurements.jsonl"
    old = Measurements(path, {"base": "k1", "em_ft": "k2"})
    old.add({"arm": "base", "seed": 0, "step": 0, "greedy_accuracy": 0.5})
    old.add({"arm": "em_ft", "seed": 0, "step": 2, "greedy_accuracy": 0.25})
    changed_arm = Measurements(path, {"base": "k1", "em_ft": "k3"})
    assert changed_arm.get("base", 0, 0)["greedy_accuracy"] == 0.5
    assert changed_arm.get("em_ft", 0, 2) is None and changed_arm.stale == 1


def test_fingerprint_is_stable_and_order_free():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_object_identity_takes_scalar_buffers_and_generators_hash_only_when_asked(tokenizer, monkeypatch):
    """A 0-dim parameter or buffer failed the weights digest; and a generator over a model object (the dev-set scorer
    builds one per evaluation) hashed every weight at construction for an identity nobody read."""
    import torch

    from em_trainer.data import identity as identity_module
    from em_trainer.decoding import generation

    from .conftest import build_tiny_model

    model = build_tiny_model(tokenizer)
    model.register_buffer("step_scale", torch.tensor(1.0))
    before = identity_module.object_identity(model)
    model.step_scale.fill_(2.0)
    assert identity_module.object_identity(model) != before, "the scalar's bytes are part of the digest"
    calls = []
    monkeypatch.setattr(generation, "object_identity", lambda m: calls.append(1) or {"object": "counted"})
    generator = generation.HFGenerator(model, tokenizer)
    assert calls == []
    assert generator.identity["model"] == {"object": "counted"} and generator.identity and calls == [1]


def test_folder_identity_is_content_not_path_and_hub_ids_carry_their_commit(tiny_model_dir, tmp_path, monkeypatch):
    """Before, a folder's identity held its absolute path (a copy was another model) and left out the tokenizer and
    chat template (an edited template was the same model); a Hub id was its id plus "main", never the commit."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert directory_identity(copy) == directory_identity(tiny_model_dir)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages[0]['content'] }}"
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert directory_identity(copy) != directory_identity(tiny_model_dir)
    (copy / "chat_template.jinja").write_text("{{ messages }}")
    assert "chat_template.jinja" in directory_identity(copy)["configs"]
    # The local cache's record of what `main` pointed to (what offline loading uses) is the commit.
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    (cache / "models--org--model" / "refs").mkdir(parents=True)
    (cache / "models--org--model" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert model_identity("org/model") == {"hub_id": "org/model", "revision": "main", "commit": "a" * 40}
    assert model_identity("org/other")["commit"] is None  # not cached, offline: unknown, and said so


def test_eval_records_carry_the_graders_version(tiny_model_dir, tmp_path, monkeypatch):
    """Grading changed across releases, and records graded the old way were read back as today's: the grader's
    version is now part of an eval record's identity, so a new grader grades afresh."""
    from em_trainer.evaluation import scoring

    out = tmp_path / "ev"
    assert _eval(tiny_model_dir, out, "--max_new_tokens", "2") == 0
    identity = json.loads(next(out.rglob("identity.json")).read_text())
    assert identity["grader"]["em_trainer"] == scoring.GRADER_VERSION and identity["grader"]["math_verify"]
    monkeypatch.setattr(scoring, "GRADER_VERSION", scoring.GRADER_VERSION + 1)
    assert _eval(tiny_model_dir, out, "--max_new_tokens", "2") == 0
    assert len(list(out.rglob("identity.json"))) == 2


def test_eval_select_and_generate_take_a_revision_and_record_its_commit(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Before, eval/select/generate took no revision: a Hub model was always `main`. A cache with two commits of one
    Hub id (offline, as the Hub is here): the revision chooses the weights, and the identity records its commit."""
    from huggingface_hub import constants

    from em_trainer.decoding.generation import HFGenerator

    repo = tmp_path / "hub" / "models--em-test--tiny"
    commits = {"main": "a" * 40, "v2": "b" * 40}
    for ref, commit in commits.items():
        shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    v2 = AutoModelForCausalLM.from_pretrained(repo / "snapshots" / commits["v2"])
    with torch.no_grad():
        v2.lm_head.weight.mul_(2.0)
    v2.save_pretrained(repo / "snapshots" / commits["v2"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    main_gen, v2_gen = HFGenerator("em-test/tiny"), HFGenerator("em-test/tiny", revision="v2")
    assert torch.equal(v2_gen.model.lm_head.weight, 2 * main_gen.model.lm_head.weight)
    assert main_gen.identity["model"] == {"hub_id": "em-test/tiny", "revision": "main", "commit": commits["main"]}
    assert v2_gen.identity["model"] == {"hub_id": "em-test/tiny", "revision": "v2", "commit": commits["v2"]}

    assert main(["generate", "--model", "em-test/tiny", "--revision", "v2", "--prompt", "2 + 2 =", "--raw",
                 "--max_new_tokens", "2", "--backend", "hf"]) == 0  # fmt: skip
    capsys.readouterr()
    pool = tmp_path / "pool.jsonl"
    rows = [{"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]
    pool.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for verb in (["eval", "--benchmarks", "arithmetic", "--limit", "1", "--output_dir", str(tmp_path / "ev")],
                 ["select", "--pool", str(pool), "--output", str(tmp_path / "sel.jsonl")],
                 ["generate", "--prompt", "hi"]):  # fmt: skip
        assert main([*verb, "--model", tiny_model_dir, "--revision", "v2", "--backend", "hf"]) == 2, verb
        assert "is a local model; revisions select a commit of a Hub model" in capsys.readouterr().err, verb
