"""Streamlined Inference on diffusers UNetMotionModel (AnimateDiff), UNetSpatioTemporalConditionModel
(SVD) and the zoo's trained shapes-video (a UNetMotionModel): peak memory, time and exactness of
the osmos Feature Slicer + Operator Grouping against the unsliced model and diffusers' own
feed-forward chunking and (motion models) FreeNoise split inference, same weights and inputs.

Peak memory: each configuration runs in a fresh subprocess; after building the model and
inputs the peak-RSS counter is reset (Linux /proc/self/clear_refs), so the figure is the
forward pass's peak resident memory above what was resident before it. The subprocess runs
with MALLOC_MMAP_THRESHOLD_=65536 so glibc maps every large tensor separately and returns it
on free: resident memory then follows the live tensors instead of the allocator's cache.
Time: interleaved in one process after a warm-up: each round times one (original,
configuration) pair per configuration, alternating which goes first; "this / original" is the
median of the pairs' ratios, of wall time and of the process's CPU time (1 thread by default).

    python benchmarks/streamline_eval.py [--model motion|svd|shapes-video|both] [--frames F] [--size S]
        [--repeats 5] [--configs "osmos slices 8/16,..."] [--threads 1] [--quick]
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
    "osmos slices 8/16 adaptive": {"spatial": 8, "temporal": 16, "adaptive": True},
    "osmos slices 16/16 adaptive": {"spatial": 16, "temporal": 16, "adaptive": True},
}
MODELS = ("motion", "svd", "shapes-video")
TITLES = {"motion": "UNetMotionModel (AnimateDiff), random weights, 64/128 channels",
          "svd": "UNetSpatioTemporalConditionModel (SVD), random weights, 64/128 channels",
          "shapes-video": "the zoo's trained shapes-video (UNetMotionModel, 32/64/64 channels), CFG batch of 2"}
DEFAULT_SHAPE = {"motion": (16, 64), "svd": (16, 64), "shapes-video": (8, 16)}  # (frames, latent size)


def build(model: str, frames: int, size: int, seed: int = 0):
    """(unet, call) for a tiny random diffusers UNet with 64 / 128 channels at realistic
    activation shapes; call() runs one denoising forward pass on fixed inputs."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if model == "shapes-video":
        return _zoo_video(frames, size, g)
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


def _zoo_video(frames: int, size: int, g: torch.Generator):
    """(unet, call) for the zoo's trained shapes-video: one classifier-free-guidance step of its
    sampler (unconditional and prompted halves in one batch of 2) on fixed noise."""
    from osmos import zoo
    from osmos.zoo.models import predict_noise

    pipe = zoo.load("shapes-video")
    unet = pipe.unet.eval()
    states, mask = pipe.encode_prompt(["", "a red circle"])
    x = torch.randn(2, unet.config.in_channels, frames, size, size, generator=g)
    return unet, lambda: predict_noise(unet, x, torch.tensor(500), states, mask)


def applies(model: str, cfg: dict) -> bool:
    return not (cfg.get("free_noise") and model == "svd")  # free_noise is AnimateDiff's


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
        return streamline(unet, spatial_slices=min(cfg["spatial"], frames), temporal_slices=cfg["temporal"],
                          adaptive=cfg.get("adaptive", False))
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


def _timed(call) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        call()
    return time.perf_counter() - w0, time.process_time() - c0


def _ratios(pairs, k: int) -> dict:
    r = [t[k] / o[k] for o, t in pairs]
    return {"ratio": statistics.median(r), "lo": min(r), "hi": max(r),
            "seconds": statistics.median(t[k] for _, t in pairs), "original_s": statistics.median(o[k] for o, _ in pairs)}


