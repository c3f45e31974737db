"""Step Rehash vs the DeepCache-style fixed schedule on the zoo's trained shapes-unet (a diffusers
UNet2DConditionModel), same prompts, seeds and sampler in one process.

For each number of key steps (steps whose UNet call computes the deep blocks), the fixed
schedule keys every interval-th step and Step Rehash keys the steps `calibrate_rehash` chose on
a calibration batch (other prompts' wordings, another seed). Reported against the full
computation: wall time per batch, the speed-up (median over --repeats of full / schedule, each
pair timed back to back so that a shared machine's changing load hits both alike), the zoo
classifier's accuracy (shape and colour both right) and the images' relative L2 distance to the
full computation's.

    python benchmarks/rehash_eval.py [--quick] [--steps 20] [--per-pair 2]

No trained video model ships with osmos yet, so this runs on the image UNet: the same blocks
(down / mid / up) are skipped as in a UNetMotionModel, where the tests check the mechanics.
"""

from __future__ import annotations

import argparse
import statistics
import time

import osmos.zoo
import torch
from osmos.accel.streamline import RehashConfig, calibrate_rehash, rehash
from osmos.zoo.evaluate import pair_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--per-pair", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per schedule (median)")
    ap.add_argument("--intervals", default="2,3,4", help="fixed-schedule intervals (and matching budgets)")
    ap.add_argument("--quick", action="store_true", help="10 steps, 1 image per pair, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.per_pair, args.repeats = 10, 1, 1
    pipe = osmos.zoo.load("shapes-unet", scheduler="ddim")
    clf = osmos.zoo.load("classifier")
    prompts, labels = pair_prompts("train", args.per_pair)
    calib_prompts, _ = pair_prompts("heldout", 1)

    def generate(batch: list[str], seed: int) -> torch.Tensor:
        return pipe(batch, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(seed))

    def timed(fn) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        images = fn()
        return images, time.perf_counter() - start

    def paired(config) -> tuple[torch.Tensor, float, float]:
        """(schedule's images, its median seconds, median of full / schedule time), runs alternated."""
        times, ratios, images = [], [], None
        for _ in range(args.repeats):
            _, t_ref = timed(lambda: generate(prompts, seed=0))
            handle = rehash(pipe.unet, config)
            try:
                images, t = timed(lambda: generate(prompts, seed=0))
            finally:
                handle.remove()
            times.append(t)
            ratios.append(t_ref / t)
        return images, statistics.median(times), statistics.median(ratios)

    def accuracy(images: torch.Tensor) -> float:
        pred = clf.predict(images)
        return ((pred["shape"] == labels[:, 0]) & (pred["colour"] == labels[:, 1])).float().mean().item()

    generate(prompts[:4], seed=1)  # warm-up
    full, t_full = timed(lambda: generate(prompts, seed=0))
    rows = [("all", "full computation", list(range(args.steps)), t_full, 1.0, accuracy(full), 0.0)]
    for interval in (int(v) for v in args.intervals.split(",")):
        keys = len(range(0, args.steps, interval))
        calibrated = calibrate_rehash(pipe.unet, lambda: generate(calib_prompts, seed=7), budget=keys)
        for name, config in (("fixed interval (DeepCache-style)", RehashConfig(interval=interval)),
                             ("Step Rehash (calibrated)", calibrated)):
            images, t, speed = paired(config)
            rel = ((images - full).flatten(1).norm(dim=1) / full.flatten(1).norm(dim=1)).mean().item()
            steps = list(range(0, args.steps, interval)) if config.interval else list(config.key_steps)
            rows.append((keys, name, steps, t, speed, accuracy(images), rel))
            print(f"# {keys} keys, {name}: {t:.2f} s, accuracy {rows[-1][5]:.3f}, rel {rel:.4f}", flush=True)
    print(f"\nshapes-unet (16x16, UNet2DConditionModel), DDIM {args.steps} steps, classifier-free guidance, "
          f"{len(prompts)} prompts (train wordings, {args.per_pair} per shape-colour pair), depth 1 "
          f"(the outermost down and up block always run), {torch.get_num_threads()} threads\n")
    print("| key steps | schedule | steps keyed | s per batch | speed-up | accuracy | rel. L2 to full |")
    print("|---|---|---|---|---|---|---|")
    for keys, name, steps, t, speed, acc, rel in rows:
        shown = "all" if keys == "all" else steps
        print(f"| {keys} | {name} | {shown} | {t:.2f} | {speed:.2f}x | {acc:.3f} | {rel:.4f} |")


if __name__ == "__main__":
    main()
