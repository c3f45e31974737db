#!/usr/bin/env bash
# One command for a CUDA machine with no network (torch, triton, nvcc, cmake, ninja, pybind11 and
# scikit-build-core preinstalled): build osmos with CUDA for the local card, run the GPU tests,
# run the benchmarks on the GPU, and write logs and tables under $OUT (or the folder given).
# Wheels of missing pure-Python or small packages (pyeclib for the ISA-L baseline, expecttest
# for opcheck, diffusers for the zoo) may be put in .whl/ beforehand; they are installed into
# /tmp/site. `bash scripts/gpu_prepare.sh` (here, with network) downloads them and the DiT's
# caption cache; carry both to the device machine (the device tool's `carry: [".whl",
# "out/zoo/shapes-dit-p1/captions_packed.pt"]`).
# Budget: about 8 minutes in all (GPU_CHECK_BUDGET_S); a benchmark that would start after the
# budget is skipped, and so is each benchmark named in GPU_CHECK_SKIP (space-separated file
# names). Benchmarks run in the order of BENCHES below (code not yet timed on a GPU first).
# Four files are written (the device tool returns at most 8).
# GPU_CHECK_DIT_MINUTES=N also trains the patch-1 shapes-dit (scripts/gpu_train_dit.sh train, N
# minutes, captions_packed.pt carried) beside the build and the tests, and waits for it before the
# benchmarks so their timings have the GPU to themselves; its log, weights and card land in dit/
# (three more files). It is stopped 5 minutes past its budget (set-up and a torch.compile fit there).
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-480}
OUT_DIR=${1:-${OUT:-$PWD/out/gpu_check}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
SUMMARY=$OUT_DIR/summary.txt
export PYTHONUNBUFFERED=1
elapsed() { echo $(( $(date +%s) - T0 )); }

if ls .whl/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# Triton kernels are tested with triton >= 3.7; an older one (the image's) is tried anyway here,
# so this run says whether it works.
export OSMOS_ALLOW_OLD_TRITON=${OSMOS_ALLOW_OLD_TRITON:-1}

cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
export OSMOS_CUDA=ON OSMOS_CUDA_ARCHS=${OSMOS_CUDA_ARCHS:-${cap:-90}}
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
DIT_PID=
if [ -n "${GPU_CHECK_DIT_MINUTES:-}" ]; then
  mkdir -p "$OUT_DIR/dit"
  DIT_MINUTES=$GPU_CHECK_DIT_MINUTES PYTHON=$PY timeout "$(awk "BEGIN {print int($GPU_CHECK_DIT_MINUTES * 60 + 300)}")" \
    bash scripts/gpu_train_dit.sh train "$OUT_DIR/dit" > "$OUT_DIR/dit/train_dit.out" 2>&1 &
  DIT_PID=$!
  export CMAKE_BUILD_PARALLEL_LEVEL=$(( $(nproc) > 4 ? $(nproc) - 2 : 2 ))  # two cores for the trainer
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
  $PY -c "import torch, triton, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  nvcc --version | tail -2
  lscpu | grep 'Model name'
} > "$SUMMARY" 2>&1

echo "== build (sm_$OSMOS_CUDA_ARCHS)" | tee -a "$SUMMARY"
if [ -n "${GPU_CHECK_DRY_RUN:-}" ]; then
  # a rehearsal of the script's flow on a machine without a GPU: the in-place build, no pip install
  echo "dry run: using python/ in place" | tee -a "$SUMMARY"; export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
elif ! timeout 300 $PY -m pip install --no-build-isolation --no-deps -q . > "$OUT_DIR/build.log" 2>&1; then
  echo "BUILD FAILED after $(elapsed) s (see build.log)" | tee -a "$SUMMARY"; tail -40 "$OUT_DIR/build.log"; exit 1
fi
echo "built at $(elapsed) s" | tee -a "$SUMMARY"
(cd /tmp && $PY -m osmos info) 2>&1 | tee -a "$SUMMARY"

echo "== GPU tests" | tee -a "$SUMMARY"
# TRITON_INTERPRET must be unset here, or Triton tests would run in the interpreter
env -u TRITON_INTERPRET timeout 200 $PY -m pytest -q -ra -m gpu tests -p no:cacheprovider > "$OUT_DIR/tests_gpu.log" 2>&1
echo "pytest exit $? at $(elapsed) s: $(tail -1 "$OUT_DIR/tests_gpu.log")" | tee -a "$SUMMARY"
grep -E "^(FAILED|ERROR)" "$OUT_DIR/tests_gpu.log" | head -30 | tee -a "$SUMMARY"

if [ -n "$DIT_PID" ]; then
  wait "$DIT_PID"
  echo "shapes-dit training exit $? at $(elapsed) s: $(tail -1 "$OUT_DIR/dit/train_dit.log" 2>/dev/null)" | tee -a "$SUMMARY"
  # its console output only matters when it failed: keep the file count within the tool's 8
  grep -q "^steps" "$OUT_DIR/dit/train_dit.log" 2>/dev/null && rm -f "$OUT_DIR/dit/train_dit.out"
fi

echo "== benchmarks" | tee -a "$SUMMARY"
: > "$OUT_DIR/benchmarks.md"
# name | arguments | seconds allowed
BENCHES=(
  "bench_adapter_inject.py|--reps 15 --fused-tiles 128,64,64,4,3 64,64,64,4,4 128,128,64,8,3|60"
  "bench_rps.py||70"
  "bench_accel_ops.py|--device cuda|40"
  "bench_snapshot.py|--device cuda --quick|60"
  "bench_topk.py|--device cuda --sizes 1000000 16000000 64000000|70"
  "bench_similarity.py|--device cuda --batches 1,16,1000 --k 10|60"
  "bench_topk.py|--device cuda --dtype bfloat16 --sizes 16000000 64000000 --ratios 0.01|40"
  "bench_ec.py|--device cuda|60"
)
for entry in "${BENCHES[@]}"; do
  IFS='|' read -r bench bargs allowed <<< "$entry"
  case " ${GPU_CHECK_SKIP:-} " in *" $bench "*) echo "$bench: skipped (GPU_CHECK_SKIP)" | tee -a "$SUMMARY"; continue;; esac
  if (( $(elapsed) + allowed > BUDGET )); then
    echo "$bench $bargs: skipped (budget: $(elapsed) s used of $BUDGET)" | tee -a "$SUMMARY"; continue
  fi
  echo "### benchmarks/$bench $bargs" >> "$OUT_DIR/benchmarks.md"
  # shellcheck disable=SC2086
  env -u TRITON_INTERPRET timeout "$allowed" $PY "benchmarks/$bench" $bargs >> "$OUT_DIR/benchmarks.md" 2>&1
  echo "$bench $bargs: exit $? at $(elapsed) s" | tee -a "$SUMMARY"
done
echo "done at $(date -u), $(elapsed) s" >> "$SUMMARY"
