"""Fused hashed linear in Triton: y = x @ W^T with W[n, k] = scale * sign * M[h(n, k)] read tile by
tile straight from the shared array M, never materialised. Backward: grad_x = grad_y @ W (W's
tiles again read from M) and grad_M = scatter of grad_y^T @ x, tile by tile, with atomics.

Shapes: x [B, K], M [m], y [B, N]; the layer's config has rows = N, cols = K.
Accumulation in float32 (float64 for float64 inputs); W's tiles are cast to x's dtype, so float16 /
bfloat16 inputs run on the tensor cores.

Segment tables. Hashing every weight element inside the matmul loop costs far more integer work
than the multiply-adds it feeds (a static count of the sm_90 code: ~10x the FFMAs), and each W
element is rebuilt for every block of x's rows. STABLE-RPS and ROAST map a row segment of BK
consecutive columns to at most two runs of consecutive M indices (modulo m): a partition or ROAST
tile boundary can fall inside the segment at most once (`segment_width` picks a BK for which that
holds). So one small kernel first hashes each (row, segment) once into a table
[rows, cols / BK, 4] int32: the segment's first index, the length of its first run, the first
index of the second run, and the 32 sign bits of its elements; the matmul kernels then build W's
tiles with a few integer adds, compares and shifts per element. HashedNet (every element hashed on
its own) and layers with a tiny M keep the element-by-element mapping.
"""

import os

import torch
import triton
import triton.language as tl

from .rps_common import PRIME, ROAST, STABLE, poly_hash, rps_index, rps_sign
from .rps_gather import config_tensor


def segment_width(config, block_k: int):
    """BK for the segment-table path (block_k, at most 32 with signs, or 16), or None when the
    layer needs the element-by-element mapping."""
    kind, m, tile_r, tile_c = (int(v) for v in (config[0], config[1], config[4], config[5]))
    if m >= 2**31:  # the table holds int32 indices
        return None
    widest = min(block_k, 32) if int(config[14]) else block_k  # the table holds 32 sign bits a segment
    for bk in (widest, 16):
        if kind == int(STABLE) and m >= bk:
            return bk
        # ROAST indices never wrap when m > tile_r * tile_c; column tile boundaries are at
        # multiples of tile_c, so a segment at a multiple of bk holds at most one inside it.
        if kind == int(ROAST) and m > tile_r * tile_c and (tile_c >= bk or bk == 2 * tile_c):
            return bk
    return None


@triton.jit
def _segment_table_kernel(table_ptr, cfg_ptr, N, NSEG, KIND: tl.constexpr, USE_SIGN: tl.constexpr,
                          BR: tl.constexpr, S: tl.constexpr):
    """table[r, j] = (index(r, c0), first run length, index(r, c0 + run), sign bits), c0 = j * S."""
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR).to(tl.int64)
    j = tl.program_id(1).to(tl.int64)
    c0 = j * S + r * 0
    m = tl.load(cfg_ptr + 1)
    i0 = tl.load(cfg_ptr + 2) + r * tl.load(cfg_ptr + 3) + c0
    if KIND == STABLE:
        run = m - i0 % m  # to the end of the partition
    else:
        tile_c = tl.load(cfg_ptr + 5)
        run = tile_c - c0 % tile_c  # to the end of the ROAST tile
    run = tl.minimum(run, S)
    if USE_SIGN:
        # the segment's sign bits are bits (i0 & 15) .. + 31 of three consecutive 16-bit sign words
        g = i0 >> 4
        words = (poly_hash(g % PRIME, cfg_ptr, 10) & 0xFFFF) \
            | ((poly_hash((g + 1) % PRIME, cfg_ptr, 10) & 0xFFFF) << 16) \
            | ((poly_hash((g + 2) % PRIME, cfg_ptr, 10) & 0xFFFF) << 32)
        bits = (words >> (i0 & 15)) & 0xFFFFFFFF
    else:
        bits = r * 0
    out = table_ptr + (r * NSEG + j) * 4
    valid = r < N
    tl.store(out, rps_index(r, c0, cfg_ptr, KIND).to(tl.int32), mask=valid)
    tl.store(out + 1, run.to(tl.int32), mask=valid)
    tl.store(out + 2, rps_index(r, c0 + run, cfg_ptr, KIND).to(tl.int32), mask=valid)
    tl.store(out + 3, bits.to(tl.int32), mask=valid)


