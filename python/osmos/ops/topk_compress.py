"""TopK error-feedback compression: one EF21 worker step.

With d = x - state (computed in state's dtype), select the k entries of largest |d|, return
their values and int64 indices (ascending), and add the values into state in place, so
state becomes the worker's new g_i.

Selection is exact. Ties in |d| go to the lower index, so every backend returns the same set.
NaN policy: a NaN in d ranks above every number, +inf included (as torch.topk ranks NaN);
NaNs tie with one another, lower index first. -0.0 and +0.0 tie.

The receiver side is `topk_decompress` (dense vector from (values, indices)) and
`topk_accumulate_` (adds many workers' (values, indices) into a dense buffer).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from osmos import _native
from osmos.ops._common import (
    gpu_backend,
    FLOAT_DTYPES,
    check_int,
    check_tensor,
    cuda_stream,
    dtype_code,
    eager_cuda,
    num_threads,
    triton_interpreting,
)

MAX_NUMEL = 2**31 - 1
_NAN_KEY = 0x7F800001  # every NaN's |d| bit pattern is mapped here, just above +inf


def validate(x: Tensor, state: Tensor, k: int) -> None:
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    check_tensor("state", state, dtypes=(x.dtype, torch.float32) if x.dtype != torch.float32 else (torch.float32,))
    if state.shape != x.shape:
        raise ValueError(f"state must have the shape of x {tuple(x.shape)}, got {tuple(state.shape)}")
    if state.device != x.device:
        raise ValueError(f"state must be on x's device {x.device}, got {state.device}")
    if x.numel() > MAX_NUMEL:
        raise ValueError(f"x has {x.numel()} elements; at most 2**31 - 1 are supported")
    check_int("k", k, low=0, high=x.numel())


def magnitude_keys(d: Tensor) -> Tensor:
    """int32 keys that order |d| as the kernels do (NaNs canonicalised above +inf)."""
    keys = d.float().abs().view(torch.int32)
    return torch.where(keys > 0x7F800000, torch.full_like(keys, _NAN_KEY), keys)


def reference_topk_compress(x: Tensor, state: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Pure-torch definition of the op (slow: a full stable sort)."""
    d = (x.to(state.dtype) - state).reshape(-1)
    keys = magnitude_keys(d)
    order = torch.sort(keys, descending=True, stable=True).indices[:k]
    indices = torch.sort(order).values
    values = d[indices]
    flat = state.view(-1)
    flat[indices] = flat[indices] + values
    return values, indices


@torch.library.custom_op("osmos::topk_compress", mutates_args=("state",))
def _topk_compress_op(x: Tensor, state: Tensor, k: int) -> tuple[Tensor, Tensor]:
    raise NotImplementedError(f"osmos::topk_compress has no kernel for device {x.device.type}")


@_topk_compress_op.register_fake
def _(x, state, k):
    return x.new_empty(k, dtype=state.dtype), x.new_empty(k, dtype=torch.int64)


