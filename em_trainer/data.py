"""Prompt datasets for EM training: the bundled one-shot prompt, Hub datasets and local files.

A training row needs a ``prompt`` (TRL's format: plain text, or a list of chat messages that the trainer renders with
the model's chat template) or a ``problem`` (a bare math problem, turned into one user message that asks for a boxed
answer, as in the one-shot EM paper). Other columns (an ``answer`` for monitoring rewards, say) are kept.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset

# The instruction appended to a bare problem. It is the one of the one-shot prompt (pi1) the paper trained on.
BOXED_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
PROMPT_COLUMNS = ("prompt", "problem")


class DatasetError(ValueError):
    """A dataset that cannot be used for training; the message names the problem and the fix."""


def one_shot_example() -> dict[str, str]:
    """The paper's one-shot training prompt (the wind-pressure problem) with its reference answer."""
    text = resources.files("em_trainer").joinpath("resources/one_shot.jsonl").read_text(encoding="utf-8")
    return json.loads(text.splitlines()[0])


def format_problem(problem: str, instruction: str | None = BOXED_INSTRUCTION) -> list[dict[str, str]]:
    """One user message holding the problem followed by ``instruction`` (skipped when empty)."""
    content = problem.strip() if not instruction else f"{problem.strip()} {instruction}"
    return [{"role": "user", "content": content}]


def load_one_shot_dataset(instruction: str | None = BOXED_INSTRUCTION) -> Dataset:
    """The bundled one-row dataset: the paper's one-shot prompt as a chat message, plus its ``answer``."""
    row = one_shot_example()
    return Dataset.from_list([{"prompt": format_problem(row["problem"], instruction), "answer": row["answer"]}])


def _read_source(source: str, split: str) -> Dataset:
    path = Path(source).expanduser()
    if path.is_file():
        fmt = LOCAL_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DatasetError(
                f"Cannot read {path}: unknown file type '{path.suffix}'. Use one of {', '.join(LOCAL_FORMATS)}."
            )
        if path.stat().st_size == 0:
            raise DatasetError(f"Dataset file {path} is empty: EM needs at least one prompt.")
        try:
            return load_dataset(fmt, data_files=str(path), split="train")
        except Exception as error:  # pyarrow and pandas raise many types for a malformed file
            raise DatasetError(
                f"Could not read {path} as {fmt}: {error}. Check that the file is valid {fmt}."
            ) from error
    if path.is_dir():
        return load_dataset(str(path), split=split)
    if source.startswith((".", "/", "~")) or source.endswith(tuple(LOCAL_FORMATS)):
        raise DatasetError(f"Dataset file not found: {path}. Check the path.")
    try:
        return load_dataset(source, split=split)
    except Exception as error:  # the Hub raises many types; the user needs the id and the reason
        raise DatasetError(
            f"Could not load dataset '{source}' (split '{split}') from the Hugging Face Hub: {error}. "
            "Pass a local .jsonl/.parquet/.csv file instead, or check the id, the split and your connection."
        ) from error


def prepare_prompts(
    dataset: Dataset,
    prompt_column: str | None = None,
    instruction: str | None = BOXED_INSTRUCTION,
    source: str = "the dataset",
) -> Dataset:
    """Give ``dataset`` a ``prompt`` column from ``prompt_column`` (default: ``prompt``, else ``problem``)."""
    if len(dataset) == 0:
        raise DatasetError(f"{source} is empty: EM needs at least one prompt.")
    columns = dataset.column_names
    if prompt_column is None:
        prompt_column = next((c for c in PROMPT_COLUMNS if c in columns), None)
        if prompt_column is None:
            raise DatasetError(
                f"{source} has no 'prompt' or 'problem' column (columns: {columns}). Rename the column that holds "
                "the prompts, or name it with `prompt_column` (CLI: --prompt_column NAME)."
            )
    elif prompt_column not in columns:
        raise DatasetError(f"prompt_column '{prompt_column}' is not a column of {source} (columns: {columns}).")

    if prompt_column == "prompt":
        return dataset
    first = dataset[0][prompt_column]
    if isinstance(first, str):
        mapped = dataset.map(lambda row: {"prompt": format_problem(row[prompt_column], instruction)})
    else:
        mapped = dataset.map(lambda row: {"prompt": row[prompt_column]})
    return mapped


def load_prompt_dataset(
    source: str | None = None,
    split: str = "train",
    prompt_column: str | None = None,
    instruction: str | None = BOXED_INSTRUCTION,
    limit: int | None = None,
) -> Dataset:
    """Load prompts from a Hub id, a local jsonl/parquet/csv file or directory; ``None`` gives the one-shot prompt."""
    if source is None or source in ("one_shot", "one-shot", "pi1"):
        return load_one_shot_dataset(instruction)
    dataset = _read_source(source, split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return prepare_prompts(dataset, prompt_column, instruction, source=f"Dataset '{source}'")


def is_conversational_prompt(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict) and "role" in prompt[0]


def messages_to_text(dataset: Dataset) -> Dataset:
    """Flatten chat prompts into plain text, for models whose tokenizer has no chat template (base models)."""

    def flatten(row: dict[str, Any]) -> dict[str, Any]:
        prompt = row["prompt"]
        if is_conversational_prompt(prompt):
            prompt = "\n\n".join(m["content"] for m in prompt if isinstance(m.get("content"), str))
        return {"prompt": prompt}

    return dataset.map(flatten)
