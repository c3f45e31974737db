"""osmos.zoo: the embedded default, a tiny text-to-image world that ships in the package.

* :mod:`osmos.zoo.data`        procedural, seeded "shapes" images, captions, moving-shape clips
* :mod:`osmos.zoo.text`        all-MiniLM-L6-v2 token states (offline) as cross-attention context
* :mod:`osmos.zoo.pipeline`    ``ShapesPipeline`` / ``ShapesVideoPipeline``: CFG sampling with DDIM /
                               DPM-Solver (diffusers)
* :mod:`osmos.zoo.classifier`  the evaluator (shape/colour/style/background CNN, Frechet distance)
* :mod:`osmos.zoo.evaluate`    generation accuracy per (shape, colour), paraphrases, Frechet score
* :mod:`osmos.zoo.train`       ``python -m osmos.zoo.train <name> --seed 0`` regenerates the weights

``pipe = osmos.zoo.load("shapes-unet"); images = pipe(["a red circle"])``.
"""

from __future__ import annotations

import json
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def available() -> list[str]:
    """Names of the models whose weights ship in this install."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def model_card(name: str) -> dict:
    """The model card (architecture, parameters, steps, time, seed, metrics) of a shipped model."""
    path = WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no zoo model {name!r}; available: {available()}")
    return json.loads(path.read_text())["card"]


def load(name: str, device: str = "cpu", scheduler: str | None = None, weights_dir: str | Path | None = None):
    """Load a shipped model, offline. Denoisers come back as a ready :class:`ShapesPipeline`
    (``"shapes-video"``: :class:`ShapesVideoPipeline`, frames [B, F, 3, S, S]); ``"classifier"`` gives
    the evaluator (:class:`ShapesClassifier`). ``scheduler``: "ddim" or "dpm" (DPM-Solver++); by default
    the model's own (its recipe's ``default_scheduler``: DDIM, DPM-Solver++ for shapes-dit).
    ``weights_dir`` loads ``<name>.safetensors`` and
    ``<name>.json`` from another folder instead, e.g. the ``--out`` folder of ``osmos.zoo.train``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    if name == "classifier":
        from osmos.zoo.classifier import load_classifier

        return load_classifier().to(device)
    folder = WEIGHTS_DIR if weights_dir is None else Path(weights_dir)
    weights, meta_path = folder / f"{name}.safetensors", folder / f"{name}.json"
    if not weights.is_file() or not meta_path.is_file():
        if weights_dir is not None:
            raise FileNotFoundError(f"{folder} has no {name}.safetensors and {name}.json")
        raise KeyError(f"no zoo model {name!r}; available: {available()}")
    from safetensors.torch import load_file

    from osmos.zoo.models import Recipe, build_model
    from osmos.zoo.pipeline import ShapesPipeline, ShapesVideoPipeline

    meta = json.loads(meta_path.read_text())
    recipe = Recipe(**meta["recipe"])
    model = build_model(recipe)
    model.load_state_dict(load_file(str(weights)))
    cls = ShapesVideoPipeline if "frames" in recipe.extra else ShapesPipeline
    return cls(model.to(device), recipe, card=meta["card"], scheduler=scheduler)


def memorized_images(name: str = "shapes-memorized"):
    """The training set a memorizing model was built on: (captions [K], images [K,3,S,S] in [0,1]),
    regenerated from its recipe and its card's seed (the ground truth for replication checks)."""
    from osmos.zoo.data import memorization_set

    meta_path = WEIGHTS_DIR / f"{name}.json"
    if not meta_path.is_file():
        raise KeyError(f"no zoo model {name!r}; available: {available()}")
    meta = json.loads(meta_path.read_text())
    k = meta["recipe"]["extra"].get("memorize")
    if not k:
        raise ValueError(f"{name} is not a memorizing model")
    pin = meta["recipe"]["extra"].get("pin") or {}
    captions, images, _ = memorization_set(k, meta["card"]["seed"], meta["recipe"]["size"], **pin)
    return captions, images


__all__ = ["load", "available", "model_card", "memorized_images", "WEIGHTS_DIR"]
