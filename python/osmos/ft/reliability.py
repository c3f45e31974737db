"""How likely is an in-memory snapshot lost? Closed forms, checked by Monte Carlo.

Model: N nodes, each failing independently within one exposure window (the time until the lost
pieces are rebuilt or the next snapshot is protected) with probability p = 1 - exp(-rate * window).
Erasure coding groups the nodes into N // (k + m) stripes of k + m nodes; a stripe loses its
snapshot when more than m of its nodes fail. Replication keeps r copies of each shard on r
distinct nodes (disjoint groups of r); a group loses its shard when all r fail. The snapshot is
lost when any stripe (group) loses. At equal memory cost, replication r matches RS(k, m) with
r = (k + m) / k.
"""

from __future__ import annotations

import math

import numpy as np


def failure_probability(rate_per_hour: float, window_hours: float) -> float:
    """p that one node fails within the window, for a constant failure rate."""
    return -math.expm1(-rate_per_hour * window_hours)


def _binomial_tail(n: int, more_than: int, p: float) -> float:
    """P(X > more_than) for X ~ Binomial(n, p), summed term by term (accurate when tiny)."""
    if more_than >= n:
        return 0.0
    return math.fsum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(more_than + 1, n + 1))


def _log_survival(q: float) -> float:
    """log(1 - q), -inf when q = 1."""
    return -math.inf if q >= 1 else math.log1p(-q)


def loss_probability_ec(nodes: int, k: int, m: int, p: float) -> float:
    """P(snapshot lost) with RS(k, m) stripes over `nodes` nodes: nodes // (k + m) whole
    stripes (the nodes % (k + m) left over hold no stripe)."""
    stripes = nodes // (k + m)
    return -math.expm1(stripes * _log_survival(_binomial_tail(k + m, m, p))) if stripes else 0.0


def loss_probability_replication(nodes: int, copies: int, p: float) -> float:
    """P(snapshot lost) with `copies` replicas of each shard in disjoint groups of nodes."""
    groups = nodes // copies
    return -math.expm1(groups * _log_survival(p**copies)) if groups else 0.0


def monte_carlo_loss_ec(nodes: int, k: int, m: int, p: float, trials: int, seed: int = 0) -> float:
    """Fraction of simulated windows in which some full stripe loses more than m nodes."""
    n = k + m
    stripes = nodes // n
    rng = np.random.default_rng(seed)
    lost = 0
    for start in range(0, trials, 10_000):
        batch = min(10_000, trials - start)
        failed = rng.random((batch, stripes, n)) < p
        lost += int((failed.sum(axis=2) > m).any(axis=1).sum())
    return lost / trials
