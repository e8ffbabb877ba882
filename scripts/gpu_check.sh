#!/usr/bin/env bash
# One-shot GPU verification on a CUDA machine (run from the repo root): installs the few wheels the
# GPU box lacks from .devwheels/ (pip download them here first), runs every GPU twin test against
# the CPU backend (`make test-gpu-run`), checks device discovery, and times the GPU kernels vs the CPU twins.
# Results land in $OUT (or ./gpu-out).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
python -V; nvidia-smi -L || true
python -m pip install -q --no-index --find-links .devwheels fastavro confluent-kafka prometheus-client tqdm redis 2>&1 | tail -2
export PYTHONPATH=$PWD MYSTOCKS_CODEC_CACHE=/tmp/mystocks-codecs
python - <<'PY'
from mystocks_gpu.gpu_ops.backend import gpu_available, select
print("gpu_available:", gpu_available(), "select(auto):", select("auto"))
try:
    from mystocks_gpu.infra.devices import discover
    print("devices:", discover())
except Exception as exc:  # noqa: BLE001
    print("device discovery failed:", type(exc).__name__, exc)
PY
# the same device/CuPy check and GPU test run as `make test-gpu`, with this box's python (no venv)
if command -v make >/dev/null; then
  timeout 300 make --no-print-directory test-gpu-run PY=python PYTEST_ARGS="-q tests/unit" 2>&1 | tail -8 | tee "$OUT/gpu_tests.log"
else
  echo "make is missing (apt-get install make): GPU tests not run" | tee "$OUT/gpu_tests.log"
fi
timeout 120 python bench/gpu_ops.py --ticks 5000000 --symbols 4000 --json "$OUT/gpu_ops.json" 2>&1 | tail -25 | tee "$OUT/gpu_ops.log"