@triton.jit
def _segment_map(table_ptr, offs_n, j, N, m, NSEG, USE_SIGN: tl.constexpr, BK: tl.constexpr):
    """M indices and signs (int32, [BN, BK]) of W[offs_n, j * BK : j * BK + BK] from the table."""
    n = offs_n.to(tl.int64)[:, None]
    dc = tl.arange(0, BK)[None, :]
    row = table_ptr + (n * NSEG + j) * 4
    valid = (n < N) & (j < NSEG)  # j = NSEG: the tile past the last, loaded ahead and unused
    start = tl.load(row, mask=valid, other=0)
    run = tl.load(row + 1, mask=valid, other=0)
    second = tl.load(row + 2, mask=valid, other=0)
    index = tl.where(dc < run, start + dc, second + (dc - run))
    index = tl.where(index >= m, index - m, index)
    if USE_SIGN:
        sign = 1 - 2 * ((tl.load(row + 3, mask=valid, other=0) >> dc) & 1)
    else:
        sign = dc * 0 + n.to(tl.int32) * 0 + 1
    return index, sign


@triton.jit
def _weight_load(M_ptr, cfg_ptr, table_ptr, offs_n, j, N, K, m, NSEG, KIND: tl.constexpr, USE_SIGN: tl.constexpr,
                 SEGMENTED: tl.constexpr, BK: tl.constexpr):
    """M's values and the signs (+1 / -1) of W[offs_n, j * BK : j * BK + BK] as [BN, BK] tiles (zeros
    outside W, also for a j past the last tile). Columns along the fast axis: a row segment is a
    run of consecutive M entries, so the gather from M is coalesced (the [BK, BN] orientation
    before it read one M line per lane)."""
    c = (j * BK + tl.arange(0, BK)).to(tl.int64)[None, :]
    mask = (offs_n[:, None] < N) & (c < K)
    if SEGMENTED:
        index, sign = _segment_map(table_ptr, offs_n, j, N, m, NSEG, USE_SIGN, BK)
    else:
        r = offs_n.to(tl.int64)[:, None]
        index, sign = rps_index(r, c, cfg_ptr, KIND), rps_sign(r, c, cfg_ptr, USE_SIGN)
    return tl.load(M_ptr + index, mask=mask, other=0.0), sign


@triton.jit
def _weight_value(value, sign, scale):
    """scale * sign * M value in the compute dtype (float32, float64 for float64 M)."""
    compute = value.to(tl.float64) if value.dtype == tl.float64 else value.to(tl.float32)
    return sign.to(compute.dtype) * scale * compute


@triton.jit
def _forward_kernel(x_ptr, M_ptr, y_ptr, cfg_ptr, table_ptr, B, N, K, m, NSEG, scale, KIND: tl.constexpr,
                    USE_SIGN: tl.constexpr, SEGMENTED: tl.constexpr, PRECISION: tl.constexpr, BM: tl.constexpr,
                    BN: tl.constexpr, BK: tl.constexpr, AHEAD: tl.constexpr):
    offs_b = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32)
    x_rows = x_ptr + offs_b[:, None].to(tl.int64) * K
    if AHEAD:
        # W's tile j + 1 (its table-then-gather chain, into registers) is loaded before tile j's
        # dot: the compiler's pipeliner stages x's loads (cp.async) but not that chain, whose
        # latency otherwise stalls every step. x's loads stay in the loop, so they stay staged
        # (loading x ahead by hand too made the pipeliner stage neither: sm_90 SASS, session 14).
        value, sign = _weight_load(M_ptr, cfg_ptr, table_ptr, offs_n, 0, N, K, m, NSEG, KIND, USE_SIGN, SEGMENTED,
                                   BK)
    for j in range(0, tl.cdiv(K, BK)):
        offs_k = j * BK + tl.arange(0, BK)
        x = tl.load(x_rows + offs_k[None, :], mask=(offs_b[:, None] < B) & (offs_k[None, :] < K), other=0.0)
        if not AHEAD:
            value, sign = _weight_load(M_ptr, cfg_ptr, table_ptr, offs_n, j, N, K, m, NSEG, KIND, USE_SIGN,
                                       SEGMENTED, BK)
        w = _weight_value(value, sign, scale).to(x.dtype)
        if AHEAD:
            value, sign = _weight_load(M_ptr, cfg_ptr, table_ptr, offs_n, j + 1, N, K, m, NSEG, KIND, USE_SIGN,
                                       SEGMENTED, BK)
        acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)
    tl.store(y_ptr + offs_b[:, None].to(tl.int64) * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_b[:, None] < B) & (offs_n[None, :] < N))


