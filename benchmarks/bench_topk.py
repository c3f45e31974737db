"""TopK EF21 compression: osmos vs torch baselines, same process, same inputs.

For each size n and ratio k/n, one EF21 worker step (d = x - state; keep the k largest |d|;
state[indices] += values) is timed with
  osmos       osmos.ops.topk_compress (the C++ kernel on CPU; CUDA kernel and Triton on GPU)
  torch.topk  d = x - state; i = torch.topk(d.abs(), k, sorted=False).indices; v = d[i]; state[i] += v
  kthvalue    d = x - state; t = kthvalue(|d|, n - k + 1); i = nonzero(|d| >= t)[:k]; v = d[i]; state[i] += v
State is restored (untimed) before every call. Times are medians. The memory-bandwidth floor
is the bytes the step must move (read x and state, write values / indices, read-modify-write k
state entries) divided by the copy bandwidth measured here with a large tensor copy.

    python benchmarks/bench_topk.py            # n in {1M, 16M, 64M}, k/n in {0.001, 0.01, 0.1}
    python benchmarks/bench_topk.py --quick    # small sizes, well under 30 s (make demo)
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from osmos.ops import topk_compress
from timing import cpu_timer, cuda_timer

MIB = 1 << 20


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def copy_bandwidth(device: str, timer, numel: int = 64 * MIB) -> float:
    """Bytes per second (read + write) of a large tensor copy."""
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)
    seconds = timer(lambda: dst.copy_(src), lambda: None, 5)
    return 2 * src.numel() * src.element_size() / seconds


def torch_topk_step(x, state, k):
    d = x - state
    indices = torch.topk(d.abs(), k, sorted=False).indices
    values = d[indices]
    state.view(-1).index_add_(0, indices, values)
    return values, indices


def kthvalue_step(x, state, k):
    d = x - state
    magnitude = d.abs()
    threshold = torch.kthvalue(magnitude.cpu() if magnitude.is_cuda else magnitude, d.numel() - k + 1).values
    indices = torch.nonzero(magnitude >= threshold.to(d.device)).squeeze(1)[:k]
    values = d[indices]
    state.view(-1).index_add_(0, indices, values)
    return values, indices


def floor_bytes(n: int, k: int, x: torch.Tensor, state: torch.Tensor) -> int:
    s = state.element_size()
    return n * (x.element_size() + s) + k * (s + 8) + 2 * k * s


def gpu_methods() -> dict:
    from osmos import _native
    from osmos.ops.topk_compress import topk_compress_cuda_native

    methods = {}
    if _native.has_cuda_kernel("topk_compress"):
        methods["osmos cuda"] = topk_compress_cuda_native  # auto: sampled threshold for large n
        methods["osmos cuda radix"] = lambda x, s, k: topk_compress_cuda_native(x, s, k, algo="radix")
    try:
        from osmos.triton_kernels.topk_compress import topk_compress as triton_kernel

        methods["osmos triton"] = triton_kernel
    except Exception as exc:  # triton missing
        print(f"(triton skipped: {exc})")
    methods["torch.topk"] = torch_topk_step
    return methods


def run(device: str, sizes, ratios, repeats: int, baseline_repeats: int, dtype, copy_numel: int) -> list[str]:
    timer = cuda_timer if device == "cuda" else cpu_timer
    bandwidth = copy_bandwidth(device, timer, copy_numel)
    if device == "cuda":
        methods = gpu_methods()
    else:
        methods = {"osmos": topk_compress, "torch.topk": torch_topk_step, "kthvalue": kthvalue_step}
    names = list(methods)
    base = "torch.topk"
    header = (["n", "k/n"] + [f"{m} ms" for m in names]
              + [f"speedup {m} vs {o}" for m in names if m.startswith("osmos") for o in names if not o.startswith("osmos")]
              + ["floor ms"] + [f"{m} / floor" for m in names if m.startswith("osmos")])
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    print(f"copy bandwidth ({device}): {bandwidth / 1e9:.1f} GB/s (read + write)", flush=True)
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        x = torch.randn(n, generator=g).to(dtype).to(device)
        state0 = (torch.randn(n, generator=g) * 0.1).to(dtype).to(device)
        state = state0.clone()
        for ratio in ratios:
            k = max(1, int(n * ratio))
            times, results = {}, {}
            for name, fn in methods.items():
                reps = repeats if name.startswith("osmos") else baseline_repeats
                times[name] = timer(lambda: results.__setitem__(name, fn(x, state, k)), lambda: state.copy_(state0), reps)
            # Sanity: every method kept the same multiset of magnitudes (random data has no ties).
            want = results[base][0].abs().float().sort().values
            for name, (values, _) in results.items():
                assert torch.equal(values.abs().float().sort().values, want), f"{name} selected other entries"
            floor = floor_bytes(n, k, x, state) / bandwidth
            cells = [f"{n // MIB}M" if n % MIB == 0 else str(n), f"{ratio:g}"]
            cells += [f"{times[m] * 1e3:.2f}" for m in names]
            cells += [f"{times[o] / times[m]:.1f}x" for m in names if m.startswith("osmos") for o in names if not o.startswith("osmos")]
            cells += [f"{floor * 1e3:.2f}"] + [f"{times[m] / floor:.2f}" for m in names if m.startswith("osmos")]
            rows.append("| " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
        del x, state0, state
    return rows


def run_receiver(device: str, n: int, worlds, ratios, repeats: int) -> list[str]:
    """The receiver side: `world` ranks' padded (int32 index, value) messages added into one dense
    float32 g with per-rank weights, as the EF21 hook does after its all_gather. osmos
    `topk_accumulate_` against torch (weights multiply, counts mask, int64 cast, index_add_)."""
    from osmos.ops import topk_accumulate_
    from osmos.ops.topk_compress import reference_topk_accumulate_

    timer = cuda_timer if device == "cuda" else cpu_timer
    rows = ["| ranks | k/n | entries added | osmos topk_accumulate_ (ms) | torch masked index_add_ (ms) | speed-up |",
            "|---|---|---|---|---|---|"]
    g = torch.zeros(n, device=device)
    for world in worlds:
        for ratio in ratios:
            k = max(1, int(n * ratio))
            gen = torch.Generator(device="cpu").manual_seed(world)
            indices = torch.sort(torch.randint(0, n, (world, k), generator=gen), dim=1).values.int().to(device)
            values = torch.randn(world, k, generator=gen).to(device)
            counts = torch.full((world,), k, dtype=torch.int64, device=device)
            weights = torch.full((world,), 1.0 / world, device=device)
            t_osmos = timer(lambda: topk_accumulate_(g, values, indices, counts=counts, weights=weights),
                            lambda: None, repeats)
            t_torch = timer(lambda: reference_topk_accumulate_(g, values, indices, counts, weights), lambda: None,
                            repeats)
            rows.append(f"| {world} | {ratio:g} | {world * k} | {t_osmos * 1e3:.2f} | {t_torch * 1e3:.2f} | "
                        f"{t_torch / t_osmos:.2f}x |")
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, well under 30 s")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--sizes", type=int, nargs="*", help="n values (default 1M 16M 64M)")
    parser.add_argument("--ratios", type=float, nargs="*", default=[0.001, 0.01, 0.1])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls of osmos (median)")
    parser.add_argument("--baseline-repeats", type=int, default=3, help="timed calls of each baseline")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--receiver-n", type=int, default=25_200_000,
                        help="dense size of the receiver-side table (0 skips it)")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([MIB] if args.quick else [MIB, 16 * MIB, 64 * MIB])
    if args.quick:
        args.repeats, args.baseline_repeats = min(args.repeats, 5), min(args.baseline_repeats, 2)
    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"{cpu_model()}, {os.cpu_count()} cores"
    print(f"# TopK EF21 step, {args.dtype}, {args.device} ({machine}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    rows = run(args.device, sizes, args.ratios, args.repeats, args.baseline_repeats, getattr(torch, args.dtype),
               copy_numel=16 * MIB if args.quick else 64 * MIB)
    if args.receiver_n:
        n = MIB if args.quick else args.receiver_n
        rows += ["", f"Receiver side, n = {n}:", ""]
        rows += run_receiver(args.device, n, [2, 4, 8], [0.001, 0.01], args.repeats)
    print("\n" + "\n".join(rows))
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
