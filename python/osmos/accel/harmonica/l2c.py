"""Learning-to-Cache-style router training: the baseline HarmoniCa improves on.

Same router, units and compute penalty as `train_router`, but trained the way Learning-to-Cache
(Ma et al., 2024) trains: every step's objective is computed on the *teacher's* trajectory, with
the cache filled by the teacher's (fully computed) previous step, and no image-error proxy (IEPO's
lambda(t) = 1; the per-step error is measured in the same space as HarmoniCa's, `error`). At inference, though, the cache holds what the router itself computed and
the trajectory is the cached model's own: the training-inference mismatch that HarmoniCa's
Step-Wise Denoising Training and IEPO remove. L2C samples one timestep per iteration; sweeping
every step of one teacher trajectory per iteration, as here, has the same expected gradient and
reuses the teacher's forward passes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from osmos.accel.harmonica.router import Router
from osmos.accel.harmonica.train import TrainRecord, train_router


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
    error: str = "x0",
    init: float | str = 0.0,
    max_reuse_run: int | None = None,
    granularity: str = "unit",
    seed: int = 0,
    progress: bool = True,
) -> tuple[Router, TrainRecord]:
    """Train a Router L2C-style: `train_router`'s loop with the teacher's trajectory and cache and
    no IEPO (lambda = 1; arguments as `train_router`, no lambda or selection ones)."""
    return train_router(transformer, scheduler, num_steps=num_steps, sample_batch=sample_batch, denoise=denoise,
                        beta=beta, iterations=iterations, lr=lr, lambda_mode=None, trajectory="teacher", error=error,
                        threshold=threshold, init=init, max_reuse_run=max_reuse_run, granularity=granularity, seed=seed,
                        progress=progress)
