"""Benchmark of the randomized-parameter-sharing kernels (same process, same inputs).

1. Hashed gather (materialise W [rows, cols] from M): osmos.ops.rps_gather vs torch indexing
   `M[idx] * sign * scale` with idx / sign precomputed (the torch path's best case), per mapper.
   Also the backward scatter vs torch `index_add_`.
2. Hashed linear y = x @ W^T: osmos.ops.rps_linear (fused Triton on a GPU; gather + matmul on the
   CPU) vs dense F.linear with a materialised W and vs gather + F.linear.

Prints markdown tables (medians, ratios) and writes benchmarks/bench_rps.csv.
Usage: python benchmarks/bench_rps.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time

import torch
import torch.nn.functional as F

from osmos.ops import rps_gather, rps_indices, rps_linear, rps_scatter
from osmos.ops.rps_mapping import LayerMap

MAPPERS = ("stable", "roast", "hashednet")


def timeit(fn, device, reps: int) -> float:
    """Median seconds of fn() over reps runs after warm-up."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_gather(device, shapes, ratio, reps, rows_out):
    print(f"\n### Hashed gather and scatter ({device.type}, compression {ratio}x, float32, medians)\n")
    print("| mapper | W shape | osmos gather (ms) | torch M[idx]*sign*scale (ms) | speed-up | osmos scatter (ms) | torch index_add_ (ms) | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for rows, cols in shapes:
        n = rows * cols
        m = max(1, n // ratio)
        M = torch.randn(m, device=device)
        G = torch.randn(rows, cols, device=device)
        for kind in MAPPERS:
            config = LayerMap(kind, m, 0, rows, cols, seed=1).config()
            idx, sign = rps_indices(config, rows, cols, device)
            signf = sign.float()
            flat_idx = idx.reshape(-1)
            t_os = timeit(lambda: rps_gather(M, config, rows, cols, 0.5), device, reps)
            t_tc = timeit(lambda: M[idx] * signf * 0.5, device, reps)
            t_os_s = timeit(lambda: rps_scatter(G, config, 0.5), device, reps)
            t_tc_s = timeit(lambda: torch.zeros(m, device=device).index_add_(0, flat_idx, (G * 0.5 * signf).reshape(-1)),
                            device, reps)
            print(f"| {kind} | {rows}x{cols} | {t_os*1e3:.3f} | {t_tc*1e3:.3f} | {t_tc/t_os:.2f}x | {t_os_s*1e3:.3f} "
                  f"| {t_tc_s*1e3:.3f} | {t_tc_s/t_os_s:.2f}x |")
            rows_out.append(dict(bench="gather", device=device.type, mapper=kind, shape=f"{rows}x{cols}",
                                 osmos_ms=t_os * 1e3, torch_ms=t_tc * 1e3, scatter_ms=t_os_s * 1e3,
                                 torch_scatter_ms=t_tc_s * 1e3))


def bench_linear(device, shapes, ratio, reps, rows_out):
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    print(f"\n### Hashed linear forward ({device.type}, {dtype}, compression {ratio}x; osmos rps_linear = "
          "gather + matmul by default; the fused Triton kernel is opt-in, GPU only)\n")
    print("| mapper | B x K -> N | dense F.linear (ms) | gather + F.linear (ms) | osmos rps_linear (ms) | "
          "fused Triton (ms) | osmos / dense |")
    print("|---|---|---|---|---|---|---|")
    for B, K, N in shapes:
        n = N * K
        m = max(1, n // ratio)
        x = torch.randn(B, K, device=device, dtype=dtype)
        M = torch.randn(m, device=device, dtype=dtype)
        for kind in MAPPERS:
            config = LayerMap(kind, m, 0, N, K, seed=1).config()
            W = rps_gather(M, config, N, K, 0.5)
            t_dense = timeit(lambda: F.linear(x, W), device, reps)
            t_gl = timeit(lambda: F.linear(x, rps_gather(M, config, N, K, 0.5)), device, reps)
            t_os = timeit(lambda: rps_linear(x, M, config, N, K, 0.5), device, reps)
            t_fused = float("nan")
            if device.type == "cuda":
                os.environ["OSMOS_GPU_BACKEND"] = "triton"
                try:
                    t_fused = timeit(lambda: rps_linear(x, M, config, N, K, 0.5), device, reps)
                finally:
                    del os.environ["OSMOS_GPU_BACKEND"]
            print(f"| {kind} | {B}x{K} -> {N} | {t_dense*1e3:.3f} | {t_gl*1e3:.3f} | {t_os*1e3:.3f} | "
                  f"{t_fused*1e3:.3f} | {t_os/t_dense:.2f}x |")
            rows_out.append(dict(bench="linear", device=device.type, mapper=kind, shape=f"{B}x{K}->{N}",
                                 osmos_ms=t_os * 1e3, dense_ms=t_dense * 1e3, gather_linear_ms=t_gl * 1e3,
                                 fused_triton_ms=t_fused * 1e3))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    parser.add_argument("--ratio", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads for osmos and torch alike (default: torch's own)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch threads: {torch.get_num_threads()}")
    reps = 5 if args.quick else 21
    if device.type == "cuda":
        gshapes = [(4096, 4096), (8192, 8192)]
        lshapes = [(4096, 4096, 4096), (8192, 4096, 4096), (16384, 8192, 8192)]
    else:
        gshapes = [(256, 512)] if args.quick else [(1024, 1024), (4096, 1024)]
        lshapes = [(64, 256, 256)] if args.quick else [(256, 1024, 1024), (2048, 1024, 1024)]
    rows = []
    bench_gather(device, gshapes, args.ratio, reps, rows)
    bench_linear(device, lshapes, args.ratio, reps, rows)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"bench_rps_{device.type}.csv")
    keys = sorted({k for r in rows for k in r})
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
