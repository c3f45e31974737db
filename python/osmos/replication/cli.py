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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--descriptor", default="pixels",
                   help="'pixels' (training-free baseline) or a TorchScript / torch.export .pt2 file (e.g. SSCD)")
    p.add_argument("--image-size", type=int, default=128, help="images are resized to this square size")
    p.add_argument("--input-size", type=int, default=224, help="input size of a model descriptor")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds `replication scan` and `replication index` to an argparse subparsers object."""
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m osmos.replication.cli replication scan ...`)."""
    parser = argparse.ArgumentParser(prog="osmos")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
