"""One rank of the cross-node tests (run as a subprocess, one per simulated node; gloo on loopback).

argv: phase rank world port out_dir k m steps
  phase "train": train `steps` deterministic steps, snapshotting every step with stripe parity
    (the last snapshot is published but NOT protected when $UNPROTECTED_LAST is set); after each
    step, saves the state to out_dir/r<rank>_s<step>.pt for the test to compare with.
  phase "restore": restore_or_init with the protector; writes out_dir/restored_r<rank>.pt
    ({"next_step", "extra", "model", "optimizer", "warnings"}) or out_dir/failed_r<rank>.txt (the error).
The node's manager comes from OSMOS_FT_* (one manager per simulated node).
"""

import os
import sys
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist

from osmos.ft.restore import SnapshotCorrupted, restore_or_init
from osmos.ft.snapshot import Snapshotter
from osmos.ft.stripes import StripePlan, StripeProtector


def build(rank):
    torch.manual_seed(rank)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16 + 8 * rank), torch.nn.Tanh(), torch.nn.Linear(16 + 8 * rank, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def state_of(model, opt, step, extra):
    return {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(), "extra": extra}


def main():
    phase, rank, world, port, out, k, m, steps = sys.argv[1:9]
    rank, world, k, m, steps = int(rank), int(world), int(k), int(m), int(steps)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=150))
    torch.set_num_threads(1)
    # small chunks: parity is streamed in several chunks, members end inside a chunk
    protector = StripeProtector(StripePlan(world, k=k, m=m), timeout=timedelta(seconds=150), chunk_bytes=1024)
    model, opt = build(rank)
    if phase == "train":
        pos = {"rank": rank, "seen": list(range(rank * 7))}  # ranks' snapshots differ in length
        snap = Snapshotter(model, opt, extra_state=lambda: dict(pos), protector=protector, rank=rank)
        for step in range(steps):
            g = torch.Generator().manual_seed(100 * rank + step)
            opt.zero_grad()
            model(torch.randn(4, 8, generator=g)).square().mean().backward()
            opt.step()
            pos["seen"].append(step)
            if step == steps - 1 and os.environ.get("UNPROTECTED_LAST"):
                snap.protector = None
            snap.step(step, block=True)
            torch.save(state_of(model, opt, step, dict(pos)), os.path.join(out, f"r{rank}_s{step}.pt"))
        snap.close()
    else:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                next_step, extra = restore_or_init(model, opt, rank=rank, protector=protector)
            torch.save({"next_step": next_step, **state_of(model, opt, next_step - 1, extra),
                        "warnings": [str(w.message) for w in caught]}, os.path.join(out, f"restored_r{rank}.pt"))
        except SnapshotCorrupted as exc:
            with open(os.path.join(out, f"failed_r{rank}.txt"), "w") as f:
                f.write(f"{type(exc).__name__}: {exc}")
    protector.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
