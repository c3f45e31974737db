"""A deterministic tiny trainer for the fault-injection tests (run as a subprocess).

argv: steps every [kill_at kill_mode]; $OSMOS_TEST_OPTIMIZER=SnapshotAdamW trains with
osmos.ft.SnapshotAdamW (zero-copy snapshots) instead of torch.optim.AdamW; writes into the working directory (out_dir); the manager comes from OSMOS_FT_* env vars.
Appends one line per step to out_dir/losses.txt: "<step> <loss.hex()>". After restoring, saves the
restored state to out_dir/restored.pt. kill_mode "after": SIGKILL itself once the step-kill_at
snapshot is published; "during": SIGKILL itself inside the step-kill_at copy, before publishing.
"""

import os
import sys

import torch
from _training_loop import deterministic, kill_self, train

from osmos.ft.optim import SnapshotAdamW
from osmos.ft.restore import restore_or_init
from osmos.ft.snapshot import Snapshotter


def build():
    deterministic()
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Dropout(0.1), torch.nn.ReLU(),
                                torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 1))
    if os.environ.get("OSMOS_TEST_OPTIMIZER") == "SnapshotAdamW":  # zero-copy snapshots
        return model, SnapshotAdamW(model.parameters(), lr=1e-2)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def main():
    steps, every, out = int(sys.argv[1]), int(sys.argv[2]), os.getcwd()
    kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else -1
    mode = sys.argv[4] if len(sys.argv) > 4 else "after"
    model, opt = build()
    start, extra = restore_or_init(model, opt)
    if start:
        assert extra == {"data_pos": start - 1}, extra
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "rng": torch.get_rng_state()}, os.path.join(out, "restored.pt"))
    pos = {"data_pos": start - 1}
    snap = Snapshotter(model, opt, extra_state=lambda: dict(pos), every=every)
    if mode == "during":
        snap._before_publish = lambda buf: kill_self() if pos["data_pos"] == kill_at else None

    def after_step(step):
        if step == kill_at:
            snap.wait()
            kill_self()

    train(model, opt, snap, pos, start, steps, os.path.join(out, "losses.txt"), lambda step: 1000 + step, after_step)
    snap.close()


if __name__ == "__main__":
    main()
