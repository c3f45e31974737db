"""HarmoniCa on the zoo's shapes-dit: learned feature cache vs no cache vs FORA (fixed interval).

    PYTHONPATH=python python benchmarks/harmonica_eval.py                 # shipped shapes-dit, 20 steps
    PYTHONPATH=python python benchmarks/harmonica_eval.py --quick         # < 2 min, plumbing check
    PYTHONPATH=python python benchmarks/harmonica_eval.py --weights out/zoo/shapes-dit   # a checkpoint

For each sampling-step count it trains routers (one per beta and trainer) on the sampler the pipeline uses (DDIM; DPM-Solver++ with --scheduler dpm), and compares, in one process with the same prompts and
latents:

* ``none``: no cache; ``fora-N``: every unit recomputed every N-th step, reused in between;
* ``harmonica b=..``: the HarmoniCa router trained with compute penalty beta, at threshold 0.1;
* ``l2c b=..``: the same router trained Learning-to-Cache-style (teacher trajectory and cache,
  every step weighted 1; `osmos.accel.harmonica.l2c`);
* ``<method>@fora-N``: the method's best-quality router restricted to FORA-N's compute budget
  (its most probable (step, unit) pairs), i.e. the same cache usage as FORA-N.

``--step-methods harmonica`` also trains, per beta and ``--step-init``, a whole-step router
(``granularity="step"``: one logit per step, all units of a step computed or reused together;
rows ``harmonica step ...`` and ``harmonica step@fora-N``). ``--select B`` adds rows
``selected@fora-N``: among the HarmoniCa budget rows at FORA-N's usage (every granularity and
bound) and FORA-N itself, the one whose final samples on B calibration batches (training-wording
prompts, noise seed 1000 + seed: not the evaluation's prompts and seed) are closest to the
uncached ones (`osmos.accel.harmonica.select_by_image_error`); with ``--select-labels`` the one
whose samples the zoo classifier most often still reads as the uncached sample's shape and colour
(MSE breaks ties). ``--routers-from JSON`` reuses
the routers a previous run trained (its saved probabilities, matched by row name) instead of
training them again.

``--max-reuse-run K`` bounds the learned routers (training and threshold) to at most K
consecutive reuses of a unit (`Router.max_reuse_run`; 0 = no bound); ``--budget-bounds K ...``
restricts them to each budget under each bound (rows ``<method>@fora-N K=k``; default: K).
FORA-N has K = N - 1, and at FORA-N's own budget that bound leaves no other schedule
(at most N - 1 reuses per computation), so useful bounds are K >= N. ``--usages u ...`` adds
budgets (rows ``<method>@u=..``) between FORA's. A budget a bound cannot reach is skipped.
Scatters of MSE to the uncached images and of pair accuracy against speed-up go to ``..._pareto.png``.

Columns: cache usage (fraction of attention/MLP evaluations served from the cache), wall-clock
speed-up over ``none`` (median of interleaved repeats, generating one fixed batch), classifier
accuracy (shape and colour both right, per (shape, colour) prompt), Frechet distance of classifier
features to real renders and to the uncached images' features (how far the cache moves the model's
output distribution; a cache can lower the first by changing what the model draws, e.g. its share of
black backgrounds, also reported), and MSE / PSNR of the images to the uncached images from the same latents
(mean over images, and the median of the per-image MSE: the mean is dominated by the few samples
whose shape or layout the cache changes).
Writes benchmarks/figures/harmonica_eval_<T><tag>.{json,png} (table, grid: one row per method)
and harmonica_eval_<T><tag>_pareto.png (MSE to the uncached images and pair accuracy against speed-up); the routers
go to harmonica_eval_<T><tag>_routers.json as each is trained (for ``--routers-from``: a run
stopped during its evaluation keeps its training).
Without shipped weights or --weights the DiT is untrained: the numbers then only test plumbing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import osmos.zoo
import torch
from osmos.accel.harmonica import HarmonicaConfig, Router, apply_harmonica, cache_units, select_by_image_error
from osmos.accel.harmonica.pipeline import (
    budget_router,
    guided_denoiser,
    prompt_sampler,
    train_pipeline_router,
)
from osmos.accel.harmonica.router import max_reuse_fraction
from osmos.zoo import data as D
from osmos.zoo.classifier import frechet_distance
from osmos.zoo.evaluate import evaluate
from osmos.zoo.pipeline import ShapesPipeline, save_grid

FIGURES = Path(__file__).resolve().parent / "figures"
THRESHOLD = 0.1


def load_pipe(weights: Path | None, scheduler: str = "ddim") -> tuple[ShapesPipeline, str]:
    """The DiT pipeline (DDIM unless told: "dpm" for DPM-Solver++) and where its weights came from."""
    from osmos.zoo.models import build_model, recipe

    if weights is not None:
        pipe = osmos.zoo.load("shapes-dit", scheduler=scheduler, weights_dir=weights)
        return pipe, f"{weights} ({pipe.card['steps']} steps)"
    if "shapes-dit" in osmos.zoo.available():
        return osmos.zoo.load("shapes-dit", scheduler=scheduler), "shipped shapes-dit"
    torch.manual_seed(0)
    r = recipe("shapes-dit")
    return ShapesPipeline(build_model(r), r, scheduler=scheduler), "UNTRAINED shapes-dit (plumbing only)"


def sampler_name(pipe) -> str:
    """How the tables name the pipeline's sampler (runs saved without one were DDIM)."""
    kind = type(pipe.scheduler).__name__
    return {"DDIMScheduler": "DDIM", "DPMSolverMultistepScheduler": "DPM-Solver++"}.get(kind, kind)


