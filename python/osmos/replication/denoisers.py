"""One small interface over the text-to-image pipelines the replication tools work on.

`as_denoiser(pipe)` wraps either a zoo `ShapesPipeline` or a diffusers pipeline with a
conditional UNet (Stable Diffusion style: `pipe.unet`, `pipe.scheduler`, `pipe.encode_prompt`),
so the memorization score and the mitigations are written once:

- `encode(prompts)` -> (states [B, T, D], mask [B, T] or None)
- `empty(n)` -> the unconditional (empty prompt) states and mask, batch n
- `eps(x, t, states, mask)` -> the noise prediction for latents x [B, C, H, W] at timestep t
- `latent_shape` (C, H, W), `scheduler` (a diffusers scheduler), `default_guidance`
- `generate(states, mask, ...)` -> images [B, 3, H, W] in [0, 1] from (possibly edited) states
"""

from __future__ import annotations

import torch
from torch import Tensor


class Denoiser:
    latent_shape: tuple[int, int, int]
    default_guidance: float

    def __init__(self, pipe):
        self.pipe = pipe

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def device(self) -> torch.device:
        return next(self.pipe.unet.parameters()).device


class ZooDenoiser(Denoiser):
    """Adapter for `osmos.zoo.ShapesPipeline`."""

    def __init__(self, pipe):
        super().__init__(pipe)
        self.latent_shape = (3, pipe.size, pipe.size)
        self.default_guidance = float(pipe.recipe.default_guidance)

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        states, mask = self.pipe.encode_prompt(list(prompts))
        return states.to(self.device), mask.to(self.device)

    def empty(self, n: int) -> tuple[Tensor, Tensor]:
        states, mask = self.pipe.text_encoder([""])
        return states.expand(n, -1, -1).to(self.device), mask.expand(n, -1).to(self.device)

    def eps(self, x: Tensor, t, states: Tensor, mask: Tensor | None) -> Tensor:
        from osmos.zoo.models import predict_noise

        t = torch.as_tensor(t, device=x.device)
        return predict_noise(self.pipe.unet, x, t, states, mask)

    def generate(self, states: Tensor, mask: Tensor | None, num_inference_steps: int = 25,
                 guidance_scale: float | None = None, generator: torch.Generator | None = None) -> Tensor:
        images = self.pipe.denoise(states, mask, num_inference_steps, guidance_scale, generator)
        return (images + 1) / 2


class DiffusersDenoiser(Denoiser):
    """Adapter for a diffusers pipeline with `unet` (UNet2DConditionModel), `scheduler` and
    `encode_prompt(prompt, device, num_images_per_prompt, do_classifier_free_guidance)` (Stable
    Diffusion 1.x / 2.x). Latents are the UNet's input; there is no attention mask."""

    def __init__(self, pipe):
        super().__init__(pipe)
        cfg = pipe.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        self.latent_shape = (cfg.in_channels, size, size)
        self.default_guidance = 7.5

    def encode(self, prompts: list[str]) -> tuple[Tensor, None]:
        states = self.pipe.encode_prompt(list(prompts), self.device, 1, False)[0]
        return states, None

    def empty(self, n: int) -> tuple[Tensor, None]:
        return self.encode([""])[0].expand(n, -1, -1), None

    def eps(self, x: Tensor, t, states: Tensor, mask: Tensor | None) -> Tensor:
        return self.pipe.unet(x, t, encoder_hidden_states=states).sample

    def generate(self, states: Tensor, mask: Tensor | None, num_inference_steps: int = 50,
                 guidance_scale: float | None = None, generator: torch.Generator | None = None) -> Tensor:
        guidance = self.default_guidance if guidance_scale is None else guidance_scale
        out = self.pipe(prompt_embeds=states, negative_prompt_embeds=self.empty(states.shape[0])[0],
                        num_inference_steps=num_inference_steps, guidance_scale=guidance, generator=generator,
                        output_type="pt")
        return out.images


def as_denoiser(pipe) -> Denoiser:
    """The adapter for `pipe` (returned unchanged when it already is one)."""
    if isinstance(pipe, Denoiser):
        return pipe
    if hasattr(pipe, "denoise") and hasattr(pipe, "recipe"):
        return ZooDenoiser(pipe)
    if all(hasattr(pipe, a) for a in ("unet", "scheduler", "encode_prompt")):
        return DiffusersDenoiser(pipe)
    raise TypeError(f"pipe must be an osmos.zoo ShapesPipeline or a diffusers pipeline with unet, scheduler and "
                    f"encode_prompt, got {type(pipe).__name__}")


def load_pipeline(spec: str, base: str = "shapes-unet", device: str = "cpu"):
    """A pipeline from a command-line spec, offline:

    - the name of a shipped zoo model (`osmos.zoo.available()`, e.g. "shapes-memorized");
    - a .safetensors file of zoo-model weights: its architecture comes from the zoo-format JSON
      beside it (`<name>.json` with a "recipe"), else from the shipped model `base`;
    - a folder holding a saved diffusers pipeline (`save_pretrained`), e.g. Stable Diffusion.
    """
    from pathlib import Path

    import osmos.zoo

    if spec in osmos.zoo.available():
        return osmos.zoo.load(spec, device=device)
    path = Path(spec)
    if path.is_dir():
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True).to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    if path.suffix == ".safetensors" and path.is_file():
        import json

        from safetensors.torch import load_file

        from osmos.zoo.models import Recipe, build_model
        from osmos.zoo.pipeline import ShapesPipeline

        meta_path = path.with_suffix(".json")
        if meta_path.is_file() and "recipe" in json.loads(meta_path.read_text()):
            recipe = Recipe(**json.loads(meta_path.read_text())["recipe"])
        else:
            recipe = osmos.zoo.load(base).recipe
        model = build_model(recipe)
        model.load_state_dict(load_file(str(path)))
        return ShapesPipeline(model.to(device), recipe, card={"name": path.stem})
    raise ValueError(f"model must be a zoo model name ({', '.join(osmos.zoo.available())}), a .safetensors file "
                     f"or a diffusers pipeline folder, got {spec!r}")


__all__ = ["Denoiser", "ZooDenoiser", "DiffusersDenoiser", "as_denoiser", "load_pipeline"]
