"""Text-to-image (and text-to-video) sampling with a zoo denoiser: the Stable-Diffusion-shaped
pipeline of osmos.zoo.

``pipe = osmos.zoo.load("shapes-unet"); images = pipe(["a red circle"], generator=g)`` gives a
float tensor [B, 3, S, S] in [0, 1]. The parts are public so that other osmos tools can work on
them exactly as on a diffusers pipeline: ``pipe.unet`` (a diffusers model), ``pipe.scheduler``
(a diffusers scheduler), ``pipe.encode_prompt`` and ``pipe.denoise``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from osmos.zoo.models import Recipe, build_scheduler, predict_noise
from osmos.zoo.text import TextEncoder, shared_encoder


class ShapesPipeline:
    """Classifier-free-guided sampling of a zoo denoiser: a diffusers ``UNet2DConditionModel`` or
    ``PixArtTransformer2DModel`` (held as ``pipe.unet`` either way, as diffusers pipelines do)."""

    def __init__(self, unet: torch.nn.Module, recipe: Recipe, card: dict | None = None,
                 text_encoder: TextEncoder | None = None, scheduler: str | None = None):
        self.unet = unet.eval()
        self.recipe = recipe
        self.card = card or {}
        self.text_encoder = text_encoder or shared_encoder()
        self.scheduler = build_scheduler(recipe, recipe.default_scheduler if scheduler is None else scheduler)
        self.size = recipe.size
        self.name = recipe.name

    def __repr__(self) -> str:
        return (f"ShapesPipeline({self.name!r}, {type(self.unet).__name__}, {self.size}x{self.size}, "
                f"scheduler={type(self.scheduler).__name__})")

    def sample_shape(self, n: int) -> tuple[int, ...]:
        """The denoiser's sample shape for n prompts: (n, 3, S, S)."""
        return (n, 3, self.size, self.size)

    def set_scheduler(self, kind: str) -> None:
        """Switch sampler: "ddim", "dpm" (DPM-Solver++ 2M) or "ddpm"."""
        self.scheduler = build_scheduler(self.recipe, kind)

    def encode_prompt(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """(states [B, T, 384], attention mask [B, T])."""
        return self.text_encoder(prompts)

    @torch.no_grad()
    def denoise(self, states: Tensor, mask: Tensor, num_inference_steps: int = 25, guidance_scale: float | None = None,
                generator: torch.Generator | None = None, latents: Tensor | None = None) -> Tensor:
        """Sample from encoded prompts. Returns images in [-1, 1], [B, 3, S, S] (video: [B, 3, F, S, S])."""
        guidance = self.recipe.default_guidance if guidance_scale is None else float(guidance_scale)
        shape = self.sample_shape(states.shape[0])
        n = shape[0]
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        device = next(self.unet.parameters()).device
        x = latents.to(device) * self.scheduler.init_noise_sigma
        states, mask = states.to(device), mask.to(device)
        use_cfg = guidance != 1.0
        if use_cfg:
            empty_s, empty_m = self.text_encoder([""])
            states = torch.cat([empty_s.expand(n, -1, -1).to(device), states])
            mask = torch.cat([empty_m.expand(n, -1).to(device), mask])
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            inp = torch.cat([x, x]) if use_cfg else x
            inp = self.scheduler.scale_model_input(inp, t)
            eps = predict_noise(self.unet, inp, t, states, mask)
            if use_cfg:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
            x = self.scheduler.step(eps, t, x, generator=generator).prev_sample
        return x.clamp(-1, 1)

    def __call__(self, prompts: list[str] | str, num_inference_steps: int = 25, guidance_scale: float | None = None,
                 generator: torch.Generator | None = None, size: int | None = None, latents: Tensor | None = None,
                 output_type: str = "pt"):
        """Generate one image per prompt.

        prompts: a string or a non-empty list of strings. num_inference_steps >= 1.
        guidance_scale: classifier-free guidance weight (1 = no guidance; default from the model card).
        size: optional check that the caller expects this model's resolution (it cannot change it).
        output_type: "pt" -> float tensor [B, 3, S, S] in [0, 1]; "pil" -> list of PIL images.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a string or a list of strings")
        if len(prompts) == 0:
            raise ValueError("prompts must not be empty: pass at least one prompt")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
            raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if num_inference_steps > self.recipe.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be <= {self.recipe.num_train_timesteps}, "
                             f"got {num_inference_steps}")
        if guidance_scale is not None and not (float(guidance_scale) >= 0):
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if size is not None and size != self.size:
            raise ValueError(f"size: {self.name} generates {self.size}x{self.size} images, got size={size}")
        if output_type not in ("pt", "pil"):
            raise ValueError(f"output_type must be 'pt' or 'pil', got {output_type!r}")
        states, mask = self.encode_prompt(list(prompts))
        images = (self.denoise(states, mask, num_inference_steps, guidance_scale, generator, latents) + 1) / 2
        return self._postprocess(images, output_type)

    def _postprocess(self, images: Tensor, output_type: str):
        return to_pil(images) if output_type == "pil" else images


class ShapesVideoPipeline(ShapesPipeline):
    """Text-to-video with a diffusers ``UNetMotionModel`` (AnimateDiff-style), held as ``pipe.unet``.

    ``pipe(prompts, num_inference_steps=25, generator=g)`` gives frames [B, F, 3, S, S] in [0, 1];
    ``output_type="pil"`` gives one list of F PIL images per prompt. ``latents`` (and what
    :meth:`denoise` returns) use the model's own layout [B, 3, F, S, S].
    """

    def __init__(self, unet: torch.nn.Module, recipe: Recipe, **kwargs):
        super().__init__(unet, recipe, **kwargs)
        self.num_frames = int(recipe.extra["frames"])

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", frames={self.num_frames})"

    def sample_shape(self, n: int) -> tuple[int, ...]:
        """(n, 3, F, S, S)."""
        return (n, 3, self.num_frames, self.size, self.size)

    def _postprocess(self, images: Tensor, output_type: str):
        frames = images.transpose(1, 2).contiguous()  # [B, F, 3, S, S]
        return [to_pil(clip) for clip in frames] if output_type == "pil" else frames


def to_pil(images: Tensor) -> list:
    """[B,3,H,W] in [0,1] -> list of PIL RGB images."""
    from PIL import Image

    arr = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arr]


def save_grid(images: Tensor, path, nrow: int, scale: int = 4, pad: int = 1) -> None:
    """Write images [B,3,H,W] in [0,1] as a PNG grid, each image enlarged ``scale`` times (nearest)."""
    b, _, h, w = images.shape
    ncol = -(-b // nrow)
    x = torch.nn.functional.interpolate(images.clamp(0, 1), scale_factor=scale, mode="nearest")
    hh, ww = h * scale + pad, w * scale + pad
    canvas = torch.ones(3, ncol * hh + pad, nrow * ww + pad)
    for i in range(b):
        r, c = divmod(i, nrow)
        canvas[:, pad + r * hh : pad + r * hh + h * scale, pad + c * ww : pad + c * ww + w * scale] = x[i]
    to_pil(canvas[None])[0].save(path)
