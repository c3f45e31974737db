"""Scenarios run inside spawned gloo ranks for tests/compress/test_ef21_hook.py.

`launch(world, scenarios, timeout)` spawns `world` processes on 127.0.0.1 (a free port), runs each
named scenario on every rank and returns {scenario: [result of rank 0, rank 1, ...]}.
"""

from __future__ import annotations

import io
import os
import socket
import tempfile
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from osmos.compress.ef21 import EF21State, Quadratic, ef21_hook, ef21_stepsize, register_ef21_hook


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DEVICE = torch.device("cpu")  # cuda:<rank> in NCCL workers


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 16), nn.Tanh(), nn.Linear(16, 3)).to(DEVICE, dtype)


def _ddp(model, hook_state=None, bucket_cap_mb=0.001):
    ddp = DDP(model, bucket_cap_mb=bucket_cap_mb)
    if hook_state is not None:
        ddp.register_comm_hook(hook_state, ef21_hook)
    return ddp


def _batch(rank, step, dtype=torch.float32):
    gen = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(8, 12, generator=gen) * (1 + rank)  # heterogeneous ranks
    return x.to(DEVICE, dtype), torch.randint(0, 3, (8,), generator=gen).to(DEVICE)


def _flat_grad(model):
    return torch.cat([p.grad.reshape(-1).float() for p in model.parameters()]).cpu()


def _train(ddp, rank, steps, start=0, opt=None, no_sync_every=0):
    """SGD steps; returns the aggregated gradients after each step ([steps, P])."""
    opt = opt or torch.optim.SGD(ddp.parameters(), lr=0.05)
    grads = []
    for step in range(start, start + steps):
        opt.zero_grad()
        if no_sync_every and step % no_sync_every == 0:
            with ddp.no_sync():
                x, y = _batch(rank, step + 500)
                nn.functional.cross_entropy(ddp(x), y).backward()
        x, y = _batch(rank, step)
        nn.functional.cross_entropy(ddp(x), y).backward()
        grads.append(_flat_grad(ddp.module))
        opt.step()
    return torch.stack(grads)


# --- scenarios: each returns a picklable result for this rank -----------------------------------

def sc_identical(rank, world):
    """Aggregated gradients after each step for several configurations (must match across ranks)."""
    configs = {
        "topk": dict(ratio=0.1),
        "topk_nosync": dict(ratio=0.05),
        "randk": dict(ratio=0.1, compressor="randk"),
        "ef21w": dict(ratio=0.1, weights=[float(1 + r) for r in range(world)]),
        "online": dict(ratio=0.1, weights="online"),
        "pp": dict(ratio=0.1, participation=0.5, init="zero"),
    }
    out = {}
    for name, kw in configs.items():
        ddp = _ddp(_model(), EF21State(None, **kw))
        out[name] = _train(ddp, rank, 5, no_sync_every=2 if name == "topk_nosync" else 0)
    ddp = _ddp(_model(dtype=torch.bfloat16), EF21State(None, ratio=0.1))
    x, y = _batch(rank, 0, torch.bfloat16)
    nn.functional.cross_entropy(ddp(x).float(), y).backward()
    out["bf16"] = _flat_grad(ddp.module)
    return out


def sc_ratio_one(rank, world):
    """(plain allreduce grads, EF21 ratio=1 grads, EF21-W ratio=1 grads) per step."""
    ref = _train(_ddp(_model()), rank, 4)
    ef = _train(_ddp(_model(), EF21State(None, ratio=1.0)), rank, 4)
    efw = _train(_ddp(_model(), EF21State(None, ratio=1.0, weights=[1.0 + 3 * r for r in range(world)])), rank, 4)
    return ref, ef, efw


def sc_resume(rank, world):
    """Uninterrupted 6 steps vs 3 steps + save + fresh DDP/EF21State/optimizer + load + 3 steps."""
    full = _train(_ddp(_model(), EF21State(None, ratio=0.1, weights="online")), rank, 6)
    model = _model()
    state = EF21State(None, ratio=0.1, weights="online")
    ddp = _ddp(model, state)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    first = _train(ddp, rank, 3, opt=opt)
    blob = io.BytesIO()
    torch.save({"ef21": state.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}, blob)
    blob.seek(0)
    ckpt = torch.load(blob, weights_only=True)
    model2 = _model(seed=123)
    model2.load_state_dict(ckpt["model"])
    state2 = EF21State(None, ratio=0.1, weights="online")
    state2.load_state_dict(ckpt["ef21"])
    ddp2 = _ddp(model2, state2)
    opt2 = torch.optim.SGD(ddp2.parameters(), lr=0.05)
    opt2.load_state_dict(ckpt["opt"])
    second = _train(ddp2, rank, 3, start=3, opt=opt2)
    return full, torch.cat([first, second])


