"""HarmoniCa on a text-to-image pipeline (the zoo's ``ShapesPipeline`` or anything shaped like it).

`train_pipeline_router(pipe, num_steps, beta, prompts)` trains a router for ``pipe.unet`` sampled by
``pipe.scheduler`` with classifier-free guidance, exactly as ``pipe`` samples (one transformer call
per step on the stacked unconditional + conditional batch). `budget_router` turns a trained router
into one that computes a given fraction of the unit evaluations (its most probable ones), for
comparisons against fixed schedules at the same compute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from osmos.accel.harmonica.router import Router
from osmos.accel.harmonica.train import TrainRecord, train_router


def guided_denoiser(pipe, guidance_scale: float | None = None) -> Callable:
    """denoise(transformer, x [B,C,H,W], t, (states [2B,T,D], mask [2B,T])) -> guided epsilon [B,C,H,W],
    the computation of one step of ``pipe.denoise`` (conditioning rows: unconditional first)."""
    from osmos.zoo.models import predict_noise

    guidance = pipe.recipe.default_guidance if guidance_scale is None else float(guidance_scale)

    def denoise(transformer, x: Tensor, t: Tensor, cond: tuple[Tensor, Tensor]) -> Tensor:
        states, mask = cond
        inp = pipe.scheduler.scale_model_input(torch.cat([x, x]), t)
        eps_u, eps_c = predict_noise(transformer, inp, t, states, mask).chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    return denoise


def prompt_sampler(pipe, prompts: Sequence[str], batch_size: int) -> Callable:
    """sample_batch(generator) -> (noise [batch_size,3,S,S], guided conditioning) over random prompts."""
    if len(prompts) == 0 or batch_size < 1:
        raise ValueError("prompts must be non-empty and batch_size >= 1")
    states, mask = pipe.encode_prompt(list(prompts))
    empty_s, empty_m = pipe.encode_prompt([""])

    def sample_batch(gen: torch.Generator):
        idx = torch.randint(len(prompts), (batch_size,), generator=gen)
        noise = torch.randn(batch_size, 3, pipe.size, pipe.size, generator=gen)
        cond_s = torch.cat([empty_s.expand(batch_size, -1, -1), states[idx]])
        cond_m = torch.cat([empty_m.expand(batch_size, -1), mask[idx]])
        return noise * pipe.scheduler.init_noise_sigma, (cond_s, cond_m)

    return sample_batch


def train_pipeline_router(pipe, num_steps: int, beta: float, prompts: Sequence[str], batch_size: int = 8,
                          guidance_scale: float | None = None, method: str = "harmonica",
                          **kwargs) -> tuple[Router, TrainRecord]:
    """Train a router for ``pipe`` at ``num_steps`` sampling steps. method "harmonica": `train_router`
    (kwargs: iterations, lr, lambda_mode, refresh_every, threshold, init_logit, seed, progress);
    "l2c": the Learning-to-Cache-style baseline `train_l2c_router` (same kwargs, no lambda ones)."""
    from osmos.accel.harmonica.l2c import train_l2c_router

    trainers = {"harmonica": train_router, "l2c": train_l2c_router}
    if method not in trainers:
        raise ValueError(f"method must be 'harmonica' or 'l2c', got {method!r}")
    return trainers[method](pipe.unet, pipe.scheduler, num_steps=num_steps,
                            sample_batch=prompt_sampler(pipe, prompts, batch_size),
                            denoise=guided_denoiser(pipe, guidance_scale), beta=beta, **kwargs)


def budget_router(router: Router, compute_fraction: float) -> Router:
    """A fixed router computing the first step plus the most probable (step, unit) pairs of ``router``
    so that round(compute_fraction * T * 2N) unit evaluations are computed in total (ties: earlier
    step, lower unit first)."""
    if not 0.0 <= compute_fraction <= 1.0:
        raise ValueError(f"compute_fraction must be in [0, 1], got {compute_fraction}")
    steps, units = router.num_steps, router.num_units
    total = max(units, round(compute_fraction * steps * units))
    probs = router.probabilities().detach()[1:].flatten()
    order = torch.sort(-probs, stable=True).indices[: total - units]
    rest = torch.zeros(probs.numel(), dtype=torch.bool)
    rest[order] = True
    mask = torch.cat([torch.ones(1, units, dtype=torch.bool), rest.view(steps - 1, units)])
    return Router.from_mask(mask, router.scheduler)
