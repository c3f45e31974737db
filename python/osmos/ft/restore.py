"""Start-up recovery: reattach to the local manager and restore the newest published snapshot."""

from __future__ import annotations

import logging
import os
import pickle
import warnings
import zlib
from typing import Any

import torch

from osmos.ft.manager import ManagerClient
from osmos.ft.snapshot import _Mapping, set_rng_state, unflatten, view_in

log = logging.getLogger("osmos.ft")


class SnapshotCorrupted(RuntimeError):
    """A stored shard does not match its checksum."""


def read_snapshot(record: dict) -> dict:
    """Read and verify a published snapshot: the state dict (tensors copied out of shared memory).

    Raises SnapshotCorrupted naming the first shard whose CRC-32 does not match.
    """
    m = _Mapping(record["path"], record["size"], writable=False)
    try:
        buf = torch.frombuffer(bytearray(m.mm), dtype=torch.uint8)  # private copy, then verify
    finally:
        m.close()
    tensors = []
    for i, (entry, crc) in enumerate(zip(record["layout"], record["crc32"])):
        t = view_in(buf, entry)
        if zlib.crc32(memoryview(t.view(-1).view(torch.uint8).numpy())) != crc:
            raise SnapshotCorrupted(f"shard {i} ({entry}) of the step-{record['step']} snapshot fails its checksum")
        tensors.append(t.clone())  # own storage: optimizer.load_state_dict may keep these tensors
    off, n, crc = record["skeleton"]
    skeleton = bytes(buf[off: off + n].numpy())
    if zlib.crc32(skeleton) != crc:
        raise SnapshotCorrupted(f"the state structure of the step-{record['step']} snapshot fails its checksum")
    return unflatten(pickle.loads(skeleton), tensors)


def _apply(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])


def restore_or_init(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    client: ManagerClient | None = None, rank: int | None = None,
                    checkpoint: str | None = None) -> tuple[int, Any]:
    """Restore the newest published snapshot of this rank, if any.

    Returns ``(next_step, extra_state)``: the step to resume from (the snapshot's step + 1) and the
    user state stored with it. With no snapshot: ``(0, None)``, model and optimizer untouched.
    On a checksum failure: if ``checkpoint`` (a file written by ``save_checkpoint`` /
    ``torch.save`` of the same dict layout) is given, load it and warn loudly; otherwise raise
    SnapshotCorrupted. Bitwise: tensors are restored by copy from the stored bytes.
    """
    client = client or ManagerClient.from_env()
    if client is None:
        raise RuntimeError("no snapshot manager in the environment (OSMOS_FT_JOB_ID/SOCKET/TOKEN)")
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    record = client.request("latest", rank=rank)["snapshot"]
    if record is None:
        return 0, None
    try:
        state = read_snapshot(record)
    except SnapshotCorrupted as exc:
        if checkpoint is None:
            raise
        msg = f"osmos.ft: {exc}; falling back to the persistent checkpoint {checkpoint}"
        log.error(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        state = torch.load(checkpoint, weights_only=False)
    _apply(state, model, optimizer)
    return state["step"] + 1, state["extra"]


def save_checkpoint(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    extra: Any = None) -> None:
    """A persistent checkpoint in the layout ``restore_or_init`` falls back to."""
    from osmos.ft.snapshot import rng_state

    torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": rng_state(), "extra": extra}, path)
