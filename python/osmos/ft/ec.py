"""Systematic Reed-Solomon erasure coding over GF(2^8): `RSCodec(k, m)`.

k data blocks of equal length are protected by m parity blocks; any k of the k + m blocks
recover the data. Block i < k is data block i, block k + p is parity block p. The generator is
the Cauchy matrix of csrc/include/osmos/gf256.h (identical to ISA-L's gf_gen_cauchy1_matrix, so
parity matches ISA-L's byte for byte), valid for every k >= 1, m >= 0, k + m <= 256.

Blocks may be bytes-like objects (bytes, bytearray, memoryview), numpy arrays or torch tensors
(CPU or CUDA; any dtype, read as raw bytes), all of one kind of memory. Nothing is copied on
the way in: the kernels read the caller's memory. Outputs are new objects of the inputs' kind
(uint8 tensors on the inputs' device, uint8 numpy arrays, or bytearrays), or the caller's own
writable buffers passed as `out`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from osmos import _native
from osmos.ops._common import check_int
from osmos.ops.gf256_matmul import bind_addresses

MAX_BLOCKS = 256
_DECODE_CACHE_SIZE = 256  # erasure patterns whose decode matrices are kept per codec
_CALL_CACHE_SIZE = 64  # planned products (pattern, buffers) kept per codec: the buffers a caller reuses


_CPU = torch.device("cpu")


def _device(index: int) -> torch.device:
    return _CPU if index < 0 else torch.device("cuda", index)


def _bytes_array(obj: Any) -> np.ndarray:
    """uint8 numpy view of a contiguous bytes-like object (read-only when it is)."""
    view = memoryview(obj)
    return np.frombuffer(view if view.format == "B" and view.ndim == 1 else view.cast("B"), dtype=np.uint8)


def _describe_one(name: str, obj: Any) -> tuple[int, int, int, str, bool]:
    """(address, nbytes, CUDA device index or -1 for CPU, kind, writable) of one caller block;
    nothing is copied."""
    if isinstance(obj, torch.Tensor):
        if not obj.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
        return obj.data_ptr(), obj.nbytes, obj.get_device(), "torch", True
    if isinstance(obj, np.ndarray):
        if not obj.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous numpy array")
        return obj.__array_interface__["data"][0], obj.nbytes, -1, "numpy", bool(obj.flags.writeable)
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(
            f"{name} must be a bytes-like object, numpy array or torch tensor, got {type(obj).__name__}"
        ) from None
    if not view.c_contiguous:
        raise ValueError(f"{name} must be a contiguous buffer")
    return _bytes_array(view).__array_interface__["data"][0], view.nbytes, -1, "bytes", not view.readonly


class _Blocks:
    """Addresses of caller blocks of one length on one device (`name` appears in errors)."""

    __slots__ = ("objs", "addresses", "nbytes", "device_index", "kind")

    def __init__(self, name: str, objs: Sequence[Any], *, writable: bool = False):
        self.objs = list(objs)
        if not self.objs:
            raise ValueError(f"{name} must not be empty")
        first = self.objs[0]
        if type(first) is torch.Tensor:
            # Fast path, one pass of attribute reads: plain contiguous tensors of one size and device.
            nbytes, device_index, addresses = first.nbytes, first.get_device(), []
            for o in self.objs:
                if type(o) is not torch.Tensor or not o.is_contiguous() or o.nbytes != nbytes or o.get_device() != device_index:
                    break
                addresses.append(o.data_ptr())
            else:
                self.addresses, self.nbytes, self.device_index, self.kind = addresses, nbytes, device_index, "torch"
                return
        described = [_describe_one(f"{name}[{i}]", o) for i, o in enumerate(self.objs)]
        self.addresses = [d[0] for d in described]
        self.nbytes, self.device_index, self.kind = described[0][1], described[0][2], described[0][3]
        for i, (_, nbytes, device, _, can_write) in enumerate(described):
            if nbytes != self.nbytes:
                raise ValueError(f"{name} must all have one length in bytes; got {self.nbytes} and {nbytes} ({name}[{i}])")
            if device != self.device_index:
                raise ValueError(f"{name} must all be on one device; got {self.device} and {_device(device)} ({name}[{i}])")
            if writable and not can_write:
                raise ValueError(f"{name}[{i}] is read-only")

    @property
    def device(self) -> torch.device:
        return _device(self.device_index)

    @classmethod
    def new(cls, count: int, like: _Blocks) -> list[Any]:
        """count fresh blocks of like's kind, length and device."""
        if like.kind == "torch":
            return [torch.empty(like.nbytes, dtype=torch.uint8, device=like.device) for _ in range(count)]
        if like.kind == "numpy":
            return list(np.empty((count, like.nbytes), dtype=np.uint8))
        return [bytearray(like.nbytes) for _ in range(count)]

    @classmethod
    def outputs(cls, out: Sequence[Any] | None, count: int, like: _Blocks) -> _Blocks | None:
        """The caller's `out` checked against like, or count new blocks; None when count is 0."""
        if out is not None and (isinstance(out, (str, bytes)) or len(out) != count):
            raise ValueError(f"out must be a sequence of {count} buffers")
        if count == 0:
            return None
        if out is None:
            return cls("out", cls.new(count, like))
        blocks = cls("out", out, writable=True)
        if blocks.nbytes != like.nbytes or blocks.device_index != like.device_index:
            raise ValueError(
                f"out blocks must hold {like.nbytes} bytes on {like.device}, got {blocks.nbytes} bytes on {blocks.device}"
            )
        return blocks


