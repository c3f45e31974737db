"""A torchrun worker for the elastic-restart test: deterministic DDP training on gloo (CPU).

argv: steps kill_at out_dir. The manager comes from OSMOS_FT_* (passed on by torchrun);
$OSMOS_TEST_OPTIMIZER=SnapshotAdamW trains with osmos.ft.SnapshotAdamW (zero-copy snapshots).
Each rank appends "<step> <loss.hex()>" per step to out_dir/losses_r<rank>.txt and writes its pid
to out_dir/pid_a<attempt>_r<rank> and the step it resumed from to out_dir/start_a<attempt>_r<rank>.
On the first attempt (TORCHELASTIC_RESTART_COUNT == 0), once every rank's step-kill_at snapshot is
published (a barrier), rank 0 SIGKILLs itself; torchrun then restarts the whole worker group.
"""

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from _training_loop import deterministic, kill_self, train
from osmos.ft.optim import SnapshotAdamW
from osmos.ft.restore import restore_or_init
from osmos.ft.snapshot import Snapshotter
from torch.nn.parallel import DistributedDataParallel


def main():
    steps, kill_at, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rank, attempt = int(os.environ["RANK"]), int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    with open(os.path.join(out, f"pid_a{attempt}_r{rank}"), "w") as f:
        f.write(str(os.getpid()))
    dist.init_process_group("gloo", timeout=timedelta(seconds=150))
    deterministic()
    model = DistributedDataParallel(torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.Dropout(0.1), torch.nn.ReLU(), torch.nn.Linear(32, 1)))
    if os.environ.get("OSMOS_TEST_OPTIMIZER") == "SnapshotAdamW":
        opt = SnapshotAdamW(model.parameters(), lr=1e-2)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    start, extra = restore_or_init(model, opt)  # a collective: both ranks restore the same step
    assert extra == (None if start == 0 else {"data_pos": start - 1}), extra
    with open(os.path.join(out, f"start_a{attempt}_r{rank}"), "w") as f:
        f.write(str(start))
    pos = {"data_pos": start - 1}
    snap = Snapshotter(model, opt, extra_state=lambda: dict(pos))

    def after_step(step):
        if step == kill_at and attempt == 0:
            snap.wait()
            dist.barrier()
            if rank == 0:
                kill_self()

    # each rank's data depends only on the step
    train(model, opt, snap, pos, start, steps, os.path.join(out, f"losses_r{rank}.txt"), lambda step: 1000 * rank + step,
          after_step)
    snap.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