@triton.jit
def _grad_x_kernel(gy_ptr, M_ptr, gx_ptr, cfg_ptr, table_ptr, B, N, K, m, NSEG, scale, KIND: tl.constexpr,
                   USE_SIGN: tl.constexpr, SEGMENTED: tl.constexpr, PRECISION: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr, AHEAD: tl.constexpr):
    offs_b = tl.program_id(0) * BM + tl.arange(0, BM)
    j = tl.program_id(1)
    offs_k = j * BK + tl.arange(0, BK)
    acc = tl.zeros((BM, BK), dtype=tl.float64 if gy_ptr.dtype.element_ty == tl.float64 else tl.float32)
    gy_rows = gy_ptr + offs_b[:, None].to(tl.int64) * N
    if AHEAD:  # as in the forward kernel: W's tiles one ahead, gy's left to the pipeliner
        value, sign = _weight_load(M_ptr, cfg_ptr, table_ptr, tl.arange(0, BN), j, N, K, m, NSEG, KIND, USE_SIGN,
                                   SEGMENTED, BK)
    for n0 in range(0, N, BN):
        offs_n = n0 + tl.arange(0, BN)
        gy = tl.load(gy_rows + offs_n[None, :], mask=(offs_b[:, None] < B) & (offs_n[None, :] < N), other=0.0)
        if not AHEAD:
            value, sign = _weight_load(M_ptr, cfg_ptr, table_ptr, offs_n, j, N, K, m, NSEG, KIND, USE_SIGN,
                                       SEGMENTED, BK)
        w = _weight_value(value, sign, scale).to(gy.dtype)
        if AHEAD:
            value, sign = _weight_load(M_ptr, cfg_ptr, table_ptr, offs_n + BN, j, N, K, m, NSEG, KIND, USE_SIGN,
                                       SEGMENTED, BK)
        acc += tl.dot(gy, w, input_precision=PRECISION)
    tl.store(gx_ptr + offs_b[:, None].to(tl.int64) * K + offs_k[None, :], acc.to(gx_ptr.dtype.element_ty),
             mask=(offs_b[:, None] < B) & (offs_k[None, :] < K))


@triton.jit
def _grad_M_kernel(gy_ptr, x_ptr, gM_ptr, cfg_ptr, table_ptr, B, N, K, m, NSEG, scale, KIND: tl.constexpr,
                   USE_SIGN: tl.constexpr, SEGMENTED: tl.constexpr, PRECISION: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr, AHEAD: tl.constexpr):
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    j = tl.program_id(1)
    offs_k = j * BK + tl.arange(0, BK)
    acc = tl.zeros((BN, BK), dtype=gM_ptr.dtype.element_ty)  # grad_y^T x, laid out as W
    for b0 in range(0, B, BM):
        offs_b = b0 + tl.arange(0, BM)
        gy = tl.load(gy_ptr + offs_b[:, None].to(tl.int64) * N + offs_n[None, :],
                     mask=(offs_b[:, None] < B) & (offs_n[None, :] < N), other=0.0)
        x = tl.load(x_ptr + offs_b[:, None].to(tl.int64) * K + offs_k[None, :],
                    mask=(offs_b[:, None] < B) & (offs_k[None, :] < K), other=0.0)
        acc += tl.dot(tl.trans(gy), x, input_precision=PRECISION)
    c = offs_k.to(tl.int64)[None, :]
    if SEGMENTED:
        index, sign = _segment_map(table_ptr, offs_n, j, N, m, NSEG, USE_SIGN, BK)
    else:
        r = offs_n.to(tl.int64)[:, None]
        index, sign = rps_index(r, c, cfg_ptr, KIND), rps_sign(r, c, cfg_ptr, USE_SIGN)
    v = sign.to(acc.dtype) * (scale * acc)
    tl.atomic_add(gM_ptr + index, v, mask=(offs_n[:, None] < N) & (c < K))


