"""HarmoniCa's cache step, fused, per sample of a batch.

For one cache unit (an attention or MLP branch of a transformer block) and a batch in which
each sample may reuse its cached branch output or not:

    src      = cache[b] if use_cache[b] else fresh[b]
    out[b]   = h[b] + gate[b] * src        (gate broadcast over tokens; None means 1; h None means 0)
    cache[b] = src                          (refreshed wherever the branch was computed)

h, fresh, cache: [B, ..., D] of one shape and float dtype; gate: [B, D] or [B, 1, D] or None;
use_cache: bool [B]. `fresh` is read only for samples that do not reuse the cache, so the
caller may pass anything (e.g. the cache itself) for a batch that reuses everywhere.
Arithmetic is in float32 with one rounding to the tensors' dtype. Not differentiable: router
training mixes fresh and cached outputs with plain torch ops.
"""

from __future__ import annotations

import os

from typing import Optional  # torch < 2.7 infers op schemas from typing generics only
import torch
from torch import Tensor

from osmos import _native
from osmos.ops._common import (
    FLOAT_DTYPES, check_tensor, dtype_code, eager_cuda, gpu_uses_triton, num_threads, triton_interpreting,
)


def _flat_gate(gate: Tensor | None, b: int, d: int) -> Tensor | None:
    return None if gate is None else gate.reshape(b, d)


def validate(h: Tensor | None, gate: Tensor | None, fresh: Tensor, cache: Tensor, use_cache: Tensor) -> None:
    check_tensor("fresh", fresh, dtypes=FLOAT_DTYPES)
    if fresh.dim() < 2:
        raise ValueError(f"fresh must be [B, ..., D], got shape {tuple(fresh.shape)}")
    for name, t in (("h", h), ("cache", cache)):
        if t is None and name == "h":
            continue
        check_tensor(name, t, dtypes=(fresh.dtype,))
        if t.shape != fresh.shape or t.device != fresh.device:
            raise ValueError(f"{name} must match fresh's shape {tuple(fresh.shape)} and device {fresh.device}, got {tuple(t.shape)} on {t.device}")
    h = fresh
    b, d = h.shape[0], h.shape[-1]
    if gate is not None:
        check_tensor("gate", gate, dtypes=(h.dtype,))
        if gate.numel() != b * d or gate.shape[0] != b or gate.shape[-1] != d or gate.device != h.device:
            raise ValueError(f"gate must be [B, D] or [B, 1, D] = [{b}, {d}] on {h.device}, got {tuple(gate.shape)}")
    check_tensor("use_cache", use_cache, dtypes=(torch.bool,), ndim=1)
    if use_cache.shape[0] != b or use_cache.device != h.device:
        raise ValueError(f"use_cache must be a bool vector of length B = {b} on {h.device}, got {tuple(use_cache.shape)}")


def reference_cache_select(h, gate, fresh, cache, use_cache) -> Tensor:
    b, d = fresh.shape[0], fresh.shape[-1]
    mask = use_cache.view((b,) + (1,) * (fresh.dim() - 1))
    src = torch.where(mask, cache, fresh)
    g = 1.0 if gate is None else _flat_gate(gate, b, d).float().view((b,) + (1,) * (fresh.dim() - 2) + (d,))
    out = g * src.float() if h is None else h.float() + g * src.float()
    out = out.to(fresh.dtype)
    cache.copy_(src)
    return out


def torch_cache_select(h, gate, fresh, cache, use_cache) -> Tensor:
    """The op as two torch kernels in the tensors' dtype: cache = where(use_cache, cache, fresh) in
    place, then h + gate * cache (addcmul; CUDA's elementwise kernels compute 16-bit types in
    float32 and round once, as the op's contract says). What CUDA tensors run by default."""
    b, d = fresh.shape[0], fresh.shape[-1]
    torch.where(use_cache.view((b,) + (1,) * (fresh.dim() - 1)), cache, fresh, out=cache)
    g = None if gate is None else _flat_gate(gate, b, d).view((b,) + (1,) * (fresh.dim() - 2) + (d,))
    if h is None:
        return cache.clone() if g is None else g * cache
    return h + cache if g is None else torch.addcmul(h, g, cache)


def _torch_path(fresh: Tensor) -> bool:
    """Eager calls on CUDA run `torch_cache_select` without the custom op (on an H100 the op's
    dispatch and float32 casts cost 0.11 ms where torch's kernels took 0.05 ms)."""
    return eager_cuda(fresh) and not gpu_uses_triton(default=False)


@torch.library.custom_op("osmos::cache_select", mutates_args=("cache",))
def _op(h: Optional[Tensor], gate: Optional[Tensor], fresh: Tensor, cache: Tensor, use_cache: Tensor) -> Tensor:
    raise NotImplementedError(f"osmos::cache_select has no kernel for {h.device.type}")


@_op.register_fake
def _(h, gate, fresh, cache, use_cache):
    return torch.empty_like(fresh)


def _triton(h, gate, fresh, cache, use_cache):
    from osmos.triton_kernels.cache_select import cache_select as kernel

    b, d = fresh.shape[0], fresh.shape[-1]
    return kernel(h, _flat_gate(gate, b, d), fresh, cache, use_cache)


@_op.register_kernel("cpu")
def _(h, gate, fresh, cache, use_cache):
    if triton_interpreting() and os.environ.get("OSMOS_CPU_BACKEND") == "triton":
        return _triton(h, gate, fresh, cache, use_cache)
    if not _native.has_cpu_kernel("cache_select"):
        return reference_cache_select(h, gate, fresh, cache, use_cache)
    b, d = fresh.shape[0], fresh.shape[-1]
    t = fresh.numel() // max(b * d, 1)
    out = torch.empty_like(fresh)
    g = _flat_gate(gate, b, d)
    if fresh.numel():
        _native.C.cache_select(
            0 if h is None else h.data_ptr(), 0 if g is None else g.data_ptr(), fresh.data_ptr(), cache.data_ptr(),
            use_cache.data_ptr(), out.data_ptr(), dtype_code(fresh), b, t, d, num_threads(),
        )
    return out


@_op.register_kernel("cuda")
def _(h, gate, fresh, cache, use_cache):
    # torch by default: the Triton kernel ran at 0.45-0.98x torch on an H100 (launch-bound sizes)
    if gpu_uses_triton(default=False):
        return _triton(h, gate, fresh, cache, use_cache)
    return torch_cache_select(h, gate, fresh, cache, use_cache)


def cache_select(h: Tensor | None, gate: Tensor | None, fresh: Tensor, cache: Tensor, use_cache: Tensor) -> Tensor:
    """h + gate * (use_cache ? cache : fresh) per sample; refreshes cache in place where the
    branch was computed. See the module docstring for shapes."""
    validate(h, gate, fresh, cache, use_cache)
    if _torch_path(fresh):
        return torch_cache_select(h, gate, fresh, cache, use_cache)
    return _op(h, gate, fresh, cache, use_cache)
