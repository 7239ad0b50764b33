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
