"""Reed-Solomon erasure coding: osmos vs ISA-L vs zfec vs pyeclib, same process, same data.

For RS(k, m) with k data shards of L bytes each: encode (k shards -> m parity shards) and
decode with m shards lost (the first m data shards; rebuilt from the other data shards and all
parity). Throughput = k * L bytes of data per second (GB/s = 1e9 B/s), median over samples.

  osmos API     RSCodec.encode(data, out=parity) / RSCodec.decode(available, out={lost: buf})
  osmos bound   RSCodec.bind_encode(data, parity)() / bind_decode(available, rebuilt)(): the
                same on fixed buffers (snapshot slots), checks and address lookups done once,
                as ISA-L's row has its pointer arrays and tables built once
  ISA-L         ec_encode_data (its best kernel for this CPU, chosen by ISA-L at run time) through
                ctypes with prebuilt pointer arrays and tables; decode = ec_encode_data with the
                inverted survivor rows (tables built once, as osmos caches its decode matrices).
                With all threads: ISA-L on byte ranges of the shards, one Python thread each
                (ctypes releases the GIL), as osmos splits them.
  zfec          zfec.Encoder / Decoder (single-threaded)
  pyeclib       ECDriver(ec_type="isa_l_rs_cauchy").encode / decode (Python API; it copies the
                payload and adds fragment headers; single-threaded)

  python benchmarks/bench_ec.py            # full grid, writes benchmarks/bench_ec.csv
  python benchmarks/bench_ec.py --quick    # RS(8,2), 64 KiB and 1 MiB, under 30 s
  python benchmarks/bench_ec.py --device cuda   # osmos's CUDA kernel (data on the GPU) vs ISA-L
                                                # on the same data in host memory, under 90 s
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from isal_ctypes import IsalCodec  # noqa: E402
from timing import cuda_timer  # noqa: E402

from osmos import _native  # noqa: E402
from osmos.ft import RSCodec  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20


def interleaved_medians(fns: dict, budget_s: float, min_samples: int = 9) -> dict:
    """Median seconds per call of each fn. Samples of all fns are interleaved (rotating order)
    so that load from other processes hits every method alike; each sample batches calls to
    last >= ~0.5 ms."""
    batch, cost = {}, 0.0
    for key, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-7)
        batch[key] = max(1, int(5e-4 / once))
        cost += once * batch[key]
    samples = max(min_samples, min(101, int(budget_s * len(fns) / cost)))
    times = {key: [] for key in fns}
    keys = list(fns)
    for s in range(samples):
        for key in keys[s % len(keys):] + keys[: s % len(keys)]:
            fn, n = fns[key], batch[key]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[key].append((time.perf_counter() - t0) / n)
    return {key: statistics.median(t) for key, t in times.items()}


def _isal_threaded(isal: IsalCodec, pool, threads: int, length: int, count: int, tables, src: list[int], dst: list[int]):
    """ISA-L over byte ranges of the shards (64-byte aligned boundaries), one per thread, with
    osmos's threading policy: a thread only for each >= 1 MiB of source data."""
    threads = max(1, min(threads, len(src) * length // MiB))
    bounds = [min(length, (length * t // threads) // 64 * 64) for t in range(threads)] + [length]
    jobs = []
    for t in range(threads):
        lo, hi = bounds[t], bounds[t + 1]
        if hi > lo:
            jobs.append((hi - lo, isal.pointers([a + lo for a in src]), isal.pointers([a + lo for a in dst])))
    if len(jobs) == 1:
        n, s, d = jobs[0]
        return lambda: isal.run(n, count, tables, s, d)
    return lambda: list(pool.map(lambda job: isal.run(job[0], count, tables, job[1], job[2]), jobs))


def bench_case(k: int, m: int, length: int, threads: int, budget_s: float, pool, baselines: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    # The data shards are rows of one 64-byte aligned buffer (as a snapshot slot is; numpy's own
    # allocation starts 16 bytes into a line, so every 64-byte load would straddle two lines),
    # shared by every method.
    data_t = torch.empty((k, length), dtype=torch.uint8)
    assert data_t.data_ptr() % 64 == 0
    data_np = data_t.numpy()
    data_np[...] = rng.integers(0, 256, (k, length), dtype=np.uint8)
    data = [data_t[j] for j in range(k)]
    parity = [torch.empty(length, dtype=torch.uint8) for _ in range(m)]
    codec = RSCodec(k, m)
    codec.encode(data, out=parity)
    lost = list(range(m))
    available = {i: data[i] for i in range(m, k)} | {k + p: parity[p] for p in range(m)}
    rebuilt = {i: torch.empty(length, dtype=torch.uint8) for i in lost}
    used = tuple(sorted(available)[:k])
    _, decode_matrix = codec._decoder(used)
    src_dec = [available[i].data_ptr() for i in used]
    src_enc = [d.data_ptr() for d in data]
    dst_enc = [p.data_ptr() for p in parity]
    dst_dec = [rebuilt[i].data_ptr() for i in lost]

    isal = IsalCodec(k, m)
    decode_tables = isal.tables(bytes(decode_matrix.numpy().tobytes()), m)
    fns = {
        ("encode", "osmos API"): lambda: codec.encode(data, out=parity),
        ("encode", "osmos bound"): codec.bind_encode(data, parity),
        ("encode", "ISA-L"): _isal_threaded(isal, pool, threads, length, m, isal.encode_tables, src_enc, dst_enc),
        ("decode", "osmos API"): lambda: codec.decode(available, out=rebuilt),
        ("decode", "osmos bound"): codec.bind_decode(available, rebuilt),
        ("decode", "ISA-L"): _isal_threaded(isal, pool, threads, length, m, decode_tables, src_dec, dst_dec),
    }
    if baselines:
        import zfec
        from pyeclib.ec_iface import ECDriver

        blocks = tuple(bytes(data_np[j]) for j in range(k))
        encoder, decoder = zfec.Encoder(k, k + m), zfec.Decoder(k, k + m)
        zparity = encoder.encode(blocks, tuple(range(k, k + m)))
        zshares = tuple(zparity) + blocks[m:]
        znums = tuple(range(k, k + m)) + tuple(range(m, k))
        fns[("encode", "zfec")] = lambda: encoder.encode(blocks, tuple(range(k, k + m)))
        fns[("decode", "zfec")] = lambda: decoder.decode(zshares, znums)
        driver = ECDriver(k=k, m=m, ec_type="isa_l_rs_cauchy")
        payload = data_np.tobytes()
        fragments = driver.encode(payload)
        fns[("encode", "pyeclib")] = lambda: driver.encode(payload)
        fns[("decode", "pyeclib")] = lambda: driver.decode(fragments[m:])

    # Results agree before anything is timed.
    fns[("decode", "osmos API")]()
    assert all(torch.equal(rebuilt[i], data[i]) for i in lost), "osmos decode is wrong"
    # osmos and ISA-L are interleaved with each other (many samples); the slow baselines apart.
    fast = {key: fn for key, fn in fns.items() if key[1] in ("osmos API", "osmos bound", "ISA-L")}
    out = {}
    for op in ("encode", "decode"):
        out.update(interleaved_medians({key: fn for key, fn in fast.items() if key[0] == op}, budget_s))
    slow = {key: fn for key, fn in fns.items() if key not in fast}
    if slow:
        out.update(interleaved_medians(slow, budget_s, min_samples=3))
    rows = []
    for op in ("encode", "decode"):
        gbps = {name: k * length / out[(op, name)] / 1e9 for (o, name) in out if o == op}
        rows.append({"op": op, "k": k, "m": m, "shard": length, "threads": threads, **gbps})
    return rows


def fmt_size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


def table(rows: list[dict]) -> str:
    head = ("| op | RS(k,m) | shard | threads | osmos API GB/s | osmos bound GB/s | ISA-L GB/s | zfec GB/s | "
            "pyeclib GB/s | API / ISA-L | bound / ISA-L | API / zfec |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        def g(name):
            return f"{r[name]:.2f}" if name in r else "—"

        def ratio(a, b):
            return f"{r[a] / r[b]:.2f}x" if a in r and b in r else "—"

        lines.append(
            f"| {r['op']} | ({r['k']},{r['m']}) | {fmt_size(r['shard'])} | {r['threads']} | {g('osmos API')} | "
            f"{g('osmos bound')} | {g('ISA-L')} | {g('zfec')} | {g('pyeclib')} | {ratio('osmos API', 'ISA-L')} | "
            f"{ratio('osmos bound', 'ISA-L')} | {ratio('osmos API', 'zfec')} |"
        )
    return "\n".join(lines)


def bench_cuda() -> None:
    """osmos encode / decode with blocks on the GPU, timed with CUDA events, vs ISA-L (1 thread)."""
    print(f"GPU: {torch.cuda.get_device_name()}; CPU baseline: ISA-L ec_encode_data, 1 thread")
    lines = ["| op | RS(k,m) | shard | osmos CUDA GB/s | ISA-L CPU GB/s | CUDA / ISA-L |", "|---|---|---|---|---|---|"]
    for k, m in [(8, 2), (10, 4)]:
        for length in [1 * MiB, 16 * MiB]:
            codec, isal = RSCodec(k, m), IsalCodec(k, m)
            host = [torch.randint(0, 256, (length,), dtype=torch.uint8) for _ in range(k)]
            data = [h.cuda() for h in host]
            parity = [torch.empty(length, dtype=torch.uint8, device="cuda") for _ in range(m)]
            codec.encode(data, out=parity)
            available = {i: data[i] for i in range(m, k)} | {k + p: parity[p] for p in range(m)}
            rebuilt = {i: torch.empty(length, dtype=torch.uint8, device="cuda") for i in range(m)}
            codec.decode(available, out=rebuilt)
            assert all(torch.equal(rebuilt[i].cpu(), host[i]) for i in range(m)), "CUDA decode is wrong"
            host_parity = codec.encode(host)
            assert all(torch.equal(a.cpu(), b) for a, b in zip(parity, host_parity)), "CUDA parity differs"
            used = tuple(sorted(available)[:k])
            host_blocks = host + host_parity
            host_out = [torch.empty(length, dtype=torch.uint8) for _ in range(m)]
            isal_runs = {
                "encode": (isal.encode_tables, [h.data_ptr() for h in host]),
                "decode": (isal.tables(codec._decoder(used)[1].numpy().tobytes(), m), [host_blocks[i].data_ptr() for i in used]),
            }
            for op, fn in [("encode", lambda: codec.encode(data, out=parity)),
                           ("decode", lambda: codec.decode(available, out=rebuilt))]:
                tables, src = isal_runs[op]
                src, dst = isal.pointers(src), isal.pointers([o.data_ptr() for o in host_out])
                gpu = k * length / cuda_timer(fn, repeats=20) / 1e9
                cpu = k * length / interleaved_medians(
                    {op: lambda: isal.run(length, m, tables, src, dst)}, 0.3)[op] / 1e9
                lines.append(f"| {op} | ({k},{m}) | {fmt_size(length)} | {gpu:.1f} | {cpu:.1f} | {gpu / cpu:.1f}x |")
                print(lines[-1], flush=True)
    print()
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="RS(8,2), 64 KiB and 1 MiB shards, under 30 s")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--csv", default=str(pathlib.Path(__file__).with_name("bench_ec.csv")))
    args = parser.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device")
        bench_cuda()
        return
    all_threads = os.cpu_count() or 1
    if args.quick:
        codes, sizes, budget = [(8, 2)], [64 * KiB, 1 * MiB], 0.25
    else:
        codes, sizes, budget = [(4, 2), (8, 2), (10, 4)], [64 * KiB, 1 * MiB, 16 * MiB], 1.0
    thread_counts = sorted({1, all_threads})
    print(f"osmos kernel: {_native.C.gf256_matmul_kernel()} (available: {', '.join(_native.C.gf256_matmul_kernels())}); "
          f"threads: {thread_counts}", flush=True)
    rows = []
    previous = torch.get_num_threads()
    with ThreadPoolExecutor(max_workers=all_threads) as pool:
        try:
            for threads in thread_counts:
                torch.set_num_threads(threads)
                for k, m in codes:
                    for length in sizes:
                        # zfec and pyeclib are single-threaded: measured once, in the 1-thread rows.
                        rows += bench_case(k, m, length, threads, budget, pool, baselines=threads == 1)
                        for r in rows[-2:]:
                            print(f"  {r['op']} RS({k},{m}) {fmt_size(length)} x{threads}: "
                                  + ", ".join(f"{n} {v:.2f}" for n, v in r.items() if isinstance(v, float)), flush=True)
        finally:
            torch.set_num_threads(previous)
    rows.sort(key=lambda r: (r["op"] != "encode", r["threads"], r["k"], r["m"], r["shard"]))
    print()
    print(table(rows))
    if not args.quick:
        names = ["op", "k", "m", "shard", "threads", "osmos API", "osmos bound", "ISA-L", "zfec", "pyeclib"]
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
