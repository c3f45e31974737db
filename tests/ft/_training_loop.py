"""The deterministic training loop both fault-injection child scripts run (_trainer.py, and
_elastic_trainer.py under torchrun); imported from their folder, which is sys.path[0]."""

import os
import signal

import torch


def deterministic() -> None:
    """Same initial weights and bitwise-repeatable steps in every process."""
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def train(model, opt, snap, pos: dict, start: int, steps: int, losses_path: str, data_seed, after_step) -> None:
    """Steps start .. steps - 1 of MSE regression on batches of 8 x 16 drawn from
    Generator(data_seed(step)), so the data depends only on the step. Appends "<step> <loss.hex()>"
    to losses_path per step, records the step in pos["data_pos"] (the snapshot's extra state),
    calls snap.step(step), then after_step(step) (where a test kills the process)."""
    with open(losses_path, "a") as f:
        for step in range(start, steps):
            g = torch.Generator().manual_seed(data_seed(step))
            x, y = torch.randn(8, 16, generator=g), torch.randn(8, 1, generator=g)
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            f.write(f"{step} {loss.item().hex()}\n")
            f.flush()
            pos["data_pos"] = step
            snap.step(step)
            after_step(step)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
