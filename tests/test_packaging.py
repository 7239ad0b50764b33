"""What `pip install "em-trainer[vllm]"` asks for stays inside what the pinned TRL supports (read from both packages'
installed metadata: `make` reinstalls em-trainer whenever pyproject.toml changes)."""

from __future__ import annotations

import importlib.metadata

from packaging.requirements import Requirement


def _requirement(package: str, name: str, extra: str | None) -> Requirement:
    for text in importlib.metadata.requires(package) or []:
        requirement = Requirement(text)
        marker = requirement.marker
        in_extra = marker.evaluate({"extra": extra or ""}) if marker is not None else extra is None
        if requirement.name == name and in_extra:
            return requirement
    raise AssertionError(f"{package} has no {name} requirement for extra {extra!r}")


def test_the_vllm_extra_has_trls_bounds():
    ours, trl = _requirement("em-trainer", "vllm", "vllm"), _requirement("trl", "vllm", "vllm")
    assert ours.specifier == trl.specifier, f"em-trainer[vllm] asks for {ours.specifier}, TRL supports {trl.specifier}"
    assert "0.33.0" not in ours.specifier  # the newest vLLM today, outside TRL 1.16's range


def test_trl_is_pinned_to_the_tested_minor_series():
    trl = _requirement("em-trainer", "trl", None)
    assert importlib.metadata.version("trl") in trl.specifier and "1.17.0" not in trl.specifier


# The versions a test has run: CI's pins (constraints-cpu.txt), and transformers 5.23.0, the newest on PyPI when it
# was checked, with the trainer tests (docs/performance.md, "Newest versions"). Each declared range admits these and
# nothing newer, so `pip install em-trainer` never resolves a version no test has run.
TESTED = {"transformers": ("5.17.0", "5.23.0"), "accelerate": ("1.15.0",), "peft": ("0.21.2",), "trl": ("1.16.0",)}
NEXT = {"transformers": "5.24.0", "accelerate": "1.16.0", "peft": "0.22.0", "trl": "1.17.0"}


def test_declared_ranges_hold_the_tested_versions_and_nothing_newer():
    for name, versions in TESTED.items():
        specifier = _requirement("em-trainer", name, None).specifier
        assert all(version in specifier for version in versions), (name, specifier)
        assert NEXT[name] not in specifier, f"{name}{specifier} admits {NEXT[name]}, which no test has run"
        assert importlib.metadata.version(name) in specifier, name
