"""Fused hashed linear in Triton: y = x @ W^T with W[n, k] = scale * sign * M[h(n, k)] read tile by
tile straight from the shared array M, never materialised. Backward: grad_x = grad_y @ W (W's
tiles again read from M) and grad_M = scatter of grad_y^T @ x, tile by tile, with atomics.

Shapes: x [B, K], M [m], y [B, N]; the layer's config has rows = N, cols = K.
Accumulation in float32 (float64 for float64 inputs); W's tiles are cast to x's dtype, so float16 /
bfloat16 inputs run on the tensor cores.
"""

import torch
import triton
import triton.language as tl

from .rps_common import rps_index, rps_sign
from .rps_gather import config_tensor


@triton.jit
def _weight_tile(M_ptr, cfg_ptr, offs_n, offs_k, N, K, scale, KIND: tl.constexpr, USE_SIGN: tl.constexpr):
    """W[offs_n, offs_k] as a [BN, BK] tile in the compute dtype (zeros outside [N, K])."""
    r = offs_n.to(tl.int64)[:, None]
    c = offs_k.to(tl.int64)[None, :]
    mask = (r < N) & (c < K)
    value = tl.load(M_ptr + rps_index(r, c, cfg_ptr, KIND), mask=mask, other=0.0)
    compute = value.to(tl.float64) if value.dtype == tl.float64 else value.to(tl.float32)
    return rps_sign(r, c, cfg_ptr, USE_SIGN).to(compute.dtype) * scale * compute


@triton.jit
def _forward_kernel(x_ptr, M_ptr, y_ptr, cfg_ptr, B, N, K, scale, KIND: tl.constexpr, USE_SIGN: tl.constexpr,
                    PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    offs_b = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + offs_b[:, None].to(tl.int64) * K + offs_k[None, :],
                    mask=(offs_b[:, None] < B) & (offs_k[None, :] < K), other=0.0)
        w = _weight_tile(M_ptr, cfg_ptr, offs_n, offs_k, N, K, scale, KIND, USE_SIGN).to(x.dtype)
        acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)
    tl.store(y_ptr + offs_b[:, None].to(tl.int64) * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_b[:, None] < B) & (offs_n[None, :] < N))


@triton.jit
def _grad_x_kernel(gy_ptr, M_ptr, gx_ptr, cfg_ptr, B, N, K, scale, KIND: tl.constexpr, USE_SIGN: tl.constexpr,
                   PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    offs_b = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_k = tl.program_id(1) * BK + tl.arange(0, BK)
    acc = tl.zeros((BM, BK), dtype=tl.float64 if gy_ptr.dtype.element_ty == tl.float64 else tl.float32)
    for n0 in range(0, N, BN):
        offs_n = n0 + tl.arange(0, BN)
        gy = tl.load(gy_ptr + offs_b[:, None].to(tl.int64) * N + offs_n[None, :],
                     mask=(offs_b[:, None] < B) & (offs_n[None, :] < N), other=0.0)
        w = _weight_tile(M_ptr, cfg_ptr, offs_n, offs_k, N, K, scale, KIND, USE_SIGN).to(gy.dtype)
        acc += tl.dot(gy, w, input_precision=PRECISION)
    tl.store(gx_ptr + offs_b[:, None].to(tl.int64) * K + offs_k[None, :], acc.to(gx_ptr.dtype.element_ty),
             mask=(offs_b[:, None] < B) & (offs_k[None, :] < K))


@triton.jit
def _grad_M_kernel(gy_ptr, x_ptr, gM_ptr, cfg_ptr, B, N, K, scale, KIND: tl.constexpr, USE_SIGN: tl.constexpr,
                   PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_k = tl.program_id(1) * BK + tl.arange(0, BK)
    acc = tl.zeros((BN, BK), dtype=gM_ptr.dtype.element_ty)
    for b0 in range(0, B, BM):
        offs_b = b0 + tl.arange(0, BM)
        gy = tl.load(gy_ptr + offs_b[:, None].to(tl.int64) * N + offs_n[None, :],
                     mask=(offs_b[:, None] < B) & (offs_n[None, :] < N), other=0.0)
        x = tl.load(x_ptr + offs_b[:, None].to(tl.int64) * K + offs_k[None, :],
                    mask=(offs_b[:, None] < B) & (offs_k[None, :] < K), other=0.0)
        acc += tl.dot(tl.trans(gy), x, input_precision=PRECISION)
    r = offs_n.to(tl.int64)[:, None]
    c = offs_k.to(tl.int64)[None, :]
    v = rps_sign(r, c, cfg_ptr, USE_SIGN).to(acc.dtype) * (scale * acc)
    tl.atomic_add(gM_ptr + rps_index(r, c, cfg_ptr, KIND), v, mask=(r < N) & (c < K))


def _blocks(t):
    """(BM, BN, BK): small tiles in the interpreter, tensor-core sized ones on a GPU."""
    return (64, 128, 32) if t.is_cuda else (16, 32, 32)


def _launch_args(config, dtype):
    # 16-bit inputs use the tensor cores (float32 accumulation); float32 / float64 stay exact.
    precision = "ieee" if dtype in (torch.float32, torch.float64) else None
    return dict(KIND=config[0], USE_SIGN=bool(config[14]), PRECISION=precision)


def rps_linear_forward(x, M, config, rows, cols, scale):
    """y [B, rows] = x [B, cols] @ W^T."""
    B = x.shape[0]
    y = torch.empty(B, rows, dtype=x.dtype, device=x.device)
    BM, BN, BK = _blocks(x)
    grid = (triton.cdiv(max(B, 1), BM), triton.cdiv(max(rows, 1), BN))
    _forward_kernel[grid](x, M, y, config_tensor(config, x.device), B, rows, cols, scale, **_launch_args(config, x.dtype),
                          BM=BM, BN=BN, BK=BK)
    return y


def rps_linear_grad_x(grad_y, M, config, rows, cols, scale):
    """grad_x [B, cols] = grad_y [B, rows] @ W."""
    B = grad_y.shape[0]
    gx = torch.empty(B, cols, dtype=grad_y.dtype, device=grad_y.device)
    BM, BN, BK = _blocks(grad_y)
    grid = (triton.cdiv(max(B, 1), BM), triton.cdiv(cols, BK))
    _grad_x_kernel[grid](grad_y, M, gx, config_tensor(config, grad_y.device), B, rows, cols, scale,
                         **_launch_args(config, grad_y.dtype), BM=BM, BN=BN, BK=BK)
    return gx


def rps_linear_grad_M(grad_y, x, config, rows, cols, scale):
    """grad_M [m] (float32, float64 for float64 inputs) = scatter of grad_y^T @ x."""
    gM = torch.zeros(config[1], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device)
    BM, BN, BK = _blocks(x)
    grid = (triton.cdiv(max(rows, 1), BN), triton.cdiv(cols, BK))
    _grad_M_kernel[grid](grad_y, x, gM, config_tensor(config, x.device), x.shape[0], rows, cols, scale,
                         **_launch_args(config, x.dtype), BM=BM, BN=BN, BK=BK)
    return gM
