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
from osmos.replication.memorization import METHODS, highpass


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


class _FirstStepMagnitude:
    """Per-prompt ||d||^2, d = eps(x_T, states) - eps(x_T, empty) at the first timestep of a
    `num_inference_steps`-step schedule (method "magnitude"), or ||highpass(d)||^2 (method
    "highpass", the detail the prompt adds: `osmos.replication.memorization.highpass`), averaged over
    `num_samples` fresh noise latents per prompt (differentiable in the states)."""

    def __init__(self, pipe, states: Tensor, mask: Tensor | None, num_samples: int, num_inference_steps: int,
                 method: str = "magnitude"):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.denoiser = as_denoiser(pipe)
        sched = self.denoiser.scheduler
        sched.set_timesteps(num_inference_steps)
        self.sched, self.t = sched, sched.timesteps[0]
        self.b, self.num_samples = states.shape[0], num_samples
        self.empty, self.empty_mask = self.denoiser.empty(self.b * num_samples)
        self.mask = None if mask is None else mask.repeat_interleave(num_samples, 0)
        self.device = states.device

    def __call__(self, states: Tensor, generator: torch.Generator | None) -> Tensor:
        n = self.b * self.num_samples
        x = torch.randn((n, *self.denoiser.latent_shape), generator=generator).to(self.device) * self.sched.init_noise_sigma
        x = self.sched.scale_model_input(x, self.t)
        with torch.no_grad():
            eps_u = self.denoiser.eps(x, self.t, self.empty, self.empty_mask)
        eps_c = self.denoiser.eps(x, self.t, states.repeat_interleave(self.num_samples, 0), self.mask)
        d = (eps_c - eps_u).float()
        if self.method == "highpass":
            d = highpass(d)
        return d.flatten(1).pow(2).sum(1).view(self.b, self.num_samples).mean(1)


def first_step_noise_magnitude(pipe, states: Tensor, mask: Tensor | None = None, num_samples: int = 1,
                               num_inference_steps: int = 25, generator: torch.Generator | None = None,
                               method: str = "magnitude") -> Tensor:
    """The quantity `optimize_prompt_embedding` minimises, per prompt: [B] float32 squared
    text-conditional noise magnitude at the first step (method "magnitude") or of its high-pass
    detail (method "highpass"), averaged over `num_samples` noise latents. Measured on prompts
    that are not memorized, it sets that function's `target` (same method)."""
    with torch.no_grad():
        return _FirstStepMagnitude(pipe, states, mask, num_samples, num_inference_steps, method)(states, generator)


def optimize_prompt_embedding(pipe, states: Tensor, mask: Tensor | None = None, steps: int = 10, lr: float = 0.1,
                              target: float | None = None, num_samples: int = 1, num_inference_steps: int = 25,
                              generator: torch.Generator | None = None,
                              method: str = "magnitude") -> tuple[Tensor, list[float]]:
    """Lower the text-conditional noise magnitude of prompt states [B, T, D] (Wen et al.).

    Each step draws `num_samples` pure-noise latents per prompt and minimises the mean over
    prompts of ||eps(x_T, states) - eps(x_T, empty)||^2 at the first timestep of a
    `num_inference_steps`-step schedule with AdamW (method "magnitude", Wen et al.), or of its
    high-pass detail (method "highpass", the quantity osmos's default memorization score measures).
    With a `target`, each prompt stops on its own once its squared magnitude is <= target: from
    then on its states stay as they are (a prompt already below the target, e.g. one that is not
    memorized, is returned unchanged), and the loop ends when every prompt has stopped. The
    model's weights are not changed. Returns (optimised states, detached, and the mean squared
    magnitude over the prompts still being optimised, before each step).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    magnitude = _FirstStepMagnitude(pipe, states, mask, num_samples, num_inference_steps, method)
    b = states.shape[0]
    emb = states.detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([emb], lr=lr)
    active = torch.ones(b, dtype=torch.bool, device=states.device)
    losses: list[float] = []
    for _ in range(steps):
        per_prompt = magnitude(emb, generator)
        if target is not None:
            active &= per_prompt.detach() > target
        losses.append(float(per_prompt.detach()[active].mean()) if active.any() else float(per_prompt.detach().mean()))
        if not active.any():
            break
        (grad,) = torch.autograd.grad((per_prompt * active).sum() / b, emb)
        frozen = emb.detach()[~active].clone()
        emb.grad = grad
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            emb[~active] = frozen  # AdamW's momentum and weight decay would move stopped prompts
    return emb.detach(), losses


__all__ = ["noise_text_embedding", "vocabulary_from_tokenizer", "insert_random_tokens", "optimize_prompt_embedding"]
