"""Triton kernel of HarmoniCa's fused cache step (see osmos.ops.cache_select)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _cache_select_kernel(h_ptr, g_ptr, fresh_ptr, cache_ptr, use_ptr, out_ptr, T, D,
                         HAS_H: tl.constexpr, HAS_GATE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # one (b, t) row of D values
    pid_d = tl.program_id(1)
    b = row // T
    offs = pid_d * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    base = row.to(tl.int64) * D
    reuse = tl.load(use_ptr + b) != 0
    if reuse:
        src = tl.load(cache_ptr + base + offs, mask=mask, other=0.0)
    else:
        src = tl.load(fresh_ptr + base + offs, mask=mask, other=0.0)
        tl.store(cache_ptr + base + offs, src, mask=mask)
    y = src.to(tl.float32)
    if HAS_GATE:
        y = tl.load(g_ptr + b * D + offs, mask=mask, other=0.0).to(tl.float32) * y
    if HAS_H:
        y = tl.load(h_ptr + base + offs, mask=mask, other=0.0).to(tl.float32) + y
    tl.store(out_ptr + base + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def cache_select(h: torch.Tensor | None, gate: torch.Tensor | None, fresh: torch.Tensor, cache: torch.Tensor,
                 use_cache: torch.Tensor) -> torch.Tensor:
    b, d = fresh.shape[0], fresh.shape[-1]
    rows = fresh.numel() // max(d, 1)
    out = torch.empty_like(fresh)
    if fresh.numel():
        block = min(1024, triton.next_power_of_2(d))
        grid = (rows, triton.cdiv(d, block))
        _cache_select_kernel[grid](fresh if h is None else h, gate if gate is not None else fresh, fresh, cache, use_cache.view(torch.uint8), out,
                                   rows // b, d, HAS_H=h is not None, HAS_GATE=gate is not None, BLOCK=block)
    return out