def router_prompts(n_variants: int = 6) -> list[str]:
    """Training prompts for the router: every (shape, colour) pair in several train wordings."""
    return [D.prompt_for(s, c, "train", variant=k) for s in D.SHAPES for c in D.COLOURS for k in range(n_variants)]


def load_trained(paths: list[Path], steps: int, n_units: int, scheduler: str) -> dict[str, tuple[Router, dict]]:
    """{row name: (router, its training record)} for the routers earlier runs at `steps` steps trained
    (rebuilt from their saved probabilities: same threshold decisions and budget restrictions)."""
    found: dict[str, tuple[Router, dict]] = {}
    for path in paths:
        out = json.loads(path.read_text())
        if out["steps"] != steps:
            continue
        bound = out["training"].get("max_reuse_run")
        for name, info in out["training"].items():
            if not (isinstance(info, dict) and "probabilities" in info):
                continue
            granularity = info.get("granularity", "unit")
            p = torch.tensor(info["probabilities"], dtype=torch.float64)
            router = Router(steps, n_units, scheduler, max_reuse_run=bound, granularity=granularity)
            with torch.no_grad():
                router.logits.copy_(torch.logit(p if granularity == "unit" else p[:, :1]).float())
            found[name] = (router, {**info, "loaded_from": str(path)})
    return found


def save_training(path: Path, steps: int, train_info: dict) -> None:
    """Write the routers trained so far ({"steps", "training"}, the fields `load_trained` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"steps": steps, "training": train_info}, indent=2))


def time_methods(pipe, routers: dict[str, Router | None], steps: int, batch: int, repeats: int) -> dict[str, float]:
    """Median seconds to sample one fixed batch, methods interleaved round-robin (same inputs)."""
    prompts = [D.prompt_for(s, c) for s in D.SHAPES for c in D.COLOURS][:batch]
    states, mask = pipe.encode_prompt(prompts)
    latents = torch.randn(batch, 3, pipe.size, pipe.size, generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {name: [] for name in routers}
    for rep in range(repeats + 1):
        for name, router in routers.items():
            handle = apply_harmonica(pipe.unet, HarmonicaConfig(router, THRESHOLD)) if router is not None else None
            t0 = time.perf_counter()
            pipe.denoise(states, mask, steps, latents=latents)
            elapsed = time.perf_counter() - t0
            if handle is not None:
                handle.remove()
            if rep > 0:  # the first round warms up
                times[name].append(elapsed)
    return {name: statistics.median(v) for name, v in times.items()}


def quality(pipe, router: Router | None, steps: int, per_pair: int, clf, seed: int = 0) -> dict:
    handle = apply_harmonica(pipe.unet, HarmonicaConfig(router, THRESHOLD)) if router is not None else None
    try:
        res = evaluate(pipe, per_pair=per_pair, splits=("train",), num_inference_steps=steps, classifier=clf,
                       keep_images=True, seed=seed)
    finally:
        if handle is not None:
            handle.remove()
    return res


def classifier_labels(clf):
    """labels(final samples in [-1, 1]) -> the zoo classifier's (shape, colour) per sample [B, 2]."""
    def labels(x):
        pred = clf.predict((x.clamp(-1, 1) + 1) / 2)
        return torch.stack([pred["shape"], pred["colour"]], 1)
    return labels


