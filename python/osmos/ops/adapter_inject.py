"""Fused injection of C rank-1 (one-dimensional) adapters into a layer's output.

    out = y + ((x @ D^T) * gamma[:, None, :]) @ U

per sample b and token t: out[b, t] = y[b, t] + sum_k gamma[b, k] (D[k] . x[b, t]) U[k].
This is what an SPM-adapted Linear adds to its base output (Lyu et al., CVPR 2024), for several
adapters at once, each sample of the batch with its own strengths (compare Punica's BGMV).

Layout: x [B, ..., in] and y [B, ..., out] are token-major (channels last), as a diffusers
Linear sees them. A 1x1 Conv's NCHW tensors are turned token-major by the caller
(osmos.erase.spm does this for SD 1.x's proj_in / proj_out); the op itself takes one layout.

Numerics: x, y and the result share one dtype (float32 / float16 / bfloat16); D, U and gamma
may be any float dtype and are used in float32; projections and sums accumulate in float32.

`adapter_inject` is functional and differentiable (gradients for y, x, D, U and gamma), so
SPM training runs through it. `adapter_inject_` writes into y (inference only).
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from osmos import _native
from osmos.ops._common import (
    FLOAT_DTYPES, check_tensor, dtype_code, eager_cuda, eager_untracked, gpu_uses_triton, num_threads,
    triton_interpreting,
)


def validate(y: Tensor, x: Tensor, down: Tensor, up: Tensor, gamma: Tensor) -> None:
    validate_input(x)
    check_tensor("y", y, dtypes=(x.dtype,))
    if y.dim() != x.dim() or y.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"y must be x's shape with the last dim replaced, x {tuple(x.shape)}, y {tuple(y.shape)}")
    if y.device != x.device:
        raise ValueError(f"y must be on x's device {x.device}, got {y.device}")
    validate_adapters(x, y.shape[-1], down, up, gamma)


def validate_input(x: Tensor) -> None:
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if x.dim() < 2:
        raise ValueError(f"x must be [batch, ..., in] (at least 2-D), got shape {tuple(x.shape)}")


def validate_adapters(x: Tensor, features_out: int, down: Tensor, up: Tensor, gamma: Tensor) -> None:
    """Checks down, up and gamma against a validated x (validate_input) and the output's channels
    (shared with osmos.ops.adapted_linear)."""
    check_tensor("down", down, dtypes=FLOAT_DTYPES + (torch.float64,), ndim=2, contiguous=False)
    check_tensor("up", up, dtypes=FLOAT_DTYPES + (torch.float64,), ndim=2, contiguous=False)
    check_tensor("gamma", gamma, dtypes=FLOAT_DTYPES + (torch.float64,), ndim=2, contiguous=False)
    adapters, features_in = down.shape
    if features_in != x.shape[-1]:
        raise ValueError(f"down must be [C, in] with in = x.shape[-1] = {x.shape[-1]}, got {tuple(down.shape)}")
    if up.shape != (adapters, features_out):
        raise ValueError(f"up must be [C, out] = [{adapters}, {features_out}], got {tuple(up.shape)}")
    if gamma.shape != (x.shape[0], adapters):
        raise ValueError(f"gamma must be [batch, C] = [{x.shape[0]}, {adapters}], got {tuple(gamma.shape)}")
    for name, t in (("down", down), ("up", up), ("gamma", gamma)):
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")


def reference_adapter_inject(y: Tensor, x: Tensor, down: Tensor, up: Tensor, gamma: Tensor) -> Tensor:
    """Pure-torch definition of the op (float32 math, result in y's dtype)."""
    batch = x.shape[0]
    xf = x.float().reshape(batch, -1, x.shape[-1])
    q = (xf @ down.float().T) * gamma.float()[:, None, :]
    out = y.float().reshape(batch, -1, y.shape[-1]) + q @ up.float()
    return out.reshape(y.shape).to(y.dtype)


def torch_adapter_inject(y: Tensor, x: Tensor, down: Tensor, up: Tensor, gamma: Tensor, out: Tensor | None = None) -> Tensor:
    """The op as three torch kernels in x's dtype (the GEMMs accumulate in float32): q = x @ D^T,
    q * gamma, and y + q @ U as one addmm into ``out`` (a new tensor when None; may be y itself).
    D, U and gamma are cast to x's dtype, as PEFT does; float16 / bfloat16 results differ from the
    reference's float32 math by a rounding of q. What CUDA tensors run by default."""
    batch, tokens, dt = x.shape[0], math.prod(x.shape[1:-1]), x.dtype  # explicit sizes: any may be 0
    q = torch.matmul(x.reshape(batch, tokens, x.shape[-1]), down.to(dt).T) * gamma.to(dt)[:, None, :]
    rows = batch * tokens
    q2, u, y2 = q.reshape(rows, down.shape[0]), up.to(dt), y.reshape(rows, y.shape[-1])
    if out is None:
        return torch.addmm(y2, q2, u).reshape(y.shape)
    if out.data_ptr() == y.data_ptr():
        y2.addmm_(q2, u)
    else:
        torch.addmm(y2, q2, u, out=out.view(rows, out.shape[-1]))
    return out


def _torch_path(x: Tensor) -> bool:
    """Whether a call runs `torch_adapter_inject` without the custom op: eager calls on CUDA (on an
    H100 the op's dispatch, float32 casts and copy took 0.09-0.25 ms per call against 0.02-0.03 ms
    for the kernels)."""
    return eager_cuda(x) and not gpu_uses_triton(default=False)


def _f32(t: Tensor) -> Tensor:
    return t.to(torch.float32).contiguous()


def _run_cpu(out: Tensor, y: Tensor, x: Tensor, down: Tensor, up: Tensor, gamma: Tensor) -> None:
    if triton_interpreting() and os.environ.get("OSMOS_CPU_BACKEND") == "triton":
        _run_triton(out, y, x, down, up, gamma)
    elif _native.has_cpu_kernel("adapter_inject"):
        d, u, g = _f32(down), _f32(up), _f32(gamma)
        batch, features_in, features_out = x.shape[0], x.shape[-1], y.shape[-1]
        tokens = (y.numel() // features_out if features_out else x.numel() // max(features_in, 1)) // max(batch, 1)
        _native.C.adapter_inject(
            x.data_ptr(), y.data_ptr(), out.data_ptr(), d.data_ptr(), u.data_ptr(), g.data_ptr(), dtype_code(x),
            batch, tokens, features_in, features_out, d.shape[0], num_threads(),
        )
    else:
        out.copy_(reference_adapter_inject(y, x, down, up, gamma))


def _run_triton(out: Tensor, y: Tensor, x: Tensor, down: Tensor, up: Tensor, gamma: Tensor) -> None:
    from osmos.triton_kernels.adapter_inject import adapter_inject as kernel

    kernel(out, y, x, _f32(down), _f32(up), _f32(gamma))


def _run_cuda(out: Tensor, y: Tensor, x: Tensor, down: Tensor, up: Tensor, gamma: Tensor) -> None:
    """torch (two matmuls) by default: on an H100 the Triton kernel took 0.05-0.13 ms where torch
    took 0.02-0.03 ms at Stable Diffusion shapes; OSMOS_GPU_BACKEND=triton opts in."""
    if gpu_uses_triton(default=False):
        _run_triton(out, y, x, down, up, gamma)
    else:
        torch_adapter_inject(y, x, down, up, gamma, out=out)


def _run(out: Tensor, y: Tensor, x: Tensor, down: Tensor, up: Tensor, gamma: Tensor) -> None:
    (_run_cuda if x.device.type == "cuda" else _run_cpu)(out, y, x, down, up, gamma)


@torch.library.custom_op("osmos::adapter_inject", mutates_args=())
def _adapter_inject_op(y: Tensor, x: Tensor, down: Tensor, up: Tensor, gamma: Tensor) -> Tensor:
    out = torch.empty_like(y)
    _run(out, y, x, down, up, gamma)
    return out


@_adapter_inject_op.register_fake
def _(y, x, down, up, gamma):
    return torch.empty_like(y)


@torch.library.custom_op("osmos::adapter_inject_", mutates_args=("y",))
def _adapter_inject_inplace_op(y: Tensor, x: Tensor, down: Tensor, up: Tensor, gamma: Tensor) -> None:
    _run(y, y, x, down, up, gamma)


@_adapter_inject_inplace_op.register_fake
def _(y, x, down, up, gamma):
    return None


def _setup_context(ctx, inputs, output):
    _, x, down, up, gamma = inputs
    ctx.save_for_backward(x, down, up, gamma)


def _backward(ctx, grad_out):
    x, down, up, gamma = ctx.saved_tensors
    batch = x.shape[0]
    g = grad_out.reshape(batch, -1, grad_out.shape[-1]).float()
    xf = x.reshape(batch, -1, x.shape[-1]).float()
    p = xf @ down.float().T                          # [B, T, C] projections
    gq = g @ up.float().T                            # dL/dq, q = p * gamma
    gamma_f = gamma.float()[:, None, :]
    gp = gq * gamma_f
    grad_x = (gp @ down.float()).reshape(x.shape).to(x.dtype) if ctx.needs_input_grad[1] else None
    grad_down = torch.einsum("btc,bti->ci", gp, xf).to(down.dtype) if ctx.needs_input_grad[2] else None
    grad_up = torch.einsum("btc,bto->co", p * gamma_f, g).to(up.dtype) if ctx.needs_input_grad[3] else None
    grad_gamma = (gq * p).sum(1).to(gamma.dtype) if ctx.needs_input_grad[4] else None
    return grad_out, grad_x, grad_down, grad_up, grad_gamma


_adapter_inject_op.register_autograd(_backward, setup_context=_setup_context)


def adapter_inject(y: Tensor, x: Tensor, down: Tensor, up: Tensor, gamma: Tensor) -> Tensor:
    """y + ((x @ down^T) * gamma) @ up, fused (one pass over x and y per row of tokens).

    Args:
        y: the base layer's output [B, ..., out], contiguous, x's dtype.
        x: the layer's input [B, ..., in], contiguous, float32 / float16 / bfloat16.
        down: D [C, in] (rows d_k), any float dtype.
        up: U [C, out] (rows u_k; fold a strength s_k in here or in gamma).
        gamma: per-sample, per-adapter strengths [B, C].
    Returns:
        a new tensor shaped like y. Differentiable in every input.
    """
    validate(y, x, down, up, gamma)
    if _torch_path(x):
        return torch_adapter_inject(y, x, down, up, gamma)
    if eager_untracked(y, x, down, up, gamma):
        out = torch.empty_like(y)
        _run(out, y, x, down, up, gamma)
        return out
    return _adapter_inject_op(y, x, down, up, gamma)


def adapter_inject_(y: Tensor, x: Tensor, down: Tensor, up: Tensor, gamma: Tensor) -> Tensor:
    """In-place variant of `adapter_inject`: y += ((x @ down^T) * gamma) @ up; returns y.
    Not differentiable (use it under torch.no_grad / inference_mode)."""
    validate(y, x, down, up, gamma)
    if _torch_path(x):
        return torch_adapter_inject(y, x, down, up, gamma, out=y)
    if eager_untracked(y, x, down, up, gamma):
        _run(y, y, x, down, up, gamma)
    else:
        _adapter_inject_inplace_op(y, x, down, up, gamma)
    return y
