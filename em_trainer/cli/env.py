"""``em-trainer env``: what to paste into a bug report (like ``trl env``), plus what em-trainer's results depend on.

Besides the library versions TRL prints, it names what changes our numbers or our speed on the same versions: the CPU
model and its bf16 instructions (AVX512-BF16/AMX: the fast CPU decoding path and the suite's run time), the code
sandbox's mode, the math grader's version, and whether the embedded default model is unpacked.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .common import verb_parser

HELP = "print versions, devices and the sandbox mode, for bug reports (like `trl env`)"
PACKAGES = ("torch", "transformers", "trl", "accelerate", "peft", "datasets", "huggingface_hub", "math-verify", "vllm",
            "deepspeed", "liger_kernel", "bitsandbytes")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    return verb_parser("env", HELP + ".")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _cpu() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    bf16 = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return f"{model}; bf16 instructions: {', '.join(bf16) or 'none'}"


def _accelerators() -> str:
    try:
        import torch
    except ImportError:
        return "torch not installed"
    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    if torch.backends.mps.is_available():
        return "MPS"
    return "cpu"


def _sandbox() -> str:
    from ..evaluation.sandbox import sandbox_mode

    bwrap = shutil.which("bwrap")
    found = "not installed"
    if bwrap:
        run = subprocess.run([bwrap, "--version"], capture_output=True, text=True, check=False)
        found = run.stdout.strip() or "installed"
    try:
        mode = sandbox_mode()
    except OSError as error:
        mode = f"unusable ({error})"
    return f"{mode} (bubblewrap: {found})"


def _embedded_model() -> str:
    from ..data.models import DEFAULT_MODEL, ModelResolutionError, embedded_gguf_path

    try:
        return f"{DEFAULT_MODEL} ({embedded_gguf_path(DEFAULT_MODEL)})"
    except ModelResolutionError as error:
        return f"{DEFAULT_MODEL}: {error}"


def environment() -> dict[str, str]:
    from ..evaluation.scoring import GRADER_VERSION

    info = {
        "Platform": platform.platform(),
        "Python version": platform.python_version(),
        "em-trainer version": _version("em-trainer"),
        "CPU": _cpu(),
        "accelerator(s)": _accelerators(),
    }
    info |= {f"{package} version": _version(package) for package in PACKAGES}
    info["Code sandbox"] = _sandbox()
    info["Math grader version"] = str(GRADER_VERSION)
    info["Embedded model"] = _embedded_model()
    return info


def main(argv: list[str]) -> int:
    build_parser().parse_args(argv)  # no options: --help only
    info = environment()
    print("\nCopy-paste the following information when you open an issue:\n")
    print("\n".join(f"- {key}: {value}" for key, value in info.items()) + "\n")
    return 0
