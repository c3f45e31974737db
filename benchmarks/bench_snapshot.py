"""Step-time overhead of osmos.ft in-memory snapshots vs torch.save and DCP async_save.

Same process, same model: an MLP of ~N parameters trained with AdamW on random data. Reports the
median step time without snapshots, with a snapshot every step and every 10 steps (the three
configurations alternate in rounds, so load drifts on a shared machine hit them alike), the
blocking time of one snapshot (capture + fused copy/CRC-32C + publish), torch.save of the same
state to local disk, torch.distributed.checkpoint.async_save (call + wait, if it works
single-process), and the recovery time of restore_or_init (copy out + verify + load_state_dict).
Both manager slots are written before timing (the steady state of a long run). Every-step
overhead is shown three ways: mean wall time, CPU time, and the median step (each step pays for
the previous snapshot's copy, so the median step carries it too). The baseline steps run with no
Snapshotter attached; each snapshot configuration attaches a fresh one (both slots filled before
timing) and closes it after. Prints a markdown table.

Optimizers (--optimizers): torch.optim.AdamW (default, or fused=True: torch's fastest CPU AdamW)
with the copying snapshot, and osmos.ft.SnapshotAdamW with the zero-copy snapshot (the optimizer writes parameters and moments into the manager's slot;
the snapshot copies only the rest). Each one's overhead is against its own steps without
snapshots; the step times of the two show what the fused optimizer step itself costs. The
zero-copy "snapshot (s)" is the blocking time of a snapshot taken right after an optimizer step.

    nice -n 10 python benchmarks/bench_snapshot.py [--quick] [--device cuda] [--params 10e6 100e6]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time

import torch

from osmos.ft.manager import start_manager
from osmos.ft.optim import SnapshotAdamW
from osmos.ft.restore import restore_or_init
from osmos.ft.snapshot import Snapshotter


OPTIMIZERS = {"adamw": lambda params: torch.optim.AdamW(params, lr=1e-4),
              "adamw-fused": lambda params: torch.optim.AdamW(params, lr=1e-4, fused=True),
              "snapshot-adamw": lambda params: SnapshotAdamW(params, lr=1e-4)}


def make(n_params: float, device: str, optimizer: str = "adamw"):
    width = 1024
    layers = max(1, round(n_params / (width * width + width)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]).to(device)
    opt = OPTIMIZERS[optimizer](model.parameters())
    return model, opt, width


def train(model, opt, width, steps, device, snap=None, batch=8):
    """(wall mean, CPU, wall median) time of steps 1..steps-1 (step 0 warms up); CPU = this process's CPU time,
    all threads (the snapshot copy included), which a shared machine's load disturbs less than
    wall time. A snapshot's background copy still running after the last step is waited for
    inside the last step's time, so a window of `steps - 1` steps pays for every snapshot in it."""
    x = torch.randn(batch, width, device=device)
    times = []
    for step in range(steps):
        if step == 1:
            c0 = time.process_time()
        t0 = time.perf_counter()
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        if snap is not None and step > 0:  # steps 1..steps-1 take (steps-1)/every snapshots
            snap.step(step)
            if step == steps - 1:
                snap.wait()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.fmean(times[1:]), (time.process_time() - c0) / (steps - 1), statistics.median(times[1:])


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def dcp_async(model, opt, path):
    try:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict
    except ImportError:
        return None
    try:
        msd, osd = get_state_dict(model, opt)
        fut = dcp.async_save({"model": msd, "optim": osd}, checkpoint_id=path)
        fut.result()
        return True
    except Exception as exc:  # noqa: BLE001 - report why the baseline is missing
        print(f"  dcp.async_save unavailable single-process: {type(exc).__name__}: {str(exc)[:100]}")
        return None


def timed_after_step(model, opt, width, snap, repeats, batch):
    """Median blocking time of snap.step(block=True) taken right after an optimizer step."""
    out = []
    x = torch.randn(batch, width)
    for step in range(repeats):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        t0 = time.perf_counter()
        snap.step(step, block=True)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def bench(n_params, steps, rounds, repeats, device, handle, tmp, batch, optimizer="adamw"):
    model, opt, width = make(n_params, device, optimizer)
    real = sum(p.numel() for p in model.parameters())
    train(model, opt, width, 2, device)  # warm-up, creates optimizer state
    client = handle.client()

    def attach(every=1):
        """A Snapshotter (the baseline runs without one: a zero-copy Snapshotter changes where the
        optimizer writes even on steps without a snapshot), both slots filled and mapped first."""
        snap = Snapshotter(model, opt, client=client, every=every)
        for _ in range(2):  # no first-touch page faults in the timing
            snap.step(0, block=True)
        return snap

    times = {"base": [], 1: [], 10: []}
    orders = (("base", 1, 10), (10, 1, "base"))  # every other round reversed: no configuration always follows another
    for r in range(rounds):  # configurations alternate; median over rounds of each round's mean
        for every in orders[r % 2]:
            if every == "base":
                times["base"].append(train(model, opt, width, steps, device, batch=batch))
            else:
                snap = attach(every)
                times[every].append(train(model, opt, width, steps, device, snap, batch))
                snap.close()
    snap = attach()
    row = {"params": real, "optimizer": optimizer, "zero_copy": snap.zero_copy}
    for key, name in (("base", "base"), (1, "every1"), (10, "every10")):
        row[f"{name}_s"] = statistics.median(w for w, _, _ in times[key])
        row[f"{name}_cpu"] = statistics.median(c for _, c, _ in times[key])
        row[f"{name}_med"] = statistics.median(m for _, _, m in times[key])
    row["snap_s"] = (timed_after_step(model, opt, width, snap, repeats, batch) if snap.zero_copy
                     else timed(lambda: snap.step(0, block=True), repeats))
    snap.close()
    row["save_s"] = timed(lambda: torch.save({"m": model.state_dict(), "o": opt.state_dict()},
                                             os.path.join(tmp, "ckpt.pt")), repeats)
    ok = dcp_async(model, opt, os.path.join(tmp, "dcp0"))
    row["dcp_s"] = (timed(lambda: dcp_async(model, opt, os.path.join(tmp, f"dcp{time.monotonic_ns()}")), repeats)
                    if ok else float("nan"))
    m2, o2, _ = make(n_params, device, optimizer)
    train(m2, o2, width, 2, device)
    row["restore_s"] = timed(lambda: restore_or_init(m2, o2, client=client), repeats)
    client.close()
    return row


