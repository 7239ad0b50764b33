"""What every verb shares: the errors that are the user's to fix, flag spelling, sampling and EM-INF flags."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import typing
from dataclasses import dataclass, field
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
        unset = any(action.default is value for value in (None, False, argparse.SUPPRESS))  # 0 is a default to show
        if not action.help and action.option_strings and not unset:
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)


def option(
    default: Any = None,
    help: str = "",  # noqa: A002  (argparse's and dataclasses' name for it)
    *,
    domain: Any = None,
    choices: list[Any] | None = None,
    repeatable: bool = False,
    aliases: tuple[str, ...] = (),
    positional: bool = False,
    required: bool = False,
    group: str | None = None,
) -> Any:
    """A verb option as a dataclass field: its default and help, and how its flag reads a value. ``domain``: the
    argparse ``type`` that checks it (a :class:`Bounded`, or a parser of comma lists); ``repeatable``: the flag may be
    given several times (``--model a --model b``), each adding one value; ``aliases``: other spellings;
    ``positional``: an argument without ``--``; ``group``: the section of ``--help`` it is listed under."""
    metadata = {"help": help, "domain": domain, "choices": choices, "repeatable": repeatable, "aliases": aliases,
                "positional": positional, "required": required, "group": group}  # fmt: skip
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


class VerbParser(TrlParser):
    """TrlParser over a verb's option dataclasses (``EvalArguments``, ...): a YAML ``--config`` whose keys are the
    fields' defaults, then flags on top (TRL's dialect, as ``train`` and ``study`` parse it), parsed into the
    dataclasses, and a one-line refusal: ``em-trainer eval: error: argument --limit: -1: must be >= 1``.

    Fields declared with :func:`option` keep the flags' own reading: a repeatable flag, a domain checked at parsing
    time, choices, aliases; a ``bool`` field is a switch (``--dry_run``); a ``list`` field without ``repeatable``
    takes several values after one flag, as TrlParser reads it, unless its ``domain`` reads the list from one value
    (``--temperatures 0,0.5``)."""

    def __init__(self, dataclass_types: Any = None, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # `--seed 7` must not be read as `--seeds 7`
        kwargs.setdefault("epilog", CONFIG_EPILOG)
        self._groups: dict[str, argparse._ArgumentGroup] = {}
        super().__init__(dataclass_types, *args, **kwargs)

    def _add_dataclass_arguments(self, dtype: Any) -> None:
        hints = typing.get_type_hints(dtype)
        for item in dataclasses.fields(dtype):
            meta = item.metadata
            title = meta.get("group")
            target: Any = self if title is None else self._groups.setdefault(title, self.add_argument_group(title))
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            kind = _base_type(hints[item.name])
            kwargs: dict[str, Any] = {"help": meta.get("help") or None}
            if meta.get("choices") is not None:
                kwargs["choices"] = meta["choices"]
            if meta.get("positional"):
                target.add_argument(item.name, **kwargs)
                continue
            if kind is bool:
                kwargs["action"] = "store_true"
            elif meta.get("repeatable"):
                kwargs.update(action="append", default=default, type=meta.get("domain"))
            elif kind is list and meta.get("domain") is None:
                kwargs.update(nargs="+", default=default)
            else:
                kwargs.update(default=default, type=meta.get("domain") or kind)
            if meta.get("required"):
                kwargs["required"] = True
            target.add_argument(*flag(item.name), *meta.get("aliases", ()), **kwargs)

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


def _base_type(hint: Any) -> Any:
    """``int`` of ``int | None``, ``list`` of ``list[str]``, ``bool``, ``str``, ``float``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is list:
        return list
    if args and origin is not None and origin is not list:
        return _base_type(args[0])
    return hint


def verb_parser(verb: str, description: str, *dataclass_types: Any) -> VerbParser:
    return VerbParser(list(dataclass_types), prog=f"em-trainer {verb}", description=description)


def parse_verb_args(parser: VerbParser, argv: list[str]) -> Any:
    """A verb's options, as its dataclass: its ``--config`` YAML, then the flags."""
    (options,) = parser.parse_args_and_config(argv)
    return options


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


