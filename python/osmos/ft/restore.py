"""Start-up recovery: reattach to the local manager and restore the newest snapshot, rebuilding
lost ones from stripe parity, or falling back to the newest persistent checkpoint (loudly)."""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from osmos.ft.checksum import copy_with_crc32c
from osmos.ft.manager import ENV_PERSIST, ManagerClient
from osmos.ft.persist import checkpoint_paths, list_checkpoints, read_checkpoint
from osmos.ft.snapshot import _Mapping, set_rng_state, unflatten

log = logging.getLogger("osmos.ft")


class SnapshotCorrupted(RuntimeError):
    """A stored shard does not match its checksum, or lost snapshots cannot be rebuilt.
    ``step``: the newest in-memory snapshot step that is lost (None when unknown)."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


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


def _gather(group, obj) -> list:
    """``[obj]`` alone, or every rank's ``obj`` of the process group."""
    if group is None:
        return [obj]
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def restore_or_init(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    client: ManagerClient | None = None, rank: int | None = None,
                    checkpoint: str | None = None, protector: Any = None, group: Any = None) -> tuple[int, Any]:
    """Restore the newest snapshot of this rank, if any.

    Returns ``(next_step, extra_state)``: the step to resume from (the snapshot's step + 1) and the
    user state stored with it. With no snapshot and no persistent checkpoint: ``(0, None)``, model
    and optimizer untouched. Bitwise: tensors are restored by copy from the stored bytes, whose
    CRC-32C are verified on the way.

    A collective when torch.distributed is initialised (every rank of ``group``, default the
    whole job, or of the protector's group must call it): every rank restores the same step, the
    newest one every rank holds intact (each manager keeps two whole snapshots per rank, so a
    crash between two ranks' publications rolls back one step), and managers forget newer ones.
    With a ``protector`` (``osmos.ft.stripes.StripeProtector``), snapshots lost with a node or
    failing their checksums are first rebuilt from the stripes' survivors.

    Fallback, loud (``logging.error`` on logger ``osmos.ft`` and a RuntimeWarning naming the
    step lost): when snapshots are lost beyond repair (more than m nodes of a stripe, a checksum
    failure with no redundancy) or the manager holds none (it was restarted with its node),
    restore the newest persistent checkpoint that every rank has intact: ``checkpoint`` is the
    directory the managers flush to (default ``$OSMOS_FT_PERSIST_DIR``, set by
    ``start_manager(persist_dir=...)``), or a file written by ``save_checkpoint``. With nothing
    to fall back to, a loss raises SnapshotCorrupted.
    """
    client = client or ManagerClient.from_env()
    if client is None:
        raise RuntimeError("no snapshot manager in the environment (OSMOS_FT_JOB_ID/SOCKET/TOKEN)")
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    checkpoint = os.environ.get(ENV_PERSIST) if checkpoint is None else checkpoint
    if protector is not None:
        group = protector.group
    elif group is None and dist.is_available() and dist.is_initialized():
        group = dist.group.WORLD
    if protector is not None:
        try:
            target = protector.recover(client, rank)
        except SnapshotCorrupted as exc:  # every rank decides alike: all fall back together
            state = _fall_back(client, rank, group, checkpoint, str(exc), exc.step)
        else:
            if target is None:
                state = _fall_back(client, rank, group, checkpoint, "no in-memory snapshot on any rank", None)
            else:
                held = client.request("complete", rank=rank)["snapshots"]
                state = read_snapshot(next(r for r in held if r["step"] == target))
    else:
        state = _agreed_snapshot(client, rank, group, checkpoint)
    if state is None:
        return 0, None
    _apply(state, model, optimizer)
    return state["step"] + 1, state["extra"]


def _agreed_snapshot(client: ManagerClient, rank: int, group: Any, checkpoint: str | None) -> dict | None:
    """The newest snapshot step every rank of ``group`` holds intact, read (None: fresh start)."""
    held = client.request("complete", rank=rank)["snapshots"]  # newest first
    everyone = _gather(group, [r["step"] for r in held])
    newest = max((s for steps in everyone for s in steps), default=None)
    common = sorted(set.intersection(*map(set, everyone)), reverse=True)
    reason = "no in-memory snapshot" if newest is None else "no snapshot step is held by every rank"
    failures: list[str] = []
    for step in common:
        try:
            state, why = read_snapshot(next(r for r in held if r["step"] == step)), None
        except SnapshotCorrupted as exc:
            state, why = None, f"rank {rank}: {exc}"
        whys = [w for w in _gather(group, why) if w is not None]
        if not whys:
            if step != held[0]["step"]:
                client.request("keep_until", rank=rank, step=step)
            if step != newest:
                log.info("osmos.ft: resuming from step %d, the newest snapshot every rank holds (newest: %d)",
                         step, newest)
            if reason.startswith("a snapshot fails"):
                _warn(f"osmos.ft: rank {rank}: {reason}; restoring the older in-memory snapshot of step {step}")
            return state
        failures += whys
        reason = "a snapshot fails its checksums with no redundancy (" + "; ".join(failures) + ")"
    return _fall_back(client, rank, group, checkpoint, reason, newest)


def _warn(msg: str) -> None:
    log.error(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=4)


def _fall_back(client: ManagerClient, rank: int, group: Any, checkpoint: str | None, reason: str,
               lost_step: int | None) -> dict | None:
    """The newest persistent checkpoint every rank holds intact, loudly; None (fresh start) when
    nothing was ever saved; raises SnapshotCorrupted when snapshots were lost and nothing is on disk."""
    state, where = None, None
    if checkpoint is not None and os.path.isfile(checkpoint):  # a single save_checkpoint file
        state, where = torch.load(checkpoint, weights_only=False), checkpoint
    elif checkpoint is not None:
        everyone = _gather(group, list_checkpoints(checkpoint, rank))
        for step in sorted(set.intersection(*map(set, everyone)), reverse=True):
            try:
                state, why = read_checkpoint(checkpoint, rank, step), None
            except (OSError, ValueError) as exc:
                state, why = None, f"rank {rank}: {exc}"
            whys = [w for w in _gather(group, why) if w is not None]
            if not whys:
                where = checkpoint_paths(checkpoint, rank, step)[0]
                break
            _warn(f"osmos.ft: persistent checkpoint of step {step} unusable ({'; '.join(whys)}); trying an older one")
            state = None
    if state is None:
        if lost_step is None and reason.startswith("no in-memory snapshot"):
            return None  # nothing was ever snapshotted or saved: a fresh start
        raise SnapshotCorrupted(f"{reason}; no persistent checkpoint to fall back to"
                                + ("" if checkpoint else " (no persist directory configured)"), lost_step)
    lost = (f"the in-memory snapshot of step {lost_step} is LOST; steps {state['step'] + 1}..{lost_step} "
            "will be trained again" if lost_step is not None and lost_step > state["step"]
            else "in-memory snapshots are lost")
    _warn(f"osmos.ft: rank {rank}: {reason}; {lost}; falling back to the persistent checkpoint of step "
          f"{state['step']} ({where})")
    client.request("keep_until", rank=rank, step=state["step"])  # forget newer in-memory / on-disk states
    return state


def save_checkpoint(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    extra: Any = None) -> None:
    """A persistent checkpoint file in the layout ``restore_or_init`` falls back to (an
    alternative to the managers' background flushes)."""
    from osmos.ft.snapshot import rng_state

    torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": rng_state(), "extra": extra}, path)
