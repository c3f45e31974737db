"""EF21 DDP hook vs plain allreduce and PyTorch's PowerSGD hook, real DDP over gloo on 127.0.0.1.

Part 1 (speed/traffic): world = 2 and 4 processes, an MLP of ~25M parameters
(1024 -> 4096 -> 4096 -> 1024), batch 4 per rank, SGD, one DDP bucket (see BUCKET_CAP_MB). Hooks: allreduce (torch's
default_hooks.allreduce_hook), PowerSGD rank 1 and 4 (error feedback, warm start), EF21 TopK at
k/d = 1% and 0.1%. Per-step wall time (median over the measured steps, after warm-up steps that
include EF21's one dense first round and PowerSGD's start iteration), and bytes per rank per step
handed to collectives ("payload": counted by wrapping dist.all_reduce / dist.all_gather) and the
bytes a rank puts on the wire with ring algorithms (allreduce 2 (n-1)/n x payload, all_gather
(n-1) x payload).

Part 2 (quality): 2 ranks train an MLP 64-256-10 on scikit-learn's digits (each rank a shard,
batch 32 per rank, SGD lr 0.1) with every hook; full-data training loss every few steps on one
plot; reports the extra steps EF21 needs to reach allreduce's final loss.

    PYTHONPATH=python nice -n 10 python benchmarks/bench_ef21_ddp.py [--steps 3] [--warmup 2] [--loss-steps 300]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel as DDP

from osmos.compress.ef21 import EF21State, ef21_hook

# One bucket for every hook: PowerSGD issues its second all_reduce from a future callback, and with
# several buckets over gloo those collectives raced with the next bucket's and deadlocked here.
BUCKET_CAP_MB = 200
HOOKS = ["allreduce", "powersgd_r1", "powersgd_r4", "ef21_1%", "ef21_0.1%"]


def attach(ddp, name):
    if name == "allreduce":
        ddp.register_comm_hook(None, default_hooks.allreduce_hook)
    elif name.startswith("powersgd_r"):
        state = powerSGD_hook.PowerSGDState(None, matrix_approximation_rank=int(name[-1]), start_powerSGD_iter=2)
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    elif name.startswith("ef21_"):
        ddp.register_comm_hook(EF21State(None, ratio=float(name[5:-1]) / 100), ef21_hook)
    else:
        raise ValueError(name)


class ByteCounter:
    """Wraps dist.all_reduce / dist.all_gather to count payload bytes per rank and ring wire bytes."""

    def __init__(self, world):
        self.world, self.payload, self.wire = world, 0, 0
        self._reduce, self._gather = dist.all_reduce, dist.all_gather
        self._single = {name: getattr(dist, name) for name in ("all_gather_single", "all_gather_into_tensor")
                        if hasattr(dist, name)}

        def all_reduce(tensor, *a, **k):
            nbytes = tensor.numel() * tensor.element_size()
            self.payload += nbytes
            self.wire += 2 * (self.world - 1) * nbytes // self.world
            return self._reduce(tensor, *a, **k)

        def all_gather(out, tensor, *a, **k):
            nbytes = tensor.numel() * tensor.element_size()
            self.payload += nbytes
            self.wire += (self.world - 1) * nbytes
            return self._gather(out, tensor, *a, **k)

        def counted_single(fn):
            def gather_single(out, tensor, *a, **k):
                nbytes = tensor.numel() * tensor.element_size()
                self.payload += nbytes
                self.wire += (self.world - 1) * nbytes
                return fn(out, tensor, *a, **k)
            return gather_single

        dist.all_reduce, dist.all_gather = all_reduce, all_gather
        for name, fn in self._single.items():
            setattr(dist, name, counted_single(fn))

    def reset(self):
        self.payload = self.wire = 0


def big_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1024))


def speed_worker(rank, world, port, steps, warmup, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    torch.set_num_threads(1)
    counter = ByteCounter(world)
    results = {}
    for name in HOOKS:
        model = big_model()
        ddp = DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
        attach(ddp, name)
        opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(rank)
        times, payload, wire = [], [], []
        for step in range(warmup + steps):
            x = torch.randn(4, 1024, generator=gen)
            counter.reset()
            dist.barrier()
            t = time.perf_counter()
            opt.zero_grad()
            ddp(x).square().mean().backward()
            opt.step()
            dist.barrier()
            if step >= warmup:
                times.append(time.perf_counter() - t)
                payload.append(counter.payload)
                wire.append(counter.wire)
        results[name] = {"params": sum(p.numel() for p in model.parameters()), "step_s": statistics.median(times),
                         "payload_bytes": statistics.median(payload), "wire_bytes": statistics.median(wire)}
        del ddp, model, opt
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def digits_shard(rank, world):
    from sklearn.datasets import load_digits

    data = load_digits()
    X = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target)
    return X, y, X[rank::world], y[rank::world]


def loss_worker(rank, world, port, steps_by_hook, every, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    torch.set_num_threads(1)
    X, y, Xs, ys = digits_shard(rank, world)
    curves = {}
    for name, steps in steps_by_hook.items():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
        ddp = DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
        attach(ddp, name)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(100 + rank)
        curve = []
        for step in range(steps + 1):
            if step % every == 0:
                with torch.no_grad():
                    curve.append((step, float(nn.functional.cross_entropy(model(X), y))))
            if step == steps:
                break
            idx = torch.randint(0, Xs.shape[0], (32,), generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(Xs[idx]), ys[idx]).backward()
            opt.step()
        curves[name] = curve
    if rank == 0:
        with open(out, "w") as f:
            json.dump(curves, f)
    dist.destroy_process_group()


def spawn(fn, world, *args):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.json")
        mp.start_processes(fn, args=(world, port, *args, out), nprocs=world, start_method="spawn")
        with open(out) as f:
            return json.load(f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--worlds", default="2,4", help="comma-separated world sizes for part 1 ('' skips it)")
    ap.add_argument("--loss-steps", type=int, default=300, help="allreduce steps of part 2 (EF21 runs 3x; 0 skips it)")
    ap.add_argument("--loss-every", type=int, default=10)
    ap.add_argument("--plot", default="benchmarks/figures/ef21_ddp_loss.png")
    args = ap.parse_args()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

    print(f"# EF21 DDP hook: gloo on 127.0.0.1, {os.cpu_count()} CPU cores, torch {torch.__version__}\n")
    print("| ranks | hook | params | step time (median, s) | vs allreduce | payload bytes/rank/step | wire bytes/rank/step (ring) | bytes vs allreduce |")
    print("|---|---|---|---|---|---|---|---|")
    for world in [int(w) for w in args.worlds.split(",") if w]:
        res = spawn(speed_worker, world, args.steps, args.warmup)
        base = res["allreduce"]
        for name in HOOKS:
            r = res[name]
            print(f"| {world} | {name} | {r['params'] / 1e6:.1f}M | {r['step_s']:.3f} | {r['step_s'] / base['step_s']:.2f}x | "
                  f"{r['payload_bytes'] / 1e6:.3f} MB | {r['wire_bytes'] / 1e6:.3f} MB | {base['wire_bytes'] / max(r['wire_bytes'], 1):.1f}x fewer |",
                  flush=True)

    if args.loss_steps <= 0:
        return
    steps = {name: args.loss_steps * (1 if name == "allreduce" or name.startswith("powersgd") else 3) for name in HOOKS}
    curves = spawn(loss_worker, 2, steps, args.loss_every)
    target = curves["allreduce"][-1][1]
    print(f"\n## digits MLP, 2 ranks: allreduce loss after {args.loss_steps} steps = {target:.4f}\n")
    print("| hook | loss at step " + str(args.loss_steps) + " | first step with loss <= allreduce's final | extra steps |")
    print("|---|---|---|---|")
    for name, curve in curves.items():
        at = dict(curve).get(args.loss_steps)
        reach = next((s for s, v in curve if v <= target), None)
        extra = "not reached" if reach is None else str(reach - args.loss_steps)
        print(f"| {name} | {at:.4f} | {reach if reach is not None else f'> {curve[-1][0]}'} | {extra} |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, curve in curves.items():
        ax.semilogy([s for s, _ in curve], [v for _, v in curve], label=name)
    ax.axhline(target, color="grey", linewidth=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (full digits set)")
    ax.set_title("DDP on sklearn digits, 2 gloo ranks, MLP 64-256-10")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
