"""The CPU worker pool behind every multithreaded osmos CPU kernel (csrc/cpu/parallel.cpp).

1. With --old OLD_C_SO: an osmos._C built before the pool (a new std::thread per chunk and call)
   against this build, interleaved call by call in one process, on kernels of three families at a
   small size (a few hundred microseconds, where thread start-up showed) and a large one:
   copy + CRC-32C (snapshots), GF(2^8) RS(8,2) encode (erasure coding), TopK EF21 step.
   Both builds get the same thread count; the sizes are chosen so that it really uses 2 threads.
2. The idle spin of the workers (set_cpu_pool_spin_us): wall time and process CPU time per call
   of osmos.ops.rps_gather (hashednet, 1024x1024) and of a bare 2-chunk call with 50 us chunks,
   in blocks of calls per setting, blocks rotated.

Prints markdown tables (medians). Usage:
  python benchmarks/bench_cpu_pool.py [--old OLD_C_SO] [--threads 2] [--reps 40] [--spins 0,20,50,200]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch

from osmos import _native
from osmos.ops._common import dtype_code

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_rps import load_native, timeit_interleaved  # noqa: E402


def crc_case(nbytes: int, threads: int):
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
    dst = torch.empty_like(src)

    def call(mod):
        return mod.copy_crc32c([src.data_ptr()], [dst.data_ptr()], [nbytes], threads)

    return f"copy + CRC-32C {nbytes >> 20} MiB", call


def ec_case(shard: int, threads: int, k: int = 8, m: int = 2):
    matrix = torch.frombuffer(bytearray(_native.C.gf256_cauchy_matrix(k, m)), dtype=torch.uint8)[k * k:].clone()
    data = torch.randint(0, 256, (k, shard), dtype=torch.uint8)
    parity = torch.empty(m, shard, dtype=torch.uint8)
    src = [data[i].data_ptr() for i in range(k)]
    dst = [parity[i].data_ptr() for i in range(m)]

    def call(mod):
        mod.gf256_matmul(matrix.data_ptr(), m, k, src, dst, shard, threads)
        return parity.clone()

    return f"RS({k},{m}) encode, {shard >> 10} KiB shards", call


def topk_case(n: int, threads: int, ratio: float = 0.01):
    x = torch.randn(n)
    k = max(1, int(n * ratio))
    buffers = {}

    def call(mod):
        state, values, indices = buffers.setdefault(id(mod), (torch.zeros(n), torch.empty(k), torch.empty(k, dtype=torch.int64)))
        state.zero_()  # the step adds into state: the same input every call
        mod.topk_compress(x.data_ptr(), dtype_code(x), state.data_ptr(), dtype_code(state), n, k,
                          values.data_ptr(), indices.data_ptr(), threads)
        return indices.clone()

    return f"TopK EF21 step, n = {n >> 10}K, 1%", call


def bench_old_new(old_path: str, threads: int, reps: int) -> None:
    old, new = load_native(old_path), _native.C
    print(f"\n### Old per-call threads ({old_path}) vs the pool (this build), {threads} threads, "
          f"median of {reps} interleaved calls\n")
    print("| kernel | old (ms) | pool (ms) | old / pool |")
    print("|---|---|---|---|")
    cases = [crc_case(2 << 20, threads), crc_case(64 << 20, threads),
             ec_case(256 << 10, threads), ec_case(8 << 20, threads),
             topk_case(1 << 19, threads), topk_case(1 << 24, threads)]
    for name, call in cases:
        a, b = call(old), call(new)
        if not (a == b if isinstance(a, list) else torch.equal(a, b)):
            raise AssertionError(f"old and new builds differ: {name}")
        t_old, t_new = timeit_interleaved([lambda: call(old), lambda: call(new)], torch.device("cpu"), reps)
        print(f"| {name} | {t_old*1e3:.3f} | {t_new*1e3:.3f} | {t_old/t_new:.2f}x |", flush=True)


def bench_spin(spins: list[int], threads: int, reps: int, blocks: int = 6) -> None:
    from osmos.ops import rps_gather
    from osmos.ops.rps_mapping import LayerMap

    C = _native.C
    rows = cols = 1024
    m = rows * cols // 8
    config = LayerMap("hashednet", m, 0, rows, cols, seed=1).config()
    M = torch.randn(m)
    torch.set_num_threads(threads)
    calls = {
        "rps_gather hashednet 1024x1024 (op)": lambda: rps_gather(M, config, rows, cols, 0.5),
        f"{threads} chunks of 50 us (probe)": lambda: C._parallel_chunks_probe(threads, threads, work_us=50),
    }
    saved = C.cpu_pool_info()["spin_us"]
    print(f"\n### Worker spin before blocking, {threads} threads: median wall time per call and process CPU time per call "
          f"({blocks} blocks of {reps} calls per setting, rotated)\n")
    print("| call | " + " | ".join(f"spin {s} us: wall / CPU (ms)" for s in spins) + " |")
    print("|---|" + "---|" * len(spins))
    try:
        for name, fn in calls.items():
            wall = {s: [] for s in spins}
            cpu = {s: [] for s in spins}  # per block: process CPU time / calls (the spin after a call included)
            for _ in range(blocks):
                for s in spins:
                    C.set_cpu_pool_spin_us(s)
                    fn()
                    c0 = time.process_time()
                    for _ in range(reps):
                        w0 = time.perf_counter()
                        fn()
                        wall[s].append(time.perf_counter() - w0)
                    cpu[s].append((time.process_time() - c0) / reps)
            cells = [f"{statistics.median(wall[s])*1e3:.3f} / {statistics.median(cpu[s])*1e3:.3f}" for s in spins]
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    finally:
        C.set_cpu_pool_spin_us(saved)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", metavar="OLD_C_SO", help="an osmos._C built before the pool, for the A/B")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--spins", default="0,20,50,200", help="worker spin settings to compare (us)")
    args = parser.parse_args()
    if args.old:
        bench_old_new(args.old, args.threads, args.reps)
    bench_spin([int(s) for s in args.spins.split(",")], args.threads, args.reps)


if __name__ == "__main__":
    main()
