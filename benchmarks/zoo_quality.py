"""Quality of the shipped zoo models, measured by the zoo classifier; writes grids and a table.

    PYTHONPATH=python python benchmarks/zoo_quality.py --model shapes-unet --per-pair 4 --steps 25

Prints a markdown table (paste under "## Zoo models" in benchmarks/RESULTS.md) and writes
benchmarks/figures/<model>_grid_<split>.png (rows: shapes, columns: colours, per_pair images each)
and benchmarks/figures/<model>_eval.json (every per-pair accuracy).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import osmos.zoo
from osmos.zoo import data as D
from osmos.zoo.classifier import accuracy
from osmos.zoo.evaluate import evaluate
from osmos.zoo.pipeline import save_grid

FIGURES = Path(__file__).resolve().parent / "figures"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="shapes-unet")
    p.add_argument("--per-pair", type=int, default=4)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--scheduler", default="dpm", choices=["ddim", "dpm"])
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    FIGURES.mkdir(parents=True, exist_ok=True)
    pipe = osmos.zoo.load(args.model, scheduler=args.scheduler)
    clf = osmos.zoo.load("classifier")
    res = evaluate(pipe, per_pair=args.per_pair, num_inference_steps=args.steps, guidance_scale=args.guidance,
                   classifier=clf, keep_images=True)
    for split, images in res.pop("images").items():
        # reorder to rows = shapes, per_pair * colours columns
        save_grid(images, FIGURES / f"{args.model}_grid_{split}.png", nrow=len(D.COLOURS) * args.per_pair, scale=4)
    clf_acc = accuracy(clf, n=2048, seed=31337)
    res["classifier_acc_fresh_renders"] = clf_acc
    res["model_card"] = pipe.card
    (FIGURES / f"{args.model}_eval.json").write_text(json.dumps(res, indent=2))
    card = pipe.card
    print(f"| model | params | steps trained | train min | sampler | pairs >= 90% (train wordings) | mean pair acc "
          f"(train) | min | shape acc | colour acc | pairs >= 75% (paraphrases) | mean pair acc (paraphrases) | "
          f"Frechet (real vs real) |")
    print("|---" * 13 + "|")
    tr, he = res["train"], res.get("heldout", {})
    print(f"| {args.model} | {card.get('parameters')} | {card.get('steps')} | {card.get('train_minutes')} | "
          f"{args.scheduler} {args.steps} steps, cfg {res['guidance_scale']} | {tr['pairs_at_90']}/36 | "
          f"{tr['mean']:.3f} | {tr['min']:.2f} | {tr['shape_acc']:.3f} | {tr['colour_acc']:.3f} | "
          f"{he.get('pairs_at_75', '-')}/36 | {he.get('mean', float('nan')):.3f} | "
          f"{res['frechet']:.2f} ({res['frechet_real_vs_real']:.2f}) |")
    print(f"\nclassifier on fresh renders (2048): {clf_acc}; eval took {res['seconds']} s")


if __name__ == "__main__":
    main()