def time_and_diff(model: str, frames: int, size: int, repeats: int, names) -> dict:
    """Per configuration: the max abs difference of its output from the original's, and its time
    against the original's, interleaved in this process: every configuration has its own copy of
    the model (same weights); each of `repeats` rounds times one (original, configuration) pair
    per configuration, the pair's order alternating between rounds. Ratios are medians of the
    pairs' ratios (robust to a shared machine's changing load), of wall time ("wall") and of
    this process's CPU time ("cpu": the work done, less sensitive to other jobs' load)."""
    call = build(model, frames, size)[1]
    with torch.no_grad():
        want = call()  # also the original's warm-up
    calls, results = {}, {}
    for name in names:
        other, other_call = build(model, frames, size)
        configure(other, CONFIGS[name], frames, size)
        with torch.no_grad():
            results[name] = {"diff": (other_call() - want).abs().max().item()}  # also the warm-up
        calls[name] = other_call
    pairs = {name: [] for name in names}
    for r in range(repeats):
        for name in names:
            if r % 2 == 0:
                pairs[name].append((_timed(call), _timed(calls[name])))
            else:
                t = _timed(calls[name])
                pairs[name].append((_timed(call), t))
            (ow, oc), (tw, tc) = pairs[name][-1]
            print(f"round {r}: {name}: original {ow:.2f} s (cpu {oc:.2f}), this {tw:.2f} s (cpu {tc:.2f})",
                  file=sys.stderr, flush=True)
    for name in names:
        results[name].update(wall=_ratios(pairs[name], 0), cpu=_ratios(pairs[name], 1))
    return results


def table(model: str, frames: int, size: int, repeats: int, names) -> str:
    names = [n for n in names if applies(model, CONFIGS[n])]
    timing = time_and_diff(model, frames, size, repeats, [n for n in names if CONFIGS[n]])
    rows = []
    for name in ["original"] + [n for n in names if n != "original"]:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        cmd = [sys.executable, __file__, "--one", name, "--model", model, "--frames", str(frames), "--size", str(size),
               "--threads", str(torch.get_num_threads())]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    ref = rows[0]
    lines = [(f"{TITLES[model]}, {frames} frames of {size}x{size} latents, float32, {torch.get_num_threads()} "
              f"thread(s), {repeats} interleaved timing rounds"), "",
             ("| configuration | peak working memory (MB) | original / this | wall time (s) | wall this / original "
              "(min-max) | CPU time (s) | CPU this / original (min-max) | max abs diff vs original |"),
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = timing.get(r["name"])
        if t is None:  # the original: its median over every pair
            cells = []
            for k in ("wall", "cpu"):
                cells += [f"{statistics.median(x[k]['original_s'] for x in timing.values()):.2f}" if timing else "-",
                          "1.00x"]
            diff = 0.0
        else:
            cells = [c for k in ("wall", "cpu") for c in
                     (f"{t[k]['seconds']:.2f}", f"{t[k]['ratio']:.2f}x ({t[k]['lo']:.2f}-{t[k]['hi']:.2f})")]
            diff = t["diff"]
        lines.append(f"| {r['name']} | {r['peak_mb']:.0f} | {ref['peak_mb'] / max(r['peak_mb'], 1e-9):.2f}x | "
                     + " | ".join(cells) + f" | {diff:.2e} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=MODELS + ("both",), default="both", help="both = motion and svd")
    ap.add_argument("--frames", type=int, help="default: 16 (motion, svd), 8 (shapes-video, its training length)")
    ap.add_argument("--size", type=int, help="latent size; default: 64 (motion, svd), 16 (shapes-video)")
    ap.add_argument("--quick", action="store_true", help="8 frames of 32x32 latents")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (one pair per configuration)")
    ap.add_argument("--configs", help="comma-separated configuration names (default: all); 'original' is always run")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine, 2 threads stall at every barrier)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.frames, args.size = 8, 32
    names = list(CONFIGS) if not args.configs else [n.strip() for n in args.configs.split(",")]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    for model in (("motion", "svd") if args.model == "both" else (args.model,)):
        frames = args.frames or DEFAULT_SHAPE[model][0]
        size = args.size or DEFAULT_SHAPE[model][1]
        if args.one:
            print(json.dumps(one(model, args.one, frames, size)))
            return
        print(table(model, frames, size, args.repeats, names) + "\n", flush=True)


if __name__ == "__main__":
    main()
