"""Hashed linear for randomized parameter sharing: y = x @ W^T (+ bias) with
W[n, k] = scale * sign * M[h(n, k)] (osmos.ops.rps_mapping), differentiable in x and M.

By default W is gathered (osmos.ops.rps_gather) and torch's matmul runs, on every device. The
Triton kernels of triton_kernels/rps_linear.py read W's tiles straight from M and never
materialise W, forward and backward; they are opt-in (OSMOS_GPU_BACKEND=triton on a GPU, or
OSMOS_CPU_BACKEND=triton under TRITON_INTERPRET=1). Their first design, which hashed every
element inside the matmul loop, ran 40-140x slower than gather + cuBLAS on an H100
(benchmarks/RESULTS.md); the segment-table design that replaced it has not been timed on a GPU
yet, so gather + matmul stays the default.
"""

from __future__ import annotations

import os

from typing import List  # torch < 2.7 infers op schemas from typing generics only
import torch
import torch.nn.functional as F
from torch import Tensor

from osmos.ops._common import check_tensor, eager_untracked, gpu_uses_triton, triton_interpreting
from osmos.ops.rps_gather import DTYPES, _gather_op, _scatter_op, gather, validate_config


def _fused() -> bool:
    if triton_interpreting():
        return os.environ.get("OSMOS_CPU_BACKEND") == "triton"
    return gpu_uses_triton(default=False)


def _use_fused(device: torch.device) -> bool:
    return _fused() and (device.type == "cuda" or triton_interpreting())


def reference_rps_linear(x: Tensor, M: Tensor, config: list[int], rows: int, cols: int, scale: float) -> Tensor:
    from osmos.ops.rps_gather import reference_rps_gather

    return F.linear(x, reference_rps_gather(M, config, rows, cols, scale))


def _linear_forward(x: Tensor, M: Tensor, config: List[int], rows: int, cols: int, scale: float) -> Tensor:
    if _use_fused(x.device):
        from osmos.triton_kernels.rps_linear import rps_linear_forward

        return rps_linear_forward(x, M, config, rows, cols, scale)
    return F.linear(x, gather(M, config, rows, cols, scale, False))


@torch.library.custom_op("osmos::rps_linear", mutates_args=())
def _linear_op(x: Tensor, M: Tensor, config: List[int], rows: int, cols: int, scale: float) -> Tensor:
    return _linear_forward(x, M, config, rows, cols, scale)


@_linear_op.register_fake
def _(x, M, config, rows, cols, scale):
    return x.new_empty(x.shape[0], rows)


@torch.library.custom_op("osmos::rps_linear_backward", mutates_args=())
def _linear_backward_op(grad_y: Tensor, x: Tensor, M: Tensor, config: List[int], rows: int, cols: int,
                        scale: float) -> tuple[Tensor, Tensor]:
    if _use_fused(x.device):
        from osmos.triton_kernels.rps_linear import rps_linear_grad_M, rps_linear_grad_x

        return (rps_linear_grad_x(grad_y, M, config, rows, cols, scale),
                rps_linear_grad_M(grad_y, x, config, rows, cols, scale).to(M.dtype))
    W = _gather_op(M, config, rows, cols, scale, False)
    return grad_y @ W, _scatter_op((grad_y.t() @ x).contiguous(), config, rows, cols, scale, False)


@_linear_backward_op.register_fake
def _(grad_y, x, M, config, rows, cols, scale):
    return x.new_empty(x.shape), M.new_empty(M.shape)


def _setup_context(ctx, inputs, output):
    x, M, ctx.config, ctx.rows, ctx.cols, ctx.scale = inputs
    ctx.save_for_backward(x, M)


def _backward(ctx, grad_y):
    x, M = ctx.saved_tensors
    gx, gM = _linear_backward_op(grad_y.contiguous(), x, M, ctx.config, ctx.rows, ctx.cols, ctx.scale)
    return gx, gM, None, None, None, None


_linear_op.register_autograd(_backward, setup_context=_setup_context)


def rps_linear(x: Tensor, M: Tensor, config: list[int], rows: int, cols: int, scale: float = 1.0,
               bias: Tensor | None = None) -> Tensor:
    """y [..., rows] = x [..., cols] @ W^T + bias, W [rows, cols] read from M [m] (x's dtype)."""
    check_tensor("x", x, dtypes=DTYPES, contiguous=False)
    check_tensor("M", M, dtypes=(x.dtype,), ndim=1)
    validate_config(config, rows, cols)
    if M.numel() != config[1]:
        raise ValueError(f"M must have config[1]={config[1]} elements, got {M.numel()}")
    if x.shape[-1] != cols:
        raise ValueError(f"x must have {cols} features in its last dim, got shape {tuple(x.shape)}")
    forward = _linear_forward if eager_untracked(x, M) else _linear_op  # inference: no op dispatch
    y = forward(x.reshape(-1, cols).contiguous(), M, list(config), rows, cols, float(scale))
    y = y.reshape(*x.shape[:-1], rows)
    return y if bias is None else y + bias
