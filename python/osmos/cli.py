"""The `osmos` command (also `python -m osmos`)."""

from __future__ import annotations

import argparse
import json


def _info(args) -> int:
    if args.json:
        from osmos.info import backends

        print(json.dumps(backends(), indent=2))
    else:
        from osmos.info import info

        info()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osmos", description="osmos command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions and which backends are built and usable")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
