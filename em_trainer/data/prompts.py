"""Prompts: the one home of prompt text, rendering through chat templates, and prompt datasets for training.

A training row needs a ``prompt`` (TRL's format: plain text, or a list of chat messages that the trainer renders with
the model's chat template) or a ``problem`` (a bare math problem, turned into one user message that asks for a boxed
answer, as in the one-shot EM paper). Other columns (an ``answer`` for monitoring rewards, say) are kept.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from datasets import Dataset

from .sources import DatasetError, read_source

# The instruction appended to a bare problem. It is the one of the one-shot prompt (pi1) the paper trained on.
BOXED_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
# The system prompt of the Qwen2.5-Math evaluation harness, which both EM papers evaluate with.
MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

PROMPT_COLUMNS = ("prompt", "problem")


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


def prepare_prompts(
    dataset: Dataset,
    prompt_column: str | None = None,
    instruction: str | None = BOXED_INSTRUCTION,
    source: str = "the dataset",
    plain_prompts: str = "raw",
) -> Dataset:
    """Give ``dataset`` a ``prompt`` column from ``prompt_column`` (default: ``prompt``, else ``problem``).

    ``plain_prompts`` says what a plain-text ``prompt`` column means: ``"raw"`` (TRL's format, the default of the
    Python API): the text is the model's input as it is; ``"chat"`` (the default of ``em-trainer train``): each text
    becomes one user message, which the trainer renders with the model's chat template (a chat model answers a bare
    string by ending at once: SmolLM2-135M-Instruct gives 6 of 8 sampled responses of one token to "What is 12 + 7?"
    as plain text, 0 of 8 through its template). Chat messages and ``problem`` columns are the same either way."""
    if plain_prompts not in ("raw", "chat"):
        raise DatasetError(f"plain_prompts={plain_prompts!r}: use 'raw' (text as it is) or 'chat' (one user message).")
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

    first = dataset[0][prompt_column]
    if prompt_column == "prompt":
        if plain_prompts == "chat" and isinstance(first, str):
            return dataset.map(lambda row: {"prompt": format_problem(row["prompt"], instruction=None)})
        return dataset
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
    plain_prompts: str = "raw",
) -> Dataset:
    """Load prompts from a Hub id, a local jsonl/parquet/csv file or directory; ``None`` gives the one-shot prompt.
    ``plain_prompts``: see :func:`prepare_prompts`."""
    if source is None or source in ("one_shot", "one-shot", "pi1"):
        return load_one_shot_dataset(instruction)
    dataset = read_source(source, split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return prepare_prompts(
        dataset, prompt_column, instruction, source=f"Dataset '{source}'", plain_prompts=plain_prompts
    )


def is_conversational_prompt(prompt: Any) -> bool:
    """Whether ``prompt`` is a list of chat messages (TRL's conversational format) rather than plain text."""
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict) and "role" in prompt[0]


def chat_messages(user: str, system: str | None = None) -> list[dict[str, str]]:
    """A user message, after a system message when ``system`` is given."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def flatten_messages(messages: list[dict[str, Any]]) -> str:
    """Plain text of chat messages for a tokenizer without a chat template: the contents, a blank line between."""
    return "\n\n".join(m["content"] for m in messages if isinstance(m.get("content"), str))


def render_messages(tokenizer: Any, messages: list[dict[str, Any]], answer_cue: bool = True) -> str:
    """Chat messages as the text the model continues: its chat template with the generation prompt, else flattened.

    Without a template, ``answer_cue`` ends the text with a blank line (evaluation and selection prompts); training
    prompts are flattened without it, as :func:`messages_to_text` does for the trainer.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        return flatten_messages(messages) + ("\n\n" if answer_cue else "")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_chat(tokenizer: Any, user: str, system: str | None = None) -> str:
    """A user message (and optional system prompt) through the chat template; plain text without one."""
    return render_messages(tokenizer, chat_messages(user, system))


def render_prompt(prompt: Any, tokenizer: Any) -> str:
    """Text of a training-format prompt: chat messages are rendered, plain text is already the model's input."""
    return render_messages(tokenizer, prompt, answer_cue=False) if is_conversational_prompt(prompt) else prompt


def messages_to_text(dataset: Dataset) -> Dataset:
    """Flatten chat prompts into plain text, for models whose tokenizer has no chat template (base models)."""

    def flatten(row: dict[str, Any]) -> dict[str, Any]:
        prompt = row["prompt"]
        return {"prompt": flatten_messages(prompt) if is_conversational_prompt(prompt) else prompt}

    return dataset.map(flatten)
