"""`osmos erase spm|uce|rece` and `osmos generate`: concept erasure from the command line.

    osmos erase spm  --model shapes-unet --concept circle --out out/circle
    osmos erase uce  --model PATH --concept "van gogh" [--guide art] [--preserve monet ...] --out edit.safetensors
    osmos erase rece --model shapes-unet --concept red --epochs 2 --lambda-reg 1e-3 --out out/red
    osmos generate   --model shapes-unet --spm out/circle/spm_circle.safetensors --prompt "a red circle" --out grid.png

--model is a zoo model name (default shapes-unet) or a diffusers pipeline folder on disk.
--out is a .safetensors file, or a folder that receives `<method>_<concept>.safetensors` and, for
zoo models, `grid.png` (rows: original and erased model per seed; columns: prompts naming the
concept, then unrelated prompts) and `summary.json` (the zoo classifier's concept rate on the
grid's concept images before and after, the image change on the unrelated ones and, for scale,
between the original's unrelated images of consecutive seeds).
SPM files load with `osmos.erase.spm.SPM.load`; UCE / RECE files with
`osmos.erase.edit_file.load_edit(unet, FILE)` (the edited cross-attention K/V weights).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def _erase_methods(subparsers) -> argparse._SubParsersAction:
    """The sub-commands action of `osmos erase`, created on first use."""
    erase = subparsers.choices.get("erase")
    if erase is None:
        erase = subparsers.add_parser("erase", help="concept erasure (SPM adapters, UCE / RECE closed-form edits)")
    for action in erase._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return erase.add_subparsers(dest="erase_method", required=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="shapes-unet",
                   help="zoo model name (shapes-unet) or diffusers pipeline folder on disk (default shapes-unet)")
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", required=True, help="output .safetensors file, or a folder (file + grid + summary)")
    p.add_argument("--grid-seeds", type=int, nargs="*", default=[0, 1], help="seeds of the grid rows (0 1)")
    p.add_argument("--grid-steps", type=int, default=15, help="DDIM steps of the grid images (15)")
    p.add_argument("--no-grid", action="store_true", help="write the weights only")


def add_parser(subparsers) -> None:
    """Add `erase spm`, `erase uce` and `erase rece` to the top-level sub-commands."""
    methods = _erase_methods(subparsers)
    p = methods.add_parser("spm", help="SPM: train a rank-1 adapter per layer that erases a concept")
    p.add_argument("--concept", required=True, help="concept prompt to erase (e.g. circle)")
    p.add_argument("--surrogate", default="", help="what the concept is mapped to ('' = the empty prompt)")
    p.add_argument("--steps", type=int, default=150, help="training steps (150)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (1e-2)")
    p.add_argument("--la-strength", type=float, default=5.0, help="Latent Anchoring weight, 0 = off (5)")
    p.add_argument("--anchors", nargs="*", default=None,
                   help="anchor prompts (default on zoo models: the other concepts' wordings)")
    p.add_argument("--targets", choices=("captions", "word"), default="captions",
                   help="on zoo models: train on captions naming the concept, each with the concept dropped as "
                        "its surrogate, 2 a step, and anchor the empty prompt (captions, default), or on the "
                        "bare concept word vs --surrogate (word)")
    p.add_argument("--sampling-steps", type=int, default=15, help="DDIM steps of the x_t sampling (15)")
    p.add_argument("--seed", type=int, default=0, help="training seed (0)")
    p.add_argument("--checkpoint", default=None, help="resumable checkpoint file (saved every 50 steps)")
    p.add_argument("--candidates", type=int, default=1,
                   help="zoo concepts: train K SPMs (seeds --seed + 1000 j) and keep the one that leaves the "
                        "concept least often on validation captions it was not trained on (1: no selection)")
    p.add_argument("--validate-others", type=int, default=None, metavar="N",
                   help="with --candidates K > 1: also generate N validation captions of every other value of "
                        "the concept's kind (seeds 0 1) per candidate and measure the drop of the zoo "
                        "classifier's accuracy on them, against a candidate that erodes its neighbours "
                        "(default 8 with --candidates > 1, else 0; 0 turns it off)")
    p.add_argument("--others-rule", choices=["sum", "tie-break"], default=None,
                   help="how the --validate-others drop counts: rank candidates by the concept rate and let the "
                        "drop decide only between equal rates (tie-break, the default: every target met in 23 of "
                        "26 fresh training draws against 22 without the term, never worse), or add it to the "
                        "rate (sum: worse for striped; benchmarks/RESULTS.md)")
    _common(p)
    p.set_defaults(func=_run_spm)
    for method, help_text in (
        ("uce", "Unified Concept Editing: one closed-form edit of every cross-attention K/V"),
        ("rece", "RECE: UCE, then epochs erasing derived embeddings that regenerate the concept"),
    ):
        p = methods.add_parser(method, help=help_text)
        p.add_argument("--concept", required=True, nargs="+", help="concept prompt(s) to erase")
        p.add_argument("--guide", nargs="+", default=[" "], help="guide prompt, or one per concept (default ' ')")
        p.add_argument("--preserve", nargs="*", default=None,
                       help="prompts whose keys/values are to be kept (default on zoo models: the other values "
                            "of the concept's kind)")
        p.add_argument("--lambda", dest="lambda_", type=float, default=0.5, help="weight-closeness term (0.5)")
        p.add_argument("--eta-e", type=float, default=1.0, help="erasure term weight (1.0)")
        p.add_argument("--eta-p", type=float, default=1.0, help="preservation term weight (1.0)")
        p.add_argument("--tokens", choices=("all", "last_subject"), default="all", help="token rows to edit")
        if method == "rece":
            p.add_argument("--epochs", type=int, default=2, help="RECE epochs (2)")
            p.add_argument("--lambda-reg", type=float, default=1e-3,
                           help="ridge weight of the derivation: 0.1 nudity / easy objects, 1e-3 styles (1e-3)")
            p.add_argument("--rece-guide", default=" ", help="guide of each RECE epoch: ' ' or 'art' (' ')")
        _common(p)
        p.set_defaults(func=_run_closed_form, closed_form_method=method)


def add_generate_parser(subparsers) -> None:
    """Add `generate`: a PNG grid from a zoo model, with SPMs and / or a UCE / RECE edit applied."""
    p = subparsers.add_parser("generate", help="images from a zoo model (optionally with SPMs / an edit) as a PNG grid")
    p.add_argument("--model", default="shapes-unet", help="zoo model name (shapes-unet)")
    p.add_argument("--prompt", nargs="+", required=True, help="prompts (one grid column each)")
    p.add_argument("--spm", nargs="*", default=[], help="SPM files to attach (composed additively)")
    p.add_argument("--transport", action="store_true", help="Facilitated Transport: gamma per prompt from the text")
    p.add_argument("--edit", default=None, help="a UCE / RECE edit file to apply")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (one grid row each)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps (25)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(func=_run_generate)


# ---- running ----------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "concept"


def _set_threads(args) -> None:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def _outputs(out: str, method: str, concept: str) -> tuple[Path, Path | None]:
    """(weights file, folder for grid + summary or None) from --out."""
    path = Path(out)
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, None
    path.mkdir(parents=True, exist_ok=True)
    return path / f"{method}_{_slug(concept)}.safetensors", path


class _Grid:
    """Original images first, erased images after the edit; writes grid.png and summary.json."""

    def __init__(self, model, concept: str, folder: Path | None, args):
        self.active = folder is not None and model.zoo and not args.no_grid and bool(args.grid_seeds)
        if not self.active:
            return
        from osmos.erase.zoo import grid_prompts

        self.model, self.concept, self.folder, self.args = model, concept, folder, args
        self.named, self.unrelated = grid_prompts(concept)
        self.prompts = self.named + self.unrelated
        self.before = self._images(None, "original model")

    def _images(self, handle, what: str):
        from tqdm.auto import tqdm

        from osmos.erase.zoo import generate

        with tqdm(total=len(self.prompts) * len(self.args.grid_seeds), desc=f"grid, {what}", unit="img") as bar:
            images = generate(self.model.pipe, self.prompts, self.args.grid_seeds, batch_size=8,
                              num_inference_steps=self.args.grid_steps, spm_handle=handle, progress=bar)
        # prompt-major -> seed-major rows
        n, s = len(self.prompts), len(self.args.grid_seeds)
        return images.view(n, s, *images.shape[1:]).transpose(0, 1).reshape(n * s, *images.shape[1:])

    def _seed_gap(self, images) -> float | None:
        """Mean |pixel| change between the original model's images of the same prompts with the
        next seed (seed-major [seeds * P, 3, S, S]): the scale a change by the edit is read against.
        None with one seed."""
        p = len(images) // len(self.args.grid_seeds)
        return float((images[p:] - images[:-p]).abs().mean()) if len(self.args.grid_seeds) > 1 else None

    def finish(self, handle=None, extra: dict | None = None) -> dict | None:
        if not self.active:
            return None
        from osmos.erase.zoo import concept_rate
        from osmos.zoo.pipeline import save_grid

        import torch

        after = self._images(handle, "erased model")
        n, k = len(self.prompts), len(self.named)
        rows = torch.cat([torch.cat([self.before[i * n : (i + 1) * n], after[i * n : (i + 1) * n]])
                          for i in range(len(self.args.grid_seeds))])
        save_grid(rows, self.folder / "grid.png", nrow=n, scale=4)
        named = lambda x: torch.cat([x[i * n : i * n + k] for i in range(len(self.args.grid_seeds))])  # noqa: E731
        unrelated = lambda x: torch.cat([x[i * n + k : (i + 1) * n] for i in range(len(self.args.grid_seeds))])  # noqa: E731
        summary = {
            "model": self.model.name, "concept": self.concept, "prompts": self.prompts,
            "seeds": self.args.grid_seeds, "steps": self.args.grid_steps,
            "concept_rate_before": concept_rate(named(self.before), self.concept),
            "concept_rate_after": concept_rate(named(after), self.concept),
            "unrelated_pixel_change": float((unrelated(after) - unrelated(self.before)).abs().mean()),
            "unrelated_seed_gap": self._seed_gap(unrelated(self.before)),
            "grid": str(self.folder / "grid.png"),
            "grid_layout": "per seed: a row from the original model, then a row from the erased one",
            **(extra or {}),
        }
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def _report(method: str, concept: str, weights: Path, summary: dict | None) -> None:
    print(f"{method}: erased {concept!r}; wrote {weights}")
    if summary is not None:
        rate = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"  grid {summary['grid']}: zoo classifier sees {concept!r} in {rate(summary['concept_rate_before'])} "
              f"of the concept images before, {rate(summary['concept_rate_after'])} after; unrelated images "
              f"change by {summary['unrelated_pixel_change']:.3f} (mean |pixel|; another seed: "
              f"{rate(summary['unrelated_seed_gap'])})")


def validate_others(args) -> int:
    """The --validate-others N of an `osmos erase spm` command line (default 8 with --candidates
    K > 1, else 0), checked: SystemExit for a negative N, for N > 0 without candidates to choose
    among, or for --others-rule with N = 0."""
    n = args.validate_others
    if n is None:
        n = 8 if args.candidates > 1 else 0
    if n < 0:
        raise SystemExit(f"--validate-others must be >= 0 (0 disables), got {n}")
    if n > 0 and args.candidates <= 1:
        raise SystemExit("--validate-others scores candidates: it needs --candidates K > 1")
    if n == 0 and args.others_rule is not None:
        raise SystemExit("--others-rule applies to the --validate-others term, which is off (N = 0)")
    return n


def others_rule(args) -> str:
    """The --others-rule of an `osmos erase spm` command line: tie-break unless given."""
    return args.others_rule or "tie-break"


def _run_spm(args) -> int:
    _set_threads(args)
    from osmos.erase.models import load_model
    from osmos.erase.spm import apply_spm, train_spm

    if args.candidates < 1:
        raise SystemExit(f"--candidates must be >= 1, got {args.candidates}")
    if args.candidates > 1 and args.checkpoint:
        raise SystemExit("--candidates trains several SPMs; it does not take --checkpoint")
    others = validate_others(args)
    model = load_model(args.model, args.device)
    weights, folder = _outputs(args.out, "spm", args.concept)
    anchors, pairs, wordings, kind_value = args.anchors, None, None, None
    if model.zoo:
        from osmos.erase.zoo import anchor_prompts, concept_of, erasure_prompt_pairs, training_wordings

        try:
            kind_value = concept_of(args.concept)
        except ValueError:
            kind_value = None
        if kind_value is not None and anchors is None:
            anchors = anchor_prompts(*kind_value)
        if kind_value is not None and args.targets == "captions":
            pairs = erasure_prompt_pairs(*kind_value)
            wordings = training_wordings(*kind_value)
    if args.candidates > 1 and kind_value is None:
        raise SystemExit("--candidates checks each SPM with the zoo classifier: it needs a zoo model and a concept "
                         "of the shapes world; elsewhere call osmos.erase.spm.train_spm_selected with your own validate")
    train_pipe = model.spm_pipe()
    grid = _Grid(model, args.concept, folder, args)
    kwargs = dict(surrogate=args.surrogate, steps=args.steps, lr=args.lr, la_strength=args.la_strength if anchors else 0.0,
                  anchors=anchors or None, sampling_steps=args.sampling_steps, prompts=pairs,
                  targets_per_step=2 if pairs else 1, fixed_anchors=[""] if pairs else [],
                  anchor_norm_range=None if pairs else (0.8, 1.2), wordings=wordings)
    if args.candidates > 1:
        from osmos.erase.spm import train_spm_selected
        from osmos.erase.zoo import validation_check

        rule = others_rule(args)
        validate = validation_check(model.pipe, *kind_value, exclude=[t for t, _ in pairs] if pairs else [args.concept],
                                    others=others, others_rule=rule)
        spm, scores = train_spm_selected(train_pipe, args.concept, validate,
                                         [args.seed + 1000 * j for j in range(args.candidates)], **kwargs)
        spm.settings["selection"]["validate_others"] = others
        spm.settings["selection"]["others_rule"] = rule
        what = "concept rate on validation captions" + (
            "" if not others else " + drop of the other values' accuracy" if rule == "sum"
            else ", drop of the other values' accuracy (tie-break)")
        print(f"  candidates (seed: {what}): "
              + ", ".join(f"{sd}: " + (" / ".join(f"{v:.2f}" for v in sc) if isinstance(sc, tuple) else f"{sc:.2f}")
                          for sd, sc in zip(spm.settings["selection"]["seeds"], scores))
              + f"; kept seed {spm.settings['selection']['chosen']}")
    else:
        spm = train_spm(train_pipe, args.concept, seed=args.seed, checkpoint=args.checkpoint, checkpoint_every=50,
                        **kwargs)
    spm.save(weights)
    summary = None
    if grid.active:
        with apply_spm(model.unet, [spm]) as handle:
            summary = grid.finish(handle, {"method": "spm", "weights": str(weights)})
    _report("spm", args.concept, weights, summary)
    return 0


def _run_closed_form(args) -> int:
    _set_threads(args)
    from osmos.erase.closed_form import rece_edit, uce_edit
    from osmos.erase.edit_file import save_edit
    from osmos.erase.models import load_model

    model = load_model(args.model, args.device)
    concept = " + ".join(args.concept)
    weights, folder = _outputs(args.out, args.closed_form_method, concept)
    preserve = args.preserve
    if preserve is None:
        preserve = _default_preserve(args.concept) if model.zoo else []
    grid = _Grid(model, args.concept[0], folder, args)
    common = dict(erase=args.concept, guide=args.guide, preserve=preserve, lambda_=args.lambda_,
                  eta_e=args.eta_e, eta_p=args.eta_p, tokens=args.tokens)
    if args.closed_form_method == "uce":
        edit = uce_edit(model.unet, model.encoding, **common)
    else:
        edit = rece_edit(model.unet, model.encoding, **common, epochs=args.epochs, lambda_reg=args.lambda_reg,
                         rece_guide=args.rece_guide)
    save_edit(edit, model.unet, weights, base_model=str(args.model))
    summary = grid.finish(None, {"method": args.closed_form_method, "weights": str(weights), "preserve": preserve})
    print(f"{args.closed_form_method}: edited {len(edit.layer_names)} cross-attention K/V layers")
    _report(args.closed_form_method, concept, weights, summary)
    return 0


def _default_preserve(concepts: list[str]) -> list[str]:
    """On zoo models: the training wordings of the other values of each erased concept's kind."""
    from osmos.erase.zoo import concept_of, training_wordings
    from osmos.zoo import data as D

    erased, preserve = set(), []
    for c in concepts:
        try:
            erased.add(concept_of(c))
        except ValueError:
            continue
    for kind in sorted({k for k, _ in erased}):
        for value in D.CONCEPTS[kind]:
            if (kind, value) not in erased:
                preserve.extend(training_wordings(kind, value))
    return preserve


