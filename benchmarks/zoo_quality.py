"""Quality of the shipped zoo models, measured by the zoo classifier; writes grids and a table.

    PYTHONPATH=python python benchmarks/zoo_quality.py --model shapes-unet --per-pair 4 --steps 25

What is measured depends on the model (tables go to benchmarks/RESULTS.md, "## Zoo ..." sections):

* text-to-image models: per-(shape, colour) accuracy with training wordings and paraphrases, and a
  Frechet distance; grids benchmarks/figures/<model>_grid_<split>.png (rows: shapes, columns:
  colours, per_pair images each) and every number in benchmarks/figures/<model>_eval.json.
* a fine-tuned variant (``shapes-unet-ft``): the same, for it and its base model, with the plain pair
  prompts and with the fine-tuning distribution named (" on a white background"), plus which
  background the classifier sees; grid <model>_vs_base.png (top row: base, bottom row: fine-tuned,
  same noise, one image per (shape, colour) pair).
* a memorizing model (``shapes-memorized``): nearest-training-image similarity of generations for
  its memorized captions and for other prompts, and the ROC AUC of the text-conditional noise
  magnitude (Wen et al.) as a memorization detector; grid <model>_grid.png (rows: training images,
  generations from their captions, generations from other prompts).
* a video model (``shapes-video``): classifier accuracy on every frame, shape consistency across
  frames and centroid motion, next to real clips; grid <model>_frames.png (one clip per row).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import osmos.zoo
from osmos.zoo import data as D
from osmos.zoo.classifier import accuracy
from osmos.zoo.evaluate import evaluate, evaluate_memorization, evaluate_video, pair_prompts
from osmos.zoo.models import predict_noise
from osmos.zoo.pipeline import save_grid

FIGURES = Path(__file__).resolve().parent / "figures"
IMAGE_HEADER = ("| model | prompts | params | steps trained | sampler | pairs >= 90% | mean pair acc | min | shape acc | "
                "colour acc | background black/gray/white | Frechet (real vs real) |")


def image_row(name: str, prompts: str, pipe, res: dict, split: str = "train") -> str:
    r, card = res[split], pipe.card
    bg = "/".join(f"{v:.2f}" for v in r["background_share"].values())
    return (f"| {name} | {prompts} | {card.get('parameters')} | {card.get('steps')} | {res['sampler']} | "
            f"{r['pairs_at_90']}/36 | {r['mean']:.3f} | {r['min']:.2f} | {r['shape_acc']:.3f} | "
            f"{r['colour_acc']:.3f} | {bg} | {res['frechet']:.2f} ({res['frechet_real_vs_real']:.2f}) |")


def image_report(args, clf) -> None:
    pipe = osmos.zoo.load(args.model, scheduler=args.scheduler, weights_dir=args.weights)
    res = evaluate(pipe, per_pair=args.per_pair, num_inference_steps=args.steps, guidance_scale=args.guidance,
                   classifier=clf, keep_images=True)
    res["sampler"] = f"{args.scheduler} {args.steps} steps, cfg {res['guidance_scale']}"
    for split, images in res.pop("images").items():
        save_grid(images, FIGURES / f"{args.model}_grid_{split}.png", nrow=len(D.COLOURS) * args.per_pair, scale=4)
    res["classifier_acc_fresh_renders"] = accuracy(clf, n=2048, seed=31337)
    res["model_card"] = pipe.card
    (FIGURES / f"{args.model}_eval.json").write_text(json.dumps(res, indent=2))
    print(IMAGE_HEADER)
    print("|---" * 12 + "|")
    print(image_row(args.model, "train wordings", pipe, res, "train"))
    print(image_row(args.model, "paraphrases", pipe, res, "heldout"))
    print(f"\nclassifier on fresh renders (2048): {res['classifier_acc_fresh_renders']}; eval took {res['seconds']} s")


def finetune_report(args, clf) -> None:
    """The fine-tuned model next to its base, on the base prompts and on its own distribution."""
    card = osmos.zoo.model_card(args.model)
    pin = {k: D.CONCEPTS[k][v] for k, v in card["pin"].items()}
    suffix = "".join(f" on a {v} background" for k, v in pin.items() if k == "background")
    rows, out, grids = [], {}, []
    for name in (card["init_from"], args.model):
        pipe = osmos.zoo.load(name, scheduler=args.scheduler)
        for label, sfx in (("pair prompts", ""), (f"pair prompts +{suffix!r}", suffix)):
            res = evaluate(pipe, per_pair=args.per_pair, splits=("train",), num_inference_steps=args.steps,
                           guidance_scale=args.guidance, classifier=clf, keep_images=True, prompt_suffix=sfx)
            res["sampler"] = f"{args.scheduler} {args.steps} steps, cfg {res['guidance_scale']}"
            images = res.pop("images")["train"]
            if not sfx:
                grids.append(images[:: args.per_pair])  # one image per pair, same noise for both models
            rows.append(image_row(name, label, pipe, res))
            out[f"{name} | {label}"] = res
    save_grid(torch.cat(grids), FIGURES / f"{args.model}_vs_base.png", nrow=len(D.COLOURS) * len(D.SHAPES), scale=4)
    (FIGURES / f"{args.model}_eval.json").write_text(json.dumps(out, indent=2))
    print(IMAGE_HEADER)
    print("|---" * 12 + "|")
    print("\n".join(rows))


@torch.no_grad()
def memorization_score(pipe, prompts: list[str], seeds: int = 4) -> torch.Tensor:
    """Text-conditional noise magnitude ||eps(x_T, prompt) - eps(x_T, "")|| at the first sampling
    step, averaged over ``seeds`` starting noises: [len(prompts)]."""
    states, mask = pipe.encode_prompt(prompts)
    empty_s, empty_m = pipe.encode_prompt([""])
    n = len(prompts)
    pipe.scheduler.set_timesteps(25)
    t = pipe.scheduler.timesteps[0]

    total = torch.zeros(n)
    for s in range(seeds):
        x = torch.randn(pipe.sample_shape(n), generator=torch.Generator().manual_seed(1000 + s))
        eps_c = predict_noise(pipe.unet, x, t, states, mask)
        eps_u = predict_noise(pipe.unet, x, t, empty_s.expand(n, -1, -1), empty_m.expand(n, -1))
        total += (eps_c - eps_u).flatten(1).norm(dim=1)
    return total / seeds


def memorization_report(args, clf) -> None:
    from sklearn.metrics import roc_auc_score

    pipe = osmos.zoo.load(args.model, scheduler=args.scheduler, weights_dir=args.weights)
    captions, references = osmos.zoo.memorized_images(args.model)
    g = torch.Generator().manual_seed(4242)
    fresh = D.sample_attributes(len(captions), g)
    similar = D.captions_with_named(fresh, "train", g, 1.0, 1.0)[0]  # same caption form, new images
    pairs, pair_labels = pair_prompts("train", 1)
    other = similar + pairs
    res = evaluate_memorization(pipe, captions, references, other, num_inference_steps=args.steps)
    gen_mem, gen_other = res.pop("memorized_images"), res.pop("other_images")
    pred = clf.predict(gen_other[len(similar):])
    res["other"]["pair_prompts_pair_acc"] = float(((pred["shape"] == pair_labels[:, 0])
                                                   & (pred["colour"] == pair_labels[:, 1])).float().mean())
    score_mem, score_other = memorization_score(pipe, captions), memorization_score(pipe, other)
    labels = [1] * len(captions) + [0] * len(other)
    res["memorization_score"] = {
        "memorized_median": float(score_mem.median()), "other_median": float(score_other.median()),
        "roc_auc": float(roc_auc_score(labels, torch.cat([score_mem, score_other]).tolist()))}
    res["other_prompts"] = f"{len(similar)} captions of the same form for fresh images + 36 pair prompts"
    res["sampler"] = f"{args.scheduler} {args.steps} steps, cfg {pipe.recipe.default_guidance}"
    k = len(captions)
    save_grid(torch.cat([references, gen_mem, gen_other[:k]]), FIGURES / f"{args.model}_grid.png", nrow=k, scale=4)
    (FIGURES / f"{args.model}_eval.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    m, o, s = res["memorized"], res["other"], res["memorization_score"]
    print("\n| prompts | n | nearest-training-image similarity (median / min / max) | fraction > 0.9 | own image nearest |")
    print("|---|---|---|---|---|")
    print(f"| memorized captions | {m['n']} | {m['median_sim']:.3f} / {m['min_sim']:.3f} / {m['max_sim']:.3f} | "
          f"{m['frac_above_0.9']:.2f} | {m['own_image_is_nearest']:.2f} |")
    print(f"| other prompts | {o['n']} | {o['median_sim']:.3f} / {o['min_sim']:.3f} / {o['max_sim']:.3f} | "
          f"{o['frac_above_0.9']:.2f} | - |")
    print(f"\nmemorization score (first-step text-conditional noise magnitude, 4 noises): memorized median "
          f"{s['memorized_median']:.3f}, other median {s['other_median']:.3f}, ROC AUC {s['roc_auc']:.3f}")


def video_report(args, clf) -> None:
    pipe = osmos.zoo.load(args.model, scheduler=args.scheduler, weights_dir=args.weights)
    res = evaluate_video(pipe, per_pair=args.per_pair, num_inference_steps=args.steps, guidance_scale=args.guidance,
                         classifier=clf, keep_frames=True)
    frames = res.pop("frames_tensor")
    rows = frames[:: len(D.COLOURS) * args.per_pair + 1][: len(D.SHAPES)]  # a diagonal of pairs: 6 clips
    save_grid(rows.flatten(0, 1), FIGURES / f"{args.model}_frames.png", nrow=frames.shape[1], scale=4)
    res["model_card"] = pipe.card
    (FIGURES / f"{args.model}_eval.json").write_text(json.dumps(res, indent=2))
    g, r = res["generated"], res["real"]
    print("| clips | sampler | shape acc (frames) | colour acc | pair acc | same shape in all frames | "
          "net displacement px (median) | path length px | moving clips (>= 1 px) | background flicker |")
    print("|---" * 10 + "|")
    print(f"| generated, {res['clips']} x {res['frames']} frames | {args.scheduler} {args.steps}, cfg "
          f"{res['guidance_scale']} | {g['shape_acc']:.3f} | {g['colour_acc']:.3f} | {g['pair_acc']:.3f} | "
          f"{g['same_shape_all_frames']:.2f} | {g['net_displacement_px']:.2f} | {g['path_length_px']:.2f} | "
          f"{g['moving_fraction']:.2f} | {g['background_flicker']:.3f} |")
    print(f"| real (render_video), {res['clips']} | - | - | - | - | {r['same_shape_all_frames']:.2f} | "
          f"{r['net_displacement_px']:.2f} | {r['path_length_px']:.2f} | {r['moving_fraction']:.2f} | "
          f"{r['background_flicker']:.3f} |")
    print(f"\neval took {res['seconds']} s")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="shapes-unet")
    p.add_argument("--per-pair", type=int, default=4)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--scheduler", default=None, choices=["ddim", "dpm"],
                   help="sampler (default: the model's own, as osmos.zoo.load picks it)")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights", type=Path, default=None,
                   help="folder with <model>.safetensors/.json (a training --out folder) instead of the shipped weights")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    FIGURES.mkdir(parents=True, exist_ok=True)
    clf = osmos.zoo.load("classifier")
    saved = json.loads(((args.weights or osmos.zoo.WEIGHTS_DIR) / f"{args.model}.json").read_text())["recipe"]
    args.scheduler = args.scheduler or saved.get("default_scheduler", "ddim")
    extra = saved["extra"]
    if "memorize" in extra:
        memorization_report(args, clf)
    elif "frames" in extra:
        video_report(args, clf)
    elif "pin" in extra:
        finetune_report(args, clf)
    else:
        image_report(args, clf)


if __name__ == "__main__":
    main()
