"""`osmos erase uce|rece`: closed-form concept erasure of a diffusers pipeline on disk.

    osmos erase uce  --model PATH --concept "van gogh" [--guide art] [--preserve monet ...] --out edit.safetensors
    osmos erase rece --model PATH --concept nudity --epochs 2 --lambda-reg 0.1 --out edit.safetensors

The output holds the edited cross-attention key/value weights (`osmos.erase.edit_file`);
`osmos.erase.edit_file.load_edit(unet, FILE)` applies it to the same base model.
"""

from __future__ import annotations

import argparse


def _erase_methods(subparsers) -> argparse._SubParsersAction:
    """The sub-commands action of `osmos erase`, created on first use (SPM adds `spm` beside)."""
    erase = subparsers.choices.get("erase")
    if erase is None:
        erase = subparsers.add_parser("erase", help="concept erasure (SPM adapters, UCE / RECE closed-form edits)")
    for action in erase._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return erase.add_subparsers(dest="erase_method", required=True)


def add_parser(subparsers) -> None:
    """Add `erase uce` and `erase rece` to the top-level sub-commands of the osmos parser."""
    methods = _erase_methods(subparsers)
    for method, help_text in (
        ("uce", "Unified Concept Editing: one closed-form edit of every cross-attention K/V"),
        ("rece", "RECE: UCE, then epochs erasing derived embeddings that regenerate the concept"),
    ):
        p = methods.add_parser(method, help=help_text)
        p.add_argument("--model", required=True, help="diffusers pipeline folder on disk (SD 1.x / 2.x / XL)")
        p.add_argument("--concept", required=True, nargs="+", help="concept prompt(s) to erase")
        p.add_argument("--guide", nargs="+", default=[" "], help="guide prompt, or one per concept (default ' ')")
        p.add_argument("--preserve", nargs="*", default=[], help="prompts whose keys/values are to be kept")
        p.add_argument("--lambda", dest="lambda_", type=float, default=0.5, help="weight-closeness term (0.5)")
        p.add_argument("--eta-e", type=float, default=1.0, help="erasure term weight (1.0)")
        p.add_argument("--eta-p", type=float, default=1.0, help="preservation term weight (1.0)")
        p.add_argument("--tokens", choices=("all", "last_subject"), default="all", help="token rows to edit")
        p.add_argument("--device", default="cpu", help="torch device for the edit (cpu)")
        p.add_argument("--out", required=True, help="output .safetensors file with the edited weights")
        if method == "rece":
            p.add_argument("--epochs", type=int, default=2, help="RECE epochs (2)")
            p.add_argument("--lambda-reg", type=float, default=1e-3,
                           help="ridge weight of the derivation: 0.1 nudity / easy objects, 1e-3 styles (1e-3)")
            p.add_argument("--rece-guide", default=" ", help="guide of each RECE epoch: ' ' or 'art' (' ')")
        p.set_defaults(func=_run, closed_form_method=method)


def _run(args) -> int:
    from diffusers import DiffusionPipeline

    from osmos.erase.closed_form import rece_edit, uce_edit
    from osmos.erase.edit_file import save_edit
    from osmos.erase.text_encoding import pipeline_text_encoding

    pipe = DiffusionPipeline.from_pretrained(args.model, local_files_only=True).to(args.device)
    encoding = pipeline_text_encoding(pipe)
    common = dict(erase=args.concept, guide=args.guide, preserve=args.preserve, lambda_=args.lambda_,
                  eta_e=args.eta_e, eta_p=args.eta_p, tokens=args.tokens)
    if args.closed_form_method == "uce":
        edit = uce_edit(pipe.unet, encoding, **common)
    else:
        edit = rece_edit(pipe.unet, encoding, **common, epochs=args.epochs, lambda_reg=args.lambda_reg,
                         rece_guide=args.rece_guide)
    save_edit(edit, pipe.unet, args.out, base_model=str(args.model))
    print(f"{args.closed_form_method}: edited {len(edit.layer_names)} cross-attention K/V layers "
          f"for {', '.join(args.concept)}; wrote {args.out}")
    return 0
