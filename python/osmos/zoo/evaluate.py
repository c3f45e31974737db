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


def pair_prompts(split: str, per_pair: int, suffix: str = "") -> tuple[list[str], torch.Tensor]:
    """per_pair prompts for every (shape, colour) pair, pair by pair, in the split's wordings
    (each followed by ``suffix``, e.g. " on a white background"), and their labels [n, 2]
    (shape index, colour index)."""
    prompts, labels = [], []
    for si, s in enumerate(D.SHAPES):
        for ci, c in enumerate(D.COLOURS):
            for k in range(per_pair):
                prompts.append(D.prompt_for(s, c, split, variant=k) + suffix)
                labels.append((si, ci))
    return prompts, torch.tensor(labels)


@torch.no_grad()
def evaluate(pipe, per_pair: int = 8, splits: tuple[str, ...] = ("train", "heldout"), num_inference_steps: int = 25,
             guidance_scale: float | None = None, seed: int = 0, classifier: ShapesClassifier | None = None,
             batch_size: int = 72, keep_images: bool = False, prompt_suffix: str = "") -> dict:
    """Returns ``{split: {"pair_acc": {"red circle": acc, ...}, "min": .., "mean": .., "shape_acc": ..,
    "colour_acc": .., "background_share": {"black": .., "gray": .., "white": ..}}, "frechet": ..,
    "frechet_real_vs_real": .., "seconds": ..}``. ``prompt_suffix`` is appended to every prompt."""
    clf = classifier or load_classifier()
    pairs = [(s, c) for s in D.SHAPES for c in D.COLOURS]
    result: dict = {}
    feats, t0 = [], time.time()
    grids = {}
    for split in splits:
        prompts, y = pair_prompts(split, per_pair, prompt_suffix)
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
            "background_share": {b: float((pred["background"] == i).float().mean())
                                 for i, b in enumerate(D.BACKGROUNDS)},
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


def background_colour(images: torch.Tensor) -> torch.Tensor:
    """Per-image background colour estimate: the per-channel median of the border pixels.
    images [..., 3, H, W] -> [..., 3]."""
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]], dim=-1)
    return border.median(dim=-1).values


