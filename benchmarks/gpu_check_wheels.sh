#!/bin/sh
# What benchmarks/gpu_check.py needs on the GPU machine (Python 3.12, with PyTorch, transformers, accelerate and
# peft, no registry): wheels of TRL, datasets and their dependencies, and the SmolLM2 tokenizer files, in
# gpu_check_assets/ (ignored by git; the device run carries it: run(..., carry=["gpu_check_assets"])).
# The device run then does:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site gpu_check_assets/wheels/*.whl &&
#   PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_check.py --output benchmarks/results/gpu_check.json
# The carried folder may hold 64 MiB with the working tree: datasets 4.7.0 (TRL 1.16's lowest) takes pyarrow 21
# (41 MB) where datasets 5.2 needs pyarrow 24 (54 MB); math-verify and gguf are left out (the check imports neither).
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT=gpu_check_assets
rm -rf "$OUT"
mkdir -p "$OUT/wheels"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$OUT/wheels" \
    trl==1.16.0 datasets==4.7.0 pyarrow==21.0.0 "dill<0.4.1" multiprocess xxhash "fsspec<=2026.2.0" pandas \
    python-dateutil six pytz tzdata aiohttp aiohappyeyeballs aiosignal frozenlist multidict propcache yarl attrs \
    requests charset-normalizer idna urllib3 certifi
"$PYTHON" - <<'PY'
from em_trainer.data.models import resolve_model
from transformers import AutoTokenizer

import os

AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct")).save_pretrained("gpu_check_assets/tokenizer")
import gzip
import shutil

folder = "gpu_check_assets/tokenizer"
for name in ("vocab.json", "merges.txt"):  # tokenizer.json holds them already
    if os.path.exists(os.path.join(folder, name)):
        os.remove(os.path.join(folder, name))
# Compressed (3.4 MB -> under 1 MB): gpu_check.py unpacks it; the carried folder's cap is tight.
with open(os.path.join(folder, "tokenizer.json"), "rb") as raw, gzip.open(os.path.join(folder, "tokenizer.json.gz"), "wb") as packed:
    shutil.copyfileobj(raw, packed)
os.remove(os.path.join(folder, "tokenizer.json"))
PY
SIZE=$(du -sm "$OUT" | cut -f1)
echo "gpu_check_assets: ${SIZE} MiB (the device run carries at most 64 MiB with the working tree)"
