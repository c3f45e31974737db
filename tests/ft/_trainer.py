"""A deterministic tiny trainer for the fault-injection tests (run as a subprocess).

argv: steps every [kill_at kill_mode]; writes into the working directory (out_dir); the manager comes from OSMOS_FT_* env vars.
Appends one line per step to out_dir/losses.txt: "<step> <loss.hex()>". After restoring, saves the
restored state to out_dir/restored.pt. kill_mode "after": SIGKILL itself once the step-kill_at
snapshot is published; "during": SIGKILL itself inside the step-kill_at copy, before publishing.
"""

import os
import signal
import sys

import torch

from osmos.ft.restore import restore_or_init
from osmos.ft.snapshot import Snapshotter


def build():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Dropout(0.1), torch.nn.ReLU(),
                                torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 1))
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
        snap._before_publish = lambda buf: os.kill(os.getpid(), signal.SIGKILL) if pos["data_pos"] == kill_at else None
    with open(os.path.join(out, "losses.txt"), "a") as f:
        for step in range(start, steps):
            g = torch.Generator().manual_seed(1000 + step)  # the data depends only on the step
            x, y = torch.randn(8, 16, generator=g), torch.randn(8, 1, generator=g)
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            f.write(f"{step} {loss.item().hex()}\n")
            f.flush()
            pos["data_pos"] = step
            snap.step(step)
            if step == kill_at:
                snap.wait()
                os.kill(os.getpid(), signal.SIGKILL)
    snap.close()


if __name__ == "__main__":
    main()
