"""Benchmark of the randomized-parameter-sharing kernels (same process, same inputs).

1. Hashed gather (materialise W [rows, cols] from M): osmos.ops.rps_gather vs torch indexing
   `M[idx] * sign * scale` with idx / sign precomputed (the torch path's best case), per mapper,
   timed interleaved call by call, beside a floor for any op that returns a fresh W:
   `torch.empty(rows, cols).fill_(scale)` (allocation, first-touch page faults, writing W).
   Also the backward scatter vs torch `index_add_`. On a GPU also the CUDA kernels that hash every
   element (OSMOS_RPS_CUDA_WALK=0) beside the default warp-chunk walk.
2. Hashed linear y = x @ W^T: osmos.ops.rps_linear (fused Triton on a GPU; gather + matmul on the
   CPU) vs dense F.linear with a materialised W and vs gather + F.linear.

3. With --ab OLD_C_SO: only an interleaved A/B of another osmos._C build (say the previous
   commit's, copied aside) against this one, plus torch, for 1 and 2 threads.

Prints markdown tables (medians, ratios) and writes benchmarks/bench_rps_<device>.csv.
Usage: python benchmarks/bench_rps.py [--quick] [--threads N] [--reps N] [--gather-only] [--clock wall|cpu]
                                     [--ab OLD_C_SO [--ab-threads 1,2]]
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
from osmos.ops._common import gpu_backend
from osmos.ops.rps_mapping import LayerMap

MAPPERS = ("stable", "roast", "hashednet")


# The CPU timer: wall clock (time.perf_counter), or with --clock cpu the process's CPU time
# (time.process_time, all threads summed), which a loaded machine's scheduling does not inflate.
CLOCK = time.perf_counter


def timeit(fn, device, reps: int) -> float:
    """Median seconds of fn() over reps runs after warm-up."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def timeit_interleaved(fns, device, reps: int) -> list[float]:
    """Median seconds of each fn over reps rounds, the fns called in turn within a round (CPU; on a
    GPU each is timed alone with timeit)."""
    if device.type == "cuda":
        return [timeit(fn, device, reps) for fn in fns]
    for _ in range(3):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, t in zip(fns, times):
            t0 = CLOCK()
            fn()
            t.append(CLOCK() - t0)
    return [statistics.median(t) for t in times]


