"""``em-trainer generate``: sample completions for prompts, optionally with EM-INF."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..data.models import DEFAULT_MODEL
from . import common
from .common import option, parse_verb_args, verb_parser

HELP = "sample completions for a prompt, optionally with EM-INF (entropy minimization at decoding time)"


@dataclass
class _GenerateOptions:
    model: str = option(DEFAULT_MODEL)
    prompt: list[str] | None = option(None, "repeat for a batch", repeatable=True, required=True)
    system_prompt: str | None = option(None)
    raw: bool = option(False, "do not apply the chat template")


@dataclass
class GenerateArguments(common.EMInfArguments, common.BackendArguments, common.SamplingArguments, _GenerateOptions):
    """The options of ``em-trainer generate`` (flags, or keys of its ``--config`` YAML).

    Args:
        model (`str`, defaults to the embedded SmolLM2-135M-Instruct): the model.
        prompt (`list[str]`, required): the prompts (repeat ``--prompt`` for a batch).
        system_prompt (`str` or `None`, defaults to `None`): a system message before each prompt.
        raw (`bool`, defaults to `False`): the prompt as it is, without the chat template.

    The sampling, backend and EM-INF fields are the other verbs'; ``temperature`` defaults to the EM-INF preset's,
    else greedy, and ``max_new_tokens`` to 256.
    """

    temperature: float | None = option(
        None, "0 = greedy; default: the EM-INF preset's, else 0", domain=common.NON_NEGATIVE_FLOAT
    )
    max_new_tokens: int | None = option(256, "response budget", domain=common.POSITIVE_INT)


def build_parser() -> argparse.ArgumentParser:
    return verb_parser("generate", HELP + ".", GenerateArguments)


def main(argv: list[str]) -> int:
    from ..data.prompts import render_chat
    from ..decoding.generation import make_generator

    args = parse_verb_args(build_parser(), argv)
    if args.raw and args.system_prompt is not None:
        raise ValueError("--system_prompt and --raw: a raw prompt skips the chat template, which holds the system "
                         "prompt; drop one of them.")  # fmt: skip
    em_inf = common.em_inf_settings(args)
    temperature = args.temperature
    if temperature is None:
        temperature = em_inf.temperature if em_inf is not None and em_inf.temperature is not None else 0.0
    settings = common.sampling_settings(args, temperature)
    generator = make_generator(args.model, backend=args.backend, em_inf=em_inf, **common.generator_kwargs(args))
    prompts = [p if args.raw else render_chat(generator.tokenizer, p, args.system_prompt) for p in args.prompt]
    outputs = generator.generate(prompts, settings)
    mode = f"EM-INF ({args.em_inf_preset})" if args.em_inf else "plain decoding"
    for prompt, samples in zip(args.prompt, outputs, strict=True):
        for i, completion in enumerate(samples):
            print(f"=== {prompt[:60]!r} sample {i} | {mode}, T={temperature:g} | {completion.finish_reason}, "
                  f"{len(completion.token_ids)} tokens")  # fmt: skip
            print(completion.text)
    return 0
