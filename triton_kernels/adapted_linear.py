"""Triton kernel of osmos::adapted_linear: a Linear with C rank-1 adapters in one GEMM,

    out[r, n] = sum_k x[r, k] W[n, k] + bias[n] + sum_c gamma[r // tokens, c] (sum_k x[r, k] D[c, k]) U[c, n]

for x [rows, K] (rows = batch * tokens), W [N, K] (nn.Linear's layout), D [C, K], U [C, N] and
gamma [batch, C].

One program owns a (BM rows, BN outputs) tile. Its K loop loads each x tile once and feeds two
dots: x @ W^T into the [BM, BN] accumulator and x @ D^T into the [BM, BC] projections (C padded to
BC >= 16 for tl.dot; every N tile of a row block recomputes them, BC / BN extra MMA work). The
epilogue scales the projections by the rows' per-sample gammas, adds (p * gamma) @ U and the bias,
and stores once. So the adapters cost no extra pass over x or out, no extra launch.

Numerics: float32 accumulation. float16 / bfloat16 x and W run on the tensor cores, D cast to x's
dtype; the epilogue's (p * gamma) @ U runs in tf32 (p keeps more bits than a round to x's dtype).
float32 inputs run every dot with input_precision="ieee" (WIDE; so does bfloat16 in the
interpreter, see _widen). D, U, gamma and bias are read in their own dtypes and converted in
registers.

Programs walk the tiles in groups of GROUP_M row blocks per column block, so a wave of programs
shares W and x tiles in L2.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _adapted_linear_kernel(
    x_ptr, w_ptr, b_ptr, d_ptr, u_ptr, g_ptr, out_ptr,
    rows, N, K, C, tokens,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, WIDE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BC: tl.constexpr, GROUP_M: tl.constexpr,
):
    # grouped order: GROUP_M row blocks are walked down one column block before the next
    pid = tl.program_id(0)
    blocks_m = tl.cdiv(rows, BM)
    blocks_n = tl.cdiv(N, BN)
    per_group = GROUP_M * blocks_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    r = pid_m * BM + tl.arange(0, BM)
    n = pid_n * BN + tl.arange(0, BN)
    c = tl.arange(0, BC)
    rmask, nmask, cmask = r < rows, n < N, c < C
    r64 = r.to(tl.int64)
    kk = tl.arange(0, BK)
    x_tile = x_ptr + r64[:, None] * K + kk[None, :]          # [BM, BK]
    w_tile = w_ptr + n.to(tl.int64)[None, :] * K + kk[:, None]  # [BK, BN] = W^T tile
    d_tile = d_ptr + c[None, :] * K + kk[:, None]             # [BK, BC] = D^T tile

    acc = tl.zeros((BM, BN), dtype=tl.float32)
    p = tl.zeros((BM, BC), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kmask = (k0 + kk) < K
        x = tl.load(x_tile, mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_tile, mask=kmask[:, None] & nmask[None, :], other=0.0)
        d = tl.load(d_tile, mask=kmask[:, None] & cmask[None, :], other=0.0)
        d = d.to(x.dtype)
        if WIDE:
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
            p += tl.dot(x.to(tl.float32), d.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(x, w)
            p += tl.dot(x, d)
        x_tile += BK
        w_tile += BK
        d_tile += BK

    # epilogue: acc += (p * gamma[row's sample]) @ U + bias
    g = tl.load(g_ptr + (r // tokens)[:, None] * C + c[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
    u = tl.load(u_ptr + c[:, None] * N + n[None, :], mask=cmask[:, None] & nmask[None, :], other=0.0)
    q = p * g.to(tl.float32)
    if IEEE:
        acc += tl.dot(q, u.to(tl.float32), input_precision="ieee")
    else:
        acc += tl.dot(q, u.to(tl.float32), input_precision="tf32")
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + r64[:, None] * N + n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & nmask[None, :])


def _widen(x: torch.Tensor) -> bool:
    """bfloat16 dots run in float32 in the interpreter, whose bfloat16 tl.dot returns garbage
    (triton 3.7); bfloat16 products are exact in float32, so only the summation order changes."""
    return x.dtype == torch.bfloat16 and x.device.type != "cuda"


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def tiles(rows: int, features_out: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Launch meta-parameters: small tiles in the interpreter; on a GPU BM = 128 (64 for few
    rows), BN = 128 when that still gives every multiprocessor two tiles (else 64), BK = 64 for
    16-bit inputs (32 for float32), 8 warps for 128 x 128 tiles. Not yet tuned on a GPU."""
    if device.type != "cuda":
        return dict(BM=16, BN=32, BK=32, GROUP_M=4, num_warps=4)
    bm = 128 if rows >= 1024 else 64
    sms = _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    bn = 128 if triton.cdiv(rows, bm) * triton.cdiv(features_out, 128) >= 2 * sms else 64
    bk = 32 if dtype == torch.float32 else 64
    return dict(BM=bm, BN=bn, BK=bk, GROUP_M=8, num_warps=8 if bm * bn >= 128 * 128 else 4, num_stages=3)


def adapted_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, down: torch.Tensor,
                   up: torch.Tensor, gamma: torch.Tensor, meta: dict | None = None) -> torch.Tensor:
    """x @ weight^T + bias + ((x @ down^T) * gamma[sample]) @ up, as a new tensor [B, ..., N].

    x [B, ..., K] contiguous float32 / float16 / bfloat16; weight [N, K] and bias [N] (or None) in
    x's dtype; down [C, K], up [C, N], gamma [B, C] any float dtype; all on x's device and
    validated by the caller (osmos.ops.adapted_linear). `meta` overrides `tiles` (for tuning).
    """
    batch, features_in = x.shape[0], x.shape[-1]
    features_out, adapters = weight.shape[0], down.shape[0]
    rows = math.prod(x.shape[:-1])
    out = torch.empty(*x.shape[:-1], features_out, dtype=x.dtype, device=x.device)
    if rows == 0 or features_out == 0:
        return out
    weight, down, up, gamma = weight.contiguous(), down.contiguous(), up.contiguous(), gamma.contiguous()
    m = meta or tiles(rows, features_out, x.dtype, x.device)
    grid = (triton.cdiv(rows, m["BM"]) * triton.cdiv(features_out, m["BN"]),)
    _adapted_linear_kernel[grid](
        x, weight, weight if bias is None else bias, down, up, gamma, out,
        rows, features_out, features_in, adapters, rows // batch,
        HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32, WIDE=x.dtype == torch.float32 or _widen(x),
        BC=max(16, triton.next_power_of_2(adapters)), **m,
    )
    return out

