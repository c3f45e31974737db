"""Persistent checkpoints: the manager flushes published snapshots to disk in the background.

The last line of defence: when a stripe loses more than m nodes, or a snapshot fails its
checksums and nothing can rebuild it, ``restore_or_init`` falls back to the newest persistent
checkpoint (and says so loudly). The directory should therefore be on storage that outlives a
node (a shared file system) for node losses; local disk covers manager crashes.

Files, per rank: ``<directory>/rank<r>/step<012d>.safetensors`` (every tensor of the snapshot
under its dotted path, ``model.0.weight``, ``optimizer.state.0.exp_avg``, ..., plus the pickled
state structure, RNG states and user state as the uint8 tensor ``__osmos_state__``) and
``step<012d>.json`` (step, rank, job id, layout: name, dtype, shape, file offset, byte count and
CRC-32C of every tensor). The JSON is the commit record: both files are written under temporary
names, fsynced, then renamed, the safetensors file first, so a checkpoint without its JSON
(a flush cut short) is never read. The CRC-32C of every tensor is recomputed from the shared
memory while it is written and compared with the snapshot's: a corrupted snapshot is never
persisted. The newest ``keep`` checkpoints of each rank are kept.

``Flusher`` runs in the manager process: ``published`` is called for each published snapshot;
every ``every``-th one of a rank makes a flush due, and the flush thread writes the rank's newest
published snapshot. While it does, that slot is pinned (the manager hands the trainer another
slot, creating a third one if needed), so the trainer never waits for the disk.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from osmos.ft.checksum import copy_with_crc32c, crc32c

FORMAT = "osmos.ft.persist/1"
STATE_TENSOR = "__osmos_state__"
_CHUNK = 4 << 20  # bytes checksummed then written at a time (stays in cache between the two)
_STEP_FILE = re.compile(r"step(\d{12})\.json")
_SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16", "uint32": "U32",
    "uint64": "U64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


@dataclass(frozen=True)
class PersistConfig:
    """Where and how often a manager flushes snapshots to disk.

    Args:
        directory: root directory (created 0700 if missing).
        every: flush every ``every``-th published snapshot of each rank (1 = each one, if the disk
            keeps up; a flush that is due while one runs takes the newest snapshot once it ends).
        keep: persistent checkpoints kept per rank (older ones are deleted after a new one commits).
        fsync: fsync files and directory before and after the rename (durable across power loss).
    """

    directory: str
    every: int = 1
    keep: int = 2
    fsync: bool = True

    def __post_init__(self):
        for name in ("every", "keep"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")


def rank_dir(directory: str, rank: int | str) -> str:
    return os.path.join(directory, f"rank{rank}")


def checkpoint_paths(directory: str, rank: int | str, step: int) -> tuple[str, str]:
    """(safetensors path, JSON path) of rank ``rank``'s checkpoint of ``step``."""
    base = os.path.join(rank_dir(directory, rank), f"step{step:012d}")
    return base + ".safetensors", base + ".json"