@dataclass
class SamplingArguments:
    """How ``eval`` and ``generate`` sample: the six fields of a SamplingSettings.

    Args:
        temperature (`float` or `None`, defaults to `None`): 0 is greedy; None takes the verb's default.
        top_p (`float`, defaults to `1.0`): nucleus sampling mass, in (0, 1].
        top_k (`int`, defaults to `0`): 0 is no top-k cut.
        n (`int`, defaults to `1`): samples per prompt.
        max_new_tokens (`int` or `None`, defaults to `None`): the response budget in tokens.
        seed (`int`, defaults to `0`): the sampling seed.
    """

    temperature: float | None = option(None, "0 = greedy", domain=NON_NEGATIVE_FLOAT)
    top_p: float = option(1.0, "nucleus sampling mass", domain=PROBABILITY)
    top_k: int = option(0, "0 = no top-k cut", domain=NON_NEGATIVE_INT)
    n: int = option(1, "samples per prompt", domain=POSITIVE_INT)
    max_new_tokens: int | None = option(None, "response budget", domain=POSITIVE_INT)
    seed: int = option(0, domain=NON_NEGATIVE_INT)


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


@dataclass
class BackendArguments:
    """Which engine decodes, and how (``eval``, ``select``, ``generate``).

    Args:
        backend (`str`, defaults to `"auto"`): ``hf``, ``vllm``, or ``auto`` (vLLM on a GPU when installed).
        revision (`str` or `None`, defaults to `None`): a Hub model's branch, tag or commit, recorded with the commit
            it points to; refused for a local model.
        dtype (`str`, defaults to `"auto"`): the weights' dtype for either backend.
        cpu_decoding (`str` or `None`, defaults to `None`): HF on a CPU, ``fast`` (the default) or ``plain``.
        vllm_max_model_len (`int` or `None`, defaults to `None`): vLLM's context length; None is 4096.
        vllm_enforce_eager (`bool`, defaults to `False`): run vLLM's model eagerly.
    """

    backend: str = option("auto", "auto: vLLM on a GPU when installed", choices=["auto", "hf", "vllm"])
    revision: str | None = option(
        None,
        "Hub revision of the model (a branch, tag or commit; default: main), recorded with the commit it points to in "
        "every result; refused for a local model",
    )
    dtype: str = option("auto", "weights' dtype for either backend: auto (the checkpoint's), float32, ...")
    cpu_decoding: str | None = option(
        None,
        "HF on a CPU: 'fast' (default) decodes into a KV cache reserved once and computes the linears from "
        "oneDNN-packed weights (about 2x faster; logits equal to float rounding); 'plain' is HF generate's own path",
        choices=["fast", "plain"],
    )
    vllm_max_model_len: int | None = option(
        None, "vLLM context length (prompt + response); default 4096", domain=POSITIVE_INT
    )
    vllm_enforce_eager: bool = option(
        False,
        "vLLM: run the model eagerly, without torch.compile or CUDA graphs (vLLM's enforce_eager). Starts in seconds "
        "instead of minutes on vLLM's CPU build; long GPU jobs generate faster without it",
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


EM_INF_GROUP = "EM-INF (entropy minimization at decoding time)"


@dataclass
class EMInfArguments:
    """EM-INF at decoding time (``eval``, ``generate``): a preset, and overrides of its settings.

    Args:
        em_inf (`bool`, defaults to `False`): minimise each step's entropy before sampling.
        em_inf_preset (`str` or `None`, defaults to `None`): the preset; None is ``default``. Also ``--preset``.
        em_inf_threshold (`float` or `None`, defaults to `None`): overrides the preset's entropy threshold.
        em_inf_kl_weight (`float` or `None`, defaults to `None`): overrides the preset's KL weight.
        em_inf_lr (`float` or `None`, defaults to `None`): overrides the preset's learning rate on the logits.
        em_inf_steps (`int` or `None`, defaults to `None`): overrides the preset's steps per token.
    """

    em_inf: bool = option(False, "minimise each step's entropy before sampling", group=EM_INF_GROUP)
    em_inf_preset: str | None = option(
        None, "default: 'default'", choices=list(PRESETS), aliases=("--preset",), group=EM_INF_GROUP
    )
    em_inf_threshold: float | None = option(
        None, "override the preset's entropy threshold", domain=NON_NEGATIVE_FLOAT, group=EM_INF_GROUP
    )
    em_inf_kl_weight: float | None = option(None, domain=NON_NEGATIVE_FLOAT, group=EM_INF_GROUP)
    em_inf_lr: float | None = option(None, domain=POSITIVE_FLOAT, group=EM_INF_GROUP)
    em_inf_steps: int | None = option(None, domain=POSITIVE_INT, group=EM_INF_GROUP)


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