def kernel_rates(sizes=(1 << 20, 256 << 20)):
    """GB/s of the CRC-32C kernels (each ISA path, 1 and 2 threads) vs torch copy_ and zlib.crc32."""
    import zlib

    from osmos import _native
    from osmos.ft.checksum import copy_with_crc32c, crc32c

    C = _native.C
    isas = ["scalar", "avx2", "avx512"][: ["scalar", "avx2", "avx512"].index(C.detected_isa()) + 1]
    before = C.cpu_isa()
    print("| bytes | torch copy_ | zlib.crc32 | " + " | ".join(
        f"{i} crc32c | {i} copy+crc32c 1 thr | {i} copy+crc32c 2 thr" for i in isas) + " |")
    print("|---" * (3 + 3 * len(isas)) + "|")
    for n in sizes:
        src = torch.randint(0, 255, (n,), dtype=torch.uint8)
        dst = torch.ones_like(src)
        rate = lambda fn: n / timed(fn, 5) / 1e9  # noqa: E731
        cells = [rate(lambda: dst.copy_(src)), rate(lambda: zlib.crc32(src.numpy()))]
        for isa in isas:
            C.set_cpu_isa(isa)
            cells += [rate(lambda: crc32c(src)), rate(lambda: copy_with_crc32c([src], [dst], 1)),
                      rate(lambda: copy_with_crc32c([src], [dst], 2))]
        C.set_cpu_isa(before)
        print(f"| {n >> 20} MiB | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="10M params, few steps (< 30 s)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--params", type=float, nargs="+", default=[10e6, 100e6])
    ap.add_argument("--steps", type=int, default=21, help="steps per round (the first is not timed)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="rows per step: 8 is memory-bound, a few hundred compute-bound")
    ap.add_argument("--kernels", action="store_true", help="only the CRC-32C kernel rates (GB/s)")
    ap.add_argument("--optimizers", nargs="+", choices=sorted(OPTIMIZERS), default=["adamw", "adamw-fused", "snapshot-adamw"],
                    help="adamw / adamw-fused: torch's (fused=True), copying snapshots; snapshot-adamw: "
                         "osmos.ft.SnapshotAdamW, zero-copy snapshots (CPU only)")
    args = ap.parse_args()
    if args.kernels:
        kernel_rates()
        return
    sizes, steps, rounds, repeats = ([10e6], 11, 4, 3) if args.quick else (args.params, args.steps, args.rounds, 3)
    handle = start_manager(job_id="bench-snapshot")
    # a `timeout` or Ctrl-C still ends the manager (the finally below), freeing its shared memory
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                for optimizer in args.optimizers:
                    if optimizer != "adamw" and args.device != "cpu":
                        continue
                    rows.append(bench(n, steps, rounds, repeats, args.device, handle, tmp, args.batch, optimizer))
    finally:
        handle.end_job()
    print(f"batch {args.batch}; torch threads: {torch.get_num_threads()}; {rounds} rounds x {steps - 1} timed steps per configuration; "
          "step time = median over rounds of the mean step time")
    print("| params | optimizer (snapshot) | step wall / CPU (s) | overhead every step: wall / CPU / median step "
          "| every 10: wall / CPU | snapshot (s) | torch.save (s) | DCP async_save (s) | save / snapshot | restore (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def pct(name):
            return (f"{100 * (r[name + '_s'] / r['base_s'] - 1):+.1f}% / "
                    f"{100 * (r[name + '_cpu'] / r['base_cpu'] - 1):+.1f}%")
        med = f"{100 * (r['every1_med'] / r['base_med'] - 1):+.1f}%"
        kind = f"{r['optimizer']} ({'zero-copy' if r['zero_copy'] else 'copy'})"
        print(f"| {r['params'] / 1e6:.1f}M | {kind} | {r['base_s']:.3f} / {r['base_cpu']:.3f} | {pct('every1')} / {med} "
              f"| {pct('every10')} | {r['snap_s']:.3f} | {r['save_s']:.3f} "
              f"| {r['dcp_s']:.3f} | {r['save_s'] / r['snap_s']:.2f}x | {r['restore_s']:.3f} |")


if __name__ == "__main__":
    main()
