"""Replication scan (retrieval-based copy detection, Somepalli et al.): each generated image's
top-1 match in the reference (training) set by descriptor cosine similarity, the distribution
of those similarities, and a grid of the most similar pairs."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from osmos.ops import similarity_topk
from osmos.replication.descriptors import Descriptor
from osmos.replication.images import ImageFolder, read_image
from osmos.replication.index import EmbeddingIndex, build_index


@dataclass
class ReplicationReport:
    """Per generated image: its best reference match and their similarity (cosine in [-1, 1]).

    Summary: mean and 75/90/95th percentiles of the top-1 similarities and the fraction at or
    above `threshold`. `skipped` lists unreadable files (path, reason) of either set.
    """

    generated: list[str]
    matches: list[str]
    match_indices: list[int]
    similarities: list[float]
    threshold: float
    descriptor: str
    n_reference: int
    mean: float
    p75: float
    p90: float
    p95: float
    fraction_above: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    grid: str | None = None

    def worst(self, n: int) -> list[int]:
        """Positions of the n generations most similar to their match, most similar first."""
        order = sorted(range(len(self.similarities)), key=lambda i: (-self.similarities[i], i))
        return order[:n]

    def summary(self) -> str:
        return (
            f"{len(self.generated)} generated vs {self.n_reference} reference images ({self.descriptor}): "
            f"top-1 similarity mean {self.mean:.3f}, p95 {self.p95:.3f}; "
            f"{100 * self.fraction_above:.1f}% >= {self.threshold} ; {len(self.skipped)} unreadable files skipped"
        )

    def save(self, folder: str | Path) -> Path:
        """report.json (everything) and matches.csv (one row per generation) into folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.json").write_text(json.dumps(asdict(self), indent=1))
        with open(folder / "matches.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["generated", "match", "match_index", "similarity", "above_threshold"])
            for g, m, i, s in zip(self.generated, self.matches, self.match_indices, self.similarities):
                w.writerow([g, m, i, f"{s:.6f}", int(s >= self.threshold)])
        return folder


def _image_source(images, image_size: int):
    """(what build_index takes, a loader name/position -> [3, s, s] image for the grid)."""
    if isinstance(images, Tensor):
        return images, lambda name, pos: images[pos]
    if isinstance(images, EmbeddingIndex):
        return images, lambda name, pos: read_image(name, image_size)
    folder = images if isinstance(images, ImageFolder) else ImageFolder(Path(images), size=image_size)
    return folder, lambda name, pos: read_image(name, image_size)


def pair_grid(pairs: list[tuple[Tensor | None, Tensor | None, str]], path: str | Path, tile: int = 128) -> Path:
    """PNG with one row per (generated, match, caption); a missing image is drawn grey."""
    from PIL import Image, ImageDraw

    caption_h = 16
    sheet = Image.new("RGB", (2 * tile, max(1, len(pairs)) * (tile + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (gen, ref, caption) in enumerate(pairs):
        y = row * (tile + caption_h)
        for col, img in enumerate((gen, ref)):
            if img is None:
                cell = Image.new("RGB", (tile, tile), (128, 128, 128))
            else:
                arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                cell = Image.fromarray(arr).resize((tile, tile))
            sheet.paste(cell, (col * tile, y))
        draw.text((4, y + tile + 2), caption, fill="black")
    sheet.save(path)
    return Path(path)


def scan(generated, reference, descriptor: Descriptor, threshold: float = 0.5, out: str | Path | None = None,
         batch_size: int = 64, image_size: int = 128, worst: int = 8, progress: bool = True) -> ReplicationReport:
    """Scan generated images against a reference set for replication.

    Args:
        generated: folder of images, ImageFolder, or tensor [B, 3, H, W] in [0, 1].
        reference: the same kinds, or an EmbeddingIndex (e.g. EmbeddingIndex.load(dir), memory-mapped).
        descriptor: the Descriptor to embed both sets with (the index's, when reference is one).
        threshold: similarity at or above which a generation counts as a replica. Depends on
            the descriptor and preprocessing (0.5 is SSCD's at 224 px; calibrate the pixel
            baseline on known pairs).
        out: when given, report.json, matches.csv and worst_pairs.png are written there.
        image_size: folder images are resized to image_size x image_size (mixed sizes are fine).
        worst: rows in the grid of most similar pairs.
    """
    gen_source, gen_image = _image_source(generated, image_size)
    ref_source, ref_image = _image_source(reference, image_size)
    gen = build_index(gen_source, descriptor, batch_size, image_size, progress, prefix="generated")
    if isinstance(ref_source, EmbeddingIndex):
        ref = ref_source
        if ref.descriptor != descriptor.name:
            raise ValueError(f"reference index was built with descriptor {ref.descriptor!r}, not {descriptor.name!r}")
    else:
        ref = build_index(ref_source, descriptor, batch_size, image_size, progress, prefix="reference")
    skipped = list(gen.skipped) + list(ref.skipped)
    for what, index, source in (("generated", gen, generated), ("reference", ref, reference)):
        if len(index) == 0:
            where = f" in {source}" if isinstance(source, (str, Path)) else ""
            raise ValueError(f"no readable {what} images{where} ({len(index.skipped)} skipped)")
    scores, indices = similarity_topk(gen.features.float(), ref.features, 1)
    sims = scores[:, 0].double().numpy()
    idx = indices[:, 0].tolist()
    p75, p90, p95 = (float(np.percentile(sims, p)) for p in (75, 90, 95))
    report = ReplicationReport(
        generated=gen.names, matches=[ref.names[i] for i in idx], match_indices=idx,
        similarities=[float(s) for s in sims], threshold=float(threshold), descriptor=descriptor.name,
        n_reference=len(ref), mean=float(sims.mean()), p75=p75, p90=p90, p95=p95,
        fraction_above=float((sims >= threshold).mean()), skipped=skipped,
    )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        pairs = []
        for pos in report.worst(worst):
            pairs.append((_try(gen_image, report.generated[pos], pos), _try(ref_image, report.matches[pos], idx[pos]),
                          f"{report.similarities[pos]:.3f}  #{pos} -> #{idx[pos]}"))
        report.grid = str(pair_grid(pairs, out / "worst_pairs.png"))
        report.save(out)
    return report


def _try(load, name: str, pos: int) -> Tensor | None:
    try:
        return load(name, pos)
    except Exception:  # a reference image that moved since its index was built
        return None


__all__ = ["ReplicationReport", "scan", "pair_grid"]
