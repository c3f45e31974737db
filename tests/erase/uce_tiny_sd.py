"""Tiny random Stable Diffusion pieces (no downloads): a character-level CLIP tokenizer, CLIP
text encoders and UNet2DConditionModel configs shaped like SD 1.5, SD 2.1 and SDXL."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

MAX_LENGTH = 12
TEXT_DIM = 32


def clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in string.ascii_lowercase:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_LENGTH, pad_token="<|endoftext|>"
    )


def clip_text_encoder(tokenizer, seed: int, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=TEXT_DIM, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=MAX_LENGTH, projection_dim=TEXT_DIM,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    return model.eval()


def unet(kind: str, seed: int = 0):
    """A tiny UNet2DConditionModel shaped like `kind` in {"sd15", "sd21", "sdxl"}."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    common = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=4,
                  block_out_channels=(8, 16))
    if kind == "sd15":
        model = UNet2DConditionModel(
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_DIM, attention_head_dim=4, **common)
    elif kind == "sd21":
        model = UNet2DConditionModel(
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_DIM, attention_head_dim=(2, 4), use_linear_projection=True, **common)
    elif kind == "sdxl":
        model = UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + TEXT_DIM, cross_attention_dim=2 * TEXT_DIM, **common)
    else:
        raise ValueError(kind)
    return model.eval()


def denoise_once(model, states: torch.Tensor) -> torch.Tensor:
    """One UNet call on fixed noise with the given prompt states [B, T, D]."""
    gen = torch.Generator().manual_seed(1)
    batch = states.shape[0]
    sample = torch.randn(batch, 4, 8, 8, generator=gen)
    extra = {}
    if model.config.addition_embed_type == "text_time":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, TEXT_DIM, generator=gen),
                                      "time_ids": torch.randn(batch, 6, generator=gen)}
    with torch.no_grad():
        return model(sample, 10, encoder_hidden_states=states.to(torch.float32), **extra).sample
