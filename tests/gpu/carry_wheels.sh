#!/usr/bin/env bash
# The locked versions of the packages a CUDA machine's image may lack (bitsandbytes with only its CPU and CUDA 13
# libraries, pydantic, datasets, the locked transformers/peft/hub stack) as Python 3.12 wheels in .gpu/wheels, for
# a GPU machine that cannot reach a package index. There:
#   python3 -m pip install -q --no-deps --no-index --target /tmp/site .gpu/wheels/*.whl
#   PYTHONPATH=/tmp/site:$PWD python3 -m pytest -q -m gpu -rs tests/gpu -o addopts=""   # data/raw/sst2 beside it
set -euo pipefail
cd "$(dirname "$0")/../.."
packages=(accelerate annotated-types bitsandbytes datasets dill hf-xet httpcore2 httpx2 huggingface-hub
  multiprocess peft pydantic pydantic-core tokenizers transformers truststore typing-inspection)
pins=()
for name in "${packages[@]}"; do
  pins+=("$(grep -i -E "^${name//-/[-_]}==" requirements.lock)")
done
rm -rf .gpu/wheels && mkdir -p .gpu/wheels
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/wheels \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 "${pins[@]}"
zip -q -d .gpu/wheels/bitsandbytes-*.whl 'bitsandbytes/libbitsandbytes_cuda1[12]*.so' \
  'bitsandbytes/libbitsandbytes_rocm*.so' 'bitsandbytes/libbitsandbytes_xpu*.so'
du -sh .gpu/wheels
