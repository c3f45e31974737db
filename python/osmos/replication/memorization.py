"""Training-free detection of memorized prompts at generation time (Wen et al., ICLR 2024).

A memorized prompt pulls the sample towards one training image from the first denoising steps,
so the text-conditional part of the noise prediction, ||eps(x_t, c) - eps(x_t, empty)||, is much
larger than for a normal prompt. Classifier-free guidance computes both terms anyway, so the
score costs a few UNet calls and needs no reference set.
"""

from __future__ import annotations

import torch
from torch import Tensor

from osmos.replication.denoisers import Denoiser, as_denoiser


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def conditional_noise_norms(denoiser: Denoiser, states: Tensor, mask: Tensor | None, steps: int = 1,
                            num_inference_steps: int = 25, guidance_scale: float | None = None,
                            num_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """||eps(x_t, c) - eps(x_t, empty)||_2 per prompt and step, for the first `steps` steps of
    classifier-free-guided sampling with `num_inference_steps` steps.

    states [B, T, D] (mask [B, T] or None): encoded prompts. Each prompt is sampled from
    `num_samples` starting latents. Returns float32 [B, num_samples, steps] (L2 norm over all
    latent elements).
    """
    _check_positive("steps", steps)
    _check_positive("num_inference_steps", num_inference_steps)
    _check_positive("num_samples", num_samples)
    if steps > num_inference_steps:
        raise ValueError(f"steps must be <= num_inference_steps ({num_inference_steps}), got {steps}")
    guidance = denoiser.default_guidance if guidance_scale is None else float(guidance_scale)
    b = states.shape[0]
    n = b * num_samples
    cond = states.repeat_interleave(num_samples, 0)
    cond_mask = None if mask is None else mask.repeat_interleave(num_samples, 0)
    empty, empty_mask = denoiser.empty(n)
    both = torch.cat([empty.to(cond.dtype), cond])
    both_mask = None if mask is None else torch.cat([empty_mask, cond_mask])
    sched = denoiser.scheduler
    x = torch.randn((n, *denoiser.latent_shape), generator=generator).to(states.device) * sched.init_noise_sigma
    sched.set_timesteps(num_inference_steps)
    norms = []
    with torch.no_grad():
        for t in sched.timesteps[:steps]:
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            eps_u, eps_c = denoiser.eps(inp, t, both, both_mask).chunk(2)
            diff = (eps_c - eps_u).float()
            norms.append(diff.flatten(1).norm(dim=1))
            x = sched.step(eps_u + guidance * diff, t, x).prev_sample
    return torch.stack(norms, dim=1).view(b, num_samples, steps).cpu()


def memorization_score(pipe, prompts: list[str] | str, steps: int = 1, num_inference_steps: int = 25,
                       guidance_scale: float | None = None, num_samples: int = 1,
                       generator: torch.Generator | None = None,
                       embeddings: tuple[Tensor, Tensor | None] | None = None) -> Tensor:
    """Memorization score of each prompt: the text-conditional noise magnitude averaged over the
    first `steps` sampling steps and `num_samples` starting latents. Higher = more likely
    memorized; compare prompts of one model (the scale depends on the model and latent size).

    pipe: a zoo ShapesPipeline or a diffusers Stable-Diffusion-style pipeline.
    embeddings: optional (states, mask) to score instead of encoding `prompts` (e.g. mitigated
    embeddings). Returns float32 [len(prompts)].
    """
    denoiser = as_denoiser(pipe)
    if isinstance(prompts, str):
        prompts = [prompts]
    if embeddings is None:
        if not prompts:
            raise ValueError("prompts must not be empty")
        embeddings = denoiser.encode(prompts)
    states, mask = embeddings
    norms = conditional_noise_norms(denoiser, states, mask, steps, num_inference_steps, guidance_scale,
                                    num_samples, generator)
    return norms.mean(dim=(1, 2))


__all__ = ["conditional_noise_norms", "memorization_score"]
