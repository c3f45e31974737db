"""`osmos replication ...` commands. The lead's osmos/cli.py hooks them in with
`osmos.replication.cli.add_parser(subparsers)`."""

from __future__ import annotations

import argparse


def _scan(args) -> int:
    from osmos.replication.descriptors import descriptor_from_spec
    from osmos.replication.index import EmbeddingIndex
    from osmos.replication.scan import scan

    descriptor = descriptor_from_spec(args.descriptor, input_size=args.input_size)
    reference = EmbeddingIndex.load(args.reference_index) if args.reference_index else args.reference
    report = scan(args.generated, reference, descriptor, threshold=args.threshold, out=args.out,
                  batch_size=args.batch_size, image_size=args.image_size, worst=args.worst,
                  progress=not args.quiet)
    print(report.summary())
    print(f"wrote {args.out}/report.json, matches.csv, worst_pairs.png")
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}")
    return 0


def _index(args) -> int:
    from osmos.replication.descriptors import descriptor_from_spec
    from osmos.replication.index import build_index

    descriptor = descriptor_from_spec(args.descriptor, input_size=args.input_size)
    index = build_index(args.images, descriptor, args.batch_size, args.image_size, progress=not args.quiet,
                        prefix="reference")
    index.save(args.out, dtype=args.dtype)
    print(f"indexed {len(index)} images ({len(index.skipped)} skipped) into {args.out}")
    return 0


def _read_prompts(path: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    from pathlib import Path

    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise SystemExit(f"no prompts in {path}")
    return prompts


def _score(args) -> int:
    from osmos.replication.denoisers import load_pipeline
    from osmos.replication.memorization import score_prompts

    pipe = load_pipeline(args.model, base=args.base)
    prompts = _read_prompts(args.prompts)
    calibration = _read_prompts(args.calibration_prompts) if args.calibration_prompts else None
    result = score_prompts(pipe, prompts, threshold=args.threshold, calibration_prompts=calibration,
                           quantile=args.quantile, method=args.method, steps=args.steps, num_samples=args.samples,
                           num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance,
                           seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)
    result.save(args.out, model=args.model)
    print(result.summary())
    print(f"wrote {args.out}/scores.json, scores.csv")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--descriptor", default="pixels",
                   help="'pixels' (training-free baseline) or a TorchScript / torch.export .pt2 file (e.g. SSCD)")
    p.add_argument("--image-size", type=int, default=128, help="images are resized to this square size")
    p.add_argument("--input-size", type=int, default=224, help="input size of a model descriptor")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds `replication scan`, `replication index` and `replication score` to an argparse subparsers
    object."""
    parser = subparsers.add_parser("replication", help="detect training-data replication in generated images")
    sub = parser.add_subparsers(dest="replication_command", required=True)

    p = sub.add_parser("scan", help="top-1 reference match of every generated image, summary and grid")
    p.add_argument("--generated", required=True, help="folder of generated images")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--reference", help="folder of reference (training) images")
    ref.add_argument("--reference-index", help="folder of an index saved by `osmos replication index`")
    p.add_argument("--out", required=True, help="folder for report.json, matches.csv, worst_pairs.png")
    p.add_argument("--threshold", type=float, default=0.5, help="similarity counted as replication")
    p.add_argument("--worst", type=int, default=8, help="pairs in the grid")
    _common(p)
    p.set_defaults(func=_scan)

    p = sub.add_parser("index", help="describe a reference folder once; save a memory-mappable index")
    p.add_argument("--images", required=True, help="folder of reference images")
    p.add_argument("--out", required=True, help="index folder (features.npy + index.json)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    _common(p)
    p.set_defaults(func=_index)
    p = sub.add_parser("score", help="memorization score of each prompt at generation time (no reference set)")
    p.add_argument("--model", required=True,
                   help="zoo model name (e.g. shapes-memorized), zoo-format .safetensors, or a diffusers pipeline folder")
    p.add_argument("--base", default="shapes-unet", help="zoo model whose architecture a bare .safetensors has")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--out", required=True, help="folder for scores.json and scores.csv")
    thr = p.add_mutually_exclusive_group()
    thr.add_argument("--threshold", type=float, default=None, help="flag prompts scoring at or above this")
    thr.add_argument("--calibration-prompts", default=None,
                     help="file of prompts known not to be memorized: threshold = their --quantile")
    p.add_argument("--quantile", type=float, default=0.99)
    p.add_argument("--method", choices=("highpass", "magnitude"), default="highpass",
                   help="highpass: detail of the text-conditional noise (default); magnitude: its norm (Wen et al.)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps traced (default: the score's own)")
    p.add_argument("--samples", type=int, default=None, help="starting latents per prompt (default: the score's own)")
    p.add_argument("--num-inference-steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None, help="CFG scale of the traced steps (default: model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="prompts per batch")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m osmos.replication.cli replication scan ...`)."""
    parser = argparse.ArgumentParser(prog="osmos")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
