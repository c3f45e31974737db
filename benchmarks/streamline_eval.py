"""Streamlined Inference on diffusers UNetMotionModel (AnimateDiff) and
UNetSpatioTemporalConditionModel (SVD): peak memory, time and exactness of the osmos Feature
Slicer + Operator Grouping against the unsliced model and diffusers' own feed-forward chunking
and (AnimateDiff) FreeNoise split inference, same model and inputs.

Peak memory: each configuration runs in a fresh subprocess; after building the model and
inputs the peak-RSS counter is reset (Linux /proc/self/clear_refs), so the figure is the
forward pass's peak resident memory above what was resident before it. The subprocess runs
with MALLOC_MMAP_THRESHOLD_=65536 so glibc maps every large tensor separately and returns it
on free: resident memory then follows the live tensors instead of the allocator's cache.
Time: back-to-back pairs of (original, configuration) calls in one process after a warm-up;
"this / original" is the median of the pairs' ratios, "time" the configuration's median.

    python benchmarks/streamline_eval.py [--model motion|svd|both] [--frames 16] [--size 64] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

CONFIGS = {
    "original": {},
    "diffusers forward chunking": {"chunking": True},
    "diffusers free_noise split (2 frames / 256 positions)": {"free_noise": True},
    "osmos slices 4/4": {"spatial": 4, "temporal": 4},
    "osmos slices 8/16": {"spatial": 8, "temporal": 16},
    "osmos slices 16/16": {"spatial": 16, "temporal": 16},
}
MODELS = ("motion", "svd")


def build(model: str, frames: int, size: int, seed: int = 0):
    """(unet, call) for a tiny random diffusers UNet with 64 / 128 channels at realistic
    activation shapes; call() runs one denoising forward pass on fixed inputs."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if model == "motion":
        from diffusers import UNetMotionModel

        unet = UNetMotionModel(
            block_out_channels=(64, 128), layers_per_block=1,
            down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
            up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
            norm_num_groups=32, cross_attention_dim=64, num_attention_heads=4, motion_num_attention_heads=4,
            motion_max_seq_length=32,
        ).eval()
        x = torch.randn(1, 4, frames, size, size, generator=g)
        ctx = torch.randn(1, 8, 64, generator=g).repeat_interleave(frames, dim=0)  # as AnimateDiffPipeline passes it
        return unet, lambda: unet(x, torch.tensor(500), encoder_hidden_states=ctx).sample
    from diffusers import UNetSpatioTemporalConditionModel

    unet = UNetSpatioTemporalConditionModel(
        sample_size=size, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(64, 128), layers_per_block=1, cross_attention_dim=64, num_attention_heads=(4, 8),
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, num_frames=frames,
    ).eval()
    x = torch.randn(1, frames, 8, size, size, generator=g)
    ctx = torch.randn(1, 1, 64, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]])  # fps, motion bucket, noise augmentation, as SVD passes them
    return unet, lambda: unet(x, torch.tensor(500), encoder_hidden_states=ctx, added_time_ids=ids).sample


def applies(model: str, cfg: dict) -> bool:
    return not (cfg.get("free_noise") and model != "motion")  # free_noise is AnimateDiff's


def configure(unet, cfg: dict, frames: int, size: int):
    from osmos.accel.streamline import streamline

    if cfg.get("chunking"):
        unet.enable_forward_chunking(chunk_size=1, dim=1)
        return None
    if cfg.get("free_noise"):
        from diffusers.pipelines.free_noise_utils import AnimateDiffFreeNoiseMixin

        class Holder(AnimateDiffFreeNoiseMixin):  # the mixin only needs .unet
            def __init__(self, unet):
                self.unet = unet

        Holder(unet).enable_free_noise_split_inference(spatial_split_size=256, temporal_split_size=2)
        return None
    if cfg:
        return streamline(unet, spatial_slices=min(cfg["spatial"], frames), temporal_slices=cfg["temporal"])
    return None


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def one(model: str, name: str, frames: int, size: int) -> dict:
    """Peak working memory of one forward pass (run in a fresh subprocess)."""
    unet, call = build(model, frames, size)
    configure(unet, CONFIGS[name], frames, size)
    # no warm-up: a warm-up would leave freed pages resident in the allocator and hide the peak
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    base = _rss_kb("VmRSS")
    with torch.no_grad():
        call()
    return {"name": name, "peak_mb": (_rss_kb("VmHWM") - base) / 1024}


def _timed(call) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        call()
    return time.perf_counter() - t0


def time_and_diff(model: str, frames: int, size: int, repeats: int) -> dict:
    """Per configuration: the max abs difference of its output from the original's, and its time
    against the original's from back-to-back pairs of calls in this process (the median of the
    pairs' ratios, robust to a shared machine's changing load)."""
    unet, call = build(model, frames, size)
    with torch.no_grad():
        want = call()  # also the warm-up
    results = {}
    for name, cfg in CONFIGS.items():
        if not cfg or not applies(model, cfg):
            continue
        other, other_call = build(model, frames, size)
        configure(other, cfg, frames, size)
        with torch.no_grad():
            diff = (other_call() - want).abs().max().item()
        pairs = [(_timed(call), _timed(other_call)) for _ in range(repeats)]
        results[name] = {"diff": diff, "seconds": statistics.median(t for _, t in pairs),
                         "original_s": statistics.median(t for t, _ in pairs),
                         "ratio": statistics.median(t / o for o, t in pairs)}
        del other, other_call
    return results


def table(model: str, frames: int, size: int, repeats: int) -> str:
    timing = time_and_diff(model, frames, size, repeats)
    rows = []
    for name, cfg in CONFIGS.items():
        if not applies(model, cfg):
            continue
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        out = subprocess.run([sys.executable, __file__, "--one", name, "--model", model, "--frames", str(frames),
                              "--size", str(size)], capture_output=True, text=True, check=True, env=env).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    ref = rows[0]
    original_s = statistics.median(t["original_s"] for t in timing.values())
    title = {"motion": "UNetMotionModel (AnimateDiff)", "svd": "UNetSpatioTemporalConditionModel (SVD)"}[model]
    lines = [f"{title}, 64/128 channels, {frames} frames of {size}x{size} latents, float32, "
             f"{torch.get_num_threads()} threads", "",
             "| configuration | peak working memory (MB) | original / this | time (s) | this / original "
             "| max abs diff vs original |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        t = timing.get(r["name"], {"diff": 0.0, "seconds": original_s, "ratio": 1.0})
        lines.append(f"| {r['name']} | {r['peak_mb']:.0f} | {ref['peak_mb'] / max(r['peak_mb'], 1e-9):.2f}x | "
                     f"{t['seconds']:.2f} | {t['ratio']:.2f}x | {t['diff']:.2e} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=MODELS + ("both",), default="both")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="8 frames of 32x32 latents")
    ap.add_argument("--repeats", type=int, default=3, help="back-to-back (original, configuration) timing pairs")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.frames, args.size = 8, 32
    if args.one:
        print(json.dumps(one(args.model, args.one, args.frames, args.size)))
        return
    for model in (MODELS if args.model == "both" else (args.model,)):
        print(table(model, args.frames, args.size, args.repeats) + "\n", flush=True)


if __name__ == "__main__":
    main()
