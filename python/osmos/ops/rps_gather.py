"""Hashed gather for randomized parameter sharing: materialise a layer's weight from the shared
array M, W[r, c] = scale * sign(i) * M[h(r, c)], with autograd whose backward is the adjoint
scatter-add into M (`rps_scatter`). The mapping is osmos.ops.rps_mapping / osmos/rps_hash.h.

Backends: CPU C++ (osmos._C; multithreaded; its scatter is race-free and bitwise reproducible
for any thread count), CUDA (osmos._cuda) and Triton, each checked against `reference_*`.
On the GPU the scatter uses atomics unless `deterministic=True`, which sorts the elements by
M index (stable) and sums each slot's contributions in element order: bitwise reproducible, and
the same order as the CPU kernel. Accumulation is in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import os

from typing import List  # torch < 2.7 infers op schemas from typing generics only
import torch
from torch import Tensor

from osmos import _native
from osmos.ops._common import (
    check_int,
    check_tensor,
    cuda_stream,
    dtype_code,
    eager_untracked,
    gpu_backend,
    num_threads,
    triton_interpreting,
)
from osmos.ops.rps_mapping import CONFIG_LEN, MAPPERS, reference_indices

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAPPER_KINDS = tuple(sorted(MAPPERS.values()))  # a tuple: torch.compile traces `in` on it (not on dict views)


def validate_config(config: list[int], rows: int, cols: int) -> None:
    if not isinstance(config, (list, tuple)) or len(config) != CONFIG_LEN:
        raise ValueError(f"config must be a list of {CONFIG_LEN} ints (LayerMap.config()), got {config!r}")
    check_int("rows", rows, low=0)
    check_int("cols", cols, low=1)
    if config[0] not in MAPPER_KINDS:
        raise ValueError(f"config[0] (mapper kind) must be one of {list(MAPPER_KINDS)}, got {config[0]}")
    check_int("config[1] (m)", config[1], low=1, high=2**32)
    check_int("config[2] (offset)", config[2], low=0, high=2**62)
    if config[3] != cols:
        raise ValueError(f"config[3] (cols) must equal cols={cols}, got {config[3]}")
    check_int("config[4] (tile_r)", config[4], low=1, high=2**20)
    check_int("config[5] (tile_c)", config[5], low=1, high=2**20)
    for k in range(6, 14):
        check_int(f"config[{k}] (hash coefficient)", config[k], low=0, high=2**31 - 2)
    check_int("config[14] (use_sign)", config[14], low=0, high=1)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- references -------------------------------------------------------------------------------

def reference_rps_gather(M: Tensor, config: list[int], rows: int, cols: int, scale: float) -> Tensor:
    index, sign = reference_indices(config, rows, cols, M.device)
    compute = _acc_dtype(M.dtype)
    return (M.to(compute)[index] * sign.to(compute) * scale).to(M.dtype)


def reference_rps_scatter(grad: Tensor, config: list[int], rows: int, cols: int, scale: float) -> Tensor:
    index, sign = reference_indices(config, rows, cols, grad.device)
    acc = _acc_dtype(grad.dtype)
    values = (grad.to(acc) * scale) * sign.to(acc)
    out = torch.zeros(config[1], dtype=acc, device=grad.device)
    return out.index_add_(0, index.reshape(-1), values.reshape(-1)).to(grad.dtype)


# ---- backends ---------------------------------------------------------------------------------

def _cpu_backend() -> str:
    if triton_interpreting() and os.environ.get("OSMOS_CPU_BACKEND") == "triton":
        return "triton"
    return "native" if _native.has_cpu_kernel("rps_gather") else "torch"


def rps_indices(config: list[int], rows: int, cols: int, device="cpu", backend: str | None = None) -> tuple[Tensor, Tensor]:
    """(index int64 [rows, cols], sign int8 [rows, cols]) of a layer's mapping, computed by
    `backend` ("native", "triton" or "torch"; default: what the device's ops use)."""
    validate_config(config, rows, cols)
    device = torch.device(device)
    if backend is None:
        backend = _cpu_backend() if device.type == "cpu" else gpu_backend("rps_gather")
    if backend == "torch":
        return reference_indices(config, rows, cols, device)
    if backend == "triton":
        from osmos.triton_kernels.rps_gather import rps_indices as kernel

        return kernel(config, rows, cols, device)
    index = torch.empty(rows, cols, dtype=torch.int64, device=device)
    sign = torch.empty(rows, cols, dtype=torch.int8, device=device)
    if device.type == "cpu":
        _native.C.rps_indices(index.data_ptr(), sign.data_ptr(), list(config), rows, cols, num_threads())
    else:
        _native.CUDA.rps_indices(index.data_ptr(), sign.data_ptr(), list(config), rows, cols, cuda_stream(index))
    return index, sign


def _gather_cpu(M, config, rows, cols, scale):
    backend = _cpu_backend()
    if backend == "torch":
        return reference_rps_gather(M, config, rows, cols, scale)
    if backend == "triton":
        from osmos.triton_kernels.rps_gather import rps_gather as kernel

        return kernel(M, config, rows, cols, scale)
    W = torch.empty(rows, cols, dtype=M.dtype)
    _native.C.rps_gather(M.data_ptr(), W.data_ptr(), dtype_code(M), list(config), rows, cols, scale, num_threads())
    return W


def _scatter_cpu(grad, config, rows, cols, scale):
    backend = _cpu_backend()
    if backend == "torch":
        return reference_rps_scatter(grad, config, rows, cols, scale)
    if backend == "triton":
        from osmos.triton_kernels.rps_gather import rps_scatter as kernel

        return kernel(grad, config, rows, cols, scale)
    acc = torch.empty(config[1], dtype=_acc_dtype(grad.dtype))  # the kernel writes every entry
    _native.C.rps_scatter(grad.data_ptr(), dtype_code(grad), acc.data_ptr(), list(config), rows, cols, scale, num_threads())
    return acc.to(grad.dtype)


def cuda_walk() -> bool:
    """The CUDA gather / atomic scatter kernels walk the mapping per warp chunk (hashing once per
    STABLE-RPS partition, ROAST tile and 16 signs) unless OSMOS_RPS_CUDA_WALK=0, which selects the
    one-thread-per-element kernels that hash every element (same results; kept to compare)."""
    return os.environ.get("OSMOS_RPS_CUDA_WALK", "1") != "0"


def _gather_cuda(M, config, rows, cols, scale):
    backend = gpu_backend("rps_gather")
    if backend == "triton":
        from osmos.triton_kernels.rps_gather import rps_gather as kernel

        return kernel(M, config, rows, cols, scale)
    if backend != "cuda":
        return reference_rps_gather(M, config, rows, cols, scale)
    W = torch.empty(rows, cols, dtype=M.dtype, device=M.device)
    _native.CUDA.rps_gather(M.data_ptr(), W.data_ptr(), dtype_code(M), list(config), rows, cols, scale, cuda_walk(),
                            cuda_stream(M))
    return W


def _sorted_segments(config, rows, cols, device):
    """Element ids sorted (stably) by M index, the distinct indices and their segment starts."""
    index, _ = rps_indices(config, rows, cols, device)
    keys, order = torch.sort(index.reshape(-1), stable=True)
    slots, counts = torch.unique_consecutive(keys, return_counts=True)
    starts = torch.zeros(slots.numel() + 1, dtype=torch.int64, device=device)
    torch.cumsum(counts, 0, out=starts[1:])
    return order, slots, starts


def _scatter_cuda(grad, config, rows, cols, scale, deterministic):
    """Atomics on the chosen backend; deterministic=True always takes the CUDA sort-and-reduce
    kernel (the reference's index_add_ when osmos._cuda is not built)."""
    backend = gpu_backend("rps_gather")
    if deterministic:
        backend = "cuda" if _native.has_cuda_kernel("rps_scatter_sorted") else "torch"
    if backend == "triton":
        from osmos.triton_kernels.rps_gather import rps_scatter as kernel

        return kernel(grad, config, rows, cols, scale)
    if backend != "cuda":
        return reference_rps_scatter(grad, config, rows, cols, scale)
    acc = torch.zeros(config[1], dtype=_acc_dtype(grad.dtype), device=grad.device)
    stream = cuda_stream(grad)
    if deterministic:
        order, slots, starts = _sorted_segments(config, rows, cols, grad.device)
        _native.CUDA.rps_scatter_sorted(grad.data_ptr(), dtype_code(grad), acc.data_ptr(), list(config), cols, scale,
                                        order.data_ptr(), slots.data_ptr(), starts.data_ptr(), slots.numel(), stream)
    else:
        _native.CUDA.rps_scatter_atomic(grad.data_ptr(), dtype_code(grad), acc.data_ptr(), list(config), rows, cols,
                                        scale, cuda_walk(), stream)
    return acc.to(grad.dtype)


# ---- the ops ----------------------------------------------------------------------------------

@torch.library.custom_op("osmos::rps_gather", mutates_args=())
def _gather_op(M: Tensor, config: List[int], rows: int, cols: int, scale: float, deterministic: bool) -> Tensor:
    raise NotImplementedError(f"osmos::rps_gather has no kernel for device {M.device.type}")


@_gather_op.register_fake
def _(M, config, rows, cols, scale, deterministic):
    return M.new_empty(rows, cols)


@_gather_op.register_kernel("cpu")
def _(M, config, rows, cols, scale, deterministic):
    return _gather_cpu(M, config, rows, cols, scale)


@_gather_op.register_kernel("cuda")
def _(M, config, rows, cols, scale, deterministic):
    return _gather_cuda(M, config, rows, cols, scale)


def gather(M: Tensor, config: List[int], rows: int, cols: int, scale: float, deterministic: bool) -> Tensor:
    """The gather op, or for a call autograd does not record its kernel without the op's dispatch
    (same result); for callers that have validated their arguments."""
    if eager_untracked(M):
        return (_gather_cuda if M.is_cuda else _gather_cpu)(M, config, rows, cols, scale)
    return _gather_op(M, config, rows, cols, scale, deterministic)


@torch.library.custom_op("osmos::rps_scatter", mutates_args=())
def _scatter_op(grad: Tensor, config: List[int], rows: int, cols: int, scale: float, deterministic: bool) -> Tensor:
    raise NotImplementedError(f"osmos::rps_scatter has no kernel for device {grad.device.type}")


@_scatter_op.register_fake
def _(grad, config, rows, cols, scale, deterministic):
    return grad.new_empty(config[1])


@_scatter_op.register_kernel("cpu")
def _(grad, config, rows, cols, scale, deterministic):
    return _scatter_cpu(grad, config, rows, cols, scale)


@_scatter_op.register_kernel("cuda")
def _(grad, config, rows, cols, scale, deterministic):
    return _scatter_cuda(grad, config, rows, cols, scale, deterministic)


def _setup_context(ctx, inputs, output):
    _, ctx.config, ctx.rows, ctx.cols, ctx.scale, ctx.deterministic = inputs


def _gather_backward(ctx, grad_W):
    grad_M = _scatter_op(grad_W.contiguous(), ctx.config, ctx.rows, ctx.cols, ctx.scale, ctx.deterministic)
    return grad_M, None, None, None, None, None


def _scatter_backward(ctx, grad_M):
    grad = _gather_op(grad_M.contiguous(), ctx.config, ctx.rows, ctx.cols, ctx.scale, ctx.deterministic)
    return grad, None, None, None, None, None


_gather_op.register_autograd(_gather_backward, setup_context=_setup_context)
_scatter_op.register_autograd(_scatter_backward, setup_context=_setup_context)


def rps_gather(M: Tensor, config: list[int], rows: int, cols: int, scale: float = 1.0,
               deterministic: bool = False) -> Tensor:
    """W [rows, cols] = scale * sign * M[h], differentiable in M.

    Args:
        M: the shared array [m], float32 / float16 / bfloat16 / float64, contiguous.
        config: `LayerMap.config()` of the layer (15 ints; config[1] == m, config[3] == cols).
        rows, cols: the layer's weight viewed as 2-D.
        scale: the layer's scale.
        deterministic: on the GPU, make the backward scatter bitwise reproducible
            (sort-and-reduce instead of atomics). The CPU backward always is.
    """
    check_tensor("M", M, dtypes=DTYPES, ndim=1)
    validate_config(config, rows, cols)
    if M.numel() != config[1]:
        raise ValueError(f"M must have config[1]={config[1]} elements, got {M.numel()}")
    return gather(M, list(config), rows, cols, float(scale), bool(deterministic))


def rps_scatter(grad: Tensor, config: list[int], scale: float = 1.0, deterministic: bool = False) -> Tensor:
    """grad_M [m] with grad_M[j] = sum over elements e with h(e) = j of scale * sign(e) * grad[e]:
    the adjoint of `rps_gather`. grad: [rows, cols], float32 / float16 / bfloat16 / float64."""
    check_tensor("grad", grad, dtypes=DTYPES, ndim=2)
    rows, cols = grad.shape
    validate_config(config, rows, cols)
    return _scatter_op(grad, list(config), rows, cols, float(scale), bool(deterministic))
