"""The trainer side: copy model, optimizer, RNG and user state into the manager's slot.

Call ``snap.step(step)`` right after ``optimizer.step()`` of training step ``step``. Every
``every`` steps it:
1. synchronously captures the small things: the state-dict structure, RNG states (python,
   numpy, torch CPU and CUDA), ``extra_state()`` and clones of the model buffers (a forward pass
   may update buffers such as BatchNorm statistics, so they cannot be read later);
2. in a background thread, copies parameters and optimizer-state tensors into the shared-memory
   slot the manager handed out and computes one CRC-32C per shard (one shard = one tensor, plus
   one for the pickled structure) in the same pass, on ``copy_threads`` threads
   (``osmos.ft.checksum.copy_with_crc32c``), then publishes the snapshot with one message.
   CUDA tensors are first copied into pinned host staging buffers on a side stream (started in
   step 1, waited for by the background thread), so the GPU copy overlaps the next step too.
3. when a ``protector`` is given (``osmos.ft.stripes.StripeProtector``), computes and places the
   cross-node parity of the published snapshot before the next snapshot may begin.

Consistency: the copy overlaps the next forward/backward, which only read the parameters.
An optimizer step pre-hook waits for the copy to finish before the optimizer writes the
parameters and its state again, so a snapshot always holds the values of a single step.

Zero-copy mode (automatic with ``osmos.ft.SnapshotAdamW``): the parameters and moments live in
the manager's slots. Before the first optimizer step after a snapshot the manager hands out a
slot (never the published one); the optimizer reads the current values and writes the new ones
straight into it at fixed offsets, checksumming them on the way when the step is expected to be
a snapshot (``osmos.ft.optim``), and the parameters are re-pointed there; later steps before the
next snapshot update that slot in place. A snapshot then only copies what the optimizer does
not write (buffers, step counters, RNG and user state: kilobytes to megabytes) into the slot's
tail and publishes it: the parameters and optimizer state are never copied (the step pays for
writing out of place and for the checksums instead; benchmarks/RESULTS.md has the costs). The published slot is only read (by the
forward pass) until another snapshot is published, so the last complete snapshot is still never
overwritten. ``close()`` moves the parameters back into private memory.
"""

from __future__ import annotations

import atexit
import mmap
import os
import pickle
import random
import threading
import weakref
from typing import Any, Callable

import numpy as np
import torch

from osmos.ft.checksum import copy_with_crc32c
from osmos.ft.manager import ManagerClient
from osmos.ft.optim import KINDS, SnapshotAdamW
from osmos.ops._common import num_threads

_ALIGN = 64