def _alloc(x: Tensor, state: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return torch.empty(k, dtype=state.dtype, device=x.device), torch.empty(k, dtype=torch.int64, device=x.device)


def topk_compress_cpu(x: Tensor, state: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The C++ kernel (osmos._C); the reference when _C is not built."""
    if not _native.has_cpu_kernel("topk_compress"):
        return reference_topk_compress(x, state, k)
    values, indices = _alloc(x, state, k)
    _native.C.topk_compress(
        x.data_ptr(), dtype_code(x), state.data_ptr(), dtype_code(state), x.numel(), k,
        values.data_ptr(), indices.data_ptr(), num_threads(),
    )
    return values, indices


CUDA_ALGOS = {"auto": 0, "radix": 1, "sampled": 2}


def topk_compress_cuda_native(x: Tensor, state: Tensor, k: int, algo: str | None = None) -> tuple[Tensor, Tensor]:
    """The CUDA kernel (osmos._cuda), on the current stream. algo: "auto" (default, or the
    OSMOS_TOPK_CUDA_ALGO environment variable), "radix" (exact radix select over all keys) or
    "sampled" (a sampled threshold, one pass, exact select over the candidates); same bits."""
    algo = algo or os.environ.get("OSMOS_TOPK_CUDA_ALGO", "auto")
    if algo not in CUDA_ALGOS:
        raise ValueError(f"algo must be one of {sorted(CUDA_ALGOS)}, got {algo!r}")
    code = CUDA_ALGOS[algo]
    values, indices = _alloc(x, state, k)
    workspace = torch.empty(_native.CUDA.topk_compress_workspace_bytes(x.numel(), k, code), dtype=torch.uint8,
                            device=x.device)
    with torch.cuda.device(x.device):  # the kernels launch on the current device
        _native.CUDA.topk_compress(
            x.data_ptr(), dtype_code(x), state.data_ptr(), dtype_code(state), x.numel(), k,
            values.data_ptr(), indices.data_ptr(), workspace.data_ptr(), workspace.numel(), cuda_stream(x), code,
        )
    return values, indices


def topk_compress_triton(x: Tensor, state: Tensor, k: int) -> tuple[Tensor, Tensor]:
    from osmos.triton_kernels.topk_compress import topk_compress as kernel

    return kernel(x, state, k)


@_topk_compress_op.register_kernel("cpu")
def _(x, state, k):
    if triton_interpreting() and os.environ.get("OSMOS_CPU_BACKEND") == "triton":
        return topk_compress_triton(x, state, k)
    return topk_compress_cpu(x, state, k)


@_topk_compress_op.register_kernel("cuda")
def _(x, state, k):
    backend = gpu_backend("topk_compress")
    if backend == "cuda":
        return topk_compress_cuda_native(x, state, k)
    if backend == "triton":
        return topk_compress_triton(x, state, k)
    return reference_topk_compress(x, state, k)


def topk_compress(x: Tensor, state: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """One EF21 worker step: (values, indices) of TopK(x - state); state += those values.

    Args:
        x: the new gradient, any shape, float32 / float16 / bfloat16, contiguous.
        state: the worker's g_i, same shape and device; x's dtype or float32. Updated in place.
        k: entries to keep, 0 <= k <= x.numel().
    Returns:
        values [k] in state's dtype and indices [k] int64 into x.view(-1), ascending.
    """
    validate(x, state, k)
    if eager_cuda(x) and gpu_backend("topk_compress") == "cuda":
        # the custom op's dispatch costs tens of microseconds, a tenth of the kernels at n = 16M
        return topk_compress_cuda_native(x, state, k)
    return _topk_compress_op(x, state, k)


def topk_decompress(values: Tensor, indices: Tensor, n: int) -> Tensor:
    """Dense vector of length n with values at indices (zeros elsewhere)."""
    check_tensor("values", values, dtypes=FLOAT_DTYPES, contiguous=False)
    check_tensor("indices", indices, dtypes=(torch.int64,), contiguous=False)
    if values.shape != indices.shape:
        raise ValueError(f"values and indices must have one shape, got {tuple(values.shape)} and {tuple(indices.shape)}")
    check_int("n", n, low=0)
    out = values.new_zeros(n)
    return topk_accumulate_(out, values, indices)


def _validate_accumulate(out: Tensor, values: Tensor, indices: Tensor, counts: Tensor | None,
                         weights: Tensor | None) -> None:
    check_tensor("out", out, ndim=1, dtypes=FLOAT_DTYPES)
    check_tensor("values", values, dtypes=FLOAT_DTYPES, contiguous=False)
    check_tensor("indices", indices, dtypes=(torch.int32, torch.int64), contiguous=False)
    if values.shape != indices.shape:
        raise ValueError(f"values and indices must have one shape, got {tuple(values.shape)} and {tuple(indices.shape)}")
    for name, t in (("values", values), ("indices", indices)):
        if t.device != out.device:
            raise ValueError(f"{name} must be on out's device {out.device}, got {t.device}")
    for name, t, dtypes in (("counts", counts, (torch.int64,)), ("weights", weights, (torch.float32,))):
        if t is None:
            continue
        if values.dim() != 2:
            raise ValueError(f"{name} needs values / indices of shape [rows, cols], got {tuple(values.shape)}")
        check_tensor(name, t, ndim=1, dtypes=dtypes)
        if t.numel() != values.shape[0] or t.device != out.device:
            raise ValueError(f"{name} must have one entry per row ({values.shape[0]}) on {out.device}, "
                             f"got {t.numel()} on {t.device}")


def _present(values: Tensor, indices: Tensor, counts: Tensor | None, weights: Tensor | None):
    """The (values, int64 indices) pairs that take part, flattened in row-major order."""
    if weights is not None:
        values = values.to(torch.float32) * weights[:, None]
    if counts is not None:
        keep = torch.arange(values.shape[1], device=values.device)[None, :] < counts[:, None]
        values, indices = values[keep], indices[keep]
    return values.reshape(-1), indices.reshape(-1).long()


def reference_topk_accumulate_(out: Tensor, values: Tensor, indices: Tensor, counts: Tensor | None = None,
                               weights: Tensor | None = None, alpha: float = 1.0) -> None:
    """Pure-torch definition of `topk_accumulate_` (index_add_, rows in order)."""
    v, i = _present(values, indices, counts, weights)
    if i.numel() and not bool(((i >= 0) & (i < out.numel())).all()):
        raise IndexError(f"indices must lie in [0, {out.numel()})")
    out.index_add_(0, i, v.to(out.dtype), alpha=alpha)


@torch.library.custom_op("osmos::topk_accumulate_", mutates_args=("out",))
def _topk_accumulate_op(out: Tensor, values: Tensor, indices: Tensor, counts: Tensor | None,
                        weights: Tensor | None, alpha: float) -> None:
    reference_topk_accumulate_(out, values, indices, counts, weights, alpha)


@_topk_accumulate_op.register_fake
def _(out, values, indices, counts, weights, alpha):
    return None


def rowwise_topk_accumulate_(out: Tensor, values: Tensor, indices: Tensor, counts: Tensor | None = None,
                             weights: Tensor | None = None, alpha: float = 1.0) -> None:
    """`topk_accumulate_` as one index_add_ per row, rows in order: on CUDA the same bits on every
    rank whenever each row's indices are distinct (every TopK / RandK message's are), since no
    two atomic adds of one index_add_ then meet (one index_add_ of all rows adds repeated indices
    in whatever order its atomics land). What CUDA tensors run."""
    rows_v = values.reshape(1, -1) if values.dim() != 2 else values
    rows_i = indices.reshape(1, -1) if indices.dim() != 2 else indices
    cols = rows_i.shape[1]
    lengths = counts.tolist() if counts is not None else [cols] * rows_i.shape[0]
    if rows_i.numel():  # checked first: a bad index would assert on the device
        outside = (rows_i < 0) | (rows_i >= out.numel())
        if counts is not None:  # padding past counts[r] is not read
            outside &= torch.arange(cols, device=rows_i.device)[None, :] < counts[:, None]
        if bool(outside.any()):
            raise IndexError(f"indices must lie in [0, {out.numel()})")
    for r in range(rows_i.shape[0]):
        n = min(int(lengths[r]), cols)
        if n <= 0:
            continue
        v = rows_v[r, :n] if weights is None else rows_v[r, :n].to(torch.float32) * weights[r]
        out.index_add_(0, rows_i[r, :n].long(), v.to(out.dtype), alpha=alpha)


@_topk_accumulate_op.register_kernel("cuda")
def _(out, values, indices, counts, weights, alpha):
    rowwise_topk_accumulate_(out, values, indices, counts, weights, alpha)


@_topk_accumulate_op.register_kernel("cpu")
def _(out, values, indices, counts, weights, alpha):
    if (out.dtype != torch.float32 or values.dtype != torch.float32 or not out.is_contiguous()
            or not _native.has_cpu_kernel("topk_accumulate")):
        return reference_topk_accumulate_(out, values, indices, counts, weights, alpha)
    rows_v = values.reshape(1, -1) if values.dim() != 2 else values
    rows_i = indices.reshape(1, -1) if indices.dim() != 2 else indices
    if rows_v.stride(-1) != 1:
        rows_v = rows_v.contiguous()
    if rows_i.stride(-1) != 1:
        rows_i = rows_i.contiguous()
    counts = None if counts is None else counts.contiguous()
    weights = None if weights is None else weights.contiguous()
    bad = _native.C.topk_accumulate(
        out.data_ptr(), out.numel(), rows_v.data_ptr(), rows_v.stride(0), rows_i.data_ptr(),
        rows_i.dtype == torch.int64, rows_i.stride(0), 0 if counts is None else counts.data_ptr(),
        0 if weights is None else weights.data_ptr(), rows_v.shape[0], rows_v.shape[1], float(alpha),
    )
    if bad >= 0:
        raise IndexError(f"indices must lie in [0, {out.numel()}); flat entry {bad} is {int(rows_i.reshape(-1)[bad])}")


def topk_accumulate_(out: Tensor, values: Tensor, indices: Tensor, alpha: float = 1.0, *,
                     counts: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
    """out[indices] += alpha * values, for values / indices of any matching shape (e.g. [workers, k]
    from an all_gather). Repeated indices accumulate, in row-major order (so every rank that runs it
    on the same inputs gets the same bits; on CUDA that holds when each row's indices are distinct,
    as in TopK / RandK messages: rows are added one by one, each with atomics). Returns out.

    Args:
        out: 1-D float buffer, updated in place.
        values: float values; indices: int32 or int64 positions in [0, out.numel()), same shape.
        alpha: a scale for every added value.
        counts: optional int64 [rows] for values of shape [rows, cols]: only the first counts[r]
            entries of row r take part (padded all_gather messages).
        weights: optional float32 [rows]: row r's values are multiplied by weights[r] (in float32)
            before alpha.
    """
    _validate_accumulate(out, values, indices, counts, weights)
    _topk_accumulate_op(out, values, indices, counts, weights, float(alpha))
    return out
