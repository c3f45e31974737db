"""Exact top-k inner-product search: osmos.ops.similarity_topk vs faiss.IndexFlatIP vs
torch mm + topk, in one process on the same data.

Database: L2-normalised Gaussian rows (1M x 512 and 100k x 1024 float32 by default); queries:
batches of 1, 16, 100, 1000; k = 1 and 10. Reports queries/s (median of repeats after a
warm-up), the ratio to faiss, the peak extra resident memory of each call (VmHWM after
resetting it through /proc/self/clear_refs, so allocations by torch and faiss both count),
and agreement with the other methods: identical indices, or a different index whose score is
within float32 rounding (a near tie, which no float32 method can order reliably).
"DB GB/s" is database bytes over wall time per call (every method reads the whole database once
per call at small batches); the ceiling is a plain streaming read of the same database in the
same run (fastest of 3 torch `sum` calls, same threads): no exact method can read the database faster than that,
so at one query q/s <= ceiling / database bytes for osmos and faiss alike.

    python benchmarks/bench_similarity.py            # full table (several minutes on 2 cores)
    python benchmarks/bench_similarity.py --quick    # small, under 30 s
    python benchmarks/bench_similarity.py --database 100000x1024 --batches 1000 --k 10
    python benchmarks/bench_similarity.py --device cuda   # GPU: osmos vs torch mm + topk (no faiss-gpu)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from osmos.ops import similarity_topk

TORCH_SCORE_BYTES = 1 << 30  # torch mm + topk runs query blocks whose score matrix fits 1 GiB


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_extra_mib(fn) -> tuple[object, float, float]:
    """Run fn once: (its result, MiB of resident memory at its peak above the resident size
    before it, seconds it took)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    return out, max(0, _status_kib("VmHWM") - before) / 1024, seconds


def synced(fn, device: torch.device):
    """fn, followed by a CUDA synchronise when the data is on a GPU (so timers see the work)."""
    if device.type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


