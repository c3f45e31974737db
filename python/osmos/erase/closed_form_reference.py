"""Straightforward UCE / RECE, written the way the papers' formulas read (and the reference code
computes them): one system matrix and one explicit inverse per layer, every weight pass per
RECE epoch. The baseline for `benchmarks/bench_closed_form.py` and the independent check of
`osmos.erase.closed_form` in the tests. Not for use: slower and numerically weaker.
"""

from __future__ import annotations

import torch
from torch import Tensor


def reference_uce(
    weights: list[Tensor],
    erase: Tensor,
    guide: Tensor,
    preserve: Tensor | None,
    lambda_: float,
    eta_e: float = 1.0,
    eta_p: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """W_new = (lambda W + eta_e sum v*_i c_i^T + eta_p sum W c_j c_j^T)
    (lambda I + eta_e sum c_i c_i^T + eta_p sum c_j c_j^T)^-1 for each W [out, D]."""
    c_e, c_g = erase.to(dtype), guide.to(dtype)
    c_p = preserve.to(dtype) if preserve is not None else erase.new_zeros(0, erase.shape[1], dtype=dtype)
    out = []
    for w in weights:
        w = w.to(dtype)
        eye = torch.eye(w.shape[1], dtype=dtype)
        values = c_g @ w.T  # v*_i = W c_guide(i), [n, out]
        mat1 = lambda_ * w + eta_e * values.T @ c_e + eta_p * (w @ c_p.T) @ c_p
        mat2 = lambda_ * eye + eta_e * c_e.T @ c_e + eta_p * c_p.T @ c_p
        out.append(mat1 @ torch.inverse(mat2))
    return out


def reference_rece_embedding(
    original: list[Tensor], edited: list[Tensor], target: Tensor, lambda_reg: float, dtype: torch.dtype = torch.float32
) -> Tensor:
    """c' = (sum_l W_l'^T W_l' + lambda_reg I)^-1 (sum_l W_l'^T W_l) c_tar for every row of target [k, D]."""
    dim = target.shape[1]
    lhs = lambda_reg * torch.eye(dim, dtype=dtype)
    rhs = torch.zeros(dim, dim, dtype=dtype)
    for w, w_new in zip(original, edited, strict=True):
        w, w_new = w.to(dtype), w_new.to(dtype)
        lhs = lhs + w_new.T @ w_new
        rhs = rhs + w_new.T @ w
    return (torch.inverse(lhs) @ rhs @ target.to(dtype).T).T
