"""What every verb shares: the errors that are the user's to fix, flag spelling, sampling and EM-INF flags."""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any, NoReturn

from trl import TrlParser

from ..data.paths import config_file_from_argv, split_config_equals
from ..decoding.em_inf import PRESETS, EMInfSettings
from ..decoding.generation import SamplingSettings

# Bad input, a missing file or package, an unreachable Hub: one line for the user, never a traceback. Every error
# class of ours (EMConfigError, DatasetError, SweepError, ...) subclasses ValueError (tests/test_layout.py holds
# it to that), so naming the three bases catches them without importing their modules: a verb that never trains
# does not import TRL (and through it vLLM) just to name EMConfigError. ImportError covers a missing optional
# backend, OSError a path that cannot be used.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, ImportError, OSError)


CONFIG_EPILOG = (
    "--config FILE: a YAML file of these options (keys are the flag names, lists for repeatable flags); flags given "
    "on the command line win over the file. `--config=FILE` works too."
)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help shows its default, also an option declared without a help text."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:  # "(default: None)" says nothing
            return action.help
        return super()._get_help_string(action)

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)


class VerbParser(TrlParser):
    """TrlParser with the verb's flags declared one by one: a YAML ``--config`` whose keys are the flags' defaults,
    then flags on top (TRL's dialect, as ``train`` and ``study`` parse it), and a one-line refusal:
    ``em-trainer eval: error: argument --limit: -1: must be >= 1``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        kwargs.setdefault("epilog", CONFIG_EPILOG)
        super().__init__(None, *args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")

    def parse_args_and_config(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        from ..data.files import read_yaml_mapping

        args = split_config_equals(list(sys.argv[1:] if args is None else args))
        config = config_file_from_argv(args)
        if config is not None:
            read_yaml_mapping(config, "--config")  # a folder, bad YAML or a list: one line, not a parser traceback
        self._deprecated_spellings(args)
        return super().parse_args_and_config(args, *rest, **kwargs)

    def set_defaults_with_config(self, **kwargs: Any) -> list[str]:
        # argparse converts only string defaults: a YAML value goes through the flag's type (and its domain) here,
        # so `limit: -1` in a file is refused like `--limit -1` on the command line.
        # YAML lists and scalars are read as the flag reads them: a repeatable flag (`model`) takes a list or one
        # value, a comma-list flag (`benchmarks`, `temperatures`) a list or a comma string; choices are enforced.
        for action in self._actions:
            if action.dest not in kwargs or kwargs[action.dest] is None:
                continue
            value = kwargs[action.dest]
            repeatable = isinstance(action, argparse._AppendAction)
            if repeatable and not isinstance(value, list):
                value = [value]
            elif not repeatable and isinstance(value, list) and action.nargs is None:
                value = ",".join(str(v) for v in value)
            try:
                if callable(action.type):
                    value = [action.type(str(v)) for v in value] if repeatable else action.type(str(value))
            except (argparse.ArgumentTypeError, ValueError) as error:
                self.error(f"--config key {action.dest}: {error}")
            if action.choices is not None:
                bad = [v for v in (value if repeatable else [value]) if v not in action.choices]
                if bad:
                    allowed = ", ".join(map(str, action.choices))
                    self.error(f"--config key {action.dest}: {bad[0]!r} is not one of {allowed}")
            kwargs[action.dest] = value
        unknown = sorted(set(kwargs) - {a.dest for a in self._actions} - {"env"})
        if unknown:
            self.error(f"--config has key(s) {unknown} that are not options of {self.prog}")
        return super().set_defaults_with_config(**kwargs)

    def _deprecated_spellings(self, args: list[str]) -> None:
        """The dashed spelling (``--max-new-tokens``) still works, with one line saying it is now snake_case."""
        dashed = {option for action in self._actions for option in action.option_strings[1:] if "-" in option[2:]}
        for arg in args:
            flag = arg.split("=", 1)[0]
            if flag in dashed:
                print(f"{self.prog}: deprecated: {flag} is now --{flag[2:].replace('-', '_')}",
                      file=sys.stderr)  # fmt: skip


def group_help(parser: argparse.ArgumentParser, sections: list[tuple[str, set[str]]]) -> None:
    """Show the options in ``sections`` (title, option names), in that order: argparse prints its groups in the order
    they were made, each with its own actions. Parsing is unchanged; options in no section stay under "options"."""
    default = parser._optionals
    for title, names in sections:
        group = parser.add_argument_group(title)
        for action in list(default._group_actions):
            if action.dest in names:
                default._group_actions.remove(action)
                group._group_actions.append(action)


def verb_parser(verb: str, description: str) -> VerbParser:
    return VerbParser(prog=f"em-trainer {verb}", description=description)


def parse_verb_args(parser: VerbParser, argv: list[str]) -> argparse.Namespace:
    """A verb's options: its ``--config`` YAML, then the flags."""
    (namespace,) = parser.parse_args_and_config(argv)
    return namespace