def nearest_similarity(images: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every image [B,3,H,W], the most similar reference image [K,3,H,W] by centred cosine on
    pixels (each image minus its mean pixel value: 1 = same picture up to brightness).
    Returns (similarity [B], index into reference [B])."""
    def unit(x):
        x = x.flatten(1)
        x = x - x.mean(1, keepdim=True)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)

    sim = unit(images) @ unit(reference).T
    return sim.max(dim=1)


def centroid_track(frames: torch.Tensor) -> torch.Tensor:
    """Where the object is in every frame: the centroid (x, y) in pixels of how far each pixel is
    from the frame's background colour. frames [B,F,3,H,W] in [0,1] -> [B,F,2]."""
    h, w = frames.shape[-2:]
    weight = (frames - background_colour(frames)[..., None, None]).norm(dim=2)  # [B,F,H,W]
    weight = (weight - 0.1).clamp_min(0)  # ignore faint noise
    total = weight.sum((-1, -2)).clamp_min(1e-6)
    ys, xs = torch.arange(h, dtype=frames.dtype), torch.arange(w, dtype=frames.dtype)
    cx = (weight.sum(-2) * xs).sum(-1) / total
    cy = (weight.sum(-1) * ys).sum(-1) / total
    return torch.stack([cx, cy], dim=-1)


def motion_stats(frames: torch.Tensor) -> dict:
    """Centroid displacement of clips [B,F,3,H,W]: first-to-last distance and path length (pixels),
    medians over the clips, the fraction of clips whose object moves at least one pixel, and how
    much the background flickers (per clip, the standard deviation over frames of the background
    colour, averaged over channels; median over clips; 0 for real clips)."""
    track = centroid_track(frames)
    net = (track[:, -1] - track[:, 0]).norm(dim=-1)
    path = (track[:, 1:] - track[:, :-1]).norm(dim=-1).sum(-1)
    flicker = background_colour(frames).std(dim=1).mean(-1)
    return {"net_displacement_px": float(net.median()), "path_length_px": float(path.median()),
            "moving_fraction": float((net >= 1.0).float().mean()), "background_flicker": float(flicker.median())}


@torch.no_grad()
def evaluate_video(pipe, per_pair: int = 1, num_inference_steps: int = 25, guidance_scale: float | None = None,
                   seed: int = 0, classifier: ShapesClassifier | None = None, batch_size: int = 12,
                   keep_frames: bool = False) -> dict:
    """Quality of a text-to-video pipeline (frames [B,F,3,S,S]) on the (shape, colour) pair prompts:
    the classifier's shape / colour accuracy over all frames, how often a clip keeps one shape
    prediction in every frame, and the centroid motion, next to the same numbers for real clips
    (:func:`osmos.zoo.data.render_video`)."""
    clf = classifier or load_classifier()
    prompts, y = pair_prompts("train", per_pair)
    t0 = time.time()
    g = torch.Generator().manual_seed(seed)
    clips = torch.cat([pipe(prompts[i : i + batch_size], num_inference_steps=num_inference_steps,
                            guidance_scale=guidance_scale, generator=g)
                       for i in range(0, len(prompts), batch_size)])
    real = D.render_video(D.sample_attributes(len(prompts), torch.Generator().manual_seed(777)), clips.shape[1],
                          clips.shape[-1], generator=torch.Generator().manual_seed(778))

    def frame_scores(x: torch.Tensor, labels: torch.Tensor | None) -> dict:
        b, f = x.shape[:2]
        pred = clf.predict(x.flatten(0, 1))
        shape = pred["shape"].view(b, f)
        out = {"same_shape_all_frames": float((shape == shape[:, :1]).all(1).float().mean()), **motion_stats(x)}
        if labels is not None:
            out["shape_acc"] = float((shape == labels[:, :1]).float().mean())
            out["colour_acc"] = float((pred["colour"].view(b, f) == labels[:, 1:]).float().mean())
            out["pair_acc"] = float(((shape == labels[:, :1]) & (pred["colour"].view(b, f) == labels[:, 1:]))
                                    .float().mean())
        return out

    result = {"generated": frame_scores(clips, y), "real": frame_scores(real, None), "clips": len(prompts),
              "frames": clips.shape[1], "num_inference_steps": num_inference_steps,
              "guidance_scale": pipe.recipe.default_guidance if guidance_scale is None else guidance_scale,
              "seconds": round(time.time() - t0, 1)}
    if keep_frames:
        result["frames_tensor"] = clips
    return result


@torch.no_grad()
def evaluate_memorization(pipe, captions: list[str], references: torch.Tensor, other_prompts: list[str],
                          num_inference_steps: int = 25, seed: int = 0, threshold: float = 0.9) -> dict:
    """Does ``pipe`` reproduce its memorized images [K,3,H,W] (in [0,1]) for their captions, and not
    for other prompts? For both prompt sets: the nearest-training-image similarity
    (:func:`nearest_similarity`) of one generation per prompt (median, min / max, fraction above
    ``threshold``), and for the memorized captions how often the nearest image is the caption's own."""
    out = {}
    for name, prompts in (("memorized", captions), ("other", other_prompts)):
        images = pipe(prompts, num_inference_steps=num_inference_steps, generator=torch.Generator().manual_seed(seed))
        sim, idx = nearest_similarity(images, references)
        out[name] = {"n": len(prompts), "median_sim": float(sim.median()), "min_sim": float(sim.min()),
                     "max_sim": float(sim.max()), f"frac_above_{threshold}": float((sim > threshold).float().mean())}
        if name == "memorized":
            out[name]["own_image_is_nearest"] = float((idx == torch.arange(len(prompts))).float().mean())
        out[f"{name}_images"] = images
    return out