def run(args, pipe, clf, steps: int) -> dict:
    n_units = len(cache_units(pipe.unet))
    sched = type(pipe.scheduler).__name__
    routers: dict[str, Router | None] = {"none": None}
    for n in args.fora:
        routers[f"fora-{n}"] = Router.fora(steps, n_units, n, sched)
    bound = args.max_reuse_run or None
    train_info: dict = {"max_reuse_run": bound}
    previous = load_trained(args.routers_from, steps, n_units, sched)
    jobs = [(m, "unit", b, i) for m in args.methods for i in args.init for b in args.betas]
    jobs += [(m, "step", b, i) for m in args.step_methods for i in (args.step_init or args.init) for b in args.betas]
    trained: dict[str, dict[str, Router]] = {}
    for method, granularity, beta, init in jobs:
        family = method if granularity == "unit" else f"{method} step"
        name = f"{family} b={beta:g}" + (f" init={init}" if init != 0.0 else "")
        if name in previous:
            router, train_info[name] = previous[name]
        else:
            extra = {"refresh_every": args.refresh_every, "iepo_warmup": args.iepo_warmup,
                     "lambda_mode": args.lambda_mode} if method == "harmonica" else {}
            t0 = time.time()
            router, rec = train_pipeline_router(
                pipe, steps, beta, router_prompts(), batch_size=args.router_batch, method=method,
                iterations=args.iterations, lr=args.lr, init=init, error=args.error, threshold=THRESHOLD,
                max_reuse_run=bound, granularity=granularity, seed=args.seed, progress=not args.quiet, **extra)
            train_info[name] = {"seconds": round(time.time() - t0, 1), "final_loss": rec.losses[-1],
                                "cache_usage": rec.cache_usage[-1], "granularity": granularity,
                                "probabilities": router.probabilities().tolist(),
                                **({"lambdas": rec.lambdas} if rec.lambdas else {})}
            # saved as soon as trained: a run stopped later (evaluation) keeps its routers for --routers-from
            save_training(args.out / f"harmonica_eval_{steps}{args.tag}_routers.json", steps, train_info)
        trained.setdefault(family, {})[name] = router
        if not args.budget_only:
            routers[name] = router

    evaluated: dict[bytes, dict] = {}  # quality is a function of the compute mask: evaluate each mask once

    def quality_of(router: Router | None) -> dict:
        key = b"none" if router is None else router.compute_mask(THRESHOLD).numpy().tobytes()
        if key not in evaluated:
            evaluated[key] = quality(pipe, router, steps, args.per_pair, clf, args.eval_seed)
        return evaluated[key]

    results = {name: quality_of(r) for name, r in routers.items()}
    ref = results["none"]["images"]["train"]

    def mse(name: str) -> float:
        return float((results[name]["images"]["train"] - ref).pow(2).mean())

    def mse_median(name: str) -> float:  # the mean is dominated by the few samples that change shape
        return float((results[name]["images"]["train"] - ref).pow(2).flatten(1).mean(1).median())

    def frechet_vs_none(name: str) -> float:
        """Frechet distance of the row's classifier features to the uncached images' features: how far
        the cache moves the model's output distribution (0: none's own row). The Frechet column compares
        with real renders instead, and a cache can lower that one by changing what the model draws."""
        if name == "none":
            return 0.0
        for res in (results[name], results["none"]):
            if "features" not in res:
                with torch.no_grad():
                    res["features"] = clf.features(res["images"]["train"])
        return max(0.0, frechet_distance(results[name]["features"], results["none"]["features"]))  # -0 when equal

    # each trainer at fixed budgets, most probable pairs only, from its most accurate router (ties: lowest
    # MSE) or (--budget-source usage) the router whose own cache usage is closest to the budget
    budgets = {f"fora-{n}": routers[f"fora-{n}"].cache_usage(THRESHOLD) for n in args.fora}
    budgets.update({f"u={u:g}": u for u in args.usages})
    bounds = args.budget_bounds if args.budget_bounds is not None else [args.max_reuse_run]
    for method, family in trained.items():
        if not family:
            continue
        for label, usage in budgets.items():
            if args.budget_source == "usage":
                best = min(family, key=lambda k: abs(family[k].cache_usage(THRESHOLD) - usage))
            else:
                best = min(family, key=lambda k: (-results[k]["train"]["mean"], mse(k)))
            train_info[f"{method}@{label} source"] = best
            for k in bounds:
                name = f"{method}@{label}" + (f" K={k}" if len(bounds) > 1 or k else "")
                if usage > max_reuse_fraction(steps, k or None) + 1e-9:
                    train_info[name] = f"skipped: with K={k} at most {max_reuse_fraction(steps, k or None):.2f} can be reused"
                    continue
                routers[name] = budget_router(family[best], 1.0 - usage, k or None)
                results[name] = quality_of(routers[name])
    if args.select:
        sample_batch = prompt_sampler(pipe, router_prompts(), args.router_batch)
        for n in args.fora:
            label = f"fora-{n}"
            cands = {label: routers[label]}  # first: a learned schedule equal to FORA's is reported as FORA
            cands.update({k: r for k, r in routers.items()
                          if k.startswith("harmonica") and "@" in k and k.split("@")[1].split()[0] == label})
            chosen = select_by_image_error(pipe.unet, pipe.scheduler, cands, sample_batch=sample_batch,
                                           denoise=guided_denoiser(pipe), batches=args.select, seed=1000 + args.seed,
                                           threshold=THRESHOLD, labels=classifier_labels(clf) if args.select_labels else None)
            train_info[f"selected@{label}"] = {"winner": chosen.name, "calibration_mse": chosen.errors,
                                               **({"changed_labels": chosen.changed} if chosen.changed else {})}
            routers[f"selected@{label}"] = chosen.router
            results[f"selected@{label}"] = quality_of(chosen.router)
    seconds = time_methods(pipe, routers, steps, args.time_batch, args.repeats)

    rows = []
    for name, router in routers.items():
        res = results[name]
        err = mse(name)
        rows.append({
            "method": name,
            "cache_usage": 0.0 if router is None else router.cache_usage(THRESHOLD),
            "seconds": seconds[name],
            "speedup": seconds["none"] / seconds[name],
            "acc": res["train"]["mean"], "shape_acc": res["train"]["shape_acc"],
            "colour_acc": res["train"]["colour_acc"], "frechet": res["frechet"],
            "frechet_vs_none": frechet_vs_none(name), "black_background": res["train"]["background_share"]["black"],
            "mse_vs_none": err, "mse_median_vs_none": mse_median(name), "psnr_vs_none": float("inf") if err == 0 else float(-10 * torch.log10(torch.tensor(err))),
            "compute_mask": None if router is None else router.compute_mask(THRESHOLD).int().tolist(),
        })
    # grid: one row per method; columns: every shape in two colours (same latents in every row)
    n_col = len(D.COLOURS)
    pairs = [s * n_col + (s + k) % n_col for k in (0, 3) for s in range(len(D.SHAPES))]
    picks = torch.tensor(pairs) * args.per_pair
    grid = torch.cat([results[name]["images"]["train"][picks] for name in routers])
    args.out.mkdir(parents=True, exist_ok=True)
    save_grid(grid, args.out / f"harmonica_eval_{steps}{args.tag}.png", nrow=len(picks), scale=4)
    plot_pareto(rows, args.out / f"harmonica_eval_{steps}{args.tag}_pareto.png",
                f"shapes-dit, {sampler_name(pipe)} {steps} steps")
    return {"steps": steps, "sampler": sampler_name(pipe), "guidance": pipe.recipe.default_guidance, "rows": rows,
            "training": train_info,
            "frechet_real_vs_real": results["none"]["frechet_real_vs_real"]}


