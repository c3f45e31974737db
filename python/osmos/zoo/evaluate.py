"""Quality of a zoo text-to-image pipeline, measured by the zoo classifier.

``evaluate(pipe)`` generates ``per_pair`` images for every (shape, colour) pair from prompts that
name only the shape and the colour, and reports how often the classifier sees both, per pair
("train" wordings and held-out paraphrases separately), plus a Frechet distance between the
classifier features of all generated images and of real renders at the same size.
"""

from __future__ import annotations

import time

import torch

from osmos.zoo import data as D
from osmos.zoo.classifier import ShapesClassifier, frechet_distance, load_classifier


def real_renders(n: int, size: int, seed: int = 777) -> torch.Tensor:
    """n fresh renders [n,3,size,size], as the models were trained on."""
    g = torch.Generator().manual_seed(seed)
    return D.render(D.sample_attributes(n, g), size)


def pair_prompts(split: str, per_pair: int) -> tuple[list[str], torch.Tensor]:
    """per_pair prompts for every (shape, colour) pair, pair by pair, in the split's wordings,
    and their labels [n, 2] (shape index, colour index)."""
    prompts, labels = [], []
    for si, s in enumerate(D.SHAPES):
        for ci, c in enumerate(D.COLOURS):
            for k in range(per_pair):
                prompts.append(D.prompt_for(s, c, split, variant=k))
                labels.append((si, ci))
    return prompts, torch.tensor(labels)


@torch.no_grad()
def evaluate(pipe, per_pair: int = 8, splits: tuple[str, ...] = ("train", "heldout"), num_inference_steps: int = 25,
             guidance_scale: float | None = None, seed: int = 0, classifier: ShapesClassifier | None = None,
             batch_size: int = 72, keep_images: bool = False) -> dict:
    """Returns ``{split: {"pair_acc": {"red circle": acc, ...}, "min": .., "mean": .., "shape_acc": ..,
    "colour_acc": ..}, "frechet": .., "frechet_real_vs_real": .., "seconds": ..}``."""
    clf = classifier or load_classifier()
    pairs = [(s, c) for s in D.SHAPES for c in D.COLOURS]
    result: dict = {}
    feats, t0 = [], time.time()
    grids = {}
    for split in splits:
        prompts, y = pair_prompts(split, per_pair)
        g = torch.Generator().manual_seed(seed)
        images = torch.cat([pipe(prompts[i : i + batch_size], num_inference_steps=num_inference_steps,
                                 guidance_scale=guidance_scale, generator=g)
                            for i in range(0, len(prompts), batch_size)])
        pred = clf.predict(images)
        feats.append(clf.features(images))
        shape_ok, colour_ok = pred["shape"] == y[:, 0], pred["colour"] == y[:, 1]
        both = (shape_ok & colour_ok).float().view(len(pairs), per_pair).mean(1)
        result[split] = {
            "pair_acc": {f"{c} {s}": float(a) for (s, c), a in zip(pairs, both)},
            "min": float(both.min()), "mean": float(both.mean()),
            "shape_acc": float(shape_ok.float().mean()), "colour_acc": float(colour_ok.float().mean()),
            "pairs_at_90": int((both >= 0.9).sum()), "pairs_at_75": int((both >= 0.75).sum()),
        }
        if keep_images:
            grids[split] = images
    gen = torch.cat(feats)
    real = clf.features(real_renders(len(gen), pipe.size, seed=777))
    real2 = clf.features(real_renders(len(gen), pipe.size, seed=778))
    result["frechet"] = frechet_distance(gen, real)
    result["frechet_real_vs_real"] = frechet_distance(real2, real)
    result["images_per_split"] = len(pairs) * per_pair
    result["num_inference_steps"] = num_inference_steps
    result["guidance_scale"] = pipe.recipe.default_guidance if guidance_scale is None else guidance_scale
    result["seconds"] = round(time.time() - t0, 1)
    if keep_images:
        result["images"] = grids
    return result
