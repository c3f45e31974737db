"""Loading the model an erasure works on: a zoo model by name ("shapes-unet") or a diffusers
Stable Diffusion 1.x / 2.x / XL pipeline folder on disk, seen through one interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from osmos.erase.text_encoding import TextEncoding


@dataclass
class DiffusersSPMPipe:
    """A Stable Diffusion 1.x / 2.x pipeline as ``train_spm`` sees it (CLIP states, all 77
    positions attended, DDIM sampling of the latents)."""

    unet: nn.Module
    scheduler: object
    tokenizer: object
    text_encoder: nn.Module
    latent_shape: tuple[int, int, int]

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(tokens.input_ids.to(device))[0]


@dataclass
class ErasureModel:
    """What the erasure commands need of a model.

    name: the zoo name or the folder. pipe: the loaded pipeline. unet: its denoiser.
    encoding: its text encoder for UCE / RECE. zoo: True for an osmos.zoo model (images can be
    generated and scored by the zoo classifier).
    """

    name: str
    pipe: object
    unet: nn.Module
    encoding: TextEncoding
    zoo: bool

    def spm_pipe(self):
        """The pipe for ``train_spm``; ValueError for pipelines it does not cover (SDXL)."""
        if self.zoo:
            from osmos.erase.zoo import SPMTrainingPipe

            return SPMTrainingPipe.of(self.pipe)
        if getattr(self.pipe, "text_encoder_2", None) is not None:
            raise ValueError("`osmos erase spm` covers zoo models and SD 1.x / 2.x pipelines; for SDXL call "
                             "osmos.erase.spm.train_spm with an encode_prompt that returns its added conditioning")
        from diffusers import DDIMScheduler

        cfg = self.unet.config
        return DiffusersSPMPipe(self.unet, DDIMScheduler.from_config(self.pipe.scheduler.config), self.pipe.tokenizer,
                                self.pipe.text_encoder, (cfg.in_channels, cfg.sample_size, cfg.sample_size))


def load_model(spec: str, device: str = "cpu") -> ErasureModel:
    """A zoo model by name (when no folder of that name exists) or a diffusers pipeline folder."""
    import osmos.zoo

    if not Path(spec).exists() and spec in osmos.zoo.available() and spec != "classifier":
        from osmos.erase.zoo import zoo_text_encoding

        pipe = osmos.zoo.load(spec, device=device)
        return ErasureModel(spec, pipe, pipe.unet, zoo_text_encoding(pipe), zoo=True)
    if not Path(spec).is_dir():
        raise ValueError(f"--model {spec!r} is neither a zoo model ({', '.join(osmos.zoo.available())}) "
                         "nor a diffusers pipeline folder")
    from diffusers import DiffusionPipeline

    from osmos.erase.text_encoding import pipeline_text_encoding

    pipe = DiffusionPipeline.from_pretrained(spec, local_files_only=True).to(device)
    return ErasureModel(str(spec), pipe, pipe.unet, pipeline_text_encoding(pipe), zoo=False)