def plot_pareto(rows: list[dict], path: Path, title: str) -> None:
    """Quality against speed-up, one marker per method family: MSE to the uncached images (log;
    left) and classifier pair accuracy (right; dashed: no cache). The two can disagree: a schedule
    that moves every image a little has a low mean MSE and may still cost accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"fora": ("k", "s"), "harmonica step": ("tab:green", "D"), "harmonica": ("tab:blue", "o"),
              "l2c": ("tab:orange", "^"), "selected": ("tab:red", "*")}
    for family, (colour, marker) in styles.items():
        pts = [r for r in rows if r["method"].startswith(family) and r["mse_vs_none"] > 0
               and not (family == "harmonica" and r["method"].startswith("harmonica step"))]
        if not pts:
            continue
        for axis, key in ((ax, "mse_vs_none"), (ax_acc, "acc")):
            axis.scatter([r["speedup"] for r in pts], [r[key] for r in pts], c=colour, marker=marker, label=family)
            for r in pts:
                axis.annotate(r["method"].split("@")[-1] if "@" in r["method"] else r["method"], (r["speedup"], r[key]),
                              fontsize=6, xytext=(3, 3), textcoords="offset points")
    for r in rows:
        if r["method"] == "none":
            ax_acc.axhline(r["acc"], color="grey", ls="--", lw=1, label="none")
    ax.set_ylabel("MSE to the uncached images")
    ax.set_yscale("log")
    ax_acc.set_ylabel("pair accuracy (classifier)")
    for axis in (ax, ax_acc):
        axis.set_xlabel("speed-up over no cache (wall clock)")
        axis.set_title(title, fontsize=9)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(out: dict, source: str) -> None:
    print(f"\nshapes-dit ({source}), {out.get('sampler', 'DDIM')} {out['steps']} steps, CFG {out['guidance']}"
          f", Frechet real vs real {out['frechet_real_vs_real']:.2f}")
    print("| method | cache usage | s / batch | speed-up | pair acc | shape acc | colour acc | Frechet | Frechet vs none "
          "| black backgrounds | MSE vs none | median image MSE | PSNR vs none (dB) |")
    print("|---" * 13 + "|")
    for r in out["rows"]:
        median = f"{r['mse_median_vs_none']:.2e}" if "mse_median_vs_none" in r else "-"
        vs_none = f"{r['frechet_vs_none']:.2f}" if "frechet_vs_none" in r else "-"  # runs saved before session 18: -
        black = f"{r['black_background']:.3f}" if "black_background" in r else "-"
        print(f"| {r['method']} | {r['cache_usage']:.2f} | {r['seconds']:.3f} | {r['speedup']:.2f}x | {r['acc']:.3f} | "
              f"{r['shape_acc']:.3f} | {r['colour_acc']:.3f} | {r['frechet']:.2f} | {vs_none} | {black} | {r['mse_vs_none']:.2e} | {median} | "
              f"{r['psnr_vs_none']:.1f} |")
    for name, info in out["training"].items():
        if name == "max_reuse_run":
            print(f"- learned routers bounded to {info} consecutive reuses" if info else "- no reuse-run bound")
        elif isinstance(info, dict) and "winner" in info:
            errs = ", ".join(f"{k} {v:.2e}" for k, v in info["calibration_mse"].items())
            print(f"- {name}: {info['winner']} (calibration MSE to the uncached samples: {errs})")
        elif isinstance(info, dict):
            lam = ""
            if "lambdas" in info:
                last = info["lambdas"][-1][1:]
                lam = f", IEPO lambda(t) at the last of {len(info['lambdas'])} refreshes in [{min(last):.2f}, {max(last):.2f}]"
            trained = f"trained in {info['seconds']} s"
            if "loaded_from" in info:
                trained = f"loaded from {info['loaded_from']} ({trained})"
            print(f"- {name}: {trained}, cache usage {info['cache_usage']:.2f}, final loss {info['final_loss']:.3g}{lam}")
        elif name.endswith(" source"):
            print(f"- {name[:-len(' source')]}: {info} restricted to that compute budget")
        else:
            print(f"- {name}: {info}")


def retime(args, pipe, path: Path) -> None:
    """Re-measure the seconds / speed-up columns of a saved run (its rows' compute masks, same
    timing protocol) and rewrite its JSON and MSE-vs-speed-up plot: for a quiet machine after a
    long run on a loaded one."""
    out = json.loads(path.read_text())
    routers = {r["method"]: None if r["compute_mask"] is None else
               Router.from_mask(torch.tensor(r["compute_mask"], dtype=torch.bool), type(pipe.scheduler).__name__)
               for r in out["rows"]}
    seconds = time_methods(pipe, routers, out["steps"], args.time_batch, args.repeats)
    for r in out["rows"]:
        r["seconds"], r["speedup"] = seconds[r["method"]], seconds["none"] / seconds[r["method"]]
    out["retimed"] = {"repeats": args.repeats, "time_batch": args.time_batch, "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path.write_text(json.dumps(out, indent=2))
    plot_pareto(out["rows"], path.with_name(path.stem + "_pareto.png"),
                f"shapes-dit, {out.get('sampler', 'DDIM')} {out['steps']} steps")
    print_table(out, out.get("source", ""))


def _init_arg(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=None, help="folder with shapes-dit.safetensors/.json (a checkpoint)")
    p.add_argument("--steps", type=int, nargs="+", default=[20])
    p.add_argument("--scheduler", default="ddim", choices=["ddim", "dpm"],
                   help="sampler (shapes-dit's own default is dpm; the evaluations in RESULTS.md use ddim unless they say)")
    p.add_argument("--fora", type=int, nargs="+", default=[2, 3], help="FORA intervals")
    p.add_argument("--betas", type=float, nargs="+", default=[5e-4], help="compute penalties (one router each)")
    p.add_argument("--methods", nargs="*", default=["harmonica", "l2c"], choices=["harmonica", "l2c"],
                   help="router trainers: HarmoniCa (SDT + IEPO) and the Learning-to-Cache-style baseline")
    p.add_argument("--step-methods", nargs="*", default=[], choices=["harmonica", "l2c"],
                   help="trainers that also train a whole-step router (granularity 'step') per beta and --step-init")
    p.add_argument("--step-init", type=_init_arg, nargs="*", default=None,
                   help="starting points of the whole-step routers (default: --init)")
    p.add_argument("--select", type=int, default=0,
                   help="calibration batches for the selected@fora-N rows (0: no such rows)")
    p.add_argument("--select-labels", action="store_true",
                   help="selected@fora-N: fewest calibration samples whose classifier shape / colour the cache "
                        "changes first, MSE as tie-break (default: MSE alone)")
    p.add_argument("--routers-from", type=Path, nargs="*", default=[],
                   help="earlier runs' JSON files: reuse their trained routers (same row names) instead of training")
    p.add_argument("--budget-only", action="store_true",
                   help="evaluate the learned routers only at the fixed budgets, not at their own threshold")
    p.add_argument("--eval-seed", type=int, default=0, help="noise seed of the evaluation images")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--init", type=_init_arg, nargs="+", default=[0.0],
                   help="router starting points (one router per init and beta): a logit (0: r = 0.5) or "
                        "fora-N (warm start at FORA-N's schedule)")
    p.add_argument("--error", default="x0", choices=["x0", "output"],
                   help="space of the per-step student-teacher MSE: predicted clean sample or model output (the paper)")
    p.add_argument("--refresh-every", type=int, default=10, help="IEPO refresh interval (iterations)")
    p.add_argument("--iepo-warmup", type=int, default=2, help="iterations before the first IEPO refresh")
    p.add_argument("--max-reuse-run", type=int, default=0,
                   help="learned routers reuse a unit at most this many steps in a row (0: no bound)")
    p.add_argument("--budget-bounds", type=int, nargs="*", default=None,
                   help="reuse-run bounds K for the budget restrictions (one row each; 0: none); default: --max-reuse-run")
    p.add_argument("--usages", type=float, nargs="*", default=[],
                   help="extra cache-usage budgets for the learned routers, besides FORA's")
    p.add_argument("--budget-source", default="accuracy", choices=["accuracy", "usage"],
                   help="which trained router each budget row restricts: the method's most accurate one, or the "
                        "one whose own cache usage is closest to the budget")
    p.add_argument("--lambda-mode", default="leave_one_out", choices=["leave_one_out", "sequential"])
    p.add_argument("--router-batch", type=int, default=4)
    p.add_argument("--per-pair", type=int, default=1)
    p.add_argument("--time-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=FIGURES, help="folder for the JSON and grid")
    p.add_argument("--tag", default="", help="suffix of the output names: harmonica_eval_<T><tag>.{json,png}")
    p.add_argument("--retime", type=Path, default=None,
                   help="only re-measure the speed-ups of a saved run (its JSON, rewritten) with --repeats/--time-batch")
    p.add_argument("--quick", action="store_true", help="10 steps, tiny router training: under 2 minutes")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.budget_only and args.budget_source != "usage":
        p.error("--budget-only needs --budget-source usage (the learned routers' own rows are not evaluated)")
    if args.quick:
        args.steps, args.fora, args.betas = [10], [2], [3e-4]
        args.iterations, args.refresh_every, args.iepo_warmup, args.router_batch = 3, 3, 1, 2
        args.per_pair, args.time_batch, args.repeats = 1, 4, 3
    torch.set_num_threads(args.threads)
    pipe, source = load_pipe(args.weights, args.scheduler)
    clf = osmos.zoo.load("classifier")
    if args.retime is not None:
        retime(args, pipe, args.retime)
        return
    for steps in args.steps:
        out = run(args, pipe, clf, steps)
        out["source"], out["args"] = source, {k: str(v) for k, v in vars(args).items()}
        (args.out / f"harmonica_eval_{steps}{args.tag}.json").write_text(json.dumps(out, indent=2))
        print_table(out, source)


if __name__ == "__main__":
    main()