class Bounded:
    """An argparse ``type`` with its domain: ``Bounded(int, 1)`` takes integers >= 1, ``Bounded(float, 0, above=True)``
    numbers > 0. A value outside it is refused at parsing time, in one line that names the flag and the domain. The
    flag walk of the tests reads ``minimum``/``above``/``maximum`` to try a value outside each domain."""

    def __init__(
        self, kind: type, minimum: float | None = None, above: bool = False, maximum: float | None = None
    ) -> None:
        self.kind, self.minimum, self.above, self.maximum = kind, minimum, above, maximum
        self.__name__ = kind.__name__  # argparse names the type in its messages

    def __call__(self, text: str) -> Any:
        try:
            value = self.kind(text)
        except ValueError:
            kind = "an integer" if self.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"'{text}' is not {kind}") from None
        if value != value:  # NaN
            raise argparse.ArgumentTypeError(f"'{text}' is not a number")
        if self.minimum is not None and (value < self.minimum or (self.above and value == self.minimum)):
            raise argparse.ArgumentTypeError(f"{text}: must be {'>' if self.above else '>='} {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise argparse.ArgumentTypeError(f"{text}: must be <= {self.maximum:g}")
        return value


POSITIVE_INT = Bounded(int, 1)
NON_NEGATIVE_INT = Bounded(int, 0)
NON_NEGATIVE_FLOAT = Bounded(float, 0)
POSITIVE_FLOAT = Bounded(float, 0, above=True)
PROBABILITY = Bounded(float, 0, above=True, maximum=1)


def refuse_unused(args: argparse.Namespace, names: list[str], reason: str) -> None:
    """Refuse, in one line, flags that were given but would have no effect (``reason`` says why)."""
    given = [name for name in names if getattr(args, name) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join('--' + n for n in given)} would have no effect: {reason}.")


def flag(name: str) -> list[str]:
    """``--snake_case`` (like TrlParser, for every verb) and the ``--dashed-form`` that earlier docs used."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    return names


def add(parser: argparse.ArgumentParser | Any, name: str, **kwargs: Any) -> None:
    parser.add_argument(*flag(name), **kwargs)


def add_sampling_arguments(
    parser: argparse.ArgumentParser, temperature_help: str, max_new_tokens: int | None, max_new_tokens_help: str = ""
) -> None:
    """The six flags that build a SamplingSettings: temperature, top_p, top_k, n, max_new_tokens, seed."""
    add(parser, "temperature", type=NON_NEGATIVE_FLOAT, help=temperature_help)
    add(parser, "top_p", type=PROBABILITY, default=1.0, help="nucleus sampling mass")
    add(parser, "top_k", type=NON_NEGATIVE_INT, default=0, help="0 = no top-k cut")
    add(parser, "n", type=POSITIVE_INT, default=1, help="samples per prompt")
    budget_help = max_new_tokens_help or "response budget"
    add(parser, "max_new_tokens", type=POSITIVE_INT, default=max_new_tokens, help=budget_help)
    add(parser, "seed", type=NON_NEGATIVE_INT, default=0)


def sampling_settings(
    args: argparse.Namespace, temperature: float, default_max_new_tokens: int | None = None
) -> SamplingSettings:
    """The SamplingSettings of the sampling flags, at ``temperature`` (a verb may sweep or default it)."""
    return SamplingSettings(
        temperature=temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        n=args.n,
        max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None else default_max_new_tokens,
        seed=args.seed,
    )


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    add(parser, "backend", choices=["auto", "hf", "vllm"], default="auto", help="auto: vLLM on a GPU when installed")
    add(
        parser,
        "revision",
        help="Hub revision of the model (a branch, tag or commit; default: main), recorded with the commit it points "
        "to in every result; refused for a local model",
    )
    add(
        parser,
        "dtype",
        default="auto",
        help="weights' dtype for either backend: auto (the checkpoint's), float32, ...",
    )
    add(
        parser,
        "cpu_decoding",
        choices=["fast", "plain"],
        help="HF on a CPU: 'fast' (default) decodes into a KV cache reserved once and computes the linears from "
        "oneDNN-packed weights (about 2x faster; logits equal to float rounding); 'plain' is HF generate's own path",
    )
    add(parser, "vllm_max_model_len", type=POSITIVE_INT, help="vLLM context length (prompt + response); default 4096")
    add(
        parser,
        "vllm_enforce_eager",
        action="store_true",
        help="vLLM: run the model eagerly, without torch.compile or CUDA graphs (vLLM's enforce_eager). Starts in "
        "seconds instead of minutes on vLLM's CPU build; long GPU jobs generate faster without it",
    )


def generator_kwargs(args: argparse.Namespace, batch_size: int | None = None) -> dict[str, Any]:
    """What the backend flags ask of ``make_generator``: HF's dtype and batch size, vLLM's engine settings. vLLM's
    flags on a run that decodes with HF are refused rather than dropped."""
    from ..decoding.generation import will_use_vllm

    if not will_use_vllm(args.backend):
        refuse_unused(args, ["vllm_max_model_len", "vllm_enforce_eager"], "they set up vLLM, and this run decodes "
                      "with HF generate (--backend vllm to use vLLM)")  # fmt: skip
    else:
        refuse_unused(args, ["cpu_decoding"], "it chooses HF's decoding path, and this run decodes with vLLM")
    max_model_len = args.vllm_max_model_len or 4096
    kwargs: dict[str, Any] = {"vllm_kwargs": {"dtype": args.dtype, "max_model_len": max_model_len}}
    if args.vllm_enforce_eager:
        kwargs["vllm_kwargs"]["enforce_eager"] = True
    if args.dtype != "auto":
        kwargs["dtype"] = args.dtype
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    if args.cpu_decoding is not None:
        kwargs["cpu_fast_decoding"] = args.cpu_decoding == "fast"
    if args.revision is not None:
        kwargs["revision"] = args.revision
    return kwargs


def add_em_inf_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("EM-INF (entropy minimization at decoding time)")
    add(group, "em_inf", action="store_true", help="minimise each step's entropy before sampling")
    group.add_argument(*flag("em_inf_preset"), "--preset", choices=list(PRESETS), help="default: 'default'")
    add(group, "em_inf_threshold", type=NON_NEGATIVE_FLOAT, help="override the preset's entropy threshold")
    add(group, "em_inf_kl_weight", type=NON_NEGATIVE_FLOAT)
    add(group, "em_inf_lr", type=POSITIVE_FLOAT)
    add(group, "em_inf_steps", type=POSITIVE_INT)


def em_inf_settings(args: argparse.Namespace) -> EMInfSettings | None:
    """The EM-INF settings the flags ask for (the preset with explicit overrides), or None without --em_inf."""
    tuning = ["em_inf_preset", "em_inf_threshold", "em_inf_kl_weight", "em_inf_lr", "em_inf_steps"]
    if not args.em_inf:
        refuse_unused(args, tuning, "EM-INF is off; add --em_inf to decode with it")
        return None
    args.em_inf_preset = args.em_inf_preset or "default"
    overrides = {
        "threshold": args.em_inf_threshold,
        "kl_weight": args.em_inf_kl_weight,
        "lr": args.em_inf_lr,
        "n_steps": args.em_inf_steps,
    }
    preset = PRESETS[args.em_inf_preset]
    return EMInfSettings(**{**preset.__dict__, **{k: v for k, v in overrides.items() if v is not None}})


def check_models(models: list[str]) -> None:
    """Every model resolves to a causal LM (its config read or fetched), before the first one loads."""
    from ..data.models import check_causal_lm, resolve_model

    for model in models:
        check_causal_lm(resolve_model(model))
