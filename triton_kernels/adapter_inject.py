"""Triton kernel of osmos::adapter_inject: out = y + ((x @ D^T) * gamma[batch]) @ U.

One program owns BLOCK_M rows (tokens): it accumulates the C projections over the input
channels, scales them by the rows' per-sample gammas, then sweeps the output channels once,
reading y and writing out. C is padded to BLOCK_C (>= 16, for tl.dot).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _adapter_inject_kernel(
    x_ptr, y_ptr, out_ptr, d_ptr, u_ptr, g_ptr,
    rows, tokens, IN, OUT, C,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    r = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = r < rows
    ci = tl.arange(0, BLOCK_C)
    cmask = ci < C
    p = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for k0 in range(0, IN, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        kmask = kk < IN
        xt = tl.load(x_ptr + r[:, None] * IN + kk[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        dt = tl.load(d_ptr + ci[None, :] * IN + kk[:, None], mask=kmask[:, None] & cmask[None, :], other=0.0)
        if IEEE:
            p += tl.dot(xt.to(tl.float32), dt, input_precision="ieee")
        else:
            p += tl.dot(xt, dt.to(xt.dtype))
    b = r // tokens
    g = tl.load(g_ptr + b[:, None] * C + ci[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
    q = p * g
    for n0 in range(0, OUT, BLOCK_N):
        nn = n0 + tl.arange(0, BLOCK_N)
        nmask = nn < OUT
        u = tl.load(u_ptr + ci[:, None] * OUT + nn[None, :], mask=cmask[:, None] & nmask[None, :], other=0.0)
        m = rmask[:, None] & nmask[None, :]
        yt = tl.load(y_ptr + r[:, None] * OUT + nn[None, :], mask=m, other=0.0)
        acc = yt.to(tl.float32) + tl.dot(q, u, input_precision="ieee")
        tl.store(out_ptr + r[:, None] * OUT + nn[None, :], acc.to(out_ptr.dtype.element_ty), mask=m)


def adapter_inject(out: torch.Tensor, y: torch.Tensor, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                   gamma: torch.Tensor) -> torch.Tensor:
    """Writes y + ((x D^T) * gamma) U into out (which may be y).

    x [B, ..., in] and y / out [B, ..., out] contiguous, one float dtype; down [C, in], up [C, out]
    and gamma [B, C] contiguous float32 on x's device.
    """
    batch, features_in, features_out, adapters = x.shape[0], x.shape[-1], y.shape[-1], down.shape[0]
    rows = x.numel() // features_in if features_in else y.numel() // max(features_out, 1)
    if rows == 0 or features_out == 0:
        return out
    tokens = rows // batch
    block_m = 64 if rows >= 64 else 16
    grid = (triton.cdiv(rows, block_m),)
    _adapter_inject_kernel[grid](
        x, y, out, down, up, gamma, rows, tokens, features_in, features_out, adapters,
        BLOCK_M=block_m, BLOCK_K=64, BLOCK_N=64, BLOCK_C=max(16, triton.next_power_of_2(adapters)),
        IEEE=x.dtype == torch.float32,
    )
    return out
