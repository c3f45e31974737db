"""Learning-to-Cache-style router training: the baseline HarmoniCa improves on.

Same router, units and compute penalty as `train_router`, but trained the way Learning-to-Cache
(Ma et al., 2024) trains: every step's objective is computed on the *teacher's* trajectory, with
the cache filled by the teacher's (fully computed) previous step, and every step weighs the same
(no image-error proxy). At inference, though, the cache holds what the router itself computed and
the trajectory is the cached model's own: the training-inference mismatch that HarmoniCa's
Step-Wise Denoising Training and IEPO remove. L2C samples one timestep per iteration; sweeping
every step of one teacher trajectory per iteration, as here, has the same expected gradient and
reuses the teacher's forward passes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from osmos.accel.harmonica.hooks import cache_units
from osmos.accel.harmonica.router import Router
from osmos.accel.harmonica.train import TrainRecord, _Attached


def train_l2c_router(
    transformer: nn.Module,
    scheduler,
    *,
    num_steps: int,
    sample_batch: Callable[[torch.Generator], tuple[Tensor, object]],
    denoise: Callable[[nn.Module, Tensor, Tensor, object], Tensor],
    beta: float,
    iterations: int = 200,
    lr: float = 0.01,
    threshold: float = 0.1,
    init_logit: float = 3.0,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Router, TrainRecord]:
    """Train a Router L2C-style; arguments as `train_router` (no lambda: every step weighs 1)."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if beta < 0 or iterations < 1:
        raise ValueError("beta must be >= 0 and iterations >= 1")
    from tqdm.auto import tqdm

    scheduler.set_timesteps(num_steps)
    router = Router(num_steps, len(cache_units(transformer)), type(scheduler).__name__, init=init_logit)
    opt = torch.optim.Adam(router.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    requires = [p.requires_grad for p in transformer.parameters()]
    for p in transformer.parameters():
        p.requires_grad_(False)
    att = _Attached(transformer)
    record = TrainRecord()
    try:
        for _ in tqdm(range(iterations), desc="L2C router", disable=not progress):
            x, cond = sample_batch(gen)
            att.clear()
            total = 0.0
            for i, t in enumerate(scheduler.timesteps):
                r = router.probabilities()[i]
                if i > 0:  # student: this step's units mixed with the teacher's previous-step cache
                    att.set("student", r=r)
                    eps_student = denoise(transformer, x, t, cond)
                with torch.no_grad():  # teacher: everything computed; refills the cache with its outputs
                    att.set("student", r=torch.ones_like(r))
                    eps_teacher = denoise(transformer, x, t, cond)
                if i > 0:
                    loss = torch.nn.functional.mse_loss(eps_student, eps_teacher) + beta * r.sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    router.clamp_()
                    total += loss.item()
                with torch.no_grad():
                    x = scheduler.step(eps_teacher, t, x).prev_sample
            record.losses.append(total / (num_steps - 1))
            record.cache_usage.append(router.cache_usage(threshold))
    finally:
        att.detach()
        for p, req in zip(transformer.parameters(), requires):
            p.requires_grad_(req)
    return router, record
