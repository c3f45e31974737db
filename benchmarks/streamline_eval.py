"""Streamlined Inference on a diffusers UNetMotionModel: peak memory, time and exactness of the
osmos Feature Slicer + Operator Grouping against the unsliced model and diffusers' own
feed-forward chunking, same model and inputs.

Peak memory: each configuration runs in a fresh subprocess; after building the model and
inputs the peak-RSS counter is reset (Linux /proc/self/clear_refs), so the figure is the
forward pass's peak resident memory above what was resident before it. The subprocess runs
with MALLOC_MMAP_THRESHOLD_=65536 so glibc maps every large tensor separately and returns it
on free: resident memory then follows the live tensors instead of the allocator's cache.

    python benchmarks/streamline_eval.py [--frames 16] [--size 64] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

CONFIGS = {
    "original": {},
    "diffusers forward chunking": {"chunking": True},
    "osmos slices 4/4": {"spatial": 4, "temporal": 4},
    "osmos slices 8/16": {"spatial": 8, "temporal": 16},
}


def build(frames: int, size: int, seed: int = 0):
    from diffusers import UNetMotionModel

    torch.manual_seed(seed)
    unet = UNetMotionModel(
        block_out_channels=(64, 128), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
        norm_num_groups=32, cross_attention_dim=64, num_attention_heads=4, motion_num_attention_heads=4,
        motion_max_seq_length=32,
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, 4, frames, size, size, generator=g)
    ctx = torch.randn(1, 8, 64, generator=g).repeat_interleave(frames, dim=0)
    return unet, x, ctx


def forward(unet, x, ctx):
    with torch.no_grad():
        return unet(x, torch.tensor(500), encoder_hidden_states=ctx).sample


def configure(unet, cfg: dict):
    from osmos.accel.streamline import streamline

    if cfg.get("chunking"):
        unet.enable_forward_chunking(chunk_size=1, dim=1)
        return None
    if cfg:
        return streamline(unet, spatial_slices=cfg["spatial"], temporal_slices=cfg["temporal"])
    return None


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def one(name: str, frames: int, size: int) -> dict:
    unet, x, ctx = build(frames, size)
    configure(unet, CONFIGS[name])
    # no warm-up: a warm-up would leave freed pages resident in the allocator and hide the peak
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    base = _rss_kb("VmRSS")
    forward(unet, x, ctx)
    peak_mb = (_rss_kb("VmHWM") - base) / 1024
    times = []
    for _ in range(3):  # timed after the first call, which also builds oneDNN primitives per shape
        t0 = time.perf_counter()
        forward(unet, x, ctx)
        times.append(time.perf_counter() - t0)
    return {"name": name, "peak_mb": peak_mb, "seconds": sorted(times)[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="8 frames of 32x32 latents")
    ap.add_argument("--device", default="cpu", help="only cpu is measured by this script")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.frames, args.size = 8, 32
    if args.one:
        print(json.dumps(one(args.one, args.frames, args.size)))
        return

    # exactness, in this process
    unet, x, ctx = build(args.frames, args.size)
    want = forward(unet, x, ctx)
    diffs = {}
    for name, cfg in CONFIGS.items():
        if not cfg:
            continue
        unet, x, ctx = build(args.frames, args.size)
        configure(unet, cfg)
        diffs[name] = (forward(unet, x, ctx) - want).abs().max().item()

    rows = []
    for name in CONFIGS:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        out = subprocess.run([sys.executable, __file__, "--one", name, "--frames", str(args.frames), "--size", str(args.size)],
                             capture_output=True, text=True, check=True, env=env).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    ref = rows[0]
    print(f"UNetMotionModel (64/128 channels), {args.frames} frames of {args.size}x{args.size} latents, float32, "
          f"{torch.get_num_threads()} threads\n")
    print("| configuration | peak working memory (MB) | original / this | time (s, median of 3) | this / original | max abs diff vs original |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        d = diffs.get(r["name"], 0.0)
        print(f"| {r['name']} | {r['peak_mb']:.0f} | {ref['peak_mb'] / max(r['peak_mb'], 1e-9):.2f}x | "
              f"{r['seconds']:.2f} | {r['seconds'] / ref['seconds']:.2f}x | {d:.2e} |")


if __name__ == "__main__":
    main()
