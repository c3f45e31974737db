"""Procedural images for the replication tests."""

import numpy as np
import torch
import torch.nn.functional as F


def smooth_images(n: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    """[n, 3, size, size] in [0, 1]: random 6x6 colour fields upsampled (distinct, natural-ish)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def save_png(img: torch.Tensor, path, size: tuple[int, int] | None = None) -> None:
    from PIL import Image

    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(arr)
    if size is not None:
        pil = pil.resize(size, Image.Resampling.BICUBIC)
    pil.save(path)
