"""The zoo part of ``make demo``: a (shape x colour) grid from shapes-unet, scored by the classifier."""

from __future__ import annotations

import time
from pathlib import Path

import torch

import osmos.zoo
from osmos.zoo import data as D
from osmos.zoo.pipeline import save_grid


def run_demo(out_dir: str | Path, num_inference_steps: int = 25, seed: int = 0, scheduler: str = "ddim") -> dict:
    """Generate one image per (shape, colour) pair (rows: shapes, columns: colours), write
    ``<out_dir>/zoo_grid.png``, and return a summary (time, classifier accuracy, the PNG's path)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe = osmos.zoo.load("shapes-unet", scheduler=scheduler)
    clf = osmos.zoo.load("classifier")
    pairs = [(si, ci) for si in range(len(D.SHAPES)) for ci in range(len(D.COLOURS))]
    prompts = [D.prompt_for(D.SHAPES[si], D.COLOURS[ci]) for si, ci in pairs]
    t0 = time.perf_counter()
    images = pipe(prompts, num_inference_steps=num_inference_steps, generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - t0
    pred = clf.predict(images)
    target = torch.tensor(pairs)
    path = out / "zoo_grid.png"
    save_grid(images, path, nrow=len(D.COLOURS), scale=6)
    return {
        "model": pipe.name,
        "images": len(prompts),
        "size": pipe.size,
        "steps": num_inference_steps,
        "scheduler": type(pipe.scheduler).__name__,
        "seconds": round(seconds, 2),
        "shape_acc": float((pred["shape"] == target[:, 0]).float().mean()),
        "colour_acc": float((pred["colour"] == target[:, 1]).float().mean()),
        "grid": str(path),
    }
