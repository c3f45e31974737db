#!/usr/bin/env bash
# Train a shapes-dit variant on a lent GPU machine (no network there) and bring its weights back.
#
# Why: the shipped shapes-dit (patch 2) misses the zoo's "every (shape, colour) pair >= 90%" bar on
# stars whatever the sampler (benchmarks/RESULTS.md, "Zoo model shapes-dit"); a patch-1 DiT trains
# at ~1.25 s per step on one CPU thread here (~9 h for 26000 steps) but only needs minutes on a GPU.
#
# Two steps:
#   1. here, on the CPU machine (network to the package index):
#        bash scripts/gpu_train_dit.sh prepare
#      downloads diffusers and importlib_metadata (what the GPU image lacks of its imports) as
#      Python 3.12 wheels into .whl/ (git-ignored through .git/info/exclude), encodes the training
#      captions once into out/zoo/shapes-dit-p1/captions.pt (38 MB) and packs their unpadded tokens
#      into captions_packed.pt (16 MB), so the GPU machine needs no text encoder. PixArt masks the
#      padding tokens out of cross-attention, so zeros there train the same model.
#   2. on the GPU machine (the device tool: carry [".whl", "out/zoo/shapes-dit-p1/captions_packed.pt"]; the
#      working tree and carried files travel within 64 MiB):
#        bash scripts/gpu_train_dit.sh train "$OUT"
#      unpacks the captions, trains `shapes-dit --config patch_size=1` with --device cuda for at most
#      DIT_MINUTES (8) minutes (--fit-steps: the step count and cool-down shrink to what fits), resumable
#      (--resume: a second call on the same warm machine continues), and copies the exported weights
#      and card to $OUT. Evaluate them back here with
#        python benchmarks/zoo_quality.py --model shapes-dit --per-pair 16 --scheduler ddim --steps 20 --weights <dir>
# Settings: DIT_CONFIG (default "patch_size=1 num_layers=6": the 6-block recipe before growth, one plain run), DIT_STEPS (26000), DIT_DECAY (6000), DIT_COMPILE (set: --compile;
# an eager step took 54 ms on an H100 machine, bound by the CPU launching kernels), DIT_OUT
# (out/zoo/shapes-dit-p1). `train` with DIT_DEVICE=cpu DIT_STEPS=2 is a dry run of the same path.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
PY=${PYTHON:-python3}
DIT_OUT=${DIT_OUT:-out/zoo/shapes-dit-p1}
read -r -a CONFIG_ARGS <<< "$(for c in ${DIT_CONFIG:-patch_size=1 num_layers=6}; do printf -- '--config %s ' "$c"; done)"

case "$MODE" in
  prepare)
    mkdir -p .whl
    grep -qxF /.whl/ .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo /.whl/ >> .git/info/exclude; }
    # diffusers and what it imports that a torch + triton image may lack
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      -d .whl diffusers importlib_metadata
    # the caption cache: zero training steps encode and save the captions, export, and stop
    PYTHONPATH=python $PY -m osmos.zoo.train shapes-dit --no-phases --seed 0 --steps 0 "${CONFIG_ARGS[@]}" --out "$DIT_OUT"
    $PY - "$DIT_OUT" <<'PACK'
import sys, torch
d = sys.argv[1]
b = torch.load(f"{d}/captions.pt", weights_only=True)
keep = b["mask"].bool()  # a prefix of each caption's tokens
torch.save({"tokens": b["states"][keep].clone(), "mask": b["mask"], "empty_states": b["empty_states"],
            "empty_mask": b["empty_mask"], "texts": b["texts"]}, f"{d}/captions_packed.pt")
PACK
    du -sh .whl "$DIT_OUT/captions_packed.pt"
    ;;
  train)
    OUT_DIR=${2:-${OUT:-$PWD/out/gpu_train_dit}}
    mkdir -p "$OUT_DIR"
    if [ ! -f "$DIT_OUT/captions.pt" ] && [ -f "$DIT_OUT/captions_packed.pt" ]; then
      $PY - "$DIT_OUT" <<'UNPACK'
import sys, torch
d = sys.argv[1]
p = torch.load(f"{d}/captions_packed.pt", weights_only=True)
mask = p["mask"]
states = torch.zeros(*mask.shape, p["tokens"].shape[-1], dtype=p["tokens"].dtype)
states[mask.bool()] = p["tokens"]
torch.save({"states": states, "mask": mask, "empty_states": p["empty_states"], "empty_mask": p["empty_mask"],
            "texts": p["texts"]}, f"{d}/captions.pt")
UNPACK
    fi
    test -f "$DIT_OUT/captions.pt" || { echo "no $DIT_OUT/captions.pt: run 'prepare' first and carry captions_packed.pt" >&2; exit 2; }
    SITE=/tmp/site-dit
    if ls .whl/*.whl > /dev/null 2>&1 && [ "${DIT_DEVICE:-cuda}" = cuda ]; then
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    fi
    export PYTHONPATH=python${SITE:+:$SITE} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    { date -u; nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true; } | tee "$OUT_DIR/train_dit.log"
    set +e
    $PY -m osmos.zoo.train shapes-dit --no-phases --seed 0 --device "${DIT_DEVICE:-cuda}" "${CONFIG_ARGS[@]}" \
      --steps "${DIT_STEPS:-26000}" --decay-steps "${DIT_DECAY:-6000}" --minutes "${DIT_MINUTES:-8}" \
      --fit-steps ${DIT_COMPILE:+--compile} --resume --out "$DIT_OUT" 2>&1 | tr '\r' '\n' | grep -v '^ *$' | awk 'NR % 200 == 1 || /steps|card|compile|Error|error/' \
      >> "$OUT_DIR/train_dit.log"
    rc=${PIPESTATUS[0]}
    set -e
    cp "$DIT_OUT/shapes-dit.safetensors" "$DIT_OUT/shapes-dit.json" "$OUT_DIR/"
    $PY -c "import json, sys; c = json.load(open(sys.argv[1]))['card']; print('steps', c['steps'], 'minutes', c['train_minutes'], 'loss', c['final_loss_ema'])" \
      "$DIT_OUT/shapes-dit.json" | tee -a "$OUT_DIR/train_dit.log"
    exit "$rc"
    ;;
  *)
    echo "usage: bash scripts/gpu_train_dit.sh prepare | train [OUT_DIR]   (see the comments at the top)" >&2
    exit 2
    ;;
esac