def list_checkpoints(directory: str, rank: int | str) -> list[int]:
    """Steps of the committed (JSON present) persistent checkpoints of ``rank``, newest first."""
    try:
        names = os.listdir(rank_dir(directory, rank))
    except FileNotFoundError:
        return []
    return sorted((int(m.group(1)) for m in map(_STEP_FILE.fullmatch, names) if m), reverse=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FlushAborted(Exception):
    """The manager is shutting down; the temporary files were removed."""


def write_checkpoint(record: dict, raw: np.ndarray, config: PersistConfig, rank: int | str, job_id: str,
                     stop: threading.Event | None = None) -> str:
    """Write the snapshot ``record`` whose slot bytes are ``raw`` (uint8, read-only is fine) as a
    persistent checkpoint of ``rank``; returns the JSON path. Raises ValueError (nothing written)
    when a tensor's bytes no longer match the snapshot's CRC-32C, FlushAborted when ``stop`` is
    set meanwhile."""
    d = rank_dir(config.directory, rank)
    os.makedirs(d, mode=0o700, exist_ok=True)
    st_path, js_path = checkpoint_paths(config.directory, rank, record["step"])
    off, n_state, state_crc = record["skeleton"]
    spans = [(e.get("name", f"tensor{i}"), e["offset"], e["nbytes"], e["crc32c"], e)
             for i, e in enumerate(_with_crcs(record))] + [(STATE_TENSOR, off, n_state, state_crc, None)]
    header, pos, layout = {"__metadata__": {"format": FORMAT, "step": str(record["step"]), "rank": str(rank)}}, 0, []
    for name, _, nbytes, crc, e in spans:
        dtype = _SAFETENSORS_DTYPES.get(e["dtype"]) if e is not None else "U8"
        shape = e["shape"] if dtype is not None and e is not None else [nbytes]
        header[name] = {"dtype": dtype or "U8", "shape": shape, "data_offsets": [pos, pos + nbytes]}
        layout.append({"name": name, "nbytes": nbytes, "crc32c": crc,
                       **({"dtype": e["dtype"], "shape": e["shape"]} if e is not None else {})})
        pos += nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    pos = 8 + len(hbytes)
    for entry in layout:
        entry["file_offset"] = pos
        pos += entry["nbytes"]
    tag = f".{secrets.token_hex(4)}.tmp"
    tmp_st, tmp_js = st_path + tag, js_path + tag
    try:
        fd = os.open(tmp_st, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(len(hbytes).to_bytes(8, "little") + hbytes)
            for name, start, nbytes, want, _ in spans:
                crc = 0
                for a in range(start, start + nbytes, _CHUNK):
                    if stop is not None and stop.is_set():
                        raise FlushAborted()
                    chunk = raw[a: min(a + _CHUNK, start + nbytes)]
                    crc = crc32c(chunk, crc)
                    f.write(chunk.data)
                if crc != want:
                    raise ValueError(f"{name} of the step-{record['step']} snapshot fails its checksum; not persisted")
            f.flush()
            if config.fsync:
                os.fsync(f.fileno())
        meta = {"format": FORMAT, "step": record["step"], "rank": rank, "job_id": job_id,
                "safetensors": os.path.basename(st_path), "bytes": pos, "written_at": time.time(),
                "layout": layout}
        fd = os.open(tmp_js, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
            f.flush()
            if config.fsync:
                os.fsync(f.fileno())
        os.replace(tmp_st, st_path)
        os.replace(tmp_js, js_path)  # the commit
        if config.fsync:
            _fsync_dir(d)
    finally:
        for p in (tmp_st, tmp_js):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
    prune(config.directory, rank, config.keep)
    return js_path


def _with_crcs(record: dict) -> list[dict]:
    return [{**e, "crc32c": c} for e, c in zip(record["layout"], record["crc32c"])]


def prune(directory: str, rank: int | str, keep: int, newer_than: int | None = None) -> None:
    """Delete all but the newest ``keep`` checkpoints of ``rank`` (and, with ``newer_than``, every
    checkpoint of a later step: a recovery rolled the job back). The JSON goes first."""
    steps = list_checkpoints(directory, rank)
    doomed = steps[keep:] + ([s for s in steps if s > newer_than] if newer_than is not None else [])
    for step in set(doomed):
        st_path, js_path = checkpoint_paths(directory, rank, step)
        for p in (js_path, st_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


def remove_stale_temporaries(directory: str, rank: int | str) -> None:
    """Remove ``*.tmp`` files left by a manager killed mid-flush."""
    d = rank_dir(directory, rank)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(".tmp"):
            try:
                os.unlink(os.path.join(d, name))
            except FileNotFoundError:
                pass


def read_checkpoint(directory: str, rank: int | str, step: int, nthreads: int | None = None) -> dict:
    """Read and verify rank ``rank``'s persistent checkpoint of ``step``: the state dict
    ({"step", "model", "optimizer", "rng", "extra"}). Raises ValueError naming the first tensor
    whose CRC-32C does not match."""
    from osmos.ft.snapshot import unflatten

    st_path, js_path = checkpoint_paths(directory, rank, step)
    with open(js_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT or meta["step"] != step:
        raise ValueError(f"{js_path} is not an {FORMAT} checkpoint of step {step}")
    layout = meta["layout"]
    tensors = [torch.empty(e["shape"], dtype=getattr(torch, e["dtype"])) for e in layout[:-1]]
    state = bytearray(layout[-1]["nbytes"])
    raw = np.memmap(st_path, dtype=np.uint8, mode="r")
    try:
        if raw.size != meta["bytes"]:
            raise ValueError(f"{st_path} holds {raw.size} bytes, its record says {meta['bytes']}")
        spans = [raw[e["file_offset"]: e["file_offset"] + e["nbytes"]] for e in layout]
        crcs = copy_with_crc32c(spans, tensors + [state], nthreads)
    finally:
        del raw
    for e, got in zip(layout, crcs):
        if got != e["crc32c"]:
            raise ValueError(f"{e['name']} of the persistent checkpoint {st_path} fails its checksum")
    return unflatten(pickle.loads(state), tensors)


class Flusher:
    """The manager's background flush thread (see the module docstring).

    ``state`` is the manager's ``_ManagerState``: the flusher takes ``state.lock`` to read a rank's
    published record and to pin / unpin its slot (``_RankSlots.pinned``).
    """

    def __init__(self, state, config: PersistConfig):
        self.state, self.config = state, config
        self.counts: dict[str, int] = {}
        self.due: list[str] = []  # ranks with a flush due, oldest first
        self.busy: str | None = None
        self.errors: dict[str, str] = {}
        self._cleaned: set[str] = set()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="osmos-flush", daemon=True)
        self._thread.start()

    def published(self, rank: str) -> None:
        """A snapshot of ``rank`` was published (only the flusher's own lock is taken)."""
        if not rank.isdigit():  # parity blocks are not persisted
            return
        with self._cond:
            self.counts[rank] = self.counts.get(rank, 0) + 1
            if self.counts[rank] % self.config.every == 0 and rank not in self.due:
                self.due.append(rank)
                self._cond.notify()

    def status(self, rank: str) -> dict:
        with self._cond:
            pending = rank in self.due or self.busy == rank
            error = self.errors.get(rank)
        return {"persisted": list_checkpoints(self.config.directory, rank), "pending": pending, "flush_error": error}

    def rolled_back(self, rank: str, step: int) -> None:
        """A recovery rolled ``rank`` back to ``step``: drop its checkpoints of later steps.
        Call it without holding ``state.lock`` (it waits for a flush of that rank to end)."""
        with self._cond:
            while self.busy == rank:  # not racing a flush of the abandoned timeline
                self._cond.wait(0.05)
            prune(self.config.directory, rank, self.config.keep, newer_than=step)

    def stop(self) -> None:
        """Abort a flush in progress (its temporary files are removed) and end the thread."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self.due and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                rank = self.busy = self.due.pop(0)
            try:
                self._flush(rank)
                self.errors.pop(rank, None)
            except FlushAborted:
                return
            except Exception as exc:  # noqa: BLE001 - keep the manager alive; reported through status
                self.errors[rank] = f"{type(exc).__name__}: {exc}"
                print(f"osmos.ft manager: flushing rank {rank} failed: {self.errors[rank]}", file=sys.stderr,
                      flush=True)
            finally:
                with self._cond:
                    self.busy = None
                    self._cond.notify_all()

    def _flush(self, rank: str) -> None:
        from osmos.ft.snapshot import _Mapping

        with self.state.lock:
            slots = self.state.ranks.get(rank)
            record = None if slots is None else slots.published
            if record is None:
                return
            slots.pinned.add(record["slot"])
        try:
            if rank not in self._cleaned:
                remove_stale_temporaries(self.config.directory, rank)
                self._cleaned.add(rank)
            if record["step"] in list_checkpoints(self.config.directory, rank):
                return  # already on disk (e.g. a rebuilt copy of a persisted step)
            m = _Mapping(record["path"], record["size"], writable=False)
            try:
                raw = np.frombuffer(m.mm, dtype=np.uint8)
                write_checkpoint(record, raw, self.config, int(rank), self.state.job_id, self._stop)
            finally:
                raw = None
                m.close()
        finally:
            with self.state.lock:
                slots.pinned.discard(record["slot"])
