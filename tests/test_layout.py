"""The package's architecture: one-way imports, old import paths, a generated usage, EMConfig's documentation."""

from __future__ import annotations

import ast
import dataclasses
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from em_trainer import EMConfig
from em_trainer.cli import VERBS, main, usage

ROOT = Path(__file__).resolve().parents[1]


def test_import_contract_holds():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_old_flat_import_paths_still_work():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from em_trainer.generation import SamplingSettings
        from em_trainer.inference import EntropyMinimizingLogitsProcessor
        from em_trainer.models import resolve_model
        from em_trainer.pipeline import run_em_then_grpo
    from em_trainer.data.models import resolve_model as new_resolve
    from em_trainer.decoding.em_inf import EntropyMinimizingLogitsProcessor as new_processor

    assert resolve_model is new_resolve and EntropyMinimizingLogitsProcessor is new_processor
    assert SamplingSettings and run_em_then_grpo
    assert any("moved to em_trainer.data.models" in str(w.message) for w in caught)


def test_usage_is_generated_from_every_verb(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out == usage() + "\n"
    for verb in VERBS:
        assert re.search(rf"^  {verb}\s+\S", out, re.M), verb


@pytest.mark.parametrize("spelling", ["--max_new_tokens", "--max-new-tokens"])
def test_flags_are_snake_case_with_the_dashed_spelling_accepted(spelling):
    from em_trainer.cli import eval as eval_verb

    args = eval_verb.build_parser().parse_args([spelling, "7", "--output_dir", "x", "--data-dir", "y"])
    assert args.max_new_tokens == 7 and args.output_dir == "x" and args.data_dir == "y"


def _docstring_entries(doc: str) -> dict[str, str]:
    entries, name = {}, None
    for line in doc.splitlines():
        match = re.match(r"^ {8}(\w+) \(`.*`, \*optional\*, defaults to `.*`\):$", line)
        if match:
            name = match.group(1)
            entries[name] = ""
        elif name and line.startswith(" " * 12):
            entries[name] += " " + line.strip()
        else:
            name = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def test_every_emconfig_field_is_documented_once_with_its_help():
    documented = _docstring_entries(EMConfig.__doc__)
    own = [f for f in dataclasses.fields(EMConfig) if f.name in EMConfig.__annotations__]
    assert own, "EMConfig declares fields"
    for f in own:
        assert f.name in documented, f"{f.name} has no docstring entry"
        assert " ".join(f.metadata["help"].split()) == documented[f.name], f"{f.name}: help != docstring"
        stated = re.search(rf"^ {{8}}{f.name} \(`[^\n]*defaults to `(.*)`\):$", EMConfig.__doc__, re.M).group(1)
        assert ast.literal_eval(stated) == f.default, f"{f.name}: docstring default {stated} != {f.default!r}"
    assert " s per step" not in EMConfig.__doc__ and "step_time" not in EMConfig.__doc__  # no timings


PACKAGES = ("em_trainer", "em_trainer.core", "em_trainer.data", "em_trainer.decoding", "em_trainer.evaluation")


@pytest.mark.parametrize("name", PACKAGES)
def test_package_exports_resolve_on_first_use_to_their_modules_objects(name):
    import importlib

    package = importlib.import_module(name)
    assert sorted(package.__all__) == sorted(package._EXPORTS), "__all__ and the lazy table name the same exports"
    for export, module in package._EXPORTS.items():
        assert getattr(package, export) is getattr(importlib.import_module(module, name), export), export
        assert export in dir(package)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        package.nope  # noqa: B018


def test_a_process_that_only_schedules_or_measures_does_not_import_trl():
    """The verbs and modules a study or sweep starts many times (the coordinator, a submitit job unpickling its
    function, the measurement job, eval, select, the checks' runner) import neither TRL's trainers nor vLLM: each
    import of them costs seconds of start-up, paid again by every process. Only training imports them."""
    code = (
        "import sys, em_trainer, em_trainer.workflows.executors, em_trainer.workflows.study, em_trainer.cli.study, "
        "em_trainer.cli.sweep, em_trainer.cli.eval, em_trainer.cli.select, em_trainer.cli.generate, "
        "em_trainer.cli.check_batch, em_trainer.cli.train\n"
        "print(sorted(m for m in sys.modules if m.startswith(('trl.trainer', 'trl.generation', 'vllm', 'peft'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_every_error_class_of_ours_is_one_the_cli_reports_in_one_line():
    """cli/common.USER_ERRORS names only ValueError, ImportError and OSError so that it imports nothing: each error
    class of ours must subclass one of them, or the command would print a traceback for bad input."""
    import importlib
    import pkgutil

    import em_trainer
    from em_trainer.cli.common import USER_ERRORS

    classes = set()
    for info in pkgutil.walk_packages(em_trainer.__path__, "em_trainer."):
        if ".sandbox_programs" in info.name or info.name.endswith("__main__"):
            continue  # the sandbox's programs run only inside the sandbox; __main__ runs the CLI
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as missing:  # decoding.vllm_em_inf imports vLLM, which .venv does not have
            if (missing.name or "").split(".")[0] != "vllm":
                raise
            continue
        classes |= {v for v in vars(module).values() if isinstance(v, type) and issubclass(v, BaseException)
                    and v.__module__ == info.name}  # fmt: skip
    assert len(classes) >= 12, sorted(c.__name__ for c in classes)
    assert [c.__name__ for c in classes if not issubclass(c, USER_ERRORS)] == []


def test_emtrainer_docstring_lists_every_trl_method_it_overrides():
    """As trl/experimental/gmpo/ does: a reader of EMTrainer's docstring knows every place it departs from TRL."""
    from trl import GRPOTrainer

    from em_trainer import EMTrainer

    bases = [base for base in GRPOTrainer.__mro__ if base is not object]
    overridden = {name for name in vars(EMTrainer) if any(name in vars(base) for base in bases)}
    overridden -= {"__doc__", "__module__", "_tag_names", "_name", "_paper", "__annotations__"}
    listed = set(re.findall(r"^    - `(\w+)`:", EMTrainer.__doc__, flags=re.MULTILINE))
    assert listed == overridden, (sorted(overridden - listed), sorted(listed - overridden))


def test_the_docs_site_has_sections_and_home_and_readme_list_every_page_in_nav_order():
    """Before: 22 flat pages in the nav, the home page linking 11 of them, the README listing them in a third order."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    nav = yaml.safe_load((root / "mkdocs.yml").read_text())["nav"]
    assert all(isinstance(entry, dict) and isinstance(next(iter(entry.values())), list) for entry in nav), "sections"
    pages = [page for section in nav for item in next(iter(section.values())) for page in item.values()]
    on_disk = sorted(p.name for p in (root / "docs").glob("*.md"))
    assert sorted(pages) == on_disk, "every page of docs/ is in the nav, once"
    home = (root / "docs" / "index.md").read_text()
    readme = (root / "README.md").read_text().split("## Docs", 1)[1]
    for text, prefix in ((home, "("), (readme, "(docs/")):
        linked = re.findall(re.escape(prefix) + r"([a-z_]+\.md)\)", text)
        assert linked == [page for page in pages if page != "index.md"], prefix


def test_emtrainer_spells_out_grpotrainers_parameters():
    """Before: processing_class, peft_config, callbacks and the rest hid behind **kwargs (IDEs and help() showed
    nothing). Each of GRPOTrainer's parameters is now EMTrainer's, with the same default, documented."""
    import inspect

    from trl import GRPOTrainer

    from em_trainer import EMTrainer

    ours = inspect.signature(EMTrainer.__init__).parameters
    passed_on = {"tools", "rollout_func", "environment_factory"}  # newer TRL additions, through **kwargs
    for name, parameter in inspect.signature(GRPOTrainer.__init__).parameters.items():
        if name in ("self", "model") or name in passed_on:
            continue
        assert name in ours and ours[name].default == parameter.default, name
        assert f"        {name}: " in EMTrainer.__doc__, f"{name} is not documented"


def test_every_option_of_the_recipe_has_a_description():
    """Before: `recipes/em_then_grpo.py --help` listed its options with no descriptions."""
    from trl import TrlParser

    from em_trainer.workflows.em_then_grpo import RecipeArguments

    parser = TrlParser((RecipeArguments,))
    undescribed = [a.dest for a in parser._actions if a.dest != "help" and not (a.help or "").strip()]
    assert undescribed == []
