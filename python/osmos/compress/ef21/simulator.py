"""Single-process EF21 / EF21-W / EF21-PP simulator with exact bit accounting.

Bits: a worker's message for a d-vector costs `compressor.bits(d)` = k * (32 + b_idx) bits, with
32 bits per float32 value and b_idx = ceil(log2 d) bits per index when the indices travel (TopK);
0 index bits when every worker recomputes them from the shared seed (RandK) or the message is
dense (identity, k = d). The first round with init="full" costs 32 d bits (the full gradient).
Only the uplink (worker -> server) is counted; `bits` in the records is the cumulative mean over
workers (absent workers under partial participation send nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from osmos.compress.ef21.compressors import Compressor, make_compressor
from osmos.compress.ef21.state import mix_seed
from osmos.compress.ef21.stepsize import ef21_stepsize
from osmos.compress.ef21.weights import weights_from_smoothness

METHODS = ("ef21", "ef21-w")


@dataclass
class SimResult:
    """records: one dict per recorded round with keys round, bits (cumulative uplink bits per
    worker), grad_norm_sq (||grad f(x^t)||^2), loss (f(x^t)). x: the last iterate."""

    method: str
    compressor: str
    stepsize: float
    weights: list[float]
    x: torch.Tensor
    records: list[dict] = field(default_factory=list)

    def bits_to_reach(self, grad_norm_sq: float) -> float | None:
        """Bits per worker at the first recorded round with ||grad f||^2 <= target (None: never)."""
        for r in self.records:
            if r["grad_norm_sq"] <= grad_norm_sq:
                return r["bits"]
        return None


def simulate(problem, n_workers: int, method: str = "ef21", compressor: str | Compressor = "top1",
             steps: int = 1000, *, stepsize="theory", weights=None, participation: float = 1.0,
             init: str = "full", seed: int = 0, record_every: int = 1) -> SimResult:
    """Run EF21 (method="ef21") or EF21-W ("ef21-w") for `steps` rounds.

    Args:
        problem: see problems.py; split across n_workers with `problem.split(n_workers)` if it
            has `split`, else it must already have n == n_workers.
        compressor: a name ("top1", "topk", "randk", "identity"; ratio-based ones keep 1%) or a Compressor.
        stepsize: "theory" (ef21: L_QM, old analysis; ef21-w: L_AM), "qm", "am", or a number.
        weights: EF21-W smoothness constants (default: problem.L_i).
        participation: EF21-PP probability that a worker sends in a round (seeded); absent
            workers keep their g_i.
        init: "full" (g_i^0 = grad f_i(x^0)) or "zero".
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if init not in ("full", "zero"):
        raise ValueError(f"init must be 'full' or 'zero', got {init!r}")
    if not 0.0 < participation <= 1.0:
        raise ValueError(f"participation must be in (0, 1], got {participation!r}")
    if hasattr(problem, "split"):
        problem = problem.split(n_workers)
    if problem.n != n_workers:
        raise ValueError(f"problem has {problem.n} workers, n_workers is {n_workers}")
    comp = make_compressor(compressor, 0.01)
    n, d = problem.n, problem.d
    if method == "ef21-w":
        w = torch.tensor(weights_from_smoothness(problem.L_i if weights is None else weights, n), dtype=torch.float64)
    else:
        w = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if stepsize in ("theory", "qm", "am"):
        weighted = stepsize == "am" or (stepsize == "theory" and method == "ef21-w")
        gamma = ef21_stepsize(problem.L, problem.L_i, comp.num_selected(d), d, weighted=weighted)
    else:
        gamma = float(stepsize)
    scale = (1.0 / (n * w))[:, None]  # [n, 1]

    x = problem.x0.clone()
    grads = problem.grads(x)
    g_local = grads * scale if init == "full" else torch.zeros_like(grads)
    g = (w[:, None] * g_local).sum(0)
    bits = 32.0 * d if init == "full" else 0.0
    result = SimResult(method, repr(comp), gamma, w.tolist(), x)
    coins = torch.Generator().manual_seed(mix_seed(seed, 3))

    def record(t):
        result.records.append({"round": t, "bits": bits, "grad_norm_sq": float(grads.mean(0).square().sum()),
                               "loss": problem.loss(x)})

    record(0)
    for t in range(1, steps + 1):
        x = x - gamma * g
        grads = problem.grads(x)
        present = torch.rand(n, generator=coins, dtype=torch.float64) < participation if participation < 1 else None
        rows = slice(None) if present is None else present
        local = g_local[rows]
        values, idx = comp.step_batch_(grads[rows] * scale[rows], local, mix_seed(seed, t, 2))
        g_local[rows] = local
        weighted = w[rows][:, None] * values
        if idx is None:
            g += weighted.sum(0)
        else:
            g.index_add_(0, idx.reshape(-1), weighted.reshape(-1))
        bits += comp.bits(d) * local.shape[0] / n
        if t % record_every == 0 or t == steps:
            record(t)
    result.x = x
    return result