class _TensorRef:
    """Placeholder for tensor ``index`` inside the pickled state structure."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __reduce__(self):
        return (_TensorRef, (self.index,))


def _flatten(obj: Any, out: list[torch.Tensor], names: list[str], path: str = "") -> Any:
    """Replace every tensor in a nest of dicts/lists/tuples by a _TensorRef; tensors go to ``out``,
    their dotted paths in the nest (``model.0.weight``, ``optimizer.state.0.exp_avg``) to ``names``."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
        names.append(path)
        return _TensorRef(len(out) - 1)
    prefix = f"{path}." if path else ""
    if isinstance(obj, dict):
        return {k: _flatten(v, out, names, f"{prefix}{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, out, names, f"{prefix}{i}") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def unflatten(obj: Any, tensors: list[torch.Tensor]) -> Any:
    """Inverse of ``_flatten``."""
    if isinstance(obj, _TensorRef):
        return tensors[obj.index]
    if isinstance(obj, dict):
        return {k: unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    if isinstance(obj, tuple):
        return tuple(unflatten(v, tensors) for v in obj)
    return obj


def rng_state() -> dict:
    """RNG states of python, numpy, torch CPU and (when present) every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].clone())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.clone() for s in state["cuda"]])


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def layout_of(tensors: list[torch.Tensor], names: list[str] | None = None) -> tuple[list[dict], int]:
    """Byte layout of the tensors in a slot: [{offset, nbytes, dtype, shape, name}], total bytes.
    Names are made unique (a dict key holding a dot can repeat a path) by appending ``#<index>``."""
    names = list(names) if names else [f"tensor{i}" for i in range(len(tensors))]
    seen: set[str] = set()
    for i, n in enumerate(names):
        names[i] = n if n not in seen else f"{n}#{i}"
        seen.add(names[i])
    entries, off = [], 0
    for i, t in enumerate(tensors):
        nb = t.numel() * t.element_size()
        entries.append({"offset": off, "nbytes": nb, "dtype": str(t.dtype).removeprefix("torch."),
                        "shape": list(t.shape), "name": names[i]})
        off = _align(off + nb)
    return entries, off


def view_in(buf: torch.Tensor, entry: dict) -> torch.Tensor:
    """The tensor described by a layout ``entry`` as a view of the uint8 slot buffer ``buf``."""
    raw = buf[entry["offset"]: entry["offset"] + entry["nbytes"]]
    return raw.view(getattr(torch, entry["dtype"])).view(entry["shape"])


class _Mapping:
    """An mmap of a slot file, kept open while its size is unchanged. Writable mappings are
    populated up front (MAP_POPULATE: one call instead of a page fault per 4 KiB page at the
    first snapshot into them); the trainer keeps them for its lifetime, so later snapshots
    write without faults."""

    def __init__(self, path: str, size: int, writable: bool):
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if writable else 0)
            self.mm = mmap.mmap(fd, size, flags, prot)
        finally:
            os.close(fd)
        self.path, self.size = path, size
        self.buf = torch.frombuffer(self.mm, dtype=torch.uint8) if writable else None

    def close(self) -> None:
        self.buf = None
        try:
            self.mm.close()
        except BufferError:  # a view is still alive (e.g. held by a traceback): unmapped when it goes
            pass


class _CudaStaging:
    """Pinned host buffers that CUDA tensors are copied into on a side stream, reused across
    snapshots while the tensors keep their sizes."""

    def __init__(self):
        self._buffers: dict[int, torch.Tensor] = {}
        self._stream: torch.cuda.Stream | None = None

    def stage(self, tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
        """Replace every CUDA tensor by its pinned host copy (asynchronous); returns the event to
        wait for before reading the copies (None when nothing was on a GPU)."""
        cuda = [i for i, t in enumerate(tensors) if t.is_cuda]
        if not cuda:
            return tensors, None
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=tensors[cuda[0]].device)
        self._stream.wait_stream(torch.cuda.current_stream(tensors[cuda[0]].device))
        out = list(tensors)
        with torch.cuda.stream(self._stream):
            for i in cuda:
                t = tensors[i].detach()
                buf = self._buffers.get(i)
                if buf is None or buf.dtype != t.dtype or buf.shape != t.shape:
                    buf = self._buffers[i] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                buf.copy_(t, non_blocking=True)
                t.record_stream(self._stream)
                out[i] = buf
            event = torch.cuda.Event()
            event.record(self._stream)
        return out, event


class _ZeroCopy:
    """The zero-copy mode of a Snapshotter: home offsets of every parameter and moment in a slot,
    the slot the optimizer writes into, and the snapshot that publishes it."""

    def __init__(self, snap: "Snapshotter", reserve_bytes: int | None):
        self.snap, self.opt = snap, snap.optimizer
        self.home: list[dict[str, int]] = []  # per optimizer parameter: kind -> byte offset
        off = 0
        for p in self.opt.params():
            self.home.append({})
            for kind in KINDS:
                self.home[-1][kind] = off
                off = _align(off + p.numel() * p.element_size())
        self.region = off  # bytes of the home region; the copied tail follows
        self.reserve = reserve_bytes
        self.slot: dict | None = None  # {"slot", "path", "size"} handed out for the next step
        self.buf: torch.Tensor | None = None
        self.fresh = False  # the optimizer wrote into self.slot since it was handed out

    def _estimate_reserve(self) -> int:
        tensors, _, skeleton, _ = self.snap._capture(0)
        homed = {t.data_ptr() for p in self.opt.params() for t in
                 [p] + [self.opt.state[p][k] for k in KINDS[1:] if k in self.opt.state[p]]}
        tail = sum(_align(t.numel() * t.element_size()) for t in tensors if t.data_ptr() not in homed)
        return 2 * (tail + len(skeleton)) + 256 * len(self.home) + (1 << 20)

    def before_step(self) -> None:
        """Optimizer pre-hook: finish the snapshot in flight, get a writable slot unless the one
        handed out before is still unpublished (then the step updates it in place), aim the
        optimizer at it, and have it checksum its outputs when this step is expected to be a
        snapshot (a step that is not gets its checksums computed when it is published anyway)."""
        self.snap.wait()
        if self.slot is None:
            if self.reserve is None:
                self.reserve = self._estimate_reserve()
            slot = self.snap.client.request("begin", rank=self.snap.rank, nbytes=self.region + self.reserve)
            buf = self.snap._mapping(slot["path"], slot["size"]).buf
            self.slot, self.buf = slot, buf
            home = self.home

            def destination(index: int, kind: str, like: torch.Tensor) -> torch.Tensor:
                off = home[index][kind]
                return buf[off: off + like.numel() * 4].view(torch.float32).view(like.shape)

            self.opt.destination = destination
        nxt = self.snap._next_step
        self.opt.checksum = nxt is None or nxt % self.snap.every == 0
        self.fresh = False

    def after_step(self) -> None:
        self.fresh = self.slot is not None

    def take(self) -> tuple[dict, torch.Tensor, dict[int, int]]:
        """The slot to publish, its buffer and the optimizer's checksums; the next step needs a new slot."""
        out = (self.slot, self.buf, dict(self.opt.last_crc32c))
        self.slot, self.buf, self.fresh = None, None, False
        return out

    def write(self, step: int, tensors: list[torch.Tensor], names: list[str], skeleton: bytes, taken: tuple) -> None:
        """Background part of a zero-copy snapshot: tensors already in the slot keep their place
        (checksums from the optimizer), the others and the structure are copied into the tail."""
        snap = self.snap
        try:
            slot, buf, known = taken
            base, end = buf.data_ptr(), buf.data_ptr() + self.region
            layout, _ = layout_of(tensors, names)
            crcs: list[int | None] = [None] * len(tensors)
            check, tail = [], []  # in the slot without a checksum from the optimizer / copied into the tail
            off = self.region
            for i, (t, e) in enumerate(zip(tensors, layout)):
                ptr, nb = t.data_ptr(), e["nbytes"]
                if nb and t.device.type == "cpu" and t.is_contiguous() and base <= ptr and ptr + nb <= end:
                    e["offset"] = ptr - base
                    crcs[i] = known.get(ptr)
                    if crcs[i] is None:  # not written (or not checksummed) by the last step
                        check.append(i)
                else:
                    e["offset"] = off
                    off = _align(off + nb)
                    tail.append(i)
            total = off + len(skeleton)
            if total > slot["size"]:
                raise RuntimeError(f"zero-copy snapshot: the state outside the optimizer's parameters needs "
                                   f"{total - self.region} bytes, the slot reserves {slot['size'] - self.region}; "
                                   f"pass a larger reserve_bytes to Snapshotter")
            got = copy_with_crc32c([tensors[i].detach().contiguous() for i in tail] + [skeleton],
                                   [view_in(buf, layout[i]) for i in tail] + [buf[off: total]], snap.copy_threads)
            checked = copy_with_crc32c([tensors[i] for i in check], None, snap.copy_threads)
            for i, crc in zip(tail + check, got[:-1] + checked):
                crcs[i] = crc
            snap._publish(step, slot, buf, layout, crcs, [off, len(skeleton), got[-1]], total)
        except BaseException as exc:  # surfaced by wait()
            snap._error = exc

    def _in_slots(self, t: torch.Tensor) -> bool:
        ptr = t.data_ptr()
        return any(m.buf is not None and m.buf.data_ptr() <= ptr < m.buf.data_ptr() + m.size
                   for m in self.snap._maps.values())

    def rehome(self) -> None:
        """Move parameters and moments that live in a slot back into private memory."""
        for p in self.opt.params():
            if self._in_slots(p):
                p.data = p.data.clone()
            state = self.opt.state.get(p, {})
            for kind in KINDS[1:]:
                if kind in state and self._in_slots(state[kind]):
                    state[kind] = state[kind].clone()
        self.slot, self.buf, self.fresh = None, None, False

    def detach(self) -> None:
        self.rehome()
        self.opt.destination, self.opt.checksum = None, False


EXIT_WAIT_S = 600.0  # longest wait at interpreter exit for a snapshot in flight


def _finisher(ref: "weakref.ReferenceType[Snapshotter]") -> Callable[[], None]:
    def finish() -> None:
        snap = ref()
        thread = None if snap is None else snap._thread
        if thread is not None:
            thread.join(EXIT_WAIT_S)
    return finish


class Snapshotter:
    """Asynchronous in-memory snapshots of ``model`` + ``optimizer`` into the node's manager.

    Args:
        model, optimizer: what to snapshot (parameters and buffers; optimizer state).
        extra_state: a callable returning picklable user state (data-loader position, hook
            state, ...) or a constant; restored by ``restore_or_init`` and returned to the caller.
        every: take a snapshot when ``step % every == 0``.
        client: a ManagerClient; default: from the environment (OSMOS_FT_*).
        rank: this trainer's slot pair; default ``$RANK`` (0).
        copy_threads: threads of the copy + checksum; default torch's intra-op thread count.
        protector: an ``osmos.ft.stripes.StripeProtector``: after each snapshot is published,
            its parity is computed and placed on other nodes (a collective: every rank of the
            protector's group must snapshot at the same steps).
        zero_copy: keep parameters and optimizer state in the snapshot slots (see the module
            docstring); default: when ``optimizer`` is an ``osmos.ft.SnapshotAdamW``.
        reserve_bytes: zero-copy mode: room in each slot for what is copied at each snapshot
            (buffers, step counters, RNG and user state, the pickled structure); default twice
            what the model and ``extra_state`` hold at the first step, plus 1 MiB.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 extra_state: Callable[[], Any] | Any = None, every: int = 1,
                 client: ManagerClient | None = None, rank: int | None = None,
                 copy_threads: int | None = None, protector: Any = None,
                 zero_copy: bool | None = None, reserve_bytes: int | None = None):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if zero_copy is None:
            zero_copy = isinstance(optimizer, SnapshotAdamW)
        elif zero_copy and not isinstance(optimizer, SnapshotAdamW):
            raise TypeError(f"zero_copy=True needs an osmos.ft.SnapshotAdamW optimizer, got {type(optimizer).__name__}")
        if reserve_bytes is not None and (not isinstance(reserve_bytes, int) or reserve_bytes < 0):
            raise ValueError(f"reserve_bytes must be a non-negative int or None, got {reserve_bytes!r}")
        self.model, self.optimizer, self.extra_state, self.every = model, optimizer, extra_state, every
        self.client = client or ManagerClient.from_env()
        if self.client is None:
            raise RuntimeError("no snapshot manager: set OSMOS_FT_JOB_ID/OSMOS_FT_SOCKET/OSMOS_FT_TOKEN "
                               "(osmos.ft.manager.start_manager(...).env) or pass client=")
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.copy_threads = copy_threads or num_threads()
        self.protector = protector
        self._maps: dict[str, _Mapping] = {}
        self._staging = _CudaStaging()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.published_step: int | None = None
        self._next_step: int | None = None  # the step after the last step() call (zero-copy checksum planning)
        self._zero_copy = _ZeroCopy(self, reserve_bytes) if zero_copy else None
        if self._zero_copy is None:
            self._hooks = [optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.wait())]
        else:
            self._hooks = [optimizer.register_step_pre_hook(lambda opt, args, kwargs: self._zero_copy.before_step()),
                           optimizer.register_step_post_hook(lambda opt, args, kwargs: self._zero_copy.after_step())]
        # a trainer that returns right after its last step() still publishes that snapshot: the copy
        # runs on a daemon thread, which the interpreter would otherwise kill at exit
        self._finish_at_exit = _finisher(weakref.ref(self))
        atexit.register(self._finish_at_exit)
        # Test hook: called with the slot buffer after tensors are copied, before publishing.
        self._before_publish: Callable[[torch.Tensor], None] | None = None

    def _capture(self, step: int) -> tuple[list[torch.Tensor], list[str], bytes, Any]:
        tensors: list[torch.Tensor] = []
        names: list[str] = []
        # buffers may change during the next forward: clone them now; parameters are read later
        model_sd = {k: (v.detach() if isinstance(v, torch.nn.Parameter) else v.detach().clone())
                    for k, v in self.model.state_dict(keep_vars=True).items()}
        extra = self.extra_state() if callable(self.extra_state) else self.extra_state
        state = {"step": step, "model": model_sd, "optimizer": self.optimizer.state_dict(),
                 "rng": rng_state(), "extra": extra}
        skeleton = pickle.dumps(_flatten(state, tensors, names), protocol=pickle.HIGHEST_PROTOCOL)
        tensors, ready = self._staging.stage(tensors)
        return tensors, names, skeleton, ready

    def _mapping(self, path: str, size: int) -> _Mapping:
        m = self._maps.get(path)
        if m is None or m.size != size:
            if m is not None:
                m.close()
            m = self._maps[path] = _Mapping(path, size, writable=True)
        return m

    def _write(self, step: int, tensors: list[torch.Tensor], names: list[str], skeleton: bytes, ready: Any) -> None:
        try:
            layout, data_bytes = layout_of(tensors, names)
            total = data_bytes + len(skeleton)
            slot = self.client.request("begin", rank=self.rank, nbytes=total)
            buf = self._mapping(slot["path"], slot["size"]).buf
            if ready is not None:
                ready.synchronize()
            src = [t.detach().contiguous() for t in tensors] + [skeleton]
            dst = [view_in(buf, e) for e in layout] + [buf[data_bytes: total]]
            crcs = copy_with_crc32c(src, dst, self.copy_threads)
            self._publish(step, slot, buf, layout, crcs[:-1], [data_bytes, len(skeleton), crcs[-1]], total)
        except BaseException as exc:  # surfaced by wait()
            self._error = exc

    def _publish(self, step: int, slot: dict, buf: torch.Tensor, layout: list[dict], crcs: list[int],
                 skeleton: list[int], total: int) -> None:
        if self._before_publish is not None:
            self._before_publish(buf)
        record = {"slot": slot["slot"], "step": step, "layout": layout, "crc32c": crcs,
                  "skeleton": skeleton, "size": slot["size"], "nbytes": total}
        self.client.request("publish", rank=self.rank, record=record)
        self.published_step = step
        if self.protector is not None:
            self.protector.protect(self.client, self.rank, step)

    @property
    def zero_copy(self) -> bool:
        """True when parameters and optimizer state live in the snapshot slots."""
        return self._zero_copy is not None

    def step(self, step: int, block: bool = False) -> bool:
        """Snapshot the state after training step ``step`` if ``step % every == 0``; True if started."""
        self._next_step = step + 1
        if step % self.every:
            return False
        self.wait()
        zc = self._zero_copy
        if zc is not None and zc.fresh:  # the optimizer wrote this step into the slot: publish it
            tensors, names, skeleton, _ = self._capture(step)
            args = (step, tensors, names, skeleton, zc.take())
            target = zc.write
        else:
            if zc is not None:  # no optimizer step into a slot since the last snapshot: copy as usual
                zc.rehome()
            tensors, names, skeleton, ready = self._capture(step)
            args, target = (step, tensors, names, skeleton, ready), self._write
        self._thread = threading.Thread(target=target, args=args, name="osmos-snapshot", daemon=True)
        self._thread.start()
        if block:
            self.wait()
        return True

    def wait(self) -> None:
        """Block until the snapshot in flight (if any) is published; re-raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError("snapshot failed") from err

    def close(self) -> None:
        atexit.unregister(self._finish_at_exit)
        self.wait()
        for hook in self._hooks:
            hook.remove()
        if self._zero_copy is not None:
            self._zero_copy.detach()
        for m in self._maps.values():
            m.close()
        self._maps.clear()