def _run_generate(args) -> int:
    _set_threads(args)
    import contextlib

    from tqdm.auto import tqdm

    from osmos.erase.edit_file import load_edit
    from osmos.erase.models import load_model
    from osmos.erase.spm import SPM, apply_spm
    from osmos.erase.zoo import generate, zoo_transport
    from osmos.zoo.pipeline import save_grid

    model = load_model(args.model)
    if not model.zoo:
        raise SystemExit("osmos generate works on zoo models; for a diffusers folder use its pipeline")
    if args.edit:
        load_edit(model.unet, args.edit)
    spms = [SPM.load(p, unet=model.unet) for p in args.spm]
    transport = zoo_transport(model.pipe, spms) if spms and args.transport else None
    ctx = apply_spm(model.unet, spms, transport=transport) if spms else contextlib.nullcontext()
    with ctx as handle, tqdm(total=len(args.prompt) * len(args.seeds), desc="images", unit="img") as bar:
        images = generate(model.pipe, args.prompt, args.seeds, num_inference_steps=args.steps, spm_handle=handle,
                          progress=bar)
    n, s = len(args.prompt), len(args.seeds)
    images = images.view(n, s, *images.shape[1:]).transpose(0, 1).reshape(n * s, *images.shape[1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, args.out, nrow=n, scale=4)
    print(f"generate: {n * s} images ({n} prompts x {s} seeds) -> {args.out}")
    return 0