CONVEX = {"d": 20, "k": 4, "steps": 250, "seed": 7}


class _QuadraticModel(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.x = nn.Parameter(torch.zeros(d))

    def forward(self, H, c):
        return 0.5 * self.x @ H @ self.x - c @ self.x


def sc_convex(rank, world):
    """EF21 TopK (k=4 of d=20) through DDP on f_i = quadratics with the theory stepsize:
    returns ||grad f(x^t)||^2 at t = 0 and at the end, and the last iterate."""
    d, k, steps = CONVEX["d"], CONVEX["k"], CONVEX["steps"]
    q = Quadratic.random(world, d, seed=CONVEX["seed"], spread=4.0)
    H, c = q.H[rank].float(), q.c[rank].float()
    gamma = ef21_stepsize(q.L, q.L_i, k, d, weighted=False)
    ddp = DDP(_QuadraticModel(d))
    register_ef21_hook(ddp, EF21State(None, ratio=k / d))
    opt = torch.optim.SGD(ddp.parameters(), lr=gamma)

    def full_grad_sq():
        x = ddp.module.x.detach().double()
        return float(q.grads(x).mean(0).square().sum())

    start = full_grad_sq()
    for _ in range(steps):
        opt.zero_grad()
        ddp(H, c).backward()
        opt.step()
    return start, full_grad_sq(), ddp.module.x.detach().clone()


def _error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test inspects type and message
        return f"{type(e).__name__}: {e}"
    return None


def sc_errors(rank, world):
    errors = {
        "ratio0": _error(lambda: EF21State(None, ratio=0.0)),
        "ratio2": _error(lambda: EF21State(None, ratio=1.5)),
        "weights_len": _error(lambda: EF21State(None, weights=[1.0] * (world + 1))),
        "weights_neg": _error(lambda: EF21State(None, weights=[1.0] * (world - 1) + [-1.0])),
        "compressor": _error(lambda: EF21State(None, compressor="bogus")),
    }
    sub = dist.new_group([0])
    errors["not_member"] = _error(lambda: EF21State(sub))
    ddp = _ddp(_model())  # DDP construction is collective: on every rank
    if rank == 0:
        errors["group_mismatch"] = _error(lambda: register_ef21_hook(ddp, EF21State(sub)))
    errors["dtype_register"] = _error(lambda: register_ef21_hook(_ddp(_model(dtype=torch.float64)), EF21State(None)))

    def hook_f64():
        ddp = _ddp(_model(dtype=torch.float64), EF21State(None))
        x, y = _batch(rank, 0, torch.float64)
        nn.functional.cross_entropy(ddp(x), y).backward()

    errors["dtype_hook"] = _error(hook_f64)
    other = EF21State(None, ratio=0.5)
    errors["load_mismatch"] = _error(lambda: other.load_state_dict(EF21State(None, ratio=0.1).state_dict()))
    dist.barrier()
    return errors


SCENARIOS = {"identical": sc_identical, "ratio_one": sc_ratio_one, "resume": sc_resume,
             "convex": sc_convex, "errors": sc_errors}


def _worker(rank, world, port, scenarios, outdir, backend="gloo"):
    global DEVICE
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    if backend == "nccl":  # one GPU per rank
        DEVICE = torch.device("cuda", rank)
        torch.cuda.set_device(DEVICE)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=20))
    try:
        results = {}
        for name in scenarios:
            try:
                results[name] = SCENARIOS[name](rank, world)
            except Exception:  # noqa: BLE001 - reported to the parent
                results[name] = RuntimeError(traceback.format_exc())
            dist.barrier()
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def launch(world: int, scenarios: list[str], timeout: float = 120.0, backend: str = "gloo") -> dict:
    """Run the scenarios on `world` spawned ranks (gloo on the CPU, or nccl with one GPU per rank)."""
    with tempfile.TemporaryDirectory() as outdir:
        ctx = mp.start_processes(_worker, args=(world, free_port(), scenarios, outdir, backend), nprocs=world,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise TimeoutError(f"{world} {backend} ranks did not finish {scenarios} within {timeout} s")
        per_rank = [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=False) for r in range(world)]
    out = {}
    for name in scenarios:
        out[name] = [res[name] for res in per_rank]
        for res in out[name]:
            if isinstance(res, Exception):
                raise res
    return out
