"""``em-trainer generate``: sample completions for prompts, optionally with EM-INF."""

from __future__ import annotations

import argparse

from ..data.models import DEFAULT_MODEL
from . import common
from .common import add, parse_verb_args, verb_parser

HELP = "sample completions for a prompt, optionally with EM-INF (entropy minimization at decoding time)"


def build_parser() -> argparse.ArgumentParser:
    parser = verb_parser("generate", HELP + ".")
    add(parser, "model", default=DEFAULT_MODEL)
    add(parser, "prompt", action="append", required=True, help="repeat for a batch")
    add(parser, "system_prompt", default=None)
    add(parser, "raw", action="store_true", help="do not apply the chat template")
    common.add_sampling_arguments(parser, "0 = greedy; default: the EM-INF preset's, else 0", 256)
    common.add_backend_argument(parser)
    common.add_em_inf_arguments(parser)
    return parser


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
