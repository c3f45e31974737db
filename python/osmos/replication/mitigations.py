"""Mitigations of training-data replication, without retraining (and one for training).

- `noise_text_embedding`: Gaussian noise on the prompt's token states (Somepalli et al.,
  "Understanding and Mitigating Copying": emb + 0.1 randn for CLIP states).
- `insert_random_tokens`: random words inserted at random positions of the prompt (the same
  paper). Applied to training captions instead, it is their training-time caption randomization.
- `optimize_prompt_embedding`: gradient steps on the prompt states that lower the text-conditional
  noise magnitude (Wen et al.: AdamW, lr 0.1, <= 10 steps), i.e. the memorization score.

Each works on a zoo `ShapesPipeline` and on a diffusers Stable-Diffusion-style pipeline: encode
with `as_denoiser(pipe).encode(prompts)`, edit the states, then `as_denoiser(pipe).generate(...)`
(or, on diffusers, `pipe(prompt_embeds=states)`). Each trades replication for prompt alignment.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from osmos.replication.denoisers import as_denoiser


def noise_text_embedding(states: Tensor, scale: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    """states [B, T, D] + scale * N(0, 1) (a new tensor; the padding positions too, as a diffusers
    pipeline without an attention mask attends to them)."""
    if not isinstance(states, Tensor) or not states.is_floating_point():
        raise TypeError("states must be a float tensor")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
        raise ValueError(f"scale must be a float >= 0, got {scale!r}")
    noise = torch.randn(states.shape, generator=generator, dtype=torch.float32).to(states.device, states.dtype)
    return states + scale * noise


def vocabulary_from_tokenizer(tokenizer, min_length: int = 3) -> list[str]:
    """Whole alphabetic words of a Hugging Face tokenizer's vocabulary (CLIP's '</w>' word ends
    stripped, WordPiece '##' continuations dropped), sorted, for `insert_random_tokens`."""
    words = set()
    for token in tokenizer.get_vocab():
        if token.startswith("##"):
            continue
        word = token.removesuffix("</w>")
        if len(word) >= min_length and word.isascii() and word.isalpha():
            words.add(word.lower())
    return sorted(words)


def insert_random_tokens(prompts: Sequence[str] | str, vocabulary: Sequence[str], n: int = 4,
                         generator: torch.Generator | None = None) -> list[str]:
    """Each prompt with `n` words drawn uniformly from `vocabulary` inserted between its words at
    uniformly random positions (the start and end included)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    vocabulary = list(vocabulary)
    if n and not vocabulary:
        raise ValueError("vocabulary must not be empty")
    out = []
    for prompt in prompts:
        words = prompt.split()
        for _ in range(n):
            word = vocabulary[int(torch.randint(len(vocabulary), (1,), generator=generator))]
            words.insert(int(torch.randint(len(words) + 1, (1,), generator=generator)), word)
        out.append(" ".join(words))
    return out


def optimize_prompt_embedding(pipe, states: Tensor, mask: Tensor | None = None, steps: int = 10, lr: float = 0.1,
                              target: float | None = None, num_samples: int = 1, num_inference_steps: int = 25,
                              generator: torch.Generator | None = None) -> tuple[Tensor, list[float]]:
    """Lower the text-conditional noise magnitude of prompt states [B, T, D] (Wen et al.).

    Each step draws `num_samples` pure-noise latents per prompt and minimises the mean over
    prompts of ||eps(x_T, states) - eps(x_T, empty)||^2 at the first timestep of a
    `num_inference_steps`-step schedule with AdamW.
    Stops early once every prompt's squared magnitude is <= target (when given). The model's
    weights are not changed. Returns (optimised states, detached, and the loss before each step).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    denoiser = as_denoiser(pipe)
    sched = denoiser.scheduler
    sched.set_timesteps(num_inference_steps)
    t = sched.timesteps[0]
    b = states.shape[0]
    n = b * num_samples
    empty, empty_mask = denoiser.empty(n)
    cond_mask = None if mask is None else mask.repeat_interleave(num_samples, 0)
    emb = states.detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([emb], lr=lr)
    losses: list[float] = []
    for _ in range(steps):
        x = torch.randn((n, *denoiser.latent_shape), generator=generator).to(states.device) * sched.init_noise_sigma
        x = sched.scale_model_input(x, t)
        with torch.no_grad():
            eps_u = denoiser.eps(x, t, empty, empty_mask)
        eps_c = denoiser.eps(x, t, emb.repeat_interleave(num_samples, 0), cond_mask)
        per_prompt = (eps_c - eps_u).float().flatten(1).pow(2).sum(1).view(b, num_samples).mean(1)
        losses.append(float(per_prompt.detach().mean()))
        if target is not None and bool((per_prompt <= target).all()):
            break
        (grad,) = torch.autograd.grad(per_prompt.mean(), emb)
        emb.grad = grad
        opt.step()
        opt.zero_grad(set_to_none=True)
    return emb.detach(), losses


__all__ = ["noise_text_embedding", "vocabulary_from_tokenizer", "insert_random_tokens", "optimize_prompt_embedding"]
