"""Finite-sum test problems for the simulator, split across n workers (float64, vectorised over
workers: every worker holds m rows, gradients come back as [n, d]).

A problem the simulator accepts has: n, d, x0 [d], L (smoothness of f = mean f_i), L_i (list of n),
grads(x) -> [n, d] (row i = grad f_i(x)) and loss(x) -> float; or a `split(n)` method that
returns one.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _lambda_max(m: Tensor) -> Tensor:
    """Largest eigenvalue of symmetric matrices [..., d, d]."""
    return torch.linalg.eigvalsh(m)[..., -1]


class LogisticNonconvex:
    """f(x) = (1/N) sum_j log(1 + exp(-b_j a_j^T x)) + lam sum_k x_k^2 / (1 + x_k^2).

    A [N, d] features, b [N] labels in {-1, +1}. `split(n, scales)` gives worker i the i-th of
    n consecutive chunks of N // n rows (the remainder is dropped), its rows multiplied by
    scales[i] (feature scaling makes the L_i heterogeneous).
    Smoothness: L_i = lambda_max(A_i^T A_i) / (4 m) + 2 lam.
    """

    def __init__(self, A: Tensor, b: Tensor, lam: float = 0.1):
        A = torch.as_tensor(A, dtype=torch.float64)
        b = torch.as_tensor(b, dtype=torch.float64).reshape(-1)
        if A.dim() != 2 or A.shape[0] != b.numel():
            raise ValueError(f"A must be [N, d] and b [N], got {tuple(A.shape)} and {tuple(b.shape)}")
        if not bool(torch.all((b == 1) | (b == -1))):
            raise ValueError("labels b must be -1 or +1")
        self.A, self.b, self.lam = A, b, float(lam)

    def split(self, n: int, scales=None) -> "SplitLogistic":
        m = self.A.shape[0] // n
        if m < 1:
            raise ValueError(f"cannot split {self.A.shape[0]} rows across {n} workers")
        A = self.A[: n * m].reshape(n, m, -1)
        if scales is not None:
            A = A * torch.as_tensor(scales, dtype=torch.float64).reshape(n, 1, 1)
        return SplitLogistic(A, self.b[: n * m].reshape(n, m), self.lam)


class SplitLogistic:
    """LogisticNonconvex split across n workers: A [n, m, d], b [n, m]."""

    def __init__(self, A: Tensor, b: Tensor, lam: float):
        self.A, self.b, self.lam = A, b, lam
        self.n, m, self.d = A.shape
        self.x0 = torch.zeros(self.d, dtype=torch.float64)
        self.L_i = (_lambda_max(A.transpose(1, 2) @ A) / (4 * m) + 2 * lam).tolist()
        flat = A.reshape(-1, self.d)
        self.L = float(_lambda_max(flat.T @ flat) / (4 * flat.shape[0]) + 2 * lam)

    def _reg_grad(self, x: Tensor) -> Tensor:
        return self.lam * 2 * x / (1 + x * x) ** 2

    def grads(self, x: Tensor) -> Tensor:
        margins = self.b * (self.A @ x)  # [n, m]
        coef = -self.b * torch.sigmoid(-margins) / self.A.shape[1]
        return torch.einsum("nm,nmd->nd", coef, self.A) + self._reg_grad(x)

    def loss(self, x: Tensor) -> float:
        margins = self.b * (self.A @ x)
        return float(torch.nn.functional.softplus(-margins).mean() + self.lam * torch.sum(x * x / (1 + x * x)))


class Quadratic:
    """f_i(x) = 0.5 x^T H_i x - c_i^T x with H_i symmetric positive definite: convex, L_i = lambda_max(H_i).

    H [n, d, d], c [n, d]. `Quadratic.random(n, d, seed, spread)` draws H_i with eigenvalues in
    [1, 10] times a per-worker factor from 1 to `spread`.
    """

    def __init__(self, H: Tensor, c: Tensor):
        self.H = torch.as_tensor(H, dtype=torch.float64)
        self.c = torch.as_tensor(c, dtype=torch.float64)
        self.n, self.d, _ = self.H.shape
        self.x0 = torch.zeros(self.d, dtype=torch.float64)
        self.L_i = _lambda_max(self.H).tolist()
        self.L = float(_lambda_max(self.H.mean(0)))

    @classmethod
    def random(cls, n: int, d: int, seed: int = 0, spread: float = 1.0) -> "Quadratic":
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(n, d, d, generator=gen, dtype=torch.float64))
        eig = 1 + 9 * torch.rand(n, d, generator=gen, dtype=torch.float64)
        eig = eig * torch.linspace(1, spread, n, dtype=torch.float64)[:, None]
        H = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
        return cls(H, torch.randn(n, d, generator=gen, dtype=torch.float64))

    def grads(self, x: Tensor) -> Tensor:
        return torch.einsum("nde,e->nd", self.H, x) - self.c

    def loss(self, x: Tensor) -> float:
        return float((0.5 * torch.einsum("d,nde,e->n", x, self.H, x) - self.c @ x).mean())

    def minimizer(self) -> Tensor:
        return torch.linalg.solve(self.H.mean(0), self.c.mean(0))