def _blocks(t):
    """(BM, BN, BK): small tiles in the interpreter, tensor-core sized ones on a GPU. BM = 128
    builds each W tile from M half as often as 64 (building tiles is integer work per element,
    the kernel's bound); not yet timed against 64 on a GPU. OSMOS_RPS_TILES="BM,BN,BK" overrides
    (for tuning; BK is the segment width when the layer allows it, else 16)."""
    tiles = os.environ.get("OSMOS_RPS_TILES")
    if tiles:
        bm, bn, bk = (int(v) for v in tiles.split(","))
        return bm, bn, bk
    return (128, 128, 32) if t.is_cuda else (16, 32, 32)


class _Plan:
    """Launch arguments shared by the three kernels: block sizes, the segment table (or a dummy
    when the layer uses the element-by-element mapping) and the constexpr switches."""

    def __init__(self, config, rows, cols, t):
        self.BM, self.BN, bk = _blocks(t)
        seg = segment_width(config, bk)
        self.BK = seg or bk
        self.nseg = triton.cdiv(max(cols, 1), self.BK)
        self.cfg = config_tensor(config, t.device)
        if seg:
            self.table = torch.empty(max(rows, 1), self.nseg, 4, dtype=torch.int32, device=t.device)
            _segment_table_kernel[(triton.cdiv(max(rows, 1), 64), self.nseg)](
                self.table, self.cfg, rows, self.nseg, KIND=config[0], USE_SIGN=bool(config[14]), BR=64, S=seg)
        else:
            self.table = torch.empty(4, dtype=torch.int32, device=t.device)
        # 16-bit inputs use the tensor cores (float32 accumulation); float32 / float64 stay exact.
        precision = "ieee" if t.dtype in (torch.float32, torch.float64) else None
        self.m = int(config[1])
        self.meta = dict(KIND=config[0], USE_SIGN=bool(config[14]), SEGMENTED=seg is not None, PRECISION=precision,
                         BM=self.BM, BN=self.BN, BK=self.BK, AHEAD=load_ahead(), num_warps=8 if t.is_cuda else 4)


def load_ahead() -> bool:
    """OSMOS_RPS_LOAD_AHEAD=1: the forward and grad_x kernels load W's tile j + 1 from M before tile
    j's dot (x's / grad_y's tiles stay with the compiler's pipeliner). Not yet timed on a GPU
    (bench_rps.py times both), so off by default; the results are the same bits either way."""
    return os.environ.get("OSMOS_RPS_LOAD_AHEAD", "0") == "1"


def rps_linear_forward(x, M, config, rows, cols, scale):
    """y [B, rows] = x [B, cols] @ W^T."""
    B = x.shape[0]
    y = torch.empty(B, rows, dtype=x.dtype, device=x.device)
    p = _Plan(config, rows, cols, x)
    grid = (triton.cdiv(max(B, 1), p.BM), triton.cdiv(max(rows, 1), p.BN))
    _forward_kernel[grid](x, M, y, p.cfg, p.table, B, rows, cols, p.m, p.nseg, scale, **p.meta)
    return y


def rps_linear_grad_x(grad_y, M, config, rows, cols, scale):
    """grad_x [B, cols] = grad_y [B, rows] @ W."""
    B = grad_y.shape[0]
    gx = torch.empty(B, cols, dtype=grad_y.dtype, device=grad_y.device)
    p = _Plan(config, rows, cols, grad_y)
    grid = (triton.cdiv(max(B, 1), p.BM), triton.cdiv(cols, p.BK))
    _grad_x_kernel[grid](grad_y, M, gx, p.cfg, p.table, B, rows, cols, p.m, p.nseg, scale, **p.meta)
    return gx


def rps_linear_grad_M(grad_y, x, config, rows, cols, scale):
    """grad_M [m] (float32, float64 for float64 inputs) = scatter of grad_y^T @ x."""
    gM = torch.zeros(config[1], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device)
    p = _Plan(config, rows, cols, x)
    grid = (triton.cdiv(max(rows, 1), p.BN), triton.cdiv(cols, p.BK))
    _grad_M_kernel[grid](grad_y, x, gM, p.cfg, p.table, x.shape[0], rows, cols, p.m, p.nseg, scale, **p.meta)
    return gM
