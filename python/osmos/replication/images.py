"""Folders of images as [B, 3, H, W] float tensors in [0, 1]: every image resized to one size,
unreadable files skipped with a warning and recorded."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def list_images(folder: str | Path) -> list[Path]:
    """Image files under folder (recursively), in sorted order."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"not a folder: {folder}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: str | Path, size: int) -> Tensor:
    """One image as [3, size, size] float32 in [0, 1] (RGB; resized with bicubic filtering)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@dataclass
class ImageFolder:
    """The readable images of a folder, loaded lazily in batches at one size."""

    root: Path
    size: int = 128
    paths: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __post_init__(self):
        self.root = Path(self.root)
        if not self.paths:
            self.paths = list_images(self.root)

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, batch_size: int) -> Iterator[tuple[list[str], Tensor]]:
        """(names, images [b, 3, size, size]) for every readable image. Unreadable ones are
        skipped with a warning, appended to `skipped`, and dropped from `paths` afterwards."""
        good, names, images = [], [], []
        for path in self.paths:
            try:
                images.append(read_image(path, self.size))
            except Exception as exc:  # PIL raises many types for corrupt files
                reason = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"skipping unreadable image {path}: {reason}", stacklevel=2)
                self.skipped.append((str(path), reason))
                continue
            good.append(path)
            names.append(str(path))
            if len(images) == batch_size:
                yield names, torch.stack(images)
                names, images = [], []
        if images:
            yield names, torch.stack(images)
        self.paths = good
