"""Prompt datasets from every supported source, and model resolution of every kind of reference."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from em_trainer.data import BOXED_INSTRUCTION, load_one_shot_dataset, load_prompt_dataset, messages_to_text
from em_trainer.data.models import base_model_id, resolve_model

SHARED_ONE_SHOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "one_shot" / "pi1_r128.parquet"


def test_bundled_one_shot_prompt_is_the_papers():
    dataset = load_one_shot_dataset()
    assert len(dataset) == 1
    message = dataset[0]["prompt"][0]
    assert message["role"] == "user" and "pressure" in message["content"] and "wind" in message["content"]
    assert message["content"].endswith(BOXED_INSTRUCTION)
    assert dataset[0]["answer"] == "12.8"
    if SHARED_ONE_SHOT.exists():
        frame = pd.read_parquet(SHARED_ONE_SHOT)
        assert message["content"].startswith(frame.problem.iloc[0])


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_local_files(tmp_path, suffix):
    frame = pd.DataFrame({"problem": ["What is 1+1?", "What is 2+3?"], "answer": ["2", "5"]})
    path = tmp_path / f"pool{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")))
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    dataset = load_prompt_dataset(str(path))
    assert len(dataset) == 2 and str(dataset[1]["answer"]) == "5"
    assert dataset[1]["prompt"] == [{"role": "user", "content": f"What is 2+3? {BOXED_INSTRUCTION}"}]
    assert len(load_prompt_dataset(str(path), limit=1)) == 1


def test_prompt_column_is_kept_as_is(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "plain text prompt"}, {"prompt": "another"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert load_prompt_dataset(str(path))[0]["prompt"] == "plain text prompt"
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}]}))
    loaded = load_prompt_dataset(str(chat))
    assert loaded[0]["prompt"] == [{"role": "user", "content": "hi"}]
    assert messages_to_text(loaded)[0]["prompt"] == "hi"


def test_resolve_local_dir_gguf_and_default(tiny_model_dir, smollm2_dir):
    assert resolve_model(tiny_model_dir) == tiny_model_dir
    assert resolve_model(None) == smollm2_dir == resolve_model("SmolLM2-135M-Instruct")
    assert (Path(smollm2_dir) / "model.safetensors").is_file()
    assert base_model_id(smollm2_dir) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_id("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"
    assert base_model_id(tiny_model_dir) is None
