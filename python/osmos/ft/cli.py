"""`osmos ft manager`: run a snapshot manager in the foreground (hook ``add_parser`` into osmos.cli)."""

from __future__ import annotations

import os
import secrets
import tempfile


def _manager(args) -> int:
    from osmos.ft.manager import ENV_JOB, ENV_PERSIST, ENV_SOCKET, ENV_TOKEN, persist_config, serve

    persist = persist_config(args)
    token = os.environ.get(ENV_TOKEN) or secrets.token_hex(16)
    socket_path = os.path.join(tempfile.mkdtemp(prefix="osmos_ft_ctl_"), "manager.sock")
    persist_env = f" {ENV_PERSIST}={persist.directory}" if persist is not None else ""
    print(f"export {ENV_JOB}={args.job_id} {ENV_SOCKET}={socket_path} {ENV_TOKEN}={token}{persist_env}", flush=True)
    serve(args.job_id, token, socket_path, persist)
    return 0


def add_parser(subparsers) -> None:
    """Add ``ft manager --job-id ID`` to the osmos command's subparsers."""
    ft = subparsers.add_parser("ft", help="fault tolerance: in-memory snapshot manager")
    sub = ft.add_subparsers(dest="ft_command", required=True)
    p = sub.add_parser("manager", help="run this node's snapshot manager until the job ends (prints the env to export)")
    p.add_argument("--job-id", required=True)
    from osmos.ft.manager import add_persist_arguments

    add_persist_arguments(p)
    p.set_defaults(func=_manager)
