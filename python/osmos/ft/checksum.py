"""CRC-32C checksums of snapshot shards, and the fused copy + checksum that writes a snapshot.

CRC-32C (Castagnoli; reflected polynomial 0x82F63B78, init and final XOR 0xFFFFFFFF) is the
checksum of the SSE4.2 ``crc32`` instruction: ``crc32c(b"123456789") == 0xE3069283``.
``copy_with_crc32c`` copies host buffers into the snapshot slot and checksums them in one pass
over the source, on several threads (native kernel ``osmos._C.copy_crc32c``; see
csrc/cpu/crc32c.h). ``reference_crc32c`` is the bit-by-bit definition the tests compare with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from osmos import _native
from osmos.ops._common import check_int, num_threads

POLYNOMIAL = 0x82F63B78


def reference_crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C of ``data`` continuing from ``crc``, one bit at a time (slow; for tests)."""
    reg = crc ^ 0xFFFFFFFF
    for byte in bytes(data):
        reg ^= byte
        for _ in range(8):
            reg = (reg >> 1) ^ POLYNOMIAL if reg & 1 else reg >> 1
    return reg ^ 0xFFFFFFFF


def _native_module():
    if _native.C is None or not hasattr(_native.C, "copy_crc32c"):
        raise RuntimeError(f"osmos._C with copy_crc32c is required for snapshots ({_native.C_ERROR or 'too old'})")
    return _native.C


def _address(name: str, obj: Any, *, writable: bool) -> tuple[int, int]:
    """(address, nbytes) of a contiguous host buffer: CPU tensor, numpy array or bytes-like."""
    if isinstance(obj, torch.Tensor):
        if obj.device.type != "cpu":
            raise ValueError(f"{name} must be in host memory, got a tensor on {obj.device}")
        if not obj.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
        return obj.data_ptr(), obj.nbytes
    if isinstance(obj, np.ndarray):
        if not obj.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous numpy array")
        if writable and not obj.flags.writeable:
            raise ValueError(f"{name} must be writable")
        return obj.__array_interface__["data"][0], obj.nbytes
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(f"{name} must be a tensor, numpy array or bytes-like object, got {type(obj).__name__}") from None
    if not view.c_contiguous:
        raise ValueError(f"{name} must be a contiguous buffer")
    if writable and view.readonly:
        raise ValueError(f"{name} must be writable")
    if view.nbytes == 0:
        return 0, 0
    arr = np.frombuffer(view.cast("B") if view.format != "B" or view.ndim != 1 else view, dtype=np.uint8)
    return arr.__array_interface__["data"][0], view.nbytes


def crc32c(data: Any, crc: int = 0) -> int:
    """CRC-32C of a host buffer (CPU tensor, numpy array or bytes-like; raw bytes), continuing from ``crc``."""
    check_int("crc", crc, low=0, high=0xFFFFFFFF)
    addr, nbytes = _address("data", data, writable=False)
    return _native_module().crc32c(addr, nbytes, crc)


def copy_with_crc32c(src: Sequence[Any], dst: Sequence[Any] | None = None, nthreads: int | None = None) -> list[int]:
    """Copy ``src[i]`` into ``dst[i]`` (same byte size, no overlap) and return the CRC-32C of each.

    With ``dst=None`` only the checksums are computed. Buffers are host memory: CPU tensors (any
    dtype, read as raw bytes), numpy arrays or bytes-like objects. ``nthreads`` defaults to
    torch's intra-op thread count.
    """
    nthreads = num_threads() if nthreads is None else nthreads
    check_int("nthreads", nthreads, low=1)
    srcs = [_address(f"src[{i}]", s, writable=False) for i, s in enumerate(src)]
    dsts: list[int] = []
    if dst is not None:
        if len(dst) != len(srcs):
            raise ValueError(f"dst must have one buffer per src buffer ({len(srcs)}), got {len(dst)}")
        for i, (d, (s_addr, s_n)) in enumerate(zip(dst, srcs)):
            d_addr, d_n = _address(f"dst[{i}]", d, writable=True)
            if d_n != s_n:
                raise ValueError(f"dst[{i}] holds {d_n} bytes, src[{i}] {s_n}")
            if s_n and d_addr < s_addr + s_n and s_addr < d_addr + d_n:
                raise ValueError(f"dst[{i}] overlaps src[{i}]")
            dsts.append(d_addr)
    return _native_module().copy_crc32c([a for a, _ in srcs], dsts, [n for _, n in srcs], nthreads)
