"""The parts of ``make demo`` (osmos.tour) that run on the zoo's trained models:

* :func:`run_demo`              shapes-unet draws every (shape, colour) pair; the classifier scores it
* :func:`run_erase_demo`        a closed-form RECE (or UCE) edit erases a concept from shapes-unet
* :func:`run_replication_demo`  shapes-memorized's generations scanned against its training images,
                                and its prompts scored by the reference-free memorization score

Each returns a summary dict (numbers and the paths of the PNGs it wrote).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

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


def _erase_pairs(kind: str, value: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(shape, colour) index pairs naming the concept `value` of `kind` with every value of the
    other kind, and 4 unrelated pairs (other values of `kind`, each with a different partner)."""
    other = "colour" if kind == "shape" else "shape"
    mine = D.CONCEPTS[kind].index(value)

    def pair(k: int, o: int) -> tuple[int, int]:
        return (k, o) if kind == "shape" else (o, k)

    named = [pair(mine, o) for o in range(len(D.CONCEPTS[other]))]
    rest = [k for k in range(len(D.CONCEPTS[kind])) if k != mine][:4]
    return named, [pair(k, i % len(D.CONCEPTS[other])) for i, k in enumerate(rest)]


def _pair_accuracy(clf, images: Tensor, pairs: Sequence[tuple[int, int]], per_pair: int) -> float:
    """Fraction of images (pair-major, `per_pair` each) classified as their (shape, colour) pair."""
    want = torch.tensor(list(pairs)).repeat_interleave(per_pair, 0)
    pred = clf.predict(images)
    return float(((pred["shape"] == want[:, 0]) & (pred["colour"] == want[:, 1])).float().mean())


