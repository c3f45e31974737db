"""Start-up recovery: reattach to the local manager and restore the newest published snapshot."""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from typing import Any

import numpy as np
import torch

from osmos.ft.checksum import copy_with_crc32c
from osmos.ft.manager import ManagerClient
from osmos.ft.snapshot import _Mapping, set_rng_state, unflatten

log = logging.getLogger("osmos.ft")


class SnapshotCorrupted(RuntimeError):
    """A stored shard does not match its checksum."""


def _checksum_pass(record: dict, dst: list | None, nthreads: int | None) -> list[int]:
    """CRC-32C of every shard and of the structure of a published snapshot (in that order), in one
    read pass over its slot, copying span i into dst[i] when dst is given."""
    m = _Mapping(record["path"], record["size"], writable=False)
    raw = np.frombuffer(m.mm, dtype=np.uint8)
    off, n, _ = record["skeleton"]
    spans = [raw[e["offset"]: e["offset"] + e["nbytes"]] for e in record["layout"]] + [raw[off: off + n]]
    try:
        return copy_with_crc32c(spans, dst, nthreads)
    finally:
        del raw, spans
        m.close()


def read_snapshot(record: dict, nthreads: int | None = None) -> dict:
    """Read and verify a published snapshot: the state dict (tensors copied out of shared memory).

    Each tensor is copied into its own new storage and checksummed in the same pass. Raises
    SnapshotCorrupted naming the first shard whose CRC-32C does not match.
    """
    layout = record["layout"]
    tensors = [torch.empty(e["shape"], dtype=getattr(torch, e["dtype"])) for e in layout]
    skeleton = bytearray(record["skeleton"][1])
    crcs = _checksum_pass(record, tensors + [skeleton], nthreads)
    for i, (entry, got, want) in enumerate(zip(layout, crcs, record["crc32c"])):
        if got != want:
            raise SnapshotCorrupted(f"shard {i} ({entry}) of the step-{record['step']} snapshot fails its checksum")
    if crcs[-1] != record["skeleton"][2]:
        raise SnapshotCorrupted(f"the state structure of the step-{record['step']} snapshot fails its checksum")
    return unflatten(pickle.loads(skeleton), tensors)


def snapshot_is_intact(record: dict, nthreads: int | None = None) -> bool:
    """True when every shard and the structure of a published snapshot match their CRC-32C
    (one read pass, nothing copied)."""
    return _checksum_pass(record, None, nthreads) == list(record["crc32c"]) + [record["skeleton"][2]]


def _apply(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])


def restore_or_init(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    client: ManagerClient | None = None, rank: int | None = None,
                    checkpoint: str | None = None, protector: Any = None) -> tuple[int, Any]:
    """Restore the newest published snapshot of this rank, if any.

    Returns ``(next_step, extra_state)``: the step to resume from (the snapshot's step + 1) and the
    user state stored with it. With no snapshot: ``(0, None)``, model and optimizer untouched.
    With a ``protector`` (``osmos.ft.stripes.StripeProtector``; a collective, call it on every
    rank): snapshots lost with a node are first rebuilt from the stripes' survivors, and every
    rank restores the same step, the newest one the whole job can rebuild.
    On a checksum failure, or when a protector finds no step it can rebuild: if ``checkpoint``
    (a file written by ``save_checkpoint`` / ``torch.save`` of the same dict layout) is given,
    load it and warn loudly; otherwise raise SnapshotCorrupted. Bitwise: tensors are restored by
    copy from the stored bytes.
    """
    client = client or ManagerClient.from_env()
    if client is None:
        raise RuntimeError("no snapshot manager in the environment (OSMOS_FT_JOB_ID/SOCKET/TOKEN)")
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    if protector is None:
        record = client.request("latest", rank=rank)["snapshot"]
    else:
        try:
            target = protector.recover(client, rank)
        except SnapshotCorrupted as exc:  # every rank decides alike: all fall back together
            state = _fall_back(checkpoint, exc)
            _apply(state, model, optimizer)
            return state["step"] + 1, state["extra"]
        held = client.request("complete", rank=rank)["snapshots"] if target is not None else []
        record = next((r for r in held if r["step"] == target), None)
    if record is None:
        return 0, None
    try:
        state = read_snapshot(record)
    except SnapshotCorrupted as exc:
        state = _fall_back(checkpoint, exc)
    _apply(state, model, optimizer)
    return state["step"] + 1, state["extra"]


def _fall_back(checkpoint: str | None, exc: SnapshotCorrupted) -> dict:
    """Load the persistent checkpoint after ``exc``, loudly; re-raise ``exc`` when there is none."""
    if checkpoint is None:
        raise exc
    msg = f"osmos.ft: {exc}; falling back to the persistent checkpoint {checkpoint}"
    log.error(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return torch.load(checkpoint, weights_only=False)


def save_checkpoint(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    extra: Any = None) -> None:
    """A persistent checkpoint in the layout ``restore_or_init`` falls back to."""
    from osmos.ft.snapshot import rng_state

    torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": rng_state(), "extra": extra}, path)
