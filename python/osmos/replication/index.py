"""Descriptor indexes: features of an image set, built in batches with a progress bar, saved
as .npy + JSON and memory-mapped on load (so a reference set larger than memory can be scanned;
osmos.ops.similarity_topk streams it)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from osmos.replication.descriptors import Descriptor
from osmos.replication.images import ImageFolder

FEATURES_FILE = "features.npy"
META_FILE = "index.json"


@dataclass
class EmbeddingIndex:
    """features [N, dim] (float32 or float16; a tensor, array or read-only memmap) of the images
    called `names`, made by the descriptor called `descriptor`."""

    features: np.ndarray | Tensor
    names: list[str]
    descriptor: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def save(self, folder: str | Path, dtype: str = "float32") -> Path:
        """Write features.npy (dtype float32 or float16) and index.json into folder."""
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        feats = self.features.numpy() if isinstance(self.features, Tensor) else np.asarray(self.features)
        np.save(folder / FEATURES_FILE, feats.astype(dtype, copy=False))
        meta = {"names": self.names, "descriptor": self.descriptor, "skipped": self.skipped,
                "dim": int(feats.shape[1]) if feats.ndim == 2 else 0}
        (folder / META_FILE).write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> EmbeddingIndex:
        """Read an index saved by `save`; features are memory-mapped read-only unless mmap=False."""
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        feats = np.load(folder / FEATURES_FILE, mmap_mode="r" if mmap else None)
        if feats.shape[0] != len(meta["names"]):
            raise ValueError(f"{folder}: {feats.shape[0]} feature rows but {len(meta['names'])} names")
        return cls(feats, meta["names"], meta["descriptor"], [tuple(s) for s in meta.get("skipped", [])])


def build_index(images: str | Path | ImageFolder | Tensor, descriptor: Descriptor, batch_size: int = 64,
                image_size: int = 128, progress: bool = True, prefix: str = "image") -> EmbeddingIndex:
    """Describe an image set: a folder (path or ImageFolder; unreadable files skipped and listed
    in `skipped`) or a tensor [N, 3, H, W] in [0, 1] (named prefix[i])."""
    from tqdm.auto import tqdm

    if isinstance(images, Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        starts = range(0, images.shape[0], batch_size)
        batches = ((None, images[b : b + batch_size]) for b in starts)
        total, folder = images.shape[0], None
    else:
        folder = images if isinstance(images, ImageFolder) else ImageFolder(Path(images), size=image_size)
        batches, total = folder.batches(batch_size), len(folder)
    feats, names = [], []
    with tqdm(total=total, desc=f"describing {prefix} images", unit="img", disable=not progress) as bar:
        for batch_names, batch in batches:
            if batch_names is None:
                batch_names = [f"{prefix}[{len(names) + i}]" for i in range(batch.shape[0])]
            feats.append(descriptor(batch))
            names += batch_names
            bar.update(batch.shape[0])
        if folder is not None:
            bar.update(total - bar.n)  # skipped files count as processed
    dim = getattr(descriptor, "dim", 0)
    features = torch.cat(feats) if feats else torch.empty(0, dim)
    return EmbeddingIndex(features.contiguous(), names, descriptor.name, list(folder.skipped) if folder else [])