def run_erase_demo(out_dir: str | Path, concept: str = "red", seeds: Sequence[int] = (0, 1, 2),
                   num_inference_steps: int = 15, method: str = "rece") -> dict:
    """Erase `concept` (a shape or colour of the shapes world) from shapes-unet in closed form.

    ``method="uce"``: the edit maps the concept's training wordings to the empty prompt on every
    cross-attention key and value projection and preserves the other values of its kind;
    ``"rece"`` (default) adds two RECE epochs, each erasing an embedding that still regenerates the
    concept in the edited model (UCE alone leaves the concept in 0.58 (circle) and 0.25 (red) of its images:
    benchmarks/RESULTS.md, "Concept erasure on the embedded model"). The same prompts and starting
    latents go through the model before and after: the prompts naming the concept with every value
    of the other kind, and 4 unrelated (shape, colour) prompts, one image per (prompt, seed).
    Writes ``<out_dir>/erase_<concept>.png`` (per seed: a row before, a row after; the concept's
    prompts left, the unrelated ones right) and returns the classifier's target rate
    (fraction of the concept's images in which it sees the concept) and (shape, colour) accuracy on
    the unrelated prompts, before and after, the edit time, and whether undoing the edit restored
    the weights bitwise.
    """
    from osmos.erase.closed_form import rece_edit, uce_edit
    from osmos.erase.zoo import concept_of, concept_rate, generate, training_wordings, zoo_text_encoding

    if method not in ("uce", "rece"):
        raise ValueError(f"method must be 'uce' or 'rece', got {method!r}")
    kind, value = concept_of(concept)
    if kind not in ("shape", "colour"):
        raise ValueError(f"the erase demo takes a shape or a colour, got {concept!r} ({kind})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe, clf = osmos.zoo.load("shapes-unet"), osmos.zoo.load("classifier")
    named, unrelated = _erase_pairs(kind, value)
    prompts = [D.prompt_for(D.SHAPES[s], D.COLOURS[c]) for s, c in named + unrelated]
    n_seeds, n_named = len(seeds), len(named) * len(seeds)

    def sample() -> Tensor:
        return generate(pipe, prompts, seeds, num_inference_steps=num_inference_steps)

    def score(images: Tensor) -> tuple[float, float]:
        return (concept_rate(images[:n_named], value, clf),
                _pair_accuracy(clf, images[n_named:], unrelated, n_seeds))

    before = sample()
    preserve = [w for v in D.CONCEPTS[kind] if v != value for w in training_wordings(kind, v)]
    t0 = time.perf_counter()
    edit_fn, extra = (rece_edit, {"epochs": 2}) if method == "rece" else (uce_edit, {})
    edit = edit_fn(pipe.unet, zoo_text_encoding(pipe), training_wordings(kind, value), guide=" ", preserve=preserve,
                   **extra)
    edit_seconds = time.perf_counter() - t0
    after = sample()
    edit.undo(pipe.unet)
    restored = all(torch.equal(w, edit.original[n]) for n, w in edit.edited_weights(pipe.unet).items())

    def by_seed(images: Tensor) -> Tensor:  # prompt-major -> one row of all prompts per seed
        return images.view(len(prompts), n_seeds, *images.shape[1:]).transpose(0, 1)

    rows = torch.stack([by_seed(before), by_seed(after)], dim=1).flatten(0, 2)
    path = out / f"erase_{value}.png"
    save_grid(rows, path, nrow=len(prompts), scale=4)
    (rate_before, acc_before), (rate_after, acc_after) = score(before), score(after)
    return {
        "model": pipe.name, "concept": value, "kind": kind, "method": method.upper(),
        "erased_wordings": training_wordings(kind, value), "layers": len(edit.layer_names),
        "images": 2 * before.shape[0], "steps": num_inference_steps, "seeds": list(seeds),
        "target_rate_before": rate_before, "target_rate_after": rate_after, "chance": 1 / len(D.CONCEPTS[kind]),
        "others_acc_before": acc_before, "others_acc_after": acc_after, "others_images": before.shape[0] - n_named,
        "edit_seconds": round(edit_seconds, 3), "undo_exact": restored, "grid": str(path),
    }


def normal_captions(n: int, seed: int) -> list[str]:
    """n ordinary training-form captions naming shape, colour, style and background (the memorized
    captions' form without ", sample <i>") of fresh random attributes."""
    g = torch.Generator().manual_seed(seed)
    return D.captions_with_named(D.sample_attributes(n, g), "train", g, 1.0, 1.0)[0]


def run_replication_demo(out_dir: str | Path, memorized: int = 8, normal: int = 8, samples: int = 2,
                         num_inference_steps: int = 25, distractors: int = 224, seed: int = 0,
                         score_steps: int | None = None, score_samples: int | None = None) -> dict:
    """Does shapes-memorized replicate its training images? Two detectors, two prompt groups.

    Groups: the first `memorized` of its memorized captions and `normal` ordinary captions of the same
    form, `samples` generations each (DDIM, `num_inference_steps`).
    Scan (retrieval, ``osmos.replication.scan`` with the pixel descriptor): every generation's top-1
    match among the training set (its memorized images plus `distractors` fresh renders); flagged at
    or above the 99th percentile of the top-1 similarity of fresh renders (calibrated here, 256 of
    them). Writes ``<out_dir>/replication/`` (worst_pairs.png, report.json, matches.csv).
    Memorization score (``osmos.replication.score_prompts``, no reference set): every prompt scored,
    flagged above the highest score of `normal` other ordinary captions.
    Returns per group: flagged fraction and mean / max top-1 similarity (scan), flagged fraction and
    mean score (memorization score); for memorized captions also how often the top-1 match is the
    caption's own training image.
    """
    from osmos.replication import PixelDescriptor, calibrate_threshold, scan, score_prompts

    if min(memorized, normal, samples) < 1:
        raise ValueError("memorized, normal and samples must be >= 1")
    out = Path(out_dir) / "replication"
    pipe = osmos.zoo.load("shapes-memorized")
    captions, train_images = osmos.zoo.memorized_images()
    if memorized > len(captions):
        raise ValueError(f"shapes-memorized memorized {len(captions)} captions, asked for {memorized}")
    mem_prompts = captions[:memorized]
    norm_prompts = normal_captions(2 * normal, seed + 300)
    norm_prompts, calibration = norm_prompts[:normal], norm_prompts[normal:]
    prompts = [p for p in mem_prompts + norm_prompts for _ in range(samples)]
    t0 = time.perf_counter()
    images = pipe(prompts, num_inference_steps=num_inference_steps, generator=torch.Generator().manual_seed(seed))
    gen_seconds = time.perf_counter() - t0

    def renders(n: int, s: int) -> Tensor:
        return D.render(D.sample_attributes(n, torch.Generator().manual_seed(s)), pipe.size)

    reference = torch.cat([train_images, renders(distractors, seed + 100)])
    descriptor = PixelDescriptor()
    threshold = calibrate_threshold(descriptor(renders(256, seed + 200)), descriptor(reference), 0.99)
    report = scan(images, reference, descriptor, threshold=threshold, out=out, progress=False)
    sims = torch.tensor(report.similarities)
    n_mem = memorized * samples
    own = torch.arange(memorized).repeat_interleave(samples)
    scores = score_prompts(pipe, mem_prompts + norm_prompts, calibration_prompts=calibration, quantile=1.0,
                           steps=score_steps, num_samples=score_samples, seed=seed + 5)
    score_t, flagged = torch.tensor(scores.scores), torch.tensor(scores.flagged, dtype=torch.float32)

    def group(sl_images: slice, sl_prompts: slice) -> dict:
        s = sims[sl_images]
        return {"flagged": float((s >= threshold).float().mean()), "top1_mean": float(s.mean()),
                "top1_max": float(s.max()), "score_flagged": float(flagged[sl_prompts].mean()),
                "score_mean": float(score_t[sl_prompts].mean())}

    mem, norm = group(slice(0, n_mem), slice(0, memorized)), group(slice(n_mem, None), slice(memorized, None))
    mem["top1_is_own"] = float((torch.tensor(report.match_indices[:n_mem]) == own).float().mean())
    return {
        "model": pipe.name, "images": len(prompts), "steps": num_inference_steps, "gen_seconds": round(gen_seconds, 2),
        "reference": len(reference), "descriptor": descriptor.name, "threshold": threshold,
        "score_threshold": scores.threshold, "score_method": f"{scores.method} {scores.steps} steps x {scores.num_samples} latents",
        "memorized": mem, "normal": norm, "grid": report.grid, "report": str(out / "report.json"),
    }
