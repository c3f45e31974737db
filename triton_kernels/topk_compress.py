"""Triton TopK EF21 compression: exact radix select, then an order-preserving compaction.

Same contract as osmos.ops.topk_compress (d = x - state in state's dtype, the k largest
magnitude keys, ties to the lower index, indices ascending, state[indices] += values):

  per radix level (11/11/10-bit digits of the key, most significant first)
    _hist_kernel    block histograms (tl.histogram) of the digit among keys matching the
                    prefix chosen so far, added into one global histogram
    host            the bin holding the k-th largest key (a 2048-entry cumsum in torch)
  _count_kernel     per block: keys above the threshold, keys tied with it
  host              per block: ties kept (lowest indices first) and output offset (cumsum)
  _emit_kernel      per block: ranks by tl.cumsum, so winners land in index order; writes
                    values / indices and updates state
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
_NAN_KEY = 0x7F800001
_LEVELS = ((21, 0x7FF), (10, 0x7FF), (0, 0x3FF))  # (shift, digit mask) per radix level


@triton.jit
def _widen(v):
    """v as float32, exactly. bfloat16 is widened by hand: the interpreter's cast flushes
    bfloat16 subnormals to zero."""
    if v.dtype == tl.bfloat16:
        return (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return v.to(tl.float32)


@triton.jit
def _round_to(v, dtype: tl.constexpr):
    """float32 v rounded to dtype, nearest-even. bfloat16 is rounded by hand: the interpreter's
    float32 -> bfloat16 cast truncates."""
    if dtype == tl.bfloat16:
        u = v.to(tl.uint32, bitcast=True)
        r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        r = tl.where(v != v, (u >> 16) | 0x40, r)  # NaN stays a (quiet) NaN
        return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(dtype)


@triton.jit
def _diff_and_key(x_ptr, s_ptr, offs, valid):
    """d = x - state rounded to state's dtype, and its magnitude key (int32, NaNs canonical)."""
    xv = _widen(tl.load(x_ptr + offs, mask=valid, other=0.0))
    sv = tl.load(s_ptr + offs, mask=valid, other=0.0)
    d = _round_to(xv - _widen(sv), sv.dtype)
    bits = _widen(d).to(tl.int32, bitcast=True) & 0x7FFFFFFF
    key = tl.where(bits > 0x7F800000, 0x7F800001, bits)
    return d, key, sv


@triton.jit
def _hist_kernel(x_ptr, s_ptr, n, hist_ptr, prefix, mask, SHIFT: tl.constexpr, BINS: tl.constexpr,
                 BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    _, key, _ = _diff_and_key(x_ptr, s_ptr, offs, valid)
    match = valid & ((key & mask) == prefix)
    digit = (key >> SHIFT) & (BINS - 1)
    counts = tl.histogram(digit, BINS, mask=match)
    tl.atomic_add(hist_ptr + tl.arange(0, BINS), counts)


@triton.jit
def _count_kernel(x_ptr, s_ptr, n, above_ptr, ties_ptr, prefix, mask, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    _, key, _ = _diff_and_key(x_ptr, s_ptr, offs, valid)
    m = key & mask
    tl.store(above_ptr + pid, tl.sum((valid & (m > prefix)).to(tl.int32)))
    tl.store(ties_ptr + pid, tl.sum((valid & (m == prefix)).to(tl.int32)))


@triton.jit
def _emit_kernel(x_ptr, s_ptr, n, quota_ptr, offset_ptr, values_ptr, indices_ptr, prefix, mask,
                 BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    d, key, sv = _diff_and_key(x_ptr, s_ptr, offs, valid)
    m = key & mask
    is_tie = (valid & (m == prefix)).to(tl.int32)
    tie_rank = tl.cumsum(is_tie, axis=0) - is_tie
    take = (valid & (m > prefix)) | ((is_tie != 0) & (tie_rank < tl.load(quota_ptr + pid)))
    take_i = take.to(tl.int32)
    position = tl.load(offset_ptr + pid) + (tl.cumsum(take_i, axis=0) - take_i).to(tl.int64)
    tl.store(values_ptr + position, d, mask=take)
    tl.store(indices_ptr + position, offs, mask=take)
    tl.store(s_ptr + offs, _round_to(_widen(sv) + _widen(d), sv.dtype), mask=take)


def _threshold(x: torch.Tensor, state: torch.Tensor, n: int, k: int, grid: tuple) -> tuple[int, int, int]:
    """(prefix, mask, ties_needed): winners have (key & mask) > prefix, or == prefix for the
    first ties_needed of them by index."""
    prefix, mask, needed = 0, 0, k
    hist = torch.empty(2048, dtype=torch.int32, device=x.device)
    for shift, digit in _LEVELS:
        bins = digit + 1
        hist.zero_()
        _hist_kernel[grid](x, state, n, hist, prefix, mask, SHIFT=shift, BINS=bins, BLOCK=BLOCK)
        from_top = torch.cumsum(hist[:bins].flip(0).to(torch.int64), 0)
        pos = int(torch.searchsorted(from_top, torch.tensor([needed], device=x.device)).item())
        bin_ = digit - pos
        higher = int(from_top[pos - 1].item()) if pos > 0 else 0
        in_bin = int(from_top[pos].item()) - higher
        needed -= higher
        prefix |= bin_ << shift
        mask |= digit << shift
        if in_bin == needed:
            break
    return prefix, mask, needed


def topk_compress(x: torch.Tensor, state: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """values [k] (state's dtype) and ascending int64 indices [k] of TopK(x - state); updates
    state in place. Inputs are validated by osmos.ops.topk_compress."""
    n = x.numel()
    values = torch.empty(k, dtype=state.dtype, device=x.device)
    indices = torch.empty(k, dtype=torch.int64, device=x.device)
    if k == 0:
        return values, indices
    xf, sf = x.reshape(-1), state.view(-1)
    blocks = triton.cdiv(n, BLOCK)
    grid = (blocks,)
    prefix, mask, needed = (0, 0, n) if k == n else _threshold(xf, sf, n, k, grid)
    above = torch.empty(blocks, dtype=torch.int32, device=x.device)
    ties = torch.empty(blocks, dtype=torch.int32, device=x.device)
    _count_kernel[grid](xf, sf, n, above, ties, prefix, mask, BLOCK=BLOCK)
    ties64 = ties.to(torch.int64)
    ties_before = torch.cumsum(ties64, 0) - ties64
    quota = (needed - ties_before).clamp(min=0).minimum(ties64)
    kept = above.to(torch.int64) + quota
    offset = torch.cumsum(kept, 0) - kept
    _emit_kernel[grid](xf, sf, n, quota.to(torch.int32), offset, values, indices, prefix, mask, BLOCK=BLOCK)
    return values, indices