class RSCodec:
    """Reed-Solomon code with k data blocks and m parity blocks (k >= 1, m >= 0, k + m <= 256).

    `encode(data_blocks)` -> m parity blocks; `decode({index: block, ...})` -> the k data
    blocks from any k of the k + m (indices 0..k-1 data, k..k+m-1 parity). Decode matrices
    are computed once per erasure pattern and cached (also per device).
    """

    def __init__(self, k: int, m: int):
        check_int("k", k, low=1, high=MAX_BLOCKS)
        check_int("m", m, low=0, high=MAX_BLOCKS)
        if k + m > MAX_BLOCKS:
            raise ValueError(f"k + m must be at most {MAX_BLOCKS} for GF(2^8) Reed-Solomon, got {k} + {m} = {k + m}")
        if not _native.has_cpu_kernel("gf256_matmul"):
            raise RuntimeError(f"RSCodec needs osmos._C, which is not available: {_native.C_ERROR}")
        self.k, self.m = k, m
        generator = _native.C.gf256_cauchy_matrix(k, m)
        self.generator = torch.frombuffer(bytearray(generator), dtype=torch.uint8).view(k + m, k)
        self._parity_rows = self.generator[k:].contiguous()
        self._plans: dict[tuple[int, ...], tuple[tuple[int, ...], list[int], torch.Tensor]] = {}
        self._decoders: OrderedDict[tuple[int, ...], tuple[list[int], torch.Tensor]] = OrderedDict()
        self._on_device: dict[tuple[tuple[int, ...] | None, int], torch.Tensor] = {}
        self._calls: OrderedDict[tuple, Callable[[], None]] = OrderedDict()  # planned products, oldest first

    def __repr__(self) -> str:
        return f"RSCodec(k={self.k}, m={self.m})"

    def encode(self, data_blocks: Sequence[Any], out: Sequence[Any] | None = None) -> list[Any]:
        """m parity blocks of k equal-length data blocks (written into `out` when given)."""
        if isinstance(data_blocks, (str, bytes)) or len(data_blocks) != self.k:
            raise ValueError(f"data_blocks must be a sequence of k = {self.k} blocks")
        data = _Blocks("data_blocks", data_blocks)
        parity = _Blocks.outputs(out, self.m, data)
        if parity is None:
            return []
        self._multiply(None, self._parity_rows, data.addresses, parity.addresses, data)
        return parity.objs

    def decode(self, available: Mapping[int, Any], out: Sequence[Any] | Mapping[int, Any] | None = None) -> list[Any]:
        """The k data blocks from any >= k of the k + m blocks, given as {index: block}.

        out=None: surviving data blocks are returned as the caller's own objects, lost ones
        as new blocks. out=[k writable buffers]: every data block is written there (survivors
        copied). out={data index: buffer} covering every lost data index: lost blocks are
        rebuilt in place there (a replacement node rebuilding its shard), survivors with a
        buffer in out are copied, the others returned as they are."""
        k = self.k
        if type(available) is not dict and not isinstance(available, Mapping):
            raise TypeError(f"available must be a mapping {{block index: block}}, got {type(available).__name__}")
        used, lost, matrix = self._plan(available)
        sources = _Blocks("available blocks", [available[i] for i in used])
        if out is None:
            result = list(sources.objs[:k - len(lost)])  # the surviving data blocks, in order
            if lost:
                rebuilt = _Blocks("out", _Blocks.new(len(lost), sources))
                self._multiply(used, matrix, sources.addresses, rebuilt.addresses, sources)
                for i, block in zip(lost, rebuilt.objs):
                    result.insert(i, block)
            return result
        if type(out) is dict or isinstance(out, Mapping):
            bad = [i for i in out if type(i) is not int or not 0 <= i < k]
            if bad:
                raise ValueError(f"out keys must be data block indices in [0, {k}), got {bad[0]!r}")
            missing = [i for i in lost if i not in out]
            if missing:
                raise ValueError(f"out must hold a buffer for every lost data block; missing {missing}")
            targets = out
        else:
            if isinstance(out, (str, bytes)) or len(out) != k:
                raise ValueError(f"out must be a sequence of k = {k} buffers or a mapping {{data index: buffer}}")
            targets = dict(enumerate(out))
        order = sorted(targets)
        written = _Blocks.outputs([targets[i] for i in order], len(order), sources)
        address = dict(zip(order, written.addresses))
        if lost:
            self._multiply(used, matrix, sources.addresses, [address[i] for i in lost], sources)
        result = []
        for i in range(k):
            if i in targets:
                if i not in lost:
                    pos = used.index(i)
                    if sources.addresses[pos] != address[i]:
                        _as_tensor(targets[i]).copy_(_as_tensor(sources.objs[pos]))
                result.append(targets[i])
            else:
                result.append(available[i])
        return result

    def bind_encode(self, data_blocks: Sequence[Any], out: Sequence[Any]) -> _Bound:
        """A call that re-encodes these data blocks into these parity buffers, for memory that
        is reused (snapshot slots): checks, address lookups and matrix placement happen once,
        each call only runs the kernel. The buffers must keep their memory (no resize)."""
        if isinstance(data_blocks, (str, bytes)) or len(data_blocks) != self.k:
            raise ValueError(f"data_blocks must be a sequence of k = {self.k} blocks")
        data = _Blocks("data_blocks", data_blocks)
        parity = _Blocks.outputs(out, self.m, data)
        if parity is not None:
            _check_disjoint(data.addresses, parity.addresses, data.nbytes)
        return _Bound(self._placed(None, self._parity_rows, data), data, parity)

    def bind_decode(self, available: Mapping[int, Any], out: Mapping[int, Any]) -> _Bound:
        """A call that rebuilds the lost data blocks of `available` into out[lost index], for
        memory that is reused; see bind_encode."""
        used, lost, matrix = self._plan(available)
        sources = _Blocks("available blocks", [available[i] for i in used])
        missing = [i for i in lost if i not in out]
        if missing:
            raise ValueError(f"out must hold a buffer for every lost data block; missing {missing}")
        rebuilt = _Blocks.outputs([out[i] for i in lost], len(lost), sources)
        if rebuilt is not None:
            _check_disjoint(sources.addresses, rebuilt.addresses, sources.nbytes)
        return _Bound(self._placed(used, matrix, sources), sources, rebuilt)

    def _plan(self, available: Mapping[int, Any]) -> tuple[tuple[int, ...], list[int], torch.Tensor]:
        """(the k block indices decoding reads, the lost data indices, their decode matrix),
        cached per set of available indices (validated on first sight)."""
        try:
            indices = tuple(sorted(available))
        except TypeError:
            indices = None
        plan = self._plans.get(indices)
        if plan is not None:
            return plan
        k, n = self.k, self.k + self.m
        for index in available:
            if type(index) is not int or not 0 <= index < n:
                raise ValueError(f"block indices must be ints in [0, {n}), got {index!r}")
        if len(indices) < k:
            raise ValueError(f"decoding needs at least k = {k} of the {n} blocks, got {len(indices)}")
        used = indices[:k]  # surviving data blocks first, then parity
        lost, matrix = self._decoder(used)
        plan = self._plans[indices] = (used, lost, matrix)
        if len(self._plans) > _DECODE_CACHE_SIZE:
            self._plans.pop(next(iter(self._plans)))
        return plan

    def _decoder(self, used: tuple[int, ...]) -> tuple[list[int], torch.Tensor]:
        """(lost data indices, matrix [len(lost), k] rebuilding them from the blocks `used`)."""
        cached = self._decoders.get(used)
        if cached is not None:
            self._decoders.move_to_end(used)
            return cached
        k = self.k
        lost = [i for i in range(k) if i not in used]
        survivors = self.generator[list(used)].contiguous()
        inverse = _native.C.gf256_invert(survivors.numpy().tobytes(), k)
        if inverse is None:  # impossible for a Cauchy generator; kept as a guard on the math
            raise RuntimeError(f"the survivor matrix of blocks {used} is singular")
        full = torch.frombuffer(bytearray(inverse), dtype=torch.uint8).view(k, k)
        entry = (lost, full[lost].contiguous())
        self._decoders[used] = entry
        if len(self._decoders) > _DECODE_CACHE_SIZE:
            evicted, _ = self._decoders.popitem(last=False)
            for key in [key for key in self._on_device if key[0] == evicted]:
                del self._on_device[key]
        return entry

    def _placed(self, pattern, matrix: torch.Tensor, like: _Blocks) -> torch.Tensor:
        """matrix on like's device (cached per erasure pattern and device)."""
        if like.device_index < 0:
            return matrix
        key = (pattern, like.device_index)
        on_device = self._on_device.get(key)
        if on_device is None:
            on_device = self._on_device[key] = matrix.to(like.device)
        return on_device

    def _multiply(self, pattern, matrix: torch.Tensor, src: list[int], dst: list[int], like: _Blocks) -> None:
        """dst = matrix x src. A caller that encodes into the same buffers again (snapshot slots)
        reuses the product planned the first time (overlap check, kernel constants, pointer
        arrays): the key holds every address, the length and the CPU kernel, so a hit is the
        same product on the same memory."""
        if not dst or not like.nbytes:
            return
        device = like.device_index
        key = (pattern, *src, -1, *dst, like.nbytes, device, _native.C.gf256_matmul_kernel() if device < 0 else "")
        run = self._calls.get(key)
        if run is None:
            _check_disjoint(src, dst, like.nbytes)
            run = self._calls[key] = bind_addresses(self._placed(pattern, matrix, like), src, dst, like.nbytes, device)
            if len(self._calls) > _CALL_CACHE_SIZE:
                self._calls.popitem(last=False)
        run()


