"""Acceleration hot paths against their torch equivalents, same process, same inputs.

* sliced GroupNorm+SiLU: osmos two-pass sliced op (S slices) vs torch F.group_norm + F.silu
  on the whole tensor (no slicing: the peer a user would otherwise call);
* HarmoniCa cache step: osmos.ops.cache_select (fused per-sample reuse-or-refresh + gated
  residual) vs torch.where + multiply + add + cache refresh.

    python benchmarks/bench_accel_ops.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from osmos.ops import cache_select, sliced_group_norm


def median_ms(fn, device: str, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args(argv)
    dev = args.device
    rows = []
    shapes = [(1, 320, 16 * 32 * 32)] if args.quick else [(1, 320, 16 * 32 * 32), (1, 640, 16 * 64 * 64)]
    for n, c, l in shapes:
        x = torch.randn(n, c, l, device=dev)
        w, b = torch.randn(c, device=dev), torch.randn(c, device=dev)
        t_torch = median_ms(lambda: F.silu(F.group_norm(x, 32, w, b, 1e-6)), dev, args.reps)
        for s in (1, 8):
            t = median_ms(lambda: sliced_group_norm(x, 32, w, b, 1e-6, True, slices=s), dev, args.reps)
            rows.append((f"GroupNorm+SiLU [{n},{c},{l}], {s} slice(s)", t, t_torch))
    for bsz, t_, d in [(4, 256, 1152)] if args.quick else [(4, 256, 1152), (8, 1024, 1152)]:
        h, fresh, cache = (torch.randn(bsz, t_, d, device=dev) for _ in range(3))
        gate = torch.randn(bsz, d, device=dev)
        use = torch.arange(bsz, device=dev) % 2 == 0

        def torch_step():
            src = torch.where(use[:, None, None], cache, fresh)
            out = h + gate[:, None, :] * src
            cache.copy_(src)
            return out

        t_torch = median_ms(torch_step, dev, args.reps)
        t = median_ms(lambda: cache_select(h, gate, fresh, cache, use), dev, args.reps)
        rows.append((f"cache_select [{bsz},{t_},{d}], half the batch reused", t, t_torch))
    print(f"device {dev}, {torch.get_num_threads()} threads, float32, medians of {args.reps}\n")
    print("| case | osmos (ms) | torch (ms) | torch / osmos |")
    print("|---|---|---|---|")
    for name, t, tt in rows:
        print(f"| {name} | {t:.2f} | {tt:.2f} | {tt / t:.2f}x |")


if __name__ == "__main__":
    main()
