"""Triton kernels of the RPS hashed gather, its atomic scatter-add, and the index / sign tables.
Mapping: triton_kernels/rps_common.py (mirror of osmos/rps_hash.h)."""

import torch
import triton
import triton.language as tl

from .rps_common import rps_index, rps_sign

BLOCK = 1024


def config_tensor(config, device) -> torch.Tensor:
    return torch.tensor(list(config), dtype=torch.int64, device=device)


@triton.jit
def _elements(pid, n, cols, BLOCK: tl.constexpr):
    e = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    return e, e < n, e // cols, e % cols


@triton.jit
def _indices_kernel(index_ptr, sign_ptr, cfg_ptr, n, cols, KIND: tl.constexpr, USE_SIGN: tl.constexpr,
                    BLOCK: tl.constexpr):
    e, mask, r, c = _elements(tl.program_id(0), n, cols, BLOCK)
    tl.store(index_ptr + e, rps_index(r, c, cfg_ptr, KIND), mask=mask)
    tl.store(sign_ptr + e, rps_sign(r, c, cfg_ptr, USE_SIGN).to(tl.int8), mask=mask)


@triton.jit
def _gather_kernel(M_ptr, W_ptr, cfg_ptr, n, cols, scale, KIND: tl.constexpr, USE_SIGN: tl.constexpr,
                   BLOCK: tl.constexpr):
    e, mask, r, c = _elements(tl.program_id(0), n, cols, BLOCK)
    index = rps_index(r, c, cfg_ptr, KIND)
    value = tl.load(M_ptr + index, mask=mask, other=0.0)
    compute = value.to(tl.float64) if value.dtype == tl.float64 else value.to(tl.float32)
    w = rps_sign(r, c, cfg_ptr, USE_SIGN).to(compute.dtype) * scale * compute
    tl.store(W_ptr + e, w.to(W_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scatter_kernel(G_ptr, acc_ptr, cfg_ptr, n, cols, scale, KIND: tl.constexpr, USE_SIGN: tl.constexpr,
                    BLOCK: tl.constexpr):
    e, mask, r, c = _elements(tl.program_id(0), n, cols, BLOCK)
    g = tl.load(G_ptr + e, mask=mask, other=0.0).to(acc_ptr.dtype.element_ty)
    v = rps_sign(r, c, cfg_ptr, USE_SIGN).to(g.dtype) * (scale * g)
    tl.atomic_add(acc_ptr + rps_index(r, c, cfg_ptr, KIND), v, mask=mask)


def _launch(kernel, n, *args, config):
    kernel[(triton.cdiv(max(n, 1), BLOCK),)](*args, KIND=config[0], USE_SIGN=bool(config[14]), BLOCK=BLOCK)


def rps_indices(config, rows, cols, device):
    index = torch.empty(rows, cols, dtype=torch.int64, device=device)
    sign = torch.empty(rows, cols, dtype=torch.int8, device=device)
    _launch(_indices_kernel, rows * cols, index, sign, config_tensor(config, device), rows * cols, cols, config=config)
    return index, sign


def rps_gather(M, config, rows, cols, scale):
    W = torch.empty(rows, cols, dtype=M.dtype, device=M.device)
    _launch(_gather_kernel, rows * cols, M, W, config_tensor(config, M.device), rows * cols, cols, scale, config=config)
    return W


def rps_scatter(grad, config, rows, cols, scale):
    acc = torch.zeros(config[1], dtype=torch.float64 if grad.dtype == torch.float64 else torch.float32, device=grad.device)
    _launch(_scatter_kernel, rows * cols, grad, acc, config_tensor(config, grad.device), rows * cols, cols, scale,
            config=config)
    return acc.to(grad.dtype)
