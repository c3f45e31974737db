#!/usr/bin/env bash
# One command for a CUDA machine with no network (torch, triton, nvcc, cmake, ninja, pybind11 and
# scikit-build-core preinstalled): build osmos with CUDA for the local card, run the GPU tests,
# run every benchmark on the GPU, and write logs and tables under $OUT (or the folder given).
# Budget: under 8 minutes. At most a handful of files are written (the device tool returns 8).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-$PWD/out/gpu_check}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
SUMMARY=$OUT_DIR/summary.txt
export PYTHONUNBUFFERED=1

cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
export OSMOS_CUDA=ON OSMOS_CUDA_ARCHS=${OSMOS_CUDA_ARCHS:-${cap:-90}}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
  $PY -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, torch.cuda.get_device_name())"
  lscpu | grep 'Model name'
} > "$SUMMARY" 2>&1

echo "== build (sm_$OSMOS_CUDA_ARCHS)" | tee -a "$SUMMARY"
start=$(date +%s)
if ! timeout 300 $PY -m pip install --no-build-isolation --no-deps -q . > "$OUT_DIR/build.log" 2>&1; then
  echo "BUILD FAILED (see build.log)" | tee -a "$SUMMARY"; tail -40 "$OUT_DIR/build.log"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s" | tee -a "$SUMMARY"
(cd /tmp && $PY -m osmos info) | tee -a "$SUMMARY"

echo "== GPU tests" | tee -a "$SUMMARY"
timeout 200 $PY -m pytest -q -ra -m gpu tests -p no:cacheprovider > "$OUT_DIR/tests_gpu.log" 2>&1
echo "pytest exit $?: $(tail -1 "$OUT_DIR/tests_gpu.log")" | tee -a "$SUMMARY"

echo "== benchmarks" | tee -a "$SUMMARY"
: > "$OUT_DIR/benchmarks.md"
for bench in benchmarks/bench_*.py; do
  echo "### $bench --device cuda" >> "$OUT_DIR/benchmarks.md"
  timeout 90 $PY "$bench" --device cuda >> "$OUT_DIR/benchmarks.md" 2>&1
  echo "$bench exit $?" | tee -a "$SUMMARY"
done
echo "done at $(date -u)" >> "$SUMMARY"
