"""Fused 1-D adapter injection vs the base Linear, unfused torch and PEFT LoRA.

For a Linear(ch, ch) on x [batch, tokens, ch] with C rank-1 adapters, times (medians):
  base     y = linear(x)                                       (the layer without adapters)
  osmos    adapter_inject(linear(x), x, D, U, gamma)           (fused, per-sample gammas)
  torch    linear(x) + ((x @ D^T) * gamma[:, None]) @ U       (two matmuls and an add)
  peft     PEFT LoRA, C rank-1 adapters active at once          (no per-sample gammas)
  fused    adapted_linear(x, W, b, D, U, gamma)                  (base GEMM + adapters in one Triton
           kernel; CUDA only: on the CPU it is base + osmos)
Overheads are (t - t_base) / t_base. Same process, same inputs.

  python benchmarks/bench_adapter_inject.py [--batch 1] [--reps 15] [--threads N] [--dtype D] [--csv PATH]
      [--fused-tiles BM,BN,BK,WARPS,STAGES ...]   (GPU: also time the Triton kernel with these tiles)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from osmos.ops import adapted_linear, adapter_inject

SHAPES = [(4096, 320), (1024, 640), (256, 1280)]  # SD 1.5 latents 64x64 / 32x32 / 16x16
ADAPTERS = [1, 4, 16]


def timed(fns: dict, reps: int, device: torch.device) -> dict[str, float]:
    """Median seconds per variant. On the CPU the variants run interleaved, round by round, so
    load from other processes hits them alike; on a GPU triton's do_bench (CUDA events)."""
    fns = {k: f for k, f in fns.items() if f is not None}
    for f in fns.values():
        for _ in range(2):
            f()
    if device.type == "cuda":
        from triton.testing import do_bench

        return {k: do_bench(f, rep=max(50, reps * 4), return_mode="median") / 1e3 for k, f in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peft_layer(linear: torch.nn.Linear, adapters: int):
    """A PEFT-wrapped copy of `linear` with `adapters` rank-1 LoRAs, all active; None without peft."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        return None

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = linear

    holder = Holder()
    names = [f"a{i}" for i in range(adapters)]
    for name in names:
        inject_adapter_in_model(LoraConfig(r=1, lora_alpha=1, target_modules=["proj"], init_lora_weights=False), holder,
                                adapter_name=name)
    holder.proj.set_adapter(names)
    return holder.proj


def fused_with_tiles(spec: str, x, linear, down, up, gamma):
    """The fused Triton kernel called directly with tiles "BM,BN,BK,WARPS,STAGES" (for tuning)."""
    from osmos.triton_kernels.adapted_linear import adapted_linear as kernel

    bm, bn, bk, warps, stages = (int(v) for v in spec.split(","))
    meta = dict(BM=bm, BN=bn, BK=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
    return lambda: kernel(x, linear.weight, linear.bias, down, up, gamma, meta=meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=None, help="samples (default 1 on CPU, 2 on GPU)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtype", default=None, help="float32 / float16 / bfloat16 (default: float32 CPU, float16 GPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch (and osmos) CPU threads")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--fused-tiles", nargs="*", default=[], metavar="BM,BN,BK,WARPS,STAGES",
                    help="GPU: extra variants, the fused Triton kernel with these tiles (printed per shape)")
    args = ap.parse_args()
    # adapted_linear's Triton path is opt-in until timed (OSMOS_GPU_BACKEND=triton, which would switch
    # the other columns' ops too): turn it on for that op alone
    import osmos.ops.adapted_linear as adapted_linear_module

    adapted_linear_module.fused_on_gpu = lambda t: True
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    batch = args.batch or (2 if device.type == "cuda" else 1)
    rows = []
    with torch.inference_mode():
        for tokens, ch in SHAPES:
            torch.manual_seed(0)
            linear = torch.nn.Linear(ch, ch).to(device, dtype)
            x = torch.randn(batch, tokens, ch, device=device, dtype=dtype)
            y = linear(x)
            for c in ADAPTERS:
                down = torch.randn(c, ch, device=device, dtype=dtype) / ch**0.5
                up = torch.randn(c, ch, device=device, dtype=dtype) * 0.01
                gamma = torch.rand(batch, c, device=device, dtype=dtype)
                peft = peft_layer(torch.nn.Linear(ch, ch).to(device, dtype), c)
                cuda = device.type == "cuda"
                t = timed({
                    "base": lambda: linear(x),
                    "osmos": lambda: adapter_inject(linear(x), x, down, up, gamma),
                    "torch": lambda: linear(x) + ((x @ down.T) * gamma[:, None, :]) @ up,
                    "peft": (lambda: peft(x)) if peft is not None else None,
                    "osmos_op": lambda: adapter_inject(y, x, down, up, gamma),
                    "torch_op": lambda: y + ((x @ down.T) * gamma[:, None, :]) @ up,
                    "fused": (lambda: adapted_linear(x, linear.weight, linear.bias, down, up, gamma)) if cuda else None,
                    **{f"fused[{spec}]": fused_with_tiles(spec, x, linear, down, up, gamma)
                       for spec in args.fused_tiles if cuda},
                }, args.reps, device)
                t.setdefault("peft", float("nan"))
                t.setdefault("fused", float("nan"))
                rows.append((tokens, ch, c, t["base"], t["osmos"], t["torch"], t["peft"], t["osmos_op"], t["torch_op"],
                             t["fused"]))
                print("# " + " ".join(f"{k} {v*1e3:.3f}ms" for k, v in t.items()) + f" (tokens {tokens} ch {ch} C {c})",
                      flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{name}, batch {batch}, {str(dtype).replace('torch.', '')}, Linear(ch, ch), medians of {args.reps}\n")
    print("| tokens x ch | C | base Linear ms | + osmos fused ms | + unfused torch ms | PEFT ms | osmos overhead "
          "| torch overhead | PEFT overhead | PEFT / osmos | injection alone: osmos / torch ms "
          "| one-kernel adapted_linear ms | its overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for tokens, ch, c, tb, to, tt, tp, oo, ot, tf in rows:
        print(f"| {tokens} x {ch} | {c} | {tb*1e3:.2f} | {to*1e3:.2f} | {tt*1e3:.2f} | {tp*1e3:.2f} | "
              f"{(to/tb-1)*100:+.0f}% | {(tt/tb-1)*100:+.0f}% | {(tp/tb-1)*100:+.0f}% | {tp/to:.2f}x | "
              f"{oo*1e3:.2f} / {ot*1e3:.2f} | {tf*1e3:.3f} | {(tf/tb-1)*100:+.0f}% |")
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("tokens,channels,adapters,base_s,osmos_s,torch_s,peft_s,osmos_op_s,torch_op_s,fused_s\n")
            for r in rows:
                f.write(",".join(str(v) for v in r) + "\n")


if __name__ == "__main__":
    main()
