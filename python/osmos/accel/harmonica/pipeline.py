"""HarmoniCa on a text-to-image pipeline (the zoo's ``ShapesPipeline`` or anything shaped like it).

`train_pipeline_router(pipe, num_steps, beta, prompts)` trains a router for ``pipe.unet`` sampled by
``pipe.scheduler`` with classifier-free guidance, exactly as ``pipe`` samples (one transformer call
per step on the stacked unconditional + conditional batch). `budget_router` turns a trained router
into one that computes a given fraction of the unit evaluations (its most probable ones, within
an optional bound on consecutive reuses), for comparisons against fixed schedules at the same
compute (defined in `osmos.accel.harmonica.router`, re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from osmos.accel.harmonica.router import Router, budget_router
from osmos.accel.harmonica.train import TrainRecord, train_router

__all__ = ["budget_router", "guided_denoiser", "prompt_sampler", "train_pipeline_router"]


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
    (kwargs: iterations, lr, lambda_mode, refresh_every, iepo_warmup, threshold, error, init,
    max_reuse_run, granularity, select_batches, seed, progress; the calibration batches of
    select_batches are drawn from `prompts` like the training batches);
    "l2c": the Learning-to-Cache-style baseline `train_l2c_router` (same kwargs, no lambda or
    selection ones)."""
    from osmos.accel.harmonica.l2c import train_l2c_router

    trainers = {"harmonica": train_router, "l2c": train_l2c_router}
    if method not in trainers:
        raise ValueError(f"method must be 'harmonica' or 'l2c', got {method!r}")
    return trainers[method](pipe.unet, pipe.scheduler, num_steps=num_steps,
                            sample_batch=prompt_sampler(pipe, prompts, batch_size),
                            denoise=guided_denoiser(pipe, guidance_scale), beta=beta, **kwargs)
