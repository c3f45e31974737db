"""The `osmos` command (also `python -m osmos`)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _info(args) -> int:
    if args.json:
        from osmos.info import backends

        print(json.dumps(backends(), indent=2))
    else:
        from osmos.info import info

        info()
    return 0


def _demo(args) -> int:
    from osmos.tour import run

    run(args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osmos", description="osmos command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions and which backends are built and usable")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)
    p = sub.add_parser("demo", help="the tour: every tool on the embedded default, with a summary table")
    p.add_argument("--out", default="out/demo", help="folder for the summary and PNGs")
    p.set_defaults(func=_demo)
    from osmos.erase.cli import add_generate_parser
    from osmos.erase.cli import add_parser as add_erase
    from osmos.ft.cli import add_parser as add_ft
    from osmos.replication.cli import add_parser as add_replication

    add_erase(sub)
    add_generate_parser(sub)
    add_ft(sub)
    add_replication(sub)
    return parser


# What a command raises for a bad input (a path, a value): printed as one line, not a traceback
# (OSMOS_TRACEBACK=1 shows the traceback anyway).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               KeyError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        if os.environ.get("OSMOS_TRACEBACK"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"osmos: error: {message}", file=sys.stderr)
        return 2
