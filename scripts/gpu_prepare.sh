#!/usr/bin/env bash
# Run here (network to the package index) before a lent GPU machine's one call. It fills what that
# call carries (device tool: carry [".whl", "out/zoo/shapes-dit-p1/captions_packed.pt"]):
#   .whl/  Python 3.12 wheels the GPU image lacks: pyeclib (ISA-L, the EC benchmark's baseline),
#          expecttest (opcheck), diffusers and importlib_metadata (the zoo models)
#   out/zoo/shapes-dit-p1/captions_packed.pt  the patch-1 DiT's training captions, encoded here
# Then on the GPU machine, for example:
#   GPU_CHECK_BUDGET_S=560 GPU_CHECK_DIT_MINUTES=6 DIT_COMPILE=1 bash scripts/gpu_check.sh "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
grep -qxF /.whl/ .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo /.whl/ >> .git/info/exclude; }
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d .whl pyeclib==1.8.0 expecttest
PYTHON=$PY bash scripts/gpu_train_dit.sh prepare
ls -la .whl
