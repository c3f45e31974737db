"""Triton streaming similarity top-k: tiled matmul with a running top-k held in registers.

Each program owns BLOCK_Q queries and one split of the database rows. It walks its split in
BLOCK_N-row tiles, computes the [BLOCK_Q, BLOCK_N] score tile with tl.dot (IEEE float32),
and folds the tile into a running top-k of K slots per query: K rounds of "tile maximum
(lowest index among equal) replaces the worst slot if it is better". Each split's K
candidates go to a small [Q, splits, K] buffer that the launcher merges with the contract's
order (score descending, lower index first; see osmos.ops.similarity_topk).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

MAX_K = 32  # the unrolled selection rounds grow with K; larger k uses the torch path


@triton.jit
def _similarity_topk_kernel(
    q_ptr, db_ptr, out_s_ptr, out_i_ptr, nan_ptr,
    Q, N, D, rows_per_split, splits,
    K: tl.constexpr, KP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    slot = tl.arange(0, KP)
    cols = tl.arange(0, BLOCK_N)
    dd = tl.arange(0, BLOCK_D)
    # Slots >= K are padding: +inf so they are never the worst slot; never written out.
    best_s = tl.where(slot[None, :] < K, float("-inf"), float("inf")) + tl.zeros([BLOCK_Q, KP], tl.float32)
    best_i = tl.full([BLOCK_Q, KP], -1, tl.int32)
    nan_seen = tl.zeros([BLOCK_Q], tl.int32)
    begin = pid_s * rows_per_split
    end = tl.minimum(begin + rows_per_split, N)
    for n0 in range(begin, end, BLOCK_N):
        rows = n0 + cols
        acc = tl.zeros([BLOCK_Q, BLOCK_N], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            qa = tl.load(q_ptr + offs_q[:, None] * D + (d0 + dd)[None, :],
                         mask=(offs_q[:, None] < Q) & ((d0 + dd)[None, :] < D), other=0.0)
            xb = tl.load(db_ptr + rows[:, None] * D + (d0 + dd)[None, :],
                         mask=(rows[:, None] < end) & ((d0 + dd)[None, :] < D), other=0.0)
            acc += tl.dot(qa, tl.trans(xb.to(tl.float32)), input_precision="ieee")
        nan_seen = tl.maximum(nan_seen, tl.max((acc != acc).to(tl.int32), 1))
        acc = tl.where((rows[None, :] < end) & (acc == acc), acc, float("-inf"))
        for _ in tl.static_range(K):
            m = tl.max(acc, 1)
            a = tl.min(tl.where(acc == m[:, None], rows[None, :], 2147483647), 1)
            worst_s = tl.min(best_s, 1)
            worst_i = tl.max(tl.where(best_s == worst_s[:, None], best_i, -2), 1)
            take = (m > worst_s) | ((m == worst_s) & (a < worst_i))
            at = (best_s == worst_s[:, None]) & (best_i == worst_i[:, None])
            pos = tl.min(tl.where(at, slot[None, :], KP), 1)
            hit = (slot[None, :] == pos[:, None]) & take[:, None]
            best_s = tl.where(hit, m[:, None], best_s)
            best_i = tl.where(hit, a[:, None], best_i)
            acc = tl.where(rows[None, :] == a[:, None], float("-inf"), acc)
    out = (offs_q[:, None] * splits + pid_s) * K + slot[None, :]
    keep = (offs_q[:, None] < Q) & (slot[None, :] < K)
    tl.store(out_s_ptr + out, best_s, mask=keep)
    tl.store(out_i_ptr + out, best_i, mask=keep)
    tl.store(nan_ptr + offs_q * splits + pid_s, nan_seen, mask=offs_q < Q)


def similarity_topk(queries: torch.Tensor, database: torch.Tensor, k: int, threshold: float | None = None,
                    block_n: int = 64, max_splits: int = 256):
    """Launcher: same contract as osmos.ops.similarity_topk (validated inputs, k <= MAX_K)."""
    from osmos.ops.similarity_topk import _empty_result, _nan_error, sort_candidates

    n, d = database.shape
    nq = queries.shape[0]
    width = min(k, n)
    if width == 0 or nq == 0:
        return _empty_result(nq, width, queries.device)
    if width > MAX_K:
        raise ValueError(f"k must be <= {MAX_K} for the Triton kernel, got {width}")
    q = queries.float().contiguous()
    splits = max(1, min(max_splits, triton.cdiv(n, block_n * 4)))
    rows_per_split = triton.cdiv(triton.cdiv(n, splits), block_n) * block_n
    splits = triton.cdiv(n, rows_per_split)
    out_s = torch.empty(nq, splits, width, dtype=torch.float32, device=q.device)
    out_i = torch.empty(nq, splits, width, dtype=torch.int32, device=q.device)
    nan = torch.zeros(nq, splits, dtype=torch.int32, device=q.device)
    block_q = 16 if nq <= 16 else 32
    grid = (triton.cdiv(nq, block_q), splits)
    _similarity_topk_kernel[grid](
        q, database, out_s, out_i, nan, nq, n, d, rows_per_split, splits,
        K=width, KP=max(2, 1 << math.ceil(math.log2(width))), BLOCK_Q=block_q, BLOCK_N=block_n,
        BLOCK_D=min(64, max(16, triton.next_power_of_2(d))),
    )
    if nan.any():
        raise _nan_error(0, n)
    return sort_candidates(out_s.view(nq, -1), out_i.view(nq, -1).long(), width, threshold)