def median_seconds(fn, max_repeats: int, budget_s: float, first_s: float) -> float:
    """Median of up to max_repeats timed calls (at least one; no new call after budget_s).
    A call that already took first_s > budget_s (the warm-up) is the single sample."""
    if first_s > budget_s:
        return first_s
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats and (not times or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def torch_mm_topk(q: torch.Tensor, db: torch.Tensor, k: int):
    block = max(1, TORCH_SCORE_BYTES // (4 * db.shape[0]))
    parts = [torch.topk(q[b : b + block] @ db.T, k, dim=1) for b in range(0, q.shape[0], block)]
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


def agreement(a, b, tol: float = 1e-5) -> tuple[float, float]:
    """(fraction of identical indices, fraction identical or near-tie) between two results."""
    same = a[1] == b[1]
    near = same | ((a[0] - b[0]).abs() <= tol)
    return same.float().mean().item(), near.float().mean().item()


def run(n: int, d: int, batches, ks, max_repeats: int, budget_s: float, rows: list,
        device: torch.device = torch.device("cpu")) -> None:
    g = torch.Generator().manual_seed(0)
    db = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    index = None
    if device.type == "cpu":  # faiss-cpu is the CPU peer; on a GPU the peer is torch mm + topk
        import faiss

        index = faiss.IndexFlatIP(d)
        index.add(db.numpy())
    db = db.to(device)
    db_bytes = db.numel() * db.element_size()
    read_s = min(_timed(synced(lambda: db.sum(), device)) for _ in range(3))
    q = torch.nn.functional.normalize(torch.randn(2, d, generator=g), dim=1).to(device)
    warmups = [lambda: similarity_topk(q, db[:1000], 1), lambda: torch_mm_topk(q, db[:1000], 1)]
    if index is not None:
        warmups.append(lambda: index.search(q.numpy(), 1))
    for warm in warmups:
        synced(warm, device)()  # one-time initialisation (thread pools, JIT) outside the measurements
    nan = float("nan")
    for nq in batches:
        q = torch.nn.functional.normalize(torch.randn(nq, d, generator=g), dim=1)
        qn = q.numpy()
        q = q.to(device)
        for k in ks:
            methods = {"osmos": lambda: similarity_topk(q, db, k), "torch": lambda: torch_mm_topk(q, db, k)}
            if index is not None:
                methods["faiss"] = lambda: tuple(torch.from_numpy(x) for x in index.search(qn, k))
            results, qps, mem = {}, {}, {}
            for name, fn in methods.items():
                fn = synced(fn, device)
                if device.type == "cuda":
                    fn()  # kernels are compiled per k on first use: keep that out of the timing
                results[name], mem[name], first = peak_extra_mib(fn)  # doubles as the warm-up on a CPU
                results[name] = tuple(t.cpu() for t in results[name])
                qps[name] = nq / median_seconds(fn, max_repeats, budget_s, first)
            same_t, near_t = agreement(results["osmos"], results["torch"])
            same_f, near_f = agreement(results["osmos"], results["faiss"]) if index is not None else (1.0, 1.0)
            peer = "faiss" if index is not None else "torch"
            rows.append(dict(
                db=f"{n // 1000}k x {d}", q=nq, k=k, osmos_qps=qps["osmos"], faiss_qps=qps.get("faiss", nan),
                torch_qps=qps["torch"], ratio=qps["osmos"] / qps[peer], osmos_mib=mem["osmos"],
                faiss_mib=mem.get("faiss", nan), torch_mib=mem["torch"],
                same=min(same_f, same_t), near=min(near_f, near_t),
                osmos_gbs=db_bytes * qps["osmos"] / nq / 1e9, faiss_gbs=db_bytes * qps.get("faiss", nan) / nq / 1e9,
                ceiling_gbs=db_bytes / read_s / 1e9,
            ))
            print(format_row(rows[-1]), flush=True)


HEADER = (
    "| database | queries | k | osmos q/s | faiss q/s | torch q/s | osmos / faiss | "
    "peak MiB osmos / faiss / torch | same indices | same or near-tie | DB GB/s osmos / faiss (ceiling) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def format_row(r: dict) -> str:
    return (
        f"| {r['db']} | {r['q']} | {r['k']} | {r['osmos_qps']:.1f} | {r['faiss_qps']:.1f} | {r['torch_qps']:.1f} "
        f"| {r['ratio']:.2f}x | {r['osmos_mib']:.0f} / {r['faiss_mib']:.0f} / {r['torch_mib']:.0f} "
        f"| {100 * r['same']:.2f}% | {100 * r['near']:.2f}% "
        f"| {r['osmos_gbs']:.1f} / {r['faiss_gbs']:.1f} ({r['ceiling_gbs']:.1f}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50k x 512 only, batches 1/16/100, k=10")
    parser.add_argument("--database", action="append", metavar="NxD",
                        help="database size(s), e.g. 1000000x512 (default: 1000000x512 and 100000x1024)")
    parser.add_argument("--batches", default="1,16,100,1000", help="query batch sizes")
    parser.add_argument("--k", default="1,10", help="k values")
    parser.add_argument("--device", default="cpu", help="cpu (peer: faiss IndexFlatIP) or cuda (peer: torch mm + topk)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        print(f"threads: {torch.get_num_threads()}, faiss {faiss.__version__}, torch {torch.__version__}")
    else:
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}; "
              "'osmos / faiss' is osmos / torch here (the faiss columns are empty)")
    print(HEADER)
    rows: list = []
    if args.quick:
        run(50_000, 512, [1, 16, 100], [10], max_repeats=3, budget_s=0.5, rows=rows, device=device)
    else:
        batches = [int(b) for b in args.batches.split(",")]
        ks = [int(k) for k in args.k.split(",")]
        for spec in args.database or ["1000000x512", "100000x1024"]:
            n, d = (int(x) for x in spec.lower().split("x"))
            run(n, d, batches, ks, max_repeats=3, budget_s=5.0 if device.type == "cpu" else 1.0, rows=rows, device=device)


if __name__ == "__main__":
    main()