def bench_gather(device, shapes, ratio, reps, rows_out):
    print(f"\n### Hashed gather and scatter ({device.type}, compression {ratio}x, float32, medians)\n")
    print("| mapper | W shape | osmos gather (ms) | torch M[idx]*sign*scale (ms) | speed-up | fresh-W floor (ms) | "
          "osmos / floor | osmos scatter (ms) | torch index_add_ (ms) | speed-up | CUDA per-element gather / scatter (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
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
            t_os, t_tc, t_floor = timeit_interleaved(
                [lambda: rps_gather(M, config, rows, cols, 0.5), lambda: M[idx] * signf * 0.5,
                 lambda: torch.empty(rows, cols, device=device).fill_(0.5)], device, reps)
            t_os_s = timeit(lambda: rps_scatter(G, config, 0.5), device, reps)
            t_tc_s = timeit(lambda: torch.zeros(m, device=device).index_add_(0, flat_idx, (G * 0.5 * signf).reshape(-1)),
                            device, reps)
            t_elem = t_elem_s = float("nan")
            if device.type == "cuda" and gpu_backend("rps_gather") == "cuda":
                # the CUDA kernels before the warp-chunk walk: one thread per element, every hash per element
                os.environ["OSMOS_RPS_CUDA_WALK"] = "0"
                try:
                    t_elem = timeit(lambda: rps_gather(M, config, rows, cols, 0.5), device, reps)
                    t_elem_s = timeit(lambda: rps_scatter(G, config, 0.5), device, reps)
                finally:
                    os.environ.pop("OSMOS_RPS_CUDA_WALK", None)
            print(f"| {kind} | {rows}x{cols} | {t_os*1e3:.3f} | {t_tc*1e3:.3f} | {t_tc/t_os:.2f}x | {t_floor*1e3:.3f} | "
                  f"{t_os/t_floor:.2f}x | {t_os_s*1e3:.3f} | {t_tc_s*1e3:.3f} | {t_tc_s/t_os_s:.2f}x | "
                  f"{t_elem*1e3:.3f} / {t_elem_s*1e3:.3f} |")
            rows_out.append(dict(bench="gather", device=device.type, mapper=kind, shape=f"{rows}x{cols}",
                                 osmos_ms=t_os * 1e3, torch_ms=t_tc * 1e3, fresh_fill_ms=t_floor * 1e3,
                                 scatter_ms=t_os_s * 1e3, torch_scatter_ms=t_tc_s * 1e3,
                                 per_element_gather_ms=t_elem * 1e3, per_element_scatter_ms=t_elem_s * 1e3))


def bench_linear(device, shapes, ratio, reps, rows_out):
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    print(f"\n### Hashed linear forward ({device.type}, {dtype}, compression {ratio}x; osmos rps_linear = "
          "gather + matmul by default; the fused Triton kernel is opt-in, GPU only)\n")
    print("| mapper | B x K -> N | dense F.linear (ms) | gather + F.linear (ms) | osmos rps_linear (ms) | "
          "fused Triton (ms) | fused, W a tile ahead (ms) | osmos / dense |")
    print("|---|---|---|---|---|---|---|---|")
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
            t_fused = t_ahead = float("nan")
            if device.type == "cuda" and kind != "hashednet":  # element hashing: 20-357 ms, timed in session 13
                os.environ["OSMOS_GPU_BACKEND"] = "triton"
                try:
                    t_fused = timeit(lambda: rps_linear(x, M, config, N, K, 0.5), device, reps)
                    os.environ["OSMOS_RPS_LOAD_AHEAD"] = "1"
                    t_ahead = timeit(lambda: rps_linear(x, M, config, N, K, 0.5), device, reps)
                finally:
                    for var in ("OSMOS_GPU_BACKEND", "OSMOS_RPS_LOAD_AHEAD"):
                        os.environ.pop(var, None)
            print(f"| {kind} | {B}x{K} -> {N} | {t_dense*1e3:.3f} | {t_gl*1e3:.3f} | {t_os*1e3:.3f} | "
                  f"{t_fused*1e3:.3f} | {t_ahead*1e3:.3f} | {t_os/t_dense:.2f}x |")
            rows_out.append(dict(bench="linear", device=device.type, mapper=kind, shape=f"{B}x{K}->{N}",
                                 osmos_ms=t_os * 1e3, dense_ms=t_dense * 1e3, gather_linear_ms=t_gl * 1e3,
                                 fused_triton_ms=t_fused * 1e3, fused_ahead_ms=t_ahead * 1e3))


def load_native(path: str):
    """Another build of osmos._C (e.g. the previous commit's, copied aside), as its own module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("osmos_ab._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_ab(old_path, threads_list, reps, ratio):
    """Old vs new osmos._C kernels and the torch baselines, interleaved call by call in one process
    (a loaded machine shifts all three alike): minimum and median of reps calls. The scatter
    output is zeroed outside the timed call (older kernels add into it)."""
    from osmos import _native
    from osmos.ops._common import dtype_code

    old, new = load_native(old_path), _native.C
    print(f"\n### A/B: {old_path} (old) vs this build (new), float32, compression {ratio}x, "
          f"min (median) of {reps} interleaved calls\n")
    print("| mapper | W shape | threads | op | old (ms) | new (ms) | torch (ms) | old / new | torch / new |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rows, cols in [(1024, 1024), (4096, 1024)]:
        n = rows * cols
        m = n // ratio
        M, G = torch.randn(m), torch.randn(rows, cols)
        for kind in MAPPERS:
            config = LayerMap(kind, m, 0, rows, cols, seed=1).config()
            idx, sign = rps_indices(config, rows, cols)
            signf, flat_idx = sign.float(), idx.reshape(-1)
            for threads in threads_list:
                torch.set_num_threads(threads)
                out = {id(old): (torch.empty(rows, cols), torch.zeros(m)), id(new): (torch.empty(rows, cols), torch.zeros(m))}

                def gather(mod):
                    W = out[id(mod)][0]
                    mod.rps_gather(M.data_ptr(), W.data_ptr(), dtype_code(M), config, rows, cols, 0.5, threads)
                    return W

                def scatter(mod):
                    acc = out[id(mod)][1]
                    mod.rps_scatter(G.data_ptr(), dtype_code(G), acc.data_ptr(), config, rows, cols, 0.5, threads)
                    return acc

                def reset():
                    out[id(old)][1].zero_()
                    out[id(new)][1].zero_()

                reset()
                if not (torch.equal(gather(old), gather(new)) and torch.equal(scatter(old), scatter(new))):
                    raise AssertionError(f"old and new kernels differ ({kind}, {rows}x{cols}, {threads} threads)")
                calls = {
                    "gather": (lambda: gather(old), lambda: gather(new), lambda: M[idx] * signf * 0.5),
                    "scatter": (lambda: scatter(old), lambda: scatter(new),
                                lambda: torch.zeros(m).index_add_(0, flat_idx, (G * 0.5 * signf).reshape(-1))),
                }
                for op, fns in calls.items():
                    times = [[], [], []]
                    for _ in range(3):
                        for f in fns:
                            f()
                    for _ in range(reps):
                        for k, f in enumerate(fns):
                            reset()
                            t0 = CLOCK()
                            f()
                            times[k].append(CLOCK() - t0)
                    lo = [min(t) * 1e3 for t in times]
                    med = [statistics.median(t) * 1e3 for t in times]
                    print(f"| {kind} | {rows}x{cols} | {threads} | {op} | {lo[0]:.3f} ({med[0]:.3f}) | "
                          f"{lo[1]:.3f} ({med[1]:.3f}) | {lo[2]:.3f} ({med[2]:.3f}) | {lo[0]/lo[1]:.2f}x | "
                          f"{lo[2]/lo[1]:.2f}x ({med[2]/med[1]:.2f}x) |", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    parser.add_argument("--ratio", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads for osmos and torch alike (default: torch's own)")
    parser.add_argument("--ab", metavar="OLD_C_SO", help="only the A/B of this other osmos._C build vs this one")
    parser.add_argument("--ab-threads", default="1,2", help="thread counts of the A/B (comma-separated)")
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--gather-only", action="store_true", help="skip the hashed linear part")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="CPU timings: wall clock, or process CPU time (all threads summed; for loaded machines)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.ab:
        bench_ab(args.ab, [int(t) for t in args.ab_threads.split(",")], args.reps, args.ratio)
        return
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch threads: "
          f"{torch.get_num_threads()}, clock: {args.clock}")
    reps = 5 if args.quick else args.reps
    if device.type == "cuda":
        gshapes = [(4096, 4096), (8192, 8192)]
        # B = 16 / 128: memory-bound (decoding-like) shapes, where reading M instead of W can pay
        lshapes = [(16, 4096, 4096), (128, 8192, 8192), (4096, 4096, 4096), (8192, 4096, 4096), (16384, 8192, 8192)]
    else:
        gshapes = [(256, 512)] if args.quick else [(1024, 1024), (4096, 1024)]
        lshapes = [(64, 256, 256)] if args.quick else [(256, 1024, 1024), (2048, 1024, 1024)]
    rows = []
    bench_gather(device, gshapes, args.ratio, reps, rows)
    if not args.gather_only:
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
