"""Exact top-k inner-product search, streamed over the database.

For queries [Q, D] and a database [N, D], returns for every query the k database rows of
largest inner product (cosine similarity when both sides are L2-normalised), without ever
materialising the [Q, N] score matrix: the database streams past in chunks and each query
keeps a running top-k. Memory is O(Q * k + Q * chunk).

Contract (every backend):
- Scores are computed in float32 (float16 / bfloat16 inputs are widened exactly).
- Output width is min(k, N): k > N returns all N rows; an empty database returns [Q, 0].
- Order: best first. Ties in score go to the LOWER database index.
- threshold: results with score < threshold are dropped; their slots hold score -inf and
  index -1 and always come after the kept results.
- NaN is rejected with ValueError (a NaN query, or a database chunk whose scores are NaN,
  which a NaN or an inf * 0 in the database produces).
- The database may be a numpy array or np.memmap larger than memory (float32 / float16):
  it is wrapped without a copy and read chunk by chunk.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
from typing import Optional  # torch < 2.7 infers op schemas from typing generics only
import torch
from torch import Tensor

from osmos import _native
from osmos.ops._common import (FLOAT_DTYPES, check_int, check_tensor, dtype_code, eager_cuda, gpu_uses_triton, num_threads,
                               triton_interpreting)

# Query batches up to this size use the fused dot + selection kernel (one pass over the
# database, memory bound); larger ones use BLAS on chunks + the fused selection kernel.
FUSED_MAX_QUERIES = 32
# Bytes of the float32 score block per chunk: large enough that BLAS runs at full speed
# (measured: 16-64 MiB beat 2-4 MiB at 100-1000 queries), small next to the database.
SCORE_BLOCK_BYTES = 64 << 20
_NUMPY_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}


def validate(queries: Tensor, database: Tensor, k: int, threshold: float | None) -> None:
    check_tensor("queries", queries, dtypes=FLOAT_DTYPES, ndim=2)
    check_tensor("database", database, dtypes=FLOAT_DTYPES, ndim=2)
    if database.shape[1] != queries.shape[1]:
        raise ValueError(
            f"database rows must have the queries' dimension {queries.shape[1]}, got shape {tuple(database.shape)}"
        )
    if database.device != queries.device:
        raise ValueError(f"database must be on the queries' device {queries.device}, got {database.device}")
    check_int("k", k, low=0)
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a float or None, got {type(threshold).__name__}")
        if math.isnan(threshold):
            raise ValueError("threshold must not be NaN")


def check_queries_nan(queries: Tensor) -> None:
    """Inside the kernels (a data-dependent check torch.compile must not trace)."""
    if queries.numel() and torch.isnan(queries).any():
        raise ValueError("queries contain NaN")


def _nan_error(begin: int, end: int) -> ValueError:
    return ValueError(f"NaN scores against database rows [{begin}, {end}): the database contains NaN (or inf)")


def _empty_result(q: int, width: int, device) -> tuple[Tensor, Tensor]:
    scores = torch.full((q, width), -math.inf, dtype=torch.float32, device=device)
    return scores, torch.full((q, width), -1, dtype=torch.int64, device=device)


def sort_candidates(scores: Tensor, indices: Tensor, width: int, threshold: Optional[float]) -> tuple[Tensor, Tensor]:
    """Best `width` of candidate (scores, indices) [Q, M] per row under the contract's order
    (score descending, lower index first); index -1 marks an empty candidate."""
    big = torch.iinfo(torch.int64).max
    keyed = torch.where(indices < 0, big, indices)
    by_index = torch.sort(keyed, dim=1, stable=True)
    s = torch.gather(scores, 1, by_index.indices)
    s = torch.where(by_index.values == big, -math.inf, s)
    by_score = torch.sort(s, dim=1, descending=True, stable=True)
    s = by_score.values[:, :width]
    i = torch.gather(by_index.values, 1, by_score.indices)[:, :width]
    drop = (i == big) | (s < threshold if threshold is not None else torch.zeros_like(i, dtype=torch.bool))
    return torch.where(drop, -math.inf, s), torch.where(drop, -1, i)


def reference_similarity_topk(queries: Tensor, database: Tensor, k: int, threshold: float | None = None):
    """Pure-torch definition: the full [Q, N] float32 score matrix and a stable sort."""
    scores = queries.float() @ database.float().T
    if scores.numel() and torch.isnan(scores).any():
        raise _nan_error(0, database.shape[0])
    indices = torch.arange(database.shape[0], device=queries.device).expand_as(scores)
    return sort_candidates(scores, indices, min(k, database.shape[0]), threshold)


def _block_candidates(scores: Tensor, begin: int, width: int) -> tuple[Tensor, Tensor]:
    """Candidates [Q, <= C] of one score block [Q, C] (database rows begin...) that hold the
    contract's best `width`: torch.topk's, unless some row's width-th score ties with entries
    topk left out (topk picks among ties arbitrarily), then the whole block."""
    every = _every_index(scores, begin)
    if width >= scores.shape[1]:
        return scores, every
    values, positions = torch.topk(scores, width, dim=1)
    last = values[:, -1:]
    if not torch.equal((scores == last).sum(1), (values == last).sum(1)):
        return scores, every
    return values, positions + begin


def similarity_topk_torch(queries: Tensor, database: Tensor, k: int, threshold: float | None = None, chunk: int = 65536):
    """Streaming in plain torch (any device): per chunk, mm + topk + merge with the running top-k.

    The NaN and tie checks of every chunk stay on the device and are read back once, at the end
    (a host sync per check made the GPU wait between chunks); if some chunk's k-th score tied with
    scores topk left out, the call is redone with exact candidates for such chunks
    (`_similarity_topk_torch_checked`)."""
    n = database.shape[0]
    width = min(k, n)
    if width == 0 or queries.shape[0] == 0:
        check_queries_nan(queries)
        return _empty_result(queries.shape[0], width, queries.device)
    top_s, top_i = _empty_result(queries.shape[0], width, queries.device)
    q = queries.float()
    flags = []  # per chunk: NaN scores, tie at the cut
    for begin in range(0, n, chunk):
        scores = q @ database[begin : begin + chunk].float().T
        nan = torch.isnan(scores).any()
        if width >= scores.shape[1]:
            values, idx, tie = scores, _every_index(scores, begin), torch.zeros_like(nan)
        else:
            values, positions = torch.topk(scores, width, dim=1)
            last = values[:, -1:]
            tie = ((scores == last).sum(1) != (values == last).sum(1)).any()
            idx = positions + begin
        flags.append(torch.stack([nan, tie]))
        top_s, top_i = sort_candidates(torch.cat([top_s, values], 1), torch.cat([top_i, idx], 1), width, threshold)
    nan_chunks, tie_chunks = torch.stack(flags).T.tolist()  # the one host sync
    if any(nan_chunks):
        check_queries_nan(queries)
        begin = nan_chunks.index(True) * chunk
        raise _nan_error(begin, min(n, begin + chunk))
    if any(tie_chunks):
        return _similarity_topk_torch_checked(queries, database, k, threshold, chunk)
    return top_s, top_i


def _every_index(scores: Tensor, begin: int) -> Tensor:
    return torch.arange(begin, begin + scores.shape[1], device=scores.device).expand_as(scores)


def _similarity_topk_torch_checked(queries: Tensor, database: Tensor, k: int, threshold: float | None, chunk: int):
    """`similarity_topk_torch` with each chunk's checks read at once (exact candidates for a
    chunk with a tie at the cut, see `_block_candidates`)."""
    n = database.shape[0]
    width = min(k, n)
    top_s, top_i = _empty_result(queries.shape[0], width, queries.device)
    q = queries.float()
    for begin in range(0, n, chunk):
        block = database[begin : begin + chunk].float()
        scores = q @ block.T
        if torch.isnan(scores).any():
            raise _nan_error(begin, begin + block.shape[0])
        scores, idx = _block_candidates(scores, begin, width)
        top_s, top_i = sort_candidates(torch.cat([top_s, scores], 1), torch.cat([top_i, idx], 1), width, threshold)
    return top_s, top_i


def similarity_topk_cpu(queries: Tensor, database: Tensor, k: int, threshold: float | None = None):
    """The C++ kernels (osmos._C): fused dot + selection for small query batches, else BLAS
    score blocks per chunk merged by the AVX-512 selection kernel."""
    if not _native.has_cpu_kernel("similarity_select"):
        return similarity_topk_torch(queries, database, k, threshold)
    n, d = database.shape
    nq = queries.shape[0]
    width = min(k, n)
    top_s, top_i = _empty_result(nq, width, queries.device)
    if width == 0 or nq == 0:
        return top_s, top_i
    q = queries.float().contiguous()
    thr = -math.inf if threshold is None else float(threshold)
    threads = num_threads()
    if nq <= FUSED_MAX_QUERIES:
        ws_s = torch.empty((threads - 1) * nq * width, dtype=torch.float32)
        ws_i = torch.empty((threads - 1) * nq * width, dtype=torch.int64)
        if _native.C.similarity_fused(
            q.data_ptr(), nq, d, database.data_ptr(), dtype_code(database), n, 0, thr,
            top_s.data_ptr(), top_i.data_ptr(), width, ws_s.data_ptr(), ws_i.data_ptr(), threads,
        ):
            raise _nan_error(0, n)
        return top_s, top_i
    chunk = max(256, min(n, SCORE_BLOCK_BYTES // (4 * nq)))
    score_buf = torch.empty(nq * chunk, dtype=torch.float32)
    widen_buf = torch.empty(chunk, d, dtype=torch.float32) if database.dtype != torch.float32 else None
    for begin in range(0, n, chunk):
        block = database[begin : begin + chunk]
        rows = block.shape[0]
        if widen_buf is not None:
            block = widen_buf[:rows].copy_(block)
        scores = score_buf[: nq * rows].view(nq, rows)
        torch.mm(q, block.T, out=scores)
        if _native.C.similarity_select(
            scores.data_ptr(), nq, rows, rows, begin, thr, top_s.data_ptr(), top_i.data_ptr(), width, threads
        ):
            raise _nan_error(begin, begin + rows)
    return top_s, top_i


def similarity_topk_triton(queries: Tensor, database: Tensor, k: int, threshold: float | None = None):
    from osmos.triton_kernels.similarity_topk import similarity_topk as kernel

    return kernel(queries, database, k, threshold)


def _gpu_backend(k: int) -> str:
    """OSMOS_GPU_BACKEND=triton overrides (k <= MAX_K); by default torch: matmul + topk per chunk
    (on an H100 the Triton kernel ran at 0.19-0.35x plain mm + topk; benchmarks/RESULTS.md)."""
    if not gpu_uses_triton(default=False):
        return "torch"
    from osmos.triton_kernels.similarity_topk import MAX_K

    return "triton" if k <= MAX_K else "torch"


GPU_SCORE_ELEMENTS = 1 << 26  # score block of the GPU torch path: at most 256 MiB of float32


@torch.library.custom_op("osmos::similarity_topk", mutates_args=())
def _similarity_topk_op(queries: Tensor, database: Tensor, k: int, threshold: Optional[float]) -> tuple[Tensor, Tensor]:
    raise NotImplementedError(f"osmos::similarity_topk has no kernel for device {queries.device.type}")


@_similarity_topk_op.register_fake
def _(queries, database, k, threshold):
    width = min(k, database.shape[0])
    shape = (queries.shape[0], width)
    return queries.new_empty(shape, dtype=torch.float32), queries.new_empty(shape, dtype=torch.int64)


@_similarity_topk_op.register_kernel("cpu")
def _(queries, database, k, threshold):
    check_queries_nan(queries)
    if triton_interpreting() and os.environ.get("OSMOS_CPU_BACKEND") == "triton":
        return similarity_topk_triton(queries, database, k, threshold)
    return similarity_topk_cpu(queries, database, k, threshold)


@_similarity_topk_op.register_kernel("cuda")
def _(queries, database, k, threshold):
    if _gpu_backend(k) == "triton":
        check_queries_nan(queries)
        return similarity_topk_triton(queries, database, k, threshold)
    # NaN queries: found by the torch path's deferred check (it reports them as such)
    return similarity_topk_torch(queries, database, k, threshold, chunk=_gpu_chunk(queries))


def _gpu_chunk(queries: Tensor) -> int:
    """Database rows per score block on a GPU: at most GPU_SCORE_ELEMENTS scores, >= 65536 rows."""
    return max(65536, GPU_SCORE_ELEMENTS // max(1, queries.shape[0]))


def as_database(database) -> Tensor:
    """A torch view of a database given as a tensor, numpy array or np.memmap (no copy)."""
    if isinstance(database, Tensor):
        return database
    if isinstance(database, np.ndarray):
        if database.dtype not in _NUMPY_DTYPES:
            raise TypeError(f"database must have dtype float32 or float16, got {database.dtype}")
        if not database.flags.c_contiguous:
            raise ValueError("database must be C-contiguous")
        with warnings.catch_warnings():  # read-only memmaps: the kernels only read
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(database)
    raise TypeError(f"database must be a torch.Tensor or numpy array, got {type(database).__name__}")


def similarity_topk(queries: Tensor, database, k: int, threshold: float | None = None) -> tuple[Tensor, Tensor]:
    """Exact top-k inner products of every query against the database, streamed.

    Args:
        queries: [Q, D] float32 / float16 / bfloat16, contiguous.
        database: [N, D] tensor (float32 / float16 / bfloat16) on the queries' device, or a
            C-contiguous numpy array / np.memmap (float32 / float16), read in chunks.
        k: results per query (>= 0); the output width is min(k, N).
        threshold: drop results with score < threshold (slots become -inf / -1).
    Returns:
        scores [Q, min(k, N)] float32, best first (ties: lower index first), and
        indices [Q, min(k, N)] int64 into the database (-1 for dropped slots).
    """
    database = as_database(database)
    validate(queries, database, k, threshold)
    threshold = None if threshold is None else float(threshold)
    if eager_cuda(queries) and _gpu_backend(k) == "torch":
        return similarity_topk_torch(queries, database, k, threshold, chunk=_gpu_chunk(queries))
    return _similarity_topk_op(queries, database, k, threshold)
