"""Tiny random diffusers UNets shaped like SD 1.5, SD 2.1 and SDXL (small channels, same module
structure), and a minimal pipe for train_spm."""

from __future__ import annotations

from dataclasses import dataclass

import torch

TEXT_DIM = {"sd15": 32, "sd21": 48, "sdxl": 64}


def tiny_unet(kind: str, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    common = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=8,
                  cross_attention_dim=TEXT_DIM[kind])
    if kind == "sd15":  # 1x1 conv proj_in / proj_out, attention heads of 8 channels
        cfg = dict(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8)
    elif kind == "sd21":  # linear projections, per-block head dims
        cfg = dict(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
                   use_linear_projection=True)
    elif kind == "sdxl":  # text-time added conditioning, 2 transformer layers in the deeper block
        cfg = dict(block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                   use_linear_projection=True, transformer_layers_per_block=(1, 2),
                   addition_embed_type="text_time", addition_time_embed_dim=4,
                   projection_class_embeddings_input_dim=6 * 4 + 32)
    else:
        raise ValueError(kind)
    return UNet2DConditionModel(**common, **cfg).eval()


def added_cond(kind: str, batch: int) -> dict:
    if kind != "sdxl":
        return {}
    return {"text_embeds": torch.randn(batch, 32), "time_ids": torch.rand(batch, 6)}


def unet_inputs(kind: str, batch: int = 2, tokens: int = 5):
    return (torch.randn(batch, 4, 8, 8), torch.tensor(10), torch.randn(batch, tokens, TEXT_DIM[kind]),
            added_cond(kind, batch))


def run_unet(unet, inputs):
    latents, t, text, added = inputs
    kwargs = {"added_cond_kwargs": added} if added else {}
    return unet(latents, t, encoder_hidden_states=text, **kwargs).sample


class WordEncoder:
    """A deterministic toy text encoder: each word gets a fixed random vector; prompts are padded
    to `length` with a shared padding vector. Returns [N, length, dim]."""

    def __init__(self, dim: int, length: int = 6, seed: int = 0):
        self.dim, self.length = dim, length
        self.g = torch.Generator().manual_seed(seed)
        self.words: dict[str, torch.Tensor] = {}
        self.pad = torch.randn(dim, generator=self.g)

    def word(self, w: str) -> torch.Tensor:
        if w not in self.words:
            self.words[w] = torch.randn(self.dim, generator=self.g)
        return self.words[w]

    def ids(self, w: str) -> int:
        self.word(w)
        return list(self.words).index(w) + 1

    def __call__(self, prompts):
        out = torch.empty(len(prompts), self.length, self.dim)
        for i, p in enumerate(prompts):
            words = p.split()[: self.length]
            out[i] = self.pad
            for j, w in enumerate(words):
                out[i, j] = self.word(w)
        return out


@dataclass
class TinyPipe:
    unet: object
    scheduler: object
    encoder: WordEncoder
    kind: str
    latent_shape: tuple = (4, 8, 8)

    def encode_prompt(self, prompts):
        states = self.encoder(prompts)
        if self.kind == "sdxl":
            g = torch.Generator().manual_seed(1)
            return states, {"text_embeds": states.mean(1)[:, :32].contiguous(), "time_ids": torch.rand(1, 6, generator=g).expand(len(prompts), 6)}
        return states


def tiny_pipe(kind: str = "sd15") -> TinyPipe:
    from diffusers import DDIMScheduler

    return TinyPipe(tiny_unet(kind), DDIMScheduler(num_train_timesteps=100), WordEncoder(TEXT_DIM[kind]), kind)


def randomized(spm, seed: int):
    """`spm` with its up vectors drawn from N(0, 1) (seeded): an SPM that changes the output
    (a fresh one starts at u = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for u in spm.up:
            u.copy_(torch.randn(u.shape, generator=g))
    return spm