def _check_disjoint(src: list[int], dst: list[int], nbytes: int) -> None:
    """Outputs must not overlap inputs or each other (the kernels read while they write)."""
    if nbytes == 0 or len(dst) == 0:
        return
    spans = sorted((a, i >= len(src)) for i, a in enumerate(src + dst))
    for (a, a_out), (b, b_out) in zip(spans, spans[1:]):
        if (a_out or b_out) and b < a + nbytes:
            raise ValueError("output blocks must not overlap the input blocks or each other")


class _Bound:
    """dst = matrix x src on fixed buffers (from RSCodec.bind_encode / bind_decode), planned once
    (`bind_addresses`); holds references to the buffers so their memory stays valid. Calling
    returns the outputs."""

    __slots__ = ("_run", "_sources", "_outputs")

    def __init__(self, matrix: torch.Tensor, sources: _Blocks, outputs: _Blocks | None):
        self._sources, self._outputs = sources, outputs
        self._run = None
        if outputs is not None and outputs.nbytes:
            self._run = bind_addresses(matrix, sources.addresses, outputs.addresses, outputs.nbytes, outputs.device_index)

    def __call__(self) -> list[Any]:
        if self._outputs is None:
            return []
        if self._run is not None:
            self._run()
        return self._outputs.objs


def _as_tensor(obj: Any) -> torch.Tensor:
    """Flat uint8 tensor sharing obj's memory."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().reshape(-1).view(torch.uint8)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.reshape(-1).view(np.uint8))
    array = _bytes_array(obj)
    return torch.from_numpy(array) if array.flags.writeable else torch.from_numpy(array.copy())

