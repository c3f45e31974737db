"""Triton kernels of the two-pass sliced GroupNorm (see osmos.ops.group_norm)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl



@triton.jit
def _stats_kernel(x_ptr, out_ptr, C, L, sN, sC, G, CPG, SPLIT, PER: tl.constexpr, BLOCK: tl.constexpr):
    """Partial sums of one (n, g) over one stretch of PER * BLOCK positions of every channel of
    the group: program (row, part) writes out[row, part] = (sum, sum of squares) in float64."""
    row = tl.program_id(0)
    part = tl.program_id(1)
    n = row // G
    g = row % G
    s = tl.zeros((BLOCK,), dtype=tl.float64)
    ss = tl.zeros((BLOCK,), dtype=tl.float64)
    for c in range(g * CPG, (g + 1) * CPG):
        base = x_ptr + n * sN + c * sC
        for i in range(PER):
            offs = (part * PER + i) * BLOCK + tl.arange(0, BLOCK)
            v = tl.load(base + offs, mask=offs < L, other=0.0).to(tl.float64)
            s += v
            ss += v * v
    tl.store(out_ptr + (row * SPLIT + part) * 2, tl.sum(s, 0))
    tl.store(out_ptr + (row * SPLIT + part) * 2 + 1, tl.sum(ss, 0))


@triton.jit
def _apply_kernel(x_ptr, y_ptr, stats_ptr, eps, w_ptr, b_ptr, C, L, sN, sC, G, CPG,
                  HAS_W: tl.constexpr, HAS_B: tl.constexpr, SILU: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # one (n, c) per program
    pid_l = tl.program_id(1)
    n = row // C
    c = row % C
    g = c // CPG
    # mean and 1/sqrt(var + eps) of (n, g) from its float64 (count, sum, sumsq), as mean_rstd
    # computes them, here instead of in a handful of torch kernels per call
    st = stats_ptr + (n * G + g) * 3
    count = tl.maximum(tl.load(st), 1.0)
    mean = tl.load(st + 1) / count
    var = tl.maximum(tl.load(st + 2) / count - mean * mean, 0.0)
    m = mean.to(tl.float32)
    r = (1.0 / tl.sqrt(var + eps)).to(tl.float32)
    offs = pid_l * BLOCK + tl.arange(0, BLOCK)
    mask = offs < L
    v = tl.load(x_ptr + n * sN + c * sC + offs, mask=mask, other=0.0).to(tl.float32)
    y = (v - m) * r
    if HAS_W:
        y = y * tl.load(w_ptr + c)
    if HAS_B:
        y = y + tl.load(b_ptr + c)
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    tl.store(y_ptr + row * L + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def group_norm_stats(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    n, c, l = x.shape
    out = torch.empty((n, num_groups, 3), dtype=torch.float64, device=x.device)
    out[..., 0] = float((c // num_groups) * l)
    if not x.numel():
        out[..., 1:] = 0.0
        return out
    block = min(1024, triton.next_power_of_2(max(l, 16)))
    per = 4  # blocks of each channel per program: (n, g) rows alone left most of a GPU idle
    split = triton.cdiv(l, block * per)
    partial = torch.empty((n * num_groups, split, 2), dtype=torch.float64, device=x.device)
    _stats_kernel[(n * num_groups, split)](x, partial, c, l, x.stride(0), x.stride(1), num_groups, c // num_groups,
                                           split, PER=per, BLOCK=block)
    out[..., 1:] = partial.sum(1).view(n, num_groups, 2)
    return out


def group_norm_apply(x, stats, weight, bias, eps: float, silu: bool) -> torch.Tensor:
    n, c, l = x.shape
    g = stats.shape[1]
    y = torch.empty((n, c, l), dtype=x.dtype, device=x.device)
    if x.numel():
        block = min(1024, triton.next_power_of_2(max(l, 16)))
        grid = (n * c, triton.cdiv(l, block))
        stats = stats.contiguous()
        _apply_kernel[grid](
            x, y, stats, float(eps), weight if weight is not None else y, bias if bias is not None else y,
            c, l, x.stride(0), x.stride(1), g, c // g,
            HAS_W=weight is not None, HAS_B=bias is not None, SILU=silu, BLOCK=block,
        )
    return y
