#!/usr/bin/env bash
# Wheels the device machine lacks (ENVIRONMENT.md: Python 3.12 with torch CUDA, transformers, accelerate,
# safetensors, onnxruntime, opencv, pillow, httpx, matplotlib; no diffusers, no network), downloaded here into
# the git-ignored .whl/ so that a device run can carry them (`carry: [".whl"]`) and benchmarks/gpu.sh installs
# them with `pip install --no-index --no-deps --target /tmp/site`. Versions are this project's pins.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
PY=${PY:-/work/main/.venv/bin/python}
pin() { grep -i "^$1==" constraints.txt | head -1; }
mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl \
    "$(pin diffusers || echo diffusers==0.42.1)" \
    "$(pin importlib_metadata || echo importlib_metadata==10.2.0)" \
    "${TORCHAO:-torchao==0.14.1}"
ls -l .whl
du -sh .whl
